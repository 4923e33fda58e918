"""A tenant that may not read the provider's Nodes: capacity and room from its ResourceQuotas and the catalog."""

from __future__ import annotations

from decimal import Decimal

from k8sgpu.runtime.accounting import NodeUsage, PodUse, node_resources, products
from k8sgpu.runtime.admission import Resources
from k8sgpu.runtime.catalog import GPUClass, runtime_class_manifest
from k8sgpu.runtime.controllers.node import capacity_source
from k8sgpu.runtime.placement import ProviderRoom, as_waiting, capacity, quota_room, quota_totals, room
from k8sgpu.runtime.provider import Capacity

GI = 1024 ** 3
KI = 1024


def offer(name: str, product: str, gpus: int, cpu: str, memory: str, mig: str = "") -> GPUClass:
    return GPUClass.from_runtime_class(runtime_class_manifest(name, node_name="n", gpu_product=product,
                                                              gpu_count=gpus, cpu=cpu, memory=memory,
                                                              mig_profile=mig))


ONE = offer("1xa6000", "A6000", 1, "8000m", "32861620Ki")
TWO = offer("2xa6000", "A6000", 2, "16000m", "65723240Ki")
A100 = offer("1xa100", "A100", 1, "16000m", "131446480Ki")
MIG = offer("1g", "A100-SXM", 1, "4", "16Gi", mig="1g.10gb")
OFFERS = (ONE, TWO, A100, MIG)


def unreadable(*quotas: dict, known: frozenset[str] = frozenset()) -> ProviderRoom:
    hard, left = quota_room(quotas)
    return ProviderRoom(quota_hard=tuple(hard.items()) if hard is not None else None,
                        quota_left=tuple(left.items()) if left is not None else None, known=known,
                        nodes_readable=False, nodes_forbidden='nodes is forbidden: User "tenant" cannot list')


def quota(hard: dict[str, str], used: dict[str, str]) -> dict:
    return {"spec": {"hard": hard}, "status": {"hard": hard, "used": used}}


FULL = quota({"requests.nvidia.com/gpu": "6", "pods": "20", "requests.cpu": "64", "requests.memory": "512Gi"},
             {"requests.nvidia.com/gpu": "2", "pods": "3", "requests.cpu": "16", "requests.memory": "64Gi"})


def test_the_room_of_each_offering_is_what_the_quota_has_left_in_its_pods():
    # Left: 4 GPUs, 17 pods, 48 cpu, 448 GiB. No node is seen, so products and GPUs per node do not count.
    provider = unreadable(FULL)
    assert room(provider, OFFERS) == {"1xa6000": 4, "2xa6000": 2, "1xa100": 3, "1g": 12}
    # With none of the tenant's pods running: the hard limits.
    assert capacity(provider, OFFERS) == {"1xa6000": 6, "2xa6000": 3, "1xa100": 4, "1g": 16}


def test_local_pods_without_a_mirror_take_from_the_quota_first():
    local = as_waiting("A6000", {"cpu": Decimal(8), "memory": Decimal(32861620 * KI), "nvidia.com/gpu": Decimal(1),
                                 "pods": Decimal(1)})
    assert room(unreadable(FULL), [ONE, TWO], [local]) == {"1xa6000": 3, "2xa6000": 1}


def test_the_tightest_quota_wins_and_a_full_one_gives_no_room():
    full = quota({"count/pods": "5"}, {"count/pods": "5"})
    assert room(unreadable(FULL, full), OFFERS) == dict.fromkeys(("1xa6000", "2xa6000", "1xa100", "1g"), 0)


def test_an_offering_the_quota_does_not_bound_gets_no_room_and_without_a_quota_none_does():
    gpus_only = quota({"requests.nvidia.com/gpu": "4"}, {})
    # The MIG offering takes nvidia.com/mig-1g.10gb, cpu, memory and a pod, none of which this quota limits.
    assert room(unreadable(gpus_only), OFFERS) == {"1xa6000": 4, "2xa6000": 2, "1xa100": 4, "1g": 0}
    assert room(unreadable(), OFFERS) == dict.fromkeys(("1xa6000", "2xa6000", "1xa100", "1g"), 0)


def test_totals_are_the_quota_hard_limits_else_what_the_largest_offering_could_use():
    assert quota_totals(unreadable(FULL), OFFERS) == {"cpu": Decimal(64), "memory": Decimal(512 * GI),
                                                      "nvidia.com/gpu": Decimal(6), "pods": Decimal(20)}
    # Only GPUs limited: 4 of the A100 offering take the most cpu (64) and memory; each is one pod.
    assert quota_totals(unreadable(quota({"requests.nvidia.com/gpu": "4"}, {})), OFFERS) == {
        "cpu": Decimal(64), "memory": Decimal(4 * 131446480 * KI), "nvidia.com/gpu": Decimal(4),
        "pods": Decimal(4)}
    assert quota_totals(unreadable(), OFFERS) == dict.fromkeys(("cpu", "memory", "nvidia.com/gpu", "pods"),
                                                               Decimal(0))


def test_node_resources_from_the_quota_and_no_products():
    provider = Capacity("0", "0", "0", "0", room=unreadable(FULL, known=frozenset({"u0"})))
    # One pod of the offering runs (its mirror is known, so it is in the quota's `used`), given the class's
    # limits on the provider beyond what the local scheduler charges it.
    running = PodUse("u0", {"k8s.gpu/1xa6000": Decimal(1), "pods": Decimal(1)}, ONE,
                     Resources(Decimal(8), Decimal(32861620 * KI), 1))
    cap, alloc = node_resources(provider, NodeUsage((running,), (ONE, TWO)))
    assert {k: cap[k] for k in ("cpu", "memory", "nvidia.com/gpu", "pods")} == {
        "cpu": "64000m", "memory": str(512 * GI), "nvidia.com/gpu": "6", "pods": "20"}
    assert alloc["cpu"] == "56000m" and alloc["nvidia.com/gpu"] == "5" and alloc["pods"] == "20"
    # Its own pod is charged again on top of the quota's room (the scheduler subtracts it).
    assert alloc["k8s.gpu/1xa6000"] == "5" and cap["k8s.gpu/1xa6000"] == "6"
    assert alloc["k8s.gpu/2xa6000"] == "2" and cap["k8s.gpu/2xa6000"] == "3"
    assert products(provider) == {}


def test_the_node_condition_says_where_capacity_comes_from():
    assert capacity_source(Capacity("1", "1", "1", "1"))[:2] == (True, "NodesListed")
    ok, reason, message = capacity_source(Capacity("0", "0", "0", "0", room=unreadable(FULL)))
    assert (ok, reason) == (False, "CapacityFromQuota")
    assert "cannot list" in message and "ResourceQuotas" in message
    ok, reason, message = capacity_source(Capacity("0", "0", "0", "0", room=unreadable()))
    assert (ok, reason) == (False, "NoNodesNoQuota") and "offers no room" in message
