"""GPU accounting: what each pod was allocated, for how long its mirror ran, as Prometheus counters.

Where the truth lives: in the mirror on the provider, never in this process. A mirror carries its allocation (its
containers' resources: the GPUs of its offering, the cpu and memory it asked for or its class's limits), its
offering (annotation `k8sgpu.io/runtime-class`), its GPU product (its node selector) and its own times: the first
container's `startedAt` and, once the pod ended, the last `finishedAt`. Each counter's value is a pure function of
those, ``allocation × (end − start)`` with ``end`` = the finish or now, so a restarted runtime or a new leader
exports exactly the values the old one would have: no reset, nothing lost, nothing counted twice. A pod that ended
while no runtime ran still has its mirror (only the runtime deletes it), so it is counted when the runtime is back.

A mirror seen deleted keeps its final values exported for ``retention`` seconds (several scrape intervals), ended
at its finish, or at the moment its deletion was seen if it was still running. Only the leader registers this
collector (a standby exports nothing); two leaders for a moment export the same values, which `k8sgpu usage`
dedupes by pod UID.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .catalog import GPU_RESOURCE, MIG_RESOURCE_PREFIX, PROVIDER_PRODUCT_LABEL
from .placement import pod_requests
from .translate import ORIGIN_NAME, ORIGIN_NAMESPACE, ORIGIN_UID_LABEL, RUNTIME_CLASS

LABELS = ("namespace", "pod", "uid", "runtime_class", "product", "mig_profile")
# What a gone pod's final values stay exported for: at least a few scrapes at any usual interval (15-60 s).
DEFAULT_RETENTION = 600.0


@dataclasses.dataclass(frozen=True)
class PodAllocation:
    """One mirror's allocation and its running times (seconds since the epoch)."""

    namespace: str
    pod: str
    uid: str
    runtime_class: str
    product: str
    mig_profile: str
    gpus: Decimal
    cpu: Decimal  # cores
    memory: Decimal  # bytes
    started: float | None  # when its first container started; None: never ran
    finished: float | None  # when its last container finished, once the pod ended; None: running (or never ran)

    def labels(self) -> tuple[str, ...]:
        return (self.namespace, self.pod, self.uid, self.runtime_class, self.product, self.mig_profile)

    def running_seconds(self, now: float) -> float:
        if self.started is None:
            return 0.0
        end = now if self.finished is None else min(self.finished, now)
        return max(end - self.started, 0.0)


def _epoch(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _container_times(status: dict) -> tuple[list[float], list[float]]:
    starts, finishes = [], []
    for container in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        for state in (container.get("state") or {}, container.get("lastState") or {}):
            for which in ("running", "terminated"):
                started = _epoch((state.get(which) or {}).get("startedAt"))
                if started is not None:
                    starts.append(started)
            finished = _epoch((state.get("terminated") or {}).get("finishedAt"))
            if finished is not None:
                finishes.append(finished)
    return starts, finishes


def allocation(mirror: dict) -> PodAllocation:
    """A mirror's allocation and times, from the mirror alone."""
    meta, spec, status = mirror["metadata"], mirror.get("spec") or {}, mirror.get("status") or {}
    ann = meta.get("annotations") or {}
    requested = pod_requests(spec)
    gpus, mig = requested.get(GPU_RESOURCE, Decimal(0)), ""
    for resource, amount in requested.items():
        if resource.startswith(MIG_RESOURCE_PREFIX) and amount:
            gpus, mig = gpus + amount, resource[len(MIG_RESOURCE_PREFIX):]
    starts, finishes = _container_times(status)
    ended = status.get("phase") in ("Succeeded", "Failed")
    return PodAllocation(
        namespace=ann.get(ORIGIN_NAMESPACE, ""), pod=ann.get(ORIGIN_NAME, ""),
        uid=(meta.get("labels") or {}).get(ORIGIN_UID_LABEL, ""), runtime_class=ann.get(RUNTIME_CLASS, ""),
        product=(spec.get("nodeSelector") or {}).get(PROVIDER_PRODUCT_LABEL, ""), mig_profile=mig,
        gpus=gpus, cpu=requested.get("cpu", Decimal(0)), memory=requested.get("memory", Decimal(0)),
        started=min(starts) if starts else None,
        finished=(max(finishes) if finishes else None) if ended and starts else None,
    )


class PodUsageCollector(Collector):
    """The counters `k8sgpu_pod_{gpu,cpu_core,memory_byte}_seconds_total`, one series per mirror (by origin UID),
    computed at each scrape from the provider's mirrors; a deleted mirror's final values for ``retention``."""

    def __init__(self, mirrors: Callable[[], Iterable[dict]], *, retention: float = DEFAULT_RETENTION,
                 clock: Callable[[], float] = time.time):
        self._mirrors, self._retention, self._clock = mirrors, retention, clock
        self._gone: dict[str, tuple[PodAllocation, float]] = {}  # uid → (allocation ended, exported until)
        self._seen: dict[str, tuple[str, PodAllocation]] = {}  # mirror UID → (its resourceVersion, allocation)

    def mirror_gone(self, mirror: dict) -> None:
        """The provider saw ``mirror`` deleted: its last state, ended now if it was still running."""
        now = self._clock()
        pod = allocation(mirror)
        if not pod.uid:
            return
        if pod.started is not None and pod.finished is None:
            pod = dataclasses.replace(pod, finished=now)
        self._gone[pod.uid] = (pod, now + self._retention)

    def pods(self, now: float) -> list[PodAllocation]:
        for uid in [uid for uid, (_, until) in self._gone.items() if until < now]:
            del self._gone[uid]
        live, seen = {}, {}
        for mirror in self._mirrors():
            meta = mirror["metadata"]
            known = self._seen.get(meta.get("uid", ""))
            # Read again only when the mirror changed: a scrape of thousands of pods stays cheap.
            pod = known[1] if known and known[0] == meta.get("resourceVersion") else allocation(mirror)
            seen[meta.get("uid", "")] = (meta.get("resourceVersion"), pod)
            if pod.uid:
                live[pod.uid] = pod
        self._seen = seen
        # A UID both gone and listed again (a relist's deletion before a re-create): the listed mirror counts.
        return [*live.values(), *(pod for uid, (pod, _) in self._gone.items() if uid not in live)]

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[CounterMetricFamily]:
        now = self._clock()
        gpu, cpu, memory = families = self._families()
        for pod in self.pods(now):
            seconds = Decimal(repr(pod.running_seconds(now)))
            labels = list(pod.labels())
            gpu.add_metric(labels, float(pod.gpus * seconds))
            cpu.add_metric(labels, float(pod.cpu * seconds))
            memory.add_metric(labels, float(pod.memory * seconds))
        return iter(families)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        why = (" allocated to the pod while its mirror ran on the provider (from the mirror's own start and finish "
               "times: the same value after a runtime restart or failover)")
        return (
            CounterMetricFamily("k8sgpu_pod_gpu_seconds", "GPU-seconds (MIG slices count one each)" + why,
                                labels=LABELS),
            CounterMetricFamily("k8sgpu_pod_cpu_core_seconds", "CPU core-seconds" + why, labels=LABELS),
            CounterMetricFamily("k8sgpu_pod_memory_byte_seconds", "Memory byte-seconds" + why, labels=LABELS),
        )
