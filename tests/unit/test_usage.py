"""GPU accounting: the counters' values from a mirror alone (runtime/usage.py), and `k8sgpu usage`'s arithmetic over
what Prometheus answers (cli/usage.py): counter deltas, window edges, replicas deduplicated, pricing, bad flags; its
errors against a real Prometheus with no k8sgpu series and against none at all."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import types
import urllib.request
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from k8sgpu.cli import usage as cli_usage
from k8sgpu.cli.dev.ground import free_port
from k8sgpu.cli.dev.prometheus import add_scrape_target, find_prometheus, prometheus_url
from k8sgpu.cli.dev.prometheus import component as ground_prometheus
from k8sgpu.runtime.admission import pod_resources
from k8sgpu.runtime.catalog import GPUClass, demo_catalog
from k8sgpu.runtime.translate import remote_pod
from k8sgpu.runtime.usage import PodUsageCollector, allocation

T0 = datetime.datetime(2026, 1, 31, 12, 0, 0, tzinfo=datetime.UTC)


def _at(seconds: float) -> str:
    return (T0 + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _offer(name: str) -> GPUClass:
    (rc,) = [rc for rc in demo_catalog() if rc["metadata"]["name"] == name]
    return GPUClass.from_runtime_class(rc)


def mirror(name: str, offer: str, *, started: float | None = None, finished: float | None = None,
           resources: dict | None = None, uid: str = "") -> dict:
    """A mirror as the runtime creates it (translate.remote_pod), with the status a kubelet gives it."""
    gpu_class = _offer(offer)
    container = {"name": "c", "image": "x", **({"resources": resources} if resources else {})}
    pod = {"metadata": {"namespace": "team-a", "name": name, "uid": uid or f"uid-{name}"},
           "spec": {"runtimeClassName": offer, "containers": [container]}}
    wanted = pod_resources(pod, gpu_class)
    obj = remote_pod(pod, gpu_class, "k8s.gpu", wanted)
    obj["metadata"]["uid"] = "remote-" + name
    if started is not None and finished is None:
        obj["status"] = {"phase": "Running", "containerStatuses": [
            {"name": "c", "state": {"running": {"startedAt": _at(started)}}}]}
    elif started is not None:
        obj["status"] = {"phase": "Succeeded", "containerStatuses": [
            {"name": "c", "state": {"terminated": {"startedAt": _at(started), "finishedAt": _at(finished),
                                                    "exitCode": 0}}}]}
    else:
        obj["status"] = {"phase": "Pending"}
    return obj


def exported(collector: PodUsageCollector) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, sample.labels["pod"])] = sample.value
    return out


# -- the counters ---------------------------------------------------------------------------------


def test_a_request_less_pod_is_charged_its_class_limits_and_gpus():
    pod = allocation(mirror("train", "seeweb-nvidia-2xa6000", started=0, finished=100))
    assert (pod.namespace, pod.pod, pod.uid, pod.runtime_class) == ("team-a", "train", "uid-train",
                                                                    "seeweb-nvidia-2xa6000")
    assert (pod.product, pod.mig_profile, pod.gpus) == ("NVIDIA-RTX-A6000", "", 2)
    assert pod.cpu == 16 and pod.memory == 65723240 * 1024
    assert pod.running_seconds(T0.timestamp() + 1000) == 100


def test_a_mig_pod_counts_its_slice_and_names_the_profile():
    pod = allocation(mirror("slice", "k8sgpu-nvidia-a100-mig-1g.10gb", started=0))
    assert (pod.product, pod.mig_profile, pod.gpus) == ("NVIDIA-A100-SXM4-80GB", "1g.10gb", 1)


def test_a_pod_with_requests_is_charged_its_requests():
    pod = allocation(mirror("small", "seeweb-nvidia-1xa6000", started=0,
                            resources={"requests": {"cpu": "2", "memory": "1Gi"}}))
    assert (pod.gpus, pod.cpu, pod.memory) == (1, 2, 2**30)


def test_a_pod_that_never_ran_counts_nothing():
    assert allocation(mirror("waiting", "seeweb-nvidia-1xa6000")).running_seconds(T0.timestamp() + 50) == 0


def test_the_values_are_the_mirrors_own_so_a_restarted_runtime_exports_the_same():
    now = [T0.timestamp() + 60]
    mirrors = [mirror("running", "seeweb-nvidia-2xa6000", started=10),
               mirror("done", "seeweb-nvidia-1xa6000", started=0, finished=30)]
    first = exported(PodUsageCollector(lambda: mirrors, clock=lambda: now[0]))
    restarted = exported(PodUsageCollector(lambda: mirrors, clock=lambda: now[0]))
    assert first == restarted
    assert first[("k8sgpu_pod_gpu_seconds_total", "running")] == 2 * 50
    assert first[("k8sgpu_pod_gpu_seconds_total", "done")] == 30
    assert first[("k8sgpu_pod_cpu_core_seconds_total", "done")] == 8 * 30
    now[0] += 40  # a finished pod stays at its final value; a running one goes on
    later = exported(PodUsageCollector(lambda: mirrors, clock=lambda: now[0]))
    assert later[("k8sgpu_pod_gpu_seconds_total", "running")] == 2 * 90
    assert later[("k8sgpu_pod_gpu_seconds_total", "done")] == 30


def test_a_deleted_mirror_keeps_its_final_value_for_the_retention_then_goes():
    now = [T0.timestamp() + 100]
    running = mirror("cut", "seeweb-nvidia-1xa6000", started=40)
    mirrors = [running]
    collector = PodUsageCollector(lambda: mirrors, retention=30, clock=lambda: now[0])
    mirrors.clear()
    collector.mirror_gone(running)  # deleted while running: it ends when the deletion is seen
    now[0] += 20
    assert exported(collector)[("k8sgpu_pod_gpu_seconds_total", "cut")] == 60
    now[0] += 20
    assert ("k8sgpu_pod_gpu_seconds_total", "cut") not in exported(collector)


# -- `k8sgpu usage`'s arithmetic ------------------------------------------------------------------


def answers(samples: dict[float, dict[str, float]], labels: dict[str, dict]):
    """What Prometheus answers at each time: metric → uid → value (max_over_time over the window, per uid)."""
    def query(promql: str, at: float) -> list[dict]:
        if promql.startswith("count("):
            return [{"metric": {}, "value": [at, "1"]}] if samples else []
        metric = promql.split("max_over_time(")[1].split("[")[0]
        return [{"metric": {**labels[uid], "uid": uid}, "value": [at, str(value)]}
                for uid, value in samples.get(at, {}).get(metric, {}).items()]
    return query


LABELS = {
    "a1": {"namespace": "team-a", "pod": "a1", "runtime_class": "seeweb-nvidia-1xa6000",
           "product": "NVIDIA-RTX-A6000", "mig_profile": ""},
    "a2": {"namespace": "team-a", "pod": "a2", "runtime_class": "seeweb-nvidia-2xa6000",
           "product": "NVIDIA-RTX-A6000", "mig_profile": ""},
    "b1": {"namespace": "team-b", "pod": "b1", "runtime_class": "k8sgpu-nvidia-a100-mig-1g.10gb",
           "product": "NVIDIA-A100-SXM4-80GB", "mig_profile": "1g.10gb"},
}
GPU = "k8sgpu_pod_gpu_seconds_total"


def test_usage_in_a_window_is_the_counter_at_its_end_less_at_its_start():
    query = answers({
        1000.0: {GPU: {"a1": 3600.0, "a2": 100.0}},  # a2 started before the window; b1 inside it
        8200.0: {GPU: {"a1": 3600.0, "a2": 7300.0, "b1": 1800.0}},  # a1 ended before the window
    }, LABELS)
    pods = {p.uid: p for p in cli_usage.pod_usage(query, 1000.0, 8200.0)}
    assert pods["a1"].gpu_seconds == 0 and pods["a2"].gpu_seconds == 7200 and pods["b1"].gpu_seconds == 1800
    result = cli_usage.report(list(pods.values()), "namespace", {}, 1000.0, 8200.0)
    assert [(r["namespace"], r["pods"], r["gpu_hours"]) for r in result["rows"]] == [("team-a", 2, 2.0),
                                                                                      ("team-b", 1, 0.5)]
    assert result["total"]["gpu_seconds"] == 9000 and "cost" not in result["total"]


def test_rows_by_pod_class_and_product_and_the_cost_of_priced_classes():
    pods = cli_usage.pod_usage(answers({0.0: {}, 3600.0: {GPU: {"a1": 3600.0, "a2": 7200.0, "b1": 1800.0}}},
                                       LABELS), 0.0, 3600.0)
    prices = {"seeweb-nvidia-1xa6000": Decimal("1.20"), "seeweb-nvidia-2xa6000": Decimal("1.10")}
    by_class = cli_usage.report(pods, "runtime-class", prices, 0.0, 3600.0)
    costs = {r["runtime-class"]: r["cost"] for r in by_class["rows"]}
    assert costs == {"seeweb-nvidia-1xa6000": 1.2, "seeweb-nvidia-2xa6000": 2.2, "k8sgpu-nvidia-a100-mig-1g.10gb": 0}
    assert by_class["total"]["cost"] == 3.4
    assert by_class["unpriced_runtime_classes"] == ["k8sgpu-nvidia-a100-mig-1g.10gb"]
    by_product = cli_usage.report(pods, "product", {}, 0.0, 3600.0)
    assert [r["product"] for r in by_product["rows"]] == ["NVIDIA-A100-SXM4-80GB/1g.10gb", "NVIDIA-RTX-A6000"]
    by_pod = cli_usage.report(pods, "pod", {}, 0.0, 3600.0)
    assert [r["pod"] for r in by_pod["rows"]] == ["team-a/a1", "team-a/a2", "team-b/b1"]
    table = cli_usage.render(by_class, "table")
    assert "COST" in table.splitlines()[1] and "3.40" in table.splitlines()[-2]
    assert cli_usage.render(by_pod, "csv").splitlines()[0].startswith("pod,pods,gpu-hours")


def test_the_queries_deduplicate_replicas_by_uid_and_reach_back_a_whole_window():
    seen = []

    def query(promql, at):
        seen.append((promql, at))
        return [{"metric": {}, "value": [at, "1"]}] if promql.startswith("count(") else []

    cli_usage.pod_usage(query, 100.0, 3700.0)
    usage_queries = [q for q, _ in seen if q.startswith("max by")]
    assert all(q.startswith("max by (uid, namespace, pod, runtime_class, product, mig_profile)") and "[3600s]" in q
               for q in usage_queries)
    assert {at for q, at in seen if q.startswith("max by")} == {100.0, 3700.0}


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400)])
def test_durations(text, seconds):
    assert cli_usage.duration(text) == seconds


@pytest.mark.parametrize("text,price", [("a=1.20/h", Decimal("1.20")), ("seeweb-nvidia-1xa6000=2", Decimal(2))])
def test_prices(text, price):
    assert cli_usage.price(text)[1] == price


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args,flag", [
    (["--by", "team"], "argument --by"),
    (["--price", "a100"], "argument --price"),
    (["--price", "a=1.2/day"], "argument --price"),
    (["--price", "a=-1/h"], "argument --price"),
    (["--since", "yesterday"], "argument --since"),
    (["--from", "2026-01-31T00:00:00"], "argument --from"),
    (["--since", "1h", "--from", "2026-01-31T00:00:00Z"], "argument --since"),
    (["--from", "2026-01-31T00:00:00Z", "--to", "2026-01-30T00:00:00Z"], "argument --from"),
])
def test_bad_flags_exit_2_naming_the_flag(args, flag):
    out = run("usage", "--prometheus", "http://127.0.0.1:1", *args)
    assert out.returncode == 2, out
    assert flag in out.stderr


def test_an_unreachable_prometheus_is_a_clear_error():
    port = free_port()
    out = run("usage", "--prometheus", f"http://127.0.0.1:{port}")
    assert out.returncode == 1
    assert f"cannot reach Prometheus at http://127.0.0.1:{port}" in out.stderr and "--prometheus" in out.stderr


@pytest.fixture
def prometheus(tmp_path):
    """A real Prometheus (Debian's binary) run as the ground runs it: its generated configuration, file service
    discovery of ``<root>/prometheus/targets``, a 2 s scrape interval; stopped by PID."""
    binary = find_prometheus()
    assert binary, "no prometheus binary: make packages"
    state = types.SimpleNamespace(root=str(tmp_path), worker=None, ports={"prometheus": free_port()},
                                  binaries={"prometheus": binary})
    row = ground_prometheus(state, lambda url: False)
    row.prepare()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(list(row.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    url = prometheus_url(state)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.2)
        yield state, url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_prometheus_without_k8sgpu_series_is_a_clear_error(prometheus):
    _, url = prometheus
    out = run("usage", "--prometheus", url, "--since", "5m")
    assert out.returncode == 1, out
    assert "has no k8sgpu series" in out.stderr


def test_usage_from_a_real_prometheus_scraping_two_replicas_counts_each_pod_once(prometheus):
    """Two exporters of the same mirrors (a leader and a replica during a failover), scraped by the ground's
    Prometheus configuration: each pod counted once, its GPU-seconds as the collector computes them."""
    state, url = prometheus
    now = time.time()
    mirrors = [mirror("train", "seeweb-nvidia-2xa6000", started=now - T0.timestamp() - 100),
               mirror("done", "seeweb-nvidia-1xa6000", started=now - T0.timestamp() - 300,
                      finished=now - T0.timestamp() - 240)]
    collector = PodUsageCollector(lambda: mirrors)
    servers = []
    try:
        for name in ("leader", "replica"):
            registry = CollectorRegistry()
            registry.register(collector)
            port = free_port()
            servers.append(start_http_server(port, "127.0.0.1", registry=registry)[0])
            add_scrape_target(state, name, f"127.0.0.1:{port}")
        deadline = time.monotonic() + 40
        while True:
            out = run("usage", "--prometheus", url, "--since", "10m", "--by", "pod", "-o", "json")
            rows = {r["pod"]: r for r in json.loads(out.stdout)["rows"]} if out.returncode == 0 else {}
            if len(rows) == 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert out.returncode == 0, out.stderr
        assert rows["team-a/done"]["gpu_seconds"] == pytest.approx(60, abs=0.5)
        assert rows["team-a/done"]["pods"] == 1 and rows["team-a/train"]["pods"] == 1
        expected = 2 * allocation(mirrors[0]).running_seconds(time.time())  # its start: whole seconds
        assert expected - 2 * 5 <= rows["team-a/train"]["gpu_seconds"] <= expected  # scraped within the last 5 s
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
