"""The user's path: `terraform apply` of terraform/generic runs the runtime from its image on the ground's worker
node (real kubelet, containerd, kube-proxy), with no identity but its ServiceAccount: two replicas, one leading (the
election's Lease), the other standing by; the leader's pod deleted, the standby takes over and Kubernetes adds a new
standby."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from k8sgpu.cli.dev.tfvars import generic_tfvars
from k8sgpu.runtime.translate import ORIGIN_UID_LABEL

from .helpers import api, k8sgpu, kubectl, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE = "ic.gpu"
NAMESPACE = "k8sgpu-ic"
CATALOG = {
    "ic-nvidia-1xa6000": {"gpu_product": "NVIDIA-RTX-A6000", "gpu_count": 1, "cpu": "8000m", "memory": "32861620Ki"},
    "ic-nvidia-1xa100": {"gpu_product": "NVIDIA-A100-PCIE-80GB", "gpu_count": 1, "cpu": "16", "memory": "64Gi"},
}
SELECTOR = "app.kubernetes.io/name=k8sgpu-runtime"


@pytest.fixture(scope="module")
def deployed(ground, tf_env, tmp_path_factory):
    """terraform/generic as committed, applied with the image the ground's worker has, waiting for the rollout."""
    if not ground.worker:
        pytest.fail("the ground has no worker node (it needs root): the in-cluster path cannot run")
    work = tmp_path_factory.mktemp("tf-ic")
    shutil.copytree(REPO / "terraform" / "generic", work / "terraform" / "generic",
                    ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    tfvars = work / "dev.tfvars.json"
    tfvars.write_text(json.dumps({**generic_tfvars(ground), "namespace": NAMESPACE, "node_name": NODE,
                                  "catalog": CATALOG, "default_runtime_class": "ic-nvidia-1xa6000"}))
    assert json.loads(tfvars.read_text())["wait_for_rollout"] is True
    state = {"work": work, "tfvars": tfvars, "destroyed": False}
    applied = k8sgpu(tf_env, "apply", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file",
                     str(tfvars), cwd=work)
    try:
        assert applied.returncode == 0, applied.stderr[-3000:]
        yield state
    finally:
        if not state["destroyed"]:
            k8sgpu(tf_env, "destroy", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file",
                   str(tfvars), cwd=work)


def runtime_pods(core: client.CoreV1Api) -> list:
    return [p for p in core.list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items
            if p.metadata.deletion_timestamp is None]


def ready(pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def node_ready(core: client.CoreV1Api):
    try:
        node = core.read_node(NODE)
    except ApiException:
        return None
    return node if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []) else None


def gpu_pod(name: str, runtime_class: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"runtimeClassName": runtime_class, "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "nvidia/cuda:12.6.0-base-ubuntu20.04",
                                     "command": ["sleep", "3600"]}]}}


def running_on_node(core: client.CoreV1Api, name: str):
    pod = core.read_namespaced_pod(name, "default")
    return pod if pod.spec.node_name == NODE and pod.status.phase == "Running" else None


def two_ready(core: client.CoreV1Api) -> list:
    pods = [p for p in runtime_pods(core) if ready(p)]
    return pods if len(pods) == 2 else []


def leader_of(ground) -> str:
    coordination = client.CoordinationV1Api(api(ground.local.kubeconfig))
    try:
        return coordination.read_namespaced_lease(NODE, NAMESPACE).spec.holder_identity or ""
    except ApiException:
        return ""


