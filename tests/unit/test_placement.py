"""What the node advertises per offering: the provider's room node by node, the quota, the node's pods."""

from __future__ import annotations

from decimal import Decimal

import pytest

from k8sgpu.runtime.accounting import NodeUsage, PodUse, node_resources, products
from k8sgpu.runtime.admission import Resources
from k8sgpu.runtime.catalog import CatalogError, GPUClass, runtime_class_manifest
from k8sgpu.runtime.placement import (
    ProviderRoom,
    as_waiting,
    node_room,
    pod_requests,
    quota_room,
    room,
    with_requested,
)
from k8sgpu.runtime.provider import Capacity

GI = 1024 ** 3


def offer(name: str, product: str, gpus: int, cpu: str, memory: str, mig: str = "") -> GPUClass:
    return GPUClass.from_runtime_class(runtime_class_manifest(name, node_name="n", gpu_product=product,
                                                              gpu_count=gpus, cpu=cpu, memory=memory,
                                                              mig_profile=mig))


ONE = offer("1xa6000", "A6000", 1, "8000m", "32861620Ki")
TWO = offer("2xa6000", "A6000", 2, "16000m", "65723240Ki")
A100 = offer("1xa100", "A100", 1, "16000m", "131446480Ki")
MIG = offer("1g", "A100-SXM", 1, "4", "16Gi", mig="1g.10gb")


def node(name: str, product: str, gpus: int = 2, resource: str = "nvidia.com/gpu", **extra) -> dict:
    allocatable = {"cpu": "63", "memory": "257554212Ki", "pods": "110", resource: str(gpus), **extra}
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
            "status": {"allocatable": allocatable, "conditions": [{"type": "Ready", "status": "True"}]}}


def placed(n: dict, *pods: dict) -> object:
    total: dict[str, Decimal] = {}
    for spec in pods:
        for k, v in pod_requests(spec).items():
            total[k] = total.get(k, Decimal(0)) + v
    return with_requested(node_room(n), total)


def mirror(gpus: int, cpu: str = "8", memory: str = "32861620Ki", resource: str = "nvidia.com/gpu") -> dict:
    return {"containers": [{"name": "c", "resources": {"limits": {"cpu": cpu, "memory": memory,
                                                                  resource: str(gpus)}}}]}


def test_two_free_gpus_on_two_nodes_are_no_room_for_a_two_gpu_offering():
    provider = ProviderRoom(nodes=(placed(node("a", "A6000"), mirror(1)), placed(node("b", "A6000"), mirror(1))))
    assert room(provider, [ONE, TWO]) == {"1xa6000": 2, "2xa6000": 0}
    provider = ProviderRoom(nodes=(placed(node("a", "A6000"), mirror(1), mirror(1)), placed(node("b", "A6000"))))
    assert room(provider, [ONE, TWO]) == {"1xa6000": 2, "2xa6000": 1}


def test_memory_limits_the_room_where_gpus_would_not():
    # ~245 GiB per node, 125 GiB per pod: one each, though each node has two GPUs.
    provider = ProviderRoom(nodes=tuple(placed(node(n, "A100")) for n in "abc"))
    assert room(provider, [A100]) == {"1xa100": 3}
    busy = ProviderRoom(nodes=(placed(node("a", "A100"), mirror(1, "16", "131446480Ki")),
                               placed(node("b", "A100")), placed(node("c", "A100"))))
    assert room(busy, [A100]) == {"1xa100": 2}


def test_products_do_not_mix():
    provider = ProviderRoom(nodes=(placed(node("a", "A6000")), placed(node("b", "A100"))))
    assert room(provider, [ONE, TWO, A100]) == {"1xa6000": 2, "2xa6000": 1, "1xa100": 1}


def test_pods_not_placed_yet_take_room_first():
    provider = ProviderRoom(nodes=(placed(node("a", "A6000")),),
                            waiting=(as_waiting("A6000", pod_requests(mirror(1))),))
    assert room(provider, [ONE, TWO]) == {"1xa6000": 1, "2xa6000": 0}
    local = as_waiting("A6000", {"cpu": Decimal(8), "memory": Decimal(32 * GI), "nvidia.com/gpu": Decimal(1),
                                 "pods": Decimal(1)})
    assert room(provider, [ONE], [local]) == {"1xa6000": 0}


