"""What one sync of a pod does, decided apart from any I/O.

`decide` is a pure function of what the pod controller's caches say — the local pod (or None), the provider's
mirrors of that namespace/name, whether the provider answers, the GPU catalog, the state of the ConfigMap and Secret
copies the pod needs — and ``now``. It returns exactly one action; `PodController` carries it out and maps its
outcome (requeue with backoff, an Event and a status reason). Nothing here reads a clock or calls an API, so the
unit tests drive it row by row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from ..admission import Resources, admit, pod_resources
from ..catalog import CatalogError, GPUClass
from ..provider import RemotePod
from ..translate import referenced_objects, status_patch

TERMINAL = ("Succeeded", "Failed")
# A status condition of the runtime's own: False while the pod waits for what it needs to be admitted.
REFUSED_CONDITION = "k8sgpu.io/Admitted"
LOST_MESSAGE = "the pod's copy on the GPU provider disappeared without being deleted here"

Ref = tuple[str, str, str]  # (kind, namespace, name) of a ConfigMap or Secret


# -- what a pod's ConfigMap and Secret copies look like to the pod controller -----------------------------------

@dataclasses.dataclass(frozen=True)
class Copy:
    """The state of one object's copy on the provider, as the object controller reports it.

    ``state``: "copied" (the provider has it), "pending" (not listed or not written yet), "missing" (the local
    object does not exist), "refused" (the provider refused the copy; ``reason`` and ``message`` say how)."""

    state: Literal["copied", "pending", "missing", "refused"]
    reason: str = ""
    message: str = ""


PENDING = Copy("pending")
COPIED = Copy("copied")
MISSING = Copy("missing")


# -- the actions --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Note:
    """A Warning Event to record on the local pod (once per reason and message)."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Create:
    """Create the pod's mirror on the provider from ``offer``, taking ``resources``."""

    offer: GPUClass
    resources: Resources
    notes: tuple[Note, ...] = ()


@dataclasses.dataclass(frozen=True)
class DeleteMirror:
    """Delete ``mirror`` on the provider, with ``grace`` seconds (None: the mirror's own)."""

    mirror: RemotePod
    grace: int | None
    why: str


@dataclasses.dataclass(frozen=True)
class PatchStatus:
    """Write ``status`` (a strategic merge patch; None: nothing to write) on the local pod, and bring the mirror's
    labels and annotations in line with the pod's when ``update_metadata``."""

    status: dict | None
    update_metadata: bool


@dataclasses.dataclass(frozen=True)
class FailLost:
    """The pod ran and its mirror vanished without being deleted here: fail it with ``status``."""

    status: dict


@dataclasses.dataclass(frozen=True)
class FinishDeletion:
    """The local pod is being deleted and its mirror is gone: remove the pod (grace 0), as a kubelet does."""


@dataclasses.dataclass(frozen=True)
class Forget:
    """Neither cluster holds anything of this key any more: drop what is remembered of it."""


@dataclasses.dataclass(frozen=True)
class Wait:
    """Nothing to do now. ``delay``: seconds until the next try; None with ``backoff`` False: until the pod, its
    mirrors, its RuntimeClass, its copies or the provider's reachability change (each requeues the key); with
    ``backoff``: after the key's next backoff delay. With ``show``, the pod is left Pending with ``reason`` and
    ``message`` in its status and one Warning Event (per reason and message; per reason alone with
    ``once_per_reason``, for what a provider says, which changes with its quota's usage)."""

    reason: str
    message: str = ""
    delay: float | None = None
    backoff: bool = False
    show: bool = False
    once_per_reason: bool = False
    notes: tuple[Note, ...] = ()


Action = Create | DeleteMirror | PatchStatus | FailLost | FinishDeletion | Forget | Wait

# Reasons of the waits not shown on the pod (logged and counted only).
IN_SYNC = "InSync"
FINISHED = "Finished"
MIRROR_TERMINATING = "MirrorTerminating"
PROVIDER_UNREACHABLE = "ProviderUnreachable"
COPIES_PENDING = "CopiesPending"


