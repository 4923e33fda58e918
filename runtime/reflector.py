"""List-then-watch caches and keyed work queues: the two shapes every controller stands on."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import errors
from .kube import Kube
from .metrics import QueueMetrics, WorkQueueMetrics

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict], None]


def key_of(obj: dict) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta['name']}"


class Reflector:
    """Keeps ``store`` equal to the objects of one kind (optionally filtered), by list and watch.

    Watches resume from the last resourceVersion seen (bookmarks included) and
    relist on 410 Gone; a relist emits the differences as events, so handlers
    never miss a deletion. ``on_health(False, why)`` is called while the
    cluster cannot be reached, ``on_health(True, "")`` once it can again.

    With ``on_forbidden`` (for a kind the identity may lack the right to read), 403s that go on for
    ``forbidden_grace`` seconds (a restarted kube-apiserver refuses everyone until its RBAC cache has synced) empty
    the store (as DELETED events), count as synced, call ``on_forbidden(why)`` once, and the list is tried again
    only every ``forbidden_retry`` seconds, quietly; ``on_forbidden("")`` says that a list succeeded after that.

    ``transform`` (client-go's TransformFunc) makes each listed or watched object into what is stored and handed to
    ``on_event``: by default `cache_form` (no ``metadata.managedFields``, strings shared); a reflector of thousands of
    objects keeps only the fields its handlers read. ``keep`` is what the store holds of each object once its handler
    has had it (absent: all of it): a kind whose objects are only handed on, never looked up, keeps their metadata,
    which is all a relist compares.
    """

    def __init__(self, kube: Kube, kind: str, namespace: str | None = None, *, on_event: EventHandler,
                 label_selector: str | None = None, field_selector: str | None = None,
                 on_health: Callable[[bool, str], None] | None = None, watch_seconds: int = 300,
                 max_backoff: float = 5.0, on_forbidden: Callable[[str], None] | None = None,
                 forbidden_grace: float = 10.0, forbidden_retry: float = 60.0,
                 transform: Callable[[dict], dict] | None = None, keep: Callable[[dict], dict] | None = None):
        self.kube, self.kind, self.namespace = kube, kind, namespace
        self.transform = transform or cache_form
        self._keep = keep or (lambda obj: obj)
        self.on_event, self.on_health = on_event, on_health
        self.selectors = {"label_selector": label_selector, "field_selector": field_selector}
        self.store: dict[str, dict] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self._watch_seconds = watch_seconds
        self._max_backoff = max_backoff
        self._healthy: bool | None = None
        self.on_forbidden, self._forbidden_grace, self._forbidden_retry = on_forbidden, forbidden_grace, forbidden_retry
        self.forbidden = ""  # the 403's message while reading is forbidden
        self._refused_since: float | None = None  # the first of the 403s in a row

    def _health(self, ok: bool, why: str = "") -> None:
        if ok != self._healthy:
            if not ok:
                log.warning("%s %s: cannot list or watch, retrying: %s", self.kube.name, self.kind, why)
            elif self._healthy is False:
                log.info("%s %s: listing and watching again", self.kube.name, self.kind)
            self._healthy = ok
            if self.on_health:
                self.on_health(ok, why)

    async def run(self) -> None:
        backoff = 0.2
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                self._health(True)
                backoff = 0.2
                async for event in self.kube.watch(self.kind, self.namespace, self.resource_version,
                                                   timeout_seconds=self._watch_seconds, **self.selectors):
                    self._apply(event)
            except errors.Gone:
                log.info("%s %s watch expired; relisting", self.kube.name, self.kind)
                need_list = True
            except (errors.Unavailable, errors.Unauthorized) as exc:
                self._health(False, str(exc))
                need_list = True
                await asyncio.sleep(backoff * (1 + random.random() / 4))
                backoff = min(backoff * 2, self._max_backoff)
            except errors.KubeError as exc:
                need_list = True
                if isinstance(exc, errors.Forbidden) and self.on_forbidden is not None:
                    now = time.monotonic()
                    self._refused_since = self._refused_since if self._refused_since is not None else now
                    if self.forbidden or now - self._refused_since >= self._forbidden_grace:
                        self._forbid(str(exc))
                        await asyncio.sleep(self._forbidden_retry)
                        continue
                    log.debug("%s %s: 403, trying again before taking it as forbidden: %s", self.kube.name,
                              self.kind, exc)
                else:
                    log.warning("%s %s watch failed: %s", self.kube.name, self.kind, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _forbid(self, why: str) -> None:
        first = not self.forbidden
        self.forbidden = why or "forbidden"
        old, self.store = self.store, {}
        for obj in old.values():
            self.on_event("DELETED", obj)
        self.synced.set()
        if first and self.on_forbidden is not None:
            self.on_forbidden(self.forbidden)

    async def _relist(self) -> None:
        listing = await self.kube.list(self.kind, self.namespace, **self.selectors)
        fresh = {}
        for item in listing.get("items") or []:
            item.setdefault("kind", self.kind)
            item = self.transform(item)
            fresh[key_of(item)] = item
        old = self.store
        self.store = {key: self._keep(obj) for key, obj in fresh.items()}
        self.resource_version = listing["metadata"]["resourceVersion"]
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self.on_event("ADDED", obj)
            elif before["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self.on_event("MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self.on_event("DELETED", obj)
        self.synced.set()
        self._refused_since = None
        if self.forbidden:
            self.forbidden = ""
            if self.on_forbidden is not None:
                self.on_forbidden("")

    def _apply(self, event: dict) -> None:
        kind, obj = event["type"], event["object"]
        self.resource_version = obj.get("metadata", {}).get("resourceVersion", self.resource_version)
        if kind == "BOOKMARK":
            return
        obj = self.transform(obj)
        key = key_of(obj)
        if kind == "DELETED":
            self.store.pop(key, None)
        else:
            self.store[key] = self._keep(obj)
        self.on_event(kind, obj)

    def put(self, obj: dict) -> None:
        """Stores what a write of ours returned ahead of its watch event, when the object is still in the store."""
        key = key_of(obj)
        if key in self.store:
            self.store[key] = self._keep(self.transform(obj))


def drop_managed_fields(obj: dict) -> dict:
    # What each writer of the object set (a third of a running pod's JSON), which no controller here reads: client-go
    # informers drop it the same way, so that thousands of cached pods do not hold it.
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


def cache_form(obj: dict) -> dict:
    """An object as a reflector keeps it by default: without managedFields, its strings shared (`share_strings`)."""
    return share_strings(drop_managed_fields(obj))


def share_strings(node: dict | list) -> dict | list:
    """Interns, in place, every string value in ``node``: thousands of cached pods then hold one "True", one
    "Ready", one image name and one timestamp per second between them, not one each (a third of a cached pod's
    memory; orjson already shares the keys)."""
    for key, value in node.items() if type(node) is dict else enumerate(node):
        kind = type(value)
        if kind is str:
            node[key] = sys.intern(value)
        elif kind is dict or kind is list:
            share_strings(value)
    return node


@dataclass(frozen=True)
class Result:
    """What a sync decided, which the queue carries out (controller-runtime's ``Result``): done (the key's
    backoff is forgotten), retry with the key's backoff, or requeue after ``after`` seconds (backoff forgotten).
    A handler that raises is retried with backoff too."""

    retry: bool = False
    after: float | None = None


DONE = Result()
RETRY = Result(retry=True)


def requeue_after(seconds: float) -> Result:
    return Result(after=seconds)


class WorkQueue:
    """Keys processed one at a time each, by ``workers`` tasks; the handler's `Result` says what comes next.

    A key added while it is being processed is processed again afterwards, once. A key retried backs off per key,
    exponentially from ``base_delay`` up to ``max_delay``, each delay shortened by up to ``jitter`` of itself at
    random (so keys refused together do not come back together); its count of failures is forgotten only when a
    sync of it succeeds. ``call_later`` and ``rand`` are the clock and dice (tests pass their own). ``metrics``:
    the node's workqueue families (absent: ones nobody reads).
    """

    def __init__(self, handler: Callable[[str], Awaitable[Result | None]], *, workers: int = 8, name: str = "queue",
                 base_delay: float = 0.2, max_delay: float = 30.0, jitter: float = 0.2,
                 call_later: Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None = None,
                 rand: Callable[[], float] = random.random, metrics: WorkQueueMetrics | None = None):
        self.handler, self.workers, self.name = handler, workers, name
        self.metrics: QueueMetrics = (metrics or WorkQueueMetrics(None)).queue(name)
        self.metrics.depth = lambda: len(self._queued)
        self.base_delay, self.max_delay, self.jitter = base_delay, max_delay, jitter
        self._call_later, self._rand = call_later, rand
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def add(self, key: str) -> None:
        if key in self._active:
            if key not in self._dirty:
                self._dirty.add(key)
                self.metrics.added(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)
            self.metrics.added(key)

    def add_after(self, key: str, delay: float) -> None:
        if key in self._timers:
            return
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timers[key] = call_later(delay, lambda: self._fire(key))

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def backoff(self, failures: int) -> float:
        """The delay before retry number ``failures`` (1, 2, …) of a key."""
        delay = min(self.base_delay * 2 ** min(failures - 1, 64), self.max_delay)
        return delay * (1 - self.jitter * self._rand())

    def retry(self, key: str) -> float:
        """Process ``key`` again after its next backoff delay (returned); its failures count one more."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        self.metrics.retried()
        delay = self.backoff(n)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def apply(self, key: str, result: Result | None) -> float | None:
        """Carry out a sync's decision about ``key``; the delay of a requeue, None when done."""
        if result is None or (not result.retry and result.after is None):
            self.forget(key)
            return None
        if result.retry:
            return self.retry(key)
        self.forget(key)
        self.add_after(key, result.after)
        return result.after

    def __len__(self) -> int:
        return len(self._queued) + len(self._active)

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            await self.process(key)

    async def process(self, key: str) -> None:
        """One sync of ``key`` (taken off the queue), and what its result says."""
        self._queued.discard(key)
        self._active.add(key)
        self.metrics.started(key)
        started = time.monotonic()
        try:
            result = await self.handler(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # a handler bug must not stop the node; retry with backoff
            delay = self.retry(key)
            log.exception("%s: %s failed after %.3fs; retrying in %.1fs", self.name, key,
                          time.monotonic() - started, delay)
        else:
            self.apply(key, result)
        finally:
            self._active.discard(key)
            self.metrics.finished(key)
            if key in self._dirty:  # counted as an add when it was marked
                self._dirty.discard(key)
                self._queued.add(key)
                self._queue.put_nowait(key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
