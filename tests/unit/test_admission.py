from decimal import Decimal

import pytest

from k8sgpu.runtime.admission import admit, pod_resources
from k8sgpu.runtime.catalog import CatalogError, GPUClass, demo_catalog

CLASSES = {rc["metadata"]["name"]: GPUClass.from_runtime_class(rc) for rc in demo_catalog()}
A6000 = CLASSES["seeweb-nvidia-1xa6000"]


def pod(*containers, runtime_class="seeweb-nvidia-1xa6000", **spec):
    return {"metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"runtimeClassName": runtime_class, "containers": list(containers), **spec}}


def container(name="c", requests=None, limits=None, **extra):
    resources = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"name": name, "image": "cuda", "resources": resources, **extra}


def test_guide_annotations_parse_to_a_class():
    assert A6000.cpu_limit == 8.0
    assert A6000.memory_limit == 32861620 * 1024
    assert (A6000.gpu_product, A6000.gpu_count, A6000.handler) == ("NVIDIA-RTX-A6000", 1, "nvidia")


def test_pod_without_resources_takes_the_class_defaults():
    wanted = pod_resources(pod(container()), A6000)
    assert wanted.cpu == Decimal("8") and wanted.memory == 32861620 * 1024 and wanted.gpus == 1
    assert admit(pod(container()), A6000) is None


def test_summed_requests_over_the_class_are_refused_with_the_numbers():
    refusal = admit(pod(container("a", requests={"cpu": "6"}), container("b", requests={"cpu": "3"})), A6000)
    assert refusal.reason == "ExceedsRuntimeClassLimits"
    assert "9000m" in refusal.message and "8000m" in refusal.message and "seeweb-nvidia-1xa6000" in refusal.message


def test_more_gpus_than_the_class_are_refused():
    refusal = admit(pod(container(limits={"nvidia.com/gpu": "2"})), A6000)
    assert refusal.reason == "ExceedsRuntimeClassLimits" and "nvidia.com/gpu" in refusal.message


@pytest.mark.parametrize("spec, reason, words", [
    ({"containers": [container(securityContext={"privileged": True})]}, "PodSecurityBaseline", "privileged"),
    ({"hostNetwork": True, "containers": [container()]}, "PodSecurityBaseline", "hostNetwork"),
    ({"containers": [container(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})]}, "PodSecurityBaseline",
     "SYS_ADMIN"),
    ({"containers": [container()], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "UnsupportedVolume",
     "hostPath"),
    ({"containers": [container()], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "x"}}]},
     "UnsupportedVolume", "persistentVolumeClaim"),
])
def test_what_a_remote_node_cannot_run_is_refused(spec, reason, words):
    p = {"metadata": {"name": "p", "namespace": "default", "uid": "u1"}, "spec": {"runtimeClassName": "x", **spec}}
    refusal = admit(p, A6000)
    assert refusal.reason == reason and words in refusal.message


def test_a_pod_without_gpu_class_is_told_what_to_write():
    refusal = admit(pod(container(), runtime_class=None), None)
    assert refusal.reason == "NoRuntimeClass" and "runtimeClassName" in refusal.message
    assert "--default-runtime-class" in refusal.message and "default_runtime_class" in refusal.message
    # A default the catalog does not hold is named.
    refusal = admit(pod(container(), runtime_class=None), None, "gone-class")
    assert refusal.reason == "UnknownRuntimeClass" and "gone-class" in refusal.message


def test_malformed_quantities_are_refused_not_raised():
    refusal = admit(pod(container(requests={"cpu": "lots"})), A6000)
    assert refusal.reason == "InvalidResources" and "'lots'" in refusal.message


def test_a_runtime_class_missing_annotations_is_a_catalog_error():
    with pytest.raises(CatalogError, match="lacks annotation"):
        GPUClass.from_runtime_class({"metadata": {"name": "plain", "annotations": {}}, "handler": "runc"})
