"""The dev ground: two real Kubernetes clusters on 127.0.0.1.

* local    — what a user has: kube-apiserver (Node,RBAC; NodeRestriction and
             RuntimeClass admission), kube-controller-manager (signs approved
             CSRs with the cluster CA), kube-scheduler.
           Bearer tokens also go to the EKS authenticator (`eks_authenticator`),
             which checks EKS tokens against STS (moto on 127.0.0.1) and maps
             them through kube-system/aws-auth, as EKS does.
* provider — the GPU cloud: its own kube-apiserver, controller-manager and
             scheduler, and one kwok controller per GPU pool simulating nodes.

Both keep their data in one etcd under separate prefixes. Every process is
started in its own session and recorded (PID and start time) in
``<root>/state.json``; ``down`` stops exactly those processes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import pki
from . import prometheus as prometheus_parts
from . import worker as worker_parts
from .binaries import Binaries, cache_root
from .catalog import DEFAULT_POOLS, TENANT_NAMESPACE, GPUPool
from .components import Component, ordered
from .image import Image
from .kwok import write_pool_files

Progress = Callable[[str], None]

NODE_NAME = "k8s.gpu"
EKS_CLUSTER_NAME = "k8sgpu-dev"  # the name EKS tokens for the local cluster are signed for (x-k8s-aws-id)
AWS_REGION = "us-east-1"
SERVICE_CIDR = {"local": "10.96.0.0/16", "provider": "10.97.0.0/16"}


class GroundError(RuntimeError):
    """The ground could not be brought up or down; the message says what to do."""


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a port the kernel handed out (bind to 0) may be
    taken as the source port of an outgoing connection before the process meant to listen on it starts."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_ports() -> set[int]:
    """TCP ports anything on this machine listens on (from /proc/net/tcp{,6})."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _proc_start_time(pid: int) -> int | None:
    """Clock ticks since boot at which ``pid`` started, to tell it from a recycled PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclasses.dataclass
class Process:
    name: str
    argv: list[str]
    log: str
    pid: int = 0
    started: int = 0  # /proc start time of pid
    ports: list[int] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: str = ""

    def launch(self) -> None:
        with open(self.log, "ab") as out:
            child = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **self.env}, cwd=self.cwd or None,
            )
        self.pid = child.pid
        self.started = _proc_start_time(child.pid) or 0

    def alive(self) -> bool:
        return self.pid > 0 and _proc_start_time(self.pid) == self.started


@dataclasses.dataclass
class ClusterInfo:
    name: str
    server: str
    kubeconfig: str


@dataclasses.dataclass
class State:
    root: str
    processes: list[Process]
    local: ClusterInfo
    provider: ClusterInfo
    node_kubeconfig: str
    tenant_kubeconfig: str
    tenant_namespace: str
    etcd_data: str
    created: float
    node_address: str = "127.0.0.1"
    aws_endpoint: str = ""
    """moto on loopback: IAM, STS and EKS for tests and the EKS authenticator."""
    eks_cluster_name: str = EKS_CLUSTER_NAME
    eks_authenticator_settings: str = ""
    """JSON the EKS authenticator re-reads: max_token_age_seconds, not_before (see eks_authenticator)."""
    ports: dict[str, int] = dataclasses.field(default_factory=dict)
    """Each component's port, chosen once, so that a component started again listens where it did."""
    initialized: list[str] = dataclasses.field(default_factory=list)
    """Components whose one-time step ran (objects kept in etcd, which a restart keeps)."""
    binaries: dict[str, str] = dataclasses.field(default_factory=dict)
    worker: dict | None = None
    """The worker node's WorkerPlan (see worker.py), when the ground has one."""

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise GroundError(f"{path} is unreadable ({exc}); remove it and stop stray processes by hand") from exc
        raw["processes"] = [Process(**p) for p in raw["processes"]]
        raw["local"] = ClusterInfo(**raw["local"])
        raw["provider"] = ClusterInfo(**raw["provider"])
        return cls(**raw)


@dataclasses.dataclass
class _PKI:
    """Certificates of one cluster."""

    ca: pki.KeyPair
    front_proxy_ca: pki.KeyPair
    apiserver: pki.KeyPair
    kubelet_client: pki.KeyPair
    front_proxy_client: pki.KeyPair
    admin: pki.KeyPair
    controller_manager: pki.KeyPair
    scheduler: pki.KeyPair
    sa_key: Path
    sa_pub: Path


def _cluster_pki(directory: Path, cluster: str, address: str = "127.0.0.1") -> _PKI:
    ca = pki.make_ca(directory, "ca", f"k8sgpu-dev-{cluster}-ca")
    front = pki.make_ca(directory, "front-proxy-ca", f"k8sgpu-dev-{cluster}-front-proxy-ca")
    sa_key, sa_pub = pki.make_service_account_key(directory)
    return _PKI(
        ca=ca,
        front_proxy_ca=front,
        apiserver=pki.issue(
            ca, directory, "apiserver", "kube-apiserver", server=True,
            ips=tuple(dict.fromkeys(("127.0.0.1", address, str(ipaddress.ip_network(SERVICE_CIDR[cluster])[1])))),
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"),
        ),
        kubelet_client=pki.issue(
            ca, directory, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
            ("system:masters",), client=True,
        ),
        front_proxy_client=pki.issue(front, directory, "front-proxy-client", "front-proxy-client", client=True),
        admin=pki.issue(ca, directory, "admin", "k8sgpu-dev-admin", ("system:masters",), client=True),
        controller_manager=pki.issue(
            ca, directory, "controller-manager", "system:kube-controller-manager", client=True
        ),
        scheduler=pki.issue(ca, directory, "scheduler", "system:kube-scheduler", client=True),
        sa_key=sa_key,
        sa_pub=sa_pub,
    )


