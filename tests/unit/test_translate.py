from k8sgpu.runtime.admission import pod_resources
from k8sgpu.runtime.catalog import GPUClass, demo_catalog
from k8sgpu.runtime.translate import (
    ORIGIN_NAME,
    ORIGIN_NAMESPACE,
    ORIGIN_UID_LABEL,
    local_status,
    referenced_objects,
    remote_name,
    remote_pod,
)

A100 = GPUClass.from_runtime_class(demo_catalog()[2])


def local_pod():
    return {
        "metadata": {"name": "train", "namespace": "ml", "uid": "uid-1", "labels": {"app": "train"}},
        "spec": {
            "runtimeClassName": A100.name,
            "serviceAccountName": "default",
            "containers": [{
                "name": "main", "image": "cuda",
                "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
                        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "s", "optional": True}}}],
                "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets"},
                                 {"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [
                {"name": "kube-api-access-abcde", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}},
                {"name": "data", "configMap": {"name": "cfg"}},
            ],
            "imagePullSecrets": [{"name": "regcred"}],
        },
    }


def test_remote_pod_carries_origin_gpu_placement_and_no_local_token():
    pod = local_pod()
    remote = remote_pod(pod, A100, "k8s.gpu", pod_resources(pod, A100))
    meta, spec = remote["metadata"], remote["spec"]
    assert meta["name"] == remote_name("ml", "train", "uid-1")
    assert meta["labels"][ORIGIN_UID_LABEL] == "uid-1" and meta["labels"]["app"] == "train"
    assert (meta["annotations"][ORIGIN_NAMESPACE], meta["annotations"][ORIGIN_NAME]) == ("ml", "train")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": A100.gpu_product}
    assert spec["runtimeClassName"] == "nvidia" and spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert [v["name"] for v in spec["volumes"]] == ["data"]
    assert spec["volumes"][0]["configMap"]["name"] == remote_name("ml", "cfg")
    assert [m["name"] for m in spec["containers"][0]["volumeMounts"]] == ["data"]
    env = spec["containers"][0]["env"]
    assert env[0]["valueFrom"]["configMapKeyRef"]["name"] == remote_name("ml", "cfg")
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["imagePullSecrets"] == [{"name": remote_name("ml", "regcred")}]


def test_remote_names_are_stable_unique_and_dns_labels():
    a, b = remote_name("ns", "x" * 300, "u"), remote_name("ns", "x" * 300, "v")
    assert a != b and len(a) <= 63 and a == remote_name("ns", "x" * 300, "u")
    assert remote_name("a-b", "c") != remote_name("a", "b-c")


def test_referenced_objects_merge_mandatory_over_optional():
    refs = set(referenced_objects(local_pod()))
    assert refs == {("ConfigMap", "cfg", False), ("Secret", "sec", True), ("Secret", "regcred", True)}


def test_local_status_takes_the_nodes_address_as_host_ip():
    status = local_status({"status": {"phase": "Running", "podIP": "10.65.0.3", "hostIP": "127.0.0.1",
                                      "containerStatuses": [{"name": "main", "ready": True}]}}, "192.0.2.10")
    assert status["hostIP"] == "192.0.2.10" and status["podIP"] == "10.65.0.3" and status["phase"] == "Running"
