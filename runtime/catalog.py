"""GPU offerings, read from the RuntimeClasses that name this node.

The guide's annotations give per-pod limits (`limits.k8s.gpu/cpu`,
`limits.k8s.gpu/memory`, `limits.k8s.gpu/default`); ours say what the pod gets
on the provider side (`gpu.k8s.gpu/product`, `gpu.k8s.gpu/count`,
`gpu.k8s.gpu/handler`). `scheduling.nodeSelector` on the RuntimeClass points
pods at the virtual node, so users write only `runtimeClassName`.
"""

from __future__ import annotations

import dataclasses

from .quantity import parse_quantity

LIMIT_CPU = "limits.k8s.gpu/cpu"
LIMIT_MEMORY = "limits.k8s.gpu/memory"
LIMIT_DEFAULT = "limits.k8s.gpu/default"
GPU_PRODUCT = "gpu.k8s.gpu/product"
GPU_COUNT = "gpu.k8s.gpu/count"
GPU_HANDLER = "gpu.k8s.gpu/handler"
NODE_SELECTOR_KEY = "kubernetes.io/hostname"

# The label GPU feature discovery puts on provider nodes, used to place the remote pod.
PROVIDER_PRODUCT_LABEL = "nvidia.com/gpu.product"


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
        return cls(
            name=name,
            handler=ann.get(GPU_HANDLER) or rc.get("handler") or "nvidia",
            gpu_product=ann[GPU_PRODUCT],
            gpu_count=count,
            cpu_limit=cpu,
            memory_limit=memory,
            default_applies=ann.get(LIMIT_DEFAULT, "1") not in ("0", "false"),
        )


def runtime_class_manifest(
    name: str, *, node_name: str, gpu_product: str, gpu_count: int, cpu: str, memory: str,
    handler: str = "nvidia", extra_tolerations: tuple[dict, ...] = (),
) -> dict:
    """A RuntimeClass of the catalog, as the demo, the tests and Terraform create it."""
    return {
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
        "scheduling": {
            "nodeSelector": {NODE_SELECTOR_KEY: node_name},
            "tolerations": [
                {"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "k8sgpu",
                 "effect": "NoSchedule"},
                *extra_tolerations,
            ],
        },
    }


def demo_catalog(node_name: str = "k8s.gpu") -> list[dict]:
    """The guide's three offerings."""
    return [
        runtime_class_manifest("seeweb-nvidia-1xa6000", node_name=node_name, gpu_product="NVIDIA-RTX-A6000",
                               gpu_count=1, cpu="8000m", memory="32861620Ki"),
        runtime_class_manifest("seeweb-nvidia-2xa6000", node_name=node_name, gpu_product="NVIDIA-RTX-A6000",
                               gpu_count=2, cpu="16000m", memory="65723240Ki"),
        runtime_class_manifest("seeweb-nvidia-1xa100", node_name=node_name, gpu_product="NVIDIA-A100-PCIE-80GB",
                               gpu_count=1, cpu="16000m", memory="131446480Ki"),
    ]
