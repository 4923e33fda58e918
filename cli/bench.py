"""`k8sgpu bench`: the virtual node measured against creating the same pods straight on the provider.

All figures come from one run on one ground, so ratios hold on a noisy machine:
- mirror overhead: N pods created in the tenant namespace (baseline) vs the same N pods
  created locally and run through k8s.gpu; time until all are Running as their creator
  sees them, the ratio, and the per-pod added latency (p50, p99);
- footprint: the runtime's RSS and CPU while holding N pods, and its CPU while idle;
- recovery: time to consistency after a provider outage, and after `kill -9` of the runtime.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from .dev.binaries import ensure_binaries
from .dev.catalog import GPUPool
from .dev.ground import Ground, State, free_port, has_default_service_account

NODE = "k8s.gpu"
BENCH_CLASS = "bench-no-gpu"
BENCH_NS = "bench"
# Room for 10,000 pods: kwok nodes hold any number; pods capacity is what limits the scheduler.
BENCH_POOLS = (GPUPool(name="bench", gpu_product="NVIDIA-RTX-A6000", gpus_per_node=2, gpu_memory_mib=49140,
                       nodes=6, cpu="1000", memory="4Ti", pods="2000", pod_cidr="10.64.0.1/12"),)

Say = Callable[[str], None]


def _client(kubeconfig: str):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    return client.CoreV1Api(client.ApiClient(cfg))


def _pod(name: str, *, remote: bool) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "busybox",
                                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    if remote:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-RTX-A6000"}
    else:
        spec["runtimeClassName"] = BENCH_CLASS
    return {"metadata": {"name": name, "labels": {"bench": "1"}}, "spec": spec}


class RunningWatch:
    """Records, from a watch, the first moment each pod of a namespace is seen Running."""

    def __init__(self, kubeconfig: str, namespace: str):
        from kubernetes import watch

        self.api, self.namespace = _client(kubeconfig), namespace
        self.running: dict[str, float] = {}
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def start(self) -> RunningWatch:
        self._thread.start()
        self._started.wait(10)
        return self

    def _run(self) -> None:
        rv = self.api.list_namespaced_pod(self.namespace, limit=1).metadata.resource_version
        self._started.set()
        while True:
            try:
                for event in self._watch.stream(self.api.list_namespaced_pod, self.namespace, resource_version=rv,
                                                label_selector="bench=1", timeout_seconds=600):
                    pod = event["object"]
                    rv = pod.metadata.resource_version
                    if pod.status.phase == "Running" and pod.metadata.name not in self.running:
                        self.running[pod.metadata.name] = time.monotonic()
            except Exception:  # noqa: BLE001 - the bench re-watches; a broken watch is not a result
                if not self._thread.is_alive():
                    return
                time.sleep(0.2)

    def stop(self) -> None:
        self._watch.stop()
        self.api.api_client.close()  # closes the pool, so the watch's blocking read ends now
        self._thread.join(timeout=5)


@dataclasses.dataclass
class Overhead:
    n: int
    baseline_s: float
    virtual_s: float
    ratio: float
    baseline_p50_ms: float
    baseline_p99_ms: float
    virtual_p50_ms: float
    virtual_p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    latencies_baseline_ms: list[float]
    latencies_virtual_ms: list[float]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _create_all(api, namespace: str, names: list[str], remote: bool, workers: int = 16) -> dict[str, float]:
    created: dict[str, float] = {}

    def create(name: str) -> None:
        t = time.monotonic()
        api.create_namespaced_pod(namespace, _pod(name, remote=remote))
        created[name] = t

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, names))
    return created


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def _measure(kubeconfig: str, namespace: str, n: int, remote: bool, prefix: str) -> tuple[float, list[float]]:
    api = _client(kubeconfig)
    watcher = RunningWatch(kubeconfig, namespace).start()
    names = [f"{prefix}-{i:05d}" for i in range(n)]
    created = _create_all(api, namespace, names, remote)
    _wait(lambda: len(watcher.running) >= n, 120 + n * 0.2, f"{n} pods Running in {namespace}")
    watcher.stop()
    first = min(created.values())
    total = max(watcher.running[m] for m in names) - first
    latencies = [(watcher.running[m] - created[m]) * 1000 for m in names]
    return total, latencies


def _delete_all(kubeconfig: str, namespace: str) -> None:
    api = _client(kubeconfig)
    api.delete_collection_namespaced_pod(namespace, label_selector="bench=1", grace_period_seconds=0)
    _wait(lambda: not api.list_namespaced_pod(namespace, label_selector="bench=1").items, 300,
          f"bench pods gone from {namespace}")


def mirror_overhead(state: State, n: int, say: Say) -> Overhead:
    say(f"mirror overhead, N={n}: baseline straight on the provider")
    base_total, base_lat = _measure(state.tenant_kubeconfig, state.tenant_namespace, n, True, f"base{n}")
    # As the provider's admin: the tenant's Role has no deletecollection (the runtime deletes pod by pod).
    _delete_all(state.provider.kubeconfig, state.tenant_namespace)
    say(f"mirror overhead, N={n}: through k8s.gpu")
    virt_total, virt_lat = _measure(state.local.kubeconfig, BENCH_NS, n, False, f"virt{n}")
    return Overhead(
        n=n, baseline_s=round(base_total, 3), virtual_s=round(virt_total, 3), ratio=round(virt_total / base_total, 3),
        baseline_p50_ms=round(_pct(base_lat, 50), 1), baseline_p99_ms=round(_pct(base_lat, 99), 1),
        virtual_p50_ms=round(_pct(virt_lat, 50), 1), virtual_p99_ms=round(_pct(virt_lat, 99), 1),
        added_p50_ms=round(_pct(virt_lat, 50) - _pct(base_lat, 50), 1),
        added_p99_ms=round(_pct(virt_lat, 99) - _pct(base_lat, 99), 1),
        latencies_baseline_ms=[round(x, 1) for x in base_lat], latencies_virtual_ms=[round(x, 1) for x in virt_lat],
    )


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Runtime:
    def __init__(self, state: State, log: Path):
        self.state, self.log = state, log
        self.proc: subprocess.Popen | None = None
        self.kubelet_port = free_port()

    def start(self) -> float:
        s = self.state
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "k8sgpu.runtime.main", "start", "--kubeconfig", s.node_kubeconfig,
                 "--provider-kubeconfig", s.tenant_kubeconfig, "--tenant-namespace", s.tenant_namespace,
                 "--node-address", s.node_address, "--kubelet-port", str(self.kubelet_port),
                 "--health-port", "0"],
                stdout=out, stderr=subprocess.STDOUT)
        return started

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


def _consistent(state: State, expect_running: set[str]) -> Callable[[], bool]:
    """True when every expected local pod is Running and the provider holds exactly their mirrors."""
    local, remote = _client(state.local.kubeconfig), _client(state.tenant_kubeconfig)

    def check() -> bool:
        pods = local.list_namespaced_pod(BENCH_NS, label_selector="bench=1").items
        running = {p.metadata.name for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp}
        if running != expect_running or len(pods) != len(expect_running):
            return False
        mirrors = remote.list_namespaced_pod(state.tenant_namespace, label_selector="bench=1").items
        return len([m for m in mirrors if m.status.phase == "Running"]) == len(expect_running) == len(mirrors)

    return check


def run(scale: str, out_dir: Path, say: Say, idle_seconds: int = 60, outage_seconds: int = 60) -> dict:
    from k8sgpu.runtime.catalog import runtime_class_manifest
    from k8sgpu.runtime.rbac import extra_rbac

    sizes = {"quick": [50], "default": [100, 1000], "full": [100, 1000, 10000]}[scale]
    recovery_at = 1000 if 1000 in sizes else sizes[-1]
    binaries = ensure_binaries(progress=say)
    root = Path(os.environ.get("K8SGPU_BENCH_ROOT") or f"/tmp/k8sgpu-bench-{os.getpid()}")
    # No worker node: the benchmark runs its runtimes as processes, and an idle kubelet would only add noise.
    ground = Ground(root, pools=BENCH_POOLS, progress=say, worker=False)
    state, _ = ground.up(binaries)
    runtime = Runtime(state, root / "logs" / "bench-runtime.log")
    results: dict = {"when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                     "scale": scale, "machine": {"cpus": os.cpu_count()}, "overhead": [], "footprint": [],
                     "recovery": {}}
    try:
        kubectl = str(binaries.kubectl)
        manifests = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BENCH_NS}},
            runtime_class_manifest(BENCH_CLASS, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0,
                                   cpu="1", memory="1Gi"),
            *extra_rbac(NODE),
        ]
        subprocess.run([kubectl, f"--kubeconfig={state.local.kubeconfig}", "apply", "-f", "-"], check=True,
                       input=yaml.safe_dump_all(manifests), text=True, capture_output=True)
        local = _client(state.local.kubeconfig)
        _wait(lambda: has_default_service_account(local, BENCH_NS), 30, "the bench namespace's service account")
        runtime.start()
        _wait(lambda: _node_ready(state.local.kubeconfig), 60, "k8s.gpu Ready")
        pid = runtime.proc.pid

        for n in sizes:
            cpu0 = _proc_cpu_seconds(pid)
            overhead = mirror_overhead(state, n, say)
            results["overhead"].append(overhead)
            say(f"N={n}: baseline {overhead.baseline_s}s, virtual {overhead.virtual_s}s, ratio {overhead.ratio}")
            results["footprint"].append({"n": n, "rss_mb": round(_proc_rss_mb(pid), 1),
                                         "cpu_s_for_n": round(_proc_cpu_seconds(pid) - cpu0, 2)})
            if n == sizes[-1]:
                # Idle: every pod Running, nothing changing; a few seconds first for the last status writes.
                time.sleep(5)
                say(f"idle CPU over {idle_seconds}s with {n} pods")
                cpu0 = _proc_cpu_seconds(pid)
                time.sleep(idle_seconds)
                results["idle_cpu_percent"] = round((_proc_cpu_seconds(pid) - cpu0) / idle_seconds * 100, 2)
                results["idle_with_pods"] = n
            if n == recovery_at:
                results["recovery"] = _recovery(state, ground, runtime, n, outage_seconds, say)
                pid = runtime.proc.pid
            _delete_all(state.local.kubeconfig, BENCH_NS)
            _wait(_consistent(state, set()), 300, "the provider to be empty")
    finally:
        runtime.kill(signal.SIGTERM)
        ground.down()
    results["overhead"] = [dataclasses.asdict(o) for o in results["overhead"]]
    return _write(results, out_dir, say)


def _recovery(state: State, ground: Ground, runtime: Runtime, n: int, outage_seconds: int, say: Say) -> dict:
    local = _client(state.local.kubeconfig)
    names = {f"virt{n}-{i:05d}" for i in range(n)}
    churn = min(20, n // 5)
    # Outage: the provider's API is down; meanwhile some pods are created and as many deleted locally.
    say(f"recovery: provider API down for {outage_seconds}s with {n} pods")
    ground.stop_process("provider-kube-apiserver")
    extra = [f"during-{i:03d}" for i in range(churn)]
    gone = sorted(names)[:churn]
    _create_all(local, BENCH_NS, extra, remote=False)
    for name in gone:
        local.delete_namespaced_pod(name, BENCH_NS)
    time.sleep(max(0, outage_seconds - 5))
    ground.start_process("provider-kube-apiserver")
    back = time.monotonic()
    expected = (names - set(gone)) | set(extra)
    # First the runtime's part (the provider holds exactly the right mirrors), then the provider's
    # (kwok has them Running and the local pods say so).
    _wait(_mirrors_are(state, expected), 600, "the right mirrors after the outage")
    mirrored = time.monotonic() - back
    _wait(_consistent(state, expected), 600, "consistency after the outage")
    outage = time.monotonic() - back
    say(f"recovery: consistent {outage:.1f}s after the provider came back")
    # kill -9: the runtime dies; pods are created while it is down; time from restart to a resynced node.
    runtime.kill()
    more = [f"after-kill-{i:03d}" for i in range(churn)]
    _create_all(local, BENCH_NS, more, remote=False)
    started = runtime.start()
    _wait(_consistent(state, expected | set(more)), 600, "consistency after kill -9")
    resync = time.monotonic() - started
    say(f"recovery: resynced {resync:.1f}s after the restart")
    return {"pods": n, "outage_s": outage_seconds, "mirrors_right_after_outage_s": round(mirrored, 2),
            "consistent_after_outage_s": round(outage, 2), "resync_after_kill9_s": round(resync, 2)}


def _mirrors_are(state: State, names: set[str]) -> Callable[[], bool]:
    remote = _client(state.tenant_kubeconfig)

    def check() -> bool:
        mirrors = remote.list_namespaced_pod(state.tenant_namespace, label_selector="bench=1").items
        live = {(m.metadata.annotations or {}).get("k8sgpu.io/origin-name") for m in mirrors
                if not m.metadata.deletion_timestamp}
        return live == names

    return check


def _node_ready(kubeconfig: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        node = _client(kubeconfig).read_node(NODE)
    except ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []) and \
        node.status.capacity.get("pods", "0") != "0"


def table(results: dict) -> str:
    lines = ["| N | baseline s | k8s.gpu s | ratio | added p50 ms | added p99 ms | runtime RSS MB | runtime CPU s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o, f in zip(results["overhead"], results["footprint"], strict=True):
        lines.append(f"| {o['n']} | {o['baseline_s']} | {o['virtual_s']} | {o['ratio']} | {o['added_p50_ms']} | "
                     f"{o['added_p99_ms']} | {f['rss_mb']} | {f['cpu_s_for_n']} |")
    r = results.get("recovery") or {}
    lines.append("")
    lines.append(f"idle CPU with {results.get('idle_with_pods')} pods: {results.get('idle_cpu_percent')} %; "
                 f"after a {r.get('outage_s')} s provider outage with {r.get('pods')} pods: mirrors right in "
                 f"{r.get('mirrors_right_after_outage_s')} s, consistent in {r.get('consistent_after_outage_s')} s; "
                 f"resynced {r.get('resync_after_kill9_s')} s after kill -9")
    return "\n".join(lines)


def _write(results: dict, out_dir: Path, say: Say) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1))
    png_path = out_dir / f"{stamp}.png"
    _plot(results, png_path)
    (out_dir / "latest.md").write_text(table(results) + "\n")
    results["files"] = [str(json_path), str(png_path)]
    say(f"wrote {json_path} and {png_path}")
    return results


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["overhead"]), figsize=(6 * len(results["overhead"]), 4), squeeze=False)
    for ax, o in zip(axes[0], results["overhead"], strict=True):
        for key, label in (("latencies_baseline_ms", "provider directly"), ("latencies_virtual_ms", "through k8s.gpu")):
            values = sorted(o[key])
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
        ax.set_title(f"N = {o['n']}: time to Running (ratio {o['ratio']})")
        ax.set_xlabel("ms from create to Running, seen by the creator")
        ax.set_ylabel("fraction of pods")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

