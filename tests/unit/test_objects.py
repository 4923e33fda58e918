"""The object controller's bookkeeping and its serialised syncs: which pods use which ConfigMap/Secret, a copy made
for its users, deleted with its last one, and never deleted under a user who claimed it while the release ran.
Stand-ins: the local cluster (lists the objects it is given; its watch stays quiet) and the provider (records what
is written and can hold a deletion midway)."""

from __future__ import annotations

import asyncio
import json

import pytest

from k8sgpu.runtime import errors
from k8sgpu.runtime.controllers.decide import COPIED, MISSING, PENDING, Copy
from k8sgpu.runtime.controllers.objects import ObjectController, parse_ref_key, ref_key
from k8sgpu.runtime.reflector import DONE, RETRY
from k8sgpu.runtime.supervisor import Supervisor

CM = ("ConfigMap", "ns", "cfg")
KEY = "ConfigMap/ns/cfg"


class LocalObjects:
    name = "local"

    def __init__(self, *objects: dict):
        self.objects = list(objects)

    async def list(self, kind, namespace, label_selector=None, field_selector=None):
        name = field_selector.removeprefix("metadata.name=")
        items = [o for o in self.objects if o["kind"] == kind and o["metadata"]["namespace"] == namespace
                 and o["metadata"]["name"] == name]
        return {"metadata": {"resourceVersion": "1"}, "items": items}

    async def watch(self, kind, namespace, resource_version, timeout_seconds=None, **selectors):
        await asyncio.Event().wait()
        yield {}  # never reached: nothing changes


class Provider:
    def __init__(self, answers: list[Exception | None] | None = None):
        self.calls: list[tuple] = []
        self.answers = answers or []
        self.hold_delete: asyncio.Event | None = None
        self.deleting = asyncio.Event()

    async def put_object(self, obj, users):
        self.calls.append(("put", obj["metadata"]["name"], tuple(users)))
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer

    async def delete_object(self, kind, namespace, name):
        self.deleting.set()
        if self.hold_delete is not None:
            await self.hold_delete.wait()
        self.calls.append(("delete", name))


def configmap(name="cfg") -> dict:
    return {"kind": "ConfigMap", "metadata": {"namespace": "ns", "name": name, "resourceVersion": "5"},
            "data": {"k": "v"}}


async def drain(controller: ObjectController) -> None:
    """Process the queue until it and the watches' first lists have nothing more to give."""
    for _ in range(50):
        if controller.queue._queue.empty():
            await asyncio.sleep(0)
            if controller.queue._queue.empty():
                continue
        await controller.queue.process(await controller.queue._queue.get())


def test_ref_keys_name_kind_namespace_and_name_and_bad_ones_are_refused():
    assert ref_key(CM) == KEY and parse_ref_key(KEY) == CM
    assert parse_ref_key("Secret/ns/a/b") == ("Secret", "ns", "a/b")
    with pytest.raises(ValueError, match="Pod/ns/x"):
        parse_ref_key("Pod/ns/x")


def test_a_copy_is_made_for_its_users_and_deleted_with_the_last_one():
    async def scenario():
        provider, requeued = Provider(), []
        controller = ObjectController(LocalObjects(configmap()), provider, Supervisor(), on_copy=requeued.extend)
        try:
            controller.claim("ns/p1", "u1", frozenset({CM}))
            assert controller.copies([CM]) == {CM: PENDING}
            await drain(controller)
            assert controller.copies([CM]) == {CM: COPIED} and requeued == ["ns/p1"]
            controller.claim("ns/p2", "u2", frozenset({CM}))
            await drain(controller)
            controller.release("ns/p1")
            await drain(controller)
            assert controller.users(CM) == {"ns/p2": "u2"}
            controller.release("ns/p2")
            await drain(controller)
        finally:
            await controller.stop()
        return provider.calls

    calls = asyncio.run(scenario())
    assert calls == [("put", "cfg", ("u1",)), ("put", "cfg", ("u1", "u2")), ("put", "cfg", ("u2",)),
                     ("delete", "cfg")]