def test_the_tenant_quota_caps_the_room():
    hard, left = quota_room([{"spec": {"hard": {"requests.nvidia.com/gpu": "3", "pods": "10"}},
                              "status": {"hard": {"requests.nvidia.com/gpu": "3", "pods": "10"},
                                         "used": {"requests.nvidia.com/gpu": "2", "pods": "2"}}}])
    provider = ProviderRoom(nodes=(placed(node("a", "A6000")), placed(node("b", "A6000"))),
                            quota_hard=tuple(hard.items()), quota_left=tuple(left.items()))
    assert room(provider, [ONE, TWO]) == {"1xa6000": 1, "2xa6000": 0}
    local = as_waiting("A6000", {"nvidia.com/gpu": Decimal(1), "pods": Decimal(1)})
    assert room(provider, [ONE], [local]) == {"1xa6000": 0}


def test_unready_cordoned_and_gpu_less_nodes_give_no_room():
    cordoned = node("a", "A6000")
    cordoned["spec"] = {"unschedulable": True}
    unready = node("b", "A6000")
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    plain = node("c", "A6000", gpus=0)
    assert [node_room(n) for n in (cordoned, unready, plain)] == [None, None, None]


def test_mig_slices_are_their_own_resource():
    mig_node = node("m", "A100-SXM", gpus=7, resource="nvidia.com/mig-1g.10gb", **{"nvidia.com/mig-3g.40gb": "2"})
    provider = ProviderRoom(nodes=(placed(mig_node, mirror(1, "4", "16Gi", "nvidia.com/mig-1g.10gb")),))
    assert MIG.gpu_resource == "nvidia.com/mig-1g.10gb"
    assert room(provider, [MIG]) == {"1g": 6}
    assert provider.products() == {"A100-SXM": {"nvidia.com/mig-1g.10gb": 7, "nvidia.com/mig-3g.40gb": 2}}


