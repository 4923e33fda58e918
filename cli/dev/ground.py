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
from .binaries import Binaries
from .catalog import DEFAULT_POOLS, TENANT_NAMESPACE, GPUPool
from .kwok import write_pool_files

Progress = Callable[[str], None]

NODE_NAME = "k8s.gpu"
EKS_CLUSTER_NAME = "k8sgpu-dev"  # the name EKS tokens for the local cluster are signed for (x-k8s-aws-id)
AWS_REGION = "us-east-1"
SERVICE_CIDR = {"local": "10.96.0.0/16", "provider": "10.97.0.0/16"}


class GroundError(RuntimeError):
    """The ground could not be brought up or down; the message says what to do."""


def free_port() -> int:
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


def _cluster_pki(directory: Path, cluster: str) -> _PKI:
    ca = pki.make_ca(directory, "ca", f"k8sgpu-dev-{cluster}-ca")
    front = pki.make_ca(directory, "front-proxy-ca", f"k8sgpu-dev-{cluster}-front-proxy-ca")
    sa_key, sa_pub = pki.make_service_account_key(directory)
    return _PKI(
        ca=ca,
        front_proxy_ca=front,
        apiserver=pki.issue(
            ca, directory, "apiserver", "kube-apiserver", server=True,
            ips=("127.0.0.1", str(ipaddress.ip_network(SERVICE_CIDR[cluster])[1])),
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
    """Start, inspect and stop the dev ground kept under ``root`` (``.k8sgpu/dev``)."""

    def __init__(self, root: Path, pools: tuple[GPUPool, ...] = DEFAULT_POOLS, progress: Progress = print):
        self.root = root.resolve()
        self.pools = pools
        self.progress = progress
        self.state_file = self.root / "state.json"

    # -- inspection -------------------------------------------------------

    def state(self) -> State | None:
        return State.load(self.state_file)

    def status(self) -> list[tuple[Process, bool]]:
        state = self.state()
        return [(p, p.alive()) for p in state.processes] if state else []

    # -- up ------------------------------------------------------------------

    def up(self, binaries: Binaries) -> tuple[State, bool]:
        """Bring the ground up; returns the state and whether it was already running."""
        state = self.state()
        if state is not None:
            dead = [p.name for p in state.processes if not p.alive()]
            if not dead:
                return state, True
            self.progress(f"ground is partly down ({', '.join(dead)} not running): restarting it")
            self.down()
        missing = binaries.missing()
        if missing:
            raise GroundError(f"binaries missing: {', '.join(map(str, missing))}; run `k8sgpu dev build`")
        started = time.monotonic()
        try:
            state = self._start(binaries)
        except BaseException:
            self.progress("start failed: stopping what was started")
            self.down()
            raise
        self.progress(f"ground up in {time.monotonic() - started:.1f}s")
        return state, False

    def _etcd_data_dir(self) -> Path:
        # tmpfs when there is one: the ground's data is throwaway and fsync on disk is its bottleneck.
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else self.root
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return base / f"k8sgpu-etcd-{digest}"

    def _start(self, binaries: Binaries) -> State:
        root = self.root
        logs = root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        data = self._etcd_data_dir()
        shutil.rmtree(data, ignore_errors=True)
        local_pki = _cluster_pki(root / "pki" / "local", "local")
        provider_pki = _cluster_pki(root / "pki" / "provider", "provider")
        # The cluster CA of the local cluster sits beside the kubeconfigs, for users and the runtime.
        shutil.copyfile(local_pki.ca.cert, root / "local-ca.crt")

        processes: list[Process] = []
        state = State(
            root=str(root),
            processes=processes,
            local=ClusterInfo("local", "", str(root / "local.kubeconfig")),
            provider=ClusterInfo("provider", "", str(root / "provider.kubeconfig")),
            node_kubeconfig=str(root / "node.kubeconfig"),
            tenant_kubeconfig=str(root / "tenant.kubeconfig"),
            tenant_namespace=TENANT_NAMESPACE,
            etcd_data=str(data),
            created=time.time(),
        )
        state.node_address = self._claim_node_address()
        state.save(self.state_file)

        def launch(proc: Process, env: dict[str, str] | None = None) -> Process:
            proc.env, proc.cwd = env or {}, str(root)
            proc.launch()
            processes.append(proc)
            state.save(self.state_file)
            return proc

        # etcd
        client_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client_port}"
        self.progress(f"starting etcd on {etcd_url}")
        etcd = launch(Process(
            "etcd",
            [str(binaries.etcd), "--name=dev", f"--data-dir={data}",
             f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
             f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
             f"--initial-cluster=dev=http://127.0.0.1:{peer_port}",
             "--logger=zap", "--log-level=warn", "--quota-backend-bytes=4294967296"],
            str(logs / "etcd.log"), ports=[client_port, peer_port],
        ))
        self._wait(etcd, lambda: _http_ok(f"{etcd_url}/health"), "etcd /health", 30)

        webhook, authenticator = self._start_aws(state, local_pki, launch)

        clusters = {"local": local_pki, "provider": provider_pki}
        apiservers: dict[str, Process] = {}
        for cluster, cp in clusters.items():
            port = free_port()
            server = f"https://127.0.0.1:{port}"
            getattr(state, cluster).server = server
            admission = "NodeRestriction,RuntimeClass" if cluster == "local" else "RuntimeClass"
            authz = "Node,RBAC" if cluster == "local" else "RBAC"
            # A short cache, so that a token the authenticator starts refusing is refused within seconds.
            token_webhook = [f"--authentication-token-webhook-config-file={webhook}",
                             "--authentication-token-webhook-version=v1",
                             "--authentication-token-webhook-cache-ttl=5s"] if cluster == "local" else []
            self.progress(f"starting {cluster} kube-apiserver on {server}")
            apiservers[cluster] = launch(Process(
                f"{cluster}-kube-apiserver",
                [str(binaries.kube_apiserver),
                 f"--etcd-servers={etcd_url}", f"--etcd-prefix=/{cluster}",
                 "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
                 f"--tls-cert-file={cp.apiserver.cert}", f"--tls-private-key-file={cp.apiserver.key}",
                 f"--client-ca-file={cp.ca.cert}",
                 f"--service-account-key-file={cp.sa_pub}",
                 f"--service-account-signing-key-file={cp.sa_key}",
                 "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                 f"--service-cluster-ip-range={SERVICE_CIDR[cluster]}",
                 f"--authorization-mode={authz}",
                 f"--enable-admission-plugins={admission}",
                 "--allow-privileged=true",
                 "--endpoint-reconciler-type=none",
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
                 # No kube-proxy here: the aggregator dials an APIService's endpoints, not its ClusterIP.
                 "--enable-aggregator-routing=true",
                 "--event-ttl=1h0m0s",
                 "--profiling=false", *token_webhook],
                str(logs / f"{cluster}-kube-apiserver.log"), ports=[port],
            ))
            pki.write_kubeconfig(Path(getattr(state, cluster).kubeconfig), cluster=f"k8sgpu-dev-{cluster}",
                                 server=server, ca=cp.ca.cert, user="admin", pair=cp.admin)
            for component, pair in (("controller-manager", cp.controller_manager), ("scheduler", cp.scheduler)):
                pki.write_kubeconfig(root / "components" / f"{cluster}-{component}.kubeconfig",
                                     cluster=f"k8sgpu-dev-{cluster}", server=server, ca=cp.ca.cert,
                                     user=f"system:kube-{component}", pair=pair)
        launch(authenticator)  # it reads aws-auth with the local admin kubeconfig, written just now
        for proc in apiservers.values():
            self._wait_apiserver(state, proc, 60)
        self._wait(authenticator, lambda: authenticator.ports[0] in listening_ports(), "EKS authenticator", 30)

        for cluster, cp in clusters.items():
            cm_kc = root / "components" / f"{cluster}-controller-manager.kubeconfig"
            self.progress(f"starting {cluster} kube-controller-manager and kube-scheduler")
            launch(Process(
                f"{cluster}-kube-controller-manager",
                [str(binaries.kube_controller_manager),
                 f"--kubeconfig={cm_kc}", f"--authentication-kubeconfig={cm_kc}",
                 f"--authorization-kubeconfig={cm_kc}",
                 "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
                 f"--cluster-signing-cert-file={cp.ca.cert}", f"--cluster-signing-key-file={cp.ca.key}",
                 f"--root-ca-file={cp.ca.cert}", f"--service-account-private-key-file={cp.sa_key}",
                 "--use-service-account-credentials=true",
                 f"--requestheader-client-ca-file={cp.front_proxy_ca.cert}",
                 f"--client-ca-file={cp.ca.cert}",
                 "--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                 "--profiling=false"],
                str(logs / f"{cluster}-kube-controller-manager.log"),
            ))
            sched_kc = root / "components" / f"{cluster}-scheduler.kubeconfig"
            launch(Process(
                f"{cluster}-kube-scheduler",
                [str(binaries.kube_scheduler),
                 f"--kubeconfig={sched_kc}", f"--authentication-kubeconfig={sched_kc}",
                 f"--authorization-kubeconfig={sched_kc}",
                 "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false", "--profiling=false"],
                str(logs / f"{cluster}-kube-scheduler.log"),
            ))

        # The runtime's identity on the local cluster: a node client certificate.
        node_pair = pki.issue(local_pki.ca, root / "pki" / "local", "node-k8s.gpu", f"system:node:{NODE_NAME}",
                              ("system:nodes",), client=True)
        pki.write_kubeconfig(Path(state.node_kubeconfig), cluster="k8sgpu-dev-local", server=state.local.server,
                             ca=local_pki.ca.cert, user=f"system:node:{NODE_NAME}", pair=node_pair)
        # The tenant's identity on the provider: only its namespace (and reading nodes for capacity).
        tenant_pair = pki.issue(provider_pki.ca, root / "pki" / "provider", "tenant", f"tenant:{TENANT_NAMESPACE}",
                                client=True)
        pki.write_kubeconfig(Path(state.tenant_kubeconfig), cluster="k8sgpu-dev-provider",
                             server=state.provider.server, ca=provider_pki.ca.cert,
                             user=f"tenant:{TENANT_NAMESPACE}", pair=tenant_pair)

        self._bootstrap_provider(state)

        # One kwok controller per GPU pool; each serves the pool's nodes' kubelet API.
        kwok_pair = pki.issue(provider_pki.ca, root / "pki" / "provider", "kwok-serving", "kwok", server=True,
                              ips=("127.0.0.1",), dns=("localhost",))
        for pool in self.pools:
            pool_dir = root / "provider" / pool.name
            config = write_pool_files(pool, pool_dir)
            port = free_port()
            self.progress(f"starting kwok for GPU pool {pool.name} ({pool.nodes} x {pool.gpus_per_node} "
                          f"{pool.gpu_product}) on 127.0.0.1:{port}")
            launch(Process(
                f"provider-kwok-{pool.name}",
                [str(binaries.kwok), f"--kubeconfig={state.provider.kubeconfig}", f"--config={config}",
                 f"--manage-nodes-with-label-selector=dev.k8sgpu.io/pool={pool.name}",
                 "--node-ip=127.0.0.1", f"--node-port={port}", f"--server-address=127.0.0.1:{port}",
                 f"--tls-cert-file={kwok_pair.cert}", f"--tls-private-key-file={kwok_pair.key}",
                 f"--cidr={pool.pod_cidr}", "--node-lease-duration-seconds=40"],
                str(logs / f"provider-kwok-{pool.name}.log"), ports=[port],
            ), env={"PATH": f"{pool_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"})

        # The provider's load-balancer controller (a stand-in of the GPU cloud's own).
        launch(Process(
            "provider-lb-controller",
            [sys.executable, "-m", "k8sgpu.cli.dev.lbcontroller", f"--kubeconfig={state.provider.kubeconfig}"],
            str(logs / "provider-lb-controller.log"),
        ))

        if state.node_address != "127.0.0.1":
            kubelet_cas = {"local": local_pki.ca.cert, "provider": provider_pki.ca.cert}
            for cluster, cp in clusters.items():
                self._start_metrics_server(state, cluster, cp, kubelet_cas[cluster], binaries, launch)
        else:
            self.progress("no metrics-server: its APIService needs an endpoint outside 127.0.0.0/8")

        self._wait_ready(state)
        state.save(self.state_file)
        return state

    def _start_aws(self, state: State, cp: _PKI, launch: Callable[..., Process]) -> tuple[Path, Process]:
        """Starts moto (IAM, STS, EKS); returns the webhook kubeconfig for kube-apiserver and the EKS
        authenticator to launch once the local admin kubeconfig exists."""
        root, logs = Path(state.root), Path(state.root) / "logs"
        port = free_port()
        state.aws_endpoint = f"http://127.0.0.1:{port}"
        self.progress(f"starting moto (IAM, STS, EKS) on {state.aws_endpoint}")
        moto = launch(Process("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              str(logs / "moto.log"), ports=[port]))
        self._wait(moto, lambda: _http_ok(f"{state.aws_endpoint}/moto-api/"), "moto", 30)

        port = free_port()
        serving = pki.issue(cp.ca, root / "pki" / "local", "eks-authenticator", "eks-authenticator", server=True,
                            ips=("127.0.0.1",))
        state.eks_authenticator_settings = str(root / "eks-authenticator.json")
        Path(state.eks_authenticator_settings).write_text("{}\n")
        self.progress(f"EKS authenticator on https://127.0.0.1:{port} for cluster {state.eks_cluster_name}")
        authenticator = Process(
            "eks-authenticator",
            [sys.executable, "-m", "k8sgpu.cli.dev.eks_authenticator", f"--listen=127.0.0.1:{port}",
             f"--cluster={state.eks_cluster_name}", f"--sts-endpoint={state.aws_endpoint}",
             f"--kubeconfig={state.local.kubeconfig}", f"--settings={state.eks_authenticator_settings}",
             f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}"],
            str(logs / "eks-authenticator.log"), ports=[port])
        webhook = root / "components" / "eks-authenticator.kubeconfig"
        webhook.parent.mkdir(parents=True, exist_ok=True)
        webhook.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "eks-authenticator", "cluster": {
                "server": f"https://127.0.0.1:{port}/authenticate", "certificate-authority": str(cp.ca.cert)}}],
            "users": [{"name": "kube-apiserver", "user": {}}],
            "contexts": [{"name": "webhook", "context": {"cluster": "eks-authenticator", "user": "kube-apiserver"}}],
            "current-context": "webhook"}, indent=2))
        return webhook, authenticator

    def _start_metrics_server(self, state: State, cluster: str, cp: _PKI, kubelet_ca: Path, binaries: Binaries,
                              launch: Callable[..., Process]) -> None:
        """metrics-server, registered as the cluster's metrics.k8s.io, scraping its kubelets: kwok's on the
        provider, the runtime's kubelet API on the local cluster (`kubectl top`)."""
        from kubernetes import client

        port = free_port()
        kubeconfig = getattr(state, cluster).kubeconfig
        serving = pki.issue(cp.ca, Path(state.root) / "pki" / cluster, "metrics-server", "metrics-server",
                            server=True, ips=(state.node_address,), dns=("metrics-server.kube-system.svc",))
        self.progress(f"starting {cluster} metrics-server on https://{state.node_address}:{port}")
        launch(Process(
            f"{cluster}-metrics-server",
            [str(binaries.metrics_server), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
             f"--authorization-kubeconfig={kubeconfig}", f"--bind-address={state.node_address}",
             f"--secure-port={port}", f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
             f"--kubelet-certificate-authority={kubelet_ca}", "--kubelet-preferred-address-types=InternalIP",
             "--kubelet-use-node-status-port", "--metric-resolution=10s", "--kubelet-request-timeout=5s"],
            str(Path(state.root) / "logs" / f"{cluster}-metrics-server.log"), ports=[port],
        ))
        api = _api_client(kubeconfig)
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
        from kubernetes import client

        api = _api_client(state.provider.kubeconfig)
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        for pool in self.pools:
            for name in pool.node_names():
                core.create_node(pool.node_manifest(name))
        # The provider's container runtime handler for GPU pods.
        client.NodeV1Api(api).create_runtime_class({"metadata": {"name": "nvidia"}, "handler": "nvidia"})
        core.create_namespace({"metadata": {"name": TENANT_NAMESPACE, "labels": {"dev.k8sgpu.io/tenant": "true"}}})
        user = f"tenant:{TENANT_NAMESPACE}"
        rbac.create_namespaced_role_binding(TENANT_NAMESPACE, {
            "metadata": {"name": "tenant-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        })
        rbac.create_cluster_role({
            "metadata": {"name": "k8sgpu-tenant-capacity"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}],
        })
        rbac.create_cluster_role_binding({
            "metadata": {"name": "k8sgpu-tenant-capacity"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "k8sgpu-tenant-capacity"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        })

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
        state = self._require_state()
        proc = self._process(state, name)
        if proc.alive():
            return
        proc.launch()
        state.save(self.state_file)
        if proc.name.endswith("kube-apiserver"):
            self._wait_apiserver(state, proc, timeout)

    def _wait_apiserver(self, state: State, proc: Process, timeout: float) -> None:
        """Until a `<cluster>-kube-apiserver` answers /readyz to the cluster's admin certificate."""
        cluster = getattr(state, proc.name.split("-")[0])
        certs = Path(state.root) / "pki" / cluster.name
        ctx = _client_context(certs / "ca.crt", pki.KeyPair(certs / "admin.crt", certs / "admin.key"))
        self._wait(proc, lambda: _http_ok(f"{cluster.server}/readyz", ctx), f"{proc.name} /readyz", timeout)

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
        """Stop every recorded process (kwok and controllers first, etcd last); returns what was stopped."""
        state = self.state()
        if state is None:
            return []
        order = sorted(state.processes, key=_stop_rank)
        stopped = []
        for proc in order:
            if proc.alive():
                self.progress(f"stopping {proc.name} (pid {proc.pid})")
                _terminate(proc, timeout)
                stopped.append(proc.name)
        shutil.rmtree(state.etcd_data, ignore_errors=True)
        if state.node_address != "127.0.0.1":
            _ip("addr", "del", f"{state.node_address}/32", "dev", "lo")
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


def _stop_rank(proc: Process) -> int:
    if proc.name == "etcd":
        return 3
    if proc.name.endswith("kube-apiserver"):
        return 2
    return 1


def _terminate(proc: Process, timeout: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
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
