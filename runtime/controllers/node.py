"""The node: registration, status (on change and at least every minute), and its Lease."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable

from .. import __version__, errors
from ..accounting import PRODUCTS_PREFIX, NodeUsage, node_resources, products
from ..config import TAINT_KEY, TAINT_VALUE, NodeConfig
from ..kube import Kube
from ..metrics import Metrics
from ..provider import Capacity

log = logging.getLogger(__name__)

PROVIDER_CONDITION = "ProviderReachable"
CERTIFICATE_CONDITION = "KubeletServingCertificate"
PARTS_CONDITION = "RuntimePartsRunning"
NODES_CONDITION = "ProviderNodesReadable"
KUBELET_VERSION = f"v1.32.13-k8sgpu-{__version__}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ts(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_labels(name: str) -> dict[str, str]:
    """Labels NodeRestriction lets a node set on itself."""
    return {
        "type": "virtual-kubelet",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/exclude-from-external-load-balancers": "true",
        "kubernetes.azure.com/managed": "false",
        "k8sgpu.io/virtual-node": "true",
    }


def capacity_source(capacity: Capacity) -> tuple[bool, str, str]:
    """The ProviderNodesReadable condition: whether capacity and room follow the provider's Nodes or, for a tenant
    that may not list them, its ResourceQuotas."""
    room = capacity.room
    if room.nodes_readable:
        return True, "NodesListed", "capacity and each offering's room follow the provider's GPU nodes"
    why = f"the tenant may not list the provider's Nodes ({room.nodes_forbidden[:200]})"
    if room.quota_hard is None:
        return False, "NoNodesNoQuota", (f"{why} and has no ResourceQuota: the node offers no room; give the "
                                         "tenant a ResourceQuota, or get/list/watch on nodes")
    return False, "CapacityFromQuota", (f"{why}: capacity and each offering's room come from its ResourceQuotas "
                                        "(hard less used) and the catalog; no products are shown; get/list/watch "
                                        "on nodes gives room node by node")


class NodeController:
    """Keeps the Node object and its Lease true. ``used()`` returns the node's unfinished pods and the catalog
    (from the pod controller); capacity and allocatable follow from them and the provider's room
    (`k8sgpu.runtime.accounting`)."""

    def __init__(self, kube: Kube, config: NodeConfig, address: str, used: Callable[[], NodeUsage],
                 clock: Callable[[], datetime.datetime] = _now, metrics: Metrics | None = None):
        self.kube, self.config, self.address = kube, config, address
        self.used = used
        self.clock = clock
        self.capacity = Capacity("0", "0", "0", "0")
        self.provider_reachable = True
        self.provider_why = ""
        self._reachable_gauge = metrics.provider_reachable if metrics is not None else None
        self.certificate: tuple[bool, str, str] = (False, "Requested", "the kubelet API's serving certificate is "
                                                                       "being requested")
        self.failed_part: tuple[str, str] | None = None  # (name, why) of a part the runtime gave up on
        self._changed = asyncio.Event()
        self._last_status: dict | None = None
        self._products: dict[str, str] | None = None
        self._transitions: dict[str, str] = {}
        self._uid = ""
        self.ready = asyncio.Event()

    # -- what others tell it ---------------------------------------------------

    def set_capacity(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._changed.set()

    def set_provider_reachable(self, reachable: bool, why: str) -> None:
        if reachable != self.provider_reachable:
            log.warning("provider %s%s", "reachable again" if reachable else "unreachable: ", why)
        self.provider_reachable, self.provider_why = reachable, why
        if self._reachable_gauge is not None:
            self._reachable_gauge.set(1 if reachable else 0)
        self._changed.set()

    def set_serving_certificate(self, ok: bool, reason: str, message: str) -> None:
        self.certificate = (ok, reason, message)
        self._changed.set()

    def pods_changed(self) -> None:
        self._changed.set()

    def set_part_failed(self, name: str, why: str) -> None:
        """A long-running part kept failing and the runtime stops: the node says which, and is not Ready."""
        self.failed_part = (name, why)
        self._changed.set()

    # -- registration ----------------------------------------------------------------

    async def register(self) -> None:
        name = self.config.name
        try:
            node = await self.kube.get("Node", None, name)
        except errors.NotFound:
            node = None
        if node is None:
            manifest = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": node_labels(name)},
                "spec": {
                    "providerID": f"k8sgpu://{name}",
                    # NodeRestriction lets a node set taints only when it creates itself.
                    "taints": [{"key": TAINT_KEY, "value": TAINT_VALUE, "effect": "NoSchedule"}],
                },
            }
            try:
                node = await self.kube.create("Node", None, manifest)
                log.info("registered node %s", name)
            except errors.AlreadyExists:
                node = await self.kube.get("Node", None, name)
        else:
            missing = {k: v for k, v in node_labels(name).items() if node["metadata"].get("labels", {}).get(k) != v}
            if missing:
                await self.kube.patch("Node", None, name, {"metadata": {"labels": missing}})
            log.info("node %s already registered; taking it over", name)
        self._uid = node["metadata"]["uid"]
        await self.write_status(force=True)
        self.ready.set()

    # -- status ----------------------------------------------------------------------

    def _condition(self, kind: str, status: bool, reason: str, message: str, now: str) -> dict:
        value = "True" if status else "False"
        key = f"{kind}={value}"
        if not self._transitions.get(kind, "").startswith(key):
            self._transitions[kind] = f"{key}@{now}"
        return {"type": kind, "status": value, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": self._transitions[kind].split("@", 1)[1]}

    def desired_status(self) -> dict:
        now = _ts(self.clock())
        capacity, allocatable = node_resources(self.capacity, self.used())
        reachable = self.provider_reachable
        failed = self.failed_part
        parts = (self._condition(PARTS_CONDITION, False, "PartFailed",
                                 f"{failed[0]} kept failing ({failed[1][:200]}); the runtime exits for its "
                                 "Deployment to restart it", now) if failed else
                 self._condition(PARTS_CONDITION, True, "AllPartsRunning",
                                 "every long-running part of the runtime runs", now))
        conditions = [
            self._condition("Ready", False, "RuntimePartFailed", f"{failed[0]} kept failing; the runtime "
                            "restarts", now) if failed else
            self._condition("Ready", True, "KubeletReady", "k8sgpu runtime is posting ready status; pods run on "
                            "the GPU provider", now),
            parts,
            self._condition(PROVIDER_CONDITION, reachable,
                            "ProviderAPIReachable" if reachable else "ProviderAPIUnreachable",
                            "the GPU provider's API answers" if reachable else
                            f"the GPU provider's API does not answer; pods keep their last status: "
                            f"{self.provider_why[:200]}", now),
            self._condition(NODES_CONDITION, *capacity_source(self.capacity), now),
            self._condition(CERTIFICATE_CONDITION, *self.certificate, now),
            self._condition("MemoryPressure", False, "KubeletHasSufficientMemory", "remote node", now),
            self._condition("DiskPressure", False, "KubeletHasNoDiskPressure", "remote node", now),
            self._condition("PIDPressure", False, "KubeletHasSufficientPID", "remote node", now),
        ]
        return {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": self.address},
                          {"type": "Hostname", "address": self.config.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.config.kubelet_port}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "k8sgpu",
                "containerRuntimeVersion": f"k8sgpu://{__version__}", "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }

    @staticmethod
    def _without_heartbeats(status: dict) -> dict:
        out = dict(status)
        out["conditions"] = [{k: v for k, v in c.items() if k != "lastHeartbeatTime"} for c in status["conditions"]]
        return out

    async def write_status(self, force: bool = False) -> bool:
        status = self.desired_status()
        comparable = self._without_heartbeats(status)
        if not force and comparable == self._last_status:
            return False
        found = products(self.capacity)
        if found != self._products:
            # One annotation per GPU product the provider has; a product gone takes its annotation with it. Written
            # before the status, so that a node whose capacity shows the products also names them.
            node = await self.kube.get("Node", None, self.config.name)
            gone = [k for k in (node["metadata"].get("annotations") or {}) if k.startswith(PRODUCTS_PREFIX)]
            await self.kube.patch("Node", None, self.config.name,
                                  {"metadata": {"annotations": {**dict.fromkeys(gone), **found}}})
            self._products = found
        patch = dict(status)
        for field in ("capacity", "allocatable"):
            # An offering whose RuntimeClass went: null removes its resource from the map.
            gone = set((self._last_status or {}).get(field) or ()) - set(status[field])
            patch[field] = {**status[field], **dict.fromkeys(gone)}
        await self.kube.patch("Node", None, self.config.name, {"status": patch}, subresource="status",
                              patch_type="strategic")
        self._last_status = comparable
        return True

    async def status_loop(self) -> None:
        """Write status when something changed (at most once a second) and every status_update_seconds."""
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=self.config.status_update_seconds)
                changed_only = True
            except TimeoutError:
                changed_only = False
            self._changed.clear()
            try:
                await self.write_status(force=not changed_only)
            except errors.KubeError as exc:
                log.warning("writing node status failed: %s", exc)
                self._changed.set()
            await asyncio.sleep(1.0)

    # -- Lease -------------------------------------------------------------------------

    async def renew_lease(self) -> None:
        name = self.config.name
        now = self.clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": name, "leaseDurationSeconds": self.config.lease_duration_seconds,
                "renewTime": now}
        try:
            lease = await self.kube.get("Lease", "kube-node-lease", name)
        except errors.NotFound:
            try:
                await self.kube.create("Lease", "kube-node-lease", {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "ownerReferences": self._lease_owners()},
                    "spec": spec,
                })
                return
            except errors.AlreadyExists:
                lease = await self.kube.get("Lease", "kube-node-lease", name)
        lease["spec"].update(spec)
        if self._uid and not lease["metadata"].get("ownerReferences"):
            lease["metadata"]["ownerReferences"] = self._lease_owners()
        await self.kube.replace("Lease", "kube-node-lease", name, lease)

    def _lease_owners(self) -> list[dict]:
        # Like a kubelet's Lease: garbage-collected with the Node.
        if not self._uid:
            return []
        return [{"apiVersion": "v1", "kind": "Node", "name": self.config.name, "uid": self._uid}]

    async def lease_loop(self) -> None:
        while True:
            try:
                await self.renew_lease()
            except errors.KubeError as exc:
                log.warning("renewing node lease failed: %s", exc)
            await asyncio.sleep(self.config.lease_renew_seconds)
