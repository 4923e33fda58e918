"""What one sync of a pod decides, row by row: the local pod (or none), its mirrors, the provider's reachability, the
catalog and the state of the pod's ConfigMap/Secret copies → exactly one action. No API, no clock but ``NOW``."""

from __future__ import annotations

import pytest

from k8sgpu.runtime.admission import Resources
from k8sgpu.runtime.catalog import CatalogError, GPUClass, runtime_class_manifest
from k8sgpu.runtime.controllers.decide import (
    COPIED,
    COPIES_PENDING,
    FINISHED,
    LOST_MESSAGE,
    MIRROR_TERMINATING,
    MISSING,
    PENDING,
    PROVIDER_UNREACHABLE,
    REFUSED_CONDITION,
    Copy,
    Create,
    DeleteMirror,
    FailLost,
    FinishDeletion,
    Forget,
    Note,
    PatchStatus,
    Wait,
    claimed_objects,
    decide,
)
from k8sgpu.runtime.provider import RemotePod

NOW, T0 = "2026-01-01T00:02:00Z", "2026-01-01T00:00:00Z"
CLASS = GPUClass.from_runtime_class(runtime_class_manifest(
    "rc", node_name="n.gpu", gpu_product="NVIDIA-RTX-A6000", gpu_count=1, cpu="8", memory="32Gi"))
CATALOG = {"rc": CLASS, "broken": CatalogError("RuntimeClass broken lacks annotation(s) gpu.k8s.gpu/count")}
RUNNING = {"phase": "Running", "podIP": "10.0.0.7", "startTime": T0, "conditions": [
    {"type": "Ready", "status": "True", "lastTransitionTime": T0}]}
SCHEDULED = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}


def pod(*, uid="u1", rc="rc", status=None, deleting=False, grace=30, env_from=(), **spec) -> dict:
    meta = {"namespace": "ns", "name": "p", "uid": uid}
    if deleting:
        meta |= {"deletionTimestamp": T0, "deletionGracePeriodSeconds": grace}
    containers = [{"name": "c", "image": "cuda",
                   "envFrom": [{f"{k[0].lower()}{k[1:]}Ref": {"name": n, "optional": o}} for k, n, o in env_from]}]
    return {"metadata": meta, "spec": {"runtimeClassName": rc, "containers": containers, **spec},
            "status": status or {"phase": "Pending"}}


def mirror(uid="u1", name="m-u1", *, status=None, deleting=False, created=T0) -> RemotePod:
    return RemotePod("ns", "p", uid, status or RUNNING, deleting=deleting, mirror_name=name, created=created)


CM = ("ConfigMap", "ns", "cfg")
SECRET = ("Secret", "ns", "key")

