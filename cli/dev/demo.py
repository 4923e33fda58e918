"""`k8sgpu dev demo`: the product on the dev ground, the way users run it.

`terraform apply` of terraform/generic puts the runtime's namespace, RBAC, GPU
RuntimeClasses, provider Secret and Deployment into the local cluster; the
Deployment's pod runs `k8sgpu-runtime start` from its image on the worker node,
with no identity but its ServiceAccount; the node k8s.gpu registers with the
pod's IP, and the guide's `nvidia-smi` pod runs on it. Every step is printed
before it runs. On a ground without a worker node (`dev up --no-worker`) the
runtime runs as a process instead, as `system:node:k8s.gpu`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import yaml

from k8sgpu.runtime.catalog import DEMO_DEFAULT_RUNTIME_CLASS, DEMO_MIG_RUNTIME_CLASS

from .binaries import find_kubectl
from .ground import Ground, GroundError, State, free_port
from .prometheus import add_scrape_target, prometheus_url

NODE = "k8s.gpu"
DEMO_POD = "nvidia-smi"
DEMO_MIG_POD = "nvidia-smi-mig"
RUNTIME_PROCESS = "k8sgpu-runtime"


def demo_pod(name: str = DEMO_POD, runtime_class: str = "seeweb-nvidia-1xa6000") -> dict:
    """The product guide's pod, without the toleration: the RuntimeClass carries it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "OnFailure",
            "runtimeClassName": runtime_class,
            "containers": [{
                "name": "nvidia",
                "image": "nvidia/cuda:12.6.0-base-ubuntu20.04",
                "command": ["/bin/bash", "-c", "--"],
                "args": ["sleep 3600"],
                "imagePullPolicy": "Always",
            }],
        },
    }


def runtime_argv(state: State, health_port: int | None = None) -> list[str]:
    return [sys.executable, "-m", "k8sgpu.runtime.main", "start", "--kubeconfig", state.node_kubeconfig,
            "--provider-kubeconfig", state.tenant_kubeconfig, "--tenant-namespace", state.tenant_namespace,
            "--node-address", state.node_address, "--kubelet-port", str(free_port()),
            "--health-port", str(health_port or free_port()), "--default-runtime-class", DEMO_DEFAULT_RUNTIME_CLASS,
            "-v"]


