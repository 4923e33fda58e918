"""`k8sgpu dev demo`: a GPU pod on the simulated provider, shown with kubectl.

Every step is a kubectl command printed before it runs, so a reader can repeat it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from .binaries import find_kubectl
from .catalog import DEFAULT_POOLS, GPU_PRODUCT_LABEL
from .ground import GroundError, State

DEMO_POD = "nvidia-smi"


def demo_pod(namespace: str, gpu_product: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": DEMO_POD, "namespace": namespace},
        "spec": {
            "restartPolicy": "OnFailure",
            "nodeSelector": {GPU_PRODUCT_LABEL: gpu_product},
            "containers": [{
                "name": "nvidia",
                "image": "nvidia/cuda:12.6.0-base-ubuntu20.04",
                "command": ["/bin/bash", "-c", "--"],
                "args": ["nvidia-smi; sleep 3600"],
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }],
        },
    }


def run_demo(state: State, out=sys.stdout) -> None:
    kubectl = str(find_kubectl())
    kubeconfig = state.provider.kubeconfig
    ns = state.tenant_namespace
    a100 = next(p for p in DEFAULT_POOLS if p.name == "a100")

    def kubectl_run(*args: str, stdin: str | None = None) -> None:
        shown = ["kubectl", f"--kubeconfig={kubeconfig}", *args]
        print(f"\n$ {shlex.join(shown)}", file=out, flush=True)
        result = subprocess.run([kubectl, f"--kubeconfig={kubeconfig}", *args], input=stdin, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        print(result.stdout.rstrip(), file=out, flush=True)
        if result.returncode != 0:
            raise GroundError(f"demo step failed: {shlex.join(shown)} exited {result.returncode}")

    print(f"A pod asking for one GPU, with a node selector for {a100.gpu_product}, on the provider:", file=out)
    kubectl_run("-n", ns, "delete", "pod", DEMO_POD, "--ignore-not-found", "--wait=true")
    kubectl_run("apply", "-f", "-", stdin=yaml.safe_dump(demo_pod(ns, a100.gpu_product)))
    kubectl_run("-n", ns, "wait", "--for=condition=Ready", f"pod/{DEMO_POD}", "--timeout=60s")
    kubectl_run("get", "nodes", "-L", GPU_PRODUCT_LABEL)
    kubectl_run("-n", ns, "get", "pod", DEMO_POD, "-o", "wide")
    kubectl_run("-n", ns, "logs", DEMO_POD)
    kubectl_run("-n", ns, "exec", DEMO_POD, "--", "nvidia-smi", "-L")
    local = state.local.kubeconfig
    print(
        f"""
The ground stays up. Look around:
  export KUBECONFIG={Path(kubeconfig)}   # the provider (GPU cloud)
  kubectl get nodes -L {GPU_PRODUCT_LABEL}
  kubectl -n {ns} exec {DEMO_POD} -- nvidia-smi
  export KUBECONFIG={Path(local)}   # the local cluster (what a user has)
  kubectl get nodes,ns
  k8sgpu dev status
Stop it with: k8sgpu dev down""",
        file=out,
    )
