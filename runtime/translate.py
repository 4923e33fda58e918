"""Local objects ↔ their mirrors on the provider. Pure functions over dicts; no API.

Ownership lives on the remote objects (labels and annotations naming the origin
namespace, name and UID and the node), so a restarted runtime rebuilds its
view from the two clusters alone.
"""

from __future__ import annotations

import copy
import hashlib
import re

from .admission import GPU_RESOURCE, Resources
from .catalog import PROVIDER_PRODUCT_LABEL, GPUClass

NODE_LABEL = "k8sgpu.io/node"
ORIGIN_UID_LABEL = "k8sgpu.io/origin-uid"
ORIGIN_NAMESPACE = "k8sgpu.io/origin-namespace"
ORIGIN_NAME = "k8sgpu.io/origin-name"
KIND_LABEL = "k8sgpu.io/kind"
# Which pods use a reflected object: a comma-separated list of origin UIDs.
USED_BY = "k8sgpu.io/used-by"

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
    labels = {k: v for k, v in (meta.get("labels") or {}).items()}
    labels.update({NODE_LABEL: node_name, ORIGIN_UID_LABEL: meta["uid"], KIND_LABEL: "pod"})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _DROPPED_ANNOTATIONS}
    annotations.update({ORIGIN_NAMESPACE: namespace, ORIGIN_NAME: meta["name"]})
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


def _apply_gpu_resources(containers: list[dict], gpu_class: GPUClass, wanted: Resources) -> None:
    """The class's GPUs go to the pod; a pod that declared no resources gets the class's limits."""
    declared = any((c.get("resources") or {}).get("requests") or (c.get("resources") or {}).get("limits")
                   for c in containers)
    if not containers:
        return
    if not declared:
        first = containers[0]
        first["resources"] = {"limits": {"cpu": f"{int(wanted.cpu * 1000)}m", "memory": str(int(wanted.memory)),
                                         GPU_RESOURCE: str(wanted.gpus)}}
        return
    has_gpu = any(GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}) for c in containers)
    if not has_gpu and wanted.gpus:
        limits = containers[0].setdefault("resources", {}).setdefault("limits", {})
        limits[GPU_RESOURCE] = str(wanted.gpus)


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
