"""The pure parts of what the runtime writes about a pod: conditions merged by type, Ready decided with readiness
gates as a kubelet does, the mirror's labels and annotations following the local pod's."""

import json

from k8sgpu.runtime.translate import (
    COPIED_KEYS,
    KIND_LABEL,
    NODE_LABEL,
    ORIGIN_NAME,
    ORIGIN_NAMESPACE,
    ORIGIN_UID_LABEL,
    kubelet_conditions,
    mirror_metadata,
    mirror_metadata_patch,
    ready_condition,
    status_patch,
)

T0, T1, NOW = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"
GATES = [{"conditionType": "example.com/feature"}]


def mirror_running() -> dict:
    return {"phase": "Running", "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}], "conditions": [
        {"type": "Initialized", "status": "True", "lastTransitionTime": T1},
        {"type": "Ready", "status": "True", "lastTransitionTime": T1},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": T1},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": T1},  # the provider scheduler's
    ]}


def by_type(conditions: list[dict]) -> dict[str, dict]:
    return {c["type"]: c for c in conditions}


def test_only_kubelet_conditions_are_written_and_others_are_left_to_their_writers():
    local = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": T0},
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "lastTransitionTime": T0},
        {"type": "k8sgpu.io/Admitted", "status": "False", "reason": "MandatorySecretNotFound"},
    ]}
    patch = status_patch(local, mirror_running(), [], NOW, dropped_conditions=("k8sgpu.io/Admitted",))
    written = by_type(patch["conditions"])
    assert set(written) == {"Initialized", "Ready", "ContainersReady", "k8sgpu.io/Admitted"}
    assert written["k8sgpu.io/Admitted"] == {"type": "k8sgpu.io/Admitted", "$patch": "delete"}
    assert written["Ready"] == {"type": "Ready", "status": "True", "lastTransitionTime": T1}
    assert patch["phase"] == "Running" and patch["podIP"] == "10.0.0.7"
    assert patch["podIPs"] == [{"ip": "10.0.0.7"}, {"$patch": "replace"}]


def test_nothing_is_written_when_the_owned_conditions_agree():
    local = {**mirror_running(), "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": T0},
        {"type": "example.com/other", "status": "True"},
        *[c for c in mirror_running()["conditions"] if c["type"] != "PodScheduled"]]}
    assert status_patch(local, mirror_running(), [], NOW) is None


def test_a_changed_condition_keeps_or_takes_its_transition_time():
    local = {"conditions": [{"type": "Ready", "status": "True", "reason": "Old", "lastTransitionTime": T0},
                            {"type": "Initialized", "status": "False", "lastTransitionTime": T0}]}
    written = by_type(kubelet_conditions(mirror_running()["conditions"], local["conditions"], [], NOW))
    assert written["Ready"]["lastTransitionTime"] == T0  # same status: no transition
    assert written["Initialized"]["lastTransitionTime"] == T1  # a transition: when the mirror made it


def test_readiness_gates_hold_ready_until_their_conditions_are_true():
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": T1}
    absent = ready_condition(ready, GATES, [])
    assert absent["status"] == "False" and absent["reason"] == "ReadinessGatesNotReady"
    assert absent["message"] == 'corresponding condition of pod readiness gate "example.com/feature" does not exist.'
    false = ready_condition(ready, GATES, [{"type": "example.com/feature", "status": "False"}])
    assert false["message"] == 'the status of pod readiness gate "example.com/feature" is not "True", but False'
    assert ready_condition(ready, GATES, [{"type": "example.com/feature", "status": "True"}]) == ready
    assert ready_condition(ready, [], []) == ready
    # Containers not ready: the mirror's Ready says why, gates or not.
    unready = {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}
    assert ready_condition(unready, GATES, []) == unready


def test_two_gates_are_named_in_one_message_and_the_transition_is_now():
    gates = [{"conditionType": "a.example/x"}, {"conditionType": "b.example/y"}]
    written = by_type(kubelet_conditions(mirror_running()["conditions"], [{"type": "a.example/x", "status": "True"}],
                                         gates, NOW))
    assert written["Ready"]["status"] == "False" and '"b.example/y"' in written["Ready"]["message"]
    assert '"a.example/x"' not in written["Ready"]["message"]
    assert written["Ready"]["lastTransitionTime"] == NOW
    assert written["ContainersReady"]["status"] == "True"


