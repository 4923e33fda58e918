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
    """Cumulative CPU core-nanoseconds per (namespace, pod, container), integrated from usage samples."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str, str], tuple[datetime.datetime, int, float]] = {}

    def observe(self, key: tuple[str, str, str], when: datetime.datetime, nanocores: int) -> float:
        last = self._totals.get(key)
        if last is None:
            total = 0.0
        else:
            seen, rate, total = last
            if when <= seen:
                return total  # the same sample again
            total += (rate + nanocores) / 2 * (when - seen).total_seconds()  # trapezoid between samples
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
    sampled: dict[str, tuple[datetime.datetime, str]] = {}
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
                sampled[measured.timestamp] = (parsed, _ts(parsed))
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


def resource_metrics(node_name: str, started: datetime.datetime, pods: list[dict],
                     usage: dict[tuple[str, str], PodUsage], counter: CpuCounter) -> str:
    """The Prometheus text metrics-server scrapes from every kubelet."""
    data = summary(node_name, started, pods, usage, counter)
    lines: list[str] = []
    seconds: dict[str, float] = {}  # a timestamp → its Unix seconds: a scrape's thousands of samples share a few

    def epoch(when: str) -> float:
        if when not in seconds:
            seconds[when] = _parse_ts(when).timestamp()
        return seconds[when]

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float, str]]) -> None:
        lines.append(f"# HELP {name} [STABLE] {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value, when in samples:
            lines.append(f"{name}{labels} {value!r} {int(epoch(when) * 1000)}")

    node = data["node"]
    family("node_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the node in core-seconds",
           [("", node["cpu"]["usageCoreNanoSeconds"] / 1e9, node["cpu"]["time"])])
    family("node_memory_working_set_bytes", "gauge", "Current working set of the node in bytes",
           [("", float(node["memory"]["workingSetBytes"]), node["memory"]["time"])])
    containers_cpu, containers_mem, pods_cpu, pods_mem, starts = [], [], [], [], []
    for pod in data["pods"]:
        ref = pod["podRef"]
        pod_labels = f'{{namespace="{ref["namespace"]}",pod="{ref["name"]}"}}'
        for c in pod["containers"]:
            labels = f'{{container="{c["name"]}",namespace="{ref["namespace"]}",pod="{ref["name"]}"}}'
            if "cpu" not in c:
                continue  # metrics-server takes a container's figures together; its start alone would be noise
            containers_cpu.append((labels, c["cpu"]["usageCoreNanoSeconds"] / 1e9, c["cpu"]["time"]))
            containers_mem.append((labels, float(c["memory"]["workingSetBytes"]), c["memory"]["time"]))
            starts.append((labels, epoch(c["startTime"]), c["cpu"]["time"]))
        if "cpu" in pod:
            pods_cpu.append((pod_labels, pod["cpu"]["usageCoreNanoSeconds"] / 1e9, pod["cpu"]["time"]))
            pods_mem.append((pod_labels, float(pod["memory"]["workingSetBytes"]), pod["memory"]["time"]))
    family("container_cpu_usage_seconds_total", "counter",
           "Cumulative cpu time consumed by the container in core-seconds", containers_cpu)
    family("container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes",
           containers_mem)
    family("container_start_time_seconds", "gauge", "Start time of the container since unix epoch in seconds",
           starts)
    family("pod_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the pod in core-seconds",
           pods_cpu)
    family("pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes", pods_mem)
    lines.append("# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise")
    lines.append("# TYPE scrape_error gauge")
    lines.append("scrape_error 0")
    return "\n".join(lines) + "\n"
