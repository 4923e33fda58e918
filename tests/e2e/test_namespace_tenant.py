"""The whole pod path with a tenant that may do nothing outside its namespace on the provider.

The tenant here is a ServiceAccount of the provider's tenant namespace bound by exactly the Role of
`runtime/rbac.py` `tenant_rules` (no ClusterRole, nothing cluster-scoped); the test first proves that premise
(403 on cluster-scoped reads), then runs a pod with a ConfigMap and a Secret, logs, exec, port-forward and a
LoadBalancer Service, checks that the node's capacity comes from the tenant's ResourceQuota, and that deletion
leaves nothing on the provider.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

from k8sgpu.cli.dev.binaries import find_kubectl
from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.catalog import DEMO_MIG_RUNTIME_CLASS, demo_catalog
from k8sgpu.runtime.rbac import extra_rbac, tenant_rbac
from k8sgpu.runtime.translate import ORIGIN_UID_LABEL, remote_name

from .helpers import RuntimeProcess, api, kubectl, remove_node, wait_for

pytestmark = pytest.mark.e2e

NODE = "k8s.gpu"
KUBELET_PORT = free_port()
SA = "namespace-only"
ROLE = "k8sgpu-namespace-only"
QUOTA = "tenant-gpus"
NS = "tenant-only"  # the local namespace of this module's pods
# The provider namespace of this tenant: its own, so that other tests' pods in the ground's tenant namespace take
# nothing of its quota.
TENANT_NS = "tenant-namespace-only"
ECHO_PORT = 7777  # kwok's line echo on every pod


def _forbidden(call) -> bool:
    try:
        call()
    except ApiException as exc:
        return exc.status == 403
    return False


@pytest.fixture(scope="module")
def tenant_kubeconfig(ground, provider, tmp_path_factory) -> str:
    """A kubeconfig of the ServiceAccount bound by the tenant's Role alone."""
    ns = TENANT_NS
    admin = api(ground.provider.kubeconfig)
    provider.create_namespace({"metadata": {"name": ns}})
    wait_for(lambda: provider.list_namespaced_service_account(ns, field_selector="metadata.name=default").items, 30,
             f"the default ServiceAccount of {ns} on the provider")
    provider.create_namespaced_service_account(ns, {"metadata": {"name": SA}})
    subject = {"kind": "ServiceAccount", "name": SA, "namespace": ns}
    for manifest in tenant_rbac(ns, subject, name=ROLE):
        utils.create_from_dict(admin, manifest)
    token = provider.create_namespaced_service_account_token(SA, ns, {"spec": {"expirationSeconds": 7200}})
    config = yaml.safe_load(Path(ground.provider.kubeconfig).read_text())
    cluster = config["clusters"][0]
    path = tmp_path_factory.mktemp("tenant") / "namespace-only.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": SA, "user": {"token": token.status.token}}],
        "contexts": [{"name": SA, "context": {"cluster": cluster["name"], "user": SA, "namespace": ns}}],
        "current-context": SA}))
    try:
        yield str(path)
    finally:
        rbac = client.RbacAuthorizationV1Api(admin)
        rbac.delete_namespaced_role_binding(ROLE, ns)
        rbac.delete_namespaced_role(ROLE, ns)
        provider.delete_namespaced_service_account(SA, ns)
        provider.delete_namespace(ns)


@pytest.fixture(scope="module")
def quota(ground, provider):
    """The tenant's only bound on the provider: 3 GPUs, 6 pods (the GPU cloud's quota)."""
    provider.create_namespaced_resource_quota(TENANT_NS, {
        "metadata": {"name": QUOTA}, "spec": {"hard": {"requests.nvidia.com/gpu": "3", "pods": "6"}}})
    wait_for(lambda: (provider.read_namespaced_resource_quota(QUOTA, TENANT_NS).status.hard or {}),
             30, "the quota's status")
    try:
        yield
    finally:
        provider.delete_namespaced_resource_quota(QUOTA, TENANT_NS)


