"""What must hold between the local cluster and the provider once the virtual node has caught up.

`InvariantChecker` reads both clusters with the official kubernetes client and returns every violation as a
line a person can read; `converge` polls it until there is none. What it checks, for one node:

* each live local pod bound to the node (not finished, not being deleted) that admission accepts has exactly one
  mirror in the tenant namespace, named and labelled for its UID, made from its current spec (images, commands,
  args, env, envFrom, resources, placement) and carrying its current labels and annotations; the local pod's phase
  is the mirror's;
* no mirror without a local pod of its UID (a finished pod keeps its mirror, for its logs);
* each ConfigMap and Secret a live admitted pod uses is copied with equal data, its used-by annotation listing
  exactly those pods' UIDs; no other copy exists;
* the node is Ready, reaches the provider, and its allocatable is what kube-scheduler must see: cpu, memory and
  nvidia.com/gpu are its capacity minus what its admitted, unfinished pods take beyond their requests (the scheduler
  subtracts those itself), `pods` is its capacity, each offering's resource at least what its pods are charged;
* a pod admission refuses carries that refusal as its status reason; no pod stays Pending with ProviderRefused or
  in deletion.

The expected mirror is what the runtime's own translation (runtime/translate.py, pure functions) makes of the local
pod; everything else is computed here from the two clusters alone.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from decimal import Decimal

from k8sgpu.runtime.admission import GPU_RESOURCE, admit, pod_resources
from k8sgpu.runtime.catalog import CatalogError, GPUClass
from k8sgpu.runtime.placement import pod_requests
from k8sgpu.runtime.quantity import parse_quantity
from k8sgpu.runtime.translate import (
    KIND_LABEL,
    NODE_LABEL,
    ORIGIN_NAME,
    ORIGIN_NAMESPACE,
    ORIGIN_UID_LABEL,
    USED_BY,
    referenced_objects,
    remote_name,
    remote_pod,
)

TERMINAL = ("Succeeded", "Failed")
# Reasons under which a local pod rightly has no mirror: the runtime refused it, or the provider found it invalid.
_NO_MIRROR_REASONS = ("ProviderInvalid",)
_CONTAINER_FIELDS = ("image", "command", "args", "env", "envFrom", "workingDir")


@dataclasses.dataclass
class Snapshot:
    """Both clusters as the checker read them, as plain API dicts (camelCase, as the API serves them)."""

    node_name: str
    node: dict | None
    pods: list[dict]  # local pods bound to the node
    runtime_classes: dict[str, dict]
    objects: dict[tuple[str, str, str], dict]  # (kind, namespace, name) → local ConfigMap or Secret
    mirrors: list[dict]  # provider pods labelled for the node
    copies: list[dict]  # provider ConfigMaps and Secrets labelled for the node (with "kind" set)


@dataclasses.dataclass(frozen=True)
class Convergence:
    seconds: float
    violations: list[str]
    """Empty when it converged; else what was still wrong at the timeout."""


def _catalog(snapshot: Snapshot) -> dict[str, GPUClass | CatalogError]:
    out: dict[str, GPUClass | CatalogError] = {}
    for name, rc in snapshot.runtime_classes.items():
        try:
            out[name] = GPUClass.from_runtime_class(rc)
        except CatalogError as exc:
            out[name] = exc
    return out


def _label(pod: dict) -> str:
    meta = pod["metadata"]
    return f"pod {meta['namespace']}/{meta['name']} ({meta['uid'][:8]})"


def _quantities(resources: dict | None) -> dict:
    """Resources as numbers, with the API server's defaulting: a limit without a request is also the request."""
    out = {kind: {r: parse_quantity(v) for r, v in (values or {}).items()}
           for kind, values in (resources or {}).items() if values}
    if out.get("limits"):
        out["requests"] = {**out["limits"], **out.get("requests", {})}
    return out


def _env(env: list[dict] | None) -> list[dict]:
    # The API server writes fieldRef.apiVersion when a pod leaves it out; nothing else of env is defaulted.
    out = []
    for var in env or []:
        var = json.loads(json.dumps(var))
        field = (var.get("valueFrom") or {}).get("fieldRef")
        if field is not None:
            field.setdefault("apiVersion", "v1")
        out.append(var)
    return out