# -- the decisions --------------------------------------------------------------------------------------------

def _phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase", "Pending")


def runtime_class_name(pod: dict) -> str:
    """The pod's spec.runtimeClassName; "" for none, or for one that is no string (admission then says so)."""
    name = pod["spec"].get("runtimeClassName")
    return name if isinstance(name, str) else ""


def own_mirrors(pod: dict | None, mirrors: list[RemotePod]) -> tuple[list[RemotePod], list[RemotePod]]:
    """The mirrors of this very pod (by UID), oldest first and live ones before deleting ones; and the others
    (of an earlier pod of the same name)."""
    uid = pod["metadata"]["uid"] if pod is not None else None
    mine = sorted((m for m in mirrors if m.uid == uid), key=lambda m: (m.deleting, m.created, m.mirror_name))
    return mine, [m for m in mirrors if m.uid != uid]


def class_name(pod: dict, default_runtime_class: str = "") -> str:
    """The offering the pod runs as: the RuntimeClass it names, else the node's default."""
    return runtime_class_name(pod) or default_runtime_class


def admitted(pod: dict, mirrors: list[RemotePod], catalog: Mapping[str, GPUClass | CatalogError],
             default_runtime_class: str = "") -> bool:
    """Whether the pod runs or may run here: a mirror of it exists, or admission accepts it under its class."""
    if own_mirrors(pod, mirrors)[0]:
        return True
    offer = catalog.get(class_name(pod, default_runtime_class))
    return isinstance(offer, GPUClass) and admit(pod, offer, default_runtime_class) is None


def claimed_objects(pod: dict | None, mirrors: list[RemotePod], catalog: Mapping[str, GPUClass | CatalogError],
                    default_runtime_class: str = "") -> frozenset[Ref] | None:
    """The ConfigMaps and Secrets the key holds on the provider: those of an unfinished pod that runs or may run
    here (whose mirror is still there, when it is being deleted); none for a finished, refused or removed pod;
    None (what it holds now, unchanged) for a pod gone locally whose mirror is still terminating — its spec is
    gone and its mirror may still read them."""
    if pod is None:
        return None if mirrors else frozenset()
    mine, _ = own_mirrors(pod, mirrors)
    if _phase(pod) in TERMINAL:
        return frozenset()
    if pod["metadata"].get("deletionTimestamp") and not mine:
        return frozenset()
    if not admitted(pod, mirrors, catalog, default_runtime_class):
        return frozenset()
    namespace = pod["metadata"]["namespace"]
    return frozenset((kind, namespace, name) for kind, name, _ in referenced_objects(pod))


def decide(pod: dict | None, mirrors: list[RemotePod], *, provider_reachable: bool,
           catalog: Mapping[str, GPUClass | CatalogError], copies: Mapping[Ref, Copy], now: str,
           default_runtime_class: str = "") -> Action:
    """The one next step for a local pod (None: gone) and the provider's mirrors of its namespace/name; a pod
    that names no RuntimeClass runs as ``default_runtime_class`` (none: it is refused, saying how to set one)."""
    mine, others = own_mirrors(pod, mirrors)
    # A mirror of an earlier pod of the same name, or a second mirror of this one: it must go first.
    extra = [m for m in others if not m.deleting] + [m for m in mine[1:] if not m.deleting]
    if extra:
        if not provider_reachable:
            return Wait(PROVIDER_UNREACHABLE, "the mirrors to delete wait for the provider")
        why = "its local pod is gone" if pod is None or extra[0].uid != pod["metadata"]["uid"] else "a duplicate"
        return DeleteMirror(extra[0], 0, why)
    if pod is None:
        return Wait(MIRROR_TERMINATING) if mirrors else Forget()
    mirror = mine[0] if mine else None
    meta, status = pod["metadata"], pod.get("status") or {}

    if meta.get("deletionTimestamp"):
        if mirror is not None:
            if mirror.deleting:
                return Wait(MIRROR_TERMINATING)
            if not provider_reachable:
                return Wait(PROVIDER_UNREACHABLE, "the mirror's deletion waits for the provider")
            return DeleteMirror(mirror, meta.get("deletionGracePeriodSeconds"), "its local pod is being deleted")
        if not provider_reachable:
            return Wait(PROVIDER_UNREACHABLE, "the provider must confirm the mirror is gone")
        return FinishDeletion()

    if mirror is not None:
        return PatchStatus(_status_from_mirror(pod, mirror.status, now), update_metadata=not mirror.deleting)
    if status.get("phase") in TERMINAL:
        return Wait(FINISHED)
    if status.get("startTime") or status.get("phase") == "Running":
        if not provider_reachable:
            return Wait(PROVIDER_UNREACHABLE, "the last status stays until the provider answers")
        return FailLost(_lost_status(pod, now))
    if not provider_reachable:
        return Wait(PROVIDER_UNREACHABLE, "the create waits for the provider", backoff=True)
    return _admit(pod, catalog, copies, default_runtime_class)


