"""The kubelet's Summary API (/stats/summary) and resource metrics (/metrics/resource), from what the
provider measures: CPU (nanocores) and working-set memory per container of each mirrored pod.

A provider reports usage as it is now (metrics.k8s.io); the kubelet's counters are cumulative CPU
seconds, so `CpuCounter` integrates the rates it is shown. Filesystem, network, GPU and accelerator
figures are not reported by a remote cluster's API and are left out rather than invented.
"""

from __future__ import annotations

import datetime

from ..provider import PodUsage


def _ts(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return datetime.datetime.now(datetime.UTC)


class CpuCounter:
    """Cumulative CPU core-nanoseconds per (namespace, pod, container), integrated from usage samples (their
    times in Unix seconds)."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str, str], tuple[float, int, float]] = {}

    def observe(self, key: tuple[str, str, str], when: float, nanocores: int) -> float:
        last = self._totals.get(key)
        if last is None:
            total = 0.0
        else:
            seen, rate, total = last
            if when <= seen:
                return total  # the same sample again
            total += (rate + nanocores) / 2 * (when - seen)  # trapezoid between samples
        self._totals[key] = (when, nanocores, total)
        return total

    def forget_except(self, live: set[tuple[str, str, str]]) -> None:
        self._totals = {k: v for k, v in self._totals.items() if k in live}


def _pod_ref(pod: dict) -> dict:
    meta = pod["metadata"]
    return {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")}


def _container_starts(pod: dict, default: str) -> dict[str, str]:
    """The pod's containers by name → when each started (its status's, else the pod's start): every container of
    a running pod, as a kubelet lists them; of another, those its status says have started."""
    status = pod.get("status") or {}
    running = status.get("phase") == "Running"
    starts = {c["name"]: default for c in (pod.get("spec") or {}).get("containers") or [] if running and "name" in c}
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        if started and cs.get("name"):
            starts[cs["name"]] = started
    return starts


def summary(node_name: str, started: datetime.datetime, pods: list[dict],
            usage: dict[tuple[str, str], PodUsage], counter: CpuCounter) -> dict:
    """Every container of each pod from the first second, as a kubelet lists them; CPU and memory added where
    the provider has measured them (its first measurement comes some 20 s after a pod starts)."""
    now = datetime.datetime.now(datetime.UTC)
    now_ts = _ts(now)
    # A provider measures its pods in a few rounds: thousands of pods share a handful of sample times, each parsed
    # and formatted once per scrape.
    sampled: dict[str, tuple[float, str]] = {}
    out_pods = []
    node_cpu, node_mem, node_total = 0, 0, 0.0
    live = set()
    for pod in pods:
        meta = pod["metadata"]
        measured = usage.get((meta["namespace"], meta["name"]))
        start = (pod.get("status") or {}).get("startTime") or now_ts
        containers = {name: {"name": name, "startTime": when} for name, when in _container_starts(pod, start).items()}
        entry: dict = {"podRef": _pod_ref(pod), "startTime": start}
        if measured is not None:
            if measured.timestamp not in sampled:
                parsed = _parse_ts(measured.timestamp)
                sampled[measured.timestamp] = (parsed.timestamp(), _ts(parsed))
            when, when_ts = sampled[measured.timestamp]
            pod_cpu, pod_mem, pod_total = 0, 0, 0.0
            for c in measured.containers:
                key = (meta["namespace"], meta["name"], c.name)
                live.add(key)
                total = counter.observe(key, when, c.cpu_nanocores)
                containers.setdefault(c.name, {"name": c.name, "startTime": start}).update({
                    "cpu": {"time": when_ts, "usageNanoCores": c.cpu_nanocores,
                            "usageCoreNanoSeconds": int(total)},
                    "memory": {"time": when_ts, "workingSetBytes": c.memory_bytes, "usageBytes": c.memory_bytes},
                })
                pod_cpu, pod_mem, pod_total = pod_cpu + c.cpu_nanocores, pod_mem + c.memory_bytes, pod_total + total
            entry["cpu"] = {"time": when_ts, "usageNanoCores": pod_cpu, "usageCoreNanoSeconds": int(pod_total)}
            entry["memory"] = {"time": when_ts, "workingSetBytes": pod_mem, "usageBytes": pod_mem}
            node_cpu, node_mem, node_total = node_cpu + pod_cpu, node_mem + pod_mem, node_total + pod_total
        entry["containers"] = list(containers.values())
        out_pods.append(entry)
    counter.forget_except(live)
    return {
        "node": {
            "nodeName": node_name, "startTime": _ts(started), "systemContainers": [],
            "cpu": {"time": _ts(now), "usageNanoCores": node_cpu, "usageCoreNanoSeconds": int(node_total)},
            "memory": {"time": _ts(now), "workingSetBytes": node_mem, "usageBytes": node_mem},
        },
        "pods": out_pods,
    }


def _families(node: tuple[str, str], pods: list[list[str]]) -> str:
    """The Prometheus text of the node's two samples and each family's per-pod and per-container lines."""
    names = (("container_cpu_usage_seconds_total", "counter",
              "Cumulative cpu time consumed by the container in core-seconds"),
             ("container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes"),
             ("container_start_time_seconds", "gauge", "Start time of the container since unix epoch in seconds"),
             ("pod_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the pod in core-seconds"),
             ("pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes"))
    lines = ["# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds",
             "# TYPE node_cpu_usage_seconds_total counter", node[0],
             "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes",
             "# TYPE node_memory_working_set_bytes gauge", node[1]]
    for (name, kind, help_text), samples in zip(names, pods, strict=True):
        lines.append(f"# HELP {name} [STABLE] {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)
    lines.append("# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise")
    lines.append("# TYPE scrape_error gauge")
    lines.append("scrape_error 0")
    return "\n".join(lines) + "\n"


def resource_metrics(node_name: str, started: datetime.datetime, pods: list[dict],
                     usage: dict[tuple[str, str], PodUsage], counter: CpuCounter) -> str:
    """The Prometheus text metrics-server scrapes from every kubelet: the figures of `summary`, written straight
    from the pods and their usage (metrics-server reads it every 10 to 60 s, for every pod of the node)."""
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    now_ts = _ts(datetime.datetime.fromtimestamp(now, datetime.UTC))
    sampled: dict[str, tuple[float, str]] = {}  # a sample's time → its Unix seconds and " <ms>" suffix
    seconds: dict[str, float] = {}  # a start time → its Unix seconds: thousands of pods share a few
    containers_cpu, containers_mem, starts, pods_cpu, pods_mem = [], [], [], [], []
    node_cpu, node_mem = 0.0, 0
    live = set()
    for pod in pods:
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        measured = usage.get((namespace, name))
        if measured is None:
            continue
        if measured.timestamp not in sampled:
            at = _parse_ts(measured.timestamp)
            sampled[measured.timestamp] = (at.timestamp(), f" {int(_parse_ts(_ts(at)).timestamp() * 1000)}")
        when, suffix = sampled[measured.timestamp]
        status = pod.get("status") or {}
        pod_start = status.get("startTime") or now_ts
        started_at = {cs.get("name"): (cs.get("state") or {}).get("running", (cs.get("state") or {}).get(
            "terminated")) for cs in status.get("containerStatuses") or ()}
        pod_cpu, pod_mem = 0.0, 0
        for c in measured.containers:
            key = (namespace, name, c.name)
            live.add(key)
            total = counter.observe(key, when, c.cpu_nanocores)
            start = (started_at.get(c.name) or {}).get("startedAt") or pod_start
            if start not in seconds:
                seconds[start] = _parse_ts(start).timestamp()
            labels = f'{{container="{c.name}",namespace="{namespace}",pod="{name}"}} '
            containers_cpu.append(f"container_cpu_usage_seconds_total{labels}{int(total) / 1e9!r}{suffix}")
            containers_mem.append(f"container_memory_working_set_bytes{labels}{float(c.memory_bytes)!r}{suffix}")
            starts.append(f"container_start_time_seconds{labels}{seconds[start]!r}{suffix}")
            pod_cpu, pod_mem = pod_cpu + total, pod_mem + c.memory_bytes
        labels = f'{{namespace="{namespace}",pod="{name}"}} '
        pods_cpu.append(f"pod_cpu_usage_seconds_total{labels}{int(pod_cpu) / 1e9!r}{suffix}")
        pods_mem.append(f"pod_memory_working_set_bytes{labels}{float(pod_mem)!r}{suffix}")
        node_cpu, node_mem = node_cpu + pod_cpu, node_mem + pod_mem
    counter.forget_except(live)
    node = (f"node_cpu_usage_seconds_total {int(node_cpu) / 1e9!r} {now * 1000}",
            f"node_memory_working_set_bytes {float(node_mem)!r} {now * 1000}")
    return _families(node, [containers_cpu, containers_mem, starts, pods_cpu, pods_mem])