def mirror_drift(pod: dict, mirror: dict, offer: GPUClass, node_name: str) -> list[str]:
    """How ``mirror`` differs from what the local ``pod`` makes under ``offer`` (empty: it does not)."""
    want = remote_pod(pod, offer, node_name, pod_resources(pod, offer))
    drift: list[str] = []
    meta = mirror["metadata"]
    if meta["name"] != want["metadata"]["name"]:
        drift.append(f"named {meta['name']}, not {want['metadata']['name']}")
    for field in ("runtimeClassName", "nodeSelector", "restartPolicy"):
        if mirror["spec"].get(field) != want["spec"].get(field):
            drift.append(f"spec.{field} {mirror['spec'].get(field)!r}, want {want['spec'].get(field)!r}")
    for group in ("initContainers", "containers"):
        have = {c["name"]: c for c in mirror["spec"].get(group) or []}
        wanted = {c["name"]: c for c in want["spec"].get(group) or []}
        if set(have) != set(wanted):
            drift.append(f"{group} {sorted(have)}, want {sorted(wanted)}")
            continue
        for name, c in wanted.items():
            m = have[name]
            for field in _CONTAINER_FIELDS:
                a, b = (m.get(field), c.get(field)) if field != "env" else (_env(m.get(field)), _env(c.get(field)))
                if (a or None) != (b or None):
                    drift.append(f"container {name} {field} {a!r}, want {b!r}")
            if _quantities(m.get("resources")) != _quantities(c.get("resources")):
                drift.append(f"container {name} resources {m.get('resources')}, want {c.get('resources')}")
    # What the local pod's metadata makes, and the runtime's own annotations of the mirror (its offering).
    labels, annotations = want["metadata"]["labels"], want["metadata"]["annotations"]
    for field, wanted_map in (("labels", labels), ("annotations", annotations)):
        have_map = meta.get(field) or {}
        wrong = {k: have_map.get(k) for k, v in wanted_map.items() if have_map.get(k) != v}
        extra = sorted(set(have_map) - set(wanted_map))
        if wrong:
            drift.append(f"{field} {wrong} where the local pod has "
                         f"{ {k: wanted_map[k] for k in wrong} }")
        if extra:
            drift.append(f"{field} {extra} that the local pod does not have")
    return drift


