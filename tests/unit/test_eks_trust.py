"""The EKS trust policy module, run by real Terraform (it needs no provider, so no AWS and no API)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from k8sgpu.cli.tf.runner import embedded_terraform

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def trust_root(tmp_path) -> Path:
    shutil.copytree(REPO / "terraform" / "eks" / "modules" / "eks_trust", tmp_path / "modules" / "eks_trust")
    (tmp_path / "main.tf").write_text(
        'variable "trust" {\n  type = any\n}\n\n'
        'module "trust" {\n  source       = "./modules/eks_trust"\n  trust        = var.trust\n'
        '  session_name = var.session_name\n}\n\n'
        'variable "session_name" {\n  type    = string\n  default = "k8s.gpu"\n}\n\n'
        'output "policy" {\n  value = jsondecode(module.trust.policy_json)\n}\n')
    tf = embedded_terraform()
    subprocess.run([tf, "init", "-input=false"], cwd=tmp_path, check=True, capture_output=True)
    return tmp_path


def apply(root: Path, trust: dict, **variables) -> subprocess.CompletedProcess:
    (root / "t.tfvars.json").write_text(json.dumps({"trust": trust, **variables}))
    return subprocess.run([embedded_terraform(), "apply", "-input=false", "-auto-approve", "-no-color",
                           "-var-file=t.tfvars.json"], cwd=root, capture_output=True, text=True)


def output(root: Path) -> dict:
    out = subprocess.run([embedded_terraform(), "output", "-json"], cwd=root, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)["policy"]["value"]


def test_empty_trust_principal_is_refused_saying_what_to_write(trust_root):
    result = apply(trust_root, {})
    assert result.returncode != 0
    text = " ".join(result.stderr.split())
    assert "trust: empty trust principal; say who the runtime starts as" in text
    assert 'account_ids = ["111122223333"]' in text and "Pod Identity or IRSA" in text


def test_bad_account_id_is_refused(trust_root):
    result = apply(trust_root, {"account_ids": ["1234"]})
    assert result.returncode != 0 and "12-digit AWS account id" in " ".join(result.stderr.split())


def test_account_roots_and_roles_may_assume_the_role_only_with_the_node_as_session_name(trust_root):
    result = apply(trust_root, {"account_ids": ["111122223333"], "role_arns": ["arn:aws:iam::444455556666:role/ci"]})
    assert result.returncode == 0, result.stderr
    policy = output(trust_root)
    assert policy["Version"] == "2012-10-17"
    assert policy["Statement"] == [
        {"Effect": "Allow", "Action": "sts:AssumeRole",
         "Principal": {"AWS": ["arn:aws:iam::111122223333:root", "arn:aws:iam::444455556666:role/ci"]},
         "Condition": {"StringEquals": {"sts:RoleSessionName": "k8s.gpu"}}},
    ]


def test_a_node_name_that_cannot_be_a_session_name_is_refused(trust_root):
    result = apply(trust_root, {"account_ids": ["111122223333"]}, session_name="x" * 65)
    assert result.returncode != 0
    assert "session_name: the node name must be a valid STS role session name" in " ".join(result.stderr.split())
