"""Session fixtures: the dev ground (two real clusters on 127.0.0.1), started once, stopped by PID; moto alone;
the AWS session `doctor --cloud eks` tests use."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import pytest
import urllib3
from botocore.awsrequest import AWSResponse

from k8sgpu.cli.dev.binaries import ensure_binaries
from k8sgpu.cli.dev.ground import Ground, State, free_port, listening_ports
from k8sgpu.cli.tf.providers import ensure_providers


def pytest_configure(config):
    """A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the ground's fixture still stops it by PID."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _log(message: str) -> None:
    print(f"[ground] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def binaries():
    return ensure_binaries(progress=_log)


@pytest.fixture(scope="session")
def ground(binaries, tmp_path_factory) -> State:
    """Both clusters, up for the whole test session; stopped at its end even when tests fail."""
    root = Path(os.environ.get("K8SGPU_TEST_ROOT") or tmp_path_factory.mktemp("ground"))
    from k8sgpu.cli.dev.image import ensure_image

    g = Ground(root, progress=_log, runtime_image=lambda: ensure_image(progress=_log))
    kernel = machine_settings()
    state, _ = g.up(binaries)
    try:
        yield state
    finally:
        g.down()
        _assert_gone(state)
        assert machine_settings() == kernel, "the ground changed machine-wide settings or the host's directories"


def machine_settings() -> dict[str, str]:
    """The machine-wide settings a kubelet writes by default, the host's iptables rules, and what the host's
    directories a kubelet, containerd and CNI use by default hold."""
    from k8sgpu.cli.dev.worker import KUBELET_SYSCTLS, TMPFS_IN_NAMESPACE

    values = {key: Path("/proc/sys", key).read_text().strip() for key in KUBELET_SYSCTLS}
    for directory in (*TMPFS_IN_NAMESPACE, "/etc", "/usr/libexec", "/opt"):
        values[directory] = " ".join(sorted(os.listdir(directory)))
    for table in ("filter", "nat"):
        done = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        values[f"iptables {table}"] = done.stdout
    return values


def _assert_gone(state: State) -> None:
    """Nothing of the ground may outlive it: no process, no listener on its ports, nothing of its worker node
    (processes, mounts, link, route, cgroups), no address on lo."""
    from k8sgpu.cli.dev.worker import WorkerPlan, leftovers

    deadline = time.monotonic() + 10
    while True:
        alive = [p.name for p in state.processes if p.alive()]
        ports = sorted(listening_ports() & {port for p in state.processes for port in p.ports})
        left = leftovers(WorkerPlan(**state.worker)) if state.worker else []
        on_lo = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
        if state.node_address != "127.0.0.1" and f" {state.node_address}/" in on_lo:
            left.append(f"address {state.node_address} on lo")
        if not alive and not ports and not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"ground left behind: processes {alive}, listening ports {ports}, {left}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory) -> dict[str, str]:
    """The environment CI has: no terraform on PATH, the providers built from source in the mirror."""
    config = ensure_providers(progress=lambda m: print(f"[providers] {m}", file=sys.stderr, flush=True))
    path = ":".join(p for p in os.environ["PATH"].split(":")
                    if p and not os.path.exists(os.path.join(p, "terraform")))
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{path}", "TF_CLI_CONFIG_FILE": str(config),
            "TF_IN_AUTOMATION": "1", "NO_COLOR": "1"}


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """moto_server on loopback (IAM, STS, EKS), for tests that need AWS but no cluster; stopped by PID."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield endpoint
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


class RecordedEks:
    """An AWS session for `k8sgpu doctor --cloud eks`: every call goes to moto, except what moto does not implement.

    moto 5.2.5 leaves `accessConfig` out of DescribeCluster and has no access entries (404), and LocalStack's EKS
    is not in its free tier (501). So a botocore `before-send` handler answers at the SDK's HTTP boundary:
    DescribeCluster is sent on to moto and `accessConfig` added to its JSON when ``mode`` is set (moto's answer
    passes unchanged when ``mode`` is None, or when moto answers an error); DescribeAccessEntry is answered from
    ``entries`` (principal ARN -> type) in the EKS REST API's shape, or with its ResourceNotFoundException (404,
    `x-amzn-ErrorType`, JSON body). ``seen`` records (operation, "moto" | "recorded") for every call.
    """

    USERNAMES = {"HYBRID_LINUX": "system:node:{{SessionName}}", "EC2_LINUX": "system:node:{{EC2PrivateDNSName}}"}

    def __init__(self, endpoint: str, mode: str | None = None, entries: dict[str, str] | None = None):
        self.endpoint, self.mode, self.entries = endpoint, mode, entries or {}
        self.seen: list[tuple[str, str]] = []

    def session(self, region: str | None) -> AwsClients:
        """The CLI's aws_session seam."""
        return AwsClients(self, region)

    def before_send(self, request, event_name: str, **kwargs):
        _, service, operation = event_name.split(".")
        if service == "eks" and operation == "DescribeAccessEntry":
            self.seen.append((operation, "recorded"))
            return self._access_entry(request)
        self.seen.append((operation, "moto" if operation != "DescribeCluster" or not self.mode else
                          "moto + recorded accessConfig"))
        if service == "eks" and operation == "DescribeCluster" and self.mode:
            answer = urllib3.PoolManager().request(request.method, request.url, body=request.body,
                                                   headers=dict(request.headers))
            if answer.status != 200:
                return _response(request.url, answer.status, dict(answer.headers), answer.data)
            body = json.loads(answer.data)
            body["cluster"]["accessConfig"] = {"bootstrapClusterCreatorAdminPermissions": True,
                                               "authenticationMode": self.mode}
            return _response(request.url, 200, {"Content-Type": "application/json"}, json.dumps(body).encode())
        return None  # on to moto

    def _access_entry(self, request):
        # GET /clusters/{name}/access-entries/{principalArn}, the ARN percent-encoded
        path = urllib.parse.urlsplit(request.url).path.split("/")
        cluster, principal = urllib.parse.unquote(path[2]), urllib.parse.unquote(path[4])
        kind = self.entries.get(principal)
        if kind is None:
            return _response(request.url, 404, {"Content-Type": "application/json",
                                                "x-amzn-ErrorType": "ResourceNotFoundException"},
                             json.dumps({"clusterName": cluster, "message": "The specified access entry resource "
                                                                           "is not found."}).encode())
        account, role = principal.split(":")[4], principal.rsplit("/", 1)[1]
        username = self.USERNAMES.get(kind, f"arn:aws:sts::{account}:assumed-role/{role}/{{{{SessionName}}}}")
        entry = {"clusterName": cluster, "principalArn": principal, "kubernetesGroups": [],
                 "accessEntryArn": f"arn:aws:eks:us-east-1:{account}:access-entry/{cluster}/role/{account}/{role}/"
                                   "6ac8b1e2-3f4d-4c5e-9a7b-0d1e2f3a4b5c",
                 "createdAt": 1767225600.0, "modifiedAt": 1767225600.0, "tags": {}, "username": username,
                 "type": kind}
        return _response(request.url, 200, {"Content-Type": "application/json"},
                         json.dumps({"accessEntry": entry}).encode())


class AwsClients:
    """What doctor_eks asks of a boto3 Session (`client(service)`), for moto's endpoint with the handler on."""

    KEY, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

    def __init__(self, recorded: RecordedEks, region: str | None):
        self.recorded, self.region = recorded, region

    def client(self, service: str):
        made = boto3.client(service, region_name=self.region, endpoint_url=self.recorded.endpoint,
                            aws_access_key_id=self.KEY, aws_secret_access_key=self.SECRET)
        made.meta.events.register("before-send", self.recorded.before_send)
        return made


def _response(url: str, status: int, headers: dict, body: bytes) -> AWSResponse:
    raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers=headers, status=status, preload_content=False)
    return AWSResponse(url, status, headers, raw)


@pytest.fixture(scope="session")
def recorded_eks() -> type[RecordedEks]:
    """RecordedEks(endpoint, mode=None, entries=None): its `session` is the CLI's aws_session seam."""
    return RecordedEks
