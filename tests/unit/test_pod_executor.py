"""The pod controller's executor: each action carried out, and every outcome mapped once — done, retry with the key's
backoff, requeue after a delay. Stand-ins: the local cluster and the provider, each answering as told."""

from __future__ import annotations

import asyncio

import pytest

from k8sgpu.runtime import errors
from k8sgpu.runtime.admission import Resources
from k8sgpu.runtime.catalog import GPUClass, runtime_class_manifest
from k8sgpu.runtime.controllers.decide import (
    PROVIDER_UNREACHABLE,
    Create,
    DeleteMirror,
    FinishDeletion,
    PatchStatus,
    Wait,
)
from k8sgpu.runtime.controllers.pods import PodController
from k8sgpu.runtime.provider import RemotePod
from k8sgpu.runtime.reflector import DONE, RETRY, requeue_after

CLASS = GPUClass.from_runtime_class(runtime_class_manifest(
    "rc", node_name="n.gpu", gpu_product="NVIDIA-RTX-A6000", gpu_count=0, cpu="1", memory="1Gi"))
POD = {"kind": "Pod", "metadata": {"namespace": "ns", "name": "p", "uid": "u1"},
       "spec": {"runtimeClassName": "rc", "containers": [{"name": "c", "image": "cuda"}]},
       "status": {"phase": "Pending"}}
MIRROR = RemotePod("ns", "p", "u1", {"phase": "Running"}, mirror_name="m")


class Answering:
    """Every call records itself and raises ``error`` (None: succeeds)."""

    name = "stand-in"

    def __init__(self, error: Exception | None):
        self.error, self.calls = error, []

    def __getattr__(self, method):
        async def call(*args, **kwargs):
            self.calls.append((method, args, kwargs))
            if self.error is not None:
                raise self.error
            return POD
        return call


ROWS = [
    ("deleting a mirror succeeds → done", DeleteMirror(MIRROR, 5, "x"), None, None, DONE),
    ("the provider does not answer a mirror's deletion → retry with backoff",
     DeleteMirror(MIRROR, 5, "x"), errors.Unavailable("provider: 503"), None, RETRY),
    ("the provider forbids a mirror's deletion → logged, done (the next change requeues)",
     DeleteMirror(MIRROR, 5, "x"), errors.Forbidden("provider: 403"), None, DONE),
    ("a create the provider cannot take now → retry with backoff",
     Create(CLASS, Resources()), errors.Unavailable("provider: 503"), None, RETRY),
    ("a status patch that conflicts → retry with backoff",
     PatchStatus({"phase": "Running"}, update_metadata=False), None, errors.Conflict("local: 409"), RETRY),
    ("the local pod of a status patch is gone → done",
     PatchStatus({"phase": "Running"}, update_metadata=False), None, errors.NotFound("local: 404"), DONE),
    ("finishing a deletion of a pod gone already → done", FinishDeletion(), None, errors.NotFound("local: 404"), DONE),
    ("expired credentials while finishing a deletion → retry", FinishDeletion(), None,
     errors.Unauthorized("local: 401"), RETRY),
    ("waiting until something changes → done", Wait("InSync"), None, None, DONE),
    ("waiting with backoff → retry", Wait(PROVIDER_UNREACHABLE, backoff=True), None, None, RETRY),
    ("waiting a fixed time → requeue after it", Wait("Later", delay=5.0), None, None, requeue_after(5.0)),
]


@pytest.mark.parametrize(("action", "provider_error", "local_error", "result"), [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])
def test_execute(action, provider_error, local_error, result):
    async def scenario():
        local, provider = Answering(local_error), Answering(provider_error)
        controller = PodController(local, provider, "n.gpu", workers=1)
        controller.pods.store["ns/p"] = POD
        return await controller.execute("ns/p", POD, action), provider.calls, local.calls

    outcome, provider_calls, local_calls = asyncio.run(scenario())
    assert outcome == result
    if isinstance(action, DeleteMirror):
        assert provider_calls == [("delete_pod", ("ns", "p", 5), {"mirror_name": "m"})]
    if isinstance(action, Wait):
        assert provider_calls == [] and local_calls == []


def test_a_claim_whose_pod_went_unseen_is_found_stale_and_one_whose_mirror_terminates_is_kept():
    """The claims resync: a pod key still holding objects although its pod and its mirror are gone (their deletion
    events lost around an etcd restart) is synced again; a gone pod whose mirror still terminates keeps them."""
    async def scenario():
        controller = PodController(Answering(None), Answering(None), "n.gpu", workers=1)
        controller.catalog["rc"] = CLASS
        refs = frozenset({("ConfigMap", "ns", "cfg")})
        for key, uid in (("ns/gone", "u2"), ("ns/terminating", "u3"), ("ns/p", "u1"), ("ns/finished", "u4")):
            controller.objects.claim(key, uid, refs)
        controller._add_mirror(RemotePod("ns", "terminating", "u3", {"phase": "Running"}, mirror_name="t"))
        controller.pods.store["ns/p"] = {**POD, "spec": {**POD["spec"], "containers": [
            {"name": "c", "image": "cuda", "envFrom": [{"configMapRef": {"name": "cfg"}}]}]}}
        controller.pods.store["ns/finished"] = {**POD, "metadata": {"namespace": "ns", "name": "finished",
                                                                    "uid": "u4"}, "status": {"phase": "Succeeded"}}
        return sorted(controller.stale_claims())

    assert asyncio.run(scenario()) == ["ns/finished", "ns/gone"]
