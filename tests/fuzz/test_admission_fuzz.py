"""Pod admission and translation take any Pod-shaped JSON: a refusal with a reason, or a mirror; never an
exception out of them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from k8sgpu.runtime.admission import Refusal, admit, pod_resources
from k8sgpu.runtime.catalog import CatalogError, GPUClass, demo_catalog
from k8sgpu.runtime.controllers.decide import decide
from k8sgpu.runtime.translate import mirror_metadata_patch, referenced_objects, remote_pod

from .strategies import pod_spec, pods, quantities

CLASSES = [GPUClass.from_runtime_class(rc) for rc in demo_catalog()]


@given(pod=pods, gpu_class=st.sampled_from([None, *CLASSES]))
def test_admission_refuses_with_a_reason_or_translates(pod, gpu_class):
    refusal = admit(pod, gpu_class)
    if refusal is not None:
        assert isinstance(refusal, Refusal) and refusal.reason and refusal.message
        return
    wanted = pod_resources(pod, gpu_class)
    assert wanted.cpu >= 0 or wanted.cpu < 0  # a number, not NaN
    mirror = remote_pod(pod, gpu_class, "k8s.gpu", wanted)
    assert mirror["metadata"]["name"] and len(mirror["metadata"]["name"]) <= 63
    referenced_objects(pod)
    mirror_metadata_patch(pod["metadata"], mirror["metadata"], "k8s.gpu")


@given(annotations=st.dictionaries(st.sampled_from(["limits.k8s.gpu/cpu", "limits.k8s.gpu/memory",
                                                    "limits.k8s.gpu/default", "gpu.k8s.gpu/product",
                                                    "gpu.k8s.gpu/count", "gpu.k8s.gpu/handler"]),
                                   quantities.map(str) | st.text(max_size=12), max_size=6))
def test_a_runtime_class_is_a_gpu_class_or_a_catalog_error(annotations):
    try:
        GPUClass.from_runtime_class({"metadata": {"name": "rc", "annotations": annotations}, "handler": "nvidia"})
    except CatalogError as exc:
        assert str(exc)


@given(spec=pod_spec, reachable=st.booleans())
def test_the_pod_controllers_decision_takes_any_spec(spec, reachable):
    """decide() on a pod whose envelope is the API's (metadata, uid, no status yet) and whose spec is anything
    Pod-shaped: one action, never an exception."""
    if not isinstance(spec, dict):
        return  # the API server never hands out a pod whose spec is no object
    pod = {"metadata": {"name": "p", "namespace": "default", "uid": "u1"}, "spec": spec}
    catalog = {c.name: c for c in CLASSES}
    action = decide(pod, [], provider_reachable=reachable, catalog=catalog, copies={}, now="2026-12-02T00:00:00Z")
    assert action is not None
