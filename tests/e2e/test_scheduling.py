"""Scheduling truth on the dev ground: the local scheduler binds to the virtual node only what the provider can
place now, offering by offering (issue 14's reproductions), and a pod that names no RuntimeClass runs on the
node's default offering.

The module brings provider nodes of its own (kwok's pools manage them; their GPU products are this module's), so
no other module's mirrors take their GPUs, and RuntimeClasses naming those products.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from k8sgpu.cli.dev.catalog import DEFAULT_POOLS, GPU_PRODUCT_LABEL
from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.accounting import PRODUCTS_PREFIX
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac
from k8sgpu.runtime.translate import ORIGIN_UID_LABEL

from .helpers import RuntimeProcess, kubectl, node_kubeconfig, node_on_port, remove_node, wait_for

pytestmark = pytest.mark.e2e

NODE = "sched.gpu"
KUBELET_PORT = free_port()
A6000 = "SCHED-TEST-A6000"  # 2 nodes × 2 GPUs, as the ground's A6000 pool
A100 = "SCHED-TEST-A100"  # 3 nodes × 2 GPUs, ~245 GiB each: room for 3 pods of 125 GiB
ONE, TWO, BIG = "sched-1xa6000", "sched-2xa6000", "sched-1xa100"
POOLS = {pool.name: pool for pool in DEFAULT_POOLS}
PROVIDER_NODES = {f"sched-a6000-{i}": ("a6000", A6000) for i in range(2)} | \
    {f"sched-a100-{i}": ("a100", A100) for i in range(3)}


def provider_node(name: str, pool: str, product: str) -> dict:
    manifest = POOLS[pool].node_manifest(name)
    manifest["metadata"]["labels"][GPU_PRODUCT_LABEL] = product
    return manifest


@pytest.fixture(scope="module")
def runtime(ground, local, provider, tmp_path_factory):
    catalog = [
        runtime_class_manifest(ONE, node_name=NODE, gpu_product=A6000, gpu_count=1, cpu="8000m", memory="32861620Ki"),
        runtime_class_manifest(TWO, node_name=NODE, gpu_product=A6000, gpu_count=2, cpu="16000m",
                               memory="65723240Ki"),
        runtime_class_manifest(BIG, node_name=NODE, gpu_product=A100, gpu_count=1, cpu="16000m",
                               memory="131446480Ki"),
    ]
    for name, (pool, product) in PROVIDER_NODES.items():
        provider.create_node(provider_node(name, pool, product))
    kubectl(ground.local.kubeconfig, "apply", "-f", "-",
            stdin=yaml.safe_dump_all([*catalog, *extra_rbac(NODE, name="k8sgpu-runtime-sched")]))
    wait_for(lambda: all(any(c.type == "Ready" and c.status == "True" for c in provider.read_node(n).status.conditions
                             or []) for n in PROVIDER_NODES), 60, "this module's provider nodes to be Ready")
    work = tmp_path_factory.mktemp("sched-runtime")
    proc = RuntimeProcess(["--kubeconfig", node_kubeconfig(ground, NODE, work), "--node-name", NODE,
                           "--provider-kubeconfig", ground.tenant_kubeconfig,
                           "--tenant-namespace", ground.tenant_namespace, "--node-address", ground.node_address,
                           "--kubelet-port", str(KUBELET_PORT), "--default-runtime-class", ONE, "-v"],
                          work / "runtime.log").start()
    try:
        wait_for(lambda: node_on_port(local, NODE, KUBELET_PORT), 90, f"node {NODE} to be Ready")
        yield proc
    finally:
        delete_pods(local, [p.metadata.name for p in local.list_namespaced_pod("default").items
                            if p.metadata.name.startswith("sched-")])
        proc.stop()
        print(proc.tail(80))
        remove_node(ground.local.kubeconfig, NODE)
        for name in PROVIDER_NODES:
            provider.delete_node(name)
        for rc in catalog:
            client.NodeV1Api(local.api_client).delete_runtime_class(rc["metadata"]["name"])


def gpu_pod(name: str, runtime_class: str | None, containers: list[dict] | None = None, **spec) -> dict:
    body = {"restartPolicy": "OnFailure",
            "containers": containers or [{"name": "nvidia", "image": "nvidia/cuda:12.6.0-base-ubuntu20.04",
                                          "command": ["sleep", "3600"]}], **spec}
    if runtime_class:
        body["runtimeClassName"] = runtime_class
    return {"metadata": {"name": name}, "spec": body}


def delete_pods(local, names: list[str], grace: int = 0) -> None:
    for name in names:
        try:
            local.delete_namespaced_pod(name, "default", grace_period_seconds=grace)
        except ApiException as exc:
            assert exc.status == 404
    wait_for(lambda: not [p for p in local.list_namespaced_pod("default").items if p.metadata.name in names], 90,
             "the pods to go")


def running(local, name: str, timeout: float = 60):
    return wait_for(lambda: (p := local.read_namespaced_pod(name, "default")).status.phase == "Running" and p,
                    timeout, f"{name} to run")


def mirror(provider, ground, pod) -> client.V1Pod | None:
    found = provider.list_namespaced_pod(ground.tenant_namespace,
                                         label_selector=f"{ORIGIN_UID_LABEL}={pod.metadata.uid}").items
    return found[0] if found else None


def resources(local) -> tuple[dict, dict]:
    status = local.read_node(NODE).status
    return status.capacity, status.allocatable


def unschedulable(pod: client.V1Pod) -> str:
    """The local scheduler's message when it left the pod unbound, else ""."""
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return c.message or ""
    return ""


