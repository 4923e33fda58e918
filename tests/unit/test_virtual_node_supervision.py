"""A part that keeps failing stops the whole runtime: `run_until` raises (the process exits non-zero, its Deployment
restarts it) after the Node has said which part failed. The local cluster is a stand-in that records the writes."""

from __future__ import annotations

import asyncio

import pytest

from k8sgpu.runtime.accounting import NodeUsage
from k8sgpu.runtime.config import build
from k8sgpu.runtime.controllers.node import PARTS_CONDITION, NodeController
from k8sgpu.runtime.supervisor import PartFailed, Supervisor
from k8sgpu.runtime.virtual_node import VirtualNode


class RecordingKube:
    name = "local"

    def __init__(self):
        self.patches: list[dict] = []

    async def get(self, kind, namespace, name):
        assert (kind, name) == ("Node", "n.gpu")
        return {"metadata": {"name": name, "annotations": {}}}

    async def patch(self, kind, namespace, name, body, subresource=None, patch_type=None):
        assert (kind, name) == ("Node", "n.gpu")
        if subresource == "status":
            self.patches.append(body["status"])
        return body


def _conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def _config(tmp_path, **flags):
    kubeconfig = tmp_path / "provider.kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    return build({"provider_kubeconfig": str(kubeconfig), "tenant_namespace": "t", "node_name": "n.gpu", **flags}, {})


def test_a_part_that_keeps_failing_marks_the_node_and_ends_the_run(tmp_path):
    config = _config(tmp_path, health_port=0)
    node = VirtualNode(config)
    kube = RecordingKube()

    async def no_wait(seconds):
        await asyncio.sleep(0)

    node.supervisor = Supervisor(on_give_up=node._report_failed, max_failures=3, sleep=no_wait)

    async def broken():
        raise RuntimeError("cannot decode the watch event")

    async def start():
        node.node = NodeController(kube, config.node, "127.0.0.1", used=NodeUsage)
        node.node.ready.set()
        node.supervisor.start("local-Pod", broken)
        node.ready.set()

    node.start = start

    async def scenario():
        with pytest.raises(PartFailed, match="local-Pod kept failing, giving up: RuntimeError: cannot decode"):
            await node.run_until(asyncio.Event())

    asyncio.run(scenario())
    conditions = _conditions(kube.patches[-1])
    assert conditions[PARTS_CONDITION]["status"] == "False" and conditions[PARTS_CONDITION]["reason"] == "PartFailed"
    assert conditions[PARTS_CONDITION]["message"].startswith("local-Pod kept failing (RuntimeError: cannot decode")
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "RuntimePartFailed"


def test_a_healthy_node_says_every_part_runs(tmp_path):
    config = _config(tmp_path)
    status = NodeController(RecordingKube(), config.node, "127.0.0.1", used=NodeUsage).desired_status()
    assert _conditions(status)[PARTS_CONDITION]["status"] == "True"
    assert _conditions(status)["Ready"]["status"] == "True"