def test_pod_requests_count_limits_init_containers_and_overhead():
    spec = {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2",
                                                                                            "memory": "1Gi"}}},
                           {"name": "b", "resources": {"requests": {"cpu": "500m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "4"}}}],
            "overhead": {"k8s.gpu/x": "1"}}
    assert pod_requests(spec) == {"cpu": Decimal(4), "memory": Decimal(GI), "k8s.gpu/x": Decimal(1),
                                  "pods": Decimal(1)}


def capacity(nodes) -> Capacity:
    return Capacity("126", str(2 * 257554212 * 1024), "4", "220", room=ProviderRoom(nodes=tuple(nodes)))


def test_allocatable_of_an_offering_is_what_its_pods_are_charged_plus_the_room():
    provider = capacity([placed(node("a", "A6000"), mirror(1)), placed(node("b", "A6000"), mirror(1))])
    running = [PodUse(f"u{i}", {"k8s.gpu/1xa6000": Decimal(1), "pods": Decimal(1)}, ONE,
                      Resources(Decimal(8), Decimal(32861620 * 1024), 1)) for i in range(2)]
    known = provider.room.__class__(nodes=provider.room.nodes, known=frozenset({"u0", "u1"}))
    provider = Capacity(provider.cpu, provider.memory, provider.gpus, provider.pods, room=known)
    cap, alloc = node_resources(provider, NodeUsage(tuple(running), (ONE, TWO)))
    assert alloc["k8s.gpu/1xa6000"] == "4" and alloc["k8s.gpu/2xa6000"] == "0"
    assert cap["k8s.gpu/1xa6000"] == "4" and cap["k8s.gpu/2xa6000"] == "2"
    # The class's limits the pods were given on the provider, which the scheduler does not charge, are taken.
    assert alloc["cpu"] == "110000m" and alloc["nvidia.com/gpu"] == "2" and alloc["pods"] == "220"


def test_a_pod_with_requests_is_not_counted_twice_and_a_refused_one_takes_nothing():
    provider = capacity([placed(node("a", "A6000"))])
    explicit = PodUse("e", {"cpu": Decimal(5), "memory": Decimal(9 * GI), "nvidia.com/gpu": Decimal(2),
                            "k8s.gpu/2xa6000": Decimal(1), "pods": Decimal(1)}, TWO,
                      Resources(Decimal(5), Decimal(9 * GI), 2))
    refused = PodUse("r", {"cpu": Decimal(12), "k8s.gpu/1xa6000": Decimal(1), "pods": Decimal(1)})
    provider = Capacity(provider.cpu, provider.memory, provider.gpus, provider.pods,
                        room=ProviderRoom(nodes=provider.room.nodes, known=frozenset()))
    cap, alloc = node_resources(provider, NodeUsage((explicit, refused), (ONE, TWO)))
    assert alloc["cpu"] == "126000m" and alloc["nvidia.com/gpu"] == "4"
    # The explicit pod has no mirror yet: it takes its two GPUs from the room; the refused one is only charged.
    assert alloc["k8s.gpu/2xa6000"] == "1" and alloc["k8s.gpu/1xa6000"] == "1"


def test_products_annotation_names_each_product_and_resource():
    provider = capacity([placed(node("a", "A6000")), placed(node("b", "A6000")), placed(node("c", "A100"))])
    assert products(provider) == {"products.k8s.gpu/A100": "2 nvidia.com/gpu",
                                  "products.k8s.gpu/A6000": "4 nvidia.com/gpu"}


def test_catalog_refuses_names_too_long_for_a_resource_and_bad_mig_profiles():
    with pytest.raises(CatalogError, match="at most 63 characters"):
        offer("x" * 64, "A6000", 1, "1", "1Gi")
    with pytest.raises(CatalogError, match="gpu.k8s.gpu/mig-profile '1g' is not a MIG profile"):
        offer("m", "A100", 1, "1", "1Gi", mig="1g")
    assert runtime_class_manifest("a", node_name="n", gpu_product="p", gpu_count=1, cpu="1", memory="1Gi")[
        "overhead"] == {"podFixed": {"k8s.gpu/a": "1"}}


def test_a_pod_whose_mirror_is_gone_is_neither_charged_nor_reserved():
    # The mirror of a deleted (or finished) pod is gone from the provider: its room is back, and the local pod is
    # about to go; counting its charge would let the scheduler bind one pod too many once it goes.
    provider = capacity([placed(node("a", "A6000"), mirror(1))])
    ran = PodUse("gone", {"k8s.gpu/1xa6000": Decimal(1), "pods": Decimal(1)}, ONE,
                 Resources(Decimal(8), Decimal(32861620 * 1024), 1), started_or_deleting=True)
    cap, alloc = node_resources(provider, NodeUsage((ran,), (ONE,)))
    assert alloc["k8s.gpu/1xa6000"] == "1"
    # Not started and without a mirror yet: it will take room, and the scheduler charges it.
    new = PodUse("new", ran.charged, ONE, ran.takes)
    cap, alloc = node_resources(provider, NodeUsage((new,), (ONE,)))
    assert alloc["k8s.gpu/1xa6000"] == "1"  # charged 1 + room 0 (its GPU set aside)


def _tenant_pod(uid: str, node_name: str = "", origin: str = "", cpu: str = "1") -> dict:
    return {"metadata": {"uid": uid, "name": uid, "namespace": "tenant",
                         "labels": {"k8sgpu.io/origin-uid": origin} if origin else {}},
            "spec": {"nodeName": node_name, "nodeSelector": {"nvidia.com/gpu.product": "A6000"},
                     "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}}


def test_the_providers_room_follows_its_tenant_pods_event_by_event():
    """The room is kept per event (never a walk of every tenant pod): a pod waits, is placed, is re-listed
    unchanged, goes; what the nodes hold, what waits and the mirrors known are the pods' own at each step."""
    from types import SimpleNamespace

    from k8sgpu.runtime.provider.remote import RemoteClusterProvider

    provider = RemoteClusterProvider(SimpleNamespace(name="provider"), "tenant", "k8s.gpu", "127.0.0.1")
    provider._nodes.store = {"/a": node("a", "A6000"), "/b": node("b", "A6000")}

    def requested(name: str) -> dict:
        return dict(next(n for n in provider._room().nodes if n.name == name).requested)

    provider._on_tenant_pod("ADDED", _tenant_pod("p1", origin="o1"))
    provider._on_tenant_pod("ADDED", _tenant_pod("p2", "a", origin="o2", cpu="2"))
    room_now = provider._room()
    assert [w.product for w in room_now.waiting] == ["A6000"] and room_now.known == {"o1", "o2"}
    assert requested("a") == {"cpu": Decimal(2), "memory": Decimal(GI), "pods": Decimal(1)} and requested("b") == {}
    provider._on_tenant_pod("MODIFIED", _tenant_pod("p1", "a", origin="o1"))
    provider._on_tenant_pod("MODIFIED", _tenant_pod("p1", "a", origin="o1"))  # a status change: counted once
    assert provider._room().waiting == () and requested("a") == {"cpu": Decimal(3), "memory": Decimal(2 * GI),
                                                                 "pods": Decimal(2)}
    provider._on_tenant_pod("DELETED", _tenant_pod("p2", "a", origin="o2", cpu="2"))
    assert requested("a") == {"cpu": Decimal(1), "memory": Decimal(GI), "pods": Decimal(1)}
    assert provider._room().known == {"o1"}
    provider._on_tenant_pod("DELETED", _tenant_pod("p1", "a", origin="o1"))
    assert requested("a") == {} and provider._room().known == frozenset()