def provider_refusals(provider, ground, names: list[str]) -> list[str]:
    """FailedScheduling Events of the provider's scheduler about the mirrors of these local pods."""
    prefixes = tuple(f"default-{n}-" for n in names)
    return [f"{e.involved_object.name}: {e.message}" for e in provider.list_namespaced_event(
        ground.tenant_namespace, field_selector="reason=FailedScheduling").items
        if e.involved_object.name.startswith(prefixes)]


def test_a_two_gpu_pod_waits_locally_until_one_provider_node_has_two_free_gpus(runtime, local, provider, ground):
    # Two 1-GPU pods: the provider's scheduler spreads them over its two nodes, one GPU free on each.
    for name in ("sched-one-a", "sched-one-b"):
        local.create_namespaced_pod("default", gpu_pod(name, ONE))
        running(local, name)
    spread = {mirror(provider, ground, local.read_namespaced_pod(n, "default")).spec.node_name
              for n in ("sched-one-a", "sched-one-b")}
    assert spread == {"sched-a6000-0", "sched-a6000-1"}, f"the provider placed both on {spread}"
    capacity, allocatable = wait_for(lambda: (r := resources(local))[1].get(f"k8s.gpu/{TWO}") == "0" and r, 30,
                                     f"k8s.gpu/{TWO} allocatable 0")
    # Of one GPU offerings: the two running (charged by the scheduler) and two more the provider can place.
    assert allocatable[f"k8s.gpu/{ONE}"] == "4" and capacity[f"k8s.gpu/{ONE}"] == "4"
    assert capacity[f"k8s.gpu/{TWO}"] == "2"

    # The guide's nvidia-smi-double: two containers of one GPU each.
    double = [{"name": f"nvidia-{i}", "image": "nvidia/cuda:12.6.0-base-ubuntu20.04", "command": ["sleep", "3600"],
               "resources": {"limits": {"nvidia.com/gpu": "1"}}} for i in range(2)]
    local.create_namespaced_pod("default", gpu_pod("sched-double", TWO, double))
    pending = wait_for(lambda: unschedulable(p := local.read_namespaced_pod("sched-double", "default")) and p, 30,
                       "the local scheduler to leave sched-double unbound")
    assert f"Insufficient k8s.gpu/{TWO}" in unschedulable(pending)
    assert pending.spec.node_name is None and mirror(provider, ground, pending) is None
    described = kubectl(ground.local.kubeconfig, "describe", "node", NODE).stdout
    assert f"k8s.gpu/{TWO}" in described and f"{PRODUCTS_PREFIX}{A6000}: 4 nvidia.com/gpu" in described, described
    annotations = local.read_node(NODE).metadata.annotations
    assert annotations[f"{PRODUCTS_PREFIX}{A100}"] == "6 nvidia.com/gpu"

    # One GPU pod gone: one node has both its GPUs free, and the double pod is bound and runs there.
    delete_pods(local, ["sched-one-a"])
    pod = running(local, "sched-double", 60)
    assert pod.spec.node_name == NODE
    placed = mirror(provider, ground, pod)
    assert provider.read_node(placed.spec.node_name).metadata.labels[GPU_PRODUCT_LABEL] == A6000
    assert provider_refusals(provider, ground, ["sched-double"]) == []
    delete_pods(local, ["sched-one-b", "sched-double"])


