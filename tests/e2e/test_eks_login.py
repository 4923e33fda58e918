"""EKS login end to end on the dev ground: the runtime starts from nothing but an IAM role.

moto on loopback plays IAM and STS; the ground's EKS authenticator (a webhook token
authenticator of the local kube-apiserver) checks each `k8s-aws-v1.` token by making
its presigned STS call and maps the role through kube-system/aws-auth, written by the
EKS root's aws_auth module applied with the real Terraform and providers.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from pathlib import Path

import boto3
import pytest
import yaml
from kubernetes import client

from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac

from .helpers import RuntimeProcess, api, aws_auth_root, kubectl, node_on_port, remove_node, run_terraform, wait_for

pytestmark = pytest.mark.e2e

NODE = "eks.gpu"  # a node of its own: other modules' runtimes register k8s.gpu
ROLE = "k8sgpu-node-e2e"
RUNTIME_CLASS = "eks-no-gpu"
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]}


@pytest.fixture(scope="module")
def aws_env(ground) -> dict[str, str]:
    """The runtime's source credentials: moto's account root, as AWS_* variables (boto3's chain)."""
    return {"AWS_ENDPOINT_URL": ground.aws_endpoint, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}


@pytest.fixture(scope="module")
def role_arn(ground, aws_env, tf_env, tmp_path_factory) -> str:
    """The node's role in IAM (no policy at all) and its aws-auth entry, written by the aws_auth module."""
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=ground.aws_endpoint,
                       aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"])
    arn = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    core = client.CoreV1Api(api(ground.local.kubeconfig))
    # EKS creates aws-auth with its node groups' entries; the module merges into it.
    core.create_namespaced_config_map("kube-system", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="aws-auth"), data={"mapRoles": yaml.safe_dump([
            {"rolearn": "arn:aws:iam::123456789012:role/eks-node-group",
             "username": "system:node:{{EC2PrivateDNSName}}", "groups": ["system:bootstrappers", "system:nodes"]}])}))
    root = aws_auth_root(tmp_path_factory.mktemp("eks-login") / "aws-auth")
    variables = {"kubeconfig_path": ground.local.kubeconfig, "enabled": "true", "role_arn": arn, "node_name": NODE}
    no_gpu = runtime_class_manifest(RUNTIME_CLASS, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0,
                                    cpu="1", memory="1Gi")
    kubectl(ground.local.kubeconfig, "apply", "-f", "-",
            stdin=yaml.safe_dump_all([no_gpu, *extra_rbac(NODE, "k8sgpu-eks-e2e")]))
    try:
        run_terraform(root, tf_env, "init", "-input=false")
        run_terraform(root, tf_env, "apply", "-input=false", "-auto-approve", **variables)
        yield arn
    finally:
        core.delete_namespaced_config_map("aws-auth", "kube-system")
        kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding,clusterrole", "k8sgpu-eks-e2e")
        kubectl(ground.local.kubeconfig, "delete", "runtimeclass", RUNTIME_CLASS)
        iam.delete_role(RoleName=ROLE)


def authenticator(ground, **settings) -> None:
    Path(ground.eks_authenticator_settings).write_text(json.dumps(settings))


def outputs(ground, tmp_path: Path, role_arn: str) -> Path:
    """What the EKS root outputs, pointing at the local cluster."""
    values = {"node_name": NODE, "tenant_namespace": ground.tenant_namespace, "eks_cluster_name":
              ground.eks_cluster_name, "role_arn": role_arn, "region": "us-east-1",
              "cluster_endpoint": ground.local.server,
              "cluster_ca_certificate": (Path(ground.root) / "local-ca.crt").read_text()}
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({k: {"value": v, "type": "string", "sensitive": False} for k, v in values.items()}))
    return path


