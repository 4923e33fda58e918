"""The one seam between the Kubernetes node protocol and where pods really run.

Controllers import this Protocol, never a provider's internals; a provider never
touches the local cluster. Objects cross the seam as the local cluster's dicts;
what the provider learns about them comes back through `ProviderEvents`.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from ..admission import Resources
from ..catalog import GPUClass


@dataclasses.dataclass(frozen=True)
class Capacity:
    cpu: str
    memory: str
    gpus: str
    pods: str

    def as_resources(self) -> dict[str, str]:
        return {"cpu": self.cpu, "memory": self.memory, "nvidia.com/gpu": self.gpus, "pods": self.pods}


@dataclasses.dataclass(frozen=True)
class RemotePod:
    """What the provider knows of a pod it runs for us."""

    namespace: str  # the local pod's
    name: str
    uid: str
    status: dict  # in the local pod's terms (translated by the provider)
    deleting: bool = False


@dataclasses.dataclass(frozen=True)
class RemoteEvent:
    namespace: str
    name: str
    uid: str
    reason: str
    message: str
    type: str
    count: int


class ProviderEvents(Protocol):
    """Callbacks a provider calls (from its own tasks) when something changes."""

    def pod_changed(self, pod: RemotePod) -> None: ...

    def pod_gone(self, namespace: str, name: str, uid: str) -> None: ...

    def pod_event(self, event: RemoteEvent) -> None: ...

    def service_changed(self, namespace: str, name: str, ingress: list[dict]) -> None: ...

    def capacity_changed(self, capacity: Capacity) -> None: ...

    def reachability_changed(self, reachable: bool, why: str) -> None: ...


class PodProvider(Protocol):
    async def start(self, events: ProviderEvents) -> None:
        """Begin watching; returns once the provider's state is listed (`pods()` is complete)."""

    async def stop(self) -> None: ...

    def pods(self) -> list[RemotePod]:
        """Every pod the provider runs for this node, from its cache."""

    async def create_pod(self, pod: dict, offer: GPUClass, resources: Resources) -> None: ...

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None) -> None: ...

    async def put_object(self, obj: dict, users: list[str]) -> None:
        """Create or update the mirror of a local ConfigMap or Secret used by the pods with UIDs ``users``."""

    async def delete_object(self, kind: str, namespace: str, name: str) -> None: ...

    def object_users(self) -> dict[tuple[str, str, str], list[str]]:
        """(kind, namespace, name) → UIDs of the pods using each mirrored object."""

    async def put_service(self, service: dict) -> None: ...

    async def delete_service(self, namespace: str, name: str) -> None: ...

    def capacity(self) -> Capacity: ...