@pytest.fixture(scope="module")
def runtime(ground, local, tenant_kubeconfig, quota, tmp_path_factory):
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([*demo_catalog(NODE), *extra_rbac()]))
    local.create_namespace({"metadata": {"name": NS}})
    wait_for(lambda: local.list_namespaced_service_account(NS, field_selector="metadata.name=default").items, 30,
             f"the default ServiceAccount of {NS}")
    log = tmp_path_factory.mktemp("runtime") / "runtime.log"
    proc = RuntimeProcess(["--kubeconfig", ground.node_kubeconfig, "--provider-kubeconfig", tenant_kubeconfig,
                           "--tenant-namespace", TENANT_NS, "--node-address", ground.node_address,
                           "--kubelet-port", str(KUBELET_PORT), "-v"], log).start()
    try:
        wait_for(lambda: _ready(local), 60, "node k8s.gpu to be Ready with the namespace-only tenant")
        yield proc
    finally:
        proc.stop()
        print(proc.tail(60))
        local.delete_namespace(NS)
        remove_node(ground.local.kubeconfig, NODE)


def _ready(local):
    try:
        node = local.read_node(NODE)
    except ApiException:
        return None
    conditions = {c.type: c.status for c in node.status.conditions or []}
    ours = node.status.daemon_endpoints.kubelet_endpoint.port == KUBELET_PORT
    return node if ours and conditions.get("Ready") == "True" and conditions.get("ProviderReachable") == "True" \
        else None


def test_the_tenant_can_do_nothing_outside_its_namespace(ground, tenant_kubeconfig):
    tenant = api(tenant_kubeconfig)
    core, ns = client.CoreV1Api(tenant), TENANT_NS
    assert core.list_namespaced_pod(ns).items is not None
    denied = {
        "list nodes": lambda: core.list_node(),
        "get a node": lambda: core.read_node("gpu-a6000-0"),
        "list namespaces": lambda: core.list_namespace(),
        "get its own namespace": lambda: core.read_namespace(ns),
        "list RuntimeClasses": lambda: client.NodeV1Api(tenant).list_runtime_class(),
        "list PersistentVolumes": lambda: core.list_persistent_volume(),
        "list ClusterRoles": lambda: client.RbacAuthorizationV1Api(tenant).list_cluster_role(),
        "list pods everywhere": lambda: core.list_pod_for_all_namespaces(),
        "list pods of kube-system": lambda: core.list_namespaced_pod("kube-system"),
        "list node metrics": lambda: client.CustomObjectsApi(tenant).list_cluster_custom_object(
            "metrics.k8s.io", "v1beta1", "nodes"),
        "edit its own Role": lambda: client.RbacAuthorizationV1Api(tenant).read_namespaced_role(ROLE, ns),
    }
    allowed = [what for what, call in denied.items() if not _forbidden(call)]
    assert allowed == [], f"the tenant may {allowed}: the test's premise (namespace-only) does not hold"


def test_the_node_capacity_comes_from_the_quota_and_says_so(runtime, local):
    node = _ready(local)
    # 3 GPUs and 6 pods: the 1-GPU offerings 3 each, the 2-GPU one 1, the MIG one (GPUs the quota does not limit)
    # as many as pods; no products, which only the provider's Nodes tell.
    assert node.status.capacity["nvidia.com/gpu"] == "3" and node.status.capacity["pods"] == "6"
    offered = {"k8s.gpu/seeweb-nvidia-1xa6000": "3", "k8s.gpu/seeweb-nvidia-2xa6000": "1",
               "k8s.gpu/seeweb-nvidia-1xa100": "3", f"k8s.gpu/{DEMO_MIG_RUNTIME_CLASS}": "6"}
    assert {r: node.status.capacity.get(r) for r in offered} == offered
    assert not [k for k in node.metadata.annotations or {} if k.startswith("products.k8s.gpu/")]
    condition = next(c for c in node.status.conditions if c.type == "ProviderNodesReadable")
    assert (condition.status, condition.reason) == ("False", "CapacityFromQuota")
    assert "forbidden" in condition.message and "ResourceQuota" in condition.message
    # Said once in the log, and the 403 is not retried in a loop.
    text = runtime.log.read_text()
    assert text.count("the tenant may not list the provider's Nodes") == 1, text[-3000:]
    assert "Node watch failed" not in text


