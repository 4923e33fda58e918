"""The kubelet API of k8s.gpu, used as users use any node's: through the real local kube-apiserver with
kubectl (logs, exec, port-forward, node proxy), and straight at its port for the locked door."""

from __future__ import annotations

import base64
import datetime
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes import client

from k8sgpu.cli.dev import pki
from k8sgpu.cli.dev.binaries import find_kubectl
from k8sgpu.cli.dev.ground import free_port
from k8sgpu.cli.dev.kwok import (
    ECHO_PORT,
    RESTARTS_ANNOTATION,
    USAGE_CPU_ANNOTATION,
    USAGE_MEMORY_ANNOTATION,
    cri_log_lines,
)
from k8sgpu.runtime.catalog import demo_catalog
from k8sgpu.runtime.rbac import extra_rbac

from .helpers import RuntimeProcess, api, kubectl, wait_for

pytestmark = pytest.mark.e2e

NODE = "k8s.gpu"
GPU_CLASS = "seeweb-nvidia-1xa6000"  # runs on the RTX A6000 pool


class KubeletRuntime:
    def __init__(self, ground, log: Path, *extra: str):
        self.port = free_port()
        self.proc = RuntimeProcess(["--kubeconfig", ground.node_kubeconfig, "--provider-kubeconfig",
                                    ground.tenant_kubeconfig, "--tenant-namespace", ground.tenant_namespace,
                                    "--node-address", ground.node_address, "--kubelet-port", str(self.port),
                                    "-v", *extra], log).start()


def _condition(local: client.CoreV1Api, kind: str) -> client.V1NodeCondition | None:
    try:
        node = local.read_node(NODE)
    except client.ApiException:
        return None
    return next((c for c in node.status.conditions or [] if c.type == kind), None)


def _serving(local, ground, port: int) -> bool:
    condition = _condition(local, "KubeletServingCertificate")
    node = local.read_node(NODE) if condition else None
    return bool(condition and condition.status == "True" and node.status.daemon_endpoints.kubelet_endpoint.port
                == port and node.status.addresses[0].address == ground.node_address)


@pytest.fixture(scope="module")
def runtime(ground, local, tmp_path_factory):
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([*demo_catalog(NODE),
                                                                                   *extra_rbac()]))
    rt = KubeletRuntime(ground, tmp_path_factory.mktemp("kubelet") / "runtime.log")
    try:
        wait_for(lambda: _serving(local, ground, rt.port), 60, "the kubelet API's serving certificate")
        yield rt
    finally:
        rt.proc.stop()
        print(rt.proc.tail(60))


def _pod(local, name: str, annotations: dict | None = None) -> client.V1Pod:
    local.create_namespaced_pod("default", {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"runtimeClassName": GPU_CLASS, "containers": [
            {"name": "cuda", "image": "nvidia/cuda:12.6.0-base-ubuntu20.04", "command": ["sleep", "infinity"]}]},
    })
    return wait_for(lambda: (p := local.read_namespaced_pod(name, "default")).status.phase == "Running" and p,
                    60, f"{name} to run")


@pytest.fixture(scope="module")
def gpu_pod(runtime, local):
    pod = _pod(local, "kubelet-api")
    yield pod.metadata.name
    local.delete_namespaced_pod(pod.metadata.name, "default", grace_period_seconds=0)


def k(ground, *args: str, **kw) -> subprocess.CompletedProcess:
    return kubectl(ground.local.kubeconfig, *args, check=False, **kw)


# -- serving certificate -------------------------------------------------------------


