"""GPU offerings, read from the RuntimeClasses that name this node.

The guide's annotations give per-pod limits (`limits.k8s.gpu/cpu`,
`limits.k8s.gpu/memory`, `limits.k8s.gpu/default`); ours say what the pod gets
on the provider side (`gpu.k8s.gpu/product`, `gpu.k8s.gpu/count`,
`gpu.k8s.gpu/handler`, `gpu.k8s.gpu/mig-profile`). `scheduling.nodeSelector` on the RuntimeClass points
pods at the virtual node, so users write only `runtimeClassName`.

Each offering is also an extended resource of the node, `k8s.gpu/<RuntimeClass name>`, which the RuntimeClass
charges to each of its pods through `overhead.podFixed` (the RuntimeClass admission plugin copies it into
`spec.overhead`, kube-scheduler counts it): the node advertises as many as the provider can place, so the local
scheduler binds only what the provider can run.
"""

from __future__ import annotations

import dataclasses
import re

from .quantity import parse_quantity

LIMIT_CPU = "limits.k8s.gpu/cpu"
LIMIT_MEMORY = "limits.k8s.gpu/memory"
LIMIT_DEFAULT = "limits.k8s.gpu/default"
GPU_PRODUCT = "gpu.k8s.gpu/product"
GPU_COUNT = "gpu.k8s.gpu/count"
GPU_HANDLER = "gpu.k8s.gpu/handler"
GPU_MIG_PROFILE = "gpu.k8s.gpu/mig-profile"
NODE_SELECTOR_KEY = "kubernetes.io/hostname"

# The label GPU feature discovery puts on provider nodes, used to place the remote pod.
PROVIDER_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
# What the NVIDIA GPU operator's mixed MIG strategy advertises per profile: nvidia.com/mig-<profile>.
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
OFFERING_RESOURCE_PREFIX = "k8s.gpu/"
_MIG_PROFILE = re.compile(r"^[1-8]g\.[0-9]+gb(\+me)?$")
# The name part of an extended resource is a qualified name's: at most 63 characters.
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


def offering_resource(runtime_class: str) -> str:
    """The node's extended resource for one offering, which its RuntimeClass charges each pod."""
    return OFFERING_RESOURCE_PREFIX + runtime_class


def mig_resource(profile: str) -> str:
    return MIG_RESOURCE_PREFIX + profile


class CatalogError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class GPUClass:
    name: str
    handler: str
    gpu_product: str
    gpu_count: int
    cpu_limit: float  # cores, per pod
    memory_limit: int  # bytes, per pod
    default_applies: bool  # limits.k8s.gpu/default: "1" → containers without resources get the limits
    mig_profile: str = ""  # e.g. "1g.10gb": each GPU is a MIG slice of that profile instead of a whole GPU

    @property
    def gpu_resource(self) -> str:
        """The resource the mirror requests its GPUs as: nvidia.com/gpu, or a MIG slice's resource."""
        return mig_resource(self.mig_profile) if self.mig_profile else GPU_RESOURCE

    @property
    def resource(self) -> str:
        """The node's extended resource for this offering."""
        return offering_resource(self.name)

    @classmethod
    def from_runtime_class(cls, rc: dict) -> GPUClass:
        meta = rc.get("metadata") or {}
        ann = meta.get("annotations") or {}
        name = meta.get("name", "?")
        missing = [k for k in (LIMIT_CPU, LIMIT_MEMORY, GPU_PRODUCT, GPU_COUNT) if k not in ann]
        if missing:
            raise CatalogError(f"RuntimeClass {name} lacks annotation(s) {', '.join(missing)}")
        try:
            count = int(ann[GPU_COUNT])
            cpu = float(parse_quantity(ann[LIMIT_CPU]))
            memory = int(parse_quantity(ann[LIMIT_MEMORY]))
        except ValueError as exc:
            raise CatalogError(f"RuntimeClass {name}: {exc}") from None
        if count < 0 or cpu <= 0 or memory <= 0:
            raise CatalogError(f"RuntimeClass {name}: limits and GPU count must be positive")
        if not _RESOURCE_NAME.match(name):
            raise CatalogError(f"RuntimeClass {name}: a GPU offering's name is also the node's extended resource "
                               f"{offering_resource(name)}, whose name part has at most 63 characters: give the "
                               "RuntimeClass a shorter name")
        mig = ann.get(GPU_MIG_PROFILE, "")
        if mig and not _MIG_PROFILE.match(mig):
            raise CatalogError(f"RuntimeClass {name}: annotation {GPU_MIG_PROFILE} {mig!r} is not a MIG profile "
                               "as the NVIDIA GPU operator names them, e.g. 1g.10gb or 3g.40gb")
        return cls(
            name=name,
            handler=ann.get(GPU_HANDLER) or rc.get("handler") or "nvidia",
            gpu_product=ann[GPU_PRODUCT],
            gpu_count=count,
            cpu_limit=cpu,
            memory_limit=memory,
            default_applies=ann.get(LIMIT_DEFAULT, "1") not in ("0", "false"),
            mig_profile=mig,
        )


