"""Local objects ↔ their mirrors on the provider. Pure functions over dicts; no API.

Ownership lives on the remote objects (labels and annotations naming the origin
namespace, name and UID and the node), so a restarted runtime rebuilds its
view from the two clusters alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re

from .admission import Resources
from .catalog import PROVIDER_PRODUCT_LABEL, GPUClass

NODE_LABEL = "k8sgpu.io/node"
ORIGIN_UID_LABEL = "k8sgpu.io/origin-uid"
ORIGIN_NAMESPACE = "k8sgpu.io/origin-namespace"
ORIGIN_NAME = "k8sgpu.io/origin-name"
KIND_LABEL = "k8sgpu.io/kind"
# Which pods use a reflected object: a comma-separated list of origin UIDs.
USED_BY = "k8sgpu.io/used-by"
# On a mirror pod: the offering (RuntimeClass) it runs as, so that its GPU accounting needs nothing but the mirror.
RUNTIME_CLASS = "k8sgpu.io/runtime-class"
# On a mirror pod: the label and annotation keys copied from the local pod (JSON), so that a key the user
# removes is removed from the mirror too, and keys others put on the mirror (the provider's) are left alone.
COPIED_KEYS = "k8sgpu.io/copied-keys"
_OWN_LABELS = (NODE_LABEL, ORIGIN_UID_LABEL, KIND_LABEL)
_OWN_ANNOTATIONS = (ORIGIN_NAMESPACE, ORIGIN_NAME, COPIED_KEYS, RUNTIME_CLASS)
# The pod conditions a kubelet owns; the others belong to other writers (PodScheduled to the scheduler,
# DisruptionTarget to the API server and controllers, readiness gates' to their controllers).
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
READINESS_GATES_NOT_READY = "ReadinessGatesNotReady"

_SA_VOLUME = re.compile(r"^kube-api-access-")
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def remote_name(namespace: str, name: str, uid: str = "", limit: int = 63) -> str:
    """A stable, unique, DNS-label-safe name for a local object in the tenant namespace.

    Pods pass their UID: a pod deleted and created again under the same name gets a new mirror,
    so the old one's termination never collides with the new one."""
    digest = hashlib.sha256(f"{namespace}/{name}/{uid}".encode()).hexdigest()[:10]
    base = re.sub(r"[^a-z0-9-]", "-", f"{namespace}-{name}".lower()).strip("-")
    return f"{base[: limit - 11].rstrip('-')}-{digest}"


def origin_key(obj: dict) -> str:
    meta = obj.get("metadata", {})
    ann = meta.get("annotations") or {}
    return f"{ann.get(ORIGIN_NAMESPACE)}/{ann.get(ORIGIN_NAME)}"


def _rename_env(env: list[dict], namespace: str) -> list[dict]:
    out = []
    for var in env:
        var = copy.deepcopy(var)
        source = var.get("valueFrom") or {}
        for ref in ("configMapKeyRef", "secretKeyRef"):
            if ref in source:
                source[ref]["name"] = remote_name(namespace, source[ref]["name"])
        if "fieldRef" in source or "resourceFieldRef" in source:
            pass  # resolved by the provider's kubelet against the mirrored pod
        out.append(var)
    return out


def _rename_env_from(env_from: list[dict], namespace: str) -> list[dict]:
    out = []
    for source in env_from:
        source = copy.deepcopy(source)
        for ref in ("configMapRef", "secretRef"):
            if ref in source:
                source[ref]["name"] = remote_name(namespace, source[ref]["name"])
        out.append(source)
    return out


def _remote_volume(volume: dict, namespace: str) -> dict | None:
    volume = copy.deepcopy(volume)
    if "configMap" in volume:
        volume["configMap"]["name"] = remote_name(namespace, volume["configMap"]["name"])
    elif "secret" in volume:
        volume["secret"]["secretName"] = remote_name(namespace, volume["secret"]["secretName"])
    elif "projected" in volume:
        sources = []
        for source in volume["projected"].get("sources") or []:
            if "serviceAccountToken" in source or (source.get("configMap") or {}).get("name") == "kube-root-ca.crt":
                continue  # the local cluster's token and CA never leave it
            if "configMap" in source:
                source["configMap"]["name"] = remote_name(namespace, source["configMap"]["name"])
            if "secret" in source:
                source["secret"]["name"] = remote_name(namespace, source["secret"]["name"])
            sources.append(source)
        if not sources:
            return None
        volume["projected"]["sources"] = sources
    return volume