def test_serving_certificate_comes_from_a_csr_that_kube_apiserver_verifies(ground, runtime, local):
    # The port serves a certificate that verifies against the cluster CA for the node's address (the check
    # kube-apiserver does with --kubelet-certificate-authority) ...
    context = ssl.create_default_context(cafile=str(Path(ground.root) / "local-ca.crt"))
    with socket.create_connection((ground.node_address, runtime.port)) as raw, \
            context.wrap_socket(raw, server_hostname=ground.node_address) as tls:
        served = tls.getpeercert(binary_form=True)
    # ... and that a CSR of the node got.
    csrs = json.loads(k(ground, "get", "csr", "-o", "json").stdout)["items"]
    issued = {x509.load_pem_x509_certificate(base64.b64decode(c["status"]["certificate"]))
              .public_bytes(serialization.Encoding.DER): c for c in csrs if c.get("status", {}).get("certificate")}
    assert served in issued, "the served certificate did not come from any CSR"
    csr = issued[served]
    assert csr["spec"]["username"] == f"system:node:{NODE}"
    assert csr["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
    assert {c["type"] for c in csr["status"]["conditions"]} == {"Approved"}
    assert sorted(csr["spec"]["usages"]) == ["digital signature", "key encipherment", "server auth"]
    request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
    assert request.subject.rfc4514_string() == f"CN=system:node:{NODE},O=system:nodes"
    argv = next(p.argv for p in ground.processes if p.name == "local-kube-apiserver")
    assert f"--kubelet-certificate-authority={Path(ground.root) / 'pki' / 'local' / 'ca.crt'}" in argv
    assert not [a for a in argv if "insecure" in a]


# -- logs ------------------------------------------------------------------------------


def test_kubectl_logs_and_tail(ground, gpu_pod):
    full = k(ground, "logs", gpu_pod)
    assert full.returncode == 0, full.stderr
    assert "container started on a NVIDIA-RTX-A6000 node" in full.stdout
    tail = k(ground, "logs", gpu_pod, "--tail=2")
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.splitlines() == full.stdout.splitlines()[-2:]
    stamped = k(ground, "logs", gpu_pod, "--tail=1", "--timestamps")
    assert stamped.stdout.split(" ", 1)[0].endswith("Z") and stamped.stdout.split(" ", 1)[1].rstrip() == \
        full.stdout.splitlines()[-1]


def test_kubectl_logs_follow_keeps_streaming(ground, gpu_pod):
    """`kubectl logs -f` stays open for over 30 s and shows lines the container writes meanwhile."""
    log_file = Path(ground.root) / "provider" / "a6000" / "container.log"
    follow = subprocess.Popen([str(find_kubectl()), f"--kubeconfig={ground.local.kubeconfig}", "logs", "-f",
                               "--tail=0", gpu_pod], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        for i in range(4):
            time.sleep(8)
            with log_file.open("a") as f:
                f.write(cri_log_lines([f"follow line {i}"]))
        time.sleep(3)
        assert follow.poll() is None, f"kubectl logs -f ended after {time.monotonic() - started:.0f}s: " \
                                      f"{follow.stderr.read()}"
        assert time.monotonic() - started >= 30
    finally:
        follow.terminate()
        out, _ = follow.communicate(timeout=10)
    assert [line for line in out.splitlines() if line.startswith("follow line")] == \
        [f"follow line {i}" for i in range(4)]


def test_kubectl_logs_previous_after_a_restart(ground, runtime, local):
    pod = _pod(local, "restarted", {RESTARTS_ANNOTATION: "1"})
    try:
        assert pod.status.container_statuses[0].restart_count == 1
        previous = k(ground, "logs", "restarted", "--previous")
        assert previous.returncode == 0, previous.stderr
        assert "the previous run on a NVIDIA-RTX-A6000 node" in previous.stdout
        assert "previous run" not in k(ground, "logs", "restarted").stdout
    finally:
        local.delete_namespaced_pod("restarted", "default", grace_period_seconds=0)


def test_logs_of_an_unknown_container_say_so(ground, gpu_pod):
    wrong = k(ground, "logs", gpu_pod, "-c", "nope")
    assert wrong.returncode != 0 and "nope" in wrong.stderr


# -- exec, attach-like streams, port-forward ---------------------------------------------


def test_exec_nvidia_smi_shows_the_provider_nodes_gpus(ground, gpu_pod):
    smi = k(ground, "exec", gpu_pod, "--", "nvidia-smi", "-L")
    assert smi.returncode == 0, smi.stderr
    assert smi.stdout.splitlines() == ["GPU 0: NVIDIA-RTX-A6000 (UUID: GPU-a6000-0)",
                                       "GPU 1: NVIDIA-RTX-A6000 (UUID: GPU-a6000-1)"]
    table = k(ground, "exec", gpu_pod, "--", "nvidia-smi")
    assert "NVIDIA-RTX-A6000" in table.stdout and "49140MiB" in table.stdout


def test_exec_stdin_round_trips(ground, gpu_pod):
    # kwok never closes a command's stdin, so the command reads a line instead of waiting for EOF.
    echo = k(ground, "exec", "-i", gpu_pod, "--", "sh", "-c", 'read line; echo "got: $line"; echo err >&2',
             stdin="hello from stdin\n")
    assert echo.returncode == 0, echo.stderr
    assert echo.stdout == "got: hello from stdin\n"
    assert echo.stderr == "err\n"


def test_exec_exit_code_comes_back(ground, gpu_pod):
    failed = k(ground, "exec", gpu_pod, "--", "sh", "-c", "echo before; exit 3")
    assert failed.returncode == 3
    assert failed.stdout == "before\n"
    assert "exit code 3" in failed.stderr


def test_exec_it_shell_under_a_pseudo_terminal(ground, gpu_pod):
    command = f"{find_kubectl()} --kubeconfig={ground.local.kubeconfig} exec -it {gpu_pod} -- sh"
    session = subprocess.run(["script", "-qec", command, "/dev/null"], input="echo $((6*7)); tty\nexit 4\n",
                             capture_output=True, text=True, timeout=60)
    out = session.stdout.replace("\r", "")
    # The typed line is echoed by the terminal; the shell's answer may follow its prompt on one line.
    assert re.search(r"^(# )?42$", out, re.MULTILINE), out
    assert "/dev/pts/" in out, out  # the command ran on a terminal
    assert session.returncode == 4, out


def test_port_forward_carries_bytes_both_ways(ground, gpu_pod):
    port = free_port()
    forward = subprocess.Popen([str(find_kubectl()), f"--kubeconfig={ground.local.kubeconfig}", "port-forward",
                                f"pod/{gpu_pod}", f"{port}:{ECHO_PORT}"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert "Forwarding from 127.0.0.1" in forward.stdout.readline()
        for word in ("ping", "second connection"):
            with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
                conn.sendall(f"{word}\n".encode())
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = conn.recv(100)
                    assert chunk, f"connection closed after {reply!r}"
                    reply += chunk
                assert reply == f"pong: {word}\n".encode()
    finally:
        forward.terminate()
        forward.wait(10)


# -- node proxy: stats, metrics, pods ---------------------------------------------------


def test_node_proxy_stats_summary_and_metrics(ground, gpu_pod):
    raw = k(ground, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/stats/summary")
    assert raw.returncode == 0, raw.stderr
    summary = json.loads(raw.stdout)
    assert summary["node"]["nodeName"] == NODE
    assert {"name": gpu_pod, "namespace": "default"}.items() <= \
        next(p["podRef"] for p in summary["pods"] if p["podRef"]["name"] == gpu_pod).items()
    metrics = k(ground, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/metrics/resource")
    assert metrics.returncode == 0, metrics.stderr
    assert "# TYPE node_cpu_usage_seconds_total counter" in metrics.stdout
    pods = json.loads(k(ground, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/pods").stdout)
    assert gpu_pod in [p["metadata"]["name"] for p in pods["items"]]
    running = json.loads(k(ground, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/runningpods/").stdout)
    assert gpu_pod in [p["metadata"]["name"] for p in running["items"]]


def test_kubectl_top_shows_what_the_provider_measures(ground, runtime, local):
    """kwok reports the usage the pod's annotations ask for; the provider's metrics-server reads it; the
    runtime serves it as resource metrics; the local metrics-server reads those; `kubectl top` shows them."""
    _pod(local, "busy", {USAGE_CPU_ANNOTATION: "250m", USAGE_MEMORY_ANNOTATION: "300Mi"})
    try:
        def top() -> list[str] | None:
            shown = k(ground, "top", "pod", "busy", "--no-headers")
            return shown.stdout.split() if shown.returncode == 0 else None

        name, cpu, memory = wait_for(top, 150, "kubectl top pod busy", interval=5)
        assert name == "busy" and memory == "300Mi"
        assert 240 <= int(cpu.removesuffix("m")) <= 260  # a rate from two samples of a cumulative counter
        node = wait_for(lambda: (r := k(ground, "top", "node", NODE, "--no-headers")).returncode == 0 and r.stdout,
                        60, "kubectl top node", interval=5)
        assert node.split()[0] == NODE
    finally:
        local.delete_namespaced_pod("busy", "default", grace_period_seconds=0)


# -- the locked door -----------------------------------------------------------------------


def _get(ground, runtime, path: str, *, cert: pki.KeyPair | None = None, token: str = "", method: str = "GET") -> int:
    context = ssl.create_default_context(cafile=str(Path(ground.root) / "local-ca.crt"))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    request = urllib.request.Request(f"https://{ground.node_address}:{runtime.port}{path}", method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=20) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_anonymous_gets_401_and_an_identity_without_nodes_proxy_403(ground, runtime, gpu_pod, tmp_path):
    assert _get(ground, runtime, "/pods") == 401
    assert _get(ground, runtime, f"/containerLogs/default/{gpu_pod}/cuda") == 401
    ca = pki.KeyPair(Path(ground.root) / "pki" / "local" / "ca.crt", Path(ground.root) / "pki" / "local" / "ca.key")
    nobody = pki.issue(ca, tmp_path, "nobody", "nobody", ("some-team",), client=True)
    assert _get(ground, runtime, "/pods", cert=nobody) == 403
    assert _get(ground, runtime, "/stats/summary", cert=nobody) == 403
    # kube-apiserver's own kubelet client certificate gets in.
    apiserver = pki.KeyPair(Path(ground.root) / "pki" / "local" / "apiserver-kubelet-client.crt",
                            Path(ground.root) / "pki" / "local" / "apiserver-kubelet-client.key")
    assert _get(ground, runtime, "/pods", cert=apiserver) == 200


def test_bearer_tokens_are_reviewed_and_authorized(ground, runtime, local):
    """A ServiceAccount token: TokenReview says who, SubjectAccessReview whether it may read stats only."""
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "stats-reader", "namespace": "default"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "stats-reader"},
         "rules": [{"apiGroups": [""], "resources": ["nodes/stats"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "stats-reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "stats-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "stats-reader", "namespace": "default"}]},
    ]))
    token = kubectl(ground.local.kubeconfig, "create", "token", "stats-reader").stdout.strip()
    assert _get(ground, runtime, "/stats/summary", token=token) == 200
    assert _get(ground, runtime, "/pods", token=token) == 403  # nodes/proxy, not granted
    assert _get(ground, runtime, "/pods", token="not-a-token") == 401


# Who may do what at the door, decided by the real kube-apiserver's RBAC through SubjectAccessReviews, as for a
# kubelet: its path → nodes subresource mapping (pkg/kubelet/server/auth.go: /stats → stats, /metrics → metrics,
# /logs → log, anything else → proxy) and HTTP method → verb (GET get, POST create).
_DOOR_USERS = {"door-proxy": ("proxy", ["get", "create"]), "door-stats": ("stats", ["get"]),
               "door-metrics": ("metrics", ["get"]), "door-log": ("log", ["get"]),
               "door-proxy-get": ("proxy", ["get"])}
# (method, path, subresource, verb, what the runtime answers once allowed)
_DOOR_REQUESTS = [
    ("GET", "/pods", "proxy", "get", 200),
    ("GET", "/runningpods/", "proxy", "get", 200),
    ("GET", "/healthz", "proxy", "get", 200),
    ("GET", "/containerLogs/default/{pod}/cuda", "proxy", "get", 200),
    ("POST", "/exec/default/{pod}/cuda?command=ls&output=1", "proxy", "create", 400),  # allowed, but no upgrade
    ("GET", "/stats/summary", "stats", "get", 200),
    ("GET", "/metrics/resource", "metrics", "get", 200),
    ("GET", "/logs/", "log", "get", 404),  # allowed; the virtual node has no /var/log to list
]


def test_authorization_matrix_at_the_door(ground, runtime, gpu_pod, tmp_path):
    """Every user with exactly one nodes subresource (and verbs) against every endpoint: 403 where a kubelet says
    403, through only the grant a kubelet checks; anonymous 401 everywhere."""
    ca = pki.KeyPair(Path(ground.root) / "pki" / "local" / "ca.crt", Path(ground.root) / "pki" / "local" / "ca.key")
    objects = []
    for user, (sub, verbs) in _DOOR_USERS.items():
        objects += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": user},
             "rules": [{"apiGroups": [""], "resources": [f"nodes/{sub}"], "verbs": verbs}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": user},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]},
        ]
    kubectl(ground.local.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    certs = {user: pki.issue(ca, tmp_path, user, user, client=True) for user in _DOOR_USERS}
    seen, wanted = {}, {}
    for method, path, sub, verb, answer in _DOOR_REQUESTS:
        path = path.format(pod=gpu_pod)
        seen[("anonymous", method, path)] = _get(ground, runtime, path, method=method)
        wanted[("anonymous", method, path)] = 401
        for user, (granted, verbs) in _DOOR_USERS.items():
            seen[(user, method, path)] = _get(ground, runtime, path, cert=certs[user], method=method)
            wanted[(user, method, path)] = answer if granted == sub and verb in verbs else 403
    wrong = {key: (seen[key], wanted[key]) for key in wanted if seen[key] != wanted[key]}
    assert not wrong, f"(user, method, path): (answered, expected): {wrong}"


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_200_mb_into_exec_stdin_of_a_container_that_reads_nothing_keep_the_runtime_small(ground, runtime, gpu_pod):
    """`kubectl exec -i` through kube-apiserver into a command that never reads its stdin (kwok runs `sleep`
    with stdin on a pipe): kubectl is held back, and the runtime's memory stays within 64 MiB of what it was."""
    total, block = 200 * 1024 * 1024, b"x" * 65536
    proc = subprocess.Popen([str(find_kubectl()), f"--kubeconfig={ground.local.kubeconfig}", "exec", "-i", gpu_pod,
                             "-c", "cuda", "--", "sleep", "600"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    written = 0

    def push() -> None:
        nonlocal written
        try:
            while written < total:
                proc.stdin.write(block)
                written += len(block)
            proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass

    before = _rss(runtime.proc.proc.pid)
    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    try:
        last, still, deadline = -1, 0, time.monotonic() + 180
        while still < 10 and time.monotonic() < deadline and written < total:  # until kubectl is held back
            time.sleep(0.5)
            still = still + 1 if written == last else 0
            last = written
        growth = _rss(runtime.proc.proc.pid) - before
        print(f"kubectl held back after {written} bytes; the runtime's RSS grew {growth} bytes (from {before})")
        assert written < total, "kubectl pushed all 200 MB: something on the way buffered it"
        assert growth < 64 * 1024 * 1024
        assert runtime.proc.alive()
    finally:
        proc.kill()
        proc.wait()


# -- EKS's signer ------------------------------------------------------------------------------


def _sign(csr: dict, ca: pki.KeyPair) -> str:
    """What EKS does for beta.eks.amazonaws.com/app-serving: sign the request with the cluster CA."""
    request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
    ca_cert, ca_key = ca.load()
    now = datetime.datetime.now(datetime.UTC)
    sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    cert = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(ca_cert.subject)
            .public_key(request.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(sans, critical=False)
            .sign(ca_key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode()


def test_aws_signer_csr_awaits_approval_then_serves(ground, runtime, local, gpu_pod, tmp_path):
    """With --csr-signer aws the CSR names EKS's signer; the node may not approve it (its RBAC names
    kubernetes.io/kubelet-serving), so it says what to run; once approved and signed it serves."""
    runtime.proc.stop()
    aws = KubeletRuntime(ground, tmp_path / "runtime-aws.log", "--csr-signer", "aws")
    try:
        condition = wait_for(lambda: (c := _condition(local, "KubeletServingCertificate")) and
                             c.reason == "AwaitingApproval" and c, 60, "the node to say it awaits approval")
        certs = client.CertificatesV1Api(api(ground.local.kubeconfig))
        pending = [c for c in certs.list_certificate_signing_request().items
                   if c.spec.signer_name == "beta.eks.amazonaws.com/app-serving"
                   and not (c.status and c.status.conditions)]
        assert len(pending) == 1
        name = pending[0].metadata.name
        assert f"kubectl certificate approve {name}" in condition.message
        assert f"kubectl certificate approve {name}" in aws.proc.log.read_text()
        approved = k(ground, "certificate", "approve", name)
        assert approved.returncode == 0, approved.stderr
        ca = pki.KeyPair(Path(ground.root) / "pki" / "local" / "ca.crt",
                         Path(ground.root) / "pki" / "local" / "ca.key")
        csr = json.loads(k(ground, "get", "csr", name, "-o", "json").stdout)
        csr["status"]["certificate"] = _sign(csr, ca)
        signed = k(ground, "replace", "--raw", f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/status",
                   "-f", "-", stdin=json.dumps(csr))
        assert signed.returncode == 0, signed.stderr
        wait_for(lambda: _serving(local, ground, aws.port), 60, "the EKS-signed certificate in use")
        smi = k(ground, "exec", gpu_pod, "--", "nvidia-smi", "-L")
        assert smi.returncode == 0 and "NVIDIA-RTX-A6000" in smi.stdout, smi.stderr
    finally:
        aws.proc.stop()
        print(aws.proc.tail(40))
