"""What the node advertises: capacity and allocatable from the provider's room and the node's pods. Pure.

kube-scheduler subtracts from a node's allocatable the requests (and overhead) of every unfinished pod bound to
it. So the node states allocatable such that what the scheduler has left is what the provider has left:

- each offering's `k8s.gpu/<RuntimeClass>`: what the scheduler charges the node's pods of it now (their
  overhead) plus how many more the provider can place now. A pod whose mirror is gone or finished (deleted, ended,
  lost) while the local pod is still there is left out: its room is back on the provider, and the scheduler stops
  charging it the moment the local pod goes or ends, sooner than the node's next status; counted, it would let the
  scheduler bind one pod too many in between;
- cpu, memory and nvidia.com/gpu: the provider's capacity less what admitted pods take beyond their requests
  (the class's limits a pod without resources is given on the provider, which its spec does not request), so a
  pod is never counted twice; `pods`: the provider's capacity. Where the tenant may not read the provider's
  Nodes, the four come from its ResourceQuotas and the catalog instead (`placement.quota_totals`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from decimal import Decimal

from .admission import Resources
from .catalog import GPU_RESOURCE, GPUClass
from .placement import Waiting, as_waiting, capacity, quota_totals, room
from .provider import Capacity
from .quantity import parse_quantity


@dataclasses.dataclass(frozen=True)
class PodUse:
    """One unfinished pod bound to the node."""

    uid: str
    charged: Mapping[str, Decimal]  # what the local scheduler charges it: requests, limits as requests, overhead
    offer: GPUClass | None = None  # the offering it runs as; None: refused
    takes: Resources | None = None  # what it takes on the provider; None: refused (it never runs)
    started_or_deleting: bool = False  # it ran or is being deleted: without a mirror now, it never takes room again


@dataclasses.dataclass(frozen=True)
class NodeUsage:
    pods: tuple[PodUse, ...] = ()
    offers: tuple[GPUClass, ...] = ()


def _fmt_cpu(cores: Decimal) -> str:
    return f"{int(cores * 1000)}m"


def unplaced(usage: NodeUsage, known: frozenset[str]) -> list[Waiting]:
    """Admitted pods whose mirror the provider does not list yet: they will take room, where the room of their
    offering is counted from."""
    out = []
    for pod in usage.pods:
        if pod.offer is None or pod.takes is None or pod.uid in known or pod.started_or_deleting:
            continue
        wanted = {"cpu": pod.takes.cpu, "memory": pod.takes.memory, "pods": Decimal(1)}
        if pod.takes.gpus:
            wanted[pod.offer.gpu_resource] = Decimal(pod.takes.gpus)
        out.append(as_waiting(pod.offer.gpu_product, wanted))
    return out


def node_resources(provider: Capacity, usage: NodeUsage) -> tuple[dict[str, str], dict[str, str]]:
    """(capacity, allocatable) of the node's status."""
    uncharged = {"cpu": Decimal(0), "memory": Decimal(0), GPU_RESOURCE: Decimal(0)}
    charged: dict[str, Decimal] = {}
    known = provider.room.known
    for pod in usage.pods:
        if pod.takes is not None and pod.started_or_deleting and pod.uid not in known:
            continue  # its mirror is gone or finished: it holds no room, and the scheduler is about to let it go
        for resource, amount in pod.charged.items():
            charged[resource] = charged.get(resource, Decimal(0)) + amount
        if pod.takes is None or pod.offer is None:
            continue
        gpus = pod.takes.gpus if pod.offer.gpu_resource == GPU_RESOURCE else 0
        for resource, taken in (("cpu", pod.takes.cpu), ("memory", pod.takes.memory), (GPU_RESOURCE, gpus)):
            uncharged[resource] += max(Decimal(taken) - pod.charged.get(resource, Decimal(0)), Decimal(0))
    if provider.room.nodes_readable:
        cap = {"cpu": provider.cpu, "memory": provider.memory, GPU_RESOURCE: provider.gpus, "pods": provider.pods}
        total = {resource: parse_quantity(amount) for resource, amount in cap.items()}
    else:
        total = quota_totals(provider.room, usage.offers)
        cap = {"cpu": _fmt_cpu(total["cpu"]), "memory": str(int(total["memory"])),
               GPU_RESOURCE: str(int(total[GPU_RESOURCE])), "pods": str(int(total["pods"]))}
    alloc = {
        "cpu": _fmt_cpu(max(total["cpu"] - uncharged["cpu"], Decimal(0))),
        "memory": str(int(max(total["memory"] - uncharged["memory"], Decimal(0)))),
        GPU_RESOURCE: str(int(max(total[GPU_RESOURCE] - uncharged[GPU_RESOURCE], Decimal(0)))),
        "pods": cap["pods"],
    }
    free = room(provider.room, usage.offers, unplaced(usage, known))
    most = capacity(provider.room, usage.offers)
    for offer in usage.offers:
        allocatable = int(charged.get(offer.resource, Decimal(0))) + free[offer.name]
        alloc[offer.resource] = str(allocatable)
        cap[offer.resource] = str(max(most[offer.name], allocatable))
    return cap, alloc


PRODUCTS_PREFIX = "products.k8s.gpu/"
_NOT_IN_A_KEY = re.compile(r"[^-A-Za-z0-9_.]")


def products(provider: Capacity) -> dict[str, str]:
    """The GPU products the provider has, as the node's annotations (kubectl describe node shows them):
    `products.k8s.gpu/<product>: N <resource>, ...`."""
    out = {}
    for product, resources in sorted(provider.room.products().items()):
        key = _NOT_IN_A_KEY.sub("-", product or "unlabelled").strip("-_.")[:63]
        out[PRODUCTS_PREFIX + key] = ", ".join(f"{n} {r}" for r, n in sorted(resources.items()))
    return out