def _allocatable_violations(snapshot: Snapshot, taking: list[tuple[dict, GPUClass]]) -> list[str]:
    """The node's allocatable as the scheduler must see it (runtime/accounting.py): cpu, memory and nvidia.com/gpu
    are its capacity less what its admitted, unfinished pods take beyond what the scheduler charges them (their
    requests), so no pod is counted twice; `pods` is its capacity; each offering's resource is at least what the
    scheduler charges the node's pods of it."""
    node = snapshot.node
    if node is None:
        return [f"node {snapshot.node_name} does not exist"]
    status = node.get("status") or {}
    capacity, allocatable = status.get("capacity") or {}, status.get("allocatable") or {}
    uncharged = {"cpu": Decimal(0), "memory": Decimal(0), GPU_RESOURCE: Decimal(0)}
    offers: dict[str, Decimal] = {}
    for pod, offer in taking:
        try:
            takes, charged = pod_resources(pod, offer), pod_requests(pod["spec"])
        except ValueError:
            continue
        gpus = takes.gpus if offer.gpu_resource == GPU_RESOURCE else 0
        for resource, amount in (("cpu", takes.cpu), ("memory", takes.memory), (GPU_RESOURCE, gpus)):
            uncharged[resource] += max(Decimal(amount) - charged.get(resource, Decimal(0)), Decimal(0))
        if offer.resource in charged:
            offers[offer.resource] = offers.get(offer.resource, Decimal(0)) + charged[offer.resource]
    out = []
    for resource in (*uncharged, "pods"):
        if resource not in capacity:
            out.append(f"node {snapshot.node_name}: no {resource} in capacity")
            continue
        want = max(parse_quantity(capacity[resource]) - uncharged.get(resource, Decimal(0)), Decimal(0))
        if resource == "cpu":
            want = Decimal(int(want * 1000)) / 1000  # the node writes millicores
        have = parse_quantity(allocatable.get(resource, "0"))
        if have != want:
            out.append(f"node {snapshot.node_name}: allocatable {resource} {allocatable.get(resource)}, want "
                       f"capacity {capacity[resource]} minus {uncharged.get(resource, 0)} that {len(taking)} "
                       f"admitted, unfinished pods take beyond their requests = {want}")
    for resource, charged in sorted(offers.items()):
        have = parse_quantity(allocatable.get(resource, "0"))
        if have < charged:
            out.append(f"node {snapshot.node_name}: allocatable {resource} {allocatable.get(resource, 0)}, below "
                       f"the {charged} the scheduler charges its pods of that offering")
    return out


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def violations(snapshot: Snapshot) -> list[str]:
    """Every invariant ``snapshot`` breaks, one readable line each."""
    out: list[str] = []
    node_name = snapshot.node_name
    catalog = _catalog(snapshot)
    if snapshot.node is not None:
        for kind in ("Ready", "ProviderReachable"):
            condition = _condition(snapshot.node, kind)
            if condition.get("status") != "True":
                out.append(f"node {node_name}: {kind} is {condition.get('status')} ({condition.get('reason')}: "
                           f"{condition.get('message')})")
    mirrors_by_uid: dict[str, list[dict]] = {}
    for mirror in snapshot.mirrors:
        uid = (mirror["metadata"].get("labels") or {}).get(ORIGIN_UID_LABEL, "")
        mirrors_by_uid.setdefault(uid, []).append(mirror)
    local_uids = {p["metadata"]["uid"] for p in snapshot.pods}
    taking: list[tuple[dict, GPUClass]] = []
    users: dict[tuple[str, str, str], set[str]] = {}
    for pod in snapshot.pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid, phase = meta["uid"], status.get("phase", "Pending")
        mirrors = [m for m in mirrors_by_uid.get(uid, []) if not m["metadata"].get("deletionTimestamp")]
        offer = catalog.get(pod["spec"].get("runtimeClassName") or "")
        refusal = admit(pod, offer if isinstance(offer, GPUClass) else None)
        admitted = bool(mirrors_by_uid.get(uid)) or refusal is None
        if len(mirrors) > 1:
            out.append(f"{_label(pod)}: {len(mirrors)} mirrors: {sorted(m['metadata']['name'] for m in mirrors)}")
        if mirrors:
            mirror_phase = (mirrors[0].get("status") or {}).get("phase", "Pending")
            if mirror_phase != phase:
                out.append(f"{_label(pod)}: phase {phase}, its mirror's {mirror_phase}")
        if phase in TERMINAL:
            continue
        if isinstance(offer, GPUClass) and admitted:
            taking.append((pod, offer))
        if meta.get("deletionTimestamp"):
            out.append(f"{_label(pod)}: still being deleted (since {meta['deletionTimestamp']})")
            continue
        if not admitted:
            reason = refusal.reason if refusal else ""
            if status.get("reason") != reason:
                out.append(f"{_label(pod)}: admission refuses it ({reason}) but its status reason is "
                           f"{status.get('reason')!r}")
            if mirrors_by_uid.get(uid):
                out.append(f"{_label(pod)}: refused by admission, yet it has a mirror")
            continue
        assert isinstance(offer, GPUClass)
        missing = [f"{kind} {name}" for kind, name, optional in referenced_objects(pod)
                   if not optional and (kind, meta["namespace"], name) not in snapshot.objects]
        for kind, name, _ in referenced_objects(pod):
            users.setdefault((kind, meta["namespace"], name), set()).add(uid)
        if not mirrors:
            if missing or status.get("reason") in _NO_MIRROR_REASONS:
                continue  # it waits for a mandatory object, or the provider refused its spec for good
            why = f" (status {status.get('reason')}: {status.get('message')})" if status.get("reason") else ""
            out.append(f"{_label(pod)}: no mirror on the provider{why}")
            continue
        if status.get("reason") == "ProviderRefused":
            out.append(f"{_label(pod)}: runs on the provider but still says ProviderRefused")
        for line in mirror_drift(pod, mirrors[0], offer, node_name):
            out.append(f"{_label(pod)}: mirror {mirrors[0]['metadata']['name']} {line}")
    for uid, mirrors in mirrors_by_uid.items():
        if uid not in local_uids:
            for m in mirrors:
                ann = m["metadata"].get("annotations") or {}
                out.append(f"mirror {m['metadata']['name']} of {ann.get(ORIGIN_NAMESPACE)}/{ann.get(ORIGIN_NAME)} "
                           f"({uid[:8]}): no local pod of that UID")
    out += _copy_violations(snapshot, users)
    out += _allocatable_violations(snapshot, taking)
    return out


