"""What a pod must be to run on the virtual node. Pure functions over pod dicts; no API.

A refused pod is never run: the pod controller leaves it Pending with the rule's
reason in its status and an Event that names the rule and the numbers.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from .catalog import GPU_RESOURCE, GPUClass
from .quantity import parse_quantity

# Pod Security Standard "baseline": capabilities a container may add.
_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
_BASELINE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
# Volume sources a remote node can give: everything else needs the user's cluster or host.
_REMOTE_VOLUMES = {"configMap", "secret", "emptyDir", "projected", "downwardAPI"}


@dataclasses.dataclass(frozen=True)
class Refusal:
    reason: str  # CamelCase, for the Event and the pod status
    message: str


@dataclasses.dataclass(frozen=True)
class Resources:
    cpu: Decimal = Decimal(0)  # cores
    memory: Decimal = Decimal(0)  # bytes
    gpus: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory, self.gpus + other.gpus)


def _containers(pod: dict) -> list[dict]:
    return list(pod.get("spec", {}).get("containers") or [])


def _all_containers(pod: dict) -> list[dict]:
    spec = pod.get("spec", {})
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or []) + list(
        spec.get("ephemeralContainers") or [])


def _quantity(value, field: str) -> Decimal:
    try:
        return parse_quantity(value)
    except ValueError:
        raise ValueError(f"{field} {value!r} is not a quantity") from None


def container_resources(container: dict, kind: str, gpu_resource: str = GPU_RESOURCE) -> Resources:
    """A container's requests or limits; its GPUs counted in ``gpu_resource`` (a MIG offering's slices)."""
    values = (container.get("resources") or {}).get(kind) or {}
    name = container.get("name", "?")
    return Resources(
        cpu=_quantity(values.get("cpu", 0), f"container {name} {kind}.cpu"),
        memory=_quantity(values.get("memory", 0), f"container {name} {kind}.memory"),
        gpus=int(_quantity(values.get(gpu_resource, 0), f"container {name} {kind}.{gpu_resource}")),
    )


def pod_resources(pod: dict, gpu_class: GPUClass | None = None) -> Resources:
    """What the pod takes from the node: the sum over its containers of requests (limits where no
    request is given), the class's limits when no container declares any."""
    total = Resources()
    declared = False
    gpu_resource = gpu_class.gpu_resource if gpu_class is not None else GPU_RESOURCE
    for c in _containers(pod):
        requests, limits = container_resources(c, "requests", gpu_resource), container_resources(c, "limits",
                                                                                                 gpu_resource)
        declared = declared or bool((c.get("resources") or {}).get("requests") or (c.get("resources") or {}).get(
            "limits"))
        total = total + Resources(
            cpu=requests.cpu or limits.cpu, memory=requests.memory or limits.memory,
            gpus=max(requests.gpus, limits.gpus),
        )
    if not declared and gpu_class is not None and gpu_class.default_applies:
        return Resources(Decimal(str(gpu_class.cpu_limit)), Decimal(gpu_class.memory_limit), gpu_class.gpu_count)
    if gpu_class is not None and total.gpus == 0:
        total = dataclasses.replace(total, gpus=gpu_class.gpu_count)
    return total


def _fmt_cpu(cores: Decimal) -> str:
    return f"{int(cores * 1000)}m"


def _fmt_mem(b: Decimal) -> str:
    return f"{int(b) // 1024}Ki"


def check_class_limits(pod: dict, gpu_class: GPUClass) -> Refusal | None:
    for kind in ("requests", "limits"):
        total = Resources()
        for c in _containers(pod):
            total = total + container_resources(c, kind, gpu_class.gpu_resource)
        if total.cpu > Decimal(str(gpu_class.cpu_limit)):
            return Refusal("ExceedsRuntimeClassLimits",
                           f"summed cpu {kind} {_fmt_cpu(total.cpu)} exceed RuntimeClass {gpu_class.name}'s "
                           f"limit of {_fmt_cpu(Decimal(str(gpu_class.cpu_limit)))}")
        if total.memory > gpu_class.memory_limit:
            return Refusal("ExceedsRuntimeClassLimits",
                           f"summed memory {kind} {_fmt_mem(total.memory)} exceed RuntimeClass {gpu_class.name}'s "
                           f"limit of {_fmt_mem(Decimal(gpu_class.memory_limit))}")
        if total.gpus > gpu_class.gpu_count:
            return Refusal("ExceedsRuntimeClassLimits",
                           f"summed {gpu_class.gpu_resource} {kind} {total.gpus} exceed RuntimeClass "
                           f"{gpu_class.name}'s {gpu_class.gpu_count} GPU(s)")
    return None


