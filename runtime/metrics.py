"""The runtime's Prometheus metrics: one registry per runtime (no process-global state), served on the health
port's ``/metrics``. Parts register their collectors into ``Metrics.registry``; names follow client-go's and
controller-runtime's (``workqueue_*``, ``rest_client_*``, ``leader_election_master_status``) where the meaning is
theirs, ``k8sgpu_*`` otherwise.

Labels are bounded: a queue's name, a cluster (local, provider), an HTTP verb and status code, a pod phase, an
action's kind. Never a pod's name, a URL path or an error's text.
Parts built without a `Metrics` (unit tests) get families that belong to no registry: they count, nobody reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from . import __version__

# client-go's buckets: workqueue latencies from 1 µs to 10 s (ten powers of ten), REST latencies 5 ms to 60 s.
WORKQUEUE_BUCKETS = tuple(10.0 ** exponent for exponent in range(-8, 2))
REST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A mirror's way to Running: scheduling on the provider, an image pull, container start; kwok takes a second.
RUNNING_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


class WorkQueueMetrics:
    """client-go's workqueue metrics (k8s.io/client-go/util/workqueue, as controller-runtime registers them),
    one series per queue ``name``."""

    def __init__(self, registry: CollectorRegistry | None):
        self._queues: dict[str, QueueMetrics] = {}
        self.adds = Counter("workqueue_adds", "Total number of adds handled by workqueue.", ["name"],
                            registry=registry)
        self.retries = Counter("workqueue_retries", "Total number of retries handled by workqueue.", ["name"],
                               registry=registry)
        self.queue_duration = Histogram(
            "workqueue_queue_duration_seconds", "How long in seconds an item stays in workqueue before being "
            "requested.", ["name"], buckets=WORKQUEUE_BUCKETS, registry=registry)
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds", "How long in seconds processing an item from workqueue takes.",
            ["name"], buckets=WORKQUEUE_BUCKETS, registry=registry)
        if registry is not None:
            registry.register(_QueueGauges(self._queues))

    def queue(self, name: str) -> QueueMetrics:
        if name not in self._queues:
            self._queues[name] = QueueMetrics(self, name)
        return self._queues[name]


class QueueMetrics:
    """One queue's series and its bookkeeping (client-go's ``defaultQueueMetrics``): when each waiting key was
    added, when each key in work was taken. ``depth`` is read at scrape time."""

    def __init__(self, families: WorkQueueMetrics, name: str, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.depth: Callable[[], int] = lambda: 0
        self._adds = families.adds.labels(name)
        self._retries = families.retries.labels(name)
        self._queue_duration = families.queue_duration.labels(name)
        self._work_duration = families.work_duration.labels(name)
        self._clock = clock
        self._added: dict[str, float] = {}
        self._processing: dict[str, float] = {}

    def added(self, key: str) -> None:
        self._adds.inc()
        self._added.setdefault(key, self._clock())

    def started(self, key: str) -> None:
        now = self._clock()
        added = self._added.pop(key, None)
        if added is not None:
            self._queue_duration.observe(now - added)
        self._processing[key] = now

    def finished(self, key: str) -> None:
        started = self._processing.pop(key, None)
        if started is not None:
            self._work_duration.observe(self._clock() - started)

    def retried(self) -> None:
        self._retries.inc()

    def unfinished(self) -> tuple[float, float]:
        """Seconds of work in progress, summed and longest (client-go's unfinished and longest-running)."""
        now = self._clock()
        spans = [now - started for started in self._processing.values()]
        return sum(spans), max(spans, default=0.0)


class _QueueGauges(Collector):
    """The gauges of every queue, computed when scraped (nothing on the queue's hot path)."""

    def __init__(self, queues: dict[str, QueueMetrics]):
        self._queues = queues

    def describe(self):
        return self._families()

    def collect(self):
        return self._families(self._queues.values())

    def _families(self, queues: Iterable[QueueMetrics] = ()) -> list[GaugeMetricFamily]:
        depth = GaugeMetricFamily("workqueue_depth", "Current depth of workqueue.", labels=["name"])
        unfinished = GaugeMetricFamily(
            "workqueue_unfinished_work_seconds", "How many seconds of work has been done that is in progress and "
            "hasn't been observed by work_duration. Large values indicate stuck threads.", labels=["name"])
        longest = GaugeMetricFamily(
            "workqueue_longest_running_processor_seconds", "How many seconds has the longest running processor for "
            "workqueue been running.", labels=["name"])
        for queue in queues:
            depth.add_metric([queue.name], queue.depth())
            total, most = queue.unfinished()
            unfinished.add_metric([queue.name], total)
            longest.add_metric([queue.name], most)
        return [depth, unfinished, longest]


class RestClientMetrics:
    """client-go's rest_client metrics of every API request, by ``cluster`` (local, provider) instead of client-go's
    ``host``: a cluster's address says less than which of the two it is, and changes with the endpoint."""

    def __init__(self, registry: CollectorRegistry | None):
        self.requests = Counter(
            "rest_client_requests", "Number of HTTP requests, partitioned by cluster (local, provider), verb and "
            "status code (<error>: no response).", ["cluster", "verb", "code"], registry=registry)
        self.duration = Histogram(
            "rest_client_request_duration_seconds", "Request latency in seconds until the response was read "
            "(for a watch, a log stream or a WebSocket: until its status came), by cluster and verb.",
            ["cluster", "verb"], buckets=REST_BUCKETS, registry=registry)

    def observe(self, cluster: str, verb: str, code: int | str, seconds: float) -> None:
        self.requests.labels(cluster, verb, str(code)).inc()
        self.duration.labels(cluster, verb).observe(seconds)


class PodMetrics:
    """What the pod controller measures."""

    def __init__(self, registry: CollectorRegistry | None):
        self.sync_duration = Histogram(
            "k8sgpu_pod_sync_duration_seconds", "Duration in seconds of one sync of a pod (decide and carry out), "
            "by the action decided (Create, PatchStatus, DeleteMirror, Wait, ...).", ["action"],
            buckets=SYNC_BUCKETS, registry=registry)
        self.mirror_running = Histogram(
            "k8sgpu_mirror_running_duration_seconds", "Seconds from the create of a pod's mirror on the provider to "
            "the mirror seen Running (or Succeeded, when it ended before Running was seen), for mirrors this "
            "process created.", buckets=RUNNING_BUCKETS, registry=registry)
        self._registry = registry

    def count_pods(self, pods: Callable[[], Iterable[dict]]) -> None:
        """``k8sgpu_node_pods{phase}``, counted from ``pods()`` (the node's pod cache) when scraped."""
        if self._registry is not None:
            self._registry.register(_PodPhases(pods))


class _PodPhases(Collector):
    def __init__(self, pods: Callable[[], Iterable[dict]]):
        self._pods = pods

    def describe(self):
        return [self._family()]

    def collect(self):
        counts = dict.fromkeys(PHASES, 0)
        for pod in self._pods():
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            counts[phase if phase in counts else "Unknown"] += 1
        family = self._family()
        for phase, count in counts.items():
            family.add_metric([phase], count)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("k8sgpu_node_pods", "Pods bound to the node in the local cluster, by phase.",
                                 labels=["phase"])


class Metrics:
    """The runtime's registry, and the families each part records into (given to it at construction)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, node_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Info("k8sgpu_build", "The runtime's version and the node it serves (value 1).",
                               registry=self.registry)
        self.build_info.info({"version": __version__, "node": node_name})
        self.workqueue = WorkQueueMetrics(self.registry)
        self.rest_client = RestClientMetrics(self.registry)
        self.pods = PodMetrics(self.registry)
        self.provider_reachable = Gauge(
            "k8sgpu_provider_reachable", "Whether the GPU provider's API answers (1) or not (0), as the node's "
            "ProviderReachable condition says.", registry=self.registry)
        self.provider_reachable.set(1)
        self.leader = Gauge(
            "leader_election_master_status", "Gauge of if the reporting system is master of the relevant lease, 0 "
            "indicates backup, 1 indicates master. 'name' is the string used to identify the lease.", ["name"],
            registry=self.registry)
        self.certificate_expiration = Gauge(
            "k8sgpu_certificate_expiration_seconds", "When a certificate of the node expires, in seconds since "
            "1970-01-01 UTC: certificate=client (its identity in the local cluster, a client certificate), "
            "serving (the kubelet API's). Absent while there is none.", ["certificate"], registry=self.registry)

    def certificate_expires(self, certificate: str, pem: bytes) -> None:
        """Record the expiry of ``pem`` as the node's ``certificate`` (client, serving)."""
        expires = x509.load_pem_x509_certificate(pem).not_valid_after_utc
        self.certificate_expiration.labels(certificate).set(expires.timestamp())

    def exposition(self) -> bytes:
        """The text exposition format of every registered metric."""
        return generate_latest(self.registry)
