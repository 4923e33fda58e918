"""How many more pods of each offering the provider can place now. Pure functions over plain values; no API.

The provider's scheduler places a mirror on one node: a 2-GPU offering needs two free GPUs of its product on
one node, with its cpu and memory beside them, and the tenant's ResourceQuota must have room for it too. So the
room of an offering is counted node by node, from each node's allocatable less what the tenant's pods placed on
it request, after the pods that will take room but are not placed yet (mirrors the provider's scheduler has not
placed, local pods whose mirror is not created yet) are set on the nodes where they fit.

A tenant that may not read the provider's Nodes (RBAC confined to its namespace) sees no node: then the room of
an offering is what its ResourceQuotas have left (hard less used) counted in pods of the offering, and the node's
cpu, memory, GPUs and pods are the quota's hard limits, or, for one the quota does not limit, what the offering
taking most of it could use of the quota's room (`quota_totals`). Without a quota that bounds an offering there is
nothing to count its room from, and it gets none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from decimal import Decimal

from .catalog import GPU_RESOURCE, PROVIDER_PRODUCT_LABEL, GPUClass
from .quantity import parse_quantity

Amounts = Mapping[str, Decimal]


def _frozen(amounts: Mapping[str, Decimal]) -> tuple[tuple[str, Decimal], ...]:
    return tuple(sorted((k, v) for k, v in amounts.items() if v))


@dataclasses.dataclass(frozen=True)
class NodeRoom:
    """One provider node that serves the tenant: what it has for pods and what the tenant's placed pods take."""

    name: str
    product: str  # its nvidia.com/gpu.product label
    allocatable: tuple[tuple[str, Decimal], ...]
    requested: tuple[tuple[str, Decimal], ...] = ()

    def free(self) -> dict[str, Decimal]:
        free = dict(self.allocatable)
        for resource, amount in self.requested:
            free[resource] = free.get(resource, Decimal(0)) - amount
        return free


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A pod that will take room on a node of ``product`` but has none yet."""

    product: str
    requests: tuple[tuple[str, Decimal], ...]


@dataclasses.dataclass(frozen=True)
class ProviderRoom:
    """The provider as its tenant sees it, at one moment."""

    nodes: tuple[NodeRoom, ...] = ()
    waiting: tuple[Waiting, ...] = ()  # the tenant's pods the provider's scheduler has not placed
    quota_hard: tuple[tuple[str, Decimal], ...] | None = None  # the tightest of the tenant's ResourceQuotas
    quota_left: tuple[tuple[str, Decimal], ...] | None = None  # hard less used
    known: frozenset[str] = frozenset()  # origin UIDs of the mirrors in the tenant namespace, placed or not
    nodes_readable: bool = True  # False: the tenant may not list the provider's Nodes; room comes from its quota
    nodes_forbidden: str = ""  # the provider's answer when they are not readable

    def products(self) -> dict[str, dict[str, int]]:
        """GPU product → GPU resource (nvidia.com/gpu, nvidia.com/mig-*) → how many the nodes have."""
        out: dict[str, dict[str, int]] = {}
        for node in self.nodes:
            for resource, amount in node.allocatable:
                if resource.startswith("nvidia.com/") and amount > 0:
                    per = out.setdefault(node.product, {})
                    per[resource] = per.get(resource, 0) + int(amount)
        return out


def node_room(node: dict) -> NodeRoom | None:
    """A provider Node as room for the tenant's pods; None for one that serves no GPU pods (no GPUs or MIG slices,
    cordoned, not Ready)."""
    status = node.get("status") or {}
    allocatable = {k: parse_quantity(v) for k, v in (status.get("allocatable") or {}).items()}
    if not any(k.startswith("nvidia.com/") and v > 0 for k, v in allocatable.items()):
        return None
    if (node.get("spec") or {}).get("unschedulable"):
        return None
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    if ready and ready[0].get("status") != "True":
        return None
    labels = (node.get("metadata") or {}).get("labels") or {}
    return NodeRoom(node["metadata"]["name"], labels.get(PROVIDER_PRODUCT_LABEL, ""), _frozen(allocatable))


def pod_requests(spec: dict) -> dict[str, Decimal]:
    """What the scheduler charges a pod: the sum of its containers' requests (limits where a request is absent,
    as the API defaults them), at least each init container's, plus its overhead; one `pods`."""
    def requests(container: dict) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {k: parse_quantity(v) for k, v in merged.items()}

    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for resource, amount in requests(container).items():
            total[resource] = total.get(resource, Decimal(0)) + amount
    for container in spec.get("initContainers") or []:
        for resource, amount in requests(container).items():
            total[resource] = max(total.get(resource, Decimal(0)), amount)
    for resource, amount in (spec.get("overhead") or {}).items():
        total[resource] = total.get(resource, Decimal(0)) + parse_quantity(amount)
    total["pods"] = Decimal(1)
    return total


