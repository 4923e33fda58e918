"""`k8sgpu doctor --cloud eks` with the aws-auth route: the ConfigMap modes on the dev ground.

IAM and EKS are the ground's moto (`ground.aws_endpoint`); the cluster's Kubernetes API is the ground's local
kube-apiserver, whose kube-system/aws-auth holds a node group's entry as EKS writes it and the node role's entry
written by the EKS root's aws_auth module, applied with the real Terraform and providers. DescribeCluster is
moto's; for API_AND_CONFIG_MAP, `accessConfig` is added to moto's answer and DescribeAccessEntry answered at the
SDK's HTTP boundary (tests/conftest.py RecordedEks; tests/unit/test_doctor_eks.py says why).
"""

from __future__ import annotations

import json

import boto3
import pytest
import yaml
from kubernetes import client

from k8sgpu.cli.main import main
from k8sgpu.runtime.certificates import EKS_SERVING
from k8sgpu.runtime.rbac import extra_rbac

from .helpers import api, aws_auth_root, kubectl, run_terraform

pytestmark = pytest.mark.e2e

NODE = "doctor.gpu"
ROLE = "k8sgpu-node-doctor"
UNMAPPED = "k8sgpu-node-unmapped"
CLUSTER = "k8sgpu-doctor"
RBAC = "k8sgpu-doctor-eks"
REGION = "us-east-1"
ACCOUNT = "123456789012"
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole",
     "Condition": {"StringEquals": {"sts:RoleSessionName": NODE}}}]}
NODE_GROUP = {"rolearn": f"arn:aws:iam::{ACCOUNT}:role/eks-node-group", "username": "system:node:{{EC2PrivateDNSName}}",
              "groups": ["system:bootstrappers", "system:nodes"]}


@pytest.fixture(scope="module")
def aws(ground, tf_env, tmp_path_factory) -> dict[str, str]:
    """Two roles without policy (one mapped by the aws_auth module, one not), a cluster, the runtime's RBAC."""
    clients = {s: boto3.client(s, region_name=REGION, endpoint_url=ground.aws_endpoint,
                               aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                               aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
               for s in ("iam", "eks")}
    roles = {name: clients["iam"].create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
             for name in (ROLE, UNMAPPED)}
    clients["eks"].create_cluster(name=CLUSTER, version="1.31", roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks-cluster",
                                  resourcesVpcConfig={"subnetIds": ["subnet-0a1b2c3d"]})
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    core.create_namespaced_config_map("kube-system", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="aws-auth"), data={"mapRoles": yaml.safe_dump([NODE_GROUP])}))
    root = aws_auth_root(tmp_path_factory.mktemp("doctor-eks") / "aws-auth")
    try:
        run_terraform(root, tf_env, "init", "-input=false")
        run_terraform(root, tf_env, "apply", "-input=false", "-auto-approve", kubeconfig_path=ground.local.kubeconfig,
                      enabled="true", role_arn=roles[ROLE], node_name=NODE)
        apply_rbac(ground)
        yield roles
    finally:
        core.delete_namespaced_config_map("aws-auth", "kube-system")
        kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding,clusterrole", RBAC, check=False)
        clients["eks"].delete_cluster(name=CLUSTER)
        for name in roles:
            clients["iam"].delete_role(RoleName=name)


def apply_rbac(ground) -> None:
    """The node module's ClusterRole for the node, with the signer EKS uses."""
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(extra_rbac(NODE, RBAC, EKS_SERVING)))


def doctor(ground, recorded, role_arn: str, *args: str, capsys) -> tuple[int, dict]:
    code = main(["doctor", "--cloud", "eks", "--eks-cluster", CLUSTER, "--eks-role-arn", role_arn, "--region", REGION,
                 "--node-name", NODE, "--kubeconfig", ground.local.kubeconfig, "-o", "json", *args],
                aws_session=recorded.session)
    return code, {f["check"]: f for f in json.loads(capsys.readouterr().out)}


def test_config_map_with_the_modules_entry_passes(ground, aws, recorded_eks, capsys):
    recorded = recorded_eks(ground.aws_endpoint)
    code, found = doctor(ground, recorded, aws[ROLE], capsys=capsys)
    assert code == 0, json.dumps(found, indent=1)
    assert {c: f["status"] for c, f in found.items()} == dict.fromkeys(found, "ok")
    mapping = found["eks-identity-mapping"]["evidence"]
    assert mapping.startswith(f"kube-system/aws-auth mapRoles maps {aws[ROLE]} (username system:node:{NODE}) for "
                              f"session {NODE} to system:node:{NODE} in system:bootstrappers, system:nodes (read from "
                              f"{ground.local.server}, not the cluster's endpoint https://")
    # The runtime's RBAC for the EKS signer, checked through SubjectAccessReviews on the same API.
    assert found["eks-csr-signer"]["evidence"].endswith(
        f"system:node:{NODE} has the runtime's extra rules (services/status, approval of its serving certificate from "
        "beta.eks.amazonaws.com/app-serving)")
    assert [op for op, _ in recorded.seen if op.startswith("Describe")] == ["DescribeCluster"]


