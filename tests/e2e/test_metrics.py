"""The runtime's /metrics on the dev ground, after pods ran: the series operators and the dashboard read, with sane
values, served without credentials on a port that serves nothing else; and its JSON log lines name the pods.

A node of its own (metrics.gpu, its own RuntimeClass, RBAC, namespace and ports), leading its own election."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import yaml
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac

from .helpers import RuntimeProcess, health_ready, kubectl, node_kubeconfig, remove_node, wait_for

pytestmark = pytest.mark.e2e

USAGE_FAMILIES = ("k8sgpu_pod_gpu_seconds", "k8sgpu_pod_cpu_core_seconds", "k8sgpu_pod_memory_byte_seconds")
NODE = "metrics.gpu"
NAMESPACE = "k8sgpu-metrics"
RBAC_NAME = "k8sgpu-runtime-metrics"
NO_GPU = "metrics-no-gpu"
PODS = ("measured-a", "measured-b", "measured-c")


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of a request without credentials."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def samples(port: int) -> dict[str, list[tuple[dict, float]]]:
    """Sample name → [(labels, value)] of what /metrics serves now."""
    status, _, body = _get(port, "/metrics")
    assert status == 200, body
    found: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict, sample: str, /, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels``."""
    return sum(v for have, v in found.get(sample, []) if labels.items() <= have.items())