def check_baseline(pod: dict) -> Refusal | None:
    """The Pod Security Standard "baseline" profile (the checks that matter on a remote node)."""
    spec = pod.get("spec", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            return Refusal("PodSecurityBaseline", f"spec.{field}=true is not allowed by the baseline profile")
    for sysctl in (spec.get("securityContext") or {}).get("sysctls") or []:
        if sysctl.get("name") not in _BASELINE_SYSCTLS:
            return Refusal("PodSecurityBaseline", f"sysctl {sysctl.get('name')} is not allowed by the baseline "
                                                  "profile")
    for c in _all_containers(pod):
        name = c.get("name", "?")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            return Refusal("PodSecurityBaseline", f"container {name} is privileged; the baseline profile "
                                                  "forbids privileged containers")
        added = set(((sc.get("capabilities") or {}).get("add")) or []) - _BASELINE_CAPABILITIES
        if added:
            return Refusal("PodSecurityBaseline", f"container {name} adds capabilities {', '.join(sorted(added))} "
                                                  "beyond the baseline profile")
        if sc.get("procMount") not in (None, "Default"):
            return Refusal("PodSecurityBaseline", f"container {name} sets procMount {sc['procMount']}")
        if ((sc.get("seccompProfile") or {}).get("type")) == "Unconfined":
            return Refusal("PodSecurityBaseline", f"container {name} runs with seccomp Unconfined")
        if ((sc.get("windowsOptions") or {}).get("hostProcess")):
            return Refusal("PodSecurityBaseline", f"container {name} is a Windows HostProcess container")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                return Refusal("PodSecurityBaseline", f"container {name} uses hostPort {port['hostPort']}")
    if ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type") == "Unconfined":
        return Refusal("PodSecurityBaseline", "pod runs with seccomp Unconfined")
    return None


def check_remote_capable(pod: dict) -> Refusal | None:
    """What a node in another cluster cannot give: host paths, the user's volumes, host networking."""
    for volume in pod.get("spec", {}).get("volumes") or []:
        sources = set(volume) - {"name"}
        if "hostPath" in sources:
            return Refusal("UnsupportedVolume", f"volume {volume.get('name')} is a hostPath; a remote GPU node "
                                                "has no access to your hosts (and baseline forbids it)")
        unsupported = sources - _REMOTE_VOLUMES
        if unsupported:
            kind = sorted(unsupported)[0]
            return Refusal("UnsupportedVolume", f"volume {volume.get('name')} of type {kind} cannot be mounted on "
                                                "a remote GPU node; use configMap, secret, emptyDir, projected or "
                                                "downwardAPI volumes")
    return None


# The parts of a Pod that admission and translation read, with the types the Pod schema gives them: a pod the
# API server took has them so, and anything else is refused naming the field instead of failing halfway through.
@dataclasses.dataclass(frozen=True)
class _Required:
    shape: object


_NAME = _Required(str)
_NAMED = {"name": _NAME}
_KEY_REF = {"name": _NAME, "optional": bool}
_SECURITY_CONTEXT = {"privileged": bool, "capabilities": {"add": [str]}, "procMount": str,
                     "seccompProfile": {"type": str}, "windowsOptions": {"hostProcess": bool}}
_CONTAINER = {
    "name": _NAME, "securityContext": _SECURITY_CONTEXT, "ports": [{"hostPort": int}],
    "resources": {"requests": {str: (str, int, float)}, "limits": {str: (str, int, float)}},
    "env": [{"name": _NAME, "valueFrom": {"configMapKeyRef": _KEY_REF, "secretKeyRef": _KEY_REF}}],
    "envFrom": [{"configMapRef": _KEY_REF, "secretRef": _KEY_REF}],
    "volumeMounts": [_NAMED],
}
_POD = {
    "metadata": _Required({"name": _NAME, "namespace": _NAME, "uid": _NAME, "labels": {str: str},
                           "annotations": {str: str}}),
    "spec": _Required({
        "runtimeClassName": str, "securityContext": {"sysctls": [_NAMED], "seccompProfile": {"type": str}},
        "containers": [_CONTAINER], "initContainers": [_CONTAINER], "ephemeralContainers": [_CONTAINER],
        "volumes": [{"name": _NAME, "configMap": _KEY_REF, "secret": {"secretName": _NAME, "optional": bool},
                     "projected": {"sources": [{"configMap": _KEY_REF, "secret": _KEY_REF}]}}],
        "imagePullSecrets": [_NAMED],
    }),
}
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number", dict: "a mapping",
               list: "a list"}