def _admit(pod: dict, catalog: Mapping[str, GPUClass | CatalogError], copies: Mapping[Ref, Copy],
           default_runtime_class: str) -> Action:
    """A pending pod with no mirror: refused (shown on it), waiting for its copies, or created."""
    offer = catalog.get(class_name(pod, default_runtime_class))
    if isinstance(offer, CatalogError):
        return Wait("InvalidRuntimeClass", str(offer), show=True)
    refusal = admit(pod, offer, default_runtime_class)
    if refusal is not None:
        return Wait(refusal.reason, refusal.message, show=True)
    assert offer is not None
    namespace = pod["metadata"]["namespace"]
    notes, blocked, pending, refused = [], [], [], []
    for kind, name, optional in referenced_objects(pod):
        copy = copies.get((kind, namespace, name), PENDING)
        if copy.state == "missing":
            reason = f"{'Optional' if optional else 'Mandatory'}{kind}NotFound"
            message = f"{kind} {name} not found" + ("; the pod runs without it" if optional else
                                                    "; the pod waits for it")
            notes.append(Note(reason, message))
            if not optional:
                blocked.append((reason, message))
        elif copy.state == "refused":
            refused.append((copy.reason, f"the GPU provider refused the copy of {kind} {name}: {copy.message}"))
        elif copy.state == "pending":
            pending.append(f"{kind} {name}")
    if blocked:
        return Wait(*blocked[0], show=True, notes=tuple(notes))
    if refused:
        return Wait(*refused[0], show=True, once_per_reason=True, notes=tuple(notes))
    if pending:
        return Wait(COPIES_PENDING, "waiting for the provider's copies of " + ", ".join(pending),
                    notes=tuple(notes))
    return Create(offer, pod_resources(pod, offer), tuple(notes))


def only_scheduled(status: dict) -> bool:
    """A Pending status that says no more than "scheduled": no containers yet, nothing False, no reason."""
    return (status.get("phase") == "Pending" and not status.get("containerStatuses")
            and not status.get("initContainerStatuses") and not status.get("reason")
            and all(c.get("status") == "True" for c in status.get("conditions") or []))


def _status_from_mirror(pod: dict, mirror_status: dict, now: str) -> dict | None:
    local = pod.get("status") or {}
    if only_scheduled(mirror_status) and local.get("phase", "Pending") == "Pending" and not local.get("reason"):
        # The mirror was scheduled and nothing more: the local pod says as much already. Skipping this write
        # halves the status patches each pod costs the user's API server.
        return None
    return status_patch(local, mirror_status, pod["spec"].get("readinessGates") or [], now,
                        dropped_conditions=(REFUSED_CONDITION,))


def _lost_status(pod: dict, now: str) -> dict:
    containers = []
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        cs = dict(cs)
        if "terminated" not in (cs.get("state") or {}):
            cs["state"] = {"terminated": {"exitCode": 137, "reason": "ProviderPodLost", "finishedAt": now}}
        cs["ready"] = False
        containers.append(cs)
    patch: dict = {"phase": "Failed", "reason": "ProviderPodLost", "message": LOST_MESSAGE}
    if containers:
        patch["containerStatuses"] = containers
    return patch
