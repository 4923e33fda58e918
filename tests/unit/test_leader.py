"""The leader election's decisions (client-go's tryAcquireOrRenew, ReleaseOnCancel) and its settings, with no API:
the reads and writes against a real kube-apiserver are in tests/e2e/test_leader_election.py."""

from __future__ import annotations

import pytest

from k8sgpu.runtime.config import ConfigError, build, parse_seconds
from k8sgpu.runtime.leader import LeaderElector, Record, decide, released

NOW = "2026-12-02T01:00:00.000000Z"
EARLIER = "2026-12-02T00:59:50.000000Z"
OTHER = Record("runtime-b", 15, EARLIER, EARLIER, 3)


@pytest.mark.parametrize("current, observed_at, now, expected", [
    # No Lease yet: create it, as the first holder.
    (None, 0, 100, Record("runtime-a", 15, NOW, NOW, 0)),
    # Held by another, and it changed less than a lease duration ago as we saw it: stand by.
    (OTHER, 90, 100, None),
    (OTHER, 85.5, 100, None),
    # ... a lease duration after we last saw it change (its renewTime's own clock does not matter): take it over.
    (OTHER, 85, 100, Record("runtime-a", 15, NOW, NOW, 4)),
    (OTHER, 0, 100, Record("runtime-a", 15, NOW, NOW, 4)),
    # Released (holder cleared): take it at once, however recently it changed.
    (Record("", 1, EARLIER, EARLIER, 3), 100, 100, Record("runtime-a", 15, NOW, NOW, 4)),
    # Ours: renew, keeping acquireTime and the transitions.
    (Record("runtime-a", 15, EARLIER, EARLIER, 3), 99, 100, Record("runtime-a", 15, EARLIER, NOW, 3)),
    # Ours though we do not remember it (the container restarted in the same pod, $POD_NAME the same): take it
    # back at once, no transition.
    (Record("runtime-a", 15, EARLIER, EARLIER, 3), 100, 100, Record("runtime-a", 15, EARLIER, NOW, 3)),
])
def test_decide(current, observed_at, now, expected):
    assert decide(current, observed_at, now, "runtime-a", 15, NOW) == expected


def test_the_lease_duration_judged_is_the_records_not_ours():
    short = Record("runtime-b", 5, EARLIER, EARLIER, 0)
    assert decide(short, 94, 100, "runtime-a", 15, NOW) is not None
    assert decide(short, 96, 100, "runtime-a", 15, NOW) is None


def test_release_clears_the_holder_and_keeps_the_transitions():
    assert released(Record("runtime-a", 15, EARLIER, EARLIER, 7), NOW) == Record("", 1, NOW, NOW, 7)


def test_record_round_trips_through_a_lease_spec():
    record = Record("runtime-a", 15, EARLIER, NOW, 2)
    assert Record.from_lease({"spec": record.spec()}) == record
    assert released(record, NOW).spec()["holderIdentity"] is None  # cleared, as client-go writes ""
    assert Record.from_lease({"spec": {}}) == Record()


@pytest.mark.parametrize("durations", [(10, 10, 2), (15, 10, 9), (15, 10, 0)])
def test_the_elector_refuses_timings_that_cannot_work(durations):
    lease, renew, retry = durations
    with pytest.raises(ValueError, match="lease duration > renew deadline"):
        LeaderElector(None, "ns", "n", "id", lease_duration=lease, renew_deadline=renew, retry_period=retry)


# -- settings ----------------------------------------------------------------------------------------------------

@pytest.fixture
def base(tmp_path):
    tenant = tmp_path / "tenant.kubeconfig"
    tenant.write_text("apiVersion: v1\nkind: Config\n")
    election = tmp_path / "election.kubeconfig"
    election.write_text("apiVersion: v1\nkind: Config\n")
    return {"provider_kubeconfig": str(tenant), "tenant_namespace": "t", "node_name": "n.gpu"}, str(election)


@pytest.fixture
def service_account(tmp_path):
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("token")
    (directory / "namespace").write_text("k8sgpu\n")
    return directory


def test_in_a_pod_the_election_is_on_with_the_pods_namespace_and_name(base, service_account):
    flags, _ = base
    cfg = build(flags, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAME": "runtime-7d9-x"}, service_account)
    le = cfg.leader_election
    assert (le.leader_elect, le.resource_namespace, le.resource_name, le.identity) == \
        (True, "k8sgpu", "n.gpu", "runtime-7d9-x")
    assert (le.lease_duration_seconds, le.renew_deadline_seconds, le.retry_period_seconds) == (15, 10, 2)


def test_with_no_identity_to_write_the_lease_the_election_is_off(base, tmp_path):
    flags, _ = base
    assert build(flags, {}, tmp_path / "none").leader_election.leader_elect is False


def test_outside_a_pod_a_kubeconfig_writes_the_lease_in_a_namespace_named(base, tmp_path):
    flags, election = base
    with pytest.raises(ConfigError) as err:
        build({**flags, "leader_elect_kubeconfig": election}, {}, tmp_path / "none")
    assert err.value.field == "--leader-elect-resource-namespace"
    cfg = build({**flags, "leader_elect_kubeconfig": election, "leader_elect_resource_namespace": "ns"}, {},
                tmp_path / "none")
    le = cfg.leader_election
    assert le.leader_elect and le.kubeconfig == election and le.resource_namespace == "ns"
    host, _, suffix = le.identity.rpartition("_")
    assert host and len(suffix) == 36  # hostname_<uuid>: two runtimes on one host are two candidates


def test_no_leader_elect_turns_it_off_even_in_a_pod(base, service_account):
    flags, _ = base
    cfg = build({**flags, "leader_elect": False}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, service_account)
    assert cfg.leader_election.leader_elect is False


def test_durations_come_as_seconds_or_go_durations_from_flags_and_environment(base, service_account):
    flags, _ = base
    cfg = build({**flags, "leader_elect_lease_duration": "1m", "leader_elect_renew_deadline": "20s"},
                {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "K8SGPU_LEADER_ELECT_RETRY_PERIOD": "500ms"},
                service_account)
    le = cfg.leader_election
    assert (le.lease_duration_seconds, le.renew_deadline_seconds, le.retry_period_seconds) == (60, 20, 0.5)
    assert parse_seconds("1m30s") == 90 and parse_seconds("2.5") == 2.5


@pytest.mark.parametrize("flags, field", [
    ({"leader_elect_renew_deadline": "15s"}, "--leader-elect-renew-deadline"),
    ({"leader_elect_retry_period": "9s"}, "--leader-elect-retry-period"),
    ({"leader_elect_lease_duration": "0"}, "--leader-elect-lease-duration"),
    ({"leader_elect_lease_duration": "soon"}, "--leader-elect-lease-duration"),
    ({"leader_elect_resource_name": "Not_A_Name"}, "--leader-elect-resource-name"),
    ({"leader_elect_resource_namespace": "Bad_NS"}, "--leader-elect-resource-namespace"),
    ({"leader_elect_kubeconfig": "/nonexistent"}, "--leader-elect-kubeconfig"),
])
def test_wrong_election_settings_name_the_flag(base, service_account, flags, field):
    with pytest.raises(ConfigError) as err:
        build({**base[0], **flags}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, service_account)
    assert err.value.field == field


def test_the_config_file_has_a_leader_election_section(base, service_account, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("leader_election: {resource_name: my-lease, retry_period_seconds: 1}\n")
    cfg = build({**base[0], "config": str(path)}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, service_account)
    assert (cfg.leader_election.resource_name, cfg.leader_election.retry_period_seconds) == ("my-lease", 1)
