"""Pods bound to the node → the provider; the provider's status → the local pods.

One work queue keyed by `namespace/name`. A sync reads the caches (the local pod, the provider's mirrors of that
name, the catalog, the state of the pod's ConfigMap and Secret copies), asks `decide` for the one next step, and
carries it out with `execute`, which maps every outcome once. State lives in the two clusters; after a restart the
first sync of every key finds where things stand. The copies of ConfigMaps and Secrets are `ObjectController`'s:
a sync only tells it which objects the pod uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import logging
import time
from collections.abc import Callable

from .. import errors
from ..accounting import NodeUsage, PodUse
from ..admission import Resources, pod_resources
from ..catalog import CatalogError, GPUClass
from ..kube import Kube
from ..logs import about_pod
from ..metrics import Metrics, PodMetrics
from ..placement import pod_requests
from ..provider import Capacity, PodProvider, RemoteEvent, RemotePod
from ..reflector import DONE, RETRY, Reflector, Result, WorkQueue, key_of, requeue_after
from ..supervisor import Supervisor
from .decide import (
    REFUSED_CONDITION,
    TERMINAL,
    Action,
    Create,
    DeleteMirror,
    FailLost,
    FinishDeletion,
    Forget,
    PatchStatus,
    Wait,
    admitted,
    claimed_objects,
    class_name,
    decide,
)
from .objects import ObjectController, ref_key

log = logging.getLogger(__name__)

# The longest a pod waits between two tries of its create, once the provider keeps refusing it (a full quota):
# raising the quota starts it within a minute, and a pod refused for days costs the provider one create a minute.
MAX_RETRY_DELAY = 60.0
CLAIMS_RESYNC_SECONDS = 30.0  # how often the claims bookkeeping is checked against the pods and mirrors


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Refused(Exception):
    """The provider refused a mirror's create: shown on the local pod; retried with backoff when ``retry``."""

    def __init__(self, reason: str, message: str, retry: bool):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message, self.retry = reason, message, retry


