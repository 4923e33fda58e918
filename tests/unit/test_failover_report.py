from k8sgpu.cli.failover import _micro, table


def test_table_lists_each_failover_and_the_summary_per_kind():
    report = {
        "failovers": [
            {"kind": "SIGKILL", "old": "failover-a", "new": "failover-b", "node_lease_s": 17.2, "pod_running_s": 17.9,
             "stop_s": 0},
            {"kind": "SIGTERM", "old": "failover-b", "new": "failover-a", "node_lease_s": 2.1, "pod_running_s": 2.6,
             "stop_s": 0.4},
        ],
        "SIGKILL": {"node_lease_s": {"p50": 17.2, "max": 17.2}, "pod_running_s": {"p50": 17.9, "max": 17.9}},
        "SIGTERM": {"node_lease_s": {"p50": 2.1, "max": 2.1}, "pod_running_s": {"p50": 2.6, "max": 2.6}},
        "pods": 203, "lost": [], "duplicate_mirrors": 0,
    }
    text = table(report)
    assert "| 1 | SIGKILL | failover-a → failover-b | 17.20 | 17.90 | 0.00 |" in text
    assert "SIGTERM: node Lease renewed p50 2.10 s, max 2.10 s; new pod Running p50 2.60 s, max 2.60 s" in text
    assert text.endswith("pods: 203, lost: 0, duplicate mirrors: 0")


def test_a_lease_micro_time_reads_as_unix_time():
    assert _micro("1970-01-01T00:00:01.500000Z") == 1.5