def test_the_runtime_runs_from_its_image_on_the_worker_and_registers_with_its_pod_ip(deployed, ground):
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    # Both replicas Ready: the leader once its node is registered, the standby while it stands by.
    pods = wait_for(lambda: two_ready(core), 90, "both runtime pods Ready")
    assert {p.spec.node_name for p in pods} == {"worker-0"}  # anti-affinity is preferred: one worker holds both
    leader = wait_for(lambda: leader_of(ground), 60, "a leader in the election's Lease")
    (pod,) = [p for p in pods if p.metadata.name == leader]
    (standby,) = [p for p in pods if p.metadata.name != leader]
    assert pod.spec.containers[0].image == "k8sgpu-runtime:0.1.0"
    # Its credentials are its ServiceAccount and the bootstrap token: no kubeconfig file is mounted but the provider's.
    mounted = {m.mount_path for m in pod.spec.containers[0].volume_mounts}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounted
    assert not any("kubeconfig" in v.name and v.name != "provider-kubeconfig" for v in pod.spec.volumes)
    node = wait_for(lambda: node_ready(core), 60, f"node {NODE} Ready")
    assert {(a.type, a.address) for a in node.status.addresses} >= {("InternalIP", pod.status.pod_ip)}
    # The node identity was bootstrapped by the module's bootstrap token, as kubelet TLS bootstrapping does, and is
    # kept in the node credentials Secret, where the standby found it.
    certificates = client.CertificatesV1Api(api(ground.local.kubeconfig))
    requestors = {c.spec.username for c in certificates.list_certificate_signing_request().items
                  if c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"}
    assert any(r.startswith("system:bootstrap:") for r in requestors), requestors
    assert f"system:serviceaccount:{NAMESPACE}:k8sgpu-runtime" not in requestors
    kept = core.read_namespaced_secret("k8sgpu-runtime-node-credentials", NAMESPACE).data
    assert set(kept) == {"tls.crt", "tls.key"}
    # The worker's real kubelet serves the runtime's own logs.
    logs = kubectl(ground.local.kubeconfig, "-n", NAMESPACE, "logs", pod.metadata.name).stdout
    assert f"node {NODE} ready at {pod.status.pod_ip}" in logs
    waiting = kubectl(ground.local.kubeconfig, "-n", NAMESPACE, "logs", standby.metadata.name).stdout
    assert f"is held by {leader}: standing by" in waiting and "ready at" not in waiting


def test_a_pod_of_each_catalog_class_runs_with_logs_and_exec(deployed, ground):
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    for runtime_class in CATALOG:
        core.create_namespaced_pod("default", gpu_pod(runtime_class, runtime_class))
    for runtime_class, spec in CATALOG.items():
        wait_for(lambda rc=runtime_class: running_on_node(core, rc), 90, f"{runtime_class} Running on {NODE}")
        listed = kubectl(ground.local.kubeconfig, "exec", runtime_class, "--", "nvidia-smi", "-L").stdout
        assert listed.startswith("GPU 0: ") and spec["gpu_product"] in listed
        assert kubectl(ground.local.kubeconfig, "logs", runtime_class).returncode == 0


def test_a_deleted_runtime_pod_is_recreated_and_the_node_and_its_pods_carry_on(deployed, ground):
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    provider = client.CoreV1Api(api(ground.provider.kubeconfig))

    def mirrors() -> dict[str, str]:
        listed = provider.list_namespaced_pod(ground.tenant_namespace, label_selector=f"k8sgpu.io/node={NODE}")
        return {p.metadata.labels[ORIGIN_UID_LABEL]: p.metadata.uid for p in listed.items}

    node_uid = core.read_node(NODE).metadata.uid
    workloads = {name: core.read_namespaced_pod(name, "default").metadata.uid for name in CATALOG}
    before = mirrors()
    assert set(workloads.values()) <= set(before)
    pods = wait_for(lambda: two_ready(core), 90, "both runtime pods Ready")
    (old,) = [p for p in pods if p.metadata.name == leader_of(ground)]
    (standby,) = [p for p in pods if p is not old]
    core.delete_namespaced_pod(old.metadata.name, NAMESPACE)

    # Another runtime takes over (the leader released the Lease as it stopped) and Kubernetes adds a new pod; the
    # workloads stay Running and keep their mirrors.
    deadline = time.monotonic() + 120
    new = []
    while time.monotonic() < deadline and not new:
        for name in CATALOG:
            assert core.read_namespaced_pod(name, "default").status.phase == "Running"
        new = [p for p in runtime_pods(core) if p.metadata.uid not in (old.metadata.uid, standby.metadata.uid)
               and ready(p)]
        time.sleep(0.5)
    assert new, "no new runtime pod became Ready within 120 s"
    # The released Lease goes to whichever candidate tries first: the standby, or the new pod if it is ready by then.
    leader = wait_for(lambda: (holder := leader_of(ground)) not in ("", old.metadata.name) and holder, 60,
                      "another runtime to lead")
    (now_leading,) = [p for p in runtime_pods(core) if p.metadata.name == leader]
    node = wait_for(lambda: (n := node_ready(core)) and ("InternalIP", now_leading.status.pod_ip) in {
        (a.type, a.address) for a in n.status.addresses} and n, 60, f"node {NODE} Ready at the new leader's address")
    assert node.metadata.uid == node_uid
    assert {k: v for k, v in mirrors().items() if k in workloads.values()} == {
        uid: before[uid] for uid in workloads.values()}
    # Resynced: the new runtime serves the old pods and runs new ones.
    assert kubectl(ground.local.kubeconfig, "exec", "ic-nvidia-1xa6000", "--", "nvidia-smi", "-L").returncode == 0
    core.create_namespaced_pod("default", gpu_pod("after-restart", "ic-nvidia-1xa6000"))
    wait_for(lambda: running_on_node(core, "after-restart"), 90, "a pod created after the restart Running")
    for name in [*CATALOG, "after-restart"]:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    wait_for(lambda: not (set(mirrors()) & set(workloads.values())), 60, "the workloads' mirrors deleted")


def test_destroy_removes_the_node_and_leaves_nothing_on_the_provider(deployed, ground, tf_env):
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    provider = client.CoreV1Api(api(ground.provider.kubeconfig))
    on_provider = {
        "pods": provider.list_namespaced_pod, "configmaps": provider.list_namespaced_config_map,
        "secrets": provider.list_namespaced_secret, "services": provider.list_namespaced_service}

    def held() -> dict[str, list[str]]:
        return {kind: [o.metadata.name for o in list_(ground.tenant_namespace,
                                                      label_selector=f"k8sgpu.io/node={NODE}").items]
                for kind, list_ in on_provider.items()}

    # Something of each kind on the provider first: a pod using a ConfigMap and a Secret.
    core.create_namespaced_config_map("default", {"metadata": {"name": "ic-settings"}, "data": {"a": "1"}})
    core.create_namespaced_secret("default", {"metadata": {"name": "ic-token"}, "stringData": {"t": "x"}})
    pod = gpu_pod("ic-with-objects", "ic-nvidia-1xa6000")
    pod["spec"]["volumes"] = [{"name": "settings", "configMap": {"name": "ic-settings"}},
                              {"name": "token", "secret": {"secretName": "ic-token"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "settings", "mountPath": "/etc/settings"},
                                                    {"name": "token", "mountPath": "/etc/token"}]
    core.create_namespaced_pod("default", pod)
    wait_for(lambda: running_on_node(core, "ic-with-objects"), 90, "a pod with a ConfigMap and a Secret Running")
    wait_for(lambda: all(held()[kind] for kind in ("pods", "configmaps", "secrets")), 30,
             "its mirror and copies on the provider")

    work, tfvars = deployed["work"], deployed["tfvars"]
    destroyed = k8sgpu(tf_env, "destroy", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file",
                       str(tfvars), cwd=work)
    deployed["destroyed"] = True
    assert destroyed.returncode == 0, destroyed.stderr[-3000:]
    # The Deployment was deleted in the foreground, so its pod has already stopped, having removed its node.
    assert not runtime_pods(core)
    with pytest.raises(ApiException) as gone:
        core.read_node(NODE)
    assert gone.value.status == 404
    assert held() == {kind: [] for kind in on_provider}
    node_api = client.NodeV1Api(api(ground.local.kubeconfig))
    assert not {rc.metadata.name for rc in node_api.list_runtime_class().items} & set(CATALOG)
    core.delete_namespaced_config_map("ic-settings", "default")
    core.delete_namespaced_secret("ic-token", "default")