def _container(container: dict, namespace: str, dropped_volumes: set[str]) -> dict:
    c = copy.deepcopy(container)
    if c.get("env"):
        c["env"] = _rename_env(c["env"], namespace)
    if c.get("envFrom"):
        c["envFrom"] = _rename_env_from(c["envFrom"], namespace)
    if c.get("volumeMounts"):
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] not in dropped_volumes]
    return c


def remote_pod(pod: dict, gpu_class: GPUClass, node_name: str, wanted: Resources) -> dict:
    """The pod to create on the provider for a local pod that passed admission."""
    meta, spec = pod["metadata"], pod["spec"]
    namespace = meta["namespace"]
    volumes, dropped = [], set()
    for volume in spec.get("volumes") or []:
        mirrored = None if _SA_VOLUME.match(volume["name"]) else _remote_volume(volume, namespace)
        if mirrored is None:
            dropped.add(volume["name"])
        else:
            volumes.append(mirrored)
    containers = [_container(c, namespace, dropped) for c in spec.get("containers") or []]
    _apply_gpu_resources(containers, gpu_class, wanted)
    labels, annotations = mirror_metadata(meta, node_name)
    annotations[RUNTIME_CLASS] = gpu_class.name
    remote_spec = {
        "containers": containers,
        "restartPolicy": spec.get("restartPolicy", "Always"),
        "nodeSelector": {PROVIDER_PRODUCT_LABEL: gpu_class.gpu_product},
        "runtimeClassName": gpu_class.handler,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if spec.get("initContainers"):
        remote_spec["initContainers"] = [_container(c, namespace, dropped) for c in spec["initContainers"]]
    if volumes:
        remote_spec["volumes"] = volumes
    for field in ("terminationGracePeriodSeconds", "activeDeadlineSeconds", "securityContext", "hostname",
                  "subdomain", "shareProcessNamespace", "dnsConfig"):
        if field in spec:
            remote_spec[field] = copy.deepcopy(spec[field])
    if spec.get("imagePullSecrets"):
        remote_spec["imagePullSecrets"] = [{"name": remote_name(namespace, s["name"])}
                                           for s in spec["imagePullSecrets"]]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": remote_name(namespace, meta["name"], meta["uid"]), "labels": labels,
                     "annotations": annotations},
        "spec": remote_spec,
    }


def mirror_metadata(meta: dict, node_name: str) -> tuple[dict, dict]:
    """The labels and annotations of a local pod's mirror: the pod's own, then the runtime's, which no key of
    the user's overrides (origin namespace, name and UID, the node, the keys copied)."""
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in _OWN_LABELS}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in _DROPPED_ANNOTATIONS and k not in _OWN_ANNOTATIONS}
    copied = json.dumps({"labels": sorted(labels), "annotations": sorted(annotations)}, separators=(",", ":"))
    labels.update({NODE_LABEL: node_name, ORIGIN_UID_LABEL: meta["uid"], KIND_LABEL: "pod"})
    annotations.update({ORIGIN_NAMESPACE: meta["namespace"], ORIGIN_NAME: meta["name"], COPIED_KEYS: copied})
    return labels, annotations


def mirror_metadata_patch(meta: dict, mirror_meta: dict, node_name: str) -> dict | None:
    """A merge patch of the mirror's metadata that brings its labels and annotations in line with the local
    pod's (``meta``); None when they are. Keys copied earlier and since removed locally are removed; keys
    the runtime never copied (the provider's own) stay."""
    labels, annotations = mirror_metadata(meta, node_name)
    current_annotations = mirror_meta.get("annotations") or {}
    try:
        before = json.loads(current_annotations.get(COPIED_KEYS) or "{}")
    except ValueError:
        before = {}
    patch: dict = {}
    for field, wanted in (("labels", labels), ("annotations", annotations)):
        current = mirror_meta.get(field) or {}
        change: dict = {k: v for k, v in wanted.items() if current.get(k) != v}
        earlier = before.get(field) if isinstance(before, dict) else None
        change.update({k: None for k in earlier or () if k in current and k not in wanted})
        if change:
            patch[field] = change
    return patch or None


