"""What the runtime writes about a pod, and what it leaves to others, on the dev ground: the pod conditions a
kubelet owns (readiness gates deciding Ready), labels and annotations that follow the pod to its mirror, and
provider Events copied once, across a restart too."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac
from k8sgpu.runtime.translate import KIND_LABEL, NODE_LABEL, ORIGIN_NAME, ORIGIN_NAMESPACE, ORIGIN_UID_LABEL

from .helpers import RuntimeProcess, kubectl, node_kubeconfig, node_on_port, remove_node, wait_for

pytestmark = pytest.mark.e2e

NODE = "status.gpu"  # a node of its own: other modules' runtimes register k8s.gpu
RUNTIME_CLASS = "status-no-gpu"
KUBELET_PORT = free_port()
GATE = "example.com/feature"


@pytest.fixture(scope="module")
def runtime(ground, local, tmp_path_factory):
    """A catalog class and the extra RBAC of this module's node, then its runtime with its node identity."""
    no_gpu = runtime_class_manifest(RUNTIME_CLASS, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0,
                                    cpu="1", memory="1Gi")
    kubectl(ground.local.kubeconfig, "apply", "-f", "-",
            stdin=yaml.safe_dump_all([no_gpu, *extra_rbac(NODE, name="k8sgpu-runtime-status")]))
    work = tmp_path_factory.mktemp("status-runtime")
    proc = RuntimeProcess(["--kubeconfig", node_kubeconfig(ground, NODE, work), "--node-name", NODE,
                           "--provider-kubeconfig", ground.tenant_kubeconfig,
                           "--tenant-namespace", ground.tenant_namespace, "--node-address", ground.node_address,
                           "--kubelet-port", str(KUBELET_PORT), "-v"], work / "runtime.log").start()
    try:
        wait_for(lambda: node_on_port(local, NODE, KUBELET_PORT), 90, f"node {NODE} to be Ready")
        yield proc
    finally:
        for pod in local.list_namespaced_pod("default", field_selector=f"spec.nodeName={NODE}").items:
            local.delete_namespaced_pod(pod.metadata.name, "default", grace_period_seconds=0)
        proc.stop()
        print(proc.tail(80))
        remove_node(ground.local.kubeconfig, NODE)


def pod_manifest(name: str, **spec) -> dict:
    return {"metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {"runtimeClassName": RUNTIME_CLASS, "restartPolicy": "Always",
                     "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"],
                                     "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}], **spec}}


def conditions(local, name: str) -> dict[str, client.V1PodCondition]:
    return {c.type: c for c in local.read_namespaced_pod(name, "default").status.conditions or []}


def running(local, name: str, timeout: float = 60):
    return wait_for(lambda: (p := local.read_namespaced_pod(name, "default")).status.phase == "Running"
                    and p.status.container_statuses and p, timeout, f"{name} to run")


def mirror_of(provider, ground, pod) -> client.V1Pod | None:
    pods = provider.list_namespaced_pod(ground.tenant_namespace,
                                        label_selector=f"{ORIGIN_UID_LABEL}={pod.metadata.uid}").items
    return pods[0] if pods else None


def patch_status(kubeconfig: str, namespace: str, name: str, status: dict, patch_type: str = "strategic") -> None:
    """A status write through the status subresource, as a controller makes one."""
    kubectl(kubeconfig, "-n", namespace, "patch", "pod", name, "--subresource=status", f"--type={patch_type}",
            "-p", json.dumps({"status": status}))


def restart_mirror_container(ground, mirror_name: str) -> None:
    """The provider reports the mirror's container restarted once (as its kubelet would): the runtime writes
    the local pod's status again."""
    mirror = json.loads(kubectl(ground.provider.kubeconfig, "-n", ground.tenant_namespace, "get", "pod",
                                mirror_name, "-o", "json").stdout)
    statuses = mirror["status"]["containerStatuses"]
    for cs in statuses:
        cs["restartCount"] = cs.get("restartCount", 0) + 1
    patch_status(ground.provider.kubeconfig, ground.tenant_namespace, mirror_name, {"containerStatuses": statuses},
                 patch_type="merge")