class EksNode:
    """The runtime with an EKS login, its node and its pods; everything removed at the end."""

    def __init__(self, ground, tmp_path: Path, role_arn: str, aws_env: dict[str, str], config: dict | None = None):
        self.ground, self.port = ground, free_port()
        self.core = client.CoreV1Api(api(ground.local.kubeconfig))
        args = ["--terraform-outputs", str(outputs(ground, tmp_path, role_arn)), "--provider-kubeconfig",
                ground.tenant_kubeconfig, "--node-address", ground.node_address, "--kubelet-port", str(self.port)]
        if config:
            (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
            args += ["--config", str(tmp_path / "config.yaml")]
        self.proc = RuntimeProcess(args, tmp_path / "runtime.log", env={**os.environ, **aws_env})
        self.pods: list[str] = []

    def __enter__(self) -> EksNode:
        self.proc.start()
        wait_for(self.ready, 90, f"{NODE} to be Ready, logged in with its IAM role")
        return self

    def __exit__(self, *exc) -> None:
        for pod in self.pods:
            self.core.delete_namespaced_pod(pod, "default", grace_period_seconds=0)
        wait_for(lambda: not [p for p in self.core.list_namespaced_pod("default").items if p.spec.node_name == NODE],
                 60, "no pod left on the node")
        self.proc.stop()
        print(self.proc.tail(40))
        remove_node(self.ground.local.kubeconfig, NODE)

    def ready(self) -> bool:
        return node_on_port(self.core, NODE, self.port) is not None

    def lease_renewed(self) -> float:
        lease = client.CoordinationV1Api(api(self.ground.local.kubeconfig)).read_namespaced_lease(NODE,
                                                                                                "kube-node-lease")
        return lease.spec.renew_time.timestamp()

    def run_pod(self, name: str) -> None:
        self.pods.append(name)
        self.core.create_namespaced_pod("default", {
            "metadata": {"name": name},
            "spec": {"runtimeClassName": RUNTIME_CLASS,
                     "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1d"]}]}})
        wait_for(lambda: self.core.read_namespaced_pod(name, "default").status.phase == "Running", 60,
                 f"pod {name} to run on {NODE}")

    def log(self) -> str:
        return self.proc.log.read_text(errors="replace")


def accepted(ground, since: float) -> list[tuple[str, str]]:
    """(signing time, access key) of each token the authenticator accepted for our node since ``since``."""
    pattern = re.compile(r"^(\S+ \S+) INFO eks-authenticator: accepted token signed (\S+) with access key (\S+): "
                         rf"arn:aws:sts::123456789012:assumed-role/{ROLE}/{re.escape(NODE)} as system:node:"
                         rf"{re.escape(NODE)} \['system:bootstrappers', 'system:nodes'\]$")
    found = []
    for line in (Path(ground.root) / "logs" / "eks-authenticator.log").read_text().splitlines():
        if (m := pattern.match(line)) and time.mktime(time.strptime(m[1][:19], "%Y-%m-%d %H:%M:%S")) >= since:
            found.append((m[2], m[3]))
    return found


def test_the_runtime_runs_as_its_node_from_an_iam_role_and_recovers_from_a_401(ground, role_arn, aws_env,
                                                                               tmp_path):
    """Product lifetimes (15-minute tokens). The authenticator then refuses every token signed so far, as EKS
    does with an expired one: the kube-apiserver answers 401 and the runtime signs a new token at once."""
    authenticator(ground)
    started = time.time() - 1
    with EksNode(ground, tmp_path, role_arn, aws_env) as node:
        # Registering itself and renewing its Lease pass the Node authorizer: the runtime is system:node:eks.gpu.
        assert accepted(ground, started), "no token of the node's role was accepted"
        node.run_pod("eks-first")
        assert "k8s-aws-v1." not in node.log() and "X-Amz-Signature" not in node.log()
        assert aws_env["AWS_SECRET_ACCESS_KEY"] not in node.log()

        revoked = time.time() + 1
        authenticator(ground, not_before=revoked)
        wait_for(lambda: "after a 401" in node.log(), 60, "the runtime to sign a new token after a 401")
        wait_for(lambda: node.lease_renewed() > revoked, 30, "the Lease renewed with the new token")
        assert node.ready()
        node.run_pod("eks-after-401")
        signed_after = [t for t, _ in accepted(ground, revoked - 1)
                        if calendar.timegm(time.strptime(t, "%Y%m%dT%H%M%SZ")) >= revoked]
        assert signed_after, "no token signed after the revocation was accepted"
        refused = (Path(ground.root) / "logs" / "eks-authenticator.log").read_text()
        assert "token signed before tokens were revoked" in refused
    authenticator(ground)


def test_tokens_and_role_sessions_are_renewed_during_a_run_longer_than_their_life(ground, role_arn, aws_env,
                                                                                 tmp_path):
    """Lifetimes shortened in the test: EKS accepts a token 20 s here (900 s in AWS), and the role's session is
    STS's shortest (900 s), which botocore renews at each use because it is within its 15-minute refresh window."""
    authenticator(ground, max_token_age_seconds=20)
    started = time.time() - 1
    config = {"local": {"eks_token_lifetime_seconds": 20, "eks_role_session_seconds": 900}}
    try:
        with EksNode(ground, tmp_path, role_arn, aws_env, config) as node:
            time.sleep(60)  # three token lives
            node.run_pod("eks-long-run")
            assert node.ready()
            assert time.time() - node.lease_renewed() < 15
            tokens = accepted(ground, started)
            assert len({t for t, _ in tokens}) >= 3, tokens
            assert len({k for _, k in tokens}) >= 2, "the role's session was never renewed"
            assert node.log().count(", due)") >= 2
    finally:
        authenticator(ground)