class Ground:
    """Start, inspect and stop the dev ground kept under ``root`` (``.k8sgpu/dev``).

    The ground is the table of `components()`: `up` walks it in dependency order, starting what is
    not running; `down` walks it backwards, stopping processes by PID and undoing what each row made.
    """

    def __init__(self, root: Path, pools: tuple[GPUPool, ...] = DEFAULT_POOLS, progress: Progress = print,
                 worker: bool = True, runtime_image: Callable[[], Image] | None = None):
        self.root = root.resolve()
        self.pools = pools
        self.progress = progress
        self.with_worker = worker
        self.runtime_image = runtime_image
        """Builds (or finds) the runtime's image, which the worker's containerd gets."""
        self.state_file = self.root / "state.json"

    # -- inspection -------------------------------------------------------

    def state(self) -> State | None:
        return State.load(self.state_file)

    def status(self) -> list[tuple[Process, bool]]:
        state = self.state()
        return [(p, p.alive()) for p in state.processes] if state else []

    # -- up ------------------------------------------------------------------

    def up(self, binaries: Binaries) -> tuple[State, bool]:
        """Bring the ground up; returns the state and whether it was already running.

        On a ground where some components died, only those start again: etcd's data and every
        object in both clusters are kept."""
        state = self.state()
        if state is not None and not state.ports:
            raise GroundError(f"the ground in {self.root} was started by an older k8sgpu (its state names no ports): "
                              "stop it with `k8sgpu dev down`, then run `k8sgpu dev up`")
        if state is not None and "prometheus" not in state.ports:  # a ground from before it had Prometheus
            state.ports["prometheus"] = free_port()
            state.binaries["prometheus"] = self._prometheus()
            state.save(self.state_file)
        if state is not None:
            table = self.components(state)
            dead = [c.name for c in table if c.argv and not self._alive(state, c.name)]
            unfinished = [c.name for c in table if c.name not in state.initialized]
            if not dead and not unfinished:
                return state, True
            self.progress(f"ground is partly down ({', '.join(dead or unfinished)}): starting only that")
            self._walk(state, table)
            self._wait_ready(state)
            return state, False
        missing = binaries.missing()
        if missing:
            raise GroundError(f"binaries missing: {', '.join(map(str, missing))}; run `k8sgpu dev build`")
        self._prometheus()
        if self.with_worker and os.geteuid() == 0:
            lacking = worker_parts.missing_tools()
            if lacking:
                raise GroundError("the worker node needs: " + "; ".join(lacking)
                                  + " (or start the ground without it: `k8sgpu dev up --no-worker`)")
        started = time.monotonic()
        try:
            state = self._plan(binaries)
            self._walk(state, self.components(state))
            self._wait_ready(state)
        except BaseException:
            self.progress("start failed: stopping what was started")
            self.down()
            raise
        self.progress(f"ground up in {time.monotonic() - started:.1f}s")
        return state, False

    @staticmethod
    def _prometheus() -> str:
        found = prometheus_parts.find_prometheus()
        if not found:
            raise GroundError(f"no prometheus binary: {prometheus_parts.INSTALL_HINT}")
        return found

    def _etcd_data_dir(self) -> Path:
        # tmpfs when there is one: the ground's data is throwaway and fsync on disk is its bottleneck.
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else self.root
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return base / f"k8sgpu-etcd-{digest}"

    def _plan(self, binaries: Binaries) -> State:
        """Ports, addresses, certificates and kubeconfigs: everything the table is made from, saved."""
        root = self.root
        (root / "logs").mkdir(parents=True, exist_ok=True)
        data = self._etcd_data_dir()
        shutil.rmtree(data, ignore_errors=True)
        state = State(
            root=str(root),
            processes=[],
            local=ClusterInfo("local", "", str(root / "local.kubeconfig")),
            provider=ClusterInfo("provider", "", str(root / "provider.kubeconfig")),
            node_kubeconfig=str(root / "node.kubeconfig"),
            tenant_kubeconfig=str(root / "tenant.kubeconfig"),
            tenant_namespace=TENANT_NAMESPACE,
            etcd_data=str(data),
            created=time.time(),
            binaries={**{k: str(v) for k, v in dataclasses.asdict(binaries).items()},
                      "prometheus": self._prometheus()},
        )
        state.save(self.state_file)  # from here on, `down` can undo what follows
        state.node_address = self._claim_node_address()
        state.save(self.state_file)
        if self.with_worker and state.node_address != "127.0.0.1":
            state.worker = dataclasses.asdict(worker_parts.plan(root))
        elif self.with_worker:
            self.progress("no worker node: it needs root and an address outside 127.0.0.0/8")
        # The API servers listen where pods on the worker reach them: the node address, not loopback.
        api_address = state.node_address if state.worker else "127.0.0.1"
        names = ["etcd-client", "etcd-peer", "moto", "eks-authenticator", "local-kube-apiserver",
                 "provider-kube-apiserver", "local-metrics-server", "provider-metrics-server", "prometheus"]
        names += [f"provider-kwok-{pool.name}" for pool in self.pools]
        state.ports = {}
        for name in names:
            while (port := free_port()) in state.ports.values():
                pass
            state.ports[name] = port
        state.aws_endpoint = f"http://127.0.0.1:{state.ports['moto']}"
        state.eks_authenticator_settings = str(root / "eks-authenticator.json")
        Path(state.eks_authenticator_settings).write_text("{}\n")

        for cluster in ("local", "provider"):
            cp = _cluster_pki(root / "pki" / cluster, cluster, api_address)
            info = getattr(state, cluster)
            info.server = f"https://{api_address}:{state.ports[f'{cluster}-kube-apiserver']}"
            pki.write_kubeconfig(Path(info.kubeconfig), cluster=f"k8sgpu-dev-{cluster}", server=info.server,
                                 ca=cp.ca.cert, user="admin", pair=cp.admin)
            for component, pair in (("controller-manager", cp.controller_manager), ("scheduler", cp.scheduler)):
                pki.write_kubeconfig(root / "components" / f"{cluster}-{component}.kubeconfig",
                                     cluster=f"k8sgpu-dev-{cluster}", server=info.server, ca=cp.ca.cert,
                                     user=f"system:kube-{component}", pair=pair)
        local_pki = _cluster_pki(root / "pki" / "local", "local", api_address)
        provider_pki = _cluster_pki(root / "pki" / "provider", "provider", api_address)
        # The cluster CA of the local cluster sits beside the kubeconfigs, for users and the runtime.
        shutil.copyfile(local_pki.ca.cert, root / "local-ca.crt")
        # The runtime's identity on the local cluster: a node client certificate.
        node_pair = pki.issue(local_pki.ca, root / "pki" / "local", "node-k8s.gpu", f"system:node:{NODE_NAME}",
                              ("system:nodes",), client=True)
        pki.write_kubeconfig(Path(state.node_kubeconfig), cluster="k8sgpu-dev-local", server=state.local.server,
                             ca=local_pki.ca.cert, user=f"system:node:{NODE_NAME}", pair=node_pair)
        # The tenant's identity on the provider: its namespace only, and reading Nodes (see _bootstrap_provider).
        tenant_pair = pki.issue(provider_pki.ca, root / "pki" / "provider", "tenant", f"tenant:{TENANT_NAMESPACE}",
                                client=True)
        pki.write_kubeconfig(Path(state.tenant_kubeconfig), cluster="k8sgpu-dev-provider",
                             server=state.provider.server, ca=provider_pki.ca.cert,
                             user=f"tenant:{TENANT_NAMESPACE}", pair=tenant_pair)
        if state.worker:
            w = worker_parts.WorkerPlan(**state.worker)
            for user, name, orgs in ((f"system:node:{worker_parts.NODE_NAME}", "kubelet", ("system:nodes",)),
                                     ("system:kube-proxy", "kube-proxy", ())):
                pair = pki.issue(local_pki.ca, root / "pki" / "local", f"worker-{name}", user, orgs, client=True)
                pki.write_kubeconfig(Path(w.dir) / name / "kubeconfig", cluster="k8sgpu-dev-local",
                                     server=state.local.server, ca=local_pki.ca.cert, user=user, pair=pair)
            pki.issue(local_pki.ca, root / "pki" / "local", "worker-kubelet-serving",
                      f"system:node:{worker_parts.NODE_NAME}", ("system:nodes",), server=True,
                      ips=(w.node_ip,), dns=(worker_parts.NODE_NAME,))
        state.save(self.state_file)
        return state

    def components(self, state: State) -> list[Component]:
        """The ground as a table, made from its saved state alone (ports, addresses, binaries)."""
        root = Path(state.root)
        bins, ports = state.binaries, state.ports
        api_address = state.node_address if state.worker else "127.0.0.1"
        etcd_url = f"http://127.0.0.1:{ports['etcd-client']}"
        peer = f"http://127.0.0.1:{ports['etcd-peer']}"
        rows = [
            Component("etcd", argv=(
                bins["etcd"], "--name=dev", f"--data-dir={state.etcd_data}",
                f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=dev={peer}", "--logger=zap", "--log-level=warn",
                "--quota-backend-bytes=4294967296"),
                ports=(ports["etcd-client"], ports["etcd-peer"]), ready=lambda: _http_ok(f"{etcd_url}/health"),
                ready_timeout=30),
            Component("moto", argv=(sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["moto"])),
                      ports=(ports["moto"],), ready=lambda: _http_ok(f"{state.aws_endpoint}/moto-api/"),
                      ready_timeout=30),
            self._eks_authenticator(state),
        ]
        for cluster in ("local", "provider"):
            cp = _cluster_pki(root / "pki" / cluster, cluster, api_address)
            rows += self._control_plane(state, cluster, cp, etcd_url, api_address)
        provider_pki = _cluster_pki(root / "pki" / "provider", "provider", api_address)
        rows.append(Component("provider-tenant", depends=("provider-kube-apiserver",),
                              once=lambda: self._bootstrap_provider(state)))
        # One kwok controller per GPU pool; each serves the pool's nodes' kubelet API.
        kwok_pair = pki.issue(provider_pki.ca, root / "pki" / "provider", "kwok-serving", "kwok", server=True,
                              ips=("127.0.0.1",), dns=("localhost",))
        for pool in self.pools:
            pool_dir = root / "provider" / pool.name
            port = ports[f"provider-kwok-{pool.name}"]
            rows.append(Component(
                f"provider-kwok-{pool.name}", depends=("provider-tenant",),
                argv=(bins["kwok"], f"--kubeconfig={state.provider.kubeconfig}", f"--config={pool_dir / 'kwok.yaml'}",
                      f"--manage-nodes-with-label-selector=dev.k8sgpu.io/pool={pool.name}",
                      "--node-ip=127.0.0.1", f"--node-port={port}", f"--server-address=127.0.0.1:{port}",
                      f"--tls-cert-file={kwok_pair.cert}", f"--tls-private-key-file={kwok_pair.key}",
                      f"--cidr={pool.pod_cidr}", "--node-lease-duration-seconds=40"),
                env={"PATH": f"{pool_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}, ports=(port,),
                prepare=lambda pool=pool, pool_dir=pool_dir: write_pool_files(pool, pool_dir)))
        # The provider's load-balancer controller (a stand-in of the GPU cloud's own).
        rows.append(Component("provider-lb-controller", depends=("provider-kube-apiserver",), argv=(
            sys.executable, "-m", "k8sgpu.cli.dev.lbcontroller", f"--kubeconfig={state.provider.kubeconfig}")))
        if state.node_address != "127.0.0.1":
            kubelet_cas = {"local": root / "pki" / "local" / "ca.crt", "provider": provider_pki.ca.cert}
            for cluster in ("local", "provider"):
                cp = _cluster_pki(root / "pki" / cluster, cluster, api_address)
                rows.append(self._metrics_server(state, cluster, cp, kubelet_cas[cluster]))
        if state.worker:
            rows += self._worker(state)
        rows.append(prometheus_parts.component(state, _http_ok))
        return rows

    def _control_plane(self, state: State, cluster: str, cp: _PKI, etcd_url: str,
                       api_address: str) -> list[Component]:
        root = Path(state.root)
        bins, port = state.binaries, state.ports[f"{cluster}-kube-apiserver"]
        admission = "NodeRestriction,RuntimeClass" if cluster == "local" else "RuntimeClass"
        authz = "Node,RBAC" if cluster == "local" else "RBAC"
        depends = ("etcd",)
        extra: list[str] = []
        if cluster == "local":
            # A short cache, so that a token the authenticator starts refusing is refused within seconds.
            webhook = root / "components" / "eks-authenticator.kubeconfig"
            extra = [f"--authentication-token-webhook-config-file={webhook}",
                     "--authentication-token-webhook-version=v1", "--authentication-token-webhook-cache-ttl=5s"]
        # Pods on the worker reach the `kubernetes` Service: its Endpoints must name the address they reach.
        reconciler = "lease" if state.worker and cluster == "local" else "none"
        apiserver = Component(
            f"{cluster}-kube-apiserver", depends=depends, ports=(port,), ready_timeout=60,
            argv=(bins["kube_apiserver"],
                  f"--etcd-servers={etcd_url}", f"--etcd-prefix=/{cluster}",
                  f"--bind-address={api_address}", f"--advertise-address={api_address}", f"--secure-port={port}",
                  f"--tls-cert-file={cp.apiserver.cert}", f"--tls-private-key-file={cp.apiserver.key}",
                  f"--client-ca-file={cp.ca.cert}",
                  f"--service-account-key-file={cp.sa_pub}",
                  f"--service-account-signing-key-file={cp.sa_key}",
                  "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                  f"--service-cluster-ip-range={SERVICE_CIDR[cluster]}",
                  f"--authorization-mode={authz}",
                  # Kubelet-style bootstrap tokens (Secrets bootstrap-token-<id> in kube-system), as kubeadm, AKS
                  # and k3s enable them: the node module's short-lived bootstrap credential.
                  "--enable-bootstrap-token-auth=true",
                  f"--enable-admission-plugins={admission}",
                  "--allow-privileged=true",
                  f"--endpoint-reconciler-type={reconciler}",
                  f"--kubelet-client-certificate={cp.kubelet_client.cert}",
                  f"--kubelet-client-key={cp.kubelet_client.key}",
                  f"--kubelet-certificate-authority={cp.ca.cert}",
                  "--kubelet-preferred-address-types=InternalIP,Hostname,ExternalIP",
                  f"--requestheader-client-ca-file={cp.front_proxy_ca.cert}",
                  "--requestheader-allowed-names=front-proxy-client",
                  "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                  "--requestheader-group-headers=X-Remote-Group",
                  "--requestheader-username-headers=X-Remote-User",
                  f"--proxy-client-cert-file={cp.front_proxy_client.cert}",
                  f"--proxy-client-key-file={cp.front_proxy_client.key}",
                  # The aggregator dials an APIService's endpoints, not its ClusterIP (no kube-proxy on the host).
                  "--enable-aggregator-routing=true",
                  "--event-ttl=1h0m0s",
                  "--profiling=false", *extra),
            ready=lambda: _http_ok(f"{getattr(state, cluster).server}/readyz",
                                   _client_context(cp.ca.cert, cp.admin)))
        cm_kc = root / "components" / f"{cluster}-controller-manager.kubeconfig"
        sched_kc = root / "components" / f"{cluster}-scheduler.kubeconfig"
        up = (f"{cluster}-kube-apiserver",)
        return [
            apiserver,
            Component(f"{cluster}-kube-controller-manager", depends=up, argv=(
                bins["kube_controller_manager"],
                f"--kubeconfig={cm_kc}", f"--authentication-kubeconfig={cm_kc}", f"--authorization-kubeconfig={cm_kc}",
                "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
                f"--cluster-signing-cert-file={cp.ca.cert}", f"--cluster-signing-key-file={cp.ca.key}",
                f"--root-ca-file={cp.ca.cert}", f"--service-account-private-key-file={cp.sa_key}",
                # Else it makes /usr/libexec/kubernetes/kubelet-plugins/volume/exec on the machine (seen).
                f"--flex-volume-plugin-dir={root / 'components' / f'{cluster}-flexvolume'}",
                "--use-service-account-credentials=true",
                f"--requestheader-client-ca-file={cp.front_proxy_ca.cert}", f"--client-ca-file={cp.ca.cert}",
                # tokencleaner deletes expired bootstrap tokens (off by default, as bootstrapsigner, which kubeadm
                # clusters also run).
                "--controllers=*,bootstrapsigner,tokencleaner,-cloud-node-lifecycle,-service-lb-controller,"
                "-node-route-controller",
                "--profiling=false")),
            Component(f"{cluster}-kube-scheduler", depends=up, argv=(
                bins["kube_scheduler"],
                f"--kubeconfig={sched_kc}", f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false", "--profiling=false")),
        ]

    def _eks_authenticator(self, state: State) -> Component:
        """The local cluster's webhook token authenticator: EKS tokens checked against STS (moto), mapped
        through kube-system/aws-auth with the local admin kubeconfig."""
        root = Path(state.root)
        port = state.ports["eks-authenticator"]
        cp = _cluster_pki(root / "pki" / "local", "local", state.node_address if state.worker else "127.0.0.1")
        serving = pki.issue(cp.ca, root / "pki" / "local", "eks-authenticator", "eks-authenticator", server=True,
                            ips=("127.0.0.1",))

        def webhook_config() -> None:
            webhook = root / "components" / "eks-authenticator.kubeconfig"
            webhook.parent.mkdir(parents=True, exist_ok=True)
            webhook.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "eks-authenticator", "cluster": {
                    "server": f"https://127.0.0.1:{port}/authenticate", "certificate-authority": str(cp.ca.cert)}}],
                "users": [{"name": "kube-apiserver", "user": {}}],
                "contexts": [{"name": "webhook",
                              "context": {"cluster": "eks-authenticator", "user": "kube-apiserver"}}],
                "current-context": "webhook"}, indent=2))

        return Component(
            "eks-authenticator", depends=("moto",), ports=(port,), prepare=webhook_config, ready_timeout=30,
            argv=(sys.executable, "-m", "k8sgpu.cli.dev.eks_authenticator", f"--listen=127.0.0.1:{port}",
                  f"--cluster={state.eks_cluster_name}", f"--sts-endpoint={state.aws_endpoint}",
                  f"--kubeconfig={state.local.kubeconfig}", f"--settings={state.eks_authenticator_settings}",
                  f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}"),
            ready=lambda: port in listening_ports())

    def _metrics_server(self, state: State, cluster: str, cp: _PKI, kubelet_ca: Path) -> Component:
        """metrics-server, registered as the cluster's metrics.k8s.io, scraping its kubelets: kwok's on the
        provider; on the local cluster the worker's kubelet and the runtime's kubelet API (`kubectl top`)."""
        port = state.ports[f"{cluster}-metrics-server"]
        kubeconfig = getattr(state, cluster).kubeconfig
        serving = pki.issue(cp.ca, Path(state.root) / "pki" / cluster, "metrics-server", "metrics-server",
                            server=True, ips=(state.node_address,), dns=("metrics-server.kube-system.svc",))
        return Component(
            f"{cluster}-metrics-server", depends=(f"{cluster}-kube-apiserver",), ports=(port,),
            argv=(state.binaries["metrics_server"], f"--kubeconfig={kubeconfig}",
                  f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                  f"--bind-address={state.node_address}", f"--secure-port={port}", f"--tls-cert-file={serving.cert}",
                  f"--tls-private-key-file={serving.key}", f"--kubelet-certificate-authority={kubelet_ca}",
                  "--kubelet-preferred-address-types=InternalIP", "--kubelet-use-node-status-port",
                  "--metric-resolution=10s", "--kubelet-request-timeout=5s"),
            once=lambda: self._register_metrics_api(state, cluster, cp, port))

    def _worker(self, state: State) -> list[Component]:
        """worker-0: containerd + runc, the kubelet and kube-proxy, in the worker's namespaces."""
        w = worker_parts.WorkerPlan(**state.worker)
        root, bins = Path(state.root), state.binaries
        local_ca = root / "pki" / "local" / "ca.crt"
        serving = pki.KeyPair(root / "pki" / "local" / "worker-kubelet-serving.crt",
                              root / "pki" / "local" / "worker-kubelet-serving.key")

        def namespaces() -> None:
            self.progress(f"worker {worker_parts.NODE_NAME}: namespaces, veth {w.host_link} "
                          f"({w.host_ip} <-> {w.node_ip}), pods {w.pod_cidr}")
            try:
                worker_parts.make_namespaces(w)
            finally:
                state.worker = dataclasses.asdict(w)  # the mount points it made, for `down`
                state.save(self.state_file)

        def undo_namespaces() -> None:
            left = worker_parts.remove_namespaces(w, self.progress)
            if left:
                raise GroundError(f"could not remove: {', '.join(left)}")

        def images() -> None:
            pause = worker_parts.pause_archive(cache_root())
            self.progress(f"worker {worker_parts.NODE_NAME}: importing {worker_parts.PAUSE_IMAGE}")
            worker_parts.import_image(w, ["ctr", f"--address={w.containerd_socket}", "-n", "k8s.io", "images",
                                          "import", str(pause)])
            if self.runtime_image is not None:
                image = self.runtime_image()
                self.progress(f"worker {worker_parts.NODE_NAME}: importing {image.ref} "
                              f"({image.size_bytes / 1e6:.0f} MB)")
                worker_parts.import_image(w, image.import_command(address=w.containerd_socket))

        def kubelet_ready() -> bool:
            return _node_ready(state.local.kubeconfig, worker_parts.NODE_NAME)

        kubelet_config = Path(w.dir) / "kubelet" / "config.yaml"
        proxy_config = Path(w.dir) / "kube-proxy" / "config.yaml"
        return [
            Component("worker-namespaces", prepare=namespaces, undo=undo_namespaces),
            Component("worker-containerd", depends=("worker-namespaces",),
                      argv=tuple(w.enter("containerd", f"--config={Path(w.dir) / 'containerd' / 'config.toml'}")),
                      prepare=lambda: worker_parts.write_containerd_config(w),
                      ready=lambda: _ok(w.enter("ctr", f"--address={w.containerd_socket}", "version")),
                      ready_timeout=30),
            Component("worker-images", depends=("worker-containerd",), prepare=images),
            Component("worker-kubelet", depends=("worker-images", "local-kube-apiserver"),
                      argv=tuple(w.enter(bins["kubelet"], f"--config={kubelet_config}",
                                         f"--kubeconfig={Path(w.dir) / 'kubelet' / 'kubeconfig'}",
                                         # In the worker's /run: it holds unix sockets, and a path under
                                         # the ground's root can be too long for one.
                                         "--root-dir=/run/kubelet",
                                         f"--cert-dir={Path(w.dir) / 'kubelet' / 'pki'}",
                                         f"--hostname-override={worker_parts.NODE_NAME}",
                                         f"--node-ip={w.node_ip}", "--v=1")),
                      prepare=lambda: worker_parts.write_kubelet_config(w, local_ca, serving.cert, serving.key),
                      ready=kubelet_ready, ready_timeout=90),
            Component("worker-kube-proxy", depends=("worker-namespaces", "local-kube-apiserver"),
                      argv=tuple(w.enter(bins["kube_proxy"], f"--config={proxy_config}")),
                      prepare=lambda: worker_parts.write_kube_proxy_config(
                          w, Path(w.dir) / "kube-proxy" / "kubeconfig"),
                      ready=lambda: _http_ok(f"http://{w.node_ip}:10256/healthz"), ready_timeout=60),
        ]

    def _walk(self, state: State, table: list[Component]) -> None:
        """Start, in dependency order, every row not running; run each row's one-time step once."""
        root = Path(state.root)
        for c in ordered(table):
            if c.argv and not self._alive(state, c.name):
                if c.prepare:
                    c.prepare()
                proc = next((p for p in state.processes if p.name == c.name), None)
                if proc is None:
                    proc = Process(c.name, list(c.argv), str(root / "logs" / f"{c.name}.log"),
                                   ports=list(c.ports), env=dict(c.env), cwd=str(root))
                    state.processes.append(proc)
                self.progress(f"starting {c.name}")
                proc.launch()
                state.save(self.state_file)
                if c.ready:
                    self._wait(proc, c.ready, c.name, c.ready_timeout)
            elif not c.argv and c.name not in state.initialized and c.prepare:
                c.prepare()
            if c.name not in state.initialized:
                if c.once:
                    c.once()
                state.initialized.append(c.name)
                state.save(self.state_file)

    @staticmethod
    def _alive(state: State, name: str) -> bool:
        return any(p.name == name and p.alive() for p in state.processes)

    def _register_metrics_api(self, state: State, cluster: str, cp: _PKI, port: int) -> None:
        from kubernetes import client

        api = _api_client(getattr(state, cluster).kubeconfig)
        core = client.CoreV1Api(api)
        core.create_namespaced_service("kube-system", {
            "metadata": {"name": "metrics-server"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}})
        core.create_namespaced_endpoints("kube-system", {
            "metadata": {"name": "metrics-server"},
            "subsets": [{"addresses": [{"ip": state.node_address}], "ports": [{"name": "https", "port": port}]}]})
        client.ApiregistrationV1Api(api).create_api_service({
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                     "versionPriority": 100, "caBundle": base64.b64encode(cp.ca.cert.read_bytes()).decode(),
                     "service": {"namespace": "kube-system", "name": "metrics-server", "port": 443}}})
        # As metrics-server's own install does: whoever may view pods may read their metrics (the tenant too).
        client.RbacAuthorizationV1Api(api).create_cluster_role({
            "metadata": {"name": "system:aggregated-metrics-reader", "labels": {
                f"rbac.authorization.k8s.io/aggregate-to-{role}": "true" for role in ("view", "edit", "admin")}},
            "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"],
                       "verbs": ["get", "list", "watch"]}]})

    def _bootstrap_provider(self, state: State) -> None:
        from kubernetes import client, utils

        from k8sgpu.runtime.rbac import node_read_rbac, tenant_rbac

        api = _api_client(state.provider.kubeconfig)
        core = client.CoreV1Api(api)
        for pool in self.pools:
            for name in pool.node_names():
                core.create_node(pool.node_manifest(name))
        # The provider's container runtime handler for GPU pods.
        client.NodeV1Api(api).create_runtime_class({"metadata": {"name": "nvidia"}, "handler": "nvidia"})
        core.create_namespace({"metadata": {"name": TENANT_NAMESPACE, "labels": {"dev.k8sgpu.io/tenant": "true"}}})
        # The tenant: the runtime's Role in its namespace, and (optional, cluster-scoped) reading the Nodes, so
        # that room is counted node by node; tests of a tenant without it bind the Role alone to an identity.
        tenant = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"tenant:{TENANT_NAMESPACE}"}
        for manifest in (*tenant_rbac(TENANT_NAMESPACE, tenant), *node_read_rbac(tenant)):
            utils.create_from_dict(api, manifest)

    def _wait_ready(self, state: State) -> None:
        """Ready means: the controller-managers made the default ServiceAccounts, every kwok node is Ready."""
        from kubernetes import client

        deadline = time.monotonic() + 90
        local_api, provider_api = _api_client(state.local.kubeconfig), _api_client(state.provider.kubeconfig)
        local, provider = client.CoreV1Api(local_api), client.CoreV1Api(provider_api)
        registrations = [client.ApiregistrationV1Api(a) for a in (local_api, provider_api)]
        wanted = {n for pool in self.pools for n in pool.node_names()}
        self.progress("waiting for service accounts and kwok nodes to be Ready")
        while True:
            self._check_alive(state)
            ready = set()
            for node in provider.list_node().items:
                if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
                    ready.add(node.metadata.name)
            sa_ok = all(
                has_default_service_account(api, ns) for api, ns in ((local, "default"), (provider, TENANT_NAMESPACE))
            )
            metrics_ok = state.node_address == "127.0.0.1" or all(
                _metrics_available(registration) for registration in registrations)
            if wanted <= ready and sa_ok and metrics_ok:
                return
            if time.monotonic() > deadline:
                raise GroundError(
                    f"ground not ready after 90s: nodes Ready {sorted(ready)} of {sorted(wanted)}, "
                    f"default service accounts {'present' if sa_ok else 'missing'}, metrics.k8s.io "
                    f"{'available' if metrics_ok else 'unavailable'}; see {self.root / 'logs'}"
                )
            time.sleep(0.5)

    def _check_alive(self, state: State) -> None:
        for p in state.processes:
            if not p.alive():
                raise GroundError(f"{p.name} exited during start; its log: {p.log}\n{_tail(Path(p.log))}")

    def _wait(self, proc: Process, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not proc.alive():
                raise GroundError(f"{proc.name} exited during start; its log: {proc.log}\n{_tail(Path(proc.log))}")
            if time.monotonic() > deadline:
                raise GroundError(f"{what} not ready after {timeout:.0f}s; its log: {proc.log}")
            time.sleep(0.2)
        self.progress(f"{what}: ready")

    # -- one component (for outage tests) ----------------------------------------

    def _process(self, state: State, name: str) -> Process:
        for proc in state.processes:
            if proc.name == name:
                return proc
        raise GroundError(f"no component {name}; `k8sgpu dev status` lists them")

    def stop_process(self, name: str) -> None:
        """Stop one component, keeping it in the state so that `start_process` brings it back."""
        state = self._require_state()
        _terminate(self._process(state, name), 20)

    def start_process(self, name: str, timeout: float = 60) -> None:
        """Start one stopped component again and wait until it is ready."""
        state = self._require_state()
        proc = self._process(state, name)
        if proc.alive():
            return
        row = next((c for c in self.components(state) if c.name == name), None)
        proc.launch()
        state.save(self.state_file)
        if row is not None and row.ready is not None:
            self._wait(proc, row.ready, name, timeout)

    def freeze(self, name: str) -> None:
        """SIGSTOP one running component: its sockets stay open and nothing answers (a hung server)."""
        os.kill(self._running(name).pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """SIGCONT a component `freeze` stopped."""
        os.kill(self._running(name).pid, signal.SIGCONT)

    def _running(self, name: str) -> Process:
        proc = self._process(self._require_state(), name)
        if not proc.alive():
            raise GroundError(f"component {name} is not running; `k8sgpu dev up` starts it again")
        return proc

    def run_process(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        """Start one more process under the ground's care (the runtime, for the demo): recorded like the
        others, so that `status` watches it and `down` stops it. One already running is left alone."""
        state = self._require_state()
        for proc in state.processes:
            if proc.name == name and proc.alive():
                return proc
        state.processes = [p for p in state.processes if p.name != name]
        proc = Process(name, argv, str(Path(state.root) / "logs" / f"{name}.log"), env=env or {}, cwd=state.root)
        proc.launch()
        state.processes.append(proc)
        state.save(self.state_file)
        return proc

    def _require_state(self) -> State:
        state = self.state()
        if state is None:
            raise GroundError("the dev ground is down; run `k8sgpu dev up`")
        return state

    # -- down ------------------------------------------------------------

    def down(self, timeout: float = 20) -> list[str]:
        """Walk the table backwards: stop each component's process and undo what it made, dependents before
        what they depend on (the worker's pods before the API servers they talk to, etcd last); returns what
        was stopped."""
        state = self.state()
        if state is None:
            return []
        try:
            table = ordered(self.components(state)) if state.ports else []
        except (OSError, KeyError, ValueError) as exc:  # a start that failed early: stop what is recorded
            self.progress(f"ground state incomplete ({exc}): stopping the recorded processes")
            table = []
        stopped: list[str] = []
        problems: list[str] = []

        def stop(proc: Process) -> None:
            if proc.alive():
                self.progress(f"stopping {proc.name} (pid {proc.pid})")
                _terminate(proc, timeout)
                stopped.append(proc.name)

        rows = {c.name for c in table}
        for proc in state.processes:
            if proc.name not in rows:  # started beside the table (the demo's runtime without a worker)
                stop(proc)
        for c in reversed(table):
            for proc in state.processes:
                if proc.name == c.name:
                    stop(proc)
            if c.undo is not None:
                try:
                    c.undo()
                except (GroundError, OSError, subprocess.SubprocessError) as exc:
                    problems.append(f"{c.name}: {exc}")
        if state.worker and not any(c.name == "worker-namespaces" for c in table):
            problems += worker_parts.remove_namespaces(worker_parts.WorkerPlan(**state.worker), self.progress)
        shutil.rmtree(state.etcd_data, ignore_errors=True)
        if state.node_address != "127.0.0.1":
            _ip("addr", "del", f"{state.node_address}/32", "dev", "lo")
        if problems:
            raise GroundError(f"down left behind: {'; '.join(map(str, problems))} (state kept in {self.state_file})")
        self.state_file.unlink(missing_ok=True)
        return stopped

    def _claim_node_address(self) -> str:
        """An address for the virtual node on the loopback device, outside 127.0.0.0/8.

        kube-apiserver never proxies to loopback addresses (`kubectl get --raw
        /api/v1/nodes/<node>/proxy/...` answers "address not allowed"), so the runtime on this
        ground listens on a private address of its own, added to `lo` (it leaves the machine no
        more than 127.0.0.1 does) and removed by `down`. That needs root; without it, 127.0.0.1.
        """
        taken = _ip("-4", "-o", "addr", "show", "dev", "lo") or ""
        digest = int(hashlib.sha256(str(self.root).encode()).hexdigest(), 16)
        for attempt in range(16):
            value = (digest + attempt) % 65000 + 256
            address = f"10.254.{value >> 8}.{value & 0xFF}"
            if f" {address}/" in taken:
                continue
            if _ip("addr", "add", f"{address}/32", "dev", "lo") is not None:
                self.progress(f"virtual node address {address} on lo")
                return address
            break
        self.progress("could not add a node address to lo (needs root and iproute2): the node uses 127.0.0.1, "
                      "and kube-apiserver will not proxy /api/v1/nodes/<node>/proxy/... to it")
        return "127.0.0.1"


def _metrics_available(registration) -> bool:
    from kubernetes import client

    try:
        service = registration.read_api_service("v1beta1.metrics.k8s.io")
    except client.ApiException:
        return False
    return any(c.type == "Available" and c.status == "True" for c in service.status.conditions or [])


def _ip(*args: str) -> str | None:
    """`ip ARGS`: its output, or None when it failed or is not installed."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _terminate(proc: Process, timeout: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGCONT)  # a frozen one (`freeze`) handles its SIGTERM only once it runs
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        _reap(proc.pid)
        time.sleep(0.05)
    if proc.alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while proc.alive():
            _reap(proc.pid)
            time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect a child we started in this process; others are reaped by init."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _client_context(ca: Path, pair: pki.KeyPair) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _api_client(kubeconfig: str):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


def _ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _node_ready(kubeconfig: str, name: str) -> bool:
    from kubernetes import client

    try:
        node = client.CoreV1Api(_api_client(kubeconfig)).read_node(name)
    except (client.ApiException, OSError, ValueError):
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def has_default_service_account(core, namespace: str) -> bool:
    """Whether the controller-manager has made the namespace's `default` ServiceAccount (pods need it)."""
    from kubernetes.client.rest import ApiException

    try:
        core.read_namespaced_service_account("default", namespace)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