def restarts(local, name: str) -> int:
    return local.read_namespaced_pod(name, "default").status.container_statuses[0].restart_count


def test_readiness_gate_decides_ready_and_its_condition_survives_status_writes(runtime, local, provider, ground):
    local.create_namespaced_pod("default", pod_manifest("gated", readinessGates=[{"conditionType": GATE}]))
    pod = running(local, "gated")
    wait_for(lambda: (c := conditions(local, "gated").get("ContainersReady")) and c.status == "True", 30,
             "the containers to be ready")
    time.sleep(3)  # the runtime's writes have settled: Ready must still wait for the gate
    ready = conditions(local, "gated")["Ready"]
    assert ready.status == "False", "Ready is True although the readiness gate's condition is absent"
    assert ready.reason == "ReadinessGatesNotReady" and GATE in ready.message

    # The gate's controller says yes, through the status subresource: the pod turns Ready.
    patch_status(ground.local.kubeconfig, "default", "gated", {"conditions": [
        {"type": GATE, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    wait_for(lambda: conditions(local, "gated")["Ready"].status == "True", 15, "the pod to turn Ready")

    # The runtime writes status again (the mirror's container restarted): the gate's condition stays.
    restart_mirror_container(ground, mirror_of(provider, ground, pod).metadata.name)
    wait_for(lambda: restarts(local, "gated") == 1, 15, "the restart to reach the local pod")
    found = conditions(local, "gated")
    assert found[GATE].status == "True" and found["Ready"].status == "True"

    # The gate's controller says no: Ready follows, naming the gate.
    patch_status(ground.local.kubeconfig, "default", "gated", {"conditions": [{"type": GATE, "status": "False"}]})
    ready = wait_for(lambda: (c := conditions(local, "gated")["Ready"]).status == "False" and c, 15,
                     "the pod to turn not Ready")
    assert ready.reason == "ReadinessGatesNotReady" and f'"{GATE}" is not "True", but False' in ready.message
    assert conditions(local, "gated")[GATE].status == "False"
    local.delete_namespaced_pod("gated", "default", grace_period_seconds=0)


def test_conditions_of_other_writers_survive_the_runtimes_status_writes(runtime, local, provider, ground):
    local.create_namespaced_pod("default", pod_manifest("others"))
    pod = running(local, "others")
    wait_for(lambda: (c := conditions(local, "others").get("Ready")) and c.status == "True", 30, "the pod Ready")
    scheduled = conditions(local, "others")["PodScheduled"]
    # Stamped now: kube-controller-manager resets a DisruptionTarget older than two minutes on a pod that is
    # not terminating.
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    patch_status(ground.local.kubeconfig, "default", "others", {"conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
         "message": "Eviction API: evicting", "lastTransitionTime": now},
        {"type": "example.com/other", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    time.sleep(3)  # the runtime sees the change (a sync of the pod)
    restart_mirror_container(ground, mirror_of(provider, ground, pod).metadata.name)
    wait_for(lambda: restarts(local, "others") == 1, 15, "the restart to reach the local pod")
    found = conditions(local, "others")
    assert "DisruptionTarget" in found and "example.com/other" in found, \
        f"the runtime's status write erased other writers' conditions: {sorted(found)}"
    assert (found["DisruptionTarget"].status, found["DisruptionTarget"].reason) == ("True", "EvictionByEvictionAPI")
    # PodScheduled is the local scheduler's: the mirror's (the provider's scheduler's) never replaces it.
    assert found["PodScheduled"].last_transition_time == scheduled.last_transition_time
    assert found["Ready"].status == "True"
    local.delete_namespaced_pod("others", "default", grace_period_seconds=0)


def test_label_and_annotation_changes_reach_the_mirror(runtime, local, provider, ground):
    local.create_namespaced_pod("default", pod_manifest(
        "relabelled", metadata={"labels": {"app": "train", "tier": "batch"}, "annotations": {"note": "one"}}))
    pod = running(local, "relabelled")
    assert mirror_of(provider, ground, pod).metadata.labels["tier"] == "batch"
    local.patch_namespaced_pod("relabelled", "default", {"metadata": {
        "labels": {"tier": "online", "added": "yes", "app": None, NODE_LABEL: "elsewhere"},
        "annotations": {"example.com/added": "2"}}}, _content_type="application/merge-patch+json")

    def followed():
        mirror = mirror_of(provider, ground, pod)
        labels, annotations = mirror.metadata.labels or {}, mirror.metadata.annotations or {}
        return (labels.get("tier") == "online" and labels.get("added") == "yes" and "app" not in labels
                and annotations.get("example.com/added") == "2" and mirror)

    mirror = wait_for(followed, 10, "the mirror to carry the new labels and annotations")
    labels, annotations = mirror.metadata.labels, mirror.metadata.annotations
    # The runtime's own keys stay, and no user label overrides them.
    assert labels[NODE_LABEL] == NODE and labels[ORIGIN_UID_LABEL] == pod.metadata.uid and labels[KIND_LABEL] == "pod"
    assert (annotations[ORIGIN_NAMESPACE], annotations[ORIGIN_NAME]) == ("default", "relabelled")
    assert annotations["note"] == "one"
    local.delete_namespaced_pod("relabelled", "default", grace_period_seconds=0)


def copies(local, name: str) -> dict[str, tuple[str, int, str]]:
    """The runtime's copies of provider Events on the local pod: name → (reason, count, lastTimestamp)."""
    return {e.metadata.name: (e.reason, e.count, str(e.last_timestamp))
            for e in local.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
            if e.source and e.source.component == "k8sgpu" and e.reason in ("Scheduled", "TestProviderEvent")}


def test_provider_events_are_copied_once_across_a_restart(runtime, local, provider, ground):
    local.create_namespaced_pod("default", pod_manifest("chatty"))
    pod = running(local, "chatty")
    mirror = mirror_of(provider, ground, pod)
    # An Event of the provider's own about the mirror, besides its scheduler's.
    stamp = "2026-01-01T00:00:00Z"
    event = provider.create_namespaced_event(ground.tenant_namespace, {
        "metadata": {"name": f"{mirror.metadata.name}.test"},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ground.tenant_namespace,
                           "name": mirror.metadata.name, "uid": mirror.metadata.uid},
        "reason": "TestProviderEvent", "message": "something happened on the provider", "type": "Normal",
        "count": 1, "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": "provider-test"}})
    before = wait_for(lambda: (c := copies(local, "chatty")) and {r for r, _, _ in c.values()} == {
        "Scheduled", "TestProviderEvent"} and c, 30, "the provider's events to be copied")
    time.sleep(2)  # past the second of the copies' timestamps: a copy made again would show a later one

    def starts() -> int:
        return runtime.log.read_text(errors="replace").count(f"node {NODE} ready at")

    started = starts()
    runtime.kill()
    runtime.start()
    # Ready again and resynced: the new runtime has listed the provider (its Events too) and says so.
    wait_for(lambda: starts() > started, 90, "the restarted runtime to be ready")
    wait_for(lambda: node_on_port(local, NODE, KUBELET_PORT), 30, f"node {NODE} Ready again")
    # Resynced: a later count of the provider's Event reaches its copy (a series goes on in the same copy).
    provider.patch_namespaced_event(event.metadata.name, ground.tenant_namespace, {"count": 2},
                                    _content_type="application/merge-patch+json")
    after = wait_for(lambda: (c := copies(local, "chatty")) and any(n == 2 for _, n, _ in c.values()) and c, 60,
                     "the provider Event's new count to reach its copy")
    time.sleep(3)  # whatever else the re-list would copy has been copied by now
    after = copies(local, "chatty")
    assert len(after) == len(before), f"copies grew across the restart: {before} → {after}"
    for name, (reason, count, last) in before.items():
        if reason == "TestProviderEvent":
            assert after[name][:2] == (reason, 2)
        else:
            assert after[name] == (reason, count, last), f"{name} was copied again: {before[name]} → {after[name]}"
    local.delete_namespaced_pod("chatty", "default", grace_period_seconds=0)
    try:
        provider.delete_namespaced_event(event.metadata.name, ground.tenant_namespace)
    except ApiException as exc:
        assert exc.status == 404
