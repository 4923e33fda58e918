"""A runtime killed and started again picks up where the clusters stand: the ConfigMap and Secret copies its live
pods use stay, follow updates and go only with their last user; and the node counts only the pods it admits.

A node of its own (resync.gpu, its own RuntimeClasses, RBAC, namespace and ports), so that it never meets the other
modules' k8s.gpu."""

from __future__ import annotations

import time

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac
from k8sgpu.runtime.translate import ORIGIN_UID_LABEL, USED_BY, remote_name

from .helpers import NodeRuntime, kubectl, remove_node, wait_for

pytestmark = pytest.mark.e2e

NODE = "resync.gpu"
NAMESPACE = "k8sgpu-resync"
RBAC_NAME = "k8sgpu-runtime-resync"
ONE_GPU, NO_GPU = "resync-1xa6000", "resync-no-gpu"
CATALOG = [
    runtime_class_manifest(ONE_GPU, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=1, cpu="8000m",
                           memory="32861620Ki"),
    runtime_class_manifest(NO_GPU, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0, cpu="1",
                           memory="1Gi"),
]


@pytest.fixture(scope="module")
def runtime(ground, local, tmp_path_factory):
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    kubectl(ground.local.kubeconfig, "apply", "-f", "-",
            stdin=yaml.safe_dump_all([namespace, *CATALOG, *extra_rbac(NODE, RBAC_NAME)]))
    rt = NodeRuntime(ground, NODE, tmp_path_factory.mktemp("resync"))
    try:
        rt.start()
        yield rt
    finally:
        rt.proc.stop()
        print(rt.proc.tail(120))
        kubectl(ground.local.kubeconfig, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
        kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding,clusterrole", RBAC_NAME, check=False)
        kubectl(ground.local.kubeconfig, "delete", "runtimeclass", ONE_GPU, NO_GPU, check=False)
        try:
            remove_node(ground.local.kubeconfig, NODE)
        except ApiException as exc:
            assert exc.status == 404


def pod(name: str, runtime_class: str, container: dict | None = None, **spec) -> dict:
    return {"metadata": {"name": name},
            "spec": {"runtimeClassName": runtime_class, "restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "cuda", "command": ["sleep", "3600"],
                                     **(container or {})}], **spec}}


def running(local, name: str, timeout: float = 60) -> client.V1Pod:
    return wait_for(lambda: (p := local.read_namespaced_pod(name, NAMESPACE)).status.phase == "Running" and p,
                    timeout, f"{name} to run")


def gone(read) -> bool:
    try:
        read()
        return False
    except ApiException as exc:
        return exc.status == 404


def mirror_of(provider, ground, uid: str) -> client.V1Pod | None:
    pods = provider.list_namespaced_pod(ground.tenant_namespace, label_selector=f"{ORIGIN_UID_LABEL}={uid}").items
    return pods[0] if pods else None


