"""Small helpers the e2e tests share: API clients, kubectl, waiting, the runtime as a process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes import client, config

from k8sgpu.cli.dev import pki
from k8sgpu.cli.dev.binaries import find_kubectl
from k8sgpu.cli.dev.ground import free_port

REPO = Path(__file__).resolve().parents[2]


def api(kubeconfig: str) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


def kubectl(kubeconfig: str, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120):
    return subprocess.run([str(find_kubectl()), f"--kubeconfig={kubeconfig}", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, check=check)


def k8sgpu(env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `k8sgpu` command in ``cwd`` with ``env``; its output is printed for the test's report."""
    result = subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", *args], cwd=cwd, env=env, text=True,
                            capture_output=True, timeout=600)
    print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
    return result


def node_kubeconfig(ground, node: str, directory: Path) -> str:
    """A kubeconfig of the identity system:node:<node>, signed by the local cluster's CA as the ground signs
    k8s.gpu's: for a module that runs a node of its own."""
    local_pki = Path(ground.root) / "pki" / "local"
    ca = pki.KeyPair(local_pki / "ca.crt", local_pki / "ca.key")
    pair = pki.issue(ca, directory, "node", f"system:node:{node}", ("system:nodes",), client=True)
    return str(pki.write_kubeconfig(directory / "node.kubeconfig", cluster="k8sgpu-dev-local",
                                    server=ground.local.server, ca=ca.cert, user=f"system:node:{node}", pair=pair))


def health_ready(port: int) -> bool:
    """Whether a runtime's health port on this machine answers /readyz with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status == 200
    except (urllib.error.HTTPError, OSError):
        return False


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def node_on_port(core: client.CoreV1Api, node: str, port: int):
    """The node if it is Ready and advertises ``port``: this test's runtime (another module's may have left a
    Ready node of the same name behind)."""
    try:
        found = core.read_node(node)
    except client.ApiException:
        return None
    ready = any(c.type == "Ready" and c.status == "True" for c in found.status.conditions or [])
    return found if ready and found.status.daemon_endpoints.kubelet_endpoint.port == port else None


def remove_node(kubeconfig: str, node: str) -> None:
    """Deletes a test's node and its Lease, so that other modules register theirs afresh."""
    api_client = api(kubeconfig)
    client.CoreV1Api(api_client).delete_node(node)
    try:  # the garbage collector may be first: the Lease is owned by the Node
        client.CoordinationV1Api(api_client).delete_namespaced_lease(node, "kube-node-lease")
    except client.ApiException as exc:
        assert exc.status == 404


class RuntimeProcess:
    """`k8sgpu-runtime start` as a user runs it, with its log in a file. Without a --health-port in ``args`` it
    has none: many runtimes share this machine, and the default 10248 would be taken by the first."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.args = args if "--health-port" in args else [*args, "--health-port", "0"]
        self.log, self.env = log, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> RuntimeProcess:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "k8sgpu.runtime.main", "start", *self.args],
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        out.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class NodeRuntime:
    """The runtime of a test's own node as a process, with its own ports; `kill` SIGKILLs it, `restart` kills it and
    starts it with the same arguments, each returning once it stopped answering / is ready again (its start-up sweep
    done, its node registered)."""

    def __init__(self, ground, node: str, directory: Path):
        self.node, self.health_port = node, free_port()
        self.proc = RuntimeProcess(["--kubeconfig", node_kubeconfig(ground, node, directory), "--node-name", node,
                                    "--provider-kubeconfig", ground.tenant_kubeconfig,
                                    "--tenant-namespace", ground.tenant_namespace,
                                    "--node-address", ground.node_address, "--kubelet-port", str(free_port()),
                                    "--health-port", str(self.health_port), "-v"], directory / "runtime.log")

    def start(self) -> None:
        self.proc.start()
        wait_for(lambda: health_ready(self.health_port), 90, f"{self.node}'s runtime to be ready")

    def kill(self) -> None:
        self.proc.kill()
        wait_for(lambda: not health_ready(self.health_port), 10, "the killed runtime to stop answering")

    def restart(self) -> None:
        self.kill()
        self.start()


# A root around the EKS root's aws_auth module as rendered, for the local cluster.
AWS_AUTH_ROOT = """
terraform {
  required_providers {
    kubectl = {
      source = "gavinbunney/kubectl"
    }
    kubernetes = {
      source = "hashicorp/kubernetes"
    }
  }
}

variable "kubeconfig_path" {
  type = string
}

variable "enabled" {
  type = bool
}

variable "role_arn" {
  type = string
}

variable "node_name" {
  type = string
}

provider "kubernetes" {
  config_path = var.kubeconfig_path
}

provider "kubectl" {
  config_path      = var.kubeconfig_path
  load_config_file = true
}

module "aws_auth" {
  source    = "./modules/aws_auth"
  enabled   = var.enabled
  role_arn  = var.role_arn
  node_name = var.node_name
}
"""


def aws_auth_root(directory: Path) -> Path:
    shutil.copytree(REPO / "terraform" / "eks" / "modules" / "aws_auth", directory / "modules" / "aws_auth")
    (directory / "main.tf").write_text(AWS_AUTH_ROOT)
    return directory


def run_terraform(root: Path, env: dict[str, str], *args: str, ok=(0,),
                  **variables: str) -> subprocess.CompletedProcess:
    """Terraform as CI has it (see tf_env); variables go to every step but init."""
    from k8sgpu.cli.tf.runner import find_terraform

    argv = [find_terraform(), *args] + ([f"-var={k}={v}" for k, v in variables.items()] if args[0] != "init" else [])
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode in ok, result.stdout[-2000:] + result.stderr[-2000:]
    return result