def _k(ground, *args: str, **kw) -> subprocess.CompletedProcess:
    return kubectl(ground.local.kubeconfig, "-n", NS, *args, check=False, **kw)


def test_the_whole_pod_path_with_the_namespace_only_tenant(runtime, local, provider, ground):
    ns = TENANT_NS
    local.create_namespaced_config_map(NS, {"metadata": {"name": "train-cfg"}, "data": {"epochs": "3"}})
    local.create_namespaced_secret(NS, {"metadata": {"name": "train-key"}, "stringData": {"token": "s3cr3t"}})
    local.create_namespaced_pod(NS, {
        "metadata": {"name": "trainer", "labels": {"app": "trainer"}},
        "spec": {"runtimeClassName": "seeweb-nvidia-1xa100", "containers": [{
            "name": "c", "image": "nvidia/cuda:12.6.0-base-ubuntu20.04", "command": ["sleep", "3600"],
            "env": [{"name": "EPOCHS", "valueFrom": {"configMapKeyRef": {"name": "train-cfg", "key": "epochs"}}}],
            "volumeMounts": [{"name": "key", "mountPath": "/key"}]}],
            "volumes": [{"name": "key", "secret": {"secretName": "train-key"}}]}})
    pod = wait_for(lambda: (p := local.read_namespaced_pod("trainer", NS)).status.phase == "Running" and p, 90,
                   "the pod to run")
    assert pod.spec.node_name == NODE and pod.status.pod_ip
    mirrors = provider.list_namespaced_pod(ns, label_selector=f"{ORIGIN_UID_LABEL}={pod.metadata.uid}").items
    assert [m.metadata.name for m in mirrors] == [remote_name(NS, "trainer", pod.metadata.uid)]
    cm, secret = remote_name(NS, "train-cfg"), remote_name(NS, "train-key")
    assert provider.read_namespaced_config_map(cm, ns).data == {"epochs": "3"}
    assert base64.b64decode(provider.read_namespaced_secret(secret, ns).data["token"]) == b"s3cr3t"

    # The room it takes is the quota's: one GPU of three (the scheduler charges its own offering one already).
    node = wait_for(lambda: (n := local.read_node(NODE)).status.allocatable["k8s.gpu/seeweb-nvidia-1xa6000"] == "2"
                    and n, 30, "allocatable to count the running pod")
    assert node.status.allocatable["k8s.gpu/seeweb-nvidia-1xa100"] == "3"
    assert node.status.allocatable["k8s.gpu/seeweb-nvidia-2xa6000"] == "1"
    assert node.status.allocatable["nvidia.com/gpu"] == "2"  # its class's GPU, which its spec does not request
    used = provider.read_namespaced_resource_quota(QUOTA, ns).status.used
    assert used["requests.nvidia.com/gpu"] == "1"

    logs = _k(ground, "logs", "trainer")
    assert logs.returncode == 0 and "NVIDIA-A100-PCIE-80GB" in logs.stdout, logs.stderr
    smi = _k(ground, "exec", "trainer", "--", "nvidia-smi", "-L")
    assert smi.returncode == 0 and "NVIDIA-A100-PCIE-80GB" in smi.stdout, smi.stderr
    _port_forward_echoes(ground)

    local.create_namespaced_service(NS, {
        "metadata": {"name": "trainer"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "k8s.gpu", "selector": {"app": "trainer"},
                 "ports": [{"port": 8888, "targetPort": 8888}]}})
    svc = wait_for(lambda: (s := local.read_namespaced_service("trainer", NS)).status.load_balancer.ingress and s,
                   30, "the service to be published")
    remote_svc = provider.read_namespaced_service(remote_name(NS, "trainer"), ns)
    assert svc.status.load_balancer.ingress[0].hostname == f"{remote_svc.metadata.uid}-{ns}.gpu.k8sgpu.test"

    local.delete_namespaced_service("trainer", NS)
    local.delete_namespaced_pod("trainer", NS)
    wait_for(lambda: _gone(lambda: local.read_namespaced_pod("trainer", NS)), 60, "the local pod to go")

    def provider_clean() -> bool:
        return not provider.list_namespaced_pod(ns, label_selector=f"{ORIGIN_UID_LABEL}={pod.metadata.uid}").items \
            and all(_gone(read) for read in (lambda: provider.read_namespaced_config_map(cm, ns),
                                             lambda: provider.read_namespaced_secret(secret, ns),
                                             lambda: provider.read_namespaced_service(remote_svc.metadata.name, ns)))

    wait_for(provider_clean, 60, "the mirror, its copies and the Service to go from the provider")
    wait_for(lambda: local.read_node(NODE).status.allocatable["k8s.gpu/seeweb-nvidia-1xa6000"] == "3", 30,
             "the room to come back")
    # Nothing else the runtime did on the provider was refused.
    refused = [line for line in runtime.log.read_text().splitlines()
               if "provider" in line and "forbidden" in line.lower() and "list the provider's Nodes" not in line]
    assert refused == []


