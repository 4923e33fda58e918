"""The first provider: a remote Kubernetes cluster, reached with a tenant kubeconfig, one namespace.

Mirrors are labelled with the node's name and the origin's UID and annotated
with the origin's namespace and name, so this provider rebuilds its whole view
from a list of the tenant namespace after any restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

from .. import errors
from ..admission import Resources
from ..catalog import GPU_RESOURCE, PROVIDER_PRODUCT_LABEL, GPUClass
from ..kube import Kube, resource_path
from ..placement import ProviderRoom, Waiting, as_waiting, node_room, pod_requests, quota_room, with_requested
from ..quantity import quantity_int
from ..reflector import Reflector, cache_form
from ..supervisor import Supervisor
from ..translate import (
    NODE_LABEL,
    ORIGIN_NAME,
    ORIGIN_NAMESPACE,
    ORIGIN_UID_LABEL,
    USED_BY,
    local_status,
    mirror_metadata_patch,
    reflected_object,
    remote_name,
    remote_pod,
    remote_service,
)
from . import Capacity, ContainerUsage, PodUsage, ProviderEvents, RemoteEvent, RemotePod
from .streams import ContainerSession, PortSession

log = logging.getLogger(__name__)


class RemoteClusterProvider:
    def __init__(self, kube: Kube, tenant_namespace: str, node_name: str, node_address: str, *,
                 supervisor: Supervisor | None = None, on_mirror_gone: Callable[[dict], None] = lambda obj: None):
        """Its informers run under ``supervisor`` (the node's; absent, one of its own); ``on_mirror_gone`` gets
        each mirror's last state when it is deleted (GPU accounting ends it there)."""
        self._on_mirror_gone = on_mirror_gone
        self.kube = kube
        self._own_supervisor = supervisor is None
        self.supervisor = supervisor or Supervisor()
        self.namespace = tenant_namespace
        self.node_name = node_name
        self.node_address = node_address
        self._events: ProviderEvents | None = None
        self._parts: list[str] = []
        self._capacity = Capacity("0", "0", "0", "0")
        owned = f"{NODE_LABEL}={node_name}"
        self._pods = Reflector(kube, "Pod", tenant_namespace, label_selector=owned, on_event=self._on_pod,
                               on_health=self._on_health, transform=provider_pod_essentials)
        self._configmaps = Reflector(kube, "ConfigMap", tenant_namespace, label_selector=owned,
                                     on_event=self._on_copy)
        self._secrets = Reflector(kube, "Secret", tenant_namespace, label_selector=owned, on_event=self._on_copy)
        self._services = Reflector(kube, "Service", tenant_namespace, label_selector=owned,
                                   on_event=self._on_service)
        self._pod_events = Reflector(kube, "Event", tenant_namespace, field_selector="involvedObject.kind=Pod",
                                     on_event=self._on_event, transform=provider_event_essentials,
                                     keep=event_identity)
        # Optional: a tenant confined to its namespace may not list Nodes; then its quota says what room there is.
        self._nodes = Reflector(kube, "Node", None, on_event=self._on_capacity_source,
                                on_forbidden=self._on_nodes_forbidden, forbidden_retry=NODES_RECHECK_SECONDS)
        self._quotas = Reflector(kube, "ResourceQuota", tenant_namespace, on_event=self._on_capacity_source)
        # Every unfinished pod of the tenant namespace takes room on the nodes: the others' (other nodes' mirrors
        # too) from a watch of their own, this node's mirrors from the mirrors' watch (a second watch of them
        # would decode every mirror event twice).
        self._tenant_pods = Reflector(kube, "Pod", tenant_namespace, label_selector=f"{NODE_LABEL}!={node_name}",
                                      field_selector="status.phase!=Succeeded,status.phase!=Failed",
                                      on_event=self._on_tenant_pod, transform=provider_pod_essentials)
        # What the tenant's pods take, kept up to date per event, so that counting the room never walks them all:
        # per unfinished pod (by UID) where it stands, the sums per node, the unplaced, the mirrors' origins.
        self._placed: dict[str, tuple[str, dict[str, Decimal], str]] = {}  # UID → (node, requests, origin UID)
        self._requested: dict[str, dict[str, Decimal]] = {}  # node → what its tenant pods request
        self._waiting: dict[str, Waiting] = {}  # UID → a pod the provider's scheduler has not placed
        self._origins: dict[str, int] = {}  # origin UID → its mirrors in the tenant namespace
        self._recompute: asyncio.TimerHandle | None = None
        self._by_remote_name: dict[str, dict] = {}

    # -- life --------------------------------------------------------------

    async def start(self, events: ProviderEvents) -> None:
        self._events = events
        # The mirrors first: an Event is placed by the mirror it involves, so the Events' first listing
        # (every Event, after a restart) must find them all known.
        self._run(self._pods)
        await self._pods.synced.wait()
        reflectors = [self._configmaps, self._secrets, self._services, self._pod_events, self._nodes, self._quotas]
        for reflector in reflectors:
            self._run(reflector)
        self._run(self._tenant_pods, "provider-Pod-room")
        reflectors.append(self._tenant_pods)
        await asyncio.gather(*(r.synced.wait() for r in reflectors))
        self._recompute_capacity()

    def _run(self, reflector: Reflector, name: str = "") -> None:
        name = name or f"provider-{reflector.kind}"
        self.supervisor.start(name, reflector.run)
        self._parts.append(name)

    def problems(self) -> dict[str, str]:
        """Its informers given up on, when it has a supervisor of its own (else the node's reports them)."""
        return self.supervisor.problems() if self._own_supervisor else {}

    async def stop(self) -> None:
        await self.supervisor.stop(*self._parts)
        self._parts = []
        if self._recompute is not None:
            self._recompute.cancel()
            self._recompute = None

    # -- pods ----------------------------------------------------------------

    def _remote_pod(self, obj: dict) -> RemotePod:
        meta = obj["metadata"]
        ann = meta.get("annotations") or {}
        return RemotePod(
            namespace=ann.get(ORIGIN_NAMESPACE, ""),
            name=ann.get(ORIGIN_NAME, ""),
            uid=(meta.get("labels") or {}).get(ORIGIN_UID_LABEL, ""),
            status=local_status(obj, self.node_address),
            deleting=bool(meta.get("deletionTimestamp")),
            mirror_name=meta.get("name", ""),
            created=meta.get("creationTimestamp", ""),
        )

    def _on_pod(self, kind: str, obj: dict) -> None:
        finished = (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        self._on_tenant_pod("DELETED" if finished else kind, obj)
        pod = self._remote_pod(obj)
        if kind == "DELETED":
            self._by_remote_name.pop(obj["metadata"]["name"], None)
            self._on_mirror_gone(obj)
            if self._events:
                self._events.pod_gone(pod)
            return
        self._by_remote_name[obj["metadata"]["name"]] = obj
        if self._events:
            self._events.pod_changed(pod)

    def _on_health(self, ok: bool, why: str) -> None:
        if self._events:
            self._events.reachability_changed(ok, why)

    def pods(self) -> list[RemotePod]:
        return [self._remote_pod(obj) for obj in self._pods.store.values()]

    def mirror_objects(self) -> list[dict]:
        """The mirrors as the provider has them (status, resources, times), from the cache."""
        return list(self._pods.store.values())

    async def create_pod(self, pod: dict, offer: GPUClass, resources: Resources) -> None:
        manifest = remote_pod(pod, offer, self.node_name, resources)
        try:
            await self.kube.create("Pod", self.namespace, manifest)
        except errors.AlreadyExists:
            pass  # created before a restart; the reflector carries its status

    async def update_pod_metadata(self, pod: dict) -> None:
        meta = pod["metadata"]
        key = f"{self.namespace}/{remote_name(meta['namespace'], meta['name'], meta['uid'])}"
        mirror = self._pods.store.get(key)
        if mirror is None or mirror["metadata"].get("deletionTimestamp"):
            return
        patch = mirror_metadata_patch(meta, mirror["metadata"], self.node_name)
        if patch is None:
            return
        try:
            updated = await self.kube.patch("Pod", self.namespace, mirror["metadata"]["name"],
                                            {"metadata": {**patch, "uid": mirror["metadata"]["uid"]}})
        except errors.NotFound:
            return  # gone meanwhile: its deletion event tells the controller
        self._pods.put(updated)  # ahead of the watch: the next sync finds nothing to patch

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None,
                         mirror_name: str | None = None) -> None:
        if mirror_name is not None:
            # One lookup, not a walk of every mirror: a thousand pods deleted must not cost a million comparisons.
            found = self._pods.store.get(f"{self.namespace}/{mirror_name}")
            mirrors = [found["metadata"]] if found is not None and \
                (found["metadata"].get("annotations") or {}).get(ORIGIN_NAMESPACE) == namespace and \
                found["metadata"]["annotations"].get(ORIGIN_NAME) == name else []
        else:
            mirrors = [remote["metadata"] for remote in self._pods.store.values()
                       if (remote["metadata"].get("annotations") or {}).get(ORIGIN_NAMESPACE) == namespace
                       and remote["metadata"]["annotations"].get(ORIGIN_NAME) == name]
        for meta in mirrors:
            try:
                await self.kube.delete("Pod", self.namespace, meta["name"], grace_seconds=grace_seconds,
                                       uid=meta["uid"])
            except (errors.NotFound, errors.Conflict):
                pass  # already gone, or replaced by a newer mirror

    # -- logs, exec, attach, port-forward ---------------------------------------

    def _mirror(self, namespace: str, name: str) -> str:
        """The name of the running mirror of a local pod (the newest, should a re-created one overlap)."""
        found = [remote["metadata"] for remote in self._pods.store.values()
                 if (remote["metadata"].get("annotations") or {}).get(ORIGIN_NAMESPACE) == namespace
                 and remote["metadata"]["annotations"].get(ORIGIN_NAME) == name]
        if not found:
            raise errors.NotFound(f"pod {namespace}/{name} does not run on the provider (no mirror)")
        return max(found, key=lambda meta: meta.get("creationTimestamp", ""))["name"]

    def _pod_path(self, namespace: str, name: str, subresource: str) -> str:
        return resource_path("Pod", self.namespace, self._mirror(namespace, name), subresource)

    async def logs(self, namespace: str, name: str, container: str, options: dict[str, str]) -> AsyncIterator[bytes]:
        path = self._pod_path(namespace, name, "log")
        async for chunk in self.kube.stream(path, {**options, "container": container}):
            yield chunk

    async def exec(self, namespace: str, name: str, container: str, command: list[str], *, stdin: bool,
                   stdout: bool, stderr: bool, tty: bool) -> ContainerSession:
        query = [("container", container), *(("command", c) for c in command),
                 *_flags(stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)]
        ws = await self.kube.websocket(self._pod_path(namespace, name, "exec"), query, CHANNEL_PROTOCOLS)
        return ContainerSession(ws)

    async def attach(self, namespace: str, name: str, container: str, *, stdin: bool, stdout: bool,
                     stderr: bool, tty: bool) -> ContainerSession:
        query = [("container", container), *_flags(stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)]
        ws = await self.kube.websocket(self._pod_path(namespace, name, "attach"), query, CHANNEL_PROTOCOLS)
        return ContainerSession(ws)

    async def port_forward(self, namespace: str, name: str, port: int) -> PortSession:
        ws = await self.kube.websocket(self._pod_path(namespace, name, "portforward"), [("ports", str(port))],
                                       ("SPDY/3.1+portforward.k8s.io",))
        try:
            return await PortSession(ws, port).open()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            await ws.close()
            raise errors.Unavailable(f"provider: port-forward to {namespace}/{name}:{port} failed: {exc!r}") from exc

    async def usage(self) -> dict[tuple[str, str], PodUsage]:
        path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{self.namespace}/pods"
        try:
            metrics = await self.kube.request("GET", path, params={"labelSelector": f"{NODE_LABEL}={self.node_name}"})
        except (errors.NotFound, errors.Forbidden, errors.Unavailable) as exc:
            log.debug("no pod metrics from the provider: %s", exc)
            return {}  # a provider without metrics.k8s.io (or not for tenants) reports no usage
        out = {}
        for item in metrics.get("items") or []:
            remote = self._pods.store.get(f"{self.namespace}/{item['metadata']['name']}")
            if remote is None:
                continue
            # The local pod's name from the mirror's annotations alone: every mirror, every scrape.
            ann = remote["metadata"].get("annotations") or {}
            out[(ann.get(ORIGIN_NAMESPACE, ""), ann.get(ORIGIN_NAME, ""))] = PodUsage(item.get("timestamp", ""), tuple(
                ContainerUsage(c["name"], quantity_int(c["usage"].get("cpu", 0), 10**9),
                               quantity_int(c["usage"].get("memory", 0)))
                for c in item.get("containers") or []))
        return out

    # -- ConfigMaps and Secrets --------------------------------------------------

    async def put_object(self, obj: dict, users: list[str]) -> None:
        kind = obj.get("kind") or ("Secret" if "type" in obj else "ConfigMap")
        mirrored = reflected_object(kind, obj, users, self.node_name)
        name = mirrored["metadata"]["name"]
        store = self._secrets.store if kind == "Secret" else self._configmaps.store
        current = store.get(f"{self.namespace}/{name}")
        if current is not None and _same_content(current, mirrored):
            return
        try:
            if current is None:
                await self.kube.create(kind, self.namespace, mirrored)
                return
        except errors.AlreadyExists:
            pass
        await self.kube.replace(kind, self.namespace, name, mirrored)

    async def delete_object(self, kind: str, namespace: str, name: str) -> None:
        try:
            await self.kube.delete(kind, self.namespace, remote_name(namespace, name))
        except errors.NotFound:
            pass

    def _on_copy(self, kind: str, obj: dict) -> None:
        # Level-triggered: whatever changed a copy (a write of ours that the API server committed late, after a
        # newer one, or anyone else's), its object is synced again and brought back to what its users need.
        ann = obj["metadata"].get("annotations") or {}
        if self._events is not None and ann.get(ORIGIN_NAME):
            self._events.copy_changed(obj.get("kind") or "", ann.get(ORIGIN_NAMESPACE, ""), ann[ORIGIN_NAME])

    def holds_object(self, kind: str, namespace: str, name: str) -> bool:
        store = self._secrets.store if kind == "Secret" else self._configmaps.store
        return f"{self.namespace}/{remote_name(namespace, name)}" in store

    def object_users(self) -> dict[tuple[str, str, str], list[str]]:
        out = {}
        for kind, reflector in (("ConfigMap", self._configmaps), ("Secret", self._secrets)):
            for obj in reflector.store.values():
                ann = obj["metadata"].get("annotations") or {}
                users = [u for u in ann.get(USED_BY, "").split(",") if u]
                out[(kind, ann.get(ORIGIN_NAMESPACE, ""), ann.get(ORIGIN_NAME, ""))] = users
        return out

    # -- Services ----------------------------------------------------------------

    async def put_service(self, service: dict) -> None:
        mirrored = remote_service(service, self.node_name)
        name = mirrored["metadata"]["name"]
        current = self._services.store.get(f"{self.namespace}/{name}")
        if current is None:
            try:
                await self.kube.create("Service", self.namespace, mirrored)
                return
            except errors.AlreadyExists:
                current = await self.kube.get("Service", self.namespace, name)
        if current["spec"].get("ports") != mirrored["spec"]["ports"] or \
                current["spec"].get("selector") != mirrored["spec"]["selector"]:
            await self.kube.patch("Service", self.namespace, name,
                                  {"spec": {"ports": mirrored["spec"]["ports"],
                                            "selector": mirrored["spec"]["selector"]}})

    async def delete_service(self, namespace: str, name: str) -> None:
        try:
            await self.kube.delete("Service", self.namespace, remote_name(namespace, name))
        except errors.NotFound:
            pass

    async def release_all(self) -> None:
        for kind, reflector in (("Pod", self._pods), ("ConfigMap", self._configmaps), ("Secret", self._secrets),
                                ("Service", self._services)):
            for obj in list(reflector.store.values()):
                meta = obj["metadata"]
                try:
                    await self.kube.delete(kind, self.namespace, meta["name"], uid=meta["uid"],
                                           grace_seconds=0 if kind == "Pod" else None)
                except (errors.NotFound, errors.Conflict):
                    pass
                log.info("released %s %s/%s on the provider", kind, self.namespace, meta["name"])

    def services(self) -> list[tuple[str, str]]:
        out = []
        for obj in self._services.store.values():
            ann = obj["metadata"].get("annotations") or {}
            out.append((ann.get(ORIGIN_NAMESPACE, ""), ann.get(ORIGIN_NAME, "")))
        return out

    def _on_service(self, kind: str, obj: dict) -> None:
        if kind == "DELETED" or self._events is None:
            return
        ann = obj["metadata"].get("annotations") or {}
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        self._events.service_changed(ann.get(ORIGIN_NAMESPACE, ""), ann.get(ORIGIN_NAME, ""), ingress)

    # -- Events ------------------------------------------------------------------

    def _on_event(self, kind: str, obj: dict) -> None:
        if kind == "DELETED" or self._events is None:
            return
        involved = obj.get("involvedObject") or {}
        remote = self._by_remote_name.get(involved.get("name", ""))
        if remote is None:
            return
        pod = self._remote_pod(remote)
        last = obj.get("lastTimestamp") or (obj.get("series") or {}).get("lastObservedTime") or obj.get("eventTime")
        first = obj.get("firstTimestamp") or obj.get("eventTime") or last
        self._events.pod_event(RemoteEvent(
            namespace=pod.namespace, name=pod.name, uid=pod.uid, reason=obj.get("reason", ""),
            message=obj.get("message", ""), type=obj.get("type", "Normal"),
            count=obj.get("count") or (obj.get("series") or {}).get("count") or 1,
            event_uid=obj["metadata"].get("uid", ""), first_timestamp=_seconds(first), last_timestamp=_seconds(last),
        ))

    # -- capacity ----------------------------------------------------------------

    def capacity(self) -> Capacity:
        return self._capacity

    def _on_capacity_source(self, kind: str, obj: dict) -> None:
        self._recompute_soon()

    def _on_nodes_forbidden(self, why: str) -> None:
        if why:
            log.warning("the tenant may not list the provider's Nodes (%s): the node's capacity and each "
                        "offering's room come from the ResourceQuotas of namespace %s and the catalog; products "
                        "are not shown; checked again every %.0f s", why, self.namespace, NODES_RECHECK_SECONDS)
        else:
            log.info("the tenant may list the provider's Nodes again: capacity follows them")
        self._recompute_soon()

    def _on_tenant_pod(self, kind: str, obj: dict) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        uid = meta["uid"]
        before = self._placed.pop(uid, None)
        if before is not None:
            node, wanted, origin = before
            if node:
                on_node = self._requested[node]
                for resource, amount in wanted.items():
                    on_node[resource] -= amount
            if origin:
                self._origins[origin] -= 1
                if not self._origins[origin]:
                    del self._origins[origin]
        if kind == "DELETED":
            self._waiting.pop(uid, None)
        else:
            wanted = before[1] if before is not None else pod_requests(spec)  # a pod's resources never change
            node = spec.get("nodeName") or ""
            origin = (meta.get("labels") or {}).get(ORIGIN_UID_LABEL) or ""
            self._placed[uid] = (node, wanted, origin)
            if origin:
                self._origins[origin] = self._origins.get(origin, 0) + 1
            if node:
                self._waiting.pop(uid, None)
                on_node = self._requested.setdefault(node, {})
                for resource, amount in wanted.items():
                    on_node[resource] = on_node.get(resource, Decimal(0)) + amount
            else:
                self._waiting[uid] = as_waiting((spec.get("nodeSelector") or {}).get(PROVIDER_PRODUCT_LABEL, ""),
                                                wanted)
        self._recompute_soon()

    def _recompute_soon(self) -> None:
        """Counted once for a burst of changes (a thousand pods created at once), a tenth of a second later."""
        if self._recompute is None and all(r.synced.is_set() for r in (self._nodes, self._quotas, self._tenant_pods)):
            self._recompute = asyncio.get_running_loop().call_later(0.1, self._recompute_capacity)

    def _room(self) -> ProviderRoom:
        rooms = {}
        for node in self._nodes.store.values():
            found = node_room(node)
            if found is not None:
                rooms[found.name] = found
        hard, left = quota_room(self._quotas.store.values())
        return ProviderRoom(
            nodes=tuple(with_requested(rooms[name], self._requested.get(name, {})) for name in sorted(rooms)),
            waiting=tuple(self._waiting.values()),
            quota_hard=tuple(sorted(hard.items())) if hard is not None else None,
            quota_left=tuple(sorted(left.items())) if left is not None else None,
            known=frozenset(self._origins),
            nodes_readable=not self._nodes.forbidden,
            nodes_forbidden=self._nodes.forbidden[:300],
        )

    def _recompute_capacity(self) -> None:
        self._recompute = None
        room = self._room()
        totals = {"cpu": Decimal(0), "memory": Decimal(0), GPU_RESOURCE: Decimal(0), "pods": Decimal(0)}
        for node in room.nodes:
            allocatable = dict(node.allocatable)
            for resource in totals:
                totals[resource] += allocatable.get(resource, Decimal(0))
        # A tenant's ResourceQuota, where there is one, caps what it is offered.
        hard = dict(room.quota_hard or ())
        for resource, keys in (("cpu", ("requests.cpu", "cpu", "limits.cpu")),
                               ("memory", ("requests.memory", "memory", "limits.memory")),
                               (GPU_RESOURCE, (f"requests.{GPU_RESOURCE}",)),
                               ("pods", ("pods",))):
            for key in keys:
                if key in hard:
                    totals[resource] = min(totals[resource], hard[key])
                    break
        capacity = Capacity(
            cpu=_fmt(totals["cpu"]), memory=str(int(totals["memory"])), gpus=str(int(totals[GPU_RESOURCE])),
            pods=str(int(totals["pods"])), room=room,
        )
        if capacity != self._capacity:
            self._capacity = capacity
            if self._events:
                self._events.capacity_changed(capacity)


CHANNEL_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
NODES_RECHECK_SECONDS = 60.0


def _flags(**flags: bool) -> list[tuple[str, str]]:
    return [(name, "true") for name, on in flags.items() if on]


def _seconds(timestamp: str | None) -> str:
    """An RFC 3339 time (MicroTime too) to the seconds an Event's first/lastTimestamp carry; empty if none."""
    if not timestamp or len(timestamp) < 19:
        return ""
    return timestamp[:19] + "Z"


def _fmt(cpu: Decimal) -> str:
    return str(int(cpu)) if cpu == int(cpu) else f"{int(cpu * 1000)}m"


def _same_content(current: dict, mirrored: dict) -> bool:
    if (current["metadata"].get("annotations") or {}).get(USED_BY) != mirrored["metadata"]["annotations"][USED_BY]:
        return False
    return all(current.get(f) == mirrored.get(f) for f in ("data", "binaryData"))


# What the provider's pods and Events are cached as. At 10,000 mirrors the cache is most of the runtime's memory, and
# of a provider pod only its metadata, status and what it requests are read (status translation, room, accounting);
# of an Event only what its local copy says.
_POD_SPEC_KEPT = ("nodeName", "nodeSelector", "runtimeClassName", "overhead", "restartPolicy")
_CONTAINER_KEPT = ("name", "resources", "restartPolicy")
_EVENT_KEPT = ("involvedObject", "reason", "message", "type", "count", "series", "firstTimestamp", "lastTimestamp",
               "eventTime")


def provider_pod_essentials(pod: dict) -> dict:
    """A provider pod as cached: its metadata (less managedFields), its status and, of its spec, where it runs and
    what it requests (containers and init containers by name, resources and restart policy; overhead)."""
    spec = pod.get("spec") or {}
    kept = {key: spec[key] for key in _POD_SPEC_KEPT if key in spec}
    for containers in ("containers", "initContainers"):
        if containers in spec:
            kept[containers] = [{key: c[key] for key in _CONTAINER_KEPT if key in c} for c in spec[containers]]
    pod["spec"] = kept
    return cache_form(pod)


def provider_event_essentials(event: dict) -> dict:
    """A provider Event as cached: its name, UID and resourceVersion, and what its local copy says."""
    meta = event.get("metadata") or {}
    kept = {key: event[key] for key in _EVENT_KEPT if key in event}
    kept["metadata"] = {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion") if key in meta}
    kept["kind"] = event.get("kind", "Event")
    return kept


def event_identity(event: dict) -> dict:
    """What the Events' store keeps once an Event has been handed on: its key and resourceVersion. Nothing looks a
    provider Event up again, and the tenant namespace's Events (every pod's, this node's or not) are a few per pod."""
    meta = event["metadata"]
    return {"metadata": {key: meta[key] for key in ("name", "namespace", "resourceVersion") if key in meta}}
