"""Kubelet TLS bootstrapping: the runtime starts from nothing but a bootstrap token, the cluster's endpoint
and CA (what the Terraform node module outputs), gets its node client certificate through the CSR API,
and runs as system:node:k8s.gpu."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client

from k8sgpu.cli.dev import pki
from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.catalog import demo_catalog
from k8sgpu.runtime.certificates import private_pem
from k8sgpu.runtime.rbac import SELF_NODE_CLIENT, bootstrap_rbac, extra_rbac

from .helpers import RuntimeProcess, api, kubectl, node_on_port, remove_node, wait_for

pytestmark = pytest.mark.e2e

NODE = "k8s.gpu"


def _bootstrap_identity(ground, name: str, node_client: bool) -> str:
    """A ServiceAccount that may create CSRs and, with ``node_client``, have node client ones approved."""
    roles = ["system:node-bootstrapper"] + (["system:certificates.k8s.io:certificatesigningrequests:nodeclient"]
                                            if node_client else [])
    docs = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "default"}}]
    docs += [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
              "metadata": {"name": f"{name}-{i}"},
              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
              "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}]}
             for i, role in enumerate(roles)]
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    return kubectl(ground.local.kubeconfig, "create", "token", name, "--duration=1h").stdout.strip()


def _outputs(ground, token: str, path: Path) -> Path:
    server = yaml.safe_load(Path(ground.local.kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
    values = {"node_name": NODE, "tenant_namespace": ground.tenant_namespace, "cluster_endpoint": server,
              "cluster_ca_certificate": (Path(ground.root) / "local-ca.crt").read_text(),
              "bootstrap_token": token, "csr_signer": "kubernetes.io/kubelet-serving"}
    path.write_text(json.dumps({k: {"value": v, "type": "string", "sensitive": k == "bootstrap_token"}
                                for k, v in values.items()}))
    return path


def _start(ground, outputs: Path, log: Path, port: int) -> RuntimeProcess:
    return RuntimeProcess(["--terraform-outputs", str(outputs), "--provider-kubeconfig", ground.tenant_kubeconfig,
                           "--node-address", ground.node_address, "--kubelet-port", str(port), "-v"], log).start()


def test_runtime_bootstraps_its_node_identity_from_a_token(ground, tmp_path):
    local = client.CoreV1Api(api(ground.local.kubeconfig))
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([*demo_catalog(NODE),
                                                                                   *extra_rbac()]))
    token = _bootstrap_identity(ground, "k8sgpu-bootstrap", node_client=True)
    port = free_port()
    proc = _start(ground, _outputs(ground, token, tmp_path / "outputs.json"), tmp_path / "runtime.log", port)
    try:
        wait_for(lambda: (n := node_on_port(local, NODE, port))
                 and _condition(n, "KubeletServingCertificate") == "True", 90,
                 "the bootstrapped node to be Ready and serving")
        certs = client.CertificatesV1Api(api(ground.local.kubeconfig))
        client_csrs = [c for c in certs.list_certificate_signing_request().items
                       if c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"
                       and c.spec.username == "system:serviceaccount:default:k8sgpu-bootstrap"]
        assert len(client_csrs) == 1
        # kube-controller-manager approved it, as for any kubelet's bootstrap.
        assert [(c.type, c.reason) for c in client_csrs[0].status.conditions] == [("Approved", "AutoApproved")]
        # Everything after the bootstrap is done as the node: the serving CSR's requester says so.
        serving = [c for c in certs.list_certificate_signing_request().items
                   if c.spec.signer_name == "kubernetes.io/kubelet-serving"
                   and c.metadata.creation_timestamp >= client_csrs[0].metadata.creation_timestamp]
        assert serving and {c.spec.username for c in serving} == {f"system:node:{NODE}"}
        local.create_namespaced_pod("default", {
            "metadata": {"name": "bootstrapped"},
            "spec": {"runtimeClassName": "seeweb-nvidia-1xa6000",
                     "containers": [{"name": "c", "image": "nvidia/cuda", "command": ["sleep", "infinity"]}]}})
        wait_for(lambda: local.read_namespaced_pod("bootstrapped", "default").status.phase == "Running", 60,
                 "the pod to run")
        logs = kubectl(ground.local.kubeconfig, "logs", "bootstrapped", check=False)
        assert logs.returncode == 0 and "NVIDIA-RTX-A6000" in logs.stdout, logs.stderr
        assert token not in proc.log.read_text()
        local.delete_namespaced_pod("bootstrapped", "default", grace_period_seconds=0)
    finally:
        proc.stop()
        print(proc.tail(30))
        # The node goes with this test: other modules register k8s.gpu afresh.
        wait_for(lambda: not [p for p in local.list_namespaced_pod("default").items
                              if p.spec.node_name == NODE], 30, "no pod left on the node")
        remove_node(ground.local.kubeconfig, NODE)


def test_a_bootstrap_identity_without_nodeclient_says_what_to_do(ground, tmp_path):
    token = _bootstrap_identity(ground, "no-nodeclient", node_client=False)
    proc = _start(ground, _outputs(ground, token, tmp_path / "outputs.json"), tmp_path / "runtime.log",
                  free_port())
    try:
        wait_for(lambda: "certificatesigningrequests/nodeclient" in proc.log.read_text(), 30,
                 "the runtime to say why its certificate waits")
        assert "kubectl certificate approve k8sgpu-client-k8s.gpu-" in proc.log.read_text()
        assert proc.alive()
    finally:
        proc.stop()


def _expiring_node_certificate(ground, path: Path) -> bytes:
    """A certificate of system:node:k8s.gpu from the cluster's CA, valid ten more minutes but past 90 % of its life,
    written as the kubelet keeps it: renewed at once."""
    ca_cert, ca_key = pki.KeyPair(Path(ground.root, "pki", "local", "ca.crt"),
                                  Path(ground.root, "pki", "local", "ca.key")).load()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{NODE}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=2)).not_valid_after(now + datetime.timedelta(minutes=10))
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM) + private_pem(key)
    path.mkdir(mode=0o700)
    (path / "kubelet-client-current.pem").write_bytes(pem)
    return pem


def test_a_stored_node_certificate_is_used_and_renewed_by_the_node_itself(ground, tmp_path):
    """No bootstrap credential that works: the runtime starts from the certificate in --cert-dir and renews it with
    a CSR of its own, which kube-controller-manager approves through selfnodeclient."""
    local = client.CoreV1Api(api(ground.local.kubeconfig))
    renewal = [d for d in bootstrap_rbac(NODE) if d["roleRef"]["name"] == SELF_NODE_CLIENT]
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([*demo_catalog(NODE),
                                                                                   *extra_rbac(), *renewal]))
    stored = _expiring_node_certificate(ground, tmp_path / "pki")
    started = datetime.datetime.now(datetime.UTC)
    port = free_port()
    # A token of the right shape that no Secret backs: any bootstrap would fail.
    proc = RuntimeProcess(["--terraform-outputs", str(_outputs(ground, "abcdef.0123456789abcdef",
                                                               tmp_path / "outputs.json")),
                           "--provider-kubeconfig", ground.tenant_kubeconfig, "--node-address", ground.node_address,
                           "--kubelet-port", str(port), "--cert-dir", str(tmp_path / "pki"), "-v"],
                          tmp_path / "runtime.log").start()
    certs = client.CertificatesV1Api(api(ground.local.kubeconfig))
    try:
        wait_for(lambda: (tmp_path / "pki" / "kubelet-client-current.pem").read_bytes() != stored, 60,
                 "the stored certificate to be renewed")
        assert "from " + str(tmp_path / "pki" / "kubelet-client-current.pem") in proc.log.read_text()
        renewed = [c for c in certs.list_certificate_signing_request(label_selector=f"k8sgpu.io/node={NODE}").items
                   if c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"
                   and c.metadata.creation_timestamp >= started.replace(microsecond=0)
                   # an earlier test's runtime may have asked within the same second, as another requester
                   and c.spec.username == f"system:node:{NODE}"]
        assert [(c.spec.username, [(k.type, k.reason) for k in c.status.conditions or []]) for c in renewed] == [
            (f"system:node:{NODE}", [("Approved", "AutoApproved")])]
        new = x509.load_pem_x509_certificate((tmp_path / "pki" / "kubelet-client-current.pem").read_bytes())
        assert new.not_valid_after_utc > started + datetime.timedelta(hours=1)
        assert new.subject.rfc4514_string() == f"CN=system:node:{NODE},O=system:nodes"
        wait_for(lambda: node_on_port(local, NODE, port), 60, "the node to be Ready")
        assert proc.alive()
    finally:
        proc.stop()
        print(proc.tail(30))
        remove_node(ground.local.kubeconfig, NODE)


def _condition(node, kind: str) -> str | None:
    return next((c.status for c in node.status.conditions or [] if c.type == kind), None)
