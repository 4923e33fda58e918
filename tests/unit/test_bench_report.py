import subprocess
import sys
from types import SimpleNamespace

from k8sgpu.cli.bench import STAGES, Run, _limit_latencies_ms, _pct, plot, stage_times_ms, table


def _watch(seen=None, bound=None, running=None):
    # What a PodWatch recorded: first moments per pod name (the bench's monotonic clock).
    return SimpleNamespace(seen=seen or {}, bound=bound or {}, running=running or {})


def test_percentiles_pick_from_the_sorted_values():
    values = [float(v) for v in range(1, 101)]
    assert _pct(values, 50) == 51.0 and _pct(values, 99) == 99.0 and _pct([5.0], 99) == 5.0


def _overhead(n=100):
    return {"n": n, "baseline_s": 2.0, "limit_s": 2.2, "virtual_s": 2.5, "ratio": 1.25, "ratio_to_limit": 1.136,
            "added_p50_ms": 40.0, "added_p99_ms": 90.0, "added_to_limit_p50_ms": 12.0, "added_to_limit_p99_ms": 30.0,
            "cpu_ms_per_pod": 2.5, "requests_per_pod": {"local PATCH": 2.0, "provider POST": 1.0},
            "stages": {s: {"p50_ms": float(i), "p99_ms": float(10 * i)} for i, s in enumerate(STAGES, 1)},
            "latencies_baseline_ms": [10.0, 20.0], "latencies_limit_ms": [15.0, 25.0],
            "latencies_virtual_ms": [20.0, 30.0], "running_at_baseline_s": [0.1, 0.2],
            "running_at_limit_s": [0.1, 0.3], "running_at_virtual_s": [0.2, 0.4]}


RESULTS = {
    "overhead": [_overhead()],
    "footprint": [{"n": 100, "rss_mb": 80.0, "cpu_s_for_n": 1.5}],
    "light_load": {"rate_per_s": 5.0, "seconds": 60, "pods": 300, "limit_p50_ms": 100.0, "limit_p99_ms": 200.0,
                   "virtual_p50_ms": 130.0, "virtual_p99_ms": 260.0, "added_p50_ms": 30.0, "added_p99_ms": 60.0,
                   "stages": {s: {"p50_ms": 1.0, "p99_ms": 2.0} for s in STAGES},
                   "latencies_limit_ms": [100.0, 200.0], "latencies_virtual_ms": [130.0, 260.0]},
    "recovery": {"pods": 100, "outage_s": 60, "mirrors_right_after_outage_s": 2.0,
                 "consistent_after_outage_s": 3.2, "resync_after_kill9_s": 1.1},
    "idle_cpu_percent": 0.2, "idle_with_pods": 100,
}


def test_table_lists_every_size_the_stages_and_the_recovery_figures():
    text = table(RESULTS)
    assert "| 100 | 2.0 | 2.2 | 2.5 | 1.25 | 1.136 | 40.0 | 90.0 | 2.5 | 80.0 | 1.5 |" in text
    assert "| N = 100 | 1.0 / 10.0 | 2.0 / 20.0 | 3.0 / 30.0 | 4.0 / 40.0 |" in text
    assert "| 5/s for 60 s | 1.0 / 2.0 |" in text
    assert "added 30.0 / 60.0 ms" in text
    assert "API requests per pod through k8s.gpu, N = 100: local PATCH 2.0, provider POST 1.0" in text
    assert "after a 60 s provider outage with 100 pods: mirrors right in 2.0 s, consistent in 3.2 s" in text
    assert "resynced 1.1 s after kill -9" in text


def test_stages_run_from_create_to_local_running_through_the_mirror():
    run = Run(["a"], {"a": 1.0}, local=_watch(bound={"a": 1.1}, running={"a": 1.7}),
              remote=_watch(seen={"a": 1.25}, running={"a": 1.5}))
    times = stage_times_ms(run)
    assert [round(times[s][0]) for s in STAGES] == [100, 150, 250, 200]


def test_the_limit_of_a_pod_is_its_local_pod_then_its_provider_pod():
    local = Run(["a", "b"], {"a": 0.0, "b": 0.0}, local=_watch(running={"a": 0.2, "b": 0.3}))
    remote = Run(["a", "b"], {"a": 0.0, "b": 0.1}, local=_watch(running={"a": 0.1, "b": 0.5}))
    assert [round(x) for x in _limit_latencies_ms(local, remote)] == [300, 700]


def test_the_plot_is_written(tmp_path):
    path = tmp_path / "bench.png"
    plot(RESULTS, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_sizes_exit_non_zero_naming_the_flag():
    proc = subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", "bench", "--sizes", "100,x"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "--sizes" in proc.stderr and "100,x" in proc.stderr