def runtime_class_manifest(
    name: str, *, node_name: str, gpu_product: str, gpu_count: int, cpu: str, memory: str,
    handler: str = "nvidia", extra_tolerations: tuple[dict, ...] = (), mig_profile: str = "",
) -> dict:
    """A RuntimeClass of the catalog, as the demo, the tests and Terraform create it."""
    manifest = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {
            "name": name,
            "annotations": {
                LIMIT_CPU: cpu,
                LIMIT_MEMORY: memory,
                LIMIT_DEFAULT: "1",
                GPU_PRODUCT: gpu_product,
                GPU_COUNT: str(gpu_count),
                GPU_HANDLER: handler,
            },
        },
        "handler": handler,
        # Each pod takes one of the node's k8s.gpu/<name>, of which the node advertises what the provider can place.
        "overhead": {"podFixed": {offering_resource(name): "1"}},
        "scheduling": {
            "nodeSelector": {NODE_SELECTOR_KEY: node_name},
            "tolerations": [
                {"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "k8sgpu",
                 "effect": "NoSchedule"},
                *extra_tolerations,
            ],
        },
    }
    if mig_profile:
        manifest["metadata"]["annotations"][GPU_MIG_PROFILE] = mig_profile
    return manifest


# The demo catalog's default offering (its smallest), for pods that name no RuntimeClass.
DEMO_DEFAULT_RUNTIME_CLASS = "seeweb-nvidia-1xa6000"
# Its MIG offering: one 1g.10gb slice of an A100 (the dev provider's a100-mig pool).
DEMO_MIG_RUNTIME_CLASS = "k8sgpu-nvidia-a100-mig-1g.10gb"


def demo_catalog(node_name: str = "k8s.gpu") -> list[dict]:
    """The guide's three offerings, and one of MIG slices (the dev provider's a100-mig pool)."""
    return [
        runtime_class_manifest("seeweb-nvidia-1xa6000", node_name=node_name, gpu_product="NVIDIA-RTX-A6000",
                               gpu_count=1, cpu="8000m", memory="32861620Ki"),
        runtime_class_manifest("seeweb-nvidia-2xa6000", node_name=node_name, gpu_product="NVIDIA-RTX-A6000",
                               gpu_count=2, cpu="16000m", memory="65723240Ki"),
        runtime_class_manifest("seeweb-nvidia-1xa100", node_name=node_name, gpu_product="NVIDIA-A100-PCIE-80GB",
                               gpu_count=1, cpu="16000m", memory="131446480Ki"),
        runtime_class_manifest(DEMO_MIG_RUNTIME_CLASS, node_name=node_name,
                               gpu_product="NVIDIA-A100-SXM4-80GB", gpu_count=1, mig_profile="1g.10gb", cpu="6",
                               memory="24Gi"),
    ]