def test_a_gated_pod_turns_ready_when_its_gate_does():
    local = {**mirror_running(), "conditions": [
        {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady", "message": "m",
         "lastTransitionTime": T1},
        {"type": "example.com/feature", "status": "True", "lastTransitionTime": NOW}]}
    patch = status_patch(local, mirror_running(), GATES, NOW)
    assert by_type(patch["conditions"])["Ready"] == {"type": "Ready", "status": "True", "lastTransitionTime": NOW}
    assert "example.com/feature" not in by_type(patch["conditions"])


def test_a_reason_the_mirror_lacks_is_cleared():
    local = {**mirror_running(), "reason": "MandatorySecretNotFound", "message": "Secret s not found"}
    patch = status_patch(local, mirror_running(), [], NOW)
    assert patch["reason"] is None and patch["message"] is None


def meta(labels: dict, annotations: dict | None = None) -> dict:
    return {"name": "p", "namespace": "ml", "uid": "uid-1", "labels": labels, "annotations": annotations or {}}


def test_mirror_metadata_keeps_the_runtimes_own_keys_over_the_users():
    labels, annotations = mirror_metadata(meta({"app": "x", NODE_LABEL: "evil", ORIGIN_UID_LABEL: "forged"},
                                               {ORIGIN_NAME: "forged", "note": "n",
                                                "kubectl.kubernetes.io/last-applied-configuration": "{}"}), "n.gpu")
    assert labels == {"app": "x", NODE_LABEL: "n.gpu", ORIGIN_UID_LABEL: "uid-1", KIND_LABEL: "pod"}
    assert annotations[ORIGIN_NAME] == "p" and annotations[ORIGIN_NAMESPACE] == "ml" and annotations["note"] == "n"
    assert "kubectl.kubernetes.io/last-applied-configuration" not in annotations
    assert json.loads(annotations[COPIED_KEYS]) == {"labels": ["app"], "annotations": ["note"]}


def test_metadata_patch_adds_changes_and_removes_copied_keys_only():
    old_labels, old_annotations = mirror_metadata(meta({"app": "x", "tier": "a"}, {"note": "n"}), "n.gpu")
    mirror = {"labels": {**old_labels, "provider.example/pool": "p1"},
              "annotations": {**old_annotations, "provider.example/seen": "yes"}}
    patch = mirror_metadata_patch(meta({"tier": "b", "added": "1"}, {"note": "n", "more": "m"}), mirror, "n.gpu")
    assert patch["labels"] == {"tier": "b", "added": "1", "app": None}
    assert patch["annotations"]["more"] == "m" and "note" not in patch["annotations"]
    assert json.loads(patch["annotations"][COPIED_KEYS]) == {"labels": ["added", "tier"],
                                                             "annotations": ["more", "note"]}
    # The provider's own keys are not the user's to remove.
    assert "provider.example/pool" not in patch["labels"] and "provider.example/seen" not in patch["annotations"]


def test_metadata_patch_is_none_in_sync_and_mends_a_tampered_own_label():
    labels, annotations = mirror_metadata(meta({"app": "x"}), "n.gpu")
    assert mirror_metadata_patch(meta({"app": "x"}), {"labels": labels, "annotations": annotations}, "n.gpu") is None
    tampered = {"labels": {**labels, NODE_LABEL: "other"}, "annotations": annotations}
    assert mirror_metadata_patch(meta({"app": "x"}), tampered, "n.gpu") == {"labels": {NODE_LABEL: "n.gpu"}}


def test_a_mirror_made_before_keys_were_recorded_loses_nothing_it_cannot_place():
    mirror = {"labels": {"app": "x", NODE_LABEL: "n.gpu", ORIGIN_UID_LABEL: "uid-1", KIND_LABEL: "pod"},
              "annotations": {ORIGIN_NAMESPACE: "ml", ORIGIN_NAME: "p"}}
    patch = mirror_metadata_patch(meta({"tier": "b"}), mirror, "n.gpu")
    assert patch["labels"] == {"tier": "b"}  # "app" stays: nothing says the runtime copied it