def test_a_finished_pod_takes_no_room(runtime, local, provider, ground):
    idle = wait_for(lambda: (r := resources(local)[1]).get(f"k8s.gpu/{TWO}") == "2" and r, 30, "an idle offering")
    done = gpu_pod("sched-done", TWO, restartPolicy="Never")
    done["metadata"]["annotations"] = {"sim.k8sgpu.dev/exit-code": "0"}
    local.create_namespaced_pod("default", done)
    wait_for(lambda: local.read_namespaced_pod("sched-done", "default").status.phase == "Succeeded", 60,
             "sched-done to succeed")
    wait_for(lambda: resources(local)[1][f"k8s.gpu/{TWO}"] == idle[f"k8s.gpu/{TWO}"], 30,
             f"k8s.gpu/{TWO} to come back once the pod finished")
    delete_pods(local, ["sched-done"])


def test_twenty_a100_pods_bind_three_and_the_rest_as_room_frees(runtime, local, provider, ground):
    names = [f"sched-a100-{i:02d}" for i in range(20)]
    for name in names:
        local.create_namespaced_pod("default", gpu_pod(name, BIG))

    def state() -> tuple[list[client.V1Pod], list[client.V1Pod]]:
        pods = [p for p in local.list_namespaced_pod("default").items if p.metadata.name in names
                and not p.metadata.deletion_timestamp]
        return [p for p in pods if p.spec.node_name], [p for p in pods if not p.spec.node_name]

    # Memory, not GPUs, limits the provider: one 125 GiB pod per node, three nodes.
    wait_for(lambda: (s := state()) and sum(p.status.phase == "Running" for p in s[0]) == 3 and
             all(unschedulable(p) for p in s[1]), 120, "3 pods running and 17 left unbound by the scheduler")
    bound, unbound = state()
    assert len(bound) == 3 and len(unbound) == 17
    assert all(f"Insufficient k8s.gpu/{BIG}" in unschedulable(p) for p in unbound)
    # The node writes status at most once a second after a change: a few seconds see every write it makes.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert len(state()[0]) == 3, "a fourth pod was bound while the provider had room for three"
        time.sleep(0.5)
    cap, alloc = resources(local)
    assert alloc[f"k8s.gpu/{BIG}"] == "3" and cap[f"k8s.gpu/{BIG}"] == "3"
    # The A6000 nodes stay free for their offerings: the A100 pods took none of their room.
    assert alloc[f"k8s.gpu/{ONE}"] == "4"

    # Each pod deleted frees room for exactly one more. Deleted as kubectl does, with a grace period: the local
    # pod (and the scheduler's charge) goes once its mirror is gone, and with it the provider's room comes back.
    for _ in range(2):
        before = {p.metadata.name for p in state()[0]}
        delete_pods(local, [sorted(before)[0]], grace=1)
        wait_for(lambda before=before: (s := state()) and len(s[0]) == 3 and {p.metadata.name for p in s[0]} - before
                 and all(p.status.phase == "Running" for p in s[0]), 90, "one more pod bound and running")
    assert provider_refusals(provider, ground, names) == []
    delete_pods(local, names)


