"""Pods bound to the node → the provider; the provider's status → the local pods.

One work queue keyed by `namespace/name`. Each sync compares three things —
the local pod, the provider's mirror, and the catalog — and takes one step.
State lives in the two clusters; after a restart the first sync of every key
finds where things stand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
from collections.abc import Callable

from .. import errors, tasks
from ..admission import Resources, admit, pod_resources
from ..catalog import CatalogError, GPUClass
from ..kube import Kube
from ..provider import Capacity, PodProvider, RemoteEvent, RemotePod
from ..reflector import DONE, RETRY, Reflector, Result, WorkQueue, key_of
from ..supervisor import Supervisor
from ..translate import referenced_objects, status_patch

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
REFUSED_CONDITION = "k8sgpu.io/Admitted"
# The longest a pod waits between two tries of its create, once the provider keeps refusing it (a full quota):
# raising the quota starts it within a minute, and a pod refused for days costs the provider one create a minute.
MAX_RETRY_DELAY = 60.0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodController:
    def __init__(self, kube: Kube, provider: PodProvider, node_name: str, *, workers: int = 16,
                 on_node_change: Callable[[], None] = lambda: None,
                 on_capacity: Callable[[Capacity], None] = lambda c: None,
                 on_reachability: Callable[[bool, str], None] = lambda ok, why: None,
                 on_service: Callable[[str, str, list[dict]], None] = lambda ns, name, ingress: None,
                 supervisor: Supervisor | None = None):
        """The callbacks tell the node (capacity, reachability, pods changed) and the service controller
        (a published address) what the provider reports. Its informers and workers run under ``supervisor``
        (the node's; absent, one of its own)."""
        self.kube, self.provider, self.node_name = kube, provider, node_name
        self.on_node_change = on_node_change
        self._on_capacity, self._on_reachability, self._on_service = on_capacity, on_reachability, on_service
        self.pods = Reflector(kube, "Pod", None, field_selector=f"spec.nodeName={node_name}",
                              on_event=self._on_local_pod)
        self.runtime_classes = Reflector(kube, "RuntimeClass", None, on_event=self._on_runtime_class)
        self.queue = WorkQueue(self.sync, workers=workers, name="pods", max_delay=MAX_RETRY_DELAY)
        self.catalog: dict[str, GPUClass | CatalogError] = {}
        self._remote: dict[str, RemotePod] = {}
        self._reported: dict[str, dict[str, str]] = {}  # pod key → reason → the last event recorded for it
        self._objects = ObjectReflection(kube, provider, self.queue)
        self.provider_reachable = True
        self._own_supervisor = supervisor is None
        self.supervisor = supervisor or Supervisor()
        self._parts = ("local-RuntimeClass", "local-Pod", "pod-workers")
        self._resources: dict[str, Resources | None] = {}  # pod UID → what it takes (specs are immutable)
        self._event_slots = asyncio.Semaphore(8)  # copies of provider events never crowd out pod syncs

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        for reflector in (self.runtime_classes, self.pods):
            self.supervisor.start(f"local-{reflector.kind}", reflector.run)
        await self.runtime_classes.synced.wait()
        await self.pods.synced.wait()
        await self.provider.start(self)
        for remote in self.provider.pods():
            self._remote[f"{remote.namespace}/{remote.name}"] = remote
        # Who uses which ConfigMap or Secret, from the local pods that run or may run here.
        self._objects.resync([p for p in self.pods.store.values()
                              if (p.get("status") or {}).get("phase") not in TERMINAL and self._admitted(p)],
                             set(self.provider.object_users()))
        # The start-up sweep: every local pod and every mirror gets one sync.
        for key in set(self.pods.store) | set(self._remote):
            self.queue.add(key)
        self.supervisor.start("pod-workers", self.queue.run)

    def problems(self) -> dict[str, str]:
        """Its long-running parts that have ended (the provider's, the object watches; its informers and workers
        when it has a supervisor of its own, else the node's supervisor reports them): name → how."""
        own = self.supervisor.problems() if self._own_supervisor else {}
        return {**own, **self.provider.problems(), **self._objects.problems()}

    async def stop(self) -> None:
        await self.supervisor.stop(*self._parts)
        await self._objects.stop()
        self.queue.close()
        await self.provider.stop()

    # -- events from the local cluster ---------------------------------------------------

    def _on_local_pod(self, kind: str, obj: dict) -> None:
        self.queue.add(key_of(obj))
        self.on_node_change()

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
            if pod["spec"].get("runtimeClassName") == name:
                self._resources.pop(pod["metadata"]["uid"], None)
                self.queue.add(key)
        self.on_node_change()

    # -- ProviderEvents -----------------------------------------------------------------------

    def pod_changed(self, pod: RemotePod) -> None:
        key = f"{pod.namespace}/{pod.name}"
        self._remote[key] = pod
        self.queue.add(key)

    def pod_gone(self, namespace: str, name: str, uid: str) -> None:
        key = f"{namespace}/{name}"
        current = self._remote.get(key)
        if current is not None and current.uid == uid:
            del self._remote[key]
        self.queue.add(key)

    def pod_event(self, event: RemoteEvent) -> None:
        asyncio.get_running_loop().create_task(self._copy_event(event))

    def service_changed(self, namespace: str, name: str, ingress: list[dict]) -> None:
        self._on_service(namespace, name, ingress)

    def capacity_changed(self, capacity: Capacity) -> None:
        self._on_capacity(capacity)

    def reachability_changed(self, reachable: bool, why: str) -> None:
        self.provider_reachable = reachable
        self._on_reachability(reachable, why)
        if reachable:
            for key in set(self.pods.store) | set(self._remote):
                self.queue.add(key)

    # -- what the node reports ------------------------------------------------------------------

    def used(self) -> tuple[Resources, int]:
        """What the node's admitted, unfinished pods take, and how many they are."""
        total, count = Resources(), 0
        live = set()
        for pod in self.pods.store.values():
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                continue
            uid = pod["metadata"]["uid"]
            live.add(uid)
            if uid not in self._resources:
                self._resources[uid] = self._takes(pod)
            taken = self._resources[uid]
            if taken is not None:
                total = total + taken
                count += 1
        if len(self._resources) > len(live):
            self._resources = {uid: r for uid, r in self._resources.items() if uid in live}
        return total, count

    def _admitted(self, pod: dict) -> bool:
        """Whether the pod runs or may run here: its mirror exists, or admission accepts it under its class."""
        remote = self._remote.get(key_of(pod))
        if remote is not None and remote.uid == pod["metadata"]["uid"]:
            return True
        offer = self.catalog.get(pod["spec"].get("runtimeClassName") or "")
        return isinstance(offer, GPUClass) and admit(pod, offer) is None

    def _takes(self, pod: dict) -> Resources | None:
        """What the pod takes from the node; None for a pod admission refuses (it never runs) or whose
        resources cannot be computed."""
        offer = self.catalog.get(pod["spec"].get("runtimeClassName") or "")
        if not isinstance(offer, GPUClass) or not self._admitted(pod):
            return None
        try:
            return pod_resources(pod, offer)
        except ValueError:
            return None

    # -- the sync ------------------------------------------------------------------------

    async def sync(self, key: str) -> Result:
        """One step for ``key``. What comes next is the return value, which the queue carries out: its backoff
        grows with each retry and is forgotten only once a sync is done. Nothing here schedules the key."""
        pod = self.pods.store.get(key)
        remote = self._remote.get(key)
        try:
            return await self._sync(key, pod, remote)
        except errors.Unavailable as exc:
            log.info("%s: provider or cluster unavailable, will retry: %s", key, exc)
            return RETRY
        except (errors.Conflict, errors.Unauthorized) as exc:
            log.info("%s: retrying after %s", key, exc)
            return RETRY
        except (errors.Invalid, errors.Forbidden) as exc:
            # Permanent for this state of the pod: retrying cannot help; its next change requeues it.
            log.warning("%s: %s", key, exc)
            return DONE

    async def _sync(self, key: str, pod: dict | None, remote: RemotePod | None) -> Result:
        namespace, name = key.split("/", 1)
        if pod is None:
            # The local pod is gone: its mirror must go too (an orphan after a restart, or a force delete).
            if remote is not None and not remote.deleting and self.provider_reachable:
                log.info("%s: local pod gone; deleting its mirror", key)
                await self.provider.delete_pod(namespace, name, 0)
            if remote is None:
                self._objects.release(key)
                self._reported.pop(key, None)
            return DONE
        meta, status = pod["metadata"], pod.get("status") or {}
        if status.get("phase") in TERMINAL:
            self._objects.release(key)  # a finished pod uses its ConfigMaps and Secrets no more
        if remote is not None and remote.uid != meta["uid"]:
            # A mirror of an earlier pod of the same name: remove it, then carry on.
            if not remote.deleting:
                await self.provider.delete_pod(namespace, name, 0)
            return RETRY
        if meta.get("deletionTimestamp"):
            await self._sync_deleting(key, pod, remote)
            return DONE
        if remote is not None:
            if not remote.deleting:
                await self.provider.update_pod_metadata(pod)
            await self._push_status(pod, remote.status)
            return DONE
        if status.get("phase") in TERMINAL:
            return DONE
        if status.get("startTime") or status.get("phase") == "Running":
            # It ran on the provider and its mirror vanished without our asking.
            if not self.provider_reachable:
                return DONE  # keep the last status until the provider answers again
            await self._fail_lost(pod)
            return DONE
        if not self.provider_reachable:
            return RETRY
        return await self._admit_and_create(key, pod)

    async def _sync_deleting(self, key: str, pod: dict, remote: RemotePod | None) -> None:
        namespace, name = key.split("/", 1)
        if remote is not None:
            if not remote.deleting:
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                log.info("%s: deleting mirror (grace %ss)", key, grace)
                await self.provider.delete_pod(namespace, name, grace)
            return
        if not self.provider_reachable:
            return
        # The mirror is gone: finish the local deletion, as a kubelet does.
        try:
            await self.kube.delete("Pod", namespace, name, grace_seconds=0, uid=pod["metadata"]["uid"])
        except (errors.NotFound, errors.Conflict):
            pass
        self._objects.release(key)

    async def _admit_and_create(self, key: str, pod: dict) -> Result:
        rc_name = pod["spec"].get("runtimeClassName") or ""
        offer = self.catalog.get(rc_name)
        if isinstance(offer, CatalogError):
            await self._refuse(pod, "InvalidRuntimeClass", str(offer))
            return DONE  # the RuntimeClass's next change requeues the pod
        refusal = admit(pod, offer)
        if refusal is not None:
            await self._refuse(pod, refusal.reason, refusal.message)
            return DONE
        assert offer is not None
        resources = pod_resources(pod, offer)
        ready = await self._objects.reflect(key, pod, self._report_object)
        if not ready:
            return DONE  # a mandatory object is missing; its watch requeues the pod when it appears
        log.info("%s: creating mirror on the provider (%s)", key, offer.name)
        try:
            await self.provider.create_pod(pod, offer, resources)
        except errors.Forbidden as exc:
            # A full quota, a policy of the provider's: what forbids the pod may change on the provider's side,
            # and nothing tells us when. So the create is retried with the key's backoff, to once a minute.
            await self._refuse(pod, "ProviderRefused", f"the GPU provider refused the pod: {exc.message or exc}",
                               once_per_reason=True)
            return RETRY
        except errors.Invalid as exc:
            # The provider's validation of the mirror built from this pod's spec, which is immutable: the same
            # create gets the same answer, so it is not retried; a change of the pod or of its class requeues it.
            await self._refuse(pod, "ProviderInvalid", "the GPU provider rejected the pod as invalid: "
                                                       f"{exc.message or exc}", once_per_reason=True)
            return DONE
        self._reported.pop(key, None)
        return DONE

    async def _report_object(self, pod: dict, kind: str, name: str, optional: bool) -> None:
        reason = f"{'Optional' if optional else 'Mandatory'}{kind}NotFound"
        message = f"{kind} {name} not found" + ("; the pod runs without it" if optional else
                                                "; the pod waits for it")
        await self._event_once(pod, reason, message, "Warning")
        if not optional:
            await self._set_pending(pod, reason, message)

    async def _refuse(self, pod: dict, reason: str, message: str, once_per_reason: bool = False) -> None:
        """The pod waits, saying why, with one Warning Event per reason and message; with ``once_per_reason``
        one per reason (what a provider says changes with its quota's usage, retry after retry)."""
        log.info("%s/%s refused: %s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], reason, message)
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

    async def _fail_lost(self, pod: dict) -> None:
        message = "the pod's copy on the GPU provider disappeared without being deleted here"
        await self._event_once(pod, "ProviderPodLost", message, "Warning")
        status = dict(pod.get("status") or {})
        containers = []
        for cs in status.get("containerStatuses") or []:
            cs = dict(cs)
            if "terminated" not in (cs.get("state") or {}):
                cs["state"] = {"terminated": {"exitCode": 137, "reason": "ProviderPodLost", "finishedAt": _now()}}
            cs["ready"] = False
            containers.append(cs)
        patch = {"phase": "Failed", "reason": "ProviderPodLost", "message": message}
        if containers:
            patch["containerStatuses"] = containers
        await self._patch_status(pod, patch)

    async def _push_status(self, pod: dict, remote_status: dict) -> None:
        local = pod.get("status") or {}
        if _only_scheduled(remote_status) and local.get("phase", "Pending") == "Pending" and not local.get("reason"):
            # The mirror was scheduled and nothing more: the local pod says as much already. Skipping this
            # write halves the status patches each pod costs the user's API server.
            return
        patch = status_patch(local, remote_status, pod["spec"].get("readinessGates") or [], _now(),
                             dropped_conditions=(REFUSED_CONDITION,))
        if patch is not None:
            await self._patch_status(pod, patch)

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
                log.debug("updating event %s failed: %s", name, exc)
        except errors.KubeError as exc:
            log.warning("recording event %s on %s/%s failed: %s", reason, meta["namespace"], meta["name"], exc)

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

    async def _copy_event(self, event: RemoteEvent) -> None:
        """One local copy per provider Event, named after that Event's UID, with its times. Whether a copy is
        news is decided by the local cluster, not this process's memory (a re-list after a watch restart or a
        runtime restart replays every provider Event): an existing copy with the same count is left as it is;
        a different count (the provider's series went on) is written with the provider's last time."""
        pod = self.pods.store.get(f"{event.namespace}/{event.name}")
        if pod is None or pod["metadata"]["uid"] != event.uid:
            return
        meta = pod["metadata"]
        seed = f"provider:{event.event_uid}" if event.event_uid else \
            f"provider:{event.uid}:{event.reason}:{event.message}"
        name = _event_name(meta, seed)
        first = event.first_timestamp or _now()
        last = event.last_timestamp or first
        async with self._event_slots:
            try:
                await self.kube.create("Event", meta["namespace"], self._event(
                    meta, name, event.reason, event.message, event.type, event.count, first, last))
                return
            except errors.AlreadyExists:
                pass
            except errors.KubeError as exc:
                log.warning("copying event %s on %s/%s failed: %s", event.reason, meta["namespace"], meta["name"],
                            exc)
                return
            try:
                # A node may patch Events but not read them: a JSON patch that only tests the count is a no-op
                # when the copy holds this count already, and refused (422) when it does not.
                await self.kube.patch("Event", meta["namespace"], name,
                                      [{"op": "test", "path": "/count", "value": event.count}], patch_type="json")
                return
            except errors.Invalid:
                pass
            except errors.KubeError as exc:
                log.debug("checking event %s failed: %s", name, exc)
                return
            try:
                await self.kube.patch("Event", meta["namespace"], name, {"count": event.count, "lastTimestamp": last})
            except errors.KubeError as exc:
                log.debug("updating event %s failed: %s", name, exc)


def _event_name(meta: dict, seed: str) -> str:
    return f"{meta['name']}.{hashlib.sha256(seed.encode()).hexdigest()[:16]}"


def _only_scheduled(status: dict) -> bool:
    """A Pending status that says no more than "scheduled": no containers yet, nothing False, no reason."""
    return (status.get("phase") == "Pending" and not status.get("containerStatuses")
            and not status.get("initContainerStatuses") and not status.get("reason")
            and all(c.get("status") == "True" for c in status.get("conditions") or []))


Ref = tuple[str, str, str]  # (kind, namespace, name) of a ConfigMap or Secret


class _RefLock:
    """A lock for one object, kept while anyone holds or awaits it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.holders = 0


class ObjectReflection:
    """ConfigMaps and Secrets used by the node's pods, mirrored to the provider and kept current.

    Each object in use has a watch of its own (field selector on its name), which is what the
    Node authorizer lets a node do for objects its pods reference. A change is copied; an object
    appearing requeues the pods waiting for it; when no pod uses it any more its mirror is deleted.
    Writing and deleting one object's copy is serialised per object, and a deletion re-checks under
    that lock that nobody claimed the object meanwhile. The copy's used-by annotation lists its users.
    """

    def __init__(self, kube: Kube, provider: PodProvider, queue: WorkQueue):
        self.kube, self.provider, self.queue = kube, provider, queue
        self._users: dict[Ref, set[str]] = {}  # (kind, ns, name) → pod keys
        self._uids: dict[str, str] = {}  # pod key → uid
        self._watches: dict[Ref, tuple[Reflector, asyncio.Task]] = {}
        self._mirrored: set[Ref] = set()
        self._locks: dict[Ref, _RefLock] = {}
        self._pending: set[asyncio.Task] = set()  # copies being brought up to date or deleted, and ended watches

    def resync(self, pods: list[dict], mirrored: set[Ref]) -> None:
        """At start: the users of every object, from the live local pods themselves (nothing of an earlier
        process is remembered); a watch resumed for each object in use, whose first list brings its copy up
        to date; copies that no live pod uses deleted."""
        self._mirrored = set(mirrored)
        for pod in pods:
            key, namespace = key_of(pod), pod["metadata"]["namespace"]
            self._uids[key] = pod["metadata"]["uid"]
            for kind, name, _ in referenced_objects(pod):
                self._users.setdefault((kind, namespace, name), set()).add(key)
        for ref in self._users:
            self._start_watch(ref)
        for ref in self._mirrored - set(self._users):
            self._settle_later(ref)

    async def reflect(self, key: str, pod: dict, report) -> bool:
        """Mirror what the pod uses; False while a mandatory object is missing."""
        namespace = pod["metadata"]["namespace"]
        self._uids[key] = pod["metadata"]["uid"]
        ready = True
        for kind, name, optional in referenced_objects(pod):
            ref = (kind, namespace, name)
            # Claimed before anything is awaited: a deletion of the copy that has not yet taken the lock
            # sees this user and leaves the copy.
            self._users.setdefault(ref, set()).add(key)
            reflector = await self._watch(ref)
            async with self._serialised(ref):
                obj = reflector.store.get(f"{namespace}/{name}")
                if obj is not None:
                    await self.provider.put_object(obj, self._user_uids(ref))
                    self._mirrored.add(ref)
            if obj is None:
                await report(pod, kind, name, optional)
                ready = ready and optional
        return ready

    def _user_uids(self, ref: Ref) -> list[str]:
        return sorted(self._uids[k] for k in self._users.get(ref, ()) if k in self._uids)

    def _start_watch(self, ref: Ref) -> Reflector:
        if ref not in self._watches:
            kind, namespace, name = ref
            reflector = Reflector(self.kube, kind, namespace, field_selector=f"metadata.name={name}",
                                  on_event=lambda event, obj, r=ref: self._changed(r, event, obj))
            task = tasks.spawn(reflector.run(), name=f"watch-{kind}-{namespace}-{name}")
            self._watches[ref] = (reflector, task)
        return self._watches[ref][0]

    async def _watch(self, ref: Ref) -> Reflector:
        reflector = self._start_watch(ref)
        try:
            await asyncio.wait_for(reflector.synced.wait(), timeout=30)
        except TimeoutError:
            raise errors.Unavailable(f"listing {ref[0]} {ref[1]}/{ref[2]} timed out") from None
        return reflector

    def _changed(self, ref: Ref, event: str, obj: dict) -> None:
        if event == "DELETED":
            return  # a running pod keeps the last value, as on a kubelet
        if ref in self._mirrored:
            self._settle_later(ref)
        for key in self._users.get(ref, ()):
            self.queue.add(key)

    def release(self, key: str) -> None:
        """The pod is gone (or finished): objects only it used lose their copy and watch; the copies of the
        others stop listing it."""
        if self._uids.pop(key, None) is None:
            return
        for ref in [r for r, users in self._users.items() if key in users]:
            users = self._users[ref]
            users.discard(key)
            if not users:
                del self._users[ref]
            self._settle_later(ref)

    def _settle_later(self, ref: Ref, delay: float = 0.0) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(ref, delay),
                                                      name=f"copy-{ref[0]}-{ref[1]}-{ref[2]}")
        self._own(task)

    def _own(self, task: asyncio.Task) -> None:
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, ref: Ref, delay: float = 0.0) -> None:
        """Bring the copy of ``ref`` to what its users need now: deleted when it has none, else the object's
        current content with their UIDs. A write that fails (the provider down) is tried again with backoff:
        nothing else would bring that copy up to date before the object's next change."""
        await asyncio.sleep(delay)
        try:
            async with self._serialised(ref):
                if not self._users.get(ref):
                    await self._delete_mirror(ref)
                    return
                watch = self._watches.get(ref)
                obj = watch[0].store.get(f"{ref[1]}/{ref[2]}") if watch else None
                if ref in self._mirrored and obj is not None:
                    await self.provider.put_object(obj, self._user_uids(ref))
        except errors.KubeError as exc:
            retry = min(max(delay * 2, 1.0), MAX_RETRY_DELAY)
            log.warning("bringing the copy of %s %s/%s up to date failed, retrying in %.0fs: %s", *ref, retry, exc)
            self._settle_later(ref, retry)

    @contextlib.asynccontextmanager
    async def _serialised(self, ref: Ref):
        entry = self._locks.setdefault(ref, _RefLock())
        entry.holders += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.holders -= 1
            if not entry.holders:
                del self._locks[ref]

    async def _delete_mirror(self, ref: Ref) -> None:
        """Under the object's lock, with no user left."""
        watch = self._watches.pop(ref, None)
        if watch is not None:
            watch[1].cancel()
            self._own(watch[1])
        if ref in self._mirrored:
            await self.provider.delete_object(*ref)
            self._mirrored.discard(ref)

    def problems(self) -> dict[str, str]:
        """Watches of objects still in use that have ended (a released object's watch is cancelled on purpose
        and no longer listed)."""
        return tasks.problems(task for _, task in self._watches.values())

    async def stop(self) -> None:
        owned = [task for _, task in self._watches.values()] + list(self._pending)
        for task in owned:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)
