"""`k8sgpu chaos failover`: two runtimes of one node, the leader killed again and again during a burst of pods.

On a ground of its own (no worker node: the runtimes run as processes, as `k8sgpu bench` runs its runtime), two
runtimes of the node `failover.gpu` campaign for its election Lease, written with a ServiceAccount token bound to
the node module's leader election Role. A burst of pods is created at a steady pace while the leader is killed
(SIGKILL, then a few graceful SIGTERM stops) over and over; after each kill the killed one is started again as the
standby. Per failover it records the time from the leader's death to the new leader's first renewal of the node's
Lease (its renewTime, written by the runtime on this machine's clock) and to a pod created just after the death
being Running; then p50 and max, pods lost (a local pod that never got Running, or whose mirror is gone) and
duplicate mirrors (more than one provider pod for one local pod UID, sampled throughout).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dev.ground import State

NODE = "failover.gpu"
NAMESPACE = "k8sgpu-failover"
ACCOUNT = "failover-runtime"
RBAC_NAME = "k8sgpu-runtime-failover"
POD_CLASS = "failover-no-gpu"
ORIGIN_UID = "k8sgpu.io/origin-uid"

Say = Callable[[str], None]


def _client(kubeconfig: str):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 16
    return client.ApiClient(cfg)


def _wait(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - an API hiccup while the clusters are busy is not the answer
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _micro(value) -> float:
    """A Lease's renewTime (datetime, or a MicroTime string) as a Unix time."""
    if isinstance(value, str):
        value = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    return value.timestamp()


class Candidate:
    """A runtime of failover.gpu as a process named like a pod ($POD_NAME: its election identity)."""

    def __init__(self, state: State, name: str, directory: Path, node_kubeconfig: str, election_kubeconfig: str,
                 timings: tuple[float, float, float]):
        from .dev.ground import free_port

        self.name, self.health_port, self.kubelet_port = name, free_port(), free_port()
        self.log = directory / f"{name}.log"
        self.argv = [sys.executable, "-m", "k8sgpu.runtime.main", "start", "--kubeconfig", node_kubeconfig,
                     "--node-name", NODE, "--provider-kubeconfig", state.tenant_kubeconfig,
                     "--tenant-namespace", state.tenant_namespace, "--node-address", state.node_address,
                     "--kubelet-port", str(self.kubelet_port), "--health-port", str(self.health_port),
                     "--leader-elect-kubeconfig", election_kubeconfig,
                     "--leader-elect-resource-namespace", NAMESPACE, "--leader-elect-lease-duration",
                     f"{timings[0]:g}s", "--leader-elect-renew-deadline", f"{timings[1]:g}s",
                     "--leader-elect-retry-period", f"{timings[2]:g}s", "-v"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "POD_NAME": self.name})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def readyz(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as response:
                return response.read().decode()
        except (urllib.error.HTTPError, OSError):
            return ""


@dataclasses.dataclass
class Failover:
    kind: str  # SIGKILL or SIGTERM
    old: str
    new: str
    node_lease_s: float
    """From the leader's death (the signal; for SIGTERM its exit) to the new leader's first node Lease renewal."""
    pod_running_s: float
    """From the leader's death to a pod created just after it being Running."""
    stop_s: float
    """SIGTERM: from the signal to the old leader's exit (its parts stopped, the Lease released); SIGKILL: 0."""


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Burst:
    """Creates ``n`` pods at a steady pace in a thread."""

    def __init__(self, kubeconfig: str, n: int, seconds: float):
        from kubernetes import client

        self.core = client.CoreV1Api(_client(kubeconfig))
        self.n, self.pause = n, seconds / max(n, 1)
        self.created: list[str] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Burst:
        self._thread.start()
        return self

    def _run(self) -> None:
        for i in range(self.n):
            name = f"burst-{i:04d}"
            try:
                self.core.create_namespaced_pod(NAMESPACE, _pod(name))
                self.created.append(name)
            except Exception as exc:  # noqa: BLE001 - recorded and reported: a create the API refused is no loss
                self.errors.append(f"{name}: {exc}")
            time.sleep(self.pause)

    def join(self) -> None:
        self._thread.join()


def _pod(name: str) -> dict:
    # Small requests, so the ground's two A6000 nodes (63 cpu each) hold every pod of the burst.
    small = {"cpu": "10m", "memory": "16Mi"}
    return {"metadata": {"name": name, "labels": {"failover": "1"}},
            "spec": {"runtimeClassName": POD_CLASS, "restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "cuda", "command": ["sleep", "3600"],
                                     "resources": {"requests": small, "limits": small}}]}}


