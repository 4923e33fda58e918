"""`k8sgpu bench`: the virtual node measured against creating the same pods straight on the clusters.

All figures come from one run on one ground, so ratios hold on a noisy machine:
- mirror overhead: N pods created in the tenant namespace (baseline); the same N created at once straight on both
  clusters, locally through the local scheduler onto a kwok node of the local cluster and on the provider in the
  tenant namespace (limit: the API work a mirrored pod needs, without the runtime); the same N created locally and
  run through k8s.gpu (virtual). Time until all are Running as their creator sees them, the ratios, the per-pod
  latencies, and where a virtual pod's time goes (created → bound → mirror created → mirror Running → local
  Running, each stage's p50 and p99);
- light load: pods created at a steady rate (open loop), the latency added per pod against the limit;
- footprint: the runtime's CPU per pod, RSS while holding N pods, and its CPU while idle;
- recovery: time to consistency after a provider outage, and after `kill -9` of the runtime.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from .dev.binaries import Binaries, ensure_binaries
from .dev.catalog import POOL_LABEL, GPUPool
from .dev.ground import Ground, State, free_port, has_default_service_account
from .dev.kwok import write_pool_files

NODE = "k8s.gpu"
BENCH_CLASS = "bench-no-gpu"
BENCH_NS = "bench"
# Room for 10,000 pods: kwok nodes hold any number; pods capacity is what limits the scheduler.
BENCH_POOLS = (GPUPool(name="bench", gpu_product="NVIDIA-RTX-A6000", gpus_per_node=2, gpu_memory_mib=49140,
                       nodes=6, cpu="1000", memory="4Ti", pods="2000", pod_cidr="10.64.0.1/12"),)
# The limit run's node of the local cluster: one kwok node plays the kubelet, as k8s.gpu holds all N pods alone.
LIMIT_POOL = GPUPool(name="limit", gpu_product="none", gpus_per_node=0, gpu_memory_mib=0, nodes=1, cpu="1000",
                     memory="4Ti", pods="12000", pod_cidr="10.96.0.1/12")
LIMIT_NODE = "bench-limit"
ORIGIN_NAME = "k8sgpu.io/origin-name"  # the mirror's annotation naming its local pod (runtime.translate)
# The stages of a pod through k8s.gpu, each from the end of the one before (the first from the bench's create).
STAGES = ("bound", "mirror_created", "mirror_running", "local_running")
SIZES = {"quick": [50], "default": [100, 1000], "full": [100, 1000, 10000]}

Say = Callable[[str], None]


def _client(kubeconfig: str):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    return client.CoreV1Api(client.ApiClient(cfg))


def _pod(name: str, *, where: str) -> dict:
    """A bench pod: ``remote`` straight on the provider, ``limit`` on the local kwok node, ``virtual`` on k8s.gpu."""
    spec: dict = {"containers": [{"name": "c", "image": "busybox",
                                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    if where == "remote":
        spec["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-RTX-A6000"}
    elif where == "limit":
        spec["nodeSelector"] = {"kubernetes.io/hostname": LIMIT_NODE}
    else:
        spec["runtimeClassName"] = BENCH_CLASS
    return {"metadata": {"name": name, "labels": {"bench": "1"}}, "spec": spec}


class PodWatch:
    """Records, from one watch of a namespace's bench pods, the first moment each is seen, bound to a node and
    Running, by its name; with ``by_origin``, provider mirrors by the name of their local pod (others ignored).
    Events are read as plain JSON: building the client's models for 10,000 pods would take the CPU the clusters
    are measured with."""

    def __init__(self, kubeconfig: str, namespace: str, *, by_origin: bool = False):
        self.api, self.namespace, self.by_origin = _client(kubeconfig), namespace, by_origin
        self.seen: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self._stopped = threading.Event()
        self._response = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def start(self) -> PodWatch:
        self._thread.start()
        self._started.wait(10)
        return self

    def _name(self, meta: dict) -> str | None:
        if self.by_origin:
            return (meta.get("annotations") or {}).get(ORIGIN_NAME)
        return meta.get("name")

    def _record(self, pod: dict) -> None:
        name = self._name(pod.get("metadata") or {})
        if name is None:
            return
        now = time.monotonic()
        self.seen.setdefault(name, now)
        if (pod.get("spec") or {}).get("nodeName"):
            self.bound.setdefault(name, now)
        if (pod.get("status") or {}).get("phase") == "Running":
            self.running.setdefault(name, now)

    def _run(self) -> None:
        rv = self.api.list_namespaced_pod(self.namespace, limit=1).metadata.resource_version
        self._started.set()
        while not self._stopped.is_set():
            try:
                self._response = self.api.list_namespaced_pod(
                    self.namespace, resource_version=rv, label_selector="bench=1", watch=True,
                    allow_watch_bookmarks=True, timeout_seconds=600, _preload_content=False)
                for line in self._response:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._record(obj)
            except Exception:  # noqa: BLE001 - the bench re-watches; a broken watch is not a result
                if self._stopped.is_set():
                    return
                time.sleep(0.2)

    def stop(self) -> None:
        self._stopped.set()
        if self._response is not None:
            self._response.shutdown()  # the watch's blocking read ends now
        self._thread.join(timeout=5)
        self.api.api_client.close()


@dataclasses.dataclass
class Overhead:
    n: int
    baseline_s: float
    limit_s: float
    virtual_s: float
    ratio: float  # virtual / baseline
    ratio_to_limit: float  # virtual / limit
    baseline_p50_ms: float
    baseline_p99_ms: float
    limit_p50_ms: float
    limit_p99_ms: float
    virtual_p50_ms: float
    virtual_p99_ms: float
    added_p50_ms: float  # virtual less baseline
    added_p99_ms: float
    added_to_limit_p50_ms: float  # virtual less limit
    added_to_limit_p99_ms: float
    cpu_ms_per_pod: float  # the runtime's CPU from the first create until all N are Running, per pod
    requests_per_pod: dict[str, float]  # "cluster verb" → the runtime's API requests in that time, per pod
    stages: dict[str, dict[str, float]]  # stage → {"p50_ms", "p99_ms"}, see STAGES
    latencies_baseline_ms: list[float]
    latencies_limit_ms: list[float]
    latencies_virtual_ms: list[float]
    # Seconds from the run's first create to each pod's Running, sorted: Running pods over time.
    running_at_baseline_s: list[float]
    running_at_limit_s: list[float]
    running_at_virtual_s: list[float]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _create(api, namespace: str, name: str, where: str, created: dict[str, float]) -> None:
    t = time.monotonic()
    api.create_namespaced_pod(namespace, _pod(name, where=where))
    created[name] = t


def _create_all(api, namespace: str, names: list[str], where: str, workers: int = 16) -> dict[str, float]:
    created: dict[str, float] = {}
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda name: _create(api, namespace, name, where, created), names))
    return created


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


@dataclasses.dataclass
class Run:
    """One set of pods: when the bench created each, and what its watches saw."""

    names: list[str]
    created: dict[str, float]
    local: PodWatch
    remote: PodWatch | None = None

    def total_s(self, watch: PodWatch) -> float:
        return max(watch.running[m] for m in self.names) - min(self.created.values())

    def latencies_ms(self, watch: PodWatch) -> list[float]:
        return [(watch.running[m] - self.created[m]) * 1000 for m in self.names]

    def running_at_s(self, watch: PodWatch, created: dict[str, float] | None = None) -> list[float]:
        first = min((created or self.created).values())
        return sorted(round(watch.running[m] - first, 3) for m in self.names)


def _pods_running(watches: list[PodWatch], n: int, timeout: float, what: str) -> None:
    _wait(lambda: all(len(w.running) >= n for w in watches), timeout, what)
    for w in watches:
        w.stop()


def _baseline(state: State, names: list[str]) -> Run:
    watch = PodWatch(state.tenant_kubeconfig, state.tenant_namespace).start()
    created = _create_all(_client(state.tenant_kubeconfig), state.tenant_namespace, names, "remote")
    _pods_running([watch], len(names), 120 + len(names) * 0.2, f"{len(names)} pods Running on the provider")
    return Run(names, created, watch)


def _at_once(*creates: Callable[[], dict[str, float]]) -> list[dict[str, float]]:
    with ThreadPoolExecutor(len(creates)) as pool:
        return list(pool.map(lambda create: create(), creates))


def _limit(state: State, names: list[str]) -> tuple[Run, Run]:
    """The same pods created at the same time straight on both clusters: locally onto the kwok node, and on the
    provider in the tenant namespace."""
    local = PodWatch(state.local.kubeconfig, BENCH_NS).start()
    remote = PodWatch(state.tenant_kubeconfig, state.tenant_namespace).start()
    local_api, remote_api = _client(state.local.kubeconfig), _client(state.tenant_kubeconfig)
    local_created, remote_created = _at_once(
        lambda: _create_all(local_api, BENCH_NS, names, "limit"),
        lambda: _create_all(remote_api, state.tenant_namespace, names, "remote"))
    _pods_running([local, remote], len(names), 120 + len(names) * 0.4, f"{len(names)} pods Running on both clusters")
    return Run(names, local_created, local), Run(names, remote_created, remote)


def _limit_total_s(local: Run, remote: Run) -> float:
    first = min(min(local.created.values()), min(remote.created.values()))
    return max(max(local.local.running.values()), max(remote.local.running.values())) - first


def _limit_latencies_ms(local: Run, remote: Run) -> list[float]:
    """Per pod, what a mirrored pod waits for without the runtime: its local pod's create to Running on the kwok
    node (bind and a kubelet's status write included), then its provider pod's create to Running."""
    return [a + b for a, b in zip(local.latencies_ms(local.local), remote.latencies_ms(remote.local), strict=True)]


def _limit_running_at_s(local: Run, remote: Run) -> list[float]:
    """A limit pair is Running when both its pods are."""
    first = min(min(local.created.values()), min(remote.created.values()))
    return sorted(round(max(local.local.running[m], remote.local.running[m]) - first, 3) for m in local.names)


def _virtual(state: State, names: list[str], create: Callable[[], dict[str, float]] | None = None) -> Run:
    local = PodWatch(state.local.kubeconfig, BENCH_NS).start()
    remote = PodWatch(state.tenant_kubeconfig, state.tenant_namespace, by_origin=True).start()
    created = (create or (lambda: _create_all(_client(state.local.kubeconfig), BENCH_NS, names, "virtual")))()
    _pods_running([local, remote], len(names), 120 + len(names) * 0.3, f"{len(names)} pods Running through k8s.gpu")
    return Run(names, created, local, remote)


def stage_times_ms(run: Run) -> dict[str, list[float]]:
    """Per stage (STAGES), each pod's time in it: created → bound by the local scheduler → mirror created on the
    provider → mirror Running → local pod Running."""
    assert run.remote is not None
    out: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for m in run.names:
        points = (run.created[m], run.local.bound[m], run.remote.seen[m], run.remote.running[m], run.local.running[m])
        for stage, start, end in zip(STAGES, points, points[1:], strict=False):
            out[stage].append((end - start) * 1000)
    return out


def stage_percentiles(run: Run) -> dict[str, dict[str, float]]:
    return {stage: {"p50_ms": round(_pct(v, 50), 1), "p99_ms": round(_pct(v, 99), 1)}
            for stage, v in stage_times_ms(run).items()}


def _delete_all(kubeconfig: str, namespace: str) -> None:
    from kubernetes.client.rest import ApiException

    api = _client(kubeconfig)
    deadline = time.monotonic() + 300 + 0.05 * 10000
    while True:
        try:
            api.delete_collection_namespaced_pod(namespace, label_selector="bench=1", grace_period_seconds=0)
            break
        except ApiException as exc:
            # A DeleteCollection of thousands of pods outlasts the API server's 60 s request timeout: 504, while
            # it goes on deleting. Asked again, it deletes what is left.
            if exc.status != 504 or time.monotonic() > deadline:
                raise
    _wait(lambda: not api.list_namespaced_pod(namespace, label_selector="bench=1", limit=1).items,
          max(1.0, deadline - time.monotonic()), f"bench pods gone from {namespace}")


def _both_empty(state: State) -> None:
    _delete_all(state.local.kubeconfig, BENCH_NS)
    # As the provider's admin: the tenant's Role has no deletecollection (the runtime deletes pod by pod).
    _delete_all(state.provider.kubeconfig, state.tenant_namespace)


class Profile:
    """py-spy sampling the runtime while it works, written as a flame graph when stopped; nothing when
    ``path`` is None."""

    def __init__(self, pid: int, path: Path | None):
        self.proc = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
            py_spy = shutil.which("py-spy", path=search)
            if py_spy is None:
                raise RuntimeError("bench --profile needs py-spy: pip install -e '.[bench]'")
            self.proc = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "200",
                                          "--format", "flamegraph", "--output", str(path), "--nonblocking"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)


def mirror_overhead(state: State, n: int, say: Say, cpu_seconds: Callable[[], float],
                    profile: Callable[[], Profile] = lambda: Profile(0, None),
                    api_requests: Callable[[], dict[str, float]] = dict) -> Overhead:
    say(f"N={n}: baseline straight on the provider")
    base = _baseline(state, [f"base{n}-{i:05d}" for i in range(n)])
    _both_empty(state)
    say(f"N={n}: limit, straight on both clusters at once")
    limit_local, limit_remote = _limit(state, [f"lim{n}-{i:05d}" for i in range(n)])
    _both_empty(state)
    say(f"N={n}: through k8s.gpu")
    sampling = profile()
    cpu0, requests0 = cpu_seconds(), api_requests()
    virt = _virtual(state, [f"virt{n}-{i:05d}" for i in range(n)])
    cpu, requests = cpu_seconds() - cpu0, api_requests()
    per_pod = {key: round((count - requests0.get(key, 0.0)) / n, 2) for key, count in sorted(requests.items())}
    sampling.stop()
    base_s, limit_s, virt_s = base.total_s(base.local), _limit_total_s(limit_local, limit_remote), \
        virt.total_s(virt.local)
    base_lat, virt_lat = base.latencies_ms(base.local), virt.latencies_ms(virt.local)
    limit_lat = _limit_latencies_ms(limit_local, limit_remote)
    return Overhead(
        n=n, baseline_s=round(base_s, 3), limit_s=round(limit_s, 3), virtual_s=round(virt_s, 3),
        ratio=round(virt_s / base_s, 3), ratio_to_limit=round(virt_s / limit_s, 3),
        baseline_p50_ms=round(_pct(base_lat, 50), 1), baseline_p99_ms=round(_pct(base_lat, 99), 1),
        limit_p50_ms=round(_pct(limit_lat, 50), 1), limit_p99_ms=round(_pct(limit_lat, 99), 1),
        virtual_p50_ms=round(_pct(virt_lat, 50), 1), virtual_p99_ms=round(_pct(virt_lat, 99), 1),
        added_p50_ms=round(_pct(virt_lat, 50) - _pct(base_lat, 50), 1),
        added_p99_ms=round(_pct(virt_lat, 99) - _pct(base_lat, 99), 1),
        added_to_limit_p50_ms=round(_pct(virt_lat, 50) - _pct(limit_lat, 50), 1),
        added_to_limit_p99_ms=round(_pct(virt_lat, 99) - _pct(limit_lat, 99), 1),
        cpu_ms_per_pod=round(cpu * 1000 / n, 2), stages=stage_percentiles(virt),
        requests_per_pod={key: count for key, count in per_pod.items() if count},
        latencies_baseline_ms=[round(x, 1) for x in base_lat], latencies_limit_ms=[round(x, 1) for x in limit_lat],
        latencies_virtual_ms=[round(x, 1) for x in virt_lat],
        running_at_baseline_s=base.running_at_s(base.local), running_at_limit_s=_limit_running_at_s(
            limit_local, limit_remote), running_at_virtual_s=virt.running_at_s(virt.local),
    )


def _open_loop(rate: float, names: list[str], *creates: Callable[[str], None]) -> None:
    """Each name created at its slot, ``1 / rate`` seconds apart, whatever earlier creates take (open loop)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        for i, name in enumerate(names):
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            for create in creates:
                pool.submit(create, name)


def light_load(state: State, rate: float, seconds: int, say: Say) -> dict:
    """Pods created at a steady ``rate`` for ``seconds``: the limit pairs, then through k8s.gpu; per-pod latency
    and what the runtime adds to it."""
    n = max(1, int(rate * seconds))
    local_api, remote_api = _client(state.local.kubeconfig), _client(state.tenant_kubeconfig)
    say(f"light load: {rate:g} pods/s for {seconds}s, limit")
    names = [f"steady-lim-{i:05d}" for i in range(n)]
    watches = [PodWatch(state.local.kubeconfig, BENCH_NS).start(),
               PodWatch(state.tenant_kubeconfig, state.tenant_namespace).start()]
    local_created: dict[str, float] = {}
    remote_created: dict[str, float] = {}
    _open_loop(rate, names, lambda m: _create(local_api, BENCH_NS, m, "limit", local_created),
               lambda m: _create(remote_api, state.tenant_namespace, m, "remote", remote_created))
    _pods_running(watches, n, 120, f"{n} light-load pods Running on both clusters")
    limit_lat = _limit_latencies_ms(Run(names, local_created, watches[0]), Run(names, remote_created, watches[1]))
    _both_empty(state)
    say(f"light load: {rate:g} pods/s for {seconds}s, through k8s.gpu")
    names = [f"steady-virt-{i:05d}" for i in range(n)]
    created: dict[str, float] = {}
    virt = _virtual(state, names, lambda: (
        _open_loop(rate, names, lambda m: _create(local_api, BENCH_NS, m, "virtual", created)), created)[1])
    virt_lat = virt.latencies_ms(virt.local)
    _both_empty(state)
    return {
        "rate_per_s": rate, "seconds": seconds, "pods": n,
        "limit_p50_ms": round(_pct(limit_lat, 50), 1), "limit_p99_ms": round(_pct(limit_lat, 99), 1),
        "virtual_p50_ms": round(_pct(virt_lat, 50), 1), "virtual_p99_ms": round(_pct(virt_lat, 99), 1),
        "added_p50_ms": round(_pct(virt_lat, 50) - _pct(limit_lat, 50), 1),
        "added_p99_ms": round(_pct(virt_lat, 99) - _pct(limit_lat, 99), 1),
        "stages": stage_percentiles(virt),
        "latencies_limit_ms": [round(x, 1) for x in limit_lat], "latencies_virtual_ms": [round(x, 1) for x in virt_lat],
    }


def start_limit_node(ground: Ground, state: State, binaries: Binaries) -> None:
    """The local cluster's kwok node of the limit run, and the kwok controller that plays its kubelet (under the
    ground's care, so that `down` stops it)."""
    from kubernetes import client as k8s

    pool_dir = Path(state.root) / "local" / LIMIT_POOL.name
    config = write_pool_files(LIMIT_POOL, pool_dir)
    _client(state.local.kubeconfig).create_node(k8s.V1Node(**{
        k: v for k, v in LIMIT_POOL.node_manifest(LIMIT_NODE).items() if k in ("metadata", "status")}))
    port = free_port()
    ground.run_process("local-kwok-limit", [
        str(binaries.kwok), f"--kubeconfig={state.local.kubeconfig}", f"--config={config}",
        f"--manage-nodes-with-label-selector={POOL_LABEL}={LIMIT_POOL.name}", "--node-ip=127.0.0.1",
        f"--node-port={port}", f"--server-address=127.0.0.1:{port}", f"--cidr={LIMIT_POOL.pod_cidr}",
        "--node-lease-duration-seconds=40"])
    _wait(lambda: _ready(_client(state.local.kubeconfig).read_node(LIMIT_NODE)), 60, f"{LIMIT_NODE} Ready")


def _ready(node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


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
        self.health_port = free_port()  # its /metrics: the API requests it made

    def start(self) -> float:
        s = self.state
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "k8sgpu.runtime.main", "start", "--kubeconfig", s.node_kubeconfig,
                 "--provider-kubeconfig", s.tenant_kubeconfig, "--tenant-namespace", s.tenant_namespace,
                 "--node-address", s.node_address, "--kubelet-port", str(self.kubelet_port),
                 "--health-port", str(self.health_port)],
                stdout=out, stderr=subprocess.STDOUT)
        return started

    def api_requests(self) -> dict[str, float]:
        """The API requests the runtime made so far, by "cluster verb" (rest_client_requests of its /metrics)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "rest_client_requests":
                for sample in family.samples:
                    if sample.name == "rest_client_requests_total":
                        key = f"{sample.labels['cluster']} {sample.labels['verb']}"
                        out[key] = out.get(key, 0.0) + sample.value
        return out

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


def run(scale: str, out_dir: Path, say: Say, idle_seconds: int = 60, outage_seconds: int = 60,
        sizes: list[int] | None = None, steady_rate: float = 5.0, steady_seconds: int = 60,
        profile: bool = False) -> dict:
    """The whole bench on a ground of its own; ``sizes`` (N of each run) overrides the scale's; a
    ``steady_seconds`` of 0 leaves out the light-load run; with ``profile``, py-spy samples the runtime through
    each virtual run (a flame graph per N beside the results)."""
    from k8sgpu.runtime.catalog import runtime_class_manifest
    from k8sgpu.runtime.rbac import extra_rbac

    sizes = sizes or SIZES[scale]
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
        start_limit_node(ground, state, binaries)
        runtime.start()
        _wait(lambda: _node_ready(state.local.kubeconfig), 60, "k8s.gpu Ready")
        pid = runtime.proc.pid

        if steady_seconds > 0:
            results["light_load"] = light_load(state, steady_rate, steady_seconds, say)
            ll = results["light_load"]
            say(f"light load: added p50 {ll['added_p50_ms']} ms, p99 {ll['added_p99_ms']} ms against the limit")
        for n in sizes:
            cpu0 = _proc_cpu_seconds(pid)
            flame = out_dir / f"profile-virtual-{n}-{results['when'].replace(':', '')}.svg" if profile else None
            overhead = mirror_overhead(state, n, say, lambda pid=pid: _proc_cpu_seconds(pid),
                                       lambda pid=pid, flame=flame: Profile(pid, flame), runtime.api_requests)
            results["overhead"].append(overhead)
            say(f"N={n}: baseline {overhead.baseline_s}s, limit {overhead.limit_s}s, virtual {overhead.virtual_s}s, "
                f"ratio to limit {overhead.ratio_to_limit}, {overhead.cpu_ms_per_pod} ms CPU per pod")
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
            if n == recovery_at and outage_seconds > 0:
                results["recovery"] = _recovery(state, ground, runtime, n, outage_seconds, say)
                pid = runtime.proc.pid
            _delete_all(state.local.kubeconfig, BENCH_NS)
            _wait(_consistent(state, set()), 300 + 0.05 * n, "the provider to be empty")
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
    _create_all(local, BENCH_NS, extra, "virtual")
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
    _create_all(local, BENCH_NS, more, "virtual")
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
    lines = ["| N | baseline s | limit s | k8s.gpu s | ratio | ratio to limit | added p50 ms | added p99 ms | "
             "CPU ms/pod | runtime RSS MB | runtime CPU s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o, f in zip(results["overhead"], results["footprint"], strict=True):
        lines.append(f"| {o['n']} | {o['baseline_s']} | {o['limit_s']} | {o['virtual_s']} | {o['ratio']} | "
                     f"{o['ratio_to_limit']} | {o['added_p50_ms']} | {o['added_p99_ms']} | "
                     f"{o['cpu_ms_per_pod']} | {f['rss_mb']} | {f['cpu_s_for_n']} |")
    lines += ["", "Where a pod's time goes through k8s.gpu (p50 / p99 ms of each stage):", "",
              "| run | created → bound | bound → mirror created | mirror created → Running | "
              "mirror Running → local Running |", "| --- | --- | --- | --- | --- |"]
    runs = [(f"N = {o['n']}", o["stages"]) for o in results["overhead"]]
    ll = results.get("light_load")
    if ll:
        runs.append((f"{ll['rate_per_s']:g}/s for {ll['seconds']} s", ll["stages"]))
    for label, stages in runs:
        cells = " | ".join(f"{stages[s]['p50_ms']} / {stages[s]['p99_ms']}" for s in STAGES)
        lines.append(f"| {label} | {cells} |")
    lines.append("")
    for o in results["overhead"]:
        if o.get("requests_per_pod"):
            lines.append(f"API requests per pod through k8s.gpu, N = {o['n']}: " + ", ".join(
                f"{key} {count}" for key, count in o["requests_per_pod"].items()))
            lines.append("")
    if ll:
        lines.append(f"light load, {ll['rate_per_s']:g} pods/s for {ll['seconds']} s: {ll['virtual_p50_ms']} / "
                     f"{ll['virtual_p99_ms']} ms to Running through k8s.gpu (p50 / p99), limit {ll['limit_p50_ms']} / "
                     f"{ll['limit_p99_ms']} ms, added {ll['added_p50_ms']} / {ll['added_p99_ms']} ms")
        lines.append("")
    r = results.get("recovery") or {}
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
    plot(results, png_path)
    (out_dir / "latest.md").write_text(table(results) + "\n")
    results["files"] = [str(json_path), str(png_path)]
    say(f"wrote {json_path} and {png_path}")
    return results


COLORS = {"baseline": "C0", "limit": "C1", "virtual": "C2"}  # the same in every panel


def _cdf(ax, values: list[float], label: str, kind: str) -> None:
    ordered = sorted(values)
    ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label, color=COLORS[kind])


def plot(results: dict, path: Path) -> None:
    """Per N, Running pods over time (baseline, limit, virtual) beside the latency CDFs; the light-load CDFs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["overhead"])
    ll = results.get("light_load")
    fig, axes = plt.subplots(len(rows) + bool(ll), 2, figsize=(12, 4 * (len(rows) + bool(ll))), squeeze=False)
    kinds = (("baseline", "provider directly"), ("limit", "limit: both clusters, no runtime"),
             ("virtual", "through k8s.gpu"))
    for (over_time, cdf), o in zip(axes, rows, strict=False):
        for kind, label in kinds:
            at = o[f"running_at_{kind}_s"]
            over_time.step(at, range(1, len(at) + 1), where="post", label=label, color=COLORS[kind])
            _cdf(cdf, o[f"latencies_{kind}_ms"], label, kind)
        over_time.set_title(f"N = {o['n']}: Running pods (ratio to limit {o['ratio_to_limit']})")
        over_time.set_xlabel("s from the first create")
        over_time.set_ylabel("pods Running")
        cdf.set_title(f"N = {o['n']}: time to Running")
        cdf.set_xlabel("ms from create to Running, seen by the creator")
        cdf.set_ylabel("fraction of pods")
    if ll:
        over_time, cdf = axes[-1]
        over_time.axis("off")
        _cdf(cdf, ll["latencies_limit_ms"], "limit: both clusters, no runtime", "limit")
        _cdf(cdf, ll["latencies_virtual_ms"], "through k8s.gpu", "virtual")
        cdf.set_title(f"light load, {ll['rate_per_s']:g} pods/s for {ll['seconds']} s: time to Running")
        cdf.set_xlabel("ms from create to Running, seen by the creator")
        cdf.set_ylabel("fraction of pods")
    for ax in axes.flat:
        if ax.has_data():
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