def _stepper(out):
    kubectl = str(find_kubectl())

    def step(kubeconfig: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
        shown = ["kubectl", f"--kubeconfig={kubeconfig}", *args]
        print(f"\n$ {shlex.join(shown)}", file=out, flush=True)
        result = subprocess.run([kubectl, f"--kubeconfig={kubeconfig}", *args], input=stdin, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
        print(result.stdout.rstrip(), file=out, flush=True)
        if check and result.returncode != 0:
            raise GroundError(f"demo step failed: {shlex.join(shown)} exited {result.returncode}")
        return result.stdout

    return kubectl, step


def run_demo(ground: Ground, out=sys.stdout, terraform_dir: Path = Path("terraform")) -> None:
    state = ground.state()
    if state is None:
        raise GroundError("the dev ground is down; run `k8sgpu dev up` (or `make demo`) first")
    if state.worker:
        _start_in_cluster(state, out, terraform_dir)
    else:
        _start_as_process(ground, state, out)
    _run_the_guides_pod(state, out)
    _show_usage(state, out)


def _start_in_cluster(state: State, out, terraform_dir: Path) -> None:
    """`terraform apply` of terraform/generic, in a copy beside the ground (its state goes with the ground)."""
    from k8sgpu.cli.tf.runner import Runner, root_dir

    from .tfvars import write_generic_tfvars

    kubectl, step = _stepper(out)
    local = state.local.kubeconfig
    work = Path(state.root) / "demo" / "terraform" / "generic"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root_dir("generic", terraform_dir), work,
                    ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    tfvars = write_generic_tfvars(state)
    print(f"1. terraform apply of terraform/generic (copied to {work}; variables {tfvars}): the runtime's "
          "namespace, RBAC, GPU RuntimeClasses, provider Secret and Deployment; it waits for the rollout.",
          file=out, flush=True)
    print(f"$ terraform -chdir={work} apply -var-file={tfvars}", file=out, flush=True)
    Runner(work, [str(tfvars)], progress=lambda m: print(f"# {m}", file=out, flush=True)).apply()

    print("\n2. The runtime's pod, from its image, on the worker node:", file=out)
    step(local, "-n", "k8sgpu", "get", "pods", "-o", "wide")
    _wait_registered(kubectl, local)
    step(local, "wait", "--for=condition=Ready", f"node/{NODE}", "--timeout=90s")
    def read(*args: str) -> dict:
        return json.loads(subprocess.run([kubectl, f"--kubeconfig={local}", *args, "-o", "json"],
                                         capture_output=True, text=True, check=True).stdout)

    pod = read("-n", "k8sgpu", "get", "pods", "-l", "app.kubernetes.io/name=k8sgpu-runtime")["items"]
    node = read("get", "node", NODE)
    internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    pod_ips = [p["status"].get("podIP") for p in pod if p["status"].get("phase") == "Running"]
    step(local, "get", "nodes", "-o", "wide")
    if not set(internal) & set(pod_ips):
        raise GroundError(f"node {NODE} advertises {internal}, not the runtime pod's IP {pod_ips}")
    # Two replicas: the one at the node's address leads (holds the election's Lease); the other stands by.
    (leader,) = [p["metadata"]["name"] for p in pod if p["status"].get("podIP") in internal]
    print(f"\n{NODE} is Ready at {internal[0]}, the IP of {leader}, the runtime pod that leads (the other stands "
          "by). Its log, through worker-0's kubelet:", file=out)
    step(local, "-n", "k8sgpu", "logs", leader, "--tail=3")
    # The ground's Prometheus scrapes both replicas' health ports (the leader exports the GPU accounting).
    health = next(port["containerPort"] for p in pod for c in p["spec"]["containers"] for port in c.get("ports") or []
                  if port.get("name") == "metrics")
    for p in pod:
        if p["status"].get("podIP"):
            add_scrape_target(state, p["metadata"]["name"], f"{p['status']['podIP']}:{health}")


def _start_as_process(ground: Ground, state: State, out) -> None:
    from k8sgpu.runtime.catalog import demo_catalog
    from k8sgpu.runtime.rbac import extra_rbac

    kubectl, step = _stepper(out)
    local = state.local.kubeconfig
    print("No worker node on this ground: the runtime runs as a process.\n"
          "1. The GPU catalog (RuntimeClasses) and the runtime's one extra RBAC rule, as an admin applies them:",
          file=out)
    step(local, "apply", "-f", "-", stdin=yaml.safe_dump_all([*demo_catalog(NODE), *extra_rbac(NODE)]))

    print(f"\n2. The runtime, as system:node:{NODE} (log: {state.root}/logs/{RUNTIME_PROCESS}.log):", file=out)
    health_port = free_port()
    argv = runtime_argv(state, health_port)
    proc = ground.run_process(RUNTIME_PROCESS, argv)
    # The ground's Prometheus scrapes its health port (file service discovery).
    add_scrape_target(state, RUNTIME_PROCESS, f"127.0.0.1:{health_port}")
    print(f"$ {shlex.join(['k8sgpu-runtime', *argv[3:]])}   # pid {proc.pid}", file=out, flush=True)
    _wait_registered(kubectl, local)
    step(local, "wait", "--for=condition=Ready", f"node/{NODE}", "--timeout=90s")


def _run_the_guides_pod(state: State, out) -> None:
    kubectl, step = _stepper(out)
    local, provider = state.local.kubeconfig, state.provider.kubeconfig

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
    print("\n5. Logs and exec through the local kube-apiserver and the node's kubelet API "
          "(certificate from the CSR API):", file=out)
    step(local, "get", "csr", "-o", "custom-columns=NAME:.metadata.name,SIGNER:.spec.signerName,"
         "REQUESTOR:.spec.username,CONDITION:.status.conditions[*].type")
    step(local, "logs", DEMO_POD, "--tail=3")
    step(local, "exec", DEMO_POD, "--", "nvidia-smi", "-L")
    print(f"\n6. A pod on one MIG slice ({DEMO_MIG_RUNTIME_CLASS}: its copy asks nvidia.com/mig-1g.10gb), and what "
          "the node offers of each offering (k8s.gpu/<RuntimeClass>: what the provider can place now):", file=out)
    step(local, "delete", "pod", DEMO_MIG_POD, "--ignore-not-found", "--wait=true")
    step(local, "apply", "-f", "-", stdin=yaml.safe_dump(demo_pod(DEMO_MIG_POD, DEMO_MIG_RUNTIME_CLASS)))
    step(local, "wait", "--for=condition=Ready", f"pod/{DEMO_MIG_POD}", "--timeout=180s")
    step(provider, "-n", state.tenant_namespace, "get", "pods", "-l", f"k8sgpu.io/node={NODE}", "-o",
         "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,GPU:.spec.containers[0].resources.limits")
    step(local, "get", "node", NODE, "-o", "jsonpath={.status.allocatable}")
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
  k8sgpu usage --by runtime-class -o json   # GPU-hours from the ground's Prometheus
Stop everything with: k8sgpu dev down""",
        file=out,
    )


def _show_usage(state: State, out, timeout: float = 60) -> None:
    """The ground's Prometheus and what `k8sgpu usage` makes of it: the demo pods' GPU-seconds so far."""
    from k8sgpu.cli.usage import UsageError, http_query, pod_usage, render, report

    url = prometheus_url(state)
    if not url:
        print("\nThis ground has no Prometheus (started by an older k8sgpu): `k8sgpu dev down`, then `make demo`.",
              file=out)
        return
    query = http_query(url)
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        try:
            pods = pod_usage(query, now - 3600, now)
        except UsageError:
            pods = []
        if any(p.pod in (DEMO_POD, DEMO_MIG_POD) for p in pods) or time.monotonic() > deadline:
            break
        time.sleep(2)
    if not pods:
        raise GroundError(f"Prometheus at {url} has no GPU usage of the demo's pods after {timeout:.0f}s: is it "
                          f"scraping the runtime? See {Path(state.root) / 'logs' / 'prometheus.log'}")
    print(f"\nPrometheus (scrapes the runtime's /metrics every 2 s): {url}", file=out)
    print(f"$ k8sgpu usage --prometheus {url} --since 1h --by pod --price {DEMO_DEFAULT_RUNTIME_CLASS}=1.20/h",
          file=out)
    print(render(report(pods, "pod", {DEMO_DEFAULT_RUNTIME_CLASS: Decimal("1.20")}, now - 3600, now), "table"),
          file=out, flush=True)


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