def _port_forward_echoes(ground) -> None:
    port = free_port()
    forward = subprocess.Popen([str(find_kubectl()), f"--kubeconfig={ground.local.kubeconfig}", "-n", NS,
                                "port-forward", "pod/trainer", f"{port}:{ECHO_PORT}"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert "Forwarding from 127.0.0.1" in forward.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(b"ping\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(100)
                assert chunk, f"connection closed after {reply!r}"
                reply += chunk
        assert reply == b"pong: ping\n"
    finally:
        forward.terminate()
        forward.wait(10)


def _gone(read) -> bool:
    try:
        read()
        return False
    except ApiException as exc:
        return exc.status == 404


def _doctor(ground, tenant_kubeconfig: str, namespace: str = TENANT_NS) -> tuple[int, dict]:
    run = subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", "doctor", "--cloud", "generic", "--kubeconfig",
                          ground.local.kubeconfig, "--provider-kubeconfig", tenant_kubeconfig, "--tenant-namespace",
                          namespace, "-o", "json"], capture_output=True, text=True, timeout=120)
    assert run.stdout, run.stderr
    return run.returncode, {f["check"]: f for f in json.loads(run.stdout) if f["check"].startswith("provider-")}


def test_doctor_reports_the_tenant_rights_and_node_read_as_optional(ground, tenant_kubeconfig, quota):
    _, findings = _doctor(ground, tenant_kubeconfig)
    assert findings["provider-tenant-rbac"]["status"] == "ok", findings
    node_read = findings["provider-node-read"]
    assert node_read["status"] == "warn" and "requests.nvidia.com/gpu=3" in node_read["evidence"], node_read
    # The ground's own tenant may read the Nodes too (a ClusterRole of its own).
    _, findings = _doctor(ground, ground.tenant_kubeconfig, ground.tenant_namespace)
    assert {k: f["status"] for k, f in findings.items()} == {"provider-tenant-rbac": "ok", "provider-node-read": "ok"}


def test_doctor_names_each_right_a_tenant_lacks(ground, provider, tenant_kubeconfig):
    ns = TENANT_NS
    rbac = client.RbacAuthorizationV1Api(api(ground.provider.kubeconfig))
    role = rbac.read_namespaced_role(ROLE, ns)
    without_exec = [r for r in role.rules if "pods/exec" not in r.resources]
    rbac.patch_namespaced_role(ROLE, ns, {"rules": [client.ApiClient().sanitize_for_serialization(r)
                                                    for r in without_exec]})
    try:
        code, findings = _doctor(ground, tenant_kubeconfig)
        assert code == 1
        found = findings["provider-tenant-rbac"]
        assert found["status"] == "fail"
        assert "get pods/exec" in found["evidence"] and "create pods/portforward" in found["evidence"]
        assert "get pods/log" not in found["evidence"]
    finally:
        rbac.replace_namespaced_role(ROLE, ns, {"metadata": {"name": ROLE, "namespace": ns},
                                                "rules": tenant_rbac(ns, {})[0]["rules"]})
