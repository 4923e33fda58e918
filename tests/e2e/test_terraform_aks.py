"""terraform/aks applied on the dev ground the way an AKS user applies it: with their kubeconfig (here the local
cluster's admin one, its client certificate and key inline, as `az aks get-credentials` writes them). No
credential of that kubeconfig may reach the Terraform state; the RuntimeClasses carry AKS's toleration. (No AKS
emulator exists: what is particular to Azure is doctor's, tested at the HTTP boundary.)"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from k8sgpu.cli.dev.tfvars import generic_tfvars, inline_kubeconfig

from .helpers import api, k8sgpu

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "k8sgpu-aks"
CATALOG = {"aks-nvidia-1xa6000": {"gpu_product": "NVIDIA-RTX-A6000", "gpu_count": 1, "cpu": "8", "memory": "32Gi"}}


@pytest.fixture(scope="module")
def aks_root(ground, tf_env, tmp_path_factory):
    work = tmp_path_factory.mktemp("tf-aks")
    shutil.copytree(REPO / "terraform" / "aks", work / "terraform" / "aks")
    kubeconfig = work / "aks.kubeconfig"
    kubeconfig.touch(mode=0o600)
    kubeconfig.write_text(inline_kubeconfig(ground.local.kubeconfig))
    tfvars = work / "aks.tfvars.json"
    tfvars.write_text(json.dumps({**generic_tfvars(ground), "kubeconfig_path": str(kubeconfig),
                                  "namespace": NAMESPACE, "node_name": "aks.gpu", "catalog": CATALOG,
                                  "default_runtime_class": "aks-nvidia-1xa6000",
                                  "wait_for_rollout": False}))
    applied = k8sgpu(tf_env, "apply", "--cloud", "aks", "--dir", str(work / "terraform"), "--var-file", str(tfvars),
                     cwd=work)
    try:
        assert applied.returncode == 0, applied.stderr[-3000:]
        yield work, kubeconfig
    finally:
        destroyed = k8sgpu(tf_env, "destroy", "--cloud", "aks", "--dir", str(work / "terraform"), "--var-file",
                           str(tfvars), cwd=work)
        assert destroyed.returncode == 0, destroyed.stderr[-3000:]


def test_no_credential_of_the_callers_kubeconfig_is_in_the_state(aks_root):
    work, kubeconfig = aks_root
    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
    secrets = [user["client-certificate-data"], user["client-key-data"]]
    secrets += [base64.b64decode(s).decode() for s in secrets]
    state = (work / "terraform" / "aks" / "terraform.tfstate").read_text()
    assert json.loads(state)["resources"], "the state holds the applied objects"
    key_lines = [line for line in secrets[3].splitlines() if "PRIVATE KEY" not in line and line]
    leaked = [s for s in secrets if s in state] + [line for line in key_lines if line in state]
    assert leaked == []
    assert "client_key" not in state and "client_certificate" not in state


def test_runtime_classes_tolerate_the_network_unavailable_taint(aks_root, ground):
    runtime_class = client.NodeV1Api(api(ground.local.kubeconfig)).read_runtime_class("aks-nvidia-1xa6000")
    tolerations = [(t.key, t.operator, t.effect) for t in runtime_class.scheduling.tolerations]
    assert ("node.kubernetes.io/network-unavailable", "Exists", "NoSchedule") in tolerations
    assert runtime_class.scheduling.node_selector == {"kubernetes.io/hostname": "aks.gpu"}
