"""The fault suite's short form on a ground of its own: each fault, then the invariant checker until it finds no
violation (cli/chaos.py, cli/invariants.py; `make chaos` runs the full sizes on a ground of its own).

A node of its own (faults.gpu, its own RuntimeClasses, RBAC, namespace and ports), so that it never meets the other
modules' nodes. The faults run in the suite's order: the first builds the pods the others change."""

from __future__ import annotations

import base64
import sys

import pytest

from k8sgpu.cli.chaos import FAULTS, SCALES, Chaos
from k8sgpu.cli.dev.ground import Ground
from k8sgpu.runtime.translate import NODE_LABEL, ORIGIN_NAME, ORIGIN_NAMESPACE, ORIGIN_UID_LABEL, remote_name

pytestmark = pytest.mark.e2e

NODE = "faults.gpu"
NAMESPACE = "k8sgpu-faults"


def _say(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def faults_ground(binaries, tmp_path_factory):
    """A ground of its own (no worker node), as `k8sgpu chaos faults` uses: its faults restart API servers and etcd,
    which must not reach the session ground the other modules share."""
    ground = Ground(tmp_path_factory.mktemp("faults-ground"), progress=_say, worker=False)
    state, _ = ground.up(binaries)
    try:
        yield ground, state
    finally:
        ground.down()


@pytest.fixture(scope="module")
def ground(faults_ground):
    return faults_ground[1]


@pytest.fixture(scope="module")
def chaos(faults_ground, tmp_path_factory):
    ground, state = faults_ground
    run = Chaos(ground, state, SCALES["short"], tmp_path_factory.mktemp("faults"), say=_say, node=NODE,
                namespace=NAMESPACE)
    run.setup()
    try:
        yield run
    finally:
        run.teardown()
        if run.runtime is not None:
            print("\n".join(run.runtime.log.read_text(errors="replace").splitlines()[-150:]))


@pytest.mark.parametrize("fault", FAULTS)
def test_after_the_fault_every_invariant_holds_again(chaos, fault):
    result = chaos.run(fault)
    assert result.violations == [], f"{fault}: still wrong after {result.seconds}s:\n" + "\n".join(result.violations)


def test_the_checker_sees_drift_the_runtime_then_repairs(chaos, local, provider, ground):
    """With the runtime stopped, drift made by hand on both sides is reported, one line each; started again, the
    runtime repairs it all."""
    tenant = ground.tenant_namespace
    # Pods that keep running: one that exits on its own would release its copies (seen in CI: 404 patching one).
    created = chaos._new_pods(2, lasting=True)
    assert chaos.checker.converge(chaos.scale.converge_timeout).violations == []
    chaos.runtime.kill()
    try:
        first, second = (local.read_namespaced_pod(n, NAMESPACE) for n in created)
        local.patch_namespaced_pod(first.metadata.name, NAMESPACE, {"metadata": {"labels": {"drifted": "yes"}}})
        orphan_uid = "00000000-0000-4000-8000-000000000000"
        provider.create_namespaced_pod(tenant, {
            "metadata": {"name": remote_name(NAMESPACE, "ghost", orphan_uid),
                         "labels": {NODE_LABEL: NODE, ORIGIN_UID_LABEL: orphan_uid, "k8sgpu.io/kind": "pod"},
                         "annotations": {ORIGIN_NAMESPACE: NAMESPACE, ORIGIN_NAME: "ghost"}},
            "spec": {"containers": [{"name": "c", "image": "cuda:12"}], "nodeSelector": {"none": "none"}}})
        # Copies the two new pods use (other copies may be gone with the pods of earlier faults).
        used = dict(sorted({o for n in created for o in chaos.objects_of(n)}, reverse=True))
        cm, secret = used["ConfigMap"], used["Secret"]
        provider.patch_namespaced_config_map(remote_name(NAMESPACE, cm), tenant, {"data": {"value": "drifted"}})
        provider.patch_namespaced_secret(remote_name(NAMESPACE, secret), tenant,
                                         {"data": {"value": base64.b64encode(b"drifted").decode()}})
        found = chaos.checker.check()
        text = "\n".join(found)
        assert f"pod {NAMESPACE}/{first.metadata.name}" in text and "'drifted'" in text, text
        assert "mirror " + remote_name(NAMESPACE, "ghost", orphan_uid) in text, text
        assert f"ConfigMap {NAMESPACE}/{cm}: copy's data differs" in text, text
        assert f"Secret {NAMESPACE}/{secret}: copy's data differs" in text, text
        assert second.metadata.name not in text, text
    finally:
        chaos.runtime.start()
    chaos.runtime.wait_ready()
    result = chaos.checker.converge(chaos.scale.converge_timeout)
    assert result.violations == [], "\n".join(result.violations)


def test_an_object_updated_while_the_provider_is_down_reaches_its_copy_once_it_answers(chaos):
    """Found by the suite (provider-apiserver-down at full scale): a copy whose write failed during the outage stayed
    stale until something else touched the object."""
    name = chaos._new_pods(1)[0]
    assert chaos.checker.converge(chaos.scale.converge_timeout).violations == []
    kind, obj = chaos.objects_of(name)[0]
    chaos.ground.stop_process("provider-kube-apiserver")
    try:
        chaos.update_object(kind, obj, "changed-while-the-provider-was-down")
        chaos.checker.converge(5)  # the runtime meets the outage meanwhile
    finally:
        chaos.ground.start_process("provider-kube-apiserver", timeout=120)
    result = chaos.checker.converge(chaos.scale.converge_timeout)
    chaos._healthy_ground()
    assert result.violations == [], "\n".join(result.violations)
