"""The invariant checker's rules, row by row, over snapshots written as the API serves objects (no API here:
tests/e2e/test_faults.py runs the checker against the real ground)."""

from __future__ import annotations

from k8sgpu.cli.invariants import Snapshot, violations
from k8sgpu.runtime.admission import pod_resources
from k8sgpu.runtime.catalog import GPUClass, runtime_class_manifest
from k8sgpu.runtime.translate import reflected_object, remote_pod

NODE = "unit.gpu"
RC = runtime_class_manifest("unit-1xa6000", node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=1,
                            cpu="8000m", memory="32Gi")
OFFER = GPUClass.from_runtime_class(RC)


def pod(name="p", uid="uid-1", phase="Running", **labels) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": {"app": "x", **labels},
                         "annotations": {"note": "n"}},
            "spec": {"nodeName": NODE, "runtimeClassName": RC["metadata"]["name"], "containers": [
                {"name": "c", "image": "cuda", "command": ["sleep"],
                 "env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}]},
            "status": {"phase": phase}}


def mirror_of(local: dict, phase="Running") -> dict:
    made = remote_pod(local, OFFER, NODE, pod_resources(local, OFFER))
    made["metadata"]["uid"] = "remote-" + local["metadata"]["uid"]
    # What the provider's API server adds: defaults, and quantities in canonical form.
    for c in made["spec"]["containers"]:
        c.update({"terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "Always"})
        c["resources"]["limits"]["cpu"] = "8"
    made["status"] = {"phase": phase}
    return made


def cfg(value="1", rv="7") -> dict:
    return {"kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "ns", "resourceVersion": rv},
            "data": {"k": value}}


def copy_of(obj: dict, users: list[str]) -> dict:
    return {**reflected_object("ConfigMap", obj, users, NODE), "kind": "ConfigMap"}


def node(gpus_allocatable="1", cpu_allocatable="56", pods_allocatable="110") -> dict:
    return {"metadata": {"name": NODE},
            "status": {"capacity": {"cpu": "64", "memory": "100Gi", "nvidia.com/gpu": "2", "pods": "110"},
                       "allocatable": {"cpu": cpu_allocatable, "memory": str(100 * 2**30 - 32 * 2**30),
                                       "nvidia.com/gpu": gpus_allocatable, "pods": pods_allocatable},
                       "conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "ProviderReachable", "status": "True"}]}}


def snapshot(pods, mirrors, copies, the_node=None, objects=None) -> Snapshot:
    objects = {("ConfigMap", "ns", "cfg"): cfg()} if objects is None else objects
    return Snapshot(NODE, the_node or node(), pods, {RC["metadata"]["name"]: RC}, objects, mirrors, copies)


def test_a_caught_up_node_has_no_violation():
    p = pod()
    assert violations(snapshot([p], [mirror_of(p)], [copy_of(cfg(), ["uid-1"])])) == []


def test_a_live_pod_without_mirror_or_with_two_is_reported():
    p = pod()
    alone = violations(snapshot([p], [], [copy_of(cfg(), ["uid-1"])]))
    assert alone == ["pod ns/p (uid-1): no mirror on the provider"]
    twice = violations(snapshot([p], [mirror_of(p), {**mirror_of(p), "metadata": {
        **mirror_of(p)["metadata"], "name": "other"}}], [copy_of(cfg(), ["uid-1"])]))
    assert any("2 mirrors" in line for line in twice), twice


def test_a_mirror_drifted_from_the_spec_labels_or_phase_is_reported():
    p = pod()
    m = mirror_of(p, phase="Pending")
    m["spec"]["containers"][0]["image"] = "old"
    p["metadata"]["labels"]["new"] = "1"
    found = violations(snapshot([p], [m], [copy_of(cfg(), ["uid-1"])]))
    assert any("container c image 'old', want 'cuda'" in line for line in found), found
    assert any("labels {'new': None}" in line for line in found), found
    assert any("phase Running, its mirror's Pending" in line for line in found), found


def test_a_label_the_user_removed_must_leave_the_mirror():
    p = pod(extra="1")
    m = mirror_of(p)
    del p["metadata"]["labels"]["extra"]
    found = violations(snapshot([p], [m], [copy_of(cfg(), ["uid-1"])]))
    assert any("labels ['extra'] that the local pod does not have" in line for line in found), found


def test_a_mirror_without_local_pod_is_reported_but_a_finished_pods_mirror_is_not():
    p, gone = pod(), pod("gone", "uid-2")
    found = violations(snapshot([p], [mirror_of(p), mirror_of(gone)], [copy_of(cfg(), ["uid-1"])]))
    assert found == [f"mirror {mirror_of(gone)['metadata']['name']} of ns/gone (uid-2): no local pod of that UID"]
    done = pod("done", "uid-3", phase="Succeeded")
    assert violations(snapshot([p, done], [mirror_of(p), mirror_of(done, "Succeeded")],
                               [copy_of(cfg(), ["uid-1"])])) == []


def test_copies_follow_data_and_list_exactly_their_live_users():
    p, q = pod(), pod("q", "uid-2")
    mirrors = [mirror_of(p), mirror_of(q)]
    the_node = node(gpus_allocatable="0", cpu_allocatable="48", pods_allocatable="110")
    the_node["status"]["allocatable"]["memory"] = str(100 * 2**30 - 64 * 2**30)
    assert violations(snapshot([p, q], mirrors, [copy_of(cfg(), ["uid-1", "uid-2"])], the_node)) == []
    stale = violations(snapshot([p, q], mirrors, [copy_of(cfg("0"), ["uid-1"])], the_node))
    assert any("copy lists users ['uid-1'], the live pods using it are ['uid-1', 'uid-2']" in line
               for line in stale), stale
    assert any("copy's data differs" in line for line in stale), stale
    nobody = violations(snapshot([], [], [copy_of(cfg(), ["uid-1"])],
                                 node(gpus_allocatable="2", cpu_allocatable="64")))
    assert any("no live pod uses it" in line for line in nobody), nobody


def test_allocatable_is_capacity_minus_what_admitted_unfinished_pods_take_beyond_their_requests():
    p = pod()  # no resources: it takes its class's limits on the provider, of which the scheduler charges nothing
    wrong = node(gpus_allocatable="2")
    found = violations(snapshot([p], [mirror_of(p)], [copy_of(cfg(), ["uid-1"])], wrong))
    assert found == ["node unit.gpu: allocatable nvidia.com/gpu 2, want capacity 2 minus 1 that 1 admitted, "
                     "unfinished pods take beyond their requests = 1"]
    counted_twice = node(pods_allocatable="109")  # the scheduler counts the pod itself
    found = violations(snapshot([p], [mirror_of(p)], [copy_of(cfg(), ["uid-1"])], counted_twice))
    assert found == ["node unit.gpu: allocatable pods 109, want capacity 110 minus 0 that 1 admitted, unfinished "
                     "pods take beyond their requests = 110"]


def test_a_pod_admission_refuses_needs_its_reason_and_takes_nothing():
    greedy = pod("greedy", "uid-9")
    greedy["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "9"}}
    greedy["status"] = {"phase": "Pending"}
    idle = node(gpus_allocatable="2", cpu_allocatable="64")
    idle["status"]["allocatable"]["memory"] = str(100 * 2**30)
    found = violations(snapshot([greedy], [], [], idle))
    assert found == ["pod ns/greedy (uid-9): admission refuses it (ExceedsRuntimeClassLimits) but its status "
                     "reason is None"]
    greedy["status"]["reason"] = "ExceedsRuntimeClassLimits"
    assert violations(snapshot([greedy], [], [], idle)) == []


def test_a_pod_waiting_for_a_mandatory_object_needs_no_mirror_but_provider_refused_is_not_converged():
    p = pod()
    p["status"] = {"phase": "Pending"}
    waiting = violations(snapshot([p], [], [], objects={}))
    assert waiting == []
    p["status"] = {"phase": "Pending", "reason": "ProviderRefused", "message": "exceeded quota"}
    refused = violations(snapshot([p], [], [copy_of(cfg(), ["uid-1"])]))
    assert refused == ["pod ns/p (uid-1): no mirror on the provider (status ProviderRefused: exceeded quota)"]


def test_an_unready_node_is_reported():
    the_node = node()
    the_node["status"]["conditions"][1] = {"type": "ProviderReachable", "status": "False", "reason": "Down",
                                           "message": "refused"}
    p = pod()
    found = violations(snapshot([p], [mirror_of(p)], [copy_of(cfg(), ["uid-1"])], the_node))
    assert found == ["node unit.gpu: ProviderReachable is False (Down: refused)"]