def test_a_plain_pod_pinned_with_node_name_runs_on_the_default_offering(runtime, local, provider, ground):
    optional = {"name": "plain", "image": "busybox", "command": ["sleep", "3600"],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "sched-missing", "key": "x",
                                                                        "optional": True}}}]}
    local.create_namespaced_pod("default", gpu_pod("sched-plain", None, [optional], nodeName=NODE))
    pod = running(local, "sched-plain")
    assert pod.status.container_statuses[0].ready and pod.status.pod_ip
    placed = mirror(provider, ground, pod)
    assert placed.spec.runtime_class_name == "nvidia" and placed.spec.node_selector == {GPU_PRODUCT_LABEL: A6000}
    limits = {k: parse_quantity(v) for k, v in placed.spec.containers[0].resources.limits.items()}
    assert limits == {"cpu": 8, "memory": 32861620 * 1024, "nvidia.com/gpu": 1}
    events = {e.reason for e in local.list_namespaced_event("default",
                                                            field_selector="involvedObject.name=sched-plain").items}
    assert "OptionalConfigMapNotFound" in events

    mandatory = {"name": "plain", "image": "busybox", "command": ["sleep", "3600"],
                 "envFrom": [{"secretRef": {"name": "sched-secret"}}]}
    local.create_namespaced_pod("default", gpu_pod("sched-plain-secret", None, [mandatory], nodeName=NODE))
    wait_for(lambda: [e for e in local.list_namespaced_event(
        "default", field_selector="involvedObject.name=sched-plain-secret").items
        if e.reason == "MandatorySecretNotFound"], 30, "MandatorySecretNotFound")
    assert local.read_namespaced_pod("sched-plain-secret", "default").status.phase == "Pending"
    local.create_namespaced_secret("default", {"metadata": {"name": "sched-secret"}, "stringData": {"a": "b"}})
    try:
        running(local, "sched-plain-secret")
    finally:
        delete_pods(local, ["sched-plain", "sched-plain-secret"])
        local.delete_namespaced_secret("sched-secret", "default")


def test_stats_summary_lists_every_container_from_the_first_second(runtime, local, ground):
    containers = [{"name": name, "image": "busybox", "command": ["sleep", "3600"],
                   "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}} for name in ("main", "sidecar")]
    local.create_namespaced_pod("default", gpu_pod("sched-stats", ONE, containers))
    try:
        running(local, "sched-stats")
        # At once, before the provider's metrics-server has measured the pod (its first scrape comes later).
        raw = wait_for(lambda: (r := kubectl(ground.local.kubeconfig, "get", "--raw",
                                             f"/api/v1/nodes/{NODE}/proxy/stats/summary", check=False))
                       .returncode == 0 and r, 30, "the node's stats (its serving certificate)")
        pods = {p["podRef"]["name"]: p for p in json.loads(raw.stdout)["pods"]}
        listed = pods["sched-stats"]["containers"]
        assert sorted(c["name"] for c in listed) == ["main", "sidecar"]
        assert all(c["startTime"] for c in listed)
        # CPU and memory follow once the provider has measured the pod.
        wait_for(lambda: all("cpu" in c and "memory" in c for c in next(
            p for p in json.loads(kubectl(ground.local.kubeconfig, "get", "--raw",
                                          f"/api/v1/nodes/{NODE}/proxy/stats/summary").stdout)["pods"]
            if p["podRef"]["name"] == "sched-stats")["containers"]), 90, "the provider's measurements")
    finally:
        delete_pods(local, ["sched-stats"])
