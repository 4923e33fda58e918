"""ConfigMaps and Secrets used by the node's pods → their copies on the provider: a controller of its own.

Its state is which pods use which object (`claim`/`release`, told by the pod controller), rebuilt at start from the
local pods themselves, never from an earlier process's memory. One work queue keyed ``ConfigMap/ns/name`` or
``Secret/ns/name``; the sync of a key is the only place that creates, updates or deletes that object's copy, and
it reads the users as they are when it runs. So creating, updating and releasing one copy are serialised by the
queue: a release cannot delete a copy that a new user claimed meanwhile (that claim queued the key again, and the
sync after it sees the user).

Each object in use has a watch of its own (a field selector on its name), run under the supervisor: the Node
authorizer lets a node read only the ConfigMaps and Secrets its pods reference, so one namespaced informer of all of
them is not allowed to the node's identity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from .. import errors
from ..kube import Kube
from ..metrics import WorkQueueMetrics
from ..provider import PodProvider
from ..reflector import DONE, RETRY, Reflector, Result, WorkQueue
from ..supervisor import Supervisor
from .decide import COPIED, MISSING, PENDING, Copy, Ref

log = logging.getLogger(__name__)

KINDS = ("ConfigMap", "Secret")


def ref_key(ref: Ref) -> str:
    return "/".join(ref)


def parse_ref_key(key: str) -> Ref:
    kind, namespace, name = key.split("/", 2)
    if kind not in KINDS or not namespace or not name:
        raise ValueError(f"object key {key!r} is not ConfigMap/<namespace>/<name> or Secret/<namespace>/<name>")
    return kind, namespace, name


class ObjectController:
    """Keeps one copy on the provider of every ConfigMap and Secret that a live pod of the node uses, listing
    the UIDs of its users, equal to the local object; deletes a copy once nobody uses it. ``on_copy`` is called
    with the pod keys using an object whose copy changed state (created, missing, refused), so that pods waiting
    for it are synced again."""

    def __init__(self, kube: Kube, provider: PodProvider, supervisor: Supervisor, *,
                 on_copy: Callable[[Iterable[str]], None], workers: int = 4, max_delay: float = 60.0,
                 queue_metrics: WorkQueueMetrics | None = None):
        self.kube, self.provider, self.supervisor = kube, provider, supervisor
        self._on_copy = on_copy
        self.queue = WorkQueue(self.sync, workers=workers, name="objects", max_delay=max_delay,
                               metrics=queue_metrics)
        self._users: dict[Ref, dict[str, str]] = {}  # object → pod key → pod UID
        self._claims: dict[str, tuple[str, frozenset[Ref]]] = {}  # pod key → (UID, objects it uses)
        self._watches: dict[Ref, Reflector] = {}
        self._state: dict[Ref, Copy] = {}  # what the pods using an object see of its copy
        self._held: set[Ref] = set()  # objects whose copy exists (or may exist) on the provider
        self._parts: list[str] = []

    # -- life --------------------------------------------------------------------------

    async def start(self, claims: Mapping[str, tuple[str, frozenset[Ref]]], copies: Iterable[Ref]) -> None:
        """From the live local pods' claims (pod key → (UID, objects)) and the copies the provider holds: every
        object in use gets its watch resumed and its copy brought up to date, every copy nobody uses is deleted
        (each by one sync of its key)."""
        for key, (uid, refs) in claims.items():
            self.claim(key, uid, refs)
        for ref in copies:
            self._held.add(ref)
            self._state.setdefault(ref, COPIED)
            self.queue.add(ref_key(ref))
        self._start_part("object-workers", self.queue.run)

    async def stop(self) -> None:
        await self.supervisor.stop(*self._parts)
        self._parts.clear()
        self._watches.clear()
        self.queue.close()

    def _start_part(self, name: str, part) -> None:
        self.supervisor.start(name, part)
        self._parts.append(name)

    # -- what the pod controller tells it ------------------------------------------------

    def claim(self, key: str, uid: str, refs: frozenset[Ref]) -> None:
        """Pod ``key`` (UID ``uid``) uses ``refs`` now (an empty set: none, as when it is gone or finished).
        Only the bookkeeping changes here; each object whose users changed is queued for its sync."""
        old_uid, old_refs = self._claims.get(key, ("", frozenset()))
        if old_refs == refs and (old_uid == uid or not refs):
            return
        changed = old_refs ^ refs if old_uid == uid else old_refs | refs
        for ref in old_refs - refs:
            users = self._users.get(ref, {})
            users.pop(key, None)
            if not users:
                self._users.pop(ref, None)
        for ref in refs:
            self._users.setdefault(ref, {})[key] = uid
        if refs:
            self._claims[key] = (uid, refs)
        else:
            self._claims.pop(key, None)
        for ref in changed:
            self.queue.add(ref_key(ref))

    def release(self, key: str) -> None:
        self.claim(key, "", frozenset())

    def claims(self) -> dict[str, tuple[str, frozenset[Ref]]]:
        """Pod key → (UID, the objects it holds now)."""
        return dict(self._claims)

    def requeue_all(self) -> None:
        """Sync every object in use or copied now (the provider answers again: no copy waits out its backoff)."""
        for ref in set(self._users) | self._held:
            self.queue.add(ref_key(ref))

    def copies(self, refs: Iterable[Ref]) -> dict[Ref, Copy]:
        """What the pods see of these objects' copies now."""
        return {ref: self._state.get(ref, PENDING) for ref in refs}

    def users(self, ref: Ref) -> dict[str, str]:
        """The pods (key → UID) using ``ref`` now."""
        return dict(self._users.get(ref, {}))

    # -- the sync ------------------------------------------------------------------------

    async def sync(self, key: str) -> Result:
        """Bring the copy of one object to what its users need now: deleted when it has none, else equal to the
        local object and listing their UIDs."""
        ref = parse_ref_key(key)
        try:
            return await self._sync(key, ref)
        except errors.KubeError as exc:
            if not exc.retry and not isinstance(exc, errors.NotFound):
                log.warning("%s: %s; retrying with backoff", key, exc)
            else:
                log.info("%s: %s; retrying", key, exc)
            return RETRY

    async def _sync(self, key: str, ref: Ref) -> Result:
        users = self._users.get(ref)
        if not users:
            await self._stop_watch(ref)
            self._state.pop(ref, None)
            if ref in self._held or self.provider.holds_object(*ref):
                # Unmarked before the delete is awaited: a pod claiming the object meanwhile sees no copy and waits;
                # its claim queued this key again, so the copy is made anew right after.
                self._held.discard(ref)
                try:
                    await self.provider.delete_object(*ref)
                except BaseException:
                    self._held.add(ref)
                    raise
                log.info("%s: deleted its copy; no pod uses it", key)
            return DONE
        watch = self._watch(key, ref)
        if not watch.synced.is_set():
            return DONE  # its first list queues the key again
        obj = watch.store.get(f"{ref[1]}/{ref[2]}")
        if obj is None:
            # A pod that runs keeps the copy it has, as on a kubelet; a pod not created yet waits for the object.
            self._set(ref, MISSING)
            return DONE
        obj.setdefault("kind", ref[0])
        try:
            await self.provider.put_object(obj, sorted(users.values()))
        except errors.Forbidden as exc:
            # A quota or a policy of the provider's may change without telling us: retried with backoff.
            self._set(ref, Copy("refused", "ProviderRefused", exc.message or str(exc)))
            return RETRY
        except errors.Invalid as exc:
            # The same content gets the same answer: tried again when the object changes.
            self._set(ref, Copy("refused", "ProviderInvalid", exc.message or str(exc)))
            return DONE
        self._held.add(ref)
        self._set(ref, COPIED)
        return DONE

    def _set(self, ref: Ref, copy: Copy) -> None:
        if self._state.get(ref) != copy:
            self._state[ref] = copy
            self._on_copy(list(self._users.get(ref, {})))

    # -- watches -------------------------------------------------------------------------

    @staticmethod
    def _watch_name(ref: Ref) -> str:
        return f"watch-{ref[0]}-{ref[1]}-{ref[2]}"

    def _watch(self, key: str, ref: Ref) -> Reflector:
        reflector = self._watches.get(ref)
        if reflector is None:
            kind, namespace, name = ref
            reflector = Reflector(self.kube, kind, namespace, field_selector=f"metadata.name={name}",
                                  on_event=lambda event, obj: self.queue.add(key))

            async def run() -> None:
                async def listed() -> None:
                    await reflector.synced.wait()
                    self.queue.add(key)  # an object that does not exist has no event to say so

                await asyncio.gather(reflector.run(), listed())

            self._watches[ref] = reflector
            self._start_part(self._watch_name(ref), run)
        return reflector

    async def _stop_watch(self, ref: Ref) -> None:
        if self._watches.pop(ref, None) is not None:
            name = self._watch_name(ref)
            self._parts.remove(name)
            await self.supervisor.stop(name)