class PodController:
    def __init__(self, kube: Kube, provider: PodProvider, node_name: str, *, workers: int = 16,
                 on_node_change: Callable[[], None] = lambda: None,
                 on_capacity: Callable[[Capacity], None] = lambda c: None,
                 on_reachability: Callable[[bool, str], None] = lambda ok, why: None,
                 on_service: Callable[[str, str, list[dict]], None] = lambda ns, name, ingress: None,
                 supervisor: Supervisor | None = None, default_runtime_class: str = "",
                 metrics: Metrics | None = None):
        """The callbacks tell the node (capacity, reachability, pods changed) and the service controller
        (a published address) what the provider reports. Its informers, workers and the object controller's
        parts run under ``supervisor`` (the node's; absent, one of its own). Its queues, syncs and pods are
        measured in ``metrics`` (absent: nobody reads them)."""
        self.kube, self.provider, self.node_name = kube, provider, node_name
        self.default_runtime_class = default_runtime_class  # the offering of pods that name none
        self.on_node_change = on_node_change
        self._on_capacity, self._on_reachability, self._on_service = on_capacity, on_reachability, on_service
        self.pods = Reflector(kube, "Pod", None, field_selector=f"spec.nodeName={node_name}",
                              on_event=self._on_local_pod)
        self.runtime_classes = Reflector(kube, "RuntimeClass", None, on_event=self._on_runtime_class)
        queues = metrics.workqueue if metrics is not None else None
        self.metrics: PodMetrics = metrics.pods if metrics is not None else PodMetrics(None)
        self.metrics.count_pods(lambda: self.pods.store.values())
        self.queue = WorkQueue(self.sync, workers=workers, name="pods", max_delay=MAX_RETRY_DELAY, metrics=queues)
        self.catalog: dict[str, GPUClass | CatalogError] = {}
        self.mirrors: dict[str, dict[str, RemotePod]] = {}  # pod key → the provider's name of a mirror → mirror
        self._reported: dict[str, dict[str, str]] = {}  # pod key → reason → the last event recorded for it
        self.provider_reachable = True
        self._own_supervisor = supervisor is None
        self.supervisor = supervisor or Supervisor()
        self.objects = ObjectController(kube, provider, self.supervisor, on_copy=self._requeue,
                                        max_delay=MAX_RETRY_DELAY, queue_metrics=queues)
        # Provider Events to copy, by the seed of their local copy: the newest of each, one copy at a time each.
        self._provider_events: dict[str, RemoteEvent] = {}
        self.event_copies = WorkQueue(self._copy_event, workers=8, name="provider-events", metrics=queues)
        self._parts = ("local-RuntimeClass", "local-Pod", "pod-workers", "provider-event-copies")
        # Pod UID → what it takes and is charged (specs are immutable), before and once it started or is deleting.
        self._resources: dict[str, tuple[PodUse, PodUse]] = {}
        self._creating: dict[str, float] = {}  # pod UID → when its mirror's create was sent, until seen Running

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        for reflector in (self.runtime_classes, self.pods):
            self.supervisor.start(f"local-{reflector.kind}", reflector.run)
        await self.runtime_classes.synced.wait()
        await self.pods.synced.wait()
        self.supervisor.start("provider-event-copies", self.event_copies.run)
        await self.provider.start(self)
        for remote in self.provider.pods():
            self._add_mirror(remote)
        # Who uses which ConfigMap or Secret, from the local pods themselves (nothing of an earlier process is
        # remembered).
        claims = {}
        for key, pod in self.pods.store.items():
            refs = claimed_objects(pod, self._mirrors_of(key), self.catalog, self.default_runtime_class)
            if refs:
                claims[key] = (pod["metadata"]["uid"], refs)
        await self.objects.start(claims, self.provider.object_users())
        # The start-up sweep: every local pod and every mirror gets one sync.
        for key in set(self.pods.store) | set(self.mirrors):
            self.queue.add(key)
        self.supervisor.start("pod-workers", self.queue.run)
        self.supervisor.start("pod-claims-resync", self.resync_claims)

    async def resync_claims(self, period: float = CLAIMS_RESYNC_SECONDS) -> None:
        """Level-triggered repair of who holds which ConfigMap or Secret copy: a pod key whose claims differ from
        what its pod and mirrors say now (a deletion or finish whose event was lost around an etcd restart or a
        compaction) is synced again. Pure bookkeeping, no request: cheap at thousands of pods."""
        while True:
            await asyncio.sleep(period)
            for key in self.stale_claims():
                self.queue.add(key)

    def stale_claims(self) -> list[str]:
        """Pod keys whose held objects are not what their pod and mirrors claim now."""
        stale = []
        for key, (uid, refs) in self.objects.claims().items():
            pod = self.pods.store.get(key)
            claimed = claimed_objects(pod, self._mirrors_of(key), self.catalog, self.default_runtime_class)
            if claimed is None:
                continue  # gone, its mirror still terminating: it keeps what it holds
            if claimed != refs or (pod is not None and pod["metadata"]["uid"] != uid):
                stale.append(key)
        return stale

    def problems(self) -> dict[str, str]:
        """Its long-running parts that have ended (the provider's; its informers, workers and object watches when
        it has a supervisor of its own, else the node's supervisor reports them): name → how."""
        own = self.supervisor.problems() if self._own_supervisor else {}
        return {**own, **self.provider.problems()}

    async def stop(self) -> None:
        await self.supervisor.stop(*self._parts)
        await self.objects.stop()
        self.queue.close()
        self.event_copies.close()
        await self.provider.stop()

    # -- events from the local cluster ---------------------------------------------------

    def _on_local_pod(self, kind: str, obj: dict) -> None:
        self.queue.add(key_of(obj))
        self.on_node_change()

    def _requeue(self, keys) -> None:
        for key in keys:
            self.queue.add(key)

    def _on_runtime_class(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.catalog.pop(name, None)
        else:
            try:
                self.catalog[name] = GPUClass.from_runtime_class(obj)
            except CatalogError as exc:
                self.catalog[name] = exc
        # Pods waiting on a class are retried when the catalog changes, and what they take is counted again.
        for key, pod in self.pods.store.items():
            if self._class_name(pod) == name:
                self._resources.pop(pod["metadata"]["uid"], None)
                self.queue.add(key)
        self.on_node_change()

    # -- ProviderEvents -----------------------------------------------------------------------

    def _add_mirror(self, pod: RemotePod) -> str:
        key = f"{pod.namespace}/{pod.name}"
        self.mirrors.setdefault(key, {})[pod.mirror_name] = pod
        return key

    def _mirrors_of(self, key: str) -> list[RemotePod]:
        return list(self.mirrors.get(key, {}).values())

    def pod_changed(self, pod: RemotePod) -> None:
        if self._creating and pod.status.get("phase") in ("Running", "Succeeded", "Failed"):
            sent = self._creating.pop(pod.uid, None)
            if sent is not None and pod.status["phase"] != "Failed":
                self.metrics.mirror_running.observe(time.monotonic() - sent)
        self.queue.add(self._add_mirror(pod))

    def pod_gone(self, pod: RemotePod) -> None:
        self._creating.pop(pod.uid, None)
        key = f"{pod.namespace}/{pod.name}"
        mirrors = self.mirrors.get(key)
        if mirrors is not None:
            mirrors.pop(pod.mirror_name, None)
            if not mirrors:
                del self.mirrors[key]
        self.queue.add(key)

    def pod_event(self, event: RemoteEvent) -> None:
        seed = f"provider:{event.event_uid}" if event.event_uid else \
            f"provider:{event.uid}:{event.reason}:{event.message}"
        self._provider_events[seed] = event
        self.event_copies.add(seed)

    def copy_changed(self, kind: str, namespace: str, name: str) -> None:
        self.objects.queue.add(ref_key((kind, namespace, name)))

    def service_changed(self, namespace: str, name: str, ingress: list[dict]) -> None:
        self._on_service(namespace, name, ingress)

    def capacity_changed(self, capacity: Capacity) -> None:
        self._on_capacity(capacity)

    def reachability_changed(self, reachable: bool, why: str) -> None:
        self.provider_reachable = reachable
        self._on_reachability(reachable, why)
        if reachable:
            self.objects.requeue_all()
            for key in set(self.pods.store) | set(self.mirrors):
                self.queue.add(key)

    # -- what the node reports ------------------------------------------------------------------

    def used(self) -> NodeUsage:
        """The node's unfinished pods (what each takes on the provider, what the local scheduler charges it) and
        the catalog."""
        uses = []
        live = set()
        for key, pod in self.pods.store.items():
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                continue
            uid = pod["metadata"]["uid"]
            live.add(uid)
            if uid not in self._resources:
                use = self._use(key, pod)
                self._resources[uid] = (use, dataclasses.replace(use, started_or_deleting=True))
            status = pod.get("status") or {}
            done = bool(pod["metadata"].get("deletionTimestamp") or status.get("startTime")
                        or status.get("phase") == "Running")
            uses.append(self._resources[uid][done])
        if len(self._resources) > len(live):
            self._resources = {uid: r for uid, r in self._resources.items() if uid in live}
        return NodeUsage(tuple(uses), tuple(o for o in self.catalog.values() if isinstance(o, GPUClass)))

    def _use(self, key: str, pod: dict) -> PodUse:
        try:
            charged = pod_requests(pod["spec"])
        except ValueError:
            charged = {}
        offer = self.catalog.get(self._class_name(pod))
        takes = self._takes(key, pod)
        return PodUse(pod["metadata"]["uid"], charged, offer if takes is not None else None, takes)

    def _class_name(self, pod: dict) -> str:
        return class_name(pod, self.default_runtime_class)

    def _takes(self, key: str, pod: dict) -> Resources | None:
        """What the pod takes from the node; None for a pod admission refuses (it never runs) or whose
        resources cannot be computed."""
        offer = self.catalog.get(self._class_name(pod))
        if not isinstance(offer, GPUClass) or not admitted(pod, self._mirrors_of(key), self.catalog,
                                                           self.default_runtime_class):
            return None
        try:
            return pod_resources(pod, offer)
        except ValueError:
            return None

    # -- the sync ------------------------------------------------------------------------

    async def sync(self, key: str) -> Result:
        """One step for ``key``: read the caches, decide, execute. What comes next is the return value, which the
        queue carries out: its backoff grows with each retry and is forgotten only once a sync is done."""
        started = time.monotonic()
        pod = self.pods.store.get(key)
        mirrors = self._mirrors_of(key)
        claimed = claimed_objects(pod, mirrors, self.catalog, self.default_runtime_class)
        if claimed is not None:
            self.objects.claim(key, pod["metadata"]["uid"] if pod is not None else "", claimed)
        action = decide(pod, mirrors, provider_reachable=self.provider_reachable, catalog=self.catalog,
                        copies=self.objects.copies(claimed or ()), now=_now(),
                        default_runtime_class=self.default_runtime_class)
        try:
            return await self.execute(key, pod, action)
        finally:
            self.metrics.sync_duration.labels(type(action).__name__).observe(time.monotonic() - started)

    async def execute(self, key: str, pod: dict | None, action: Action) -> Result:
        """Carry out ``action`` and map its outcome, once for every action: done (the key's backoff forgotten);
        a temporary error (unreachable, conflict, expired credentials) → retry with the key's backoff; a create the
        provider refuses → the reason on the pod and an Event, retried with backoff when the refusal may lift
        (403: quota, policy), not when the same spec gets the same answer (422); any other refusal of a write →
        logged, done (the next change of the pod requeues it)."""
        try:
            return await self._carry_out(key, pod, action)
        except _Refused as refused:
            assert pod is not None
            try:
                await self._refuse(pod, refused.reason, refused.message, once_per_reason=True)
            except errors.KubeError as exc:
                log.info("%s: showing the refusal failed, will retry: %s", key, exc, extra=_about(key, pod))
            return RETRY if refused.retry else DONE
        except errors.KubeError as exc:
            if exc.retry:
                log.info("%s: %s failed, will retry: %s", key, type(action).__name__, exc, extra=_about(key, pod))
                return RETRY
            log.warning("%s: %s failed: %s", key, type(action).__name__, exc, extra=_about(key, pod))
            return DONE

    async def _carry_out(self, key: str, pod: dict | None, action: Action) -> Result:
        namespace, name = key.split("/", 1)
        match action:
            case Wait():
                for note in action.notes:
                    await self._event_once(pod, note.reason, note.message, "Warning")
                if action.show:
                    await self._refuse(pod, action.reason, action.message, once_per_reason=action.once_per_reason)
                else:
                    log.debug("%s: waiting: %s %s", key, action.reason, action.message, extra=_about(key, pod))
                if action.backoff:
                    return RETRY
                return DONE if action.delay is None else requeue_after(action.delay)
            case Create():
                for note in action.notes:
                    await self._event_once(pod, note.reason, note.message, "Warning")
                log.info("%s: creating mirror on the provider (%s)", key, action.offer.name, extra=_about(key, pod))
                sent = time.monotonic()
                try:
                    await self.provider.create_pod(pod, action.offer, action.resources)
                except errors.Forbidden as exc:
                    # A full quota, a policy of the provider's: what forbids the pod may change on the provider's
                    # side, and nothing tells us when.
                    raise _Refused("ProviderRefused", f"the GPU provider refused the pod: {exc.message or exc}",
                                   retry=True) from exc
                except errors.Invalid as exc:
                    # The provider's validation of the mirror built from this pod's spec, which is immutable.
                    raise _Refused("ProviderInvalid", "the GPU provider rejected the pod as invalid: "
                                                      f"{exc.message or exc}", retry=False) from exc
                self._creating[pod["metadata"]["uid"]] = sent  # until the mirror is seen Running, or gone
                self._reported.pop(key, None)
            case DeleteMirror():
                log.info("%s: deleting mirror %s (%s; grace %ss)", key, action.mirror.mirror_name, action.why,
                         action.grace, extra=_about(key, pod, action.mirror.uid))
                await self.provider.delete_pod(namespace, name, action.grace,
                                               mirror_name=action.mirror.mirror_name or None)
            case PatchStatus():
                if action.update_metadata:
                    await self.provider.update_pod_metadata(pod)
                if action.status is not None:
                    await self._patch_status(pod, action.status)
            case FailLost():
                await self._event_once(pod, "ProviderPodLost", action.status["message"], "Warning")
                await self._patch_status(pod, action.status)
            case FinishDeletion():
                try:
                    await self.kube.delete("Pod", namespace, name, grace_seconds=0, uid=pod["metadata"]["uid"])
                except (errors.NotFound, errors.Conflict):
                    pass  # gone already, or replaced by a pod of the same name
            case Forget():
                self._reported.pop(key, None)
        return DONE

    async def _refuse(self, pod: dict, reason: str, message: str, once_per_reason: bool = False) -> None:
        """The pod waits, saying why, with one Warning Event per reason and message; with ``once_per_reason``
        one per reason (what a provider says changes with its quota's usage, retry after retry)."""
        log.info("%s/%s refused: %s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], reason, message,
                 extra=_about_meta(pod["metadata"]))
        await self._event_once(pod, reason, message, "Warning", per_reason=once_per_reason)
        await self._set_pending(pod, reason, message)

    async def _set_pending(self, pod: dict, reason: str, message: str) -> None:
        status = pod.get("status") or {}
        if status.get("reason") == reason and status.get("message") == message:
            return
        now = _now()
        # Merged by type: the conditions other writers own stay as they are.
        conditions = [
            {"type": REFUSED_CONDITION, "status": "False", "reason": reason, "message": message,
             "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": reason, "message": message, "lastTransitionTime": now},
        ]
        await self._patch_status(pod, {"phase": "Pending", "reason": reason, "message": message,
                                       "conditions": conditions})

    async def _patch_status(self, pod: dict, status: dict) -> None:
        """A strategic merge patch, as a kubelet writes status: conditions merge by type, so the ones other
        writers own (PodScheduled, DisruptionTarget, readiness gates') are never overwritten."""
        meta = pod["metadata"]
        try:
            updated = await self.kube.patch("Pod", meta["namespace"], meta["name"], {"status": status},
                                            subresource="status", patch_type="strategic")
        except errors.NotFound:
            return
        # Keep the cache ahead of the watch, so the next sync does not patch the same thing again.
        key = key_of(pod)
        if key in self.pods.store and self.pods.store[key]["metadata"]["uid"] == updated["metadata"]["uid"]:
            self.pods.store[key] = updated
        self.on_node_change()

    # -- events -------------------------------------------------------------------------

    async def _event_once(self, pod: dict, reason: str, message: str, kind: str, per_reason: bool = False) -> None:
        marker = f"{pod['metadata']['uid']}:{reason}" + ("" if per_reason else f":{message}")
        seen = self._reported.setdefault(key_of(pod), {})
        if seen.get(reason) == marker:
            return
        seen[reason] = marker
        await self.emit(pod["metadata"], reason, message, kind, name_seed=marker)

    async def emit(self, meta: dict, reason: str, message: str, kind: str = "Normal", count: int = 1,
                   name_seed: str = "") -> None:
        """An Event on a local pod; the same seed updates one Event instead of creating another."""
        now = _now()
        name = _event_name(meta, name_seed or f"{reason}:{message}")
        try:
            await self.kube.create("Event", meta["namespace"],
                                   self._event(meta, name, reason, message, kind, count, now, now))
        except errors.AlreadyExists:
            try:
                await self.kube.patch("Event", meta["namespace"], name, {"count": count, "lastTimestamp": now})
            except errors.KubeError as exc:
                log.debug("updating event %s failed: %s", name, exc, extra=_about_meta(meta))
        except errors.KubeError as exc:
            log.warning("recording event %s on %s/%s failed: %s", reason, meta["namespace"], meta["name"], exc,
                        extra=_about_meta(meta))

    def _event(self, meta: dict, name: str, reason: str, message: str, kind: str, count: int, first: str,
               last: str) -> dict:
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": meta["namespace"],
                               "name": meta["name"], "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": kind, "count": count,
            "firstTimestamp": first, "lastTimestamp": last,
            "source": {"component": "k8sgpu", "host": self.node_name},
            "reportingComponent": "k8sgpu", "reportingInstance": self.node_name,
        }

    async def _copy_event(self, seed: str) -> Result:
        """One local copy per provider Event, named after that Event's UID, with its times. Whether a copy is
        news is decided by the local cluster, not this process's memory (a re-list after a watch restart or a
        runtime restart replays every provider Event): an existing copy with the same count is left as it is;
        a different count (the provider's series went on) is written with the provider's last time."""
        event = self._provider_events.pop(seed, None)
        if event is None:
            return DONE
        pod = self.pods.store.get(f"{event.namespace}/{event.name}")
        if pod is None or pod["metadata"]["uid"] != event.uid:
            return DONE
        meta = pod["metadata"]
        name = _event_name(meta, seed)
        first = event.first_timestamp or _now()
        last = event.last_timestamp or first
        try:
            await self._write_event_copy(meta, name, event, first, last)
        except errors.KubeError as exc:
            if not exc.retry:
                log.warning("copying event %s on %s/%s failed: %s", event.reason, meta["namespace"], meta["name"],
                            exc, extra=_about_meta(meta))
                return DONE
            log.info("copying event %s on %s/%s failed, will retry: %s", event.reason, meta["namespace"],
                     meta["name"], exc, extra=_about_meta(meta))
            self._provider_events.setdefault(seed, event)  # unless a newer one of the same Event came meanwhile
            return RETRY
        return DONE

    async def _write_event_copy(self, meta: dict, name: str, event: RemoteEvent, first: str, last: str) -> None:
        try:
            await self.kube.create("Event", meta["namespace"], self._event(
                meta, name, event.reason, event.message, event.type, event.count, first, last))
            return
        except errors.AlreadyExists:
            pass
        try:
            # A node may patch Events but not read them: a JSON patch that only tests the count is a no-op
            # when the copy holds this count already, and refused (422) when it does not.
            await self.kube.patch("Event", meta["namespace"], name,
                                  [{"op": "test", "path": "/count", "value": event.count}], patch_type="json")
            return
        except errors.Invalid:
            pass
        await self.kube.patch("Event", meta["namespace"], name, {"count": event.count, "lastTimestamp": last})


def _about(key: str, pod: dict | None, uid: str = "") -> dict:
    """``extra=`` of a log line about the pod ``key`` (its UID: the local pod's, else ``uid``): JSON logs carry it."""
    namespace, _, name = key.partition("/")
    return about_pod(namespace, name, pod["metadata"]["uid"] if pod is not None else uid)


def _about_meta(meta: dict) -> dict:
    return about_pod(meta["namespace"], meta["name"], meta.get("uid", ""))


def _event_name(meta: dict, seed: str) -> str:
    return f"{meta['name']}.{hashlib.sha256(seed.encode()).hexdigest()[:16]}"