def _apply_gpu_resources(containers: list[dict], gpu_class: GPUClass, wanted: Resources) -> None:
    """The class's GPUs go to the pod; a pod that declared no resources gets the class's limits."""
    declared = any((c.get("resources") or {}).get("requests") or (c.get("resources") or {}).get("limits")
                   for c in containers)
    if not containers:
        return
    if not declared:
        first = containers[0]
        first["resources"] = {"limits": {"cpu": f"{int(wanted.cpu * 1000)}m", "memory": str(int(wanted.memory)),
                                         gpu_class.gpu_resource: str(wanted.gpus)}}
        return
    resource = gpu_class.gpu_resource
    has_gpu = any(resource in ((c.get("resources") or {}).get("limits") or {}) for c in containers)
    if not has_gpu and wanted.gpus:
        limits = containers[0].setdefault("resources", {}).setdefault("limits", {})
        limits[resource] = str(wanted.gpus)


def local_status(remote: dict, node_address: str) -> dict:
    """The local pod's status from its mirror's; hostIP is the virtual node's address."""
    status = remote.get("status") or {}
    out: dict = {"phase": status.get("phase", "Pending")}
    for field in ("conditions", "containerStatuses", "initContainerStatuses", "startTime", "podIP", "podIPs",
                  "message", "reason"):
        if field in status:
            out[field] = status[field]
    if status.get("podIP"):
        out["hostIP"] = node_address
        out["hostIPs"] = [{"ip": node_address}]
    return out


def ready_condition(mirror_ready: dict | None, readiness_gates: list[dict],
                    local_conditions: list[dict]) -> dict | None:
    """The local pod's Ready, as a kubelet decides it: the mirror's (which has no readiness gates), unless the
    mirror is ready and a condition named in the local pod's ``spec.readinessGates`` is not True on the local
    pod; then False with the kubelet's reason and message naming them."""
    if mirror_ready is None or not readiness_gates or mirror_ready.get("status") != "True":
        return mirror_ready
    by_type = {c.get("type"): c for c in local_conditions}
    unready = []
    for gate in readiness_gates:
        kind = gate.get("conditionType", "")
        found = by_type.get(kind)
        if found is None:
            unready.append(f"corresponding condition of pod readiness gate {json.dumps(kind)} does not exist.")
        elif found.get("status") != "True":
            unready.append(f'the status of pod readiness gate {json.dumps(kind)} is not "True", but '
                           f'{found.get("status")}')
    if not unready:
        return mirror_ready
    return {"type": "Ready", "status": "False", "reason": READINESS_GATES_NOT_READY, "message": ", ".join(unready),
            "lastTransitionTime": mirror_ready.get("lastTransitionTime")}


def kubelet_conditions(mirror_conditions: list[dict], local_conditions: list[dict], readiness_gates: list[dict],
                       now: str) -> list[dict]:
    """The conditions a kubelet owns, as the local pod should carry them: the mirror's, Ready decided with the
    local readiness gates. A condition whose status does not change keeps its local lastTransitionTime; one
    that changes takes the mirror's time, or ``now`` for a Ready the readiness gates decide."""
    local = {c.get("type"): c for c in local_conditions}
    out = []
    for condition in mirror_conditions:
        kind = condition.get("type")
        if kind not in KUBELET_CONDITIONS:
            continue
        decided = ready_condition(condition, readiness_gates, local_conditions) if kind == "Ready" else condition
        assert decided is not None
        decided = {k: v for k, v in decided.items() if v is not None}
        before = local.get(kind)
        if before is not None and before.get("status") == decided.get("status") and before.get("lastTransitionTime"):
            decided["lastTransitionTime"] = before["lastTransitionTime"]
        elif (kind == "Ready" and readiness_gates) or not decided.get("lastTransitionTime"):
            decided["lastTransitionTime"] = now
        out.append(decided)
    return out


