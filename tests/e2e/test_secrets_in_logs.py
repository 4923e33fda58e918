"""Nothing secret in any log: a runtime at -vv bootstraps its identity from a token, runs a pod that uses a Secret
(env and volume), serves `kubectl logs` and `kubectl exec` for it; Terraform plans the generic root with the tenant
kubeconfig; then every line the runtime, Terraform and the ground's processes wrote is searched for the bootstrap
token, the Secret's data, the tenant's and the admin's client keys, any private key and any EKS token."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from k8sgpu.cli.dev.ground import free_port
from k8sgpu.cli.dev.tfvars import generic_tfvars
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac

from .helpers import RuntimeProcess, api, k8sgpu, kubectl, node_on_port, remove_node, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE = "logs.gpu"
RUNTIME_CLASS = "logs-nvidia-1xa6000"
BOOTSTRAP = "logs-bootstrap"
SECRET_VALUE = "s3cr3t-value-that-must-never-be-logged-7f3a"


def _bootstrap_token(ground) -> str:
    docs = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": BOOTSTRAP, "namespace": "default"}}]
    docs += [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
              "metadata": {"name": f"{BOOTSTRAP}-{i}"},
              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
              "subjects": [{"kind": "ServiceAccount", "name": BOOTSTRAP, "namespace": "default"}]}
             for i, role in enumerate(["system:node-bootstrapper",
                                       "system:certificates.k8s.io:certificatesigningrequests:nodeclient"])]
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    return kubectl(ground.local.kubeconfig, "create", "token", BOOTSTRAP, "--duration=1h").stdout.strip()


def _outputs(ground, token: str, path: Path) -> Path:
    server = yaml.safe_load(Path(ground.local.kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
    values = {"node_name": NODE, "tenant_namespace": ground.tenant_namespace, "cluster_endpoint": server,
              "cluster_ca_certificate": (Path(ground.root) / "local-ca.crt").read_text(),
              "bootstrap_token": token, "csr_signer": "kubernetes.io/kubelet-serving"}
    path.write_text(json.dumps({k: {"value": v, "type": "string", "sensitive": k == "bootstrap_token"}
                                for k, v in values.items()}))
    return path


def _key_material(kubeconfig: str) -> list[str]:
    """A kubeconfig's client key, as data, and each base64 line of its PEM; its client certificate as data. (Not the
    certificate's lines one by one: a certificate is public, and lines of it, the issuer's name among them, are the
    same in every certificate of one CA, its own included.)"""
    found = []
    for entry in yaml.safe_load(Path(kubeconfig).read_text()).get("users") or []:
        user = entry.get("user") or {}
        found += [user[key] for key in ("client-certificate-data", "client-key-data") if key in user]
        if "client-key-data" in user:
            pem = base64.b64decode(user["client-key-data"]).decode()
        elif "client-key" in user:
            pem = Path(user["client-key"]).read_text()
        else:
            continue
        found += [line for line in pem.splitlines() if len(line) >= 16 and not line.startswith("-----")]
    return found


@pytest.fixture(scope="module")
def full_run(ground, tf_env, tmp_path_factory):
    """Everything a run writes to logs, gathered once the run is over: {source: text}."""
    work = tmp_path_factory.mktemp("secrets")
    local = client.CoreV1Api(api(ground.local.kubeconfig))
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([
        runtime_class_manifest(RUNTIME_CLASS, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=1, cpu="8",
                               memory="32Gi"),
        *extra_rbac(NODE, name="k8sgpu-logs")]))
    token = _bootstrap_token(ground)
    local.create_namespaced_secret("default", {"metadata": {"name": "logs-secret"},
                                               "stringData": {"password": SECRET_VALUE}})
    port = free_port()
    proc = RuntimeProcess(["--terraform-outputs", str(_outputs(ground, token, work / "outputs.json")),
                           "--provider-kubeconfig", ground.tenant_kubeconfig, "--node-address", ground.node_address,
                           "--kubelet-port", str(port), "-vv"], work / "runtime.log").start()
    try:
        wait_for(lambda: node_on_port(local, NODE, port), 90, f"{NODE} to be Ready")
        local.create_namespaced_pod("default", {
            "metadata": {"name": "logs-pod"},
            "spec": {"runtimeClassName": RUNTIME_CLASS,
                     "containers": [{"name": "c", "image": "nvidia/cuda", "command": ["sleep", "infinity"],
                                     "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {
                                         "name": "logs-secret", "key": "password"}}}],
                                     "volumeMounts": [{"name": "s", "mountPath": "/s"}]}],
                     "volumes": [{"name": "s", "secret": {"secretName": "logs-secret"}}]}})
        wait_for(lambda: local.read_namespaced_pod("logs-pod", "default").status.phase == "Running", 90,
                 "the pod using the Secret to run")
        used = [kubectl(ground.local.kubeconfig, "logs", "logs-pod", check=False),
                kubectl(ground.local.kubeconfig, "exec", "logs-pod", "--", "nvidia-smi", "-L", check=False)]
        assert [r.returncode for r in used] == [0, 0], [r.stderr for r in used]
        local.delete_namespaced_pod("logs-pod", "default", grace_period_seconds=0)
        wait_for(lambda: not [p for p in local.list_namespaced_pod("default").items if p.spec.node_name == NODE],
                 60, "the pod to go")
    finally:
        proc.stop()
        remove_node(ground.local.kubeconfig, NODE)
        local.delete_namespaced_secret("logs-secret", "default")

    shutil.copytree(REPO / "terraform" / "generic", work / "terraform" / "generic")
    tfvars = work / "plan.tfvars.json"
    tfvars.write_text(json.dumps({**generic_tfvars(ground), "namespace": "k8sgpu-logs", "node_name": NODE,
                                  "wait_for_rollout": False}))
    plan = k8sgpu(tf_env, "plan", "--cloud", "generic", "--dir", str(work / "terraform"), "--var-file", str(tfvars),
                  cwd=work)
    assert plan.returncode == 0, plan.stderr[-2000:]
    logs = {"runtime": proc.log.read_text(errors="replace"), "terraform plan": plan.stdout + plan.stderr}
    for path in sorted((Path(ground.root) / "logs").glob("*")):
        if path.is_file():
            logs[f"ground {path.name}"] = path.read_text(errors="replace")
    return {"logs": logs, "token": token}


def test_the_run_was_logged_at_debug(full_run):
    runtime = full_run["logs"]["runtime"]
    assert " DEBUG " in runtime and f"node {NODE} ready" in runtime
    assert len(full_run["logs"]) > 5, "the ground's process logs were read"


def test_no_secret_in_any_log(full_run, ground):
    needles = {
        "the bootstrap token": [full_run["token"]],
        "the Secret's data": [SECRET_VALUE, base64.b64encode(SECRET_VALUE.encode()).decode()],
        "the tenant's client key": _key_material(ground.tenant_kubeconfig),
        "the admin's client key": _key_material(ground.local.kubeconfig),
    }
    found = []
    for source, text in full_run["logs"].items():
        for what, values in needles.items():
            for value in values:
                if value and value in text:
                    at = text.index(value)
                    found.append(f"{what} in {source}: …{text[max(at - 60, 0):at]}<{len(value)} characters>")
                    break
        if "PRIVATE KEY" in text:
            found.append(f"a private key in {source}")
        if re.search(r"k8s-aws-v1\.[A-Za-z0-9_-]{20,}", text):
            found.append(f"an EKS token in {source}")
    assert found == []
