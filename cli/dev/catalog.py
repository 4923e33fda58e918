"""The simulated provider's GPU nodes, after the product guide's offerings."""

from __future__ import annotations

import dataclasses

# Labels in the style of NVIDIA GPU feature discovery, which real GPU clouds carry.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
POOL_LABEL = "dev.k8sgpu.io/pool"
# What the NVIDIA GPU operator's mixed MIG strategy puts on a node whose GPUs are partitioned.
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"


@dataclasses.dataclass(frozen=True)
class GPUPool:
    """Identical kwok nodes; one kwok controller simulates each pool."""

    name: str
    gpu_product: str
    gpus_per_node: int
    gpu_memory_mib: int
    nodes: int
    cpu: str = "63"
    memory: str = "257554212Ki"  # ~245 GiB, as the guide's nodes show
    pods: str = "110"
    pod_cidr: str = "10.64.0.1/16"
    mig_slices: tuple[tuple[str, int], ...] = ()
    """MIG slices per node, (profile, count), as the GPU operator's mixed strategy advertises them: a resource
    nvidia.com/mig-<profile> each, with its labels; the node's GPUs are then no whole nvidia.com/gpu."""

    def node_names(self) -> list[str]:
        return [f"gpu-{self.name}-{i}" for i in range(self.nodes)]

    def node_manifest(self, node_name: str) -> dict:
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": self.pods,
            "nvidia.com/gpu": str(0 if self.mig_slices else self.gpus_per_node),
        }
        mig_labels: dict[str, str] = {}
        if self.mig_slices:
            mig_labels = {"nvidia.com/mig.capable": "true", MIG_STRATEGY_LABEL: "mixed",
                          "nvidia.com/mig.config": "custom-mixed"}
        for profile, count in self.mig_slices:
            resources[f"nvidia.com/mig-{profile}"] = str(count)
            slices, gigabytes = profile.split("g.", 1)
            mig_labels.update({
                f"nvidia.com/mig-{profile}.count": str(count),
                f"nvidia.com/mig-{profile}.product": f"{self.gpu_product}-MIG-{profile}",
                f"nvidia.com/mig-{profile}.memory": str(int(gigabytes.removesuffix("gb")) * 1024),
                f"nvidia.com/mig-{profile}.slices.gi": slices,
                f"nvidia.com/mig-{profile}.slices.ci": slices,
            })
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_name,
                "labels": {
                    "type": "kwok",
                    POOL_LABEL: self.name,
                    GPU_PRODUCT_LABEL: self.gpu_product,
                    GPU_COUNT_LABEL: str(self.gpus_per_node),
                    GPU_MEMORY_LABEL: str(self.gpu_memory_mib),
                    "kubernetes.io/hostname": node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    **mig_labels,
                },
                # metrics-server reads this node's resource metrics at kwok's path for it.
                "annotations": {"kwok.x-k8s.io/node": "fake",
                                "metrics.k8s.io/resource-metrics-path": f"/metrics/nodes/{node_name}/metrics/resource"},
            },
            "status": {"capacity": resources, "allocatable": resources},
        }


DEFAULT_POOLS: tuple[GPUPool, ...] = (
    GPUPool(
        name="a6000", gpu_product="NVIDIA-RTX-A6000", gpus_per_node=2, gpu_memory_mib=49140, nodes=2,
        pod_cidr="10.64.0.1/16",
    ),
    GPUPool(
        name="a100", gpu_product="NVIDIA-A100-PCIE-80GB", gpus_per_node=2, gpu_memory_mib=81920, nodes=2,
        pod_cidr="10.65.0.1/16",
    ),
    # One A100 node partitioned for the mixed strategy: GPU 0 into seven 1g.10gb slices, GPU 1 into two 3g.40gb.
    GPUPool(
        name="a100-mig", gpu_product="NVIDIA-A100-SXM4-80GB", gpus_per_node=2, gpu_memory_mib=81920, nodes=1,
        pod_cidr="10.66.0.1/16", mig_slices=(("1g.10gb", 7), ("3g.40gb", 2)),
    ),
)

TENANT_NAMESPACE = "tenant-demo"
