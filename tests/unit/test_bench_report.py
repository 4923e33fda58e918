from k8sgpu.cli.bench import _pct, table


def test_percentiles_pick_from_the_sorted_values():
    values = [float(v) for v in range(1, 101)]
    assert _pct(values, 50) == 51.0 and _pct(values, 99) == 99.0 and _pct([5.0], 99) == 5.0


def test_table_lists_every_size_and_the_recovery_figures():
    results = {
        "overhead": [{"n": 100, "baseline_s": 2.0, "virtual_s": 2.5, "ratio": 1.25, "added_p50_ms": 40.0,
                      "added_p99_ms": 90.0}],
        "footprint": [{"n": 100, "rss_mb": 80.0, "cpu_s_for_n": 1.5}],
        "recovery": {"pods": 100, "outage_s": 60, "mirrors_right_after_outage_s": 2.0,
                     "consistent_after_outage_s": 3.2, "resync_after_kill9_s": 1.1},
        "idle_cpu_percent": 0.2, "idle_with_pods": 100,
    }
    text = table(results)
    assert "| 100 | 2.0 | 2.5 | 1.25 | 40.0 | 90.0 | 80.0 | 1.5 |" in text
    assert "after a 60 s provider outage with 100 pods: mirrors right in 2.0 s, consistent in 3.2 s" in text
    assert "resynced 1.1 s after kill -9" in text
