"""`k8sgpu doctor --cloud generic` on the dev ground: a healthy cluster passes; a planted fault is found
with its fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from kubernetes import client

from k8sgpu.runtime.rbac import NODE_CLIENT, bootstrap_rbac, election_rbac, extra_rbac

from .helpers import api, kubectl

pytestmark = pytest.mark.e2e


def doctor(ground, *args: str) -> tuple[int, dict]:
    run = subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", "doctor", "--cloud", "generic", "--kubeconfig",
                          ground.local.kubeconfig, "-o", "json", *args], capture_output=True, text=True, timeout=120)
    assert run.stdout, run.stderr
    return run.returncode, {f["check"]: f for f in json.loads(run.stdout)}


DOCTOR_NS = "k8sgpu-doctor"


def election(ground) -> str:
    """The node module's leader election Role for the ServiceAccount doctor-runtime in a namespace of this module."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DOCTOR_NS}}
    manifests = [namespace, *election_rbac(DOCTOR_NS, "doctor-runtime", "k8s.gpu")]
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests))
    return DOCTOR_NS


def test_a_ready_cluster_passes_and_the_csr_round_trip_cleans_up(ground):
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([*extra_rbac(), *bootstrap_rbac()]))
    code, findings = doctor(ground, "--namespace", election(ground), "--service-account", "doctor-runtime")
    assert code == 0, findings
    assert {k: f["status"] for k, f in findings.items()} == {
        "node-identity": "ok", "runtime-rbac": "ok", "leader-election-rbac": "ok", "bootstrap-rbac": "ok",
        "serving-signer": "ok", "k3s-egress-selector": "skip", "node-name": "ok"}
    assert "v1.32.13" in findings["k3s-egress-selector"]["evidence"]
    csrs = client.CertificatesV1Api(api(ground.local.kubeconfig)).list_certificate_signing_request().items
    assert not [c for c in csrs if c.metadata.name.startswith("k8sgpu-doctor-")]


def test_a_service_account_that_may_have_node_certificates_approved_fails(ground):
    """The hole of issue #16: a lasting identity bound to nodeclient can become any node."""
    namespace = election(ground)
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "doctor-runtime-nodeclient"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_CLIENT},
        "subjects": [{"kind": "ServiceAccount", "name": "doctor-runtime", "namespace": namespace}]}))
    try:
        code, findings = doctor(ground, "--namespace", namespace, "--service-account", "doctor-runtime")
        assert code == 1
        found = findings["bootstrap-rbac"]
        assert found["status"] == "fail" and "any system:node:<name>" in found["evidence"]
        assert "bootstrap token" in found["fix"]
    finally:
        kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding", "doctor-runtime-nodeclient")


def test_removed_runtime_rbac_is_found_with_its_fix(ground):
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(extra_rbac()))
    kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding", "k8sgpu-runtime")
    try:
        code, findings = doctor(ground)
        assert code == 1
        rbac = findings["runtime-rbac"]
        assert rbac["status"] == "fail"
        assert "update certificatesigningrequests/approval" in rbac["evidence"]
        assert "approve signers kubernetes.io/kubelet-serving" in rbac["evidence"]
        assert "make apply CLOUD=generic" in rbac["fix"]
        assert findings["node-identity"]["status"] == "ok"  # the Node authorizer's part is untouched
    finally:
        kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(extra_rbac()))


def test_a_service_account_without_the_election_role_is_found_with_its_fix(ground):
    code, findings = doctor(ground, "--namespace", election(ground), "--service-account", "someone-else")
    assert code == 1
    found = findings["leader-election-rbac"]
    assert found["status"] == "fail"
    assert "get leases k8s.gpu" in found["evidence"] and "create leases" in found["evidence"]
    assert "someone-else-leader-election" in found["fix"]


def test_a_foreign_node_of_our_name_blocks(ground):
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    core.create_node({"metadata": {"name": "taken.gpu"}, "spec": {"providerID": "aws:///eu-west-1a/i-0123"}})
    try:
        code, findings = doctor(ground, "--node-name", "taken.gpu")
        assert code == 1
        assert findings["node-name"]["status"] == "fail"
        assert "aws:///eu-west-1a/i-0123" in findings["node-name"]["evidence"]
        assert "--node-name" in findings["node-name"]["fix"]
    finally:
        core.delete_node("taken.gpu")
