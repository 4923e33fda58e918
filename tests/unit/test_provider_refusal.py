"""A create the provider refuses: the local pod waits with a reason naming what the provider said, one Warning Event
however often the create is tried, and the decision the queue carries out (retry a Forbidden, not an Invalid).
Stand-ins: the local cluster (records what is written) and the provider (answers the create as told)."""

from __future__ import annotations

import asyncio
import json

from k8sgpu.runtime import errors
from k8sgpu.runtime.catalog import GPUClass, runtime_class_manifest
from k8sgpu.runtime.controllers.pods import PodController
from k8sgpu.runtime.reflector import DONE, RETRY

KEY = "ns/p"


class LocalCluster:
    name = "local"

    def __init__(self):
        self.events: list[dict] = []
        self.statuses: list[dict] = []
        self.pod: dict = {}

    async def create(self, kind, namespace, body):
        assert kind == "Event"
        if any(e["metadata"]["name"] == body["metadata"]["name"] for e in self.events):
            raise errors.AlreadyExists("exists")
        self.events.append(body)
        return body

    async def patch(self, kind, namespace, name, body, subresource=None, patch_type=None):
        if kind == "Event":
            return body
        assert (kind, subresource) == ("Pod", "status")
        self.statuses.append(body["status"])
        self.pod = {**self.pod, "status": {**self.pod["status"], **body["status"]}}
        return self.pod


class Provider:
    def __init__(self, answers: list[Exception | None]):
        self.answers, self.creates = answers, 0

    async def create_pod(self, pod, offer, resources):
        self.creates += 1
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer


def _refused(status: int, message: str) -> errors.KubeError:
    body = json.dumps({"kind": "Status", "message": message, "reason": "Forbidden"}).encode()
    return errors.from_status("provider", "POST", "/api/v1/namespaces/tenant/pods", status, body)


def _controller(answers) -> tuple[PodController, LocalCluster, Provider]:
    local, provider = LocalCluster(), Provider(answers)
    controller = PodController(local, provider, "n.gpu", workers=1)
    manifest = runtime_class_manifest("rc", node_name="n.gpu", gpu_product="NVIDIA-RTX-A6000", gpu_count=0, cpu="1",
                                      memory="1Gi")
    controller.catalog["rc"] = GPUClass.from_runtime_class(manifest)
    pod = {"kind": "Pod", "metadata": {"namespace": "ns", "name": "p", "uid": "u1", "resourceVersion": "1"},
           "spec": {"runtimeClassName": "rc", "nodeName": "n.gpu",
                    "tolerations": manifest["scheduling"]["tolerations"],
                    "containers": [{"name": "c", "image": "cuda"}]},
           "status": {"phase": "Pending"}}
    local.pod = pod
    controller.pods.store[KEY] = pod
    return controller, local, provider


def quota(used: int) -> errors.KubeError:
    return _refused(403, f"pods \"x\" is forbidden: exceeded quota: q, requested: pods=1, used: pods={used}, "
                         f"limited: pods={used}")


def test_a_create_forbidden_by_the_providers_quota_waits_shows_why_once_and_is_retried():
    async def scenario():
        controller, local, provider = _controller([quota(3), quota(4), quota(5), None])
        results = [await controller.sync(KEY) for _ in range(4)]
        return controller, local, provider, results

    controller, local, provider, results = asyncio.run(scenario())
    assert results == [RETRY, RETRY, RETRY, DONE] and provider.creates == 4
    first = local.statuses[0]
    assert first["phase"] == "Pending" and first["reason"] == "ProviderRefused"
    assert first["message"] == ("the GPU provider refused the pod: pods \"x\" is forbidden: exceeded quota: q, "
                                "requested: pods=1, used: pods=3, limited: pods=3")
    # three refusals, each message different (the quota's usage moved): one Event
    refusals = [e for e in local.events if e["reason"] == "ProviderRefused"]
    assert len(refusals) == 1 and refusals[0]["type"] == "Warning" and "exceeded quota: q" in refusals[0]["message"]


def test_a_create_the_provider_finds_invalid_waits_shows_why_and_is_not_retried():
    async def scenario():
        controller, local, provider = _controller([_refused(422, "Pod x is invalid: spec.foo: Invalid")])
        return await controller.sync(KEY), local

    result, local = asyncio.run(scenario())
    assert result == DONE
    assert local.statuses[0]["reason"] == "ProviderInvalid" and "spec.foo: Invalid" in local.statuses[0]["message"]
    assert [e["reason"] for e in local.events] == ["ProviderInvalid"]
