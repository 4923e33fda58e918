"""Two runtimes for one node, against the ground's real kube-apiserver: exactly one leads (registers the node, renews
its Lease, serves its pods), the other stands by Ready; SIGKILL of the leader hands over once its Lease runs out,
SIGTERM at once (the Lease is released); a leader that cannot renew exits non-zero.

Each runtime writes the election's Lease with a ServiceAccount token bound to the node module's Role
(`runtime/rbac.py` `election_rbac`), so the RBAC rule is what is proven. A node of its own (ha.gpu, its own
namespace, RuntimeClass, RBAC and ports)."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.catalog import runtime_class_manifest
from k8sgpu.runtime.rbac import election_rbac, extra_rbac

from .helpers import RuntimeProcess, api, kubectl, node_kubeconfig, node_on_port, remove_node, wait_for

pytestmark = pytest.mark.e2e

NODE = "ha.gpu"
NAMESPACE = "k8sgpu-ha"
ACCOUNT = "ha-runtime"
RBAC_NAME = "k8sgpu-runtime-ha"
NO_GPU = "ha-no-gpu"
CATALOG = [runtime_class_manifest(NO_GPU, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0, cpu="1",
                                  memory="1Gi")]
LEASE_DURATION, RETRY = 15, 2  # client-go's defaults, which the runtime keeps


def standby_says(port: int) -> str:
    """The /readyz body when it answers 200, else ""."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.read().decode() if response.status == 200 else ""
    except (urllib.error.HTTPError, OSError):
        return ""