def test_a_claim_during_the_release_keeps_the_copy():
    """The last user goes and the copy's deletion is under way when a new pod claims the object: the new pod sees no
    copy (it waits), and the sync after the deletion makes the copy again, listing it."""

    async def scenario():
        provider, requeued = Provider(), []
        provider.hold_delete = asyncio.Event()
        controller = ObjectController(LocalObjects(configmap()), provider, Supervisor(), on_copy=requeued.extend)
        try:
            controller.claim("ns/p1", "u1", frozenset({CM}))
            await drain(controller)
            controller.release("ns/p1")
            releasing = asyncio.create_task(controller.queue.process(await controller.queue._queue.get()))
            await provider.deleting.wait()
            controller.claim("ns/p2", "u2", frozenset({CM}))
            seen_during_release = controller.copies([CM])[CM]
            provider.hold_delete.set()
            await releasing
            await drain(controller)
            return provider.calls, seen_during_release, controller.copies([CM])[CM], requeued
        finally:
            await controller.stop()

    calls, during, after, requeued = asyncio.run(scenario())
    assert during == PENDING
    assert calls == [("put", "cfg", ("u1",)), ("delete", "cfg"), ("put", "cfg", ("u2",))]
    assert after == COPIED and requeued[-1] == "ns/p2"


def test_at_start_copies_in_use_are_brought_up_to_date_and_the_others_deleted():
    async def scenario():
        provider = Provider()
        unused = ("Secret", "ns", "old")
        absent = ("ConfigMap", "ns", "absent")
        controller = ObjectController(LocalObjects(configmap()), provider, Supervisor(), on_copy=lambda keys: None)
        try:
            await controller.start({"ns/p1": ("u1", frozenset({CM, absent}))}, [CM, unused])
            for _ in range(100):
                if len(provider.calls) == 2 and controller.copies([absent])[absent] == MISSING:
                    break
                await asyncio.sleep(0)
            return provider.calls, controller.copies([CM, absent])
        finally:
            await controller.stop()

    calls, copies = asyncio.run(scenario())
    assert sorted(calls) == [("delete", "old"), ("put", "cfg", ("u1",))]
    assert copies == {CM: COPIED, ("ConfigMap", "ns", "absent"): MISSING}


def _provider_error(status: int, message: str) -> errors.KubeError:
    body = json.dumps({"kind": "Status", "message": message}).encode()
    return errors.from_status("provider", "POST", "/api/v1/namespaces/tenant/configmaps", status, body)


@pytest.mark.parametrize(("status", "reason", "result"), [
    (403, "ProviderRefused", RETRY),  # a quota may be raised: tried again with backoff
    (422, "ProviderInvalid", DONE),  # the same content gets the same answer: tried again when it changes
    (413, "ProviderInvalid", DONE),  # too large
    (503, None, RETRY),  # temporary: retried, nothing shown
])
def test_a_copy_the_provider_refuses_is_shown_to_its_users(status, reason, result):
    async def scenario():
        provider, requeued = Provider([_provider_error(status, "no")]), []
        controller = ObjectController(LocalObjects(configmap()), provider, Supervisor(), on_copy=requeued.extend)
        try:
            controller.claim("ns/p1", "u1", frozenset({CM}))
            assert await controller.sync(KEY) == DONE  # the watch's first list is not done yet
            await controller._watches[CM].synced.wait()
            return await controller.sync(KEY), controller.copies([CM])[CM], requeued
        finally:
            await controller.stop()

    outcome, copy, requeued = asyncio.run(scenario())
    assert outcome == result
    if reason is None:
        assert copy == PENDING and requeued == []
    else:
        assert copy == Copy("refused", reason, "no") and requeued == ["ns/p1"]


def test_when_the_provider_answers_again_every_object_in_use_or_copied_is_synced_at_once():
    async def scenario():
        controller = ObjectController(LocalObjects(), Provider(), Supervisor(), on_copy=lambda keys: None)
        await controller.start({"ns/p1": ("u1", frozenset({CM}))}, [("Secret", "ns", "old")])
        await controller.stop()  # nothing runs: what is queued stays queued
        while not controller.queue._queue.empty():
            controller.queue._queued.discard(controller.queue._queue.get_nowait())
        controller.requeue_all()
        queued = set()
        while not controller.queue._queue.empty():
            queued.add(controller.queue._queue.get_nowait())
        return queued

    assert asyncio.run(scenario()) == {KEY, "Secret/ns/old"}