def _setup(state: State, kubectl: str, directory: Path) -> tuple[str, str]:
    """The node's RBAC, RuntimeClass, namespace, ServiceAccount and election Role; kubeconfigs of the node identity
    and of the ServiceAccount's token."""
    import yaml
    from kubernetes import client

    from k8sgpu.runtime.catalog import runtime_class_manifest
    from k8sgpu.runtime.rbac import election_rbac, extra_rbac

    from .dev import pki
    from .dev.ground import has_default_service_account

    manifests = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": NAMESPACE}},
                 runtime_class_manifest(POD_CLASS, node_name=NODE, gpu_product="NVIDIA-RTX-A6000", gpu_count=0,
                                        cpu="1", memory="1Gi"),
                 *extra_rbac(NODE, RBAC_NAME), *election_rbac(NAMESPACE, ACCOUNT, NODE)]
    subprocess.run([kubectl, f"--kubeconfig={state.local.kubeconfig}", "apply", "-f", "-"], check=True,
                   input=yaml.safe_dump_all(manifests), text=True, capture_output=True)
    core = client.CoreV1Api(_client(state.local.kubeconfig))
    _wait(lambda: has_default_service_account(core, NAMESPACE), 30, "the namespace's default ServiceAccount")
    token = subprocess.run([kubectl, f"--kubeconfig={state.local.kubeconfig}", "-n", NAMESPACE, "create", "token",
                            ACCOUNT, "--duration", "2h"], check=True, text=True, capture_output=True).stdout.strip()
    ca = Path(state.root) / "pki" / "local" / "ca.crt"
    election = directory / "election.kubeconfig"
    election.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {"server": state.local.server, "certificate-authority": str(ca)}}],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": ACCOUNT}}]}))
    pair = pki.issue(pki.KeyPair(ca, ca.with_suffix(".key")), directory, "node", f"system:node:{NODE}",
                     ("system:nodes",), client=True)
    node = pki.write_kubeconfig(directory / "node.kubeconfig", cluster="local", server=state.local.server,
                                ca=ca, user=f"system:node:{NODE}", pair=pair)
    return str(node), str(election)


class Probe:
    """The clusters as the measurement reads them."""

    def __init__(self, state: State):
        from kubernetes import client

        self.state = state
        local = _client(state.local.kubeconfig)
        self.core = client.CoreV1Api(local)
        self.coordination = client.CoordinationV1Api(local)
        self.remote = client.CoreV1Api(_client(state.tenant_kubeconfig))
        self.max_duplicates = 0

    def holder(self) -> str:
        return self.coordination.read_namespaced_lease(NODE, NAMESPACE).spec.holder_identity or ""

    def node_renewed_after(self, when: float) -> float | None:
        renew = self.coordination.read_namespaced_lease(NODE, "kube-node-lease").spec.renew_time
        at = _micro(renew)
        return at if at > when else None

    def running(self, name: str) -> bool:
        return self.core.read_namespaced_pod(name, NAMESPACE).status.phase == "Running"

    def mirrors(self) -> Counter:
        """Provider pods per local pod UID; the most ever seen for one UID is kept."""
        listed = self.remote.list_namespaced_pod(self.state.tenant_namespace, label_selector=f"k8sgpu.io/node={NODE}")
        counts = Counter(p.metadata.labels.get(ORIGIN_UID, "") for p in listed.items
                         if p.metadata.deletion_timestamp is None)
        self.max_duplicates = max([self.max_duplicates, *[n - 1 for n in counts.values()]])
        return counts


def _settled(candidates: dict[str, Candidate], probe: Probe) -> tuple[Candidate, Candidate] | None:
    """The leader and a standby that has seen it (its /readyz names it)."""
    holder = probe.holder()
    if holder not in candidates:
        return None
    leader = candidates[holder]
    (standby,) = [c for c in candidates.values() if c is not leader]
    if standby.readyz().strip() != f"standby: leader is {holder}" or leader.readyz().strip() != "ok":
        return None
    return leader, standby


