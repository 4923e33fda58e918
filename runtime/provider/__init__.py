"""The one seam between the Kubernetes node protocol and where pods really run.

Controllers import this Protocol, never a provider's internals; a provider never
touches the local cluster. Objects cross the seam as the local cluster's dicts;
what the provider learns about them comes back through `ProviderEvents`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import NamedTuple, Protocol

from ..admission import Resources
from ..catalog import GPUClass
from ..placement import ProviderRoom


@dataclasses.dataclass(frozen=True)
class Capacity:
    cpu: str
    memory: str
    gpus: str
    pods: str
    room: ProviderRoom = ProviderRoom()
    """Node by node, what the provider has and the tenant's pods take: what each offering's room is counted from."""


class ContainerSession(Protocol):
    """An exec or attach running in a provider's container."""

    async def send_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, width: int, height: int) -> None: ...

    async def receive(self) -> tuple[str, bytes] | None:
        """("stdout" | "stderr", bytes) or ("status", a metav1.Status as JSON); None at the end."""

    async def close(self) -> None: ...


class PortSession(Protocol):
    """One forwarded connection to a port of a provider's pod."""

    async def send(self, data: bytes) -> None: ...

    async def close_write(self) -> None:
        """The client will send no more (half-close)."""

    async def receive(self) -> tuple[str, bytes] | None:
        """("data" | "error", bytes); None when the provider closed the connection."""

    async def close(self) -> None: ...


class ContainerUsage(NamedTuple):
    # Named tuples, not dataclasses: a node's usage is read anew for every pod at each metrics scrape.
    name: str
    cpu_nanocores: int
    memory_bytes: int


class PodUsage(NamedTuple):
    timestamp: str
    containers: tuple[ContainerUsage, ...]


@dataclasses.dataclass(frozen=True)
class RemotePod:
    """What the provider knows of a pod it runs for us."""

    namespace: str  # the local pod's
    name: str
    uid: str
    status: dict  # in the local pod's terms (translated by the provider)
    deleting: bool = False
    mirror_name: str = ""  # the provider's name of this mirror (several mirrors of one local name may overlap)
    created: str = ""  # the mirror's creationTimestamp (RFC 3339): the oldest of two duplicates is kept


@dataclasses.dataclass(frozen=True)
class RemoteEvent:
    """An Event the provider recorded about a mirror, named by the local pod it mirrors."""

    namespace: str  # the local pod's
    name: str
    uid: str
    reason: str
    message: str
    type: str
    count: int
    event_uid: str = ""  # the provider Event's own UID: one local copy per provider Event
    first_timestamp: str = ""  # when it happened on the provider (RFC 3339, seconds); empty if unknown
    last_timestamp: str = ""


class ProviderEvents(Protocol):
    """Callbacks a provider calls (from its own tasks) when something changes."""

    def pod_changed(self, pod: RemotePod) -> None: ...

    def pod_gone(self, pod: RemotePod) -> None: ...

    def pod_event(self, event: RemoteEvent) -> None: ...

    def copy_changed(self, kind: str, namespace: str, name: str) -> None:
        """The provider's copy of the local ConfigMap/Secret ``namespace/name`` changed or went (any writer)."""

    def service_changed(self, namespace: str, name: str, ingress: list[dict]) -> None: ...

    def capacity_changed(self, capacity: Capacity) -> None: ...

    def reachability_changed(self, reachable: bool, why: str) -> None: ...


class PodProvider(Protocol):
    async def start(self, events: ProviderEvents) -> None:
        """Begin watching; returns once the provider's state is listed (`pods()` is complete)."""

    async def stop(self) -> None: ...

    def problems(self) -> dict[str, str]:
        """Its long-running parts (watches of the provider) that have ended: name → how; empty while all run."""
        ...

    def pods(self) -> list[RemotePod]:
        """Every pod the provider runs for this node, from its cache."""

    async def create_pod(self, pod: dict, offer: GPUClass, resources: Resources) -> None: ...

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None,
                         mirror_name: str | None = None) -> None:
        """Delete the mirrors of the local pod namespace/name (only the one called ``mirror_name``, if given)."""

    async def update_pod_metadata(self, pod: dict) -> None:
        """Bring the labels and annotations of the local pod's mirror in line with the pod's (the provider's
        Services select mirrors by them); nothing when they already are."""

    async def put_object(self, obj: dict, users: list[str]) -> None:
        """Create or update the mirror of a local ConfigMap or Secret used by the pods with UIDs ``users``."""

    async def delete_object(self, kind: str, namespace: str, name: str) -> None: ...

    def object_users(self) -> dict[tuple[str, str, str], list[str]]:
        """(kind, namespace, name) → UIDs of the pods using each mirrored object."""

    def holds_object(self, kind: str, namespace: str, name: str) -> bool:
        """Whether the provider holds a copy of the local object (from its cache)."""

    async def put_service(self, service: dict) -> None: ...

    async def release_all(self) -> None:
        """Delete every pod, ConfigMap/Secret copy and Service the provider holds for this node (from its cache:
        call after `stop`, when nothing creates more)."""

    async def delete_service(self, namespace: str, name: str) -> None: ...

    def capacity(self) -> Capacity: ...

    # What the kubelet API serves from the provider (local pod names in, provider answers out).

    def logs(self, namespace: str, name: str, container: str, options: dict[str, str]) -> AsyncIterator[bytes]:
        """A container's log with the kubelet's options (follow, tailLines, timestamps, since*, previous,
        limitBytes), as the provider streams it."""

    async def exec(self, namespace: str, name: str, container: str, command: list[str], *, stdin: bool,
                   stdout: bool, stderr: bool, tty: bool) -> ContainerSession: ...

    async def attach(self, namespace: str, name: str, container: str, *, stdin: bool, stdout: bool,
                     stderr: bool, tty: bool) -> ContainerSession: ...

    async def port_forward(self, namespace: str, name: str, port: int) -> PortSession: ...

    async def usage(self) -> dict[tuple[str, str], PodUsage]:
        """CPU and memory each pod uses now, by (namespace, name), where the provider measures it."""
