"""GPU accounting end to end: pods of known offerings run for known durations on a node of their own (usage.gpu),
one of them ending while its runtime is down and one running across the runtime's restart; the ground's Prometheus
scrapes the runtime; `k8sgpu usage --by namespace` then reports GPU-seconds within 5 % of the truth, the mirrors' own
start and finish times. And every panel of dashboards/k8sgpu.json runs against that Prometheus and returns series."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes.client.rest import ApiException

from k8sgpu.cli.dev.kwok import EXIT_CODE_ANNOTATION, RUN_FOR_ANNOTATION
from k8sgpu.cli.dev.prometheus import add_scrape_target, prometheus_url, remove_scrape_target
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac
from k8sgpu.runtime.translate import ORIGIN_UID_LABEL

from .helpers import NodeRuntime, kubectl, remove_node, wait_for

pytestmark = pytest.mark.e2e

NODE = "usage.gpu"
TEAM_A, TEAM_B = "k8sgpu-usage-a", "k8sgpu-usage-b"
RBAC_NAME = "k8sgpu-runtime-usage"
ONE_GPU, TWO_GPUS = "usage-1xa6000", "usage-2xa100"
CATALOG = [
    runtime_class_manifest(ONE_GPU, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=1, cpu="8000m",
                           memory="32861620Ki"),
    runtime_class_manifest(TWO_GPUS, node_name=NODE, gpu_product="NVIDIA-A100-PCIE-80GB", gpu_count=2, cpu="16",
                           memory="64Gi"),
]
DASHBOARD = Path(__file__).parents[2] / "dashboards" / "k8sgpu.json"


@pytest.fixture(scope="module")
def runtime(ground, local, tmp_path_factory):
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in (TEAM_A, TEAM_B)]
    kubectl(ground.local.kubeconfig, "apply", "-f", "-",
            stdin=yaml.safe_dump_all([*namespaces, *CATALOG, *extra_rbac(NODE, RBAC_NAME)]))
    rt = NodeRuntime(ground, NODE, tmp_path_factory.mktemp("usage"))
    add_scrape_target(ground, "usage-gpu", f"127.0.0.1:{rt.health_port}")
    try:
        rt.start()
        yield rt
    finally:
        rt.proc.stop()
        print(rt.proc.tail(120))
        remove_scrape_target(ground, "usage-gpu")
        kubectl(ground.local.kubeconfig, "delete", "namespace", TEAM_A, TEAM_B, "--wait=false", check=False)
        kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding,clusterrole", RBAC_NAME, check=False)
        kubectl(ground.local.kubeconfig, "delete", "runtimeclass", ONE_GPU, TWO_GPUS, check=False)
        try:
            remove_node(ground.local.kubeconfig, NODE)
        except ApiException as exc:
            assert exc.status == 404


def job(name: str, runtime_class: str, run_for: str) -> dict:
    """A pod that runs for ``run_for`` and exits 0 (kwok ends it)."""
    return {"metadata": {"name": name, "annotations": {EXIT_CODE_ANNOTATION: "0", RUN_FOR_ANNOTATION: run_for}},
            "spec": {"runtimeClassName": runtime_class, "restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "cuda", "command": ["train"]}]}}


def _epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def mirror(provider, ground, uid: str) -> dict | None:
    found = provider.list_namespaced_pod(ground.tenant_namespace, label_selector=f"{ORIGIN_UID_LABEL}={uid}").items
    return provider.api_client.sanitize_for_serialization(found[0]) if found else None


def mirror_phase(provider, ground, uid: str) -> str:
    found = mirror(provider, ground, uid)
    return ((found or {}).get("status") or {}).get("phase", "")


def ran_for(found: dict) -> tuple[float, float]:
    """(start, end) of an ended mirror, from its own container status."""
    (terminated,) = [c["state"]["terminated"] for c in found["status"]["containerStatuses"]]
    return _epoch(terminated["startedAt"]), _epoch(terminated["finishedAt"])


def query(url: str, promql: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def usage(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", "usage", "--prometheus", url, *args],
                          capture_output=True, text=True, timeout=60)


def test_gpu_seconds_per_namespace_across_a_runtime_restart(runtime, local, provider, ground):
    url = prometheus_url(ground)
    assert url, "the ground has no Prometheus"
    started = time.time()
    # team-a: 1 GPU for 20 s, ending while the runtime is down; and 2 GPUs for 8 s, deleted after it ended.
    # team-b: 2 GPUs for 45 s, running across the runtime's restart.
    pods = {("short", TEAM_A): job("short", ONE_GPU, "20s"), ("quick", TEAM_A): job("quick", TWO_GPUS, "8s"),
            ("long", TEAM_B): job("long", TWO_GPUS, "45s")}
    uids = {}
    for (name, ns), manifest in pods.items():
        uids[name] = local.create_namespaced_pod(ns, manifest).metadata.uid
    wait_for(lambda: all(mirror_phase(provider, ground, uids[n]) in ("Running", "Succeeded") for n in uids), 60,
             "the mirrors to run")
    wait_for(lambda: mirror_phase(provider, ground, uids["quick"]) == "Succeeded", 30, "quick to end")
    times = {"quick": ran_for(mirror(provider, ground, uids["quick"]))}  # before its mirror goes

    runtime.kill()
    wait_for(lambda: mirror_phase(provider, ground, uids["short"]) == "Succeeded", 40,
             "short to end while its runtime is down")
    assert mirror_phase(provider, ground, uids["long"]) == "Running"
    runtime.start()
    local.delete_namespaced_pod("quick", TEAM_A)
    wait_for(lambda: mirror(provider, ground, uids["quick"]) is None, 60, "quick's mirror to go")
    wait_for(lambda: mirror_phase(provider, ground, uids["long"]) == "Succeeded", 60, "long to end")

    times.update({name: ran_for(mirror(provider, ground, uids[name])) for name in ("short", "long")})
    seconds = {name: end - start for name, (start, end) in times.items()}
    # The simulated durations are what the mirrors recorded (kwok ends a pod within a second or two).
    for name, run_for in (("quick", 8), ("short", 20), ("long", 45)):
        assert run_for - 1 <= seconds[name] <= run_for + 4, seconds
    last_end = max(end for _, end in times.values())
    wait_for(lambda: [s for s in query(url, 'timestamp(k8sgpu_build_info{runtime="usage-gpu"})')
                      if float(s["value"][1]) > last_end + 4], 30, "a scrape after the last pod ended")

    out = usage(url, "--by", "namespace", "-o", "json", "--from", f"{started - 60:.0f}")
    assert out.returncode == 0, out.stderr
    result = {row["namespace"]: row for row in json.loads(out.stdout)["rows"]}
    # quick's mirror is gone: its last exported value stays in Prometheus.
    truth = {TEAM_A: 1 * seconds["short"] + 2 * seconds["quick"], TEAM_B: 2 * seconds["long"]}
    for ns, expected in truth.items():
        assert ns in result, (ns, out.stdout)
        assert abs(result[ns]["gpu_seconds"] - expected) <= 0.05 * expected, (ns, result[ns], expected)
    assert result[TEAM_A]["pods"] == 2 and result[TEAM_B]["pods"] == 1
    assert abs(result[TEAM_B]["cpu_core_seconds"] - 16 * seconds["long"]) <= 0.05 * 16 * seconds["long"]

    table = usage(url, "--by", "runtime-class", "--price", f"{TWO_GPUS}=2.50/h", "--from", f"{started - 60:.0f}")
    assert table.returncode == 0, table.stderr
    assert TWO_GPUS in table.stdout and "COST" in table.stdout


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    found = [(p["title"], t["expr"]) for p in panels for t in p.get("targets") or []]
    assert len(found) >= 6
    return found


def test_every_dashboard_panel_returns_series(runtime, ground):
    """The accounting panels once the test above ran; pod start latency, API errors, queue depth and provider
    reachability read the runtime's operational metrics."""
    url = prometheus_url(ground)
    wait_for(lambda: query(url, 'k8sgpu_build_info{runtime="usage-gpu"}'), 30, "the runtime to be scraped")
    empty = [(title, expr) for title, expr in dashboard_queries() if not query(url, expr)]
    assert not empty, f"panels whose query returns no series: {empty}"
