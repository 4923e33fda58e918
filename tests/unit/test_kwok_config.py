import subprocess

import yaml

from k8sgpu.cli.dev.catalog import DEFAULT_POOLS, GPU_PRODUCT_LABEL
from k8sgpu.cli.dev.kwok import EXIT_CODE_ANNOTATION, write_pool_files


def _exec_env(config_docs: list[dict]) -> dict[str, str]:
    exec_doc = next(d for d in config_docs if d["kind"] == "ClusterExec")
    return {e["name"]: e["value"] for e in exec_doc["spec"]["execs"][0]["local"]["envs"]}


def test_nvidia_smi_stand_in_prints_the_pools_gpus(tmp_path):
    pool = next(p for p in DEFAULT_POOLS if p.name == "a6000")
    docs = list(yaml.safe_load_all(write_pool_files(pool, tmp_path).read_text()))
    env = _exec_env(docs)
    listing = subprocess.run(["nvidia-smi", "-L"], env=env, capture_output=True, text=True, check=True).stdout
    assert listing.splitlines() == [f"GPU {i}: NVIDIA-RTX-A6000 (UUID: GPU-a6000-{i})" for i in range(2)]
    table = subprocess.run(["nvidia-smi"], env=env, capture_output=True, text=True, check=True).stdout
    assert table.count("NVIDIA-RTX-A6000") == 2 and "49140MiB" in table


def test_pool_config_has_stages_logs_and_exec(tmp_path):
    pool = DEFAULT_POOLS[0]
    docs = list(yaml.safe_load_all(write_pool_files(pool, tmp_path).read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Stage") == 4 and "ClusterLogs" in kinds and "ClusterExec" in kinds
    assert "ClusterPortForward" in kinds
    end = next(d for d in docs if d["kind"] == "Stage" and d["metadata"]["name"] == "pod-end")
    assert EXIT_CODE_ANNOTATION in end["spec"]["next"]["statusTemplate"]
    logs = next(d for d in docs if d["kind"] == "ClusterLogs")["spec"]["logs"][0]
    assert pool.gpu_product in open(logs["logsFile"]).read()
    assert "previous run" in open(logs["previousLogsFile"]).read()
    restarted = next(d for d in docs if d["kind"] == "Stage" and d["metadata"]["name"] == "pod-ready-restarted")
    assert "lastState" in restarted["spec"]["next"]["statusTemplate"]


def test_node_manifest_offers_gpus_and_product_label():
    pool = DEFAULT_POOLS[1]
    node = pool.node_manifest(pool.node_names()[0])
    assert node["status"]["capacity"]["nvidia.com/gpu"] == str(pool.gpus_per_node)
    assert node["metadata"]["labels"][GPU_PRODUCT_LABEL] == pool.gpu_product


def test_a_mig_pool_advertises_slices_as_the_gpu_operators_mixed_strategy_does():
    pool = next(p for p in DEFAULT_POOLS if p.mig_slices)
    node = pool.node_manifest(pool.node_names()[0])
    resources, labels = node["status"]["allocatable"], node["metadata"]["labels"]
    assert resources["nvidia.com/gpu"] == "0"
    assert resources["nvidia.com/mig-1g.10gb"] == "7" and resources["nvidia.com/mig-3g.40gb"] == "2"
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert labels["nvidia.com/mig-3g.40gb.product"] == f"{pool.gpu_product}-MIG-3g.40gb"
    assert labels["nvidia.com/mig-3g.40gb.memory"] == "40960" and labels["nvidia.com/mig-3g.40gb.slices.gi"] == "3"