def _shape_error(value: object, shape: object, path: str) -> str | None:
    """Where ``value`` is not of ``shape`` (a type or tuple of types, {key: shape}, {str: shape} for any key,
    [shape] for a list of them), and what it should be; None when it is. Absent and null fields are fine, but for
    those marked required."""
    found = _mismatch(value, shape)
    if found is None:
        return None
    where, what = found
    return f"{path}{''.join(reversed(where))} {what}"


def _mismatch(value: object, shape: object) -> tuple[list[str], str] | None:
    """None, or the path below ``value`` (its parts innermost first) and what is wrong there. The path is only
    put together for a mismatch: admission walks every pod at each of its syncs."""
    if type(shape) is _Required:
        shape = shape.shape
        if value is None:
            return [], "is required"
    if value is None:
        return None
    if type(shape) is dict:
        if not isinstance(value, dict):
            return [], "must be a mapping"
        for key, inner in shape.items():
            if type(inner) is _Required and value.get(key) is None:
                return [f".{key}"], "is required"
        any_key = shape.get(str)
        if any_key is None:
            for key, inner in shape.items():
                item = value.get(key)
                if item is not None and (found := _mismatch(item, inner)) is not None:
                    found[0].append(f".{key}")
                    return found
            return None
        for key, item in value.items():
            if not isinstance(key, str):
                return [], "has a key that is not a string"
            if (found := _mismatch(item, any_key)) is not None:
                found[0].append(f".{key}")
                return found
        return None
    if type(shape) is list:
        if not isinstance(value, list):
            return [], "must be a list"
        item_shape = shape[0] if type(shape[0]) is _Required else _Required(shape[0])  # no null items
        for i, item in enumerate(value):
            if (found := _mismatch(item, item_shape)) is not None:
                found[0].append(f"[{i}]")
                return found
        return None
    kinds = shape if type(shape) is tuple else (shape,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        return [], f"must be {' or '.join(_TYPE_NAMES[k] for k in kinds)}"
    return None


def check_shape(pod: object) -> Refusal | None:
    """The pod's fields that the rules and the mirror read have the Pod schema's types."""
    if not isinstance(pod, dict):
        return Refusal("InvalidPod", "the pod is not a mapping")
    error = _shape_error(pod, _POD, "pod")
    return Refusal("InvalidPod", f"{error.removeprefix('pod.')}; the pod cannot be read") if error else None


def admit(pod: dict, gpu_class: GPUClass | None, default_runtime_class: str = "") -> Refusal | None:
    """None when the pod may run; otherwise the first rule it breaks. ``gpu_class`` is the offering the pod
    runs as: the one it names, else the node's default (``default_runtime_class``)."""
    if (malformed := check_shape(pod)) is not None:
        return malformed
    if gpu_class is None:
        rc = pod.get("spec", {}).get("runtimeClassName")
        if rc:
            return Refusal("UnknownRuntimeClass", f"RuntimeClass {rc} is not a GPU offering of this node "
                                                  "(it lacks the limits.k8s.gpu/* and gpu.k8s.gpu/* annotations)")
        if default_runtime_class:
            return Refusal("UnknownRuntimeClass", f"the pod names no runtimeClassName and the node's default "
                                                  f"offering, RuntimeClass {default_runtime_class}, is not a GPU "
                                                  "offering here (missing, or it lacks the limits.k8s.gpu/* and "
                                                  "gpu.k8s.gpu/* annotations)")
        return Refusal("NoRuntimeClass", "pods on this node must name a GPU RuntimeClass in "
                                         "spec.runtimeClassName (kubectl get runtimeclass lists them), or the node "
                                         "needs a default offering: k8sgpu-runtime --default-runtime-class "
                                         "(K8SGPU_DEFAULT_RUNTIME_CLASS, Terraform variable default_runtime_class)")
    try:
        return check_baseline(pod) or check_remote_capable(pod) or check_class_limits(pod, gpu_class)
    except ValueError as exc:
        return Refusal("InvalidResources", str(exc))