# (spec row, local pod, mirrors, provider reachable, copies, the action)
ROWS = [
    ("local pod gone, mirror running → delete the mirror at once",
     None, [mirror()], True, {}, DeleteMirror(mirror(), 0, "its local pod is gone")),
    ("local pod gone, mirror running, provider unreachable → wait for it",
     None, [mirror()], False, {}, Wait(PROVIDER_UNREACHABLE, "the mirrors to delete wait for the provider")),
    ("local pod gone, mirror terminating → wait for its end",
     None, [mirror(deleting=True)], True, {}, Wait(MIRROR_TERMINATING)),
    ("local pod gone, no mirror → forget the key",
     None, [], True, {}, Forget()),
    ("mirror of an earlier pod of the same name → delete it first",
     pod(uid="u2"), [mirror()], True, {}, DeleteMirror(mirror(), 0, "its local pod is gone")),
    ("earlier pod's mirror terminating, new pod pending → create the new mirror",
     pod(uid="u2"), [mirror(deleting=True)], True, {}, Create(CLASS, Resources(8, 32 * 2**30, 1))),
    ("two mirrors of one pod → delete the newer",
     pod(status=RUNNING), [mirror(name="m-b", created="2026-01-01T00:01:00Z"), mirror(name="m-a")], True, {},
     DeleteMirror(mirror(name="m-b", created="2026-01-01T00:01:00Z"), 0, "a duplicate")),
    ("local pod deleting, mirror running → delete the mirror with the pod's grace",
     pod(status=RUNNING, deleting=True, grace=12), [mirror()], True, {},
     DeleteMirror(mirror(), 12, "its local pod is being deleted")),
    ("local pod deleting, mirror terminating → wait for its end",
     pod(status=RUNNING, deleting=True), [mirror(deleting=True)], True, {}, Wait(MIRROR_TERMINATING)),
    ("local pod deleting, mirror gone → finish the deletion, as a kubelet does",
     pod(status=RUNNING, deleting=True), [], True, {}, FinishDeletion()),
    ("local pod deleting, no mirror, provider unreachable → wait: the mirror may still run",
     pod(status=RUNNING, deleting=True), [], False, {},
     Wait(PROVIDER_UNREACHABLE, "the provider must confirm the mirror is gone")),
    ("mirror running, local in step → nothing to write but the mirror's metadata checked",
     pod(status=RUNNING), [mirror()], True, {}, PatchStatus(None, update_metadata=True)),
    ("mirror running, provider unreachable → the last status the mirror had still applies",
     pod(status=RUNNING), [mirror()], False, {}, PatchStatus(None, update_metadata=True)),
    ("mirror scheduled only, local pending → no write (the local pod says as much)",
     pod(), [mirror(status=SCHEDULED)], True, {}, PatchStatus(None, update_metadata=True)),
    ("mirror terminating while the local pod is not deleted → status follows, metadata left alone",
     pod(status=RUNNING), [mirror(deleting=True)], True, {}, PatchStatus(None, update_metadata=False)),
    ("local pod finished, no mirror → nothing to do",
     pod(status={"phase": "Succeeded"}), [], True, {}, Wait(FINISHED)),
    ("local pod ran, mirror vanished → fail it as lost",
     pod(status={"phase": "Running", "startTime": T0}), [], True, {},
     FailLost({"phase": "Failed", "reason": "ProviderPodLost", "message": LOST_MESSAGE})),
    ("local pod ran, no mirror, provider unreachable → keep the last status",
     pod(status={"phase": "Running", "startTime": T0}), [], False, {},
     Wait(PROVIDER_UNREACHABLE, "the last status stays until the provider answers")),
    ("pending pod, provider unreachable → retry the create with backoff",
     pod(), [], False, {}, Wait(PROVIDER_UNREACHABLE, "the create waits for the provider", backoff=True)),
    ("pending pod, admitted, nothing to copy → create its mirror with the class's resources",
     pod(), [], True, {}, Create(CLASS, Resources(8, 32 * 2**30, 1))),
    ("pending pod naming no RuntimeClass → Pending with the reason",
     pod(rc=""), [], True, {}, Wait("NoRuntimeClass", "pods on this node must name a GPU RuntimeClass in "
                                    "spec.runtimeClassName (kubectl get runtimeclass lists them), or the node needs "
                                    "a default offering: k8sgpu-runtime --default-runtime-class "
                                    "(K8SGPU_DEFAULT_RUNTIME_CLASS, Terraform variable default_runtime_class)",
                                    show=True)),
    ("pending pod of a RuntimeClass the catalog cannot read → Pending with the reason",
     pod(rc="broken"), [], True, {},
     Wait("InvalidRuntimeClass", "RuntimeClass broken lacks annotation(s) gpu.k8s.gpu/count", show=True)),
    ("pending pod asking more than its class → Pending with the rule's reason",
     pod(hostNetwork=True), [], True, {},
     Wait("PodSecurityBaseline", "spec.hostNetwork=true is not allowed by the baseline profile", show=True)),
    ("pending pod, mandatory ConfigMap missing → Pending with the reason and its Event",
     pod(env_from=[("ConfigMap", "cfg", False)]), [], True, {CM: MISSING},
     Wait("MandatoryConfigMapNotFound", "ConfigMap cfg not found; the pod waits for it", show=True,
          notes=(Note("MandatoryConfigMapNotFound", "ConfigMap cfg not found; the pod waits for it"),))),
    ("pending pod, optional Secret missing → created, with an Event saying it runs without it",
     pod(env_from=[("Secret", "key", True)]), [], True, {SECRET: MISSING},
     Create(CLASS, Resources(8, 32 * 2**30, 1),
            (Note("OptionalSecretNotFound", "Secret key not found; the pod runs without it"),))),
    ("pending pod, its copy not made yet → wait for the object controller",
     pod(env_from=[("ConfigMap", "cfg", False)]), [], True, {CM: PENDING},
     Wait(COPIES_PENDING, "waiting for the provider's copies of ConfigMap cfg")),
    ("pending pod, a copy unknown to the object controller → pending too",
     pod(env_from=[("ConfigMap", "cfg", False)]), [], True, {},
     Wait(COPIES_PENDING, "waiting for the provider's copies of ConfigMap cfg")),
    ("pending pod, the provider refused its Secret's copy → Pending with the provider's reason",
     pod(env_from=[("Secret", "key", False)]), [], True, {SECRET: Copy("refused", "ProviderInvalid", "too long")},
     Wait("ProviderInvalid", "the GPU provider refused the copy of Secret key: too long", show=True,
          once_per_reason=True)),
    ("pending pod, every copy made → create",
     pod(env_from=[("ConfigMap", "cfg", False), ("Secret", "key", False)]), [], True, {CM: COPIED, SECRET: COPIED},
     Create(CLASS, Resources(8, 32 * 2**30, 1))),
]