def copy(provider, ground, name: str) -> client.V1ConfigMap | None:
    try:
        return provider.read_namespaced_config_map(remote_name(NAMESPACE, name), ground.tenant_namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def used_by(cm: client.V1ConfigMap) -> set[str]:
    return {u for u in (cm.metadata.annotations or {}).get(USED_BY, "").split(",") if u}


def test_a_restarted_runtime_keeps_copies_current_and_deletes_them_only_with_their_last_user(runtime, local,
                                                                                             provider, ground):
    local.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "cm1"}, "data": {"k": "v1"}})
    local.create_namespaced_pod(NAMESPACE, pod("p1", NO_GPU, {"volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
                                               volumes=[{"name": "cfg", "configMap": {"name": "cm1"}}]))
    p1 = running(local, "p1")
    first = copy(provider, ground, "cm1")
    assert first is not None and first.data == {"k": "v1"} and used_by(first) == {p1.metadata.uid}

    runtime.restart()
    local.patch_namespaced_config_map("cm1", NAMESPACE, {"data": {"k": "v2"}})
    wait_for(lambda: (c := copy(provider, ground, "cm1")) is not None and c.data == {"k": "v2"}, 30,
             "the update after the restart to reach the provider's copy")

    local.create_namespaced_pod(NAMESPACE, pod("p2", NO_GPU, {"envFrom": [{"configMapRef": {"name": "cm1"}}]}))
    p2 = running(local, "p2")
    wait_for(lambda: used_by(copy(provider, ground, "cm1")) == {p1.metadata.uid, p2.metadata.uid}, 30,
             "the copy to list both users")
    local.delete_namespaced_pod("p2", NAMESPACE)
    wait_for(lambda: gone(lambda: local.read_namespaced_pod("p2", NAMESPACE)), 60, "p2 to go")
    wait_for(lambda: mirror_of(provider, ground, p2.metadata.uid) is None, 30, "p2's mirror to go")
    wait_for(lambda: (c := copy(provider, ground, "cm1")) is None or used_by(c) == {p1.metadata.uid}, 30,
             "the copy to list p1 alone")
    still = copy(provider, ground, "cm1")
    assert still is not None, "the copy of cm1 was deleted while p1 still uses it"
    assert used_by(still) == {p1.metadata.uid} and still.data == {"k": "v2"}
    assert local.read_namespaced_pod("p1", NAMESPACE).status.phase == "Running"

    local.delete_namespaced_pod("p1", NAMESPACE)
    wait_for(lambda: gone(lambda: local.read_namespaced_pod("p1", NAMESPACE)), 60, "p1 to go")
    wait_for(lambda: copy(provider, ground, "cm1") is None, 30, "the copy to go with its last user")
    local.delete_namespaced_config_map("cm1", NAMESPACE)


def test_a_refused_pod_takes_nothing_from_allocatable(runtime, local, provider, ground):
    def allocatable() -> tuple[int, object]:
        status = local.read_node(NODE).status
        return int(status.allocatable["nvidia.com/gpu"]), parse_quantity(status.allocatable["cpu"])

    def idle() -> bool:
        status = local.read_node(NODE).status
        return all(parse_quantity(status.allocatable[r]) == parse_quantity(status.capacity[r])
                   for r in ("nvidia.com/gpu", "cpu"))

    # The earlier test's pods (one without GPUs, taking cpu) must be gone first.
    wait_for(idle, 60, "an idle node: allocatable gpu and cpu equal to capacity")
    before = allocatable()
    greedy = {"resources": {"requests": {"cpu": "12"}, "limits": {"cpu": "12"}}}
    local.create_namespaced_pod(NAMESPACE, pod("greedy", ONE_GPU, greedy))
    refused = wait_for(lambda: (p := local.read_namespaced_pod("greedy", NAMESPACE)).status.reason and p, 30,
                       "the refusal")
    assert refused.status.reason == "ExceedsRuntimeClassLimits" and refused.status.phase == "Pending"
    wait_for(lambda: [e for e in local.list_namespaced_event(NAMESPACE, field_selector="involvedObject.name=greedy")
                      .items if e.reason == "ExceedsRuntimeClassLimits"], 30, "the refusal's event")
    # The node writes its status at most once a second after a change: a few seconds see every write it makes.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert allocatable() == before, "the refused pod was counted against the node's allocatable"
        time.sleep(0.5)

    local.create_namespaced_pod(NAMESPACE, pod("admitted", ONE_GPU))
    running(local, "admitted")
    during = wait_for(lambda: (a := allocatable()) != before and a, 20, "allocatable to drop")
    assert during[0] == before[0] - 1, f"allocatable nvidia.com/gpu went {before[0]} → {during[0]} with 1 GPU in use"
    assert before[1] - during[1] == 8  # the class's default cpu, taken by the admitted pod alone
    for name in ("greedy", "admitted"):
        local.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
    wait_for(lambda: allocatable() == before, 60, "allocatable to come back")