def _same_condition(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(a.get(k) == b.get(k) for k in ("status", "reason", "message"))


def status_patch(local: dict, mirror: dict, readiness_gates: list[dict], now: str,
                 dropped_conditions: tuple[str, ...] = ()) -> dict | None:
    """A strategic merge patch of the local pod's status from the mirror's (in local terms), or None when
    nothing changes. Conditions merge by type: only those a kubelet owns are written (and any type named in
    ``dropped_conditions`` the local pod carries is deleted), so other writers' conditions are kept."""
    patch: dict = {}
    for field, value in mirror.items():
        if field == "conditions" or local.get(field) == value:
            continue
        patch[field] = value
        if field in ("podIPs", "hostIPs"):
            patch[field] = [*value, {"$patch": "replace"}]  # these lists merge by ip otherwise
    if local.get("reason") and "reason" not in mirror:
        patch["reason"] = None
        patch["message"] = None
    local_conditions = local.get("conditions") or []
    by_type = {c.get("type"): c for c in local_conditions}
    conditions = [c for c in kubelet_conditions(mirror.get("conditions") or [], local_conditions, readiness_gates,
                                                now) if not _same_condition(by_type.get(c["type"]), c)]
    conditions += [{"type": kind, "$patch": "delete"} for kind in dropped_conditions if kind in by_type]
    if conditions:
        patch["conditions"] = conditions
    return patch or None


def reflected_object(kind: str, obj: dict, users: list[str], node_name: str) -> dict:
    """A ConfigMap or Secret copied to the tenant namespace for the pods (by origin UID) that use it."""
    meta = obj["metadata"]
    mirrored = {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": remote_name(meta["namespace"], meta["name"]),
            "labels": {KIND_LABEL: kind.lower(), NODE_LABEL: node_name},
            "annotations": {ORIGIN_NAMESPACE: meta["namespace"], ORIGIN_NAME: meta["name"],
                            USED_BY: ",".join(sorted(users))},
        },
    }
    for field in ("data", "binaryData", "type"):
        if field in obj:
            mirrored[field] = obj[field]
    if mirrored.get("type") == "kubernetes.io/service-account-token":
        mirrored["type"] = "Opaque"  # only the provider's controller may fill that type
    return mirrored


def remote_service(service: dict, node_name: str) -> dict:
    """A LoadBalancer Service in the tenant namespace selecting the mirrors of the selected pods."""
    meta, spec = service["metadata"], service["spec"]
    ports = [{k: v for k, v in port.items() if k in ("name", "port", "targetPort", "protocol")}
             for port in spec.get("ports") or []]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": remote_name(meta["namespace"], meta["name"]),
            "labels": {KIND_LABEL: "service", NODE_LABEL: node_name},
            "annotations": {ORIGIN_NAMESPACE: meta["namespace"], ORIGIN_NAME: meta["name"]},
        },
        "spec": {
            "type": "LoadBalancer",
            "ports": ports,
            "selector": {**(spec.get("selector") or {}), NODE_LABEL: node_name},
        },
    }


def referenced_objects(pod: dict) -> list[tuple[str, str, bool]]:
    """(kind, name, optional) of every ConfigMap and Secret the pod uses: env, envFrom, volumes,
    projected sources, image pull secrets."""
    spec = pod.get("spec", {})
    refs: list[tuple[str, str, bool]] = []
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for var in c.get("env") or []:
            source = var.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                refs.append(("ConfigMap", source["configMapKeyRef"]["name"],
                             bool(source["configMapKeyRef"].get("optional"))))
            if "secretKeyRef" in source:
                refs.append(("Secret", source["secretKeyRef"]["name"], bool(source["secretKeyRef"].get("optional"))))
        for source in c.get("envFrom") or []:
            if "configMapRef" in source:
                refs.append(("ConfigMap", source["configMapRef"]["name"], bool(source["configMapRef"].get("optional"))))
            if "secretRef" in source:
                refs.append(("Secret", source["secretRef"]["name"], bool(source["secretRef"].get("optional"))))
    for volume in spec.get("volumes") or []:
        if _SA_VOLUME.match(volume.get("name", "")):
            continue
        if "configMap" in volume:
            refs.append(("ConfigMap", volume["configMap"]["name"], bool(volume["configMap"].get("optional"))))
        if "secret" in volume:
            refs.append(("Secret", volume["secret"]["secretName"], bool(volume["secret"].get("optional"))))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source and source["configMap"].get("name") != "kube-root-ca.crt":
                refs.append(("ConfigMap", source["configMap"]["name"], bool(source["configMap"].get("optional"))))
            if "secret" in source:
                refs.append(("Secret", source["secret"]["name"], bool(source["secret"].get("optional"))))
    for secret in spec.get("imagePullSecrets") or []:
        refs.append(("Secret", secret["name"], True))
    # One entry per object; mandatory wins over optional.
    merged: dict[tuple[str, str], bool] = {}
    for kind, name, optional in refs:
        merged[(kind, name)] = merged.get((kind, name), True) and optional
    return [(kind, name, optional) for (kind, name), optional in merged.items()]
