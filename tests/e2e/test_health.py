"""The runtime's health port on the dev ground: alive while its start waits for a CSR's approval, ready once the
node is registered, and plain HTTP apart from the kubelet API."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
import yaml
from kubernetes import client

from k8sgpu.cli.dev.ground import free_port
from k8sgpu.runtime.catalog import demo_catalog
from k8sgpu.runtime.rbac import extra_rbac

from .helpers import RuntimeProcess, api, kubectl, node_on_port, remove_node, wait_for
from .test_bootstrap import _bootstrap_identity, _outputs

pytestmark = pytest.mark.e2e

NODE = "k8s.gpu"


def _get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


def test_alive_but_not_ready_while_the_node_certificate_awaits_approval_then_ready(ground, tmp_path):
    """The start waits for a CSR nobody approves: /healthz 200 (a liveness probe must not kill that wait),
    /readyz 503 saying so. Approved by hand, the node registers and /readyz turns 200."""
    local = client.CoreV1Api(api(ground.local.kubeconfig))
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([*demo_catalog(NODE),
                                                                                   *extra_rbac()]))
    token = _bootstrap_identity(ground, "health-no-nodeclient", node_client=False)
    kubelet_port, health_port = free_port(), free_port()
    proc = RuntimeProcess(["--terraform-outputs", str(_outputs(ground, token, tmp_path / "outputs.json")),
                           "--provider-kubeconfig", ground.tenant_kubeconfig, "--node-address", ground.node_address,
                           "--kubelet-port", str(kubelet_port), "--health-port", str(health_port),
                           "--health-bind-address", "127.0.0.1", "-v"], tmp_path / "runtime.log").start()
    registered = False
    try:
        wait_for(lambda: "kubectl certificate approve k8sgpu-client-k8s.gpu-" in proc.log.read_text(), 60,
                 "the node client certificate to await approval")
        assert _get(health_port, "/healthz") == (200, "ok\n")
        status, body = _get(health_port, "/readyz")
        assert status == 503 and body.startswith("not ready: connecting to the local cluster as the node"), body
        assert proc.alive()

        csr = re.search(r"kubectl certificate approve (k8sgpu-client-k8s\.gpu-\w+)", proc.log.read_text()).group(1)
        kubectl(ground.local.kubeconfig, "certificate", "approve", csr)
        wait_for(lambda: _get(health_port, "/readyz") == (200, "ok\n"), 90, "/readyz to turn 200")
        registered = True
        # Ready on the health port means registered: the node is there, Ready, with this runtime's port.
        assert node_on_port(local, NODE, kubelet_port)
        assert _get(health_port, "/healthz") == (200, "ok\n")
    finally:
        proc.stop()
        print(proc.tail(40))
        if registered:
            remove_node(ground.local.kubeconfig, NODE)
    assert proc.proc.returncode == 0
    assert _get(health_port, "/healthz") is None  # the port closes with the runtime