def _one_failover(i: int, sig: int, candidates: dict[str, Candidate], probe: Probe, settle_s: float,
                  say: Say) -> Failover:
    leader, standby = _wait(lambda: _settled(candidates, probe), 120, "a leader and a standby")
    time.sleep(settle_s)  # the standby has watched a few renewals, as in a real cluster
    probe_pod = f"probe-{i:02d}"
    signalled = time.monotonic()
    leader.proc.send_signal(sig)
    if sig == signal.SIGTERM:
        leader.proc.wait(60)  # a graceful stop ends once its parts stopped and it released the Lease
    died, died_at = time.time(), time.monotonic()
    probe.core.create_namespaced_pod(NAMESPACE, _pod(probe_pod))
    renewed = _wait(lambda: probe.node_renewed_after(died), 120, "the new leader's node Lease renewal")
    _wait(lambda: probe.running(probe_pod), 120, f"{probe_pod} Running")
    running_s = time.monotonic() - died_at
    leader.proc.wait(60)
    probe.mirrors()
    result = Failover("SIGKILL" if sig == signal.SIGKILL else "SIGTERM", leader.name, probe.holder(),
                      round(renewed - died, 2), round(running_s, 2), round(died_at - signalled, 2))
    say(f"failover {i + 1} ({result.kind}): {result.old} → {result.new}: node Lease renewed after "
        f"{result.node_lease_s:.2f} s, new pod Running after {result.pod_running_s:.2f} s")
    leader.start()  # back, as the standby
    return result