def test_config_map_without_an_entry_for_the_role_fails_with_the_fix(ground, aws, recorded_eks, capsys):
    code, found = doctor(ground, recorded_eks(ground.aws_endpoint), aws[UNMAPPED], capsys=capsys)
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["status"] == "fail"
    assert mapping["evidence"].startswith(f"kube-system/aws-auth mapRoles has no entry for {aws[UNMAPPED]} (2 "
                                          "entries of other roles)")
    assert mapping["fix"] == (f"add the role's entry; `make apply CLOUD=eks` writes the role's aws-auth entry (module "
                              "aws_auth), or add it by hand to kube-system/aws-auth mapRoles: {rolearn: "
                              f"{aws[UNMAPPED]}, username: system:node:{NODE}, groups: [system:bootstrappers, "
                              "system:nodes]}")


def test_config_map_entry_of_another_node_name_fails(ground, aws, recorded_eks, capsys):
    code = main(["doctor", "--cloud", "eks", "--eks-cluster", CLUSTER, "--eks-role-arn", aws[ROLE], "--region", REGION,
                 "--node-name", "k8s.gpu", "--kubeconfig", ground.local.kubeconfig, "-o", "json"],
                aws_session=recorded_eks(ground.aws_endpoint).session)
    found = {f["check"]: f for f in json.loads(capsys.readouterr().out)}
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["evidence"].startswith(f"kube-system/aws-auth mapRoles maps {aws[ROLE]} (username "
                                          f"system:node:{NODE}) for session k8s.gpu to system:node:{NODE} in "
                                          "system:bootstrappers, system:nodes, not system:node:k8s.gpu")
    assert mapping["fix"].startswith("set the entry's username to system:node:k8s.gpu; `make apply CLOUD=eks`")


def test_the_runtimes_rbac_for_the_eks_signer_removed_is_found(ground, aws, recorded_eks, capsys):
    kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding", RBAC)
    try:
        code, found = doctor(ground, recorded_eks(ground.aws_endpoint), aws[ROLE], capsys=capsys)
    finally:
        apply_rbac(ground)
    assert code == 1
    signer = found["eks-csr-signer"]
    assert signer["status"] == "fail"
    assert (f"system:node:{NODE} lacks the runtime's extra rules: get services/status, patch services/status, "
            "update services/status, update certificatesigningrequests/approval, approve signers "
            "beta.eks.amazonaws.com/app-serving") in signer["evidence"]
    assert signer["fix"] == ("`make apply CLOUD=eks` applies the node module, which grants it (rules in the README)")
    assert found["eks-identity-mapping"]["status"] == "ok"


def test_api_and_config_map_without_an_access_entry_uses_the_aws_auth_entry(ground, aws, recorded_eks, capsys):
    recorded = recorded_eks(ground.aws_endpoint, "API_AND_CONFIG_MAP")
    code, found = doctor(ground, recorded, aws[ROLE], capsys=capsys)
    assert code == 0, json.dumps(found, indent=1)
    mapping = found["eks-identity-mapping"]
    assert mapping["status"] == "ok"
    assert mapping["evidence"].startswith(f"no access entry for {aws[ROLE]}; kube-system/aws-auth mapRoles maps "
                                          f"{aws[ROLE]} (username system:node:{NODE}) for session {NODE} to "
                                          f"system:node:{NODE}")
    assert recorded.seen[-2:] == [("DescribeCluster", "moto + recorded accessConfig"),
                                  ("DescribeAccessEntry", "recorded")]


def test_api_and_config_map_with_neither_route_fails_with_both_fixes(ground, aws, recorded_eks, capsys):
    code, found = doctor(ground, recorded_eks(ground.aws_endpoint, "API_AND_CONFIG_MAP"), aws[UNMAPPED],
                         capsys=capsys)
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["status"] == "fail"
    assert mapping["evidence"].startswith(f"no access entry for {aws[UNMAPPED]}; kube-system/aws-auth mapRoles has "
                                          f"no entry for {aws[UNMAPPED]}")
    assert "`make apply CLOUD=eks` writes the role's aws-auth entry" in mapping["fix"]
    assert mapping["fix"].endswith(f"; or create an access entry instead: aws eks create-access-entry --cluster-name "
                                   f"{CLUSTER} --principal-arn {aws[UNMAPPED]} --type HYBRID_LINUX --region {REGION}")


def test_api_and_config_map_access_entry_takes_precedence_over_aws_auth(ground, aws, recorded_eks, capsys):
    code, found = doctor(ground, recorded_eks(ground.aws_endpoint, "API_AND_CONFIG_MAP", {aws[ROLE]: "STANDARD"}),
                         aws[ROLE], capsys=capsys)
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["evidence"].startswith(f"access entry of {aws[ROLE]}: type STANDARD")
    assert mapping["evidence"].endswith("it takes precedence over an aws-auth entry of the same role")


def test_a_missing_aws_auth_fails(ground, aws, recorded_eks, capsys):
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    saved = core.read_namespaced_config_map("aws-auth", "kube-system")
    core.delete_namespaced_config_map("aws-auth", "kube-system")
    try:
        code, found = doctor(ground, recorded_eks(ground.aws_endpoint), aws[ROLE], capsys=capsys)
    finally:
        core.create_namespaced_config_map("kube-system", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="aws-auth"), data=saved.data))
    assert code == 1
    mapping = found["eks-identity-mapping"]
    assert mapping["evidence"] == "kube-system/aws-auth does not exist, so nothing maps the role"
    assert mapping["fix"].startswith("`make apply CLOUD=eks` writes the role's aws-auth entry (module aws_auth)")
