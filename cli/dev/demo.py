"""`k8sgpu dev demo`: the product on the dev ground.

The GPU catalog and the runtime's RBAC applied as an admin would, the runtime
started as `system:node:k8s.gpu`, the guide's `nvidia-smi` pod run on the
virtual node. Every step is a kubectl command printed before it runs.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import yaml

from .binaries import find_kubectl
from .ground import Ground, GroundError, State, free_port

NODE = "k8s.gpu"
DEMO_POD = "nvidia-smi"
RUNTIME_PROCESS = "k8sgpu-runtime"


def demo_pod() -> dict:
    """The product guide's pod, without the toleration: the RuntimeClass carries it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": DEMO_POD, "namespace": "default"},
        "spec": {
            "restartPolicy": "OnFailure",
            "runtimeClassName": "seeweb-nvidia-1xa6000",
            "containers": [{
                "name": "nvidia",
                "image": "nvidia/cuda:12.6.0-base-ubuntu20.04",
                "command": ["/bin/bash", "-c", "--"],
                "args": ["sleep 3600"],
                "imagePullPolicy": "Always",
            }],
        },
    }


def runtime_argv(state: State) -> list[str]:
    return [sys.executable, "-m", "k8sgpu.runtime.main", "start", "--kubeconfig", state.node_kubeconfig,
            "--provider-kubeconfig", state.tenant_kubeconfig, "--tenant-namespace", state.tenant_namespace,
            "--node-address", state.node_address, "--kubelet-port", str(free_port()),
            "--health-port", str(free_port()), "-v"]


def run_demo(ground: Ground, out=sys.stdout) -> None:
    from k8sgpu.runtime.catalog import demo_catalog
    from k8sgpu.runtime.rbac import extra_rbac

    state = ground.state()
    if state is None:
        raise GroundError("the dev ground is down; run `k8sgpu dev up` (or `make demo`) first")
    kubectl = str(find_kubectl())
    local, provider = state.local.kubeconfig, state.provider.kubeconfig

    def step(kubeconfig: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
        shown = ["kubectl", f"--kubeconfig={kubeconfig}", *args]
        print(f"\n$ {shlex.join(shown)}", file=out, flush=True)
        result = subprocess.run([kubectl, f"--kubeconfig={kubeconfig}", *args], input=stdin, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
        print(result.stdout.rstrip(), file=out, flush=True)
        if check and result.returncode != 0:
            raise GroundError(f"demo step failed: {shlex.join(shown)} exited {result.returncode}")
        return result.stdout

    print("1. The GPU catalog (RuntimeClasses) and the runtime's one extra RBAC rule, as an admin applies them:",
          file=out)
    step(local, "apply", "-f", "-", stdin=yaml.safe_dump_all([*demo_catalog(NODE), *extra_rbac(NODE)]))

    print(f"\n2. The runtime, as system:node:{NODE} (log: {state.root}/logs/{RUNTIME_PROCESS}.log):", file=out)
    proc = ground.run_process(RUNTIME_PROCESS, runtime_argv(state))
    print(f"$ {shlex.join(['k8sgpu-runtime', *runtime_argv(state)[3:]])}   # pid {proc.pid}", file=out, flush=True)
    _wait_registered(kubectl, local)
    step(local, "wait", "--for=condition=Ready", f"node/{NODE}", "--timeout=90s")

    print("\n3. The product guide's nvidia-smi pod, naming only its RuntimeClass:", file=out)
    step(local, "delete", "pod", DEMO_POD, "--ignore-not-found", "--wait=true")
    step(local, "apply", "-f", "-", stdin=yaml.safe_dump(demo_pod()))
    step(local, "wait", "--for=condition=Ready", f"pod/{DEMO_POD}", "--timeout=180s")
    step(local, "get", "pod", DEMO_POD, "-o", "wide")
    step(local, "get", "nodes", "-o",
         "custom-columns=NAME:.metadata.name,STATUS:.status.conditions[?(@.type=='Ready')].type,"
         "GPU:.status.capacity.nvidia\\.com/gpu,GPU-FREE:.status.allocatable.nvidia\\.com/gpu,"
         "CPU:.status.capacity.cpu,CPU-FREE:.status.allocatable.cpu,PODS-FREE:.status.allocatable.pods")
    print("\n4. Its copy on the provider, on a kwok node with an RTX A6000:", file=out)
    step(provider, "-n", state.tenant_namespace, "get", "pods", "-o", "wide", "-l", f"k8sgpu.io/node={NODE}")
    print(f"\n5. Logs and exec through the local kube-apiserver and the node's kubelet API "
          f"(https://{state.node_address}, certificate from the CSR API):", file=out)
    step(local, "get", "csr", "-o", "custom-columns=NAME:.metadata.name,SIGNER:.spec.signerName,"
         "REQUESTOR:.spec.username,CONDITION:.status.conditions[*].type")
    step(local, "logs", DEMO_POD, "--tail=3")
    step(local, "exec", DEMO_POD, "--", "nvidia-smi", "-L")
    print(
        f"""
The ground and the runtime stay up. Try next:
  export KUBECONFIG={local}
  kubectl describe node {NODE}
  kubectl exec -it {DEMO_POD} -- sh
  kubectl port-forward pod/{DEMO_POD} 7777   # then: echo ping | nc 127.0.0.1 7777
  kubectl get --raw /api/v1/nodes/{NODE}/proxy/stats/summary
  kubectl top pod {DEMO_POD}     # after ~30 s: two samples of the provider's metrics
  kubectl get runtimeclass
  kubectl run big --image=x --overrides='{{"spec":{{"runtimeClassName":"seeweb-nvidia-1xa6000",\
"containers":[{{"name":"c","image":"x","resources":{{"requests":{{"cpu":"12"}}}}}}]}}}}'
  kubectl describe pod big      # refused: more cpu than its RuntimeClass allows
  kubectl --kubeconfig={provider} -n {state.tenant_namespace} get pods   # the provider side
  k8sgpu dev status
Stop everything with: k8sgpu dev down""",
        file=out,
    )


def _wait_registered(kubectl: str, kubeconfig: str, timeout: float = 60) -> None:
    """Until the node exists with the provider's capacity (`kubectl wait` fails on a missing object)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gpus = subprocess.run([kubectl, f"--kubeconfig={kubeconfig}", "get", "node", NODE, "-o",
                               "jsonpath={.status.capacity.nvidia\\.com/gpu}"], capture_output=True, text=True)
        if gpus.stdout.strip() not in ("", "0"):
            return
        time.sleep(0.5)
    raise GroundError(f"node {NODE} did not register within {timeout:.0f}s; see the runtime's log")