@pytest.fixture(scope="module")
def runtime(ground, tmp_path_factory):
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    no_gpu = runtime_class_manifest(NO_GPU, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0, cpu="1",
                                    memory="1Gi")
    kubectl(ground.local.kubeconfig, "apply", "-f", "-",
            stdin=yaml.safe_dump_all([namespace, no_gpu, *extra_rbac(NODE, RBAC_NAME)]))
    directory = tmp_path_factory.mktemp("metrics")
    health_port = free_port()
    proc = RuntimeProcess(["--kubeconfig", node_kubeconfig(ground, NODE, directory), "--node-name", NODE,
                           "--provider-kubeconfig", ground.tenant_kubeconfig,
                           "--tenant-namespace", ground.tenant_namespace, "--node-address", ground.node_address,
                           "--kubelet-port", str(free_port()), "--health-port", str(health_port),
                           "--leader-elect-kubeconfig", ground.local.kubeconfig,
                           "--leader-elect-resource-namespace", NAMESPACE, "--log-format", "json"],
                          directory / "runtime.log")
    try:
        proc.start()
        wait_for(lambda: health_ready(health_port), 90, f"{NODE}'s runtime to be ready")
        yield proc, health_port
    finally:
        proc.stop()
        print(proc.tail(60))
        kubectl(ground.local.kubeconfig, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
        kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding,clusterrole", RBAC_NAME, check=False)
        kubectl(ground.local.kubeconfig, "delete", "runtimeclass", NO_GPU, check=False)
        try:
            remove_node(ground.local.kubeconfig, NODE)
        except ApiException as exc:
            assert exc.status == 404


@pytest.fixture(scope="module")
def ran(runtime, local):
    """The pods, created and Running; their UIDs by name."""
    for name in PODS:
        local.create_namespaced_pod(NAMESPACE, {
            "metadata": {"name": name},
            "spec": {"runtimeClassName": NO_GPU, "restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "cuda", "command": ["sleep", "3600"]}]}})
    uids = {}
    for name in PODS:
        pod = wait_for(lambda n=name: (p := local.read_namespaced_pod(n, NAMESPACE)).status.phase == "Running" and p,
                       90, f"{name} to run")
        uids[name] = pod.metadata.uid
    return uids


def test_metrics_after_pods_ran(runtime, ran):
    _, port = runtime
    found = wait_for(lambda: (s := samples(port)) and
                     value(s, "k8sgpu_mirror_running_duration_seconds_count") >= len(PODS) and s,
                     30, "every mirror's create→Running to be observed")
    # Each mirror this runtime created was observed once on its way to Running, and no longer than the test took.
    assert value(found, "k8sgpu_mirror_running_duration_seconds_count") == len(PODS)
    assert 0 < value(found, "k8sgpu_mirror_running_duration_seconds_sum") < 90 * len(PODS)
    assert value(found, "k8sgpu_node_pods", phase="Running") == len(PODS)
    assert value(found, "k8sgpu_node_pods", phase="Failed") == 0
    assert value(found, "k8sgpu_pod_sync_duration_seconds_count", action="Create") >= len(PODS)
    assert value(found, "k8sgpu_pod_sync_duration_seconds_count", action="PatchStatus") >= len(PODS)

    # The pod queue took every pod at least once; its depth is a gauge there is.
    assert value(found, "workqueue_adds_total", name="pods") >= len(PODS)
    assert value(found, "workqueue_work_duration_seconds_count", name="pods") >= len(PODS)
    assert value(found, "workqueue_queue_duration_seconds_count", name="pods") >= len(PODS)
    assert any(labels == {"name": "pods"} for labels, _ in found["workqueue_depth"])
    assert {labels["name"] for labels, _ in found["workqueue_adds_total"]} >= {"pods", "services"}

    # Requests to both clusters, by verb and code: reads answered 200, the mirrors' creates 201 on the provider,
    # the node's Events and CSR created in the local cluster, the watches of both.
    for cluster in ("local", "provider"):
        assert value(found, "rest_client_requests_total", cluster=cluster, verb="GET", code="200") > 0, cluster
        assert value(found, "rest_client_requests_total", cluster=cluster, verb="POST", code="201") > 0, cluster
        assert value(found, "rest_client_requests_total", cluster=cluster, verb="WATCH", code="200") > 0, cluster
        assert value(found, "rest_client_request_duration_seconds_count", cluster=cluster, verb="GET") > 0, cluster
    assert value(found, "rest_client_requests_total", cluster="provider", verb="POST", code="201") >= len(PODS)
    assert {labels["cluster"] for labels, _ in found["rest_client_requests_total"]} == {"local", "provider"}

    assert value(found, "k8sgpu_provider_reachable") == 1
    assert value(found, "leader_election_master_status", name=NODE) == 1
    now = time.time()
    for certificate in ("client", "serving"):
        expires = value(found, "k8sgpu_certificate_expiration_seconds", certificate=certificate)
        assert now < expires < now + 10 * 365 * 86400, (certificate, expires)
    assert value(found, "k8sgpu_build_info", node=NODE) == 1

    # Bounded labels: no pod's name or UID, no URL path, no error text in any operational label. The GPU
    # accounting counters (runtime/usage.py) are per pod by design: one series per pod on the node.
    accounting = {name for name in found if name.startswith(USAGE_FAMILIES)}
    assert accounting, "the accounting counters are served beside the operational metrics"
    label_values = {v for name, series in found.items() if name not in accounting
                    for labels, _ in series for v in labels.values()}
    assert not label_values & {*PODS, *ran.values()}
    assert not [v for v in label_values if "/" in v or " " in v], label_values


def test_the_port_serves_metrics_without_credentials_and_nothing_else(runtime):
    _, port = runtime
    status, content_type, body = _get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    assert "# HELP workqueue_depth " in body
    for path in ("/", "/metrics/extra", "/stats/summary", "/debug/pprof/", "/pods", "/configz"):
        assert _get(port, path)[0] == 404, path
    assert _get(port, "/metrics", method="POST")[0] == 405


def test_json_log_lines_name_the_pod_they_are_about(runtime, ran):
    proc, _ = runtime
    lines = [json.loads(line) for line in proc.log.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    creates = {line["pod"]["name"]: line["pod"] for line in lines
               if "creating mirror on the provider" in line["msg"] and "pod" in line}
    assert {name: creates.get(name) for name in PODS} == \
        {name: {"namespace": NAMESPACE, "name": name, "uid": uid} for name, uid in ran.items()}