@pytest.mark.parametrize(("local", "mirrors", "reachable", "copies", "action"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_decide(local, mirrors, reachable, copies, action):
    assert decide(local, mirrors, provider_reachable=reachable, catalog=CATALOG, copies=copies, now=NOW) == action


def test_a_pod_naming_no_runtime_class_runs_as_the_default_offering():
    plain = pod(rc="")
    assert decide(plain, [], provider_reachable=True, catalog=CATALOG, copies={}, now=NOW,
                  default_runtime_class="rc") == Create(CLASS, Resources(8, 32 * 2**30, 1))
    refused = decide(plain, [], provider_reachable=True, catalog=CATALOG, copies={}, now=NOW,
                     default_runtime_class="absent")
    assert isinstance(refused, Wait) and refused.reason == "UnknownRuntimeClass" and "absent" in refused.message


def test_a_running_mirror_writes_the_kubelets_conditions_and_drops_the_admission_condition():
    local = pod(status={"phase": "Pending", "reason": "ProviderRefused", "message": "quota",
                        "conditions": [{"type": REFUSED_CONDITION, "status": "False"},
                                       {"type": "DisruptionTarget", "status": "True"}]})
    action = decide(local, [mirror()], provider_reachable=True, catalog=CATALOG, copies={}, now=NOW)
    assert isinstance(action, PatchStatus) and action.update_metadata
    assert action.status["phase"] == "Running" and action.status["reason"] is None
    assert {c["type"]: c for c in action.status["conditions"]} == {
        "Ready": {"type": "Ready", "status": "True", "lastTransitionTime": T0},
        REFUSED_CONDITION: {"type": REFUSED_CONDITION, "$patch": "delete"}}


def test_a_lost_pods_running_containers_end_at_now_and_finished_ones_keep_their_end():
    status = {"phase": "Running", "startTime": T0, "containerStatuses": [
        {"name": "a", "ready": True, "state": {"running": {"startedAt": T0}}},
        {"name": "b", "ready": False, "state": {"terminated": {"exitCode": 0, "finishedAt": T0}}}]}
    action = decide(pod(status=status), [], provider_reachable=True, catalog=CATALOG, copies={}, now=NOW)
    assert isinstance(action, FailLost)
    a, b = action.status["containerStatuses"]
    assert a["state"] == {"terminated": {"exitCode": 137, "reason": "ProviderPodLost", "finishedAt": NOW}}
    assert b["state"] == {"terminated": {"exitCode": 0, "finishedAt": T0}} and not a["ready"] and not b["ready"]


USES = pod(env_from=[("ConfigMap", "cfg", False), ("Secret", "key", True)])

CLAIMS = [
    ("admitted pending pod → every object it references", USES, [], frozenset({CM, SECRET})),
    ("running pod with its mirror → its objects", {**USES, "status": RUNNING}, [mirror()], frozenset({CM, SECRET})),
    ("pod refused by admission → none", {**USES, "spec": {**USES["spec"], "hostPID": True}}, [], frozenset()),
    ("finished pod → none", {**USES, "status": {"phase": "Failed"}}, [mirror()], frozenset()),
    ("deleting pod whose mirror still runs → still its objects",
     pod(deleting=True, env_from=[("ConfigMap", "cfg", False)]), [mirror(deleting=True)], frozenset({CM})),
    ("deleting pod with no mirror left → none", pod(deleting=True, env_from=[("ConfigMap", "cfg", False)]), [],
     frozenset()),
    ("local pod gone, mirror terminating → what it holds, unchanged", None, [mirror(deleting=True)], None),
    ("local pod gone, no mirror → none", None, [], frozenset()),
]


@pytest.mark.parametrize(("local", "mirrors", "claimed"), [row[1:] for row in CLAIMS], ids=[row[0] for row in CLAIMS])
def test_claimed_objects(local, mirrors, claimed):
    assert claimed_objects(local, mirrors, CATALOG) == claimed
