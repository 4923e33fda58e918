"""The virtual node on the dev ground: pods bound to k8s.gpu run on the provider and look local."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from k8sgpu.cli.dev.catalog import GPU_COUNT_LABEL, GPU_PRODUCT_LABEL, MIG_STRATEGY_LABEL
from k8sgpu.cli.dev.ground import Ground, free_port
from k8sgpu.runtime.catalog import DEMO_MIG_RUNTIME_CLASS, demo_catalog, runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac
from k8sgpu.runtime.translate import ORIGIN_UID_LABEL, remote_name

from .helpers import RuntimeProcess, api, kubectl, wait_for

pytestmark = pytest.mark.e2e

NODE = "k8s.gpu"
KUBELET_PORT = free_port()
CLASSES = {rc["metadata"]["name"]: rc for rc in demo_catalog(NODE)}
MIG = DEMO_MIG_RUNTIME_CLASS


@pytest.fixture(scope="module")
def runtime(ground, local, tmp_path_factory):
    """The catalog and the runtime's extra RBAC applied as an admin would, then the runtime started
    with nothing but the node identity."""
    # Beside the guide's catalog, a class without GPUs, so that many small pods fit on the kwok nodes.
    no_gpu = runtime_class_manifest("test-no-gpu", node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0,
                                    cpu="1", memory="1Gi")
    kubectl(ground.local.kubeconfig, "apply", "-f", "-",
            stdin=yaml.safe_dump_all([*demo_catalog(NODE), no_gpu, *extra_rbac()]))
    log = tmp_path_factory.mktemp("runtime") / "runtime.log"
    proc = RuntimeProcess(["--kubeconfig", ground.node_kubeconfig, "--provider-kubeconfig", ground.tenant_kubeconfig,
                           "--tenant-namespace", ground.tenant_namespace, "--node-address", ground.node_address,
                           "--kubelet-port", str(KUBELET_PORT), "-v"],
                          log).start()
    try:
        wait_for(lambda: _ready(local), 60, "node k8s.gpu to be Ready")
        yield proc
    finally:
        proc.stop()
        print(proc.tail(80))


def _ready(local) -> bool:
    try:
        node = local.read_node(NODE)
    except ApiException:
        return False
    conditions = {c.type: c.status for c in node.status.conditions or []}
    # The port tells this runtime's status from one an earlier runtime left on the node.
    return conditions.get("Ready") == "True" and conditions.get("ProviderReachable") == "True" and \
        node.status.daemon_endpoints.kubelet_endpoint.port == KUBELET_PORT


def gpu_pod(name: str, runtime_class: str, containers: list[dict] | None = None, **spec) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "runtimeClassName": runtime_class,
            "restartPolicy": "OnFailure",
            "containers": containers or [{"name": "nvidia", "image": "nvidia/cuda:12.6.0-base-ubuntu20.04",
                                          "command": ["/bin/bash", "-c", "--"], "args": ["sleep 3600"]}],
            **spec,
        },
    }


def remote_of(provider, ground, pod) -> client.V1Pod | None:
    pods = provider.list_namespaced_pod(ground.tenant_namespace,
                                        label_selector=f"{ORIGIN_UID_LABEL}={pod.metadata.uid}").items
    return pods[0] if pods else None


def running(local, name: str, namespace: str = "default", timeout: float = 60):
    return wait_for(lambda: (p := local.read_namespaced_pod(name, namespace)).status.phase == "Running" and p,
                    timeout, f"{namespace}/{name} to run")


def gone(read) -> bool:
    try:
        read()
        return False
    except ApiException as exc:
        return exc.status == 404


def test_node_registers_with_provider_capacity_taint_and_lease(runtime, local, ground):
    node = local.read_node(NODE)
    assert node.spec.provider_id == f"k8sgpu://{NODE}"
    assert ("virtual-kubelet.io/provider", "k8sgpu", "NoSchedule") in [(t.key, t.value, t.effect)
                                                                        for t in node.spec.taints]
    assert node.metadata.labels["type"] == "virtual-kubelet"
    assert node.metadata.labels["kubernetes.azure.com/managed"] == "false"
    # Capacity mirrors the provider's GPU nodes: 2x2 A6000 + 2x2 A100, and one A100 node in MIG slices (no whole
    # nvidia.com/gpu), 63 cpu each.
    assert node.status.capacity["nvidia.com/gpu"] == "8"
    assert parse_quantity(node.status.capacity["cpu"]) == 5 * 63
    # One extended resource per offering: how many of its pods the provider can run (the A100 offering's 125 GiB
    # fit once in each ~245 GiB node), and the products the provider has.
    # (Every GPU RuntimeClass of the cluster is an offering of the node: other modules' classes are left out here.)
    offered = {"k8s.gpu/seeweb-nvidia-1xa6000": "4", "k8s.gpu/seeweb-nvidia-2xa6000": "2",
               "k8s.gpu/seeweb-nvidia-1xa100": "2", f"k8s.gpu/{MIG}": "7", "k8s.gpu/test-no-gpu": "126"}
    assert {r: node.status.capacity.get(r) for r in offered} == offered
    assert node.metadata.annotations["products.k8s.gpu/NVIDIA-RTX-A6000"] == "4 nvidia.com/gpu"
    assert node.metadata.annotations["products.k8s.gpu/NVIDIA-A100-SXM4-80GB"] == \
        "7 nvidia.com/mig-1g.10gb, 2 nvidia.com/mig-3g.40gb"
    assert node.status.daemon_endpoints.kubelet_endpoint.port == KUBELET_PORT
    assert {(a.type, a.address) for a in node.status.addresses} >= {("InternalIP", ground.node_address)}
    lease = client.CoordinationV1Api(api(ground.local.kubeconfig)).read_namespaced_lease(NODE, "kube-node-lease")
    first = lease.spec.renew_time
    assert [(o.kind, o.uid) for o in lease.metadata.owner_references] == [("Node", node.metadata.uid)]
    wait_for(lambda: client.CoordinationV1Api(api(ground.local.kubeconfig)).read_namespaced_lease(
        NODE, "kube-node-lease").spec.renew_time > first, 25, "the lease to be renewed")


@pytest.mark.parametrize("runtime_class, product, gpus", [
    ("seeweb-nvidia-1xa6000", "NVIDIA-RTX-A6000", 1),
    ("seeweb-nvidia-1xa100", "NVIDIA-A100-PCIE-80GB", 1),
])
def test_a_pod_naming_a_class_runs_remotely_on_the_right_gpu(runtime, local, provider, ground, runtime_class,
                                                              product, gpus):
    name = f"smi-{runtime_class.rsplit('-', 1)[1]}"
    local.create_namespaced_pod("default", gpu_pod(name, runtime_class))
    pod = running(local, name)
    assert pod.spec.node_name == NODE
    assert pod.status.pod_ip and pod.status.host_ip == ground.node_address
    assert pod.status.container_statuses[0].ready and pod.status.container_statuses[0].image_id
    remote = remote_of(provider, ground, pod)
    assert remote is not None and remote.metadata.name == remote_name("default", name, pod.metadata.uid)
    remote_node = provider.read_node(remote.spec.node_name)
    assert remote_node.metadata.labels[GPU_PRODUCT_LABEL] == product
    assert remote.spec.containers[0].resources.limits["nvidia.com/gpu"] == str(gpus)
    assert int(remote_node.metadata.labels[GPU_COUNT_LABEL]) >= gpus
    assert remote.spec.automount_service_account_token is False
    assert not any(v.name.startswith("kube-api-access") for v in remote.spec.volumes or [])
    # The provider's own events about the mirror (its scheduler's) are copied to the local pod.
    copied = wait_for(lambda: [e for e in local.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name}").items
        if e.reason == "Scheduled" and e.source.component == "k8sgpu"], 20, "the provider's Scheduled event")
    assert remote.spec.node_name in copied[0].message
    local.delete_namespaced_pod(name, "default")
    wait_for(lambda: gone(lambda: local.read_namespaced_pod(name, "default")), 60, "the pod to go")
    wait_for(lambda: remote_of(provider, ground, pod) is None, 30, "the mirror to go")


def test_a_pod_of_the_mig_offering_runs_on_one_mig_slice(runtime, local, provider, ground):
    local.create_namespaced_pod("default", gpu_pod("smi-mig", MIG))
    pod = running(local, "smi-mig")
    remote = remote_of(provider, ground, pod)
    limits = {k: parse_quantity(v) for k, v in remote.spec.containers[0].resources.limits.items()}
    assert limits == {"cpu": 6, "memory": 24 * 1024 ** 3, "nvidia.com/mig-1g.10gb": 1}
    labels = provider.read_node(remote.spec.node_name).metadata.labels
    assert labels[MIG_STRATEGY_LABEL] == "mixed" and labels[GPU_PRODUCT_LABEL] == "NVIDIA-A100-SXM4-80GB"
    assert labels["nvidia.com/mig-1g.10gb.count"] == "7"
    # One slice taken: the scheduler charges the pod one, the provider has six more.
    wait_for(lambda: local.read_node(NODE).status.allocatable[f"k8s.gpu/{MIG}"] == "7", 20, "the MIG offering")
    local.delete_namespaced_pod("smi-mig", "default", grace_period_seconds=0)
    wait_for(lambda: remote_of(provider, ground, pod) is None, 30, "the mirror to go")


def test_two_container_2xa6000_pod_runs_and_is_charged_once(runtime, local, provider, ground):
    offering = "k8s.gpu/seeweb-nvidia-2xa6000"
    counted = ("cpu", "memory", "nvidia.com/gpu")
    # Start from an idle node (the earlier tests' pods gone): allocatable equal to capacity.
    before = wait_for(lambda: (n := local.read_node(NODE)).status and all(
        n.status.allocatable[r] == n.status.capacity[r] for r in counted) and n.status.allocatable, 60, "an idle node")
    containers = [
        {"name": "trainer", "image": "nvidia/cuda:12.6.0-base-ubuntu20.04", "command": ["sleep", "3600"],
         "resources": {"requests": {"cpu": "4", "memory": "8Gi"},
                       "limits": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2"}}},
        {"name": "sidecar", "image": "busybox", "command": ["sleep", "3600"],
         "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}},
    ]
    local.create_namespaced_pod("default", gpu_pod("two-gpus", "seeweb-nvidia-2xa6000", containers))
    pod = running(local, "two-gpus")
    assert len(pod.status.container_statuses) == 2
    assert pod.spec.overhead == {offering: "1"}  # the RuntimeClass charges the pod one of its offering
    remote = remote_of(provider, ground, pod)
    assert provider.read_node(remote.spec.node_name).metadata.labels[GPU_PRODUCT_LABEL] == "NVIDIA-RTX-A6000"

    def allocatable():
        return local.read_node(NODE).status.allocatable

    # The scheduler charges the pod its requests (5 cpu, 9Gi, 2 GPUs) and its offering: the node's cpu, memory and
    # nvidia.com/gpu allocatable do not take them a second time. Its offering's allocatable stays what is charged
    # plus what the provider can still place.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = allocatable()
        assert {r: now[r] for r in counted} == {r: before[r] for r in counted}, "the pod's requests were counted twice"
        time.sleep(0.5)
    described = kubectl(ground.local.kubeconfig, "describe", "node", NODE).stdout
    assert f"{offering}" in described and "Allocated resources" in described
    local.delete_namespaced_pod("two-gpus", "default")
    wait_for(lambda: allocatable() == before, 60, "allocatable to come back")


def test_a_pod_asking_more_than_its_class_stays_pending_with_the_reason(runtime, local, ground):
    greedy = [{"name": "c", "image": "cuda", "resources": {"requests": {"cpu": "12"}, "limits": {"cpu": "12"}}}]
    local.create_namespaced_pod("default", gpu_pod("greedy", "seeweb-nvidia-1xa6000", greedy))
    pod = wait_for(lambda: (p := local.read_namespaced_pod("greedy", "default")).status.reason and p, 30,
                   "the refusal")
    assert pod.status.phase == "Pending" and pod.status.reason == "ExceedsRuntimeClassLimits"
    described = kubectl(ground.local.kubeconfig, "describe", "pod", "greedy").stdout
    assert "ExceedsRuntimeClassLimits" in described and "12000m" in described and "8000m" in described
    local.delete_namespaced_pod("greedy", "default", grace_period_seconds=0)


@pytest.mark.parametrize("name, spec, reason", [
    ("privileged", {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]},
     "PodSecurityBaseline"),
    ("hostpath", {"containers": [{"name": "c", "image": "x"}],
                  "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "UnsupportedVolume"),
])
def test_privileged_and_hostpath_pods_are_refused_with_an_event(runtime, local, provider, ground, name, spec,
                                                                 reason):
    local.create_namespaced_pod("default", {"metadata": {"name": name},
                                            "spec": {"runtimeClassName": "seeweb-nvidia-1xa6000", **spec}})
    events = wait_for(lambda: [e for e in local.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name}").items if e.reason == reason], 30, "the event")
    assert events[0].type == "Warning" and events[0].source.component == "k8sgpu"
    pod = local.read_namespaced_pod(name, "default")
    assert pod.status.phase == "Pending" and remote_of(provider, ground, pod) is None
    local.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_configmaps_and_secrets_reach_the_remote_pod_and_follow_updates(runtime, local, provider, ground):
    ns = ground.tenant_namespace
    local.create_namespaced_config_map("default", {"metadata": {"name": "train-cfg"}, "data": {"epochs": "3"}})
    local.create_namespaced_secret("default", {"metadata": {"name": "train-key"}, "stringData": {"token": "s3cr3t"}})
    containers = [{"name": "c", "image": "cuda", "command": ["sleep", "3600"],
                   "env": [{"name": "EPOCHS",
                            "valueFrom": {"configMapKeyRef": {"name": "train-cfg", "key": "epochs"}}}],
                   "envFrom": [{"secretRef": {"name": "train-key"}}],
                   "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "key", "mountPath": "/key"}]}]
    volumes = [{"name": "cfg", "configMap": {"name": "train-cfg"}},
               {"name": "key", "secret": {"secretName": "train-key"}}]
    local.create_namespaced_pod("default", gpu_pod("with-config", "seeweb-nvidia-1xa100", containers, volumes=volumes))
    pod = running(local, "with-config")
    remote = remote_of(provider, ground, pod)
    cm_name, secret_name = remote_name("default", "train-cfg"), remote_name("default", "train-key")
    env = remote.spec.containers[0].env[0].value_from.config_map_key_ref
    assert env.name == cm_name
    assert remote.spec.containers[0].env_from[0].secret_ref.name == secret_name
    assert {v.name: (v.config_map or v.secret) for v in remote.spec.volumes}["cfg"].name == cm_name
    assert provider.read_namespaced_config_map(cm_name, ns).data == {"epochs": "3"}
    assert base64.b64decode(provider.read_namespaced_secret(secret_name, ns).data["token"]) == b"s3cr3t"

    local.patch_namespaced_config_map("train-cfg", "default", {"data": {"epochs": "5"}})
    wait_for(lambda: provider.read_namespaced_config_map(cm_name, ns).data == {"epochs": "5"}, 30,
             "the update to reach the provider")
    local.delete_namespaced_pod("with-config", "default")
    wait_for(lambda: gone(lambda: provider.read_namespaced_config_map(cm_name, ns)), 60,
             "the unused mirror to be deleted")


def test_missing_references_raise_the_four_events(runtime, local, provider, ground):
    def refs(optional: bool) -> dict:
        return {
            "containers": [{"name": "c", "image": "cuda", "envFrom": [
                {"configMapRef": {"name": "absent-cm", "optional": optional}},
                {"secretRef": {"name": "absent-secret", "optional": optional}}]}],
        }

    local.create_namespaced_pod("default", {"metadata": {"name": "needs-refs"},
                                            "spec": {"runtimeClassName": "seeweb-nvidia-1xa6000", **refs(False)}})
    local.create_namespaced_pod("default", {"metadata": {"name": "optional-refs"},
                                            "spec": {"runtimeClassName": "seeweb-nvidia-1xa6000", **refs(True)}})

    def reasons(name):
        return {e.reason for e in local.list_namespaced_event(
            "default", field_selector=f"involvedObject.name={name}").items}

    wait_for(lambda: {"MandatoryConfigMapNotFound", "MandatorySecretNotFound"} <= reasons("needs-refs"), 30,
             "mandatory-missing events")
    wait_for(lambda: {"OptionalConfigMapNotFound", "OptionalSecretNotFound"} <= reasons("optional-refs"), 30,
             "optional-missing events")
    running(local, "optional-refs")
    waiting = local.read_namespaced_pod("needs-refs", "default")
    assert waiting.status.phase == "Pending" and remote_of(provider, ground, waiting) is None
    # Once they exist, the waiting pod runs.
    local.create_namespaced_config_map("default", {"metadata": {"name": "absent-cm"}, "data": {"a": "1"}})
    local.create_namespaced_secret("default", {"metadata": {"name": "absent-secret"}, "stringData": {"b": "2"}})
    running(local, "needs-refs")
    for name in ("needs-refs", "optional-refs"):
        local.delete_namespaced_pod(name, "default")


def test_deleting_remotely_fails_the_local_pod_with_a_reason(runtime, local, provider, ground):
    local.create_namespaced_pod("default", gpu_pod("victim", "seeweb-nvidia-1xa6000"))
    pod = running(local, "victim")
    remote = remote_of(provider, ground, pod)
    provider.delete_namespaced_pod(remote.metadata.name, ground.tenant_namespace, grace_period_seconds=0)
    failed = wait_for(lambda: (p := local.read_namespaced_pod("victim", "default")).status.phase == "Failed" and p,
                      30, "the local pod to fail")
    assert failed.status.reason == "ProviderPodLost"
    local.delete_namespaced_pod("victim", "default", grace_period_seconds=0)


def test_load_balancer_service_gets_the_provider_hostname(runtime, local, provider, ground):
    local.create_namespaced_service("default", {
        "metadata": {"name": "notebook"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "k8s.gpu", "selector": {"app": "notebook"},
                 "ports": [{"port": 8888, "targetPort": 8888}]},
    })
    svc = wait_for(lambda: (s := local.read_namespaced_service("notebook", "default")).status.load_balancer.ingress
                   and s, 30, "the service to be published")
    remote = provider.read_namespaced_service(remote_name("default", "notebook"), ground.tenant_namespace)
    assert svc.status.load_balancer.ingress[0].hostname == \
        f"{remote.metadata.uid}-{ground.tenant_namespace}.gpu.k8sgpu.test"
    assert remote.spec.selector["app"] == "notebook"
    local.delete_namespaced_service("notebook", "default")
    wait_for(lambda: gone(lambda: provider.read_namespaced_service(remote.metadata.name, ground.tenant_namespace)),
             30, "the remote service to go")


def test_kill_9_and_restart_with_50_pods_ends_consistent(runtime, local, provider, ground):
    names = [f"batch-{i:02d}" for i in range(50)]
    for i, name in enumerate(names):
        local.create_namespaced_pod("default", gpu_pod(name, "test-no-gpu",
                                                       [{"name": "c", "image": "cuda",
                                                         "resources": {"limits": {"cpu": "100m",
                                                                                  "memory": "64Mi"}}}]))
        if i == 20:
            runtime.kill()  # SIGKILL in the middle of the burst
    runtime.start()

    def settled():
        pods = {p.metadata.name: p for p in local.list_namespaced_pod("default").items if p.metadata.name in names}
        return len(pods) == 50 and all(p.status.phase == "Running" and p.status.pod_ip for p in pods.values()) \
            and pods

    pods = wait_for(settled, 120, "all 50 pods to run after the restart", interval=1)
    remotes = provider.list_namespaced_pod(ground.tenant_namespace, label_selector="k8sgpu.io/node=k8s.gpu").items
    batch = [r for r in remotes if (r.metadata.annotations or {}).get("k8sgpu.io/origin-name", "").startswith("batch-")]
    assert len(batch) == 50
    assert {r.metadata.labels[ORIGIN_UID_LABEL] for r in batch} == {p.metadata.uid for p in pods.values()}
    by_uid = {r.metadata.labels[ORIGIN_UID_LABEL]: r for r in batch}
    for p in pods.values():
        assert p.status.pod_ip == by_uid[p.metadata.uid].status.pod_ip
    for name in names:
        local.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    wait_for(lambda: not [r for r in provider.list_namespaced_pod(
        ground.tenant_namespace, label_selector="k8sgpu.io/node=k8s.gpu").items
        if (r.metadata.annotations or {}).get("k8sgpu.io/origin-name", "").startswith("batch-")], 120,
        "the mirrors to go", interval=1)


def test_provider_outage_fails_nothing_and_resyncs(runtime, local, provider, ground):
    local.create_namespaced_pod("default", gpu_pod("steady", "seeweb-nvidia-1xa100"))
    running(local, "steady")
    g = Ground(Path(ground.root), progress=lambda m: None)
    g.stop_process("provider-kube-apiserver")
    try:
        wait_for(lambda: {c.type: c.status for c in local.read_node(NODE).status.conditions}.get(
            "ProviderReachable") == "False", 40, "the node to report the provider unreachable")
        local.create_namespaced_pod("default", gpu_pod("during-outage", "seeweb-nvidia-1xa6000"))
        local.delete_namespaced_pod("steady", "default")
        time.sleep(30)
        assert local.read_namespaced_pod("during-outage", "default").status.phase == "Pending"
        assert local.read_namespaced_pod("steady", "default").status.phase == "Running"  # not failed
    finally:
        g.start_process("provider-kube-apiserver")
    wait_for(lambda: _ready(local), 60, "the provider to be reachable again")
    during = local.read_namespaced_pod("during-outage", "default")
    wait_for(lambda: remote_of(provider, ground, during), 30, "the pod created during the outage to be mirrored")
    # kwok backs off its own watches while the provider's API is down and needs up to ~75 s to come back.
    running(local, "during-outage", timeout=180)
    wait_for(lambda: gone(lambda: local.read_namespaced_pod("steady", "default")), 60,
             "the pod deleted during the outage to go")
    local.delete_namespaced_pod("during-outage", "default")


def test_restart_collects_what_was_deleted_while_the_runtime_was_down(runtime, local, provider, ground):
    ns = ground.tenant_namespace
    local.create_namespaced_config_map("default", {"metadata": {"name": "orphan-cfg"}, "data": {"k": "v"}})
    containers = [{"name": "c", "image": "cuda", "envFrom": [{"configMapRef": {"name": "orphan-cfg"}}]}]
    local.create_namespaced_pod("default", gpu_pod("orphan", "test-no-gpu", containers))
    pod = running(local, "orphan")
    mirror = remote_of(provider, ground, pod).metadata.name
    cm_mirror = remote_name("default", "orphan-cfg")
    assert provider.read_namespaced_config_map(cm_mirror, ns).data == {"k": "v"}

    runtime.kill()
    local.delete_namespaced_pod("orphan", "default", grace_period_seconds=0)  # gone at once: no kubelet to wait for
    wait_for(lambda: gone(lambda: local.read_namespaced_pod("orphan", "default")), 30, "the local pod to go")
    runtime.start()
    wait_for(lambda: gone(lambda: provider.read_namespaced_pod(mirror, ns)), 60, "the orphaned mirror to go")
    wait_for(lambda: gone(lambda: provider.read_namespaced_config_map(cm_mirror, ns)), 60,
             "the orphaned ConfigMap mirror to go")
    wait_for(lambda: _ready(local), 60, "the node to be Ready again")
