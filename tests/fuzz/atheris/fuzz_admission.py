"""Any JSON as a pod: admitted and translated, or refused with a reason; never raising."""

import json
import sys

import _common  # noqa: F401
import atheris

with atheris.instrument_imports(include=["k8sgpu"]):
    from k8sgpu.runtime.admission import admit, pod_resources
    from k8sgpu.runtime.catalog import GPUClass, demo_catalog
    from k8sgpu.runtime.translate import referenced_objects, remote_pod

GPU_CLASS = GPUClass.from_runtime_class(demo_catalog()[0])


def one(data: bytes) -> None:
    try:
        pod = json.loads(data)
    except (ValueError, RecursionError):
        return
    refusal = admit(pod, GPU_CLASS)
    if refusal is not None:
        assert refusal.reason and refusal.message
        return
    remote_pod(pod, GPU_CLASS, "k8s.gpu", pod_resources(pod, GPU_CLASS))
    referenced_objects(pod)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
