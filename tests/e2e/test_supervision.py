"""What the provider refuses is shown and retried: a create refused by an exhausted ResourceQuota (403) leaves the
local pod Pending with reason ProviderRefused and the provider's message, records one Warning Event however often
the create is retried, and the pod starts once the quota is raised. The same for the copy of a Secret the pod needs.

A node of its own (sup.gpu, its own RuntimeClass, RBAC, namespace and ports), so that it never meets the other
modules' k8s.gpu."""

from __future__ import annotations

import time

import pytest
import yaml
from kubernetes.client.rest import ApiException

from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import extra_rbac

from .helpers import RuntimeProcess, health_ready, kubectl, node_kubeconfig, remove_node, wait_for

pytestmark = pytest.mark.e2e

NODE = "sup.gpu"
NAMESPACE = "k8sgpu-sup"
RBAC_NAME = "k8sgpu-runtime-sup"
NO_GPU = "sup-no-gpu"
CATALOG = [runtime_class_manifest(NO_GPU, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0, cpu="1",
                                  memory="1Gi")]
QUOTA = "k8sgpu-sup-pods"


@pytest.fixture(scope="module")
def runtime(ground, local, tmp_path_factory):
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    kubectl(ground.local.kubeconfig, "apply", "-f", "-",
            stdin=yaml.safe_dump_all([namespace, *CATALOG, *extra_rbac(NODE, RBAC_NAME)]))
    directory = tmp_path_factory.mktemp("sup")
    health_port = free_port()
    proc = RuntimeProcess(["--kubeconfig", node_kubeconfig(ground, NODE, directory), "--node-name", NODE,
                           "--provider-kubeconfig", ground.tenant_kubeconfig,
                           "--tenant-namespace", ground.tenant_namespace,
                           "--node-address", ground.node_address, "--kubelet-port", str(free_port()),
                           "--health-port", str(health_port), "-v"], directory / "runtime.log")
    try:
        proc.start()
        wait_for(lambda: health_ready(health_port), 90, f"{NODE}'s runtime to be ready")
        yield proc
    finally:
        proc.stop()
        print(proc.tail(120))
        kubectl(ground.local.kubeconfig, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
        kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding,clusterrole", RBAC_NAME, check=False)
        kubectl(ground.local.kubeconfig, "delete", "runtimeclass", NO_GPU, check=False)
        try:
            remove_node(ground.local.kubeconfig, NODE)
        except ApiException as exc:
            assert exc.status == 404


def pod(name: str) -> dict:
    return {"metadata": {"name": name},
            "spec": {"runtimeClassName": NO_GPU, "restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "cuda", "command": ["sleep", "3600"]}]}}


def _quota_used(provider, namespace: str, resource: str = "pods") -> int | None:
    """What the quota counts as used of ``resource``, once its controller has counted it (None before)."""
    status = provider.read_namespaced_resource_quota(QUOTA, namespace).status
    if status is None or not status.used or resource not in status.used:
        return None
    return int(status.used[resource])


def _quota_refuses(provider, namespace: str) -> bool:
    """Whether the provider refuses a pod for the quota now (a dry run: nothing is created, nothing counted)."""
    probe = {"metadata": {"name": "quota-probe"}, "spec": {"containers": [{"name": "c", "image": "cuda"}]}}
    try:
        provider.create_namespaced_pod(namespace, probe, dry_run="All")
        return False
    except ApiException as exc:
        return exc.status == 403 and "exceeded quota" in (exc.body or "")


def _refusal_events(local, name: str) -> list:
    return [e for e in local.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
            if e.reason == "ProviderRefused"]


def test_a_pod_refused_by_the_providers_quota_waits_with_a_reason_and_starts_when_the_quota_is_raised(
        runtime, local, provider, ground):
    tenant = ground.tenant_namespace
    quota = {"metadata": {"name": QUOTA}, "spec": {"hard": {"pods": "1000"}}}
    provider.create_namespaced_resource_quota(tenant, quota)
    try:
        # Full at the tenant namespace's current pod count: the next pod created there is refused.
        used = wait_for(lambda: _quota_used(provider, tenant) is not None and [_quota_used(provider, tenant)], 60,
                        "the quota controller to count the tenant's pods")[0]
        provider.patch_namespaced_resource_quota(QUOTA, tenant, {"spec": {"hard": {"pods": str(used)}}})
        wait_for(lambda: provider.read_namespaced_resource_quota(QUOTA, tenant).status.hard["pods"] == str(used), 30,
                 "the quota to be lowered")
        # The API server's admission reads quotas from its cache, which may lag: wait until it refuses.
        wait_for(lambda: _quota_refuses(provider, tenant), 30, "the provider to refuse pods for the quota")

        # Bound by name, as a user pins a pod: with the quota full the node offers no room for the scheduler to
        # bind a pod to (scheduling truth), so only a pod bound before the node saw the quota meets the refusal.
        pinned = pod("quota-bound")
        pinned["spec"]["nodeName"] = NODE
        local.create_namespaced_pod(NAMESPACE, pinned)
        refused = wait_for(lambda: (p := local.read_namespaced_pod("quota-bound", NAMESPACE)).status.reason and p,
                           30, "the provider's refusal on the local pod")
        assert refused.status.phase == "Pending"
        assert refused.status.reason == "ProviderRefused", refused.status
        assert "exceeded quota" in refused.status.message and QUOTA in refused.status.message, refused.status.message
        # The create is retried meanwhile (several times in 10 s, with backoff): still one Event.
        time.sleep(10)
        events = _refusal_events(local, "quota-bound")
        assert len(events) == 1 and events[0].type == "Warning", events
        assert events[0].count == 1 and QUOTA in events[0].message, events[0]

        provider.patch_namespaced_resource_quota(QUOTA, tenant, {"spec": {"hard": {"pods": str(used + 10)}}})
        started = wait_for(lambda: (p := local.read_namespaced_pod("quota-bound", NAMESPACE)).status.phase
                           == "Running" and p, 75, "the pod to run once the quota is raised")
        assert started.status.reason is None
        assert len(_refusal_events(local, "quota-bound")) == 1
    finally:
        provider.delete_namespaced_resource_quota(QUOTA, tenant)
    local.delete_namespaced_pod("quota-bound", NAMESPACE, grace_period_seconds=0)


def test_a_pod_whose_secret_the_providers_quota_refuses_waits_with_a_reason_and_starts_when_it_is_raised(
        runtime, local, provider, ground):
    tenant = ground.tenant_namespace
    local.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "sup-key"}, "stringData": {"token": "t"}})
    provider.create_namespaced_resource_quota(tenant, {"metadata": {"name": QUOTA},
                                                       "spec": {"hard": {"secrets": "1000"}}})
    try:
        used = wait_for(lambda: (n := _quota_used(provider, tenant, "secrets")) is not None and [n], 60,
                        "the quota controller to count the tenant's Secrets")[0]
        provider.patch_namespaced_resource_quota(QUOTA, tenant, {"spec": {"hard": {"secrets": str(used)}}})
        wait_for(lambda: provider.read_namespaced_resource_quota(QUOTA, tenant).status.hard["secrets"] == str(used),
                 30, "the quota to be lowered")
        probe = {"metadata": {"name": "quota-probe"}, "stringData": {"a": "b"}}

        def refuses() -> bool:
            try:
                provider.create_namespaced_secret(tenant, probe, dry_run="All")
                return False
            except ApiException as exc:
                return exc.status == 403 and "exceeded quota" in (exc.body or "")

        wait_for(refuses, 30, "the provider to refuse Secrets for the quota")

        spec = pod("secret-bound")
        spec["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "sup-key"}}]
        local.create_namespaced_pod(NAMESPACE, spec)
        refused = wait_for(lambda: (p := local.read_namespaced_pod("secret-bound", NAMESPACE)).status.reason and p,
                           30, "the provider's refusal of the copy on the local pod")
        assert refused.status.phase == "Pending" and refused.status.reason == "ProviderRefused", refused.status
        assert "copy of Secret sup-key" in refused.status.message and QUOTA in refused.status.message, \
            refused.status.message
        wait_for(lambda: _refusal_events(local, "secret-bound"), 30, "the refusal's Event")

        provider.patch_namespaced_resource_quota(QUOTA, tenant, {"spec": {"hard": {"secrets": str(used + 10)}}})
        started = wait_for(lambda: (p := local.read_namespaced_pod("secret-bound", NAMESPACE)).status.phase
                           == "Running" and p, 75, "the pod to run once the quota is raised")
        assert started.status.reason is None
        assert len(_refusal_events(local, "secret-bound")) == 1
    finally:
        provider.delete_namespaced_resource_quota(QUOTA, tenant)
    local.delete_namespaced_pod("secret-bound", NAMESPACE, grace_period_seconds=0)
    local.delete_namespaced_secret("sup-key", NAMESPACE)