def run(failovers: int, graceful: int, pods: int, out: Path | None, say: Say, settle_s: float = 4.0,
        timings: tuple[float, float, float] = (15, 10, 2)) -> dict:
    """``timings``: the runtimes' lease duration, renew deadline and retry period (client-go's by default)."""
    from .dev.binaries import ensure_binaries
    from .dev.ground import Ground

    binaries = ensure_binaries(progress=say)
    given = os.environ.get("K8SGPU_FAILOVER_ROOT")
    root = Path(given or f"/tmp/k8sgpu-failover-{os.getpid()}")
    ground = Ground(root, progress=say, worker=False)
    state, _ = ground.up(binaries)
    directory = root / "failover"
    directory.mkdir(parents=True, exist_ok=True)
    candidates: dict[str, Candidate] = {}
    results: list[Failover] = []
    try:
        node_kubeconfig, election_kubeconfig = _setup(state, str(binaries.kubectl), directory)
        candidates = {name: Candidate(state, name, directory, node_kubeconfig, election_kubeconfig, timings)
                      for name in ("failover-a", "failover-b")}
        for candidate in candidates.values():
            candidate.start()
        probe = Probe(state)
        _wait(lambda: _settled(candidates, probe), 120, "a leader and a standby")
        # The burst spans the SIGKILL failovers (each about a lease duration and a settle).
        burst = Burst(state.local.kubeconfig, pods, seconds=failovers * (timings[0] + 7)).start()
        say(f"{pods} pods being created while the leader is killed {failovers} times (SIGKILL), then stopped "
            f"{graceful} times (SIGTERM)")
        for i in range(failovers):
            results.append(_one_failover(i, signal.SIGKILL, candidates, probe, settle_s, say))
        burst.join()
        for i in range(failovers, failovers + graceful):
            results.append(_one_failover(i, signal.SIGTERM, candidates, probe, settle_s, say))
        names = [*burst.created, *[f"probe-{i:02d}" for i in range(failovers + graceful)]]
        report = _outcome(probe, names, say)
        report.update({"failovers": [dataclasses.asdict(r) for r in results], "burst_create_errors": burst.errors,
                       "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                       "machine": {"cpus": os.cpu_count()},
                       "lease": dict(zip(("duration_s", "renew_deadline_s", "retry_period_s"), timings, strict=True))})
        for kind in ("SIGKILL", "SIGTERM"):
            rows = [r for r in results if r.kind == kind]
            if rows:
                report[kind] = {key: {"p50": _pct([getattr(r, key) for r in rows], 50),
                                      "max": max(getattr(r, key) for r in rows)}
                                for key in ("node_lease_s", "pod_running_s")}
        _cleanup(probe, candidates, say)
    finally:
        for candidate in candidates.values():
            candidate.stop(signal.SIGKILL)
        ground.down()
        if not given:
            shutil.rmtree(root, ignore_errors=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report


def _outcome(probe: Probe, names: list[str], say: Say) -> dict:
    """After the last failover: every pod Running with exactly one mirror, or counted as lost."""
    def all_running() -> bool:
        pods = {p.metadata.name: p for p in probe.core.list_namespaced_pod(NAMESPACE).items}
        return all(n in pods and pods[n].status.phase == "Running" for n in names)

    try:
        _wait(all_running, 180, "every pod Running", interval=1)
    except TimeoutError:
        pass
    pods = {p.metadata.name: p for p in probe.core.list_namespaced_pod(NAMESPACE).items}
    mirrors = probe.mirrors()
    lost = sorted(n for n in names if n not in pods or pods[n].status.phase != "Running"
                  or mirrors.get(pods[n].metadata.uid, 0) == 0)
    say(f"{len(names)} pods: {len(lost)} lost, most mirrors of one pod at once {probe.max_duplicates + 1}")
    return {"pods": len(names), "lost": lost, "duplicate_mirrors": probe.max_duplicates}


def _cleanup(probe: Probe, candidates: dict[str, Candidate], say: Say) -> None:
    """Pods deleted while a leader runs (so their mirrors go), then the runtimes stopped; the ground goes after."""
    probe.core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
    try:
        _wait(lambda: not probe.mirrors(), 120, "the mirrors deleted", interval=1)
    except TimeoutError:
        say("some mirrors outlived their pods (the ground is removed anyway)")
    for candidate in candidates.values():
        candidate.stop()


def table(report: dict) -> str:
    lines = ["| # | kind | from → to | node Lease renewed s | new pod Running s | old leader's stop s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(report["failovers"], 1):
        lines.append(f"| {i} | {r['kind']} | {r['old']} → {r['new']} | {r['node_lease_s']:.2f} | "
                     f"{r['pod_running_s']:.2f} | {r['stop_s']:.2f} |")
    lines.append("")
    for kind in ("SIGKILL", "SIGTERM"):
        if kind in report:
            f = report[kind]
            lines.append(f"{kind}: node Lease renewed p50 {f['node_lease_s']['p50']:.2f} s, max "
                         f"{f['node_lease_s']['max']:.2f} s; new pod Running p50 {f['pod_running_s']['p50']:.2f} s, "
                         f"max {f['pod_running_s']['max']:.2f} s")
    if "lease" in report:
        lease = report["lease"]
        lines.append(f"lease {lease['duration_s']:g} s, renew deadline {lease['renew_deadline_s']:g} s, retry "
                     f"{lease['retry_period_s']:g} s")
    lines.append(f"pods: {report['pods']}, lost: {len(report['lost'])}, duplicate mirrors: "
                 f"{report['duplicate_mirrors']}")
    return "\n".join(lines)


def add_parser(verbs) -> None:
    """`failover` under the `chaos` noun."""
    failover = verbs.add_parser(
        "failover", help="kill the leader of two runtimes again and again during a burst of pods; time each takeover",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "))
    failover.add_argument("--failovers", type=int, default=10, help="SIGKILLs of the leader (default 10)")
    failover.add_argument("--graceful", type=int, default=3, help="SIGTERM stops of the leader after them (default 3)")
    failover.add_argument("--pods", type=int, default=200, help="pods created during the SIGKILLs (default 200)")
    failover.add_argument("--lease-duration", type=float, default=15, metavar="S",
                          help="the runtimes' --leader-elect-lease-duration in seconds (default 15, client-go's)")
    failover.add_argument("--renew-deadline", type=float, default=10, metavar="S",
                          help="their --leader-elect-renew-deadline (default 10)")
    failover.add_argument("--retry-period", type=float, default=2, metavar="S",
                          help="their --leader-elect-retry-period (default 2)")
    failover.add_argument("--out", help="also write the figures as JSON to this file")
    failover.set_defaults(func=cmd_failover)


def cmd_failover(args) -> int:
    from .dev.ground import GroundError

    if not args.lease_duration > args.renew_deadline > args.retry_period * 1.2 > 0:
        raise GroundError(f"--lease-duration {args.lease_duration:g}, --renew-deadline {args.renew_deadline:g}, "
                          f"--retry-period {args.retry_period:g}: the runtime needs lease duration > renew "
                          "deadline > retry period x 1.2 > 0, e.g. 15, 10, 2")
    report = run(args.failovers, args.graceful, args.pods, Path(args.out) if args.out else None,
                 say=lambda line: print(line, file=sys.stderr, flush=True),
                 timings=(args.lease_duration, args.renew_deadline, args.retry_period))
    print(table(report))
    return 1 if report["lost"] or report["duplicate_mirrors"] else 0