class Candidate:
    """One runtime of ha.gpu, as a process named like a pod ($POD_NAME is its holder identity)."""

    def __init__(self, ground, name: str, directory: Path, election_kubeconfig: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.name, self.health_port, self.kubelet_port = name, free_port(), free_port()
        self.args = ["--kubeconfig", node_kubeconfig(ground, NODE, directory), "--node-name", NODE,
                     "--provider-kubeconfig", ground.tenant_kubeconfig, "--tenant-namespace", ground.tenant_namespace,
                     "--node-address", ground.node_address, "--kubelet-port", str(self.kubelet_port),
                     "--health-port", str(self.health_port), "--leader-elect-kubeconfig", election_kubeconfig,
                     "--leader-elect-resource-namespace", NAMESPACE, "-v"]
        self.proc = RuntimeProcess(self.args, directory / f"{name}.log", env={**os.environ, "POD_NAME": name})

    def start(self) -> Candidate:
        self.proc.start()
        return self

    def exit_code(self) -> int | None:
        return self.proc.proc.poll() if self.proc.proc else None


def election_kubeconfig(ground, directory: Path) -> str:
    """A kubeconfig of the ServiceAccount ha-runtime's token, bound to the leader election Role only."""
    token = kubectl(ground.local.kubeconfig, "-n", NAMESPACE, "create", "token", ACCOUNT, "--duration", "2h").stdout
    ca = Path(ground.root) / "pki" / "local" / "ca.crt"
    path = directory / "election.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {"server": ground.local.server, "certificate-authority": str(ca)}}],
        "users": [{"name": ACCOUNT, "user": {"token": token.strip()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": ACCOUNT, "namespace": NAMESPACE}}]}))
    return str(path)


@pytest.fixture(scope="module")
def pair(ground, tmp_path_factory):
    manifests = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": NAMESPACE}},
                 *CATALOG, *extra_rbac(NODE, RBAC_NAME), *election_rbac(NAMESPACE, ACCOUNT, NODE)]
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests))
    directory = tmp_path_factory.mktemp("leader")
    kubeconfig = election_kubeconfig(ground, directory)
    candidates = {name: Candidate(ground, name, directory / name, kubeconfig) for name in ("ha-a", "ha-b")}
    try:
        yield candidates
    finally:
        for candidate in candidates.values():
            candidate.proc.stop()
            print(f"--- {candidate.name}", candidate.proc.tail(80), sep="\n")
        kubectl(ground.local.kubeconfig, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
        kubectl(ground.local.kubeconfig, "delete", "clusterrolebinding,clusterrole", RBAC_NAME, check=False)
        kubectl(ground.local.kubeconfig, "delete", "runtimeclass", NO_GPU, check=False)
        try:
            remove_node(ground.local.kubeconfig, NODE)
        except ApiException as exc:
            assert exc.status == 404


def election_lease(ground) -> client.V1Lease:
    return client.CoordinationV1Api(api(ground.local.kubeconfig)).read_namespaced_lease(NODE, NAMESPACE)


def leader_and_standby(ground, pair: dict[str, Candidate], local) -> tuple[Candidate, Candidate]:
    """Once exactly one serves the node (it advertises that one's kubelet port) and the other says it stands by."""
    def settled():
        serving = [c for c in pair.values() if c.proc.alive() and node_on_port(local, NODE, c.kubelet_port)]
        if len(serving) != 1:
            return None
        (leader,) = serving
        (standby,) = [c for c in pair.values() if c is not leader]
        if standby_says(standby.health_port) != f"standby: leader is {leader.name}\n":
            return None
        return leader, standby
    return wait_for(settled, 120, "one runtime to lead and the other to stand by")


def node_lease_renewed(local_api: client.ApiClient):
    """The node's Lease renewed after now. It may not exist for a moment: a node registered just now gets its Lease
    with the leader's first renewal, and a Lease left by an earlier Node of the name is collected with it."""
    coordination = client.CoordinationV1Api(local_api)

    def renew_time():
        try:
            return coordination.read_namespaced_lease(NODE, "kube-node-lease").spec.renew_time
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    first = wait_for(renew_time, 30, "the node Lease to exist")
    wait_for(lambda: (renewed := renew_time()) is not None and renewed > first, 30, "the node Lease to be renewed")


def pod_runs(local, name: str) -> None:
    local.create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": name},
        "spec": {"runtimeClassName": NO_GPU, "restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "cuda", "command": ["sleep", "3600"]}]}})
    wait_for(lambda: local.read_namespaced_pod(name, NAMESPACE).status.phase == "Running", 90, f"{name} Running")


def test_one_runtime_leads_and_the_other_stands_by_ready(pair, ground, local):
    for candidate in pair.values():
        candidate.start()
    leader, standby = leader_and_standby(ground, pair, local)
    lease = election_lease(ground)
    assert lease.spec.holder_identity == leader.name
    assert lease.spec.lease_duration_seconds == LEASE_DURATION
    node_lease_renewed(api(ground.local.kubeconfig))
    assert node_on_port(local, NODE, leader.kubelet_port)  # the standby never wrote the node
    pod_runs(local, "first")


def test_sigkill_of_the_leader_hands_over_once_its_lease_runs_out(pair, ground, local):
    leader, standby = leader_and_standby(ground, pair, local)
    transitions = election_lease(ground).spec.lease_transitions or 0
    killed = time.monotonic()
    leader.proc.kill(signal.SIGKILL)
    wait_for(lambda: node_on_port(local, NODE, standby.kubelet_port), 120, "the standby to serve the node")
    print(f"SIGKILL: the standby serves the node {time.monotonic() - killed:.1f} s after the leader died "
          f"(lease {LEASE_DURATION} s, retry {RETRY} s)")
    lease = election_lease(ground)
    assert lease.spec.holder_identity == standby.name and lease.spec.lease_transitions == transitions + 1
    node_lease_renewed(api(ground.local.kubeconfig))
    pod_runs(local, "after-sigkill")
    assert local.read_namespaced_pod("first", NAMESPACE).status.phase == "Running"
    leader.start()  # back as a standby
    assert leader_and_standby(ground, pair, local) == (standby, leader)


def test_sigterm_of_the_leader_releases_the_lease_for_the_standby(pair, ground, local):
    leader, standby = leader_and_standby(ground, pair, local)
    coordination = client.CoordinationV1Api(api(ground.local.kubeconfig))
    seen: list[tuple[str, int]] = []
    lease_watch = watch.Watch()
    rv = coordination.read_namespaced_lease(NODE, NAMESPACE).metadata.resource_version

    def record():
        for event in lease_watch.stream(coordination.list_namespaced_lease, NAMESPACE, resource_version=rv,
                                        field_selector=f"metadata.name={NODE}", timeout_seconds=120):
            spec = event["object"].spec
            seen.append((spec.holder_identity or "", spec.lease_duration_seconds))
            if spec.holder_identity == standby.name:
                return

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()
    leader.proc.stop()
    assert leader.exit_code() == 0
    watcher.join(60)
    lease_watch.stop()
    # Released (client-go's ReleaseOnCancel: no holder, one second), then taken by the standby without waiting the
    # lease out.
    assert ("", 1) in seen, seen
    assert seen[-1] == (standby.name, LEASE_DURATION), seen
    assert "released leader election Lease" in leader.proc.tail(40)
    wait_for(lambda: node_on_port(local, NODE, standby.kubelet_port), 60, "the standby to serve the node")
    pod_runs(local, "after-sigterm")
    leader.start()
    assert leader_and_standby(ground, pair, local) == (standby, leader)


def test_a_leader_whose_lease_is_taken_stops_leading_and_exits_non_zero(pair, ground, local):
    leader, standby = leader_and_standby(ground, pair, local)
    coordination = client.CoordinationV1Api(api(ground.local.kubeconfig))
    coordination.patch_namespaced_lease(NODE, NAMESPACE, {"spec": {"holderIdentity": "someone-else"}})
    wait_for(lambda: leader.exit_code() is not None, 60, "the leader to stop")
    assert leader.exit_code() == 1
    assert "stopped leading" in leader.proc.tail(40)
    # someone-else never renews: the standby takes over once that record is a lease duration old.
    wait_for(lambda: node_on_port(local, NODE, standby.kubelet_port), 120, "the standby to serve the node")
    assert election_lease(ground).spec.holder_identity == standby.name
    pod_runs(local, "after-takeover")
