"""What the provider's pods and Events are cached as (runtime/provider/remote.py, runtime/reflector.py): every reader
of the cache gets from the cached form what it got from the whole object, and what no reader uses is not kept."""

from __future__ import annotations

import copy

import orjson

from k8sgpu.runtime.admission import pod_resources
from k8sgpu.runtime.catalog import GPUClass, demo_catalog
from k8sgpu.runtime.placement import pod_requests
from k8sgpu.runtime.provider.remote import event_identity, provider_event_essentials, provider_pod_essentials
from k8sgpu.runtime.reflector import Reflector, cache_form
from k8sgpu.runtime.translate import local_status, remote_pod
from k8sgpu.runtime.usage import allocation

OFFER = "k8sgpu-nvidia-a100-mig-1g.10gb"


def _mirror() -> dict:
    """A mirror of a pod with a sidecar, an init container, volumes and env, as the provider returns it Running."""
    (rc,) = [rc for rc in demo_catalog() if rc["metadata"]["name"] == OFFER]
    offer = GPUClass.from_runtime_class(rc)
    mount = [{"name": "data", "mountPath": "/data"}]
    pod = {"metadata": {"namespace": "team-a", "name": "train", "uid": "uid-train", "labels": {"app": "t"}},
           "spec": {"runtimeClassName": OFFER, "volumes": [{"name": "data", "emptyDir": {}}],
                    "initContainers": [
                        {"name": "fetch", "image": "busybox", "command": ["sh", "-c", "true"],
                         "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}, "volumeMounts": mount},
                        {"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                         "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}],
                    "containers": [{"name": "main", "image": "trainer:1", "env": [{"name": "EPOCHS", "value": "3"}],
                                    "resources": {"requests": {"cpu": "2", "memory": "2Gi"}},
                                    "volumeMounts": mount}]}}
    mirror = remote_pod(pod, offer, "k8s.gpu", pod_resources(pod, offer))
    mirror["metadata"].update(uid="remote-uid", resourceVersion="42", creationTimestamp="2026-01-31T12:00:00Z",
                              managedFields=[{"manager": "kube-scheduler", "fieldsV1": {"f:status": {}}}])
    mirror["spec"].update(nodeName="gpu-node-1", dnsPolicy="ClusterFirst", schedulerName="default-scheduler",
                          tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                        "effect": "NoExecute", "tolerationSeconds": 300}])
    mirror["status"] = {
        "phase": "Running", "hostIP": "10.0.0.5", "podIP": "10.64.0.17", "startTime": "2026-01-31T12:00:01Z",
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-01-31T12:00:02Z"}
                       for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
        "initContainerStatuses": [
            {"name": "fetch", "ready": False, "restartCount": 0, "image": "busybox", "imageID": "",
             "state": {"terminated": {"exitCode": 0, "startedAt": "2026-01-31T12:00:01Z",
                                      "finishedAt": "2026-01-31T12:00:02Z"}}},
            {"name": "proxy", "ready": True, "restartCount": 0, "image": "envoy", "imageID": "", "started": True,
             "state": {"running": {"startedAt": "2026-01-31T12:00:02Z"}}}],
        "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0, "image": "trainer:1",
                               "imageID": "", "started": True,
                               "state": {"running": {"startedAt": "2026-01-31T12:00:03Z"}}}]}
    return mirror


def test_a_cached_provider_pod_reads_as_the_whole_pod_for_status_room_and_accounting():
    whole = _mirror()
    cached = provider_pod_essentials(copy.deepcopy(whole))
    assert local_status(cached, "192.0.2.1") == local_status(whole, "192.0.2.1")
    assert pod_requests(cached["spec"]) == pod_requests(whole["spec"])
    assert allocation(cached) == allocation(whole)
    assert cached["metadata"] == {k: v for k, v in whole["metadata"].items() if k != "managedFields"}
    assert cached["spec"]["nodeName"] == "gpu-node-1"


def test_a_cached_provider_pod_keeps_neither_volumes_images_env_nor_managed_fields():
    cached = provider_pod_essentials(_mirror())
    assert "managedFields" not in cached["metadata"]
    assert not {"volumes", "tolerations", "dnsPolicy", "schedulerName"} & set(cached["spec"])
    for c in cached["spec"]["containers"] + cached["spec"]["initContainers"]:
        assert set(c) <= {"name", "resources", "restartPolicy"}
    assert [c.get("restartPolicy") for c in cached["spec"]["initContainers"]] == [None, "Always"]
    assert len(orjson.dumps(cached)) < len(orjson.dumps(_mirror())) * 0.8


def _event() -> dict:
    return {"kind": "Event", "apiVersion": "v1",
             "metadata": {"name": "m.187d", "namespace": "tenant", "uid": "e-1", "resourceVersion": "7",
                          "creationTimestamp": "2026-01-31T12:00:00Z", "managedFields": [{"manager": "x"}]},
             "involvedObject": {"kind": "Pod", "namespace": "tenant", "name": "m", "uid": "remote-uid"},
             "reason": "Pulled", "message": "Successfully pulled image", "type": "Normal", "count": 2,
             "firstTimestamp": "2026-01-31T12:00:00Z", "lastTimestamp": "2026-01-31T12:00:05Z",
             "source": {"component": "kubelet", "host": "gpu-node-1"}, "reportingComponent": "kubelet",
             "reportingInstance": "gpu-node-1"}


def test_a_provider_event_is_handed_on_as_what_its_local_copy_says_and_no_more():
    event = _event()
    cached = provider_event_essentials(copy.deepcopy(event))
    assert cached["metadata"] == {"name": "m.187d", "namespace": "tenant", "uid": "e-1", "resourceVersion": "7"}
    for field in ("involvedObject", "reason", "message", "type", "count", "firstTimestamp", "lastTimestamp"):
        assert cached[field] == event[field]
    assert not {"source", "reportingComponent", "reportingInstance", "apiVersion"} & set(cached)


def test_the_events_store_keeps_only_what_a_relist_compares_once_the_handler_has_had_the_event():
    handed = []
    events = Reflector(None, "Event", "tenant", on_event=lambda kind, obj: handed.append((kind, obj)),
                       transform=provider_event_essentials, keep=event_identity)
    events._apply({"type": "ADDED", "object": _event()})
    assert handed == [("ADDED", provider_event_essentials(_event()))]
    assert events.store == {"tenant/m.187d": {"metadata": {"name": "m.187d", "namespace": "tenant",
                                                           "resourceVersion": "7"}}}
    events._apply({"type": "DELETED", "object": _event()})
    assert events.store == {}


def test_cached_objects_share_their_equal_strings_and_read_as_before():
    # As two watch events decode them: every string its own object.
    first, second = (orjson.loads(orjson.dumps(_mirror())) for _ in range(2))
    assert first["status"]["conditions"][0]["status"] is not second["status"]["conditions"][0]["status"]
    whole = orjson.loads(orjson.dumps(first))
    first, second = cache_form(first), cache_form(second)
    assert first == {**whole, "metadata": {k: v for k, v in whole["metadata"].items() if k != "managedFields"}}
    assert first["status"]["conditions"][0]["status"] is second["status"]["conditions"][0]["status"]
    assert first["spec"]["containers"][0]["image"] is second["spec"]["containers"][0]["image"]
    assert first["spec"]["tolerations"][0]["key"] is second["spec"]["tolerations"][0]["key"]
