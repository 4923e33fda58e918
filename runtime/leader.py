"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics (tools/leaderelection).

Two or more runtimes for one node campaign for one Lease; the holder leads (registers and updates the Node,
renews the node's Lease, runs the controllers and the kubelet API), the others wait. As in client-go:

- a candidate takes the Lease when nobody holds it (no holderIdentity: never held, or released), when it holds
  it already, or when the record has not changed for leaseDurationSeconds *as this candidate saw it*: expiry is
  judged by the local monotonic clock from the moment this candidate last saw the record change, never by
  comparing renewTime with the local wall clock (clocks of two machines differ);
- every write is an update of the object read, so its resourceVersion makes it conditional: a 409 means someone
  else wrote first, and the attempt failed;
- the leader renews every retry period; when no renewal succeeded for the renew deadline it stops leading
  (the runtime then exits, so its Deployment restarts it as a candidate);
- leaseTransitions counts each change of holder; a graceful stop releases the Lease (ReleaseOnCancel: holder
  cleared, leaseDurationSeconds 1) so another candidate takes it on its next try instead of waiting it out.

The decisions are pure functions (`decide`, `released`), unit-tested row by row; `LeaderElector` does the I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import random
import time
from collections.abc import Callable

from . import errors
from .kube import Kube
from .metrics import Metrics

log = logging.getLogger(__name__)

JITTER_FACTOR = 1.2  # client-go's: each wait between tries is retry_period * (1 + up to 1.2)


def micro_time(when: datetime.datetime) -> str:
    """A metav1.MicroTime as the API server writes it."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class Record:
    """The election's part of a Lease's spec."""

    holder: str = ""
    lease_duration_seconds: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: dict) -> Record:
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or "",
                   lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=spec.get("acquireTime") or "", renew_time=spec.get("renewTime") or "",
                   transitions=int(spec.get("leaseTransitions") or 0))

    def spec(self) -> dict:
        spec: dict = {"holderIdentity": self.holder or None, "leaseDurationSeconds": self.lease_duration_seconds,
                      "leaseTransitions": self.transitions}
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return spec


def decide(current: Record | None, observed_at: float, now: float, identity: str, lease_duration: int,
           wall_now: str) -> Record | None:
    """The record to write for ``identity``, or None when another candidate holds a valid Lease.

    ``current`` is the Lease as just read (None: there is none yet); ``observed_at`` the monotonic time this
    candidate first saw ``current`` as it is now; ``now`` the monotonic time; ``wall_now`` the MicroTime to
    write as renewTime (and acquireTime when the holder changes)."""
    if current is None:
        return Record(identity, lease_duration, wall_now, wall_now, 0)
    ours = current.holder == identity
    valid = observed_at + current.lease_duration_seconds > now
    if current.holder and valid and not ours:
        return None
    if ours:
        return Record(identity, lease_duration, current.acquire_time or wall_now, wall_now, current.transitions)
    return Record(identity, lease_duration, wall_now, wall_now, current.transitions + 1)


def released(current: Record, wall_now: str) -> Record:
    """client-go's ReleaseOnCancel: no holder, a lease of one second, the transitions kept."""
    return Record("", 1, wall_now, wall_now, current.transitions)


class LeaderElector:
    """Campaigns for the Lease ``namespace/name`` as ``identity``, and renews it while leading.

    `run` is one long-running part: it campaigns until it leads (then `leading` is set), then renews until it
    cannot within the renew deadline (then `lost` is set and it waits to be cancelled). It keeps its state on
    the elector, so a supervisor that restarts it after an unexpected error resumes where it was: a leader goes on
    renewing against the same deadline and never campaigns again."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *, lease_duration: float = 15,
                 renew_deadline: float = 10, retry_period: float = 2,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
                 rng: random.Random | None = None, metrics: Metrics | None = None):
        if not lease_duration > renew_deadline > retry_period * JITTER_FACTOR > 0:
            # client-go refuses these too: a leader must be able to try more than once before its lease ends.
            raise ValueError("leader election needs lease duration > renew deadline > retry period x 1.2 > 0, got "
                             f"{lease_duration}, {renew_deadline}, {retry_period}")
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self._clock, self._wall_clock = clock, wall_clock
        self._rng = rng or random.Random()
        self.observed: Record | None = None
        self._observed_at = 0.0
        self._resource_version = ""
        self._renewed_at = 0.0
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        # leader_election_master_status{name}: 0 while standing by, 1 while leading (client-go's).
        self._status = metrics.leader.labels(name) if metrics is not None else None
        self.error = ""
        """Why the last attempt could not read or write the Lease ("" when it could): a standby that cannot read
        it (RBAC) is not ready."""

    @property
    def leader(self) -> str:
        """The holder as last seen ("" for none or not known yet)."""
        return self.observed.holder if self.observed else ""

    def is_leader(self) -> bool:
        return self.observed is not None and self.observed.holder == self.identity

    def _observe(self, record: Record, resource_version: str) -> None:
        if record != self.observed:
            self.observed, self._observed_at = record, self._clock()
        self._resource_version = resource_version

    def _lease(self, record: Record, resource_version: str = "") -> dict:
        metadata: dict = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": record.spec()}

    async def try_acquire_or_renew(self) -> bool:
        """One attempt (client-go's tryAcquireOrRenew): True when this candidate holds the Lease afterwards."""
        wall_now = micro_time(self._wall_clock())
        try:
            lease = await self.kube.get("Lease", self.namespace, self.name)
        except errors.NotFound:
            record = decide(None, 0, self._clock(), self.identity, int(self.lease_duration), wall_now)
            try:
                created = await self.kube.create("Lease", self.namespace, self._lease(record))
            except errors.AlreadyExists as exc:  # another candidate created it first
                log.info("creating leader election Lease %s/%s failed: %s", self.namespace, self.name, exc)
                return False
            except errors.KubeError as exc:
                return self._failed("creating", exc)
            self._observe(record, created["metadata"]["resourceVersion"])
            return True
        except errors.KubeError as exc:
            return self._failed("reading", exc)
        self.error = ""
        current = Record.from_lease(lease)
        self._observe(current, lease["metadata"]["resourceVersion"])
        record = decide(current, self._observed_at, self._clock(), self.identity, int(self.lease_duration),
                        wall_now)
        if record is None:
            return False
        try:
            updated = await self.kube.replace("Lease", self.namespace, self.name,
                                              self._lease(record, self._resource_version))
        except errors.Conflict as exc:  # someone else wrote it since we read it
            log.info("updating leader election Lease %s/%s failed: %s", self.namespace, self.name, exc)
            return False
        except errors.KubeError as exc:
            return self._failed("updating", exc)
        self._observe(record, updated["metadata"]["resourceVersion"])
        return True

    def _failed(self, doing: str, exc: errors.KubeError) -> bool:
        self.error = f"{doing} the Lease failed: {exc}"
        if isinstance(exc, errors.Forbidden | errors.Unauthorized):
            log.error("%s leader election Lease %s/%s failed: %s; the identity writing it (the pod's ServiceAccount "
                      "or --leader-elect-kubeconfig) needs the node module's Role <name>-leader-election "
                      "(runtime/rbac.py election_rules)", doing, self.namespace, self.name, exc)
        else:
            log.warning("%s leader election Lease %s/%s failed: %s", doing, self.namespace, self.name, exc)
        return False

    def _pause(self) -> float:
        return self.retry_period * (1 + self._rng.random() * JITTER_FACTOR)

    async def run(self) -> None:
        if not self.leading.is_set():
            await self._campaign()
        await self._renew()
        await asyncio.Event().wait()  # lost: the runtime stops leading and cancels this

    async def _campaign(self) -> None:
        log.info("campaigning for leader election Lease %s/%s as %s", self.namespace, self.name, self.identity)
        self._report(False)
        seen = None
        while not await self.try_acquire_or_renew():
            if self.leader != seen:
                seen = self.leader
                log.info("leader election Lease %s/%s is held by %s: standing by", self.namespace, self.name,
                         seen or "nobody")
            await asyncio.sleep(self._pause())
        self._renewed_at = self._clock()
        log.info("acquired leader election Lease %s/%s as %s: leading", self.namespace, self.name, self.identity)
        self._report(True)
        self.leading.set()

    def _report(self, leading: bool) -> None:
        if self._status is not None:
            self._status.set(1 if leading else 0)

    async def _renew(self) -> None:
        """Every retry period; each attempt bounded by what is left of the renew deadline since the last
        successful renewal (client-go's renew loop); past the deadline, `lost`."""
        while not self.lost.is_set():
            await asyncio.sleep(self.retry_period)
            while True:
                left = self._renewed_at + self.renew_deadline - self._clock()
                renewed = False
                if left > 0:
                    try:
                        renewed = await asyncio.wait_for(self.try_acquire_or_renew(), left)
                    except TimeoutError:
                        renewed = False
                if renewed:
                    self._renewed_at = self._clock()
                    break
                if self._clock() >= self._renewed_at + self.renew_deadline:
                    log.error("leader election Lease %s/%s not renewed within %.0f s (held by %s now): stopped "
                              "leading", self.namespace, self.name, self.renew_deadline, self.leader or "nobody")
                    self._report(False)
                    self.lost.set()
                    return
                await asyncio.sleep(min(self.retry_period, max(left, 0)))

    async def release(self) -> bool:
        """Give the Lease up if we hold it (after the work it guarded stopped): True when released. It is read
        afresh, since a renewal cancelled by the stop may have written it after our last read."""
        if not self.is_leader() or self.lost.is_set():
            return False
        try:
            lease = await self.kube.get("Lease", self.namespace, self.name)
            current = Record.from_lease(lease)
            if current.holder != self.identity:
                return False
            record = released(current, micro_time(self._wall_clock()))
            await self.kube.replace("Lease", self.namespace, self.name,
                                    self._lease(record, lease["metadata"]["resourceVersion"]))
        except errors.KubeError as exc:
            log.warning("releasing leader election Lease %s/%s failed (it expires in %.0f s): %s", self.namespace,
                        self.name, self.lease_duration, exc)
            return False
        self.observed = record
        self._report(False)
        log.info("released leader election Lease %s/%s", self.namespace, self.name)
        return True