def _copy_violations(snapshot: Snapshot, users: dict[tuple[str, str, str], set[str]]) -> list[str]:
    out = []
    copies = {}
    for copy in snapshot.copies:
        ann = copy["metadata"].get("annotations") or {}
        ref = (copy["kind"], ann.get(ORIGIN_NAMESPACE, ""), ann.get(ORIGIN_NAME, ""))
        copies[ref] = copy
        if ref not in users:
            out.append(f"{ref[0]} copy {copy['metadata']['name']} of {ref[1]}/{ref[2]}: no live pod uses it")
    for ref, uids in sorted(users.items()):
        kind, namespace, name = ref
        local = snapshot.objects.get(ref)
        copy = copies.get(ref)
        if local is None:
            continue  # missing (the pod waits or runs without it) or deleted (the copy keeps the last value)
        if copy is None:
            out.append(f"{kind} {namespace}/{name}: used by {len(uids)} pod(s), no copy on the provider")
            continue
        if copy["metadata"]["name"] != remote_name(namespace, name):
            out.append(f"{kind} {namespace}/{name}: copy named {copy['metadata']['name']}")
        listed = {u for u in (copy["metadata"].get("annotations") or {}).get(USED_BY, "").split(",") if u}
        if listed != uids:
            out.append(f"{kind} {namespace}/{name}: copy lists users {sorted(u[:8] for u in listed)}, the live pods "
                       f"using it are {sorted(u[:8] for u in uids)}")
        for field in ("data", "binaryData"):
            if (copy.get(field) or {}) != (local.get(field) or {}):
                out.append(f"{kind} {namespace}/{name}: copy's {field} differs from the local object's "
                           f"(resourceVersion {local['metadata'].get('resourceVersion')})")
    return out


class InvariantChecker:
    """Reads the local cluster (as its admin) and the provider's tenant namespace for ``node_name``."""

    def __init__(self, local_kubeconfig: str, provider_kubeconfig: str, tenant_namespace: str, node_name: str):
        from kubernetes import client, config

        def api(kubeconfig: str):
            cfg = client.Configuration()
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
            return client.ApiClient(cfg)

        self._local, self._provider = api(local_kubeconfig), api(provider_kubeconfig)
        self.tenant_namespace, self.node_name = tenant_namespace, node_name

    @staticmethod
    def _raw(call, *args, **kwargs) -> dict:
        """The object or list as the API serves it (a dict in its own field names), not the client's model."""
        response = call(*args, **{k: v for k, v in kwargs.items() if v}, _preload_content=False,
                        _request_timeout=30)
        return json.loads(response.data)

    def snapshot(self) -> Snapshot:
        from kubernetes import client

        local, provider = client.CoreV1Api(self._local), client.CoreV1Api(self._provider)
        tenant, raw = self.tenant_namespace, self._raw
        try:
            node = raw(local.read_node, self.node_name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            node = None
        pods = raw(local.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self.node_name}")["items"]
        classes = {rc["metadata"]["name"]: rc for rc in raw(client.NodeV1Api(self._local).list_runtime_class)["items"]}
        objects = {}
        for namespace in sorted({p["metadata"]["namespace"] for p in pods}):
            for kind, listing in (("ConfigMap", local.list_namespaced_config_map),
                                  ("Secret", local.list_namespaced_secret)):
                for obj in raw(listing, namespace)["items"]:
                    objects[(kind, namespace, obj["metadata"]["name"])] = obj
        owned = f"{NODE_LABEL}={self.node_name}"
        mirrors = raw(provider.list_namespaced_pod, tenant, label_selector=f"{owned},{KIND_LABEL}=pod")["items"]
        copies = []
        for kind, listing in (("ConfigMap", provider.list_namespaced_config_map),
                              ("Secret", provider.list_namespaced_secret)):
            copies += [{**obj, "kind": kind} for obj in raw(listing, tenant, label_selector=owned)["items"]]
        return Snapshot(self.node_name, node, pods, classes, objects, mirrors, copies)

    def check(self) -> list[str]:
        """Every violation now; a cluster that does not answer is one too."""
        try:
            return violations(self.snapshot())
        except Exception as exc:  # noqa: BLE001 - an unreachable cluster is what converge waits out
            return [f"reading the clusters failed: {type(exc).__name__}: {str(exc)[:200]}"]

    def converge(self, timeout: float, interval: float = 1.0,
                 progress: Callable[[list[str]], None] | None = None) -> Convergence:
        """Polls `check` until it finds nothing; the seconds it took, or what was left at ``timeout``."""
        started = time.monotonic()
        while True:
            found = self.check()
            elapsed = time.monotonic() - started
            if not found or elapsed > timeout:
                return Convergence(round(elapsed, 2), found)
            if progress is not None:
                progress(found)
            time.sleep(interval)