def quota_room(quotas: Iterable[dict]) -> tuple[dict[str, Decimal] | None, dict[str, Decimal] | None]:
    """(hard, hard less used) of the tenant's ResourceQuotas, the tightest per key; (None, None) without any."""
    hard: dict[str, Decimal] = {}
    left: dict[str, Decimal] = {}
    found = False
    for quota in quotas:
        found = True
        status = quota.get("status") or {}
        limits = status.get("hard") or (quota.get("spec") or {}).get("hard") or {}
        used = status.get("used") or {}
        for key, value in limits.items():
            amount = parse_quantity(value)
            rest = amount - parse_quantity(used.get(key, 0))
            hard[key] = min(hard.get(key, amount), amount)
            left[key] = min(left.get(key, rest), rest)
    return (hard, left) if found else (None, None)


def demand(offer: GPUClass) -> dict[str, Decimal]:
    """What one pod of the offering takes on the provider: its class's limits (what a pod that declares nothing
    gets, and the most an admitted pod may ask), its GPUs and one pod."""
    out = {"cpu": Decimal(str(offer.cpu_limit)), "memory": Decimal(offer.memory_limit), "pods": Decimal(1)}
    if offer.gpu_count:
        out[offer.gpu_resource] = Decimal(offer.gpu_count)
    return out


def _fits(free: Amounts, wanted: Amounts) -> int:
    counts = [int(free.get(resource, Decimal(0)) // amount) for resource, amount in wanted.items() if amount > 0]
    return max(min(counts), 0) if counts else 0


def _quota_keys(resource: str) -> tuple[str, ...]:
    if resource == "pods":
        return ("pods", "count/pods")
    if resource in ("cpu", "memory"):
        return (f"requests.{resource}", resource, f"limits.{resource}")
    return (f"requests.{resource}",)


def _quota_fits(left: Amounts | None, wanted: Amounts) -> int | None:
    if left is None:
        return None
    counts = [int(left[key] // amount) for resource, amount in wanted.items() if amount > 0
              for key in _quota_keys(resource) if key in left]
    return max(min(counts), 0) if counts else None


def _take(amounts: dict[str, Decimal], wanted: Amounts, keys=lambda r: (r,)) -> None:
    for resource, amount in wanted.items():
        for key in keys(resource):
            if key in amounts:
                amounts[key] -= amount


def room(provider: ProviderRoom, offers: Iterable[GPUClass], unplaced: Iterable[Waiting] = ()) -> dict[str, int]:
    """Offering name → how many more of its pods the provider can place now. ``unplaced`` are local pods that
    will take room but whose mirror the provider does not know yet (they count against the quota too)."""
    quota = dict(provider.quota_left) if provider.quota_left is not None else None
    local = list(unplaced)
    if not provider.nodes_readable:
        return _quota_room(quota, offers, local)
    free = [(node.product, node.free()) for node in provider.nodes]
    for pod in [*provider.waiting, *local]:
        wanted = dict(pod.requests)
        for product, amounts in free:
            if product == pod.product and _fits(amounts, wanted):
                _take(amounts, wanted)
                break
    if quota is not None:
        for pod in local:
            _take(quota, dict(pod.requests), _quota_keys)
    out = {}
    for offer in offers:
        wanted = demand(offer)
        count = sum(_fits(amounts, wanted) for product, amounts in free if product == offer.gpu_product)
        capped = _quota_fits(quota, wanted)
        out[offer.name] = count if capped is None else min(count, capped)
    return out


def _quota_room(quota: dict[str, Decimal] | None, offers: Iterable[GPUClass], local: list[Waiting]) -> dict[str, int]:
    """Without the provider's Nodes: what the quota has left, less the local pods not mirrored yet (the
    provider's own unplaced mirrors are in the quota's `used` already)."""
    if quota is not None:
        for pod in local:
            _take(quota, dict(pod.requests), _quota_keys)
    return {offer.name: _quota_fits(quota, demand(offer)) or 0 for offer in offers}


def capacity(provider: ProviderRoom, offers: Iterable[GPUClass]) -> dict[str, int]:
    """Offering name → how many of its pods the provider could run with none of the tenant's pods running."""
    empty = ProviderRoom(nodes=tuple(dataclasses.replace(n, requested=()) for n in provider.nodes),
                         quota_left=provider.quota_hard, nodes_readable=provider.nodes_readable)
    return room(empty, offers)


TOTALS = ("cpu", "memory", GPU_RESOURCE, "pods")


def quota_totals(provider: ProviderRoom, offers: Iterable[GPUClass]) -> dict[str, Decimal]:
    """The node's cpu, memory, nvidia.com/gpu and pods when the provider's Nodes cannot be read: each the quota's
    hard limit of it, else as much of it as the offering taking most could use with the whole quota (its
    `capacity` in pods times what one pod takes); 0 where nothing bounds it."""
    hard = dict(provider.quota_hard or ())
    most = capacity(provider, offers)
    out = {}
    for resource in TOTALS:
        key = next((k for k in _quota_keys(resource) if k in hard), None)
        if key is not None:
            out[resource] = max(hard[key], Decimal(0))
            continue
        out[resource] = max((most[offer.name] * demand(offer).get(resource, Decimal(0)) for offer in offers),
                            default=Decimal(0))
    return out


def as_waiting(product: str, requests: Amounts) -> Waiting:
    return Waiting(product, _frozen(requests))


def with_requested(node: NodeRoom, requested: Amounts) -> NodeRoom:
    return dataclasses.replace(node, requested=_frozen(requested))
