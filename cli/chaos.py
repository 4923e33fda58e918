"""The fault suite: faults on the real dev ground, each followed by the invariant checker (cli/invariants.py).

One runtime (a process, as the node identity `system:node:<node>`) serves a node of its own; a population of pods
sharing ConfigMaps and Secrets is built by the first fault and changed during every other. After each fault the
checker is polled until it finds no violation: the time that takes is the fault's convergence time. Faults:

kill-burst                 SIGKILL of the runtime, started again at once as its Deployment would, during a burst
                           of pods sharing ConfigMaps/Secrets that are updated meanwhile; pods deleted and relabelled
local-apiserver-restart    the local kube-apiserver stopped and started again (same port, same etcd)
provider-apiserver-down    the provider's kube-apiserver stopped (connections refused) for the outage, pods
                           created, deleted, relabelled and objects updated meanwhile
provider-apiserver-frozen  the same with the provider's kube-apiserver frozen (SIGSTOP) then SIGCONT
big-secret                 a pod using a 1 MiB Secret (the provider's etcd takes ~1.5 MiB an object)
provider-quota             the tenant's ResourceQuota full (new pods wait: unbound, or ProviderRefused), then raised
etcd-compaction            etcd compacted to its current revision, then restarted, so that every watch resumes from
                           a compacted revision (410 Gone) and relists
cleanup                    every pod deleted: no mirror, no copy left
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from .dev.ground import Ground, State

Say = Callable[[str], None]

NODE = "chaos.gpu"
NAMESPACE = "k8sgpu-chaos"
RBAC_NAME = "k8sgpu-runtime-chaos"
CLASSES = {"a6000": "chaos-a6000", "a100": "chaos-a100", "gpu": "chaos-1xa100"}
QUOTA = "k8sgpu-chaos-full"
BIG_SECRET_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Scale:
    pods: int
    objects: int  # ConfigMaps and Secrets the pods share, half of each
    kills: int
    outage_seconds: float
    churn: int  # pods created, deleted and relabelled during each later fault
    converge_timeout: float
    kill_interval: tuple[float, float]  # seconds between two kills, drawn uniformly


SCALES = {
    "short": Scale(pods=30, objects=4, kills=2, outage_seconds=10, churn=3, converge_timeout=180,
                   kill_interval=(2.0, 4.0)),
    "full": Scale(pods=300, objects=20, kills=10, outage_seconds=60, churn=10, converge_timeout=300,
                  kill_interval=(3.0, 6.0)),
}
# etcd's restart, the heaviest fault (both clusters' storage), comes last but cleanup.
FAULTS = ("kill-burst", "local-apiserver-restart", "provider-apiserver-down", "provider-apiserver-frozen",
          "big-secret", "provider-quota", "etcd-compaction", "cleanup")


@dataclasses.dataclass
class FaultResult:
    fault: str
    seconds: float
    violations: list[str]
    note: str = ""


class Runtime:
    """`k8sgpu-runtime start` of the chaos node as a process; `kill` is SIGKILL, `start` is what its Deployment
    does next."""

    def __init__(self, state: State, kubeconfig: str, node: str, log: Path):
        from .dev.ground import free_port

        self.health_port = free_port()
        self.argv = [sys.executable, "-m", "k8sgpu.runtime.main", "start", "--kubeconfig", kubeconfig,
                     "--node-name", node, "--provider-kubeconfig", state.tenant_kubeconfig,
                     "--tenant-namespace", state.tenant_namespace, "--node-address", state.node_address,
                     "--kubelet-port", str(free_port()), "--health-port", str(self.health_port), "-v"]
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=5) as response:
                return response.status == 200
        except (urllib.error.HTTPError, OSError):
            return False

    def wait_ready(self, timeout: float = 120) -> None:
        _wait(lambda: self.ready() or (self.proc is not None and self.proc.poll() is not None), timeout,
              f"{NODE}'s runtime to be ready")
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the runtime exited {self.proc.returncode}; its log: {self.log}")

    def relists(self) -> int:
        """How many of its watches met 410 Gone so far (its log says so, one line each)."""
        try:
            return self.log.read_text(errors="replace").count("watch expired; relisting")
        except FileNotFoundError:
            return 0


def _wait(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _api(kubeconfig: str):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 16
    return client.ApiClient(cfg)


def node_kubeconfig(state: State, node: str, directory: Path) -> str:
    """The identity system:node:<node>, signed by the local cluster's CA as the ground signs k8s.gpu's."""
    from .dev import pki

    local_pki = Path(state.root) / "pki" / "local"
    ca = pki.KeyPair(local_pki / "ca.crt", local_pki / "ca.key")
    pair = pki.issue(ca, directory, "node", f"system:node:{node}", ("system:nodes",), client=True)
    return str(pki.write_kubeconfig(directory / "node.kubeconfig", cluster="k8sgpu-dev-local",
                                    server=state.local.server, ca=ca.cert, user=f"system:node:{node}", pair=pair))


class Chaos:
    """The suite on one ground: `setup`, then `run(fault)` for each of FAULTS in order, then `teardown`."""

    def __init__(self, ground: Ground, state: State, scale: Scale, workdir: Path, say: Say = print,
                 node: str = NODE, namespace: str = NAMESPACE, seed: int = 13):
        from kubernetes import client

        from .invariants import InvariantChecker

        self.ground, self.state, self.scale, self.say = ground, state, scale, say
        self.node, self.namespace = node, namespace
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.local_api, self.provider_api = _api(state.local.kubeconfig), _api(state.provider.kubeconfig)
        self.local, self.provider = client.CoreV1Api(self.local_api), client.CoreV1Api(self.provider_api)
        self.checker = InvariantChecker(state.local.kubeconfig, state.provider.kubeconfig, state.tenant_namespace,
                                        node)
        self.runtime: Runtime | None = None
        self.classes = {k: f"{node.split('.')[0]}-{v.split('-', 1)[1]}" for k, v in CLASSES.items()}
        self.rbac_name = f"k8sgpu-runtime-{node.split('.')[0]}"
        self._serial = 0
        self._round = 0

    # -- set-up ----------------------------------------------------------------------

    def manifests(self) -> list[dict]:
        from k8sgpu.runtime.catalog import runtime_class_manifest
        from k8sgpu.runtime.rbac import extra_rbac

        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}},
            runtime_class_manifest(self.classes["a6000"], node_name=self.node, gpu_product="NVIDIA-RTX-A6000",
                                   gpu_count=0, cpu="1", memory="1Gi"),
            runtime_class_manifest(self.classes["a100"], node_name=self.node, gpu_product="NVIDIA-A100-PCIE-80GB",
                                   gpu_count=0, cpu="1", memory="1Gi"),
            runtime_class_manifest(self.classes["gpu"], node_name=self.node, gpu_product="NVIDIA-A100-PCIE-80GB",
                                   gpu_count=1, cpu="8000m", memory="32861620Ki"),
            *extra_rbac(self.node, self.rbac_name),
        ]

    def setup(self) -> None:
        from .dev.binaries import find_kubectl

        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(find_kubectl()), f"--kubeconfig={self.state.local.kubeconfig}", "apply", "-f", "-"],
                       input="\n---\n".join(json.dumps(m) for m in self.manifests()), text=True, check=True,
                       capture_output=True, timeout=120)
        from .dev.ground import has_default_service_account

        _wait(lambda: has_default_service_account(self.local, self.namespace), 60,
              f"the default ServiceAccount of {self.namespace}")
        for j in range(self.scale.objects):
            kind, name = self._object(j)
            body = {"metadata": {"name": name}, "data": self._data(kind, "v0")}
            if kind == "ConfigMap":
                self.local.create_namespaced_config_map(self.namespace, body)
            else:
                self.local.create_namespaced_secret(self.namespace, body)
        self.runtime = Runtime(self.state, node_kubeconfig(self.state, self.node, self.workdir), self.node,
                               self.workdir / "runtime.log")
        self.runtime.start()
        self.runtime.wait_ready()
        self.say(f"{self.node}'s runtime ready (log {self.runtime.log})")

    def teardown(self) -> None:
        from kubernetes.client import ApiException

        from k8sgpu.runtime.translate import NODE_LABEL

        if self.runtime is not None:
            self.runtime.kill(signal.SIGTERM)
        # What a suite stopped half-way leaves: the node's mirrors and copies on the provider, which no runtime
        # will delete now (the local pods go with the namespace, forced: no kubelet finishes them).
        owned, tenant = f"{NODE_LABEL}={self.node}", self.state.tenant_namespace
        self.provider.delete_collection_namespaced_pod(tenant, label_selector=owned, grace_period_seconds=0)
        self.provider.delete_collection_namespaced_config_map(tenant, label_selector=owned)
        self.provider.delete_collection_namespaced_secret(tenant, label_selector=owned)
        self.local.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0)
        from .dev.binaries import find_kubectl

        kubectl = [str(find_kubectl()), f"--kubeconfig={self.state.local.kubeconfig}"]
        subprocess.run([*kubectl, "delete", "namespace", self.namespace, "--wait=false"], capture_output=True,
                       timeout=120)
        subprocess.run([*kubectl, "delete", "clusterrolebinding,clusterrole", self.rbac_name], capture_output=True,
                       timeout=120)
        subprocess.run([*kubectl, "delete", "runtimeclass", *self.classes.values()], capture_output=True,
                       timeout=120)
        try:
            self.provider.delete_namespaced_resource_quota(QUOTA, self.state.tenant_namespace)
        except ApiException:
            pass
        for delete in (lambda: self.local.delete_node(self.node),
                       lambda: _coordination(self.local_api).delete_namespaced_lease(self.node, "kube-node-lease")):
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    raise

    # -- the population ---------------------------------------------------------------

    def _object(self, j: int) -> tuple[str, str]:
        return ("ConfigMap", f"cm-{j:02d}") if j % 2 == 0 else ("Secret", f"secret-{j:02d}")

    @staticmethod
    def _data(kind: str, value: str) -> dict:
        if kind == "Secret":
            return {"value": base64.b64encode(value.encode()).decode()}
        return {"value": value}

    @staticmethod
    def _exits(i: int) -> bool:
        return i % 10 == 7

    def _pod(self, i: int) -> dict:
        kind, name = self._object(i % self.scale.objects)
        second_kind, second = self._object((i + 1) % self.scale.objects)
        mode = (i // self.scale.objects) % 3
        container: dict = {"name": "c", "image": "cuda:12", "command": ["sleep", "3600"], "args": [f"--n={i}"],
                           "env": [{"name": "INDEX", "value": str(i)}],
                           "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                         "limits": {"cpu": "10m", "memory": "16Mi"}},
                           "volumeMounts": [{"name": "second", "mountPath": "/second"}]}
        ref = "configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"
        if mode == 0:
            container["env"].append({"name": "VALUE", "valueFrom": {ref: {"name": name, "key": "value"}}})
        elif mode == 1:
            container["envFrom"] = [{"configMapRef" if kind == "ConfigMap" else "secretRef": {"name": name}}]
        else:
            container["volumeMounts"].append({"name": "first", "mountPath": "/first"})
        volumes = [{"name": "second", **_volume(second_kind, second)}]
        if mode == 2:
            volumes.append({"name": "first", **_volume(kind, name)})
        annotations = {"chaos.k8sgpu.dev/round": "0"}
        if self._exits(i):
            annotations.update({"sim.k8sgpu.dev/exit-code": "0", "sim.k8sgpu.dev/run-for": "3s"})
        pool = "a6000" if i % 2 else "a100"
        return {"metadata": {"name": f"p-{i:04d}", "labels": {"app": "chaos", "drop-me": "yes", "index": str(i)},
                             "annotations": annotations},
                "spec": {"runtimeClassName": self.classes[pool], "restartPolicy": "Never",
                         "terminationGracePeriodSeconds": 5, "containers": [container], "volumes": volumes}}

    def _create(self, body: dict) -> None:
        from kubernetes.client import ApiException

        for _attempt in range(30):
            try:
                self.local.create_namespaced_pod(self.namespace, body)
                return
            except ApiException as exc:
                if exc.status == 409:
                    return
                if exc.status < 500 and exc.status != 429:
                    raise
            except OSError:
                pass
            time.sleep(1)  # the local API server is restarting
        raise RuntimeError(f"could not create pod {body['metadata']['name']}")

    def _new_pods(self, count: int, lasting: bool = False) -> list[str]:
        """Create ``count`` pods of the population; ``lasting``: none that exits on its own (and releases its
        copies)."""
        bodies = []
        while len(bodies) < count:
            if not (lasting and self._exits(self._serial)):
                bodies.append(self._pod(self._serial))
            self._serial += 1
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(self._create, bodies))
        return [b["metadata"]["name"] for b in bodies]

    def _live_pods(self) -> list:
        return [p for p in self.local.list_namespaced_pod(self.namespace, label_selector="app=chaos").items
                if not p.metadata.deletion_timestamp]

    def objects_of(self, pod_name: str) -> list[tuple[str, str]]:
        """(kind, name) of the shared objects a pod of the population uses."""
        i = int(pod_name.rsplit("-", 1)[1])
        return [self._object(i % self.scale.objects), self._object((i + 1) % self.scale.objects)]

    def update_object(self, kind: str, name: str, value: str) -> None:
        body = {"data": self._data(kind, value)}
        if kind == "ConfigMap":
            self.local.patch_namespaced_config_map(name, self.namespace, body)
        else:
            self.local.patch_namespaced_secret(name, self.namespace, body)

    def _update_objects(self, count: int) -> None:
        for _ in range(count):
            kind, name = self._object(self.rng.randrange(self.scale.objects))
            self.update_object(kind, name, f"v{self.rng.randrange(10**9)}")

    def _delete_some(self, count: int) -> None:
        from kubernetes.client import ApiException

        pods = self._live_pods()
        for pod in self.rng.sample(pods, min(count, len(pods))):
            # Half the deletions graceful (the runtime deletes the mirror, then the pod), half forced.
            grace = 0 if self.rng.random() < 0.5 else None
            try:
                self.local.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=grace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def _relabel_some(self, count: int) -> None:
        from kubernetes.client import ApiException

        self._round += 1
        pods = self._live_pods()
        for pod in self.rng.sample(pods, min(count, len(pods))):
            patch = {"metadata": {"labels": {"round": str(self._round), "drop-me": None},
                                  "annotations": {"chaos.k8sgpu.dev/round": str(self._round)}}}
            try:
                self.local.patch_namespaced_pod(pod.metadata.name, self.namespace, patch)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def churn(self, count: int) -> None:
        """Changes the runtime must catch up with: pods created, deleted and relabelled, objects updated."""
        self._new_pods(count)
        self._update_objects(count)
        self._delete_some(count)
        self._relabel_some(count)

    # -- faults ----------------------------------------------------------------------

    def run(self, fault: str) -> FaultResult:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; faults: {', '.join(FAULTS)}")
        self.say(f"fault {fault}")
        try:
            result = getattr(self, "fault_" + fault.replace("-", "_"))()
        except Exception as exc:  # noqa: BLE001 - a fault that cannot be carried out is a finding; the rest still run
            self._heal_ground()
            result = FaultResult(fault, 0.0, [f"the fault could not be carried out: {type(exc).__name__}: {exc}"])
        if result.violations:
            self.say(f"{fault}: {len(result.violations)} violation(s) after {result.seconds}s:\n  "
                     + "\n  ".join(result.violations[:30]))
        else:
            self.say(f"{fault}: converged in {result.seconds}s {result.note}")
        return result

    def _converge(self, fault: str, note: str = "") -> FaultResult:
        seen: list[float] = []
        healed: list[str] = []

        def progress(found: list[str]) -> None:
            healed.extend(self._heal_ground())
            now = time.monotonic()
            if not seen or now - seen[-1] > 15:
                seen.append(now)
                self.say(f"{fault}: {len(found)} violation(s) left, e.g. {found[0]}")

        done = self.checker.converge(self.scale.converge_timeout, progress=progress)
        if healed:
            note = f"{note} (exited and started again: {', '.join(sorted(set(healed)))})".strip()
        return FaultResult(fault, done.seconds, done.violations, note)

    def _heal_ground(self) -> list[str]:
        """Starts again what exited: the runtime, as its Deployment would (it exits when it cannot start, e.g. its
        API server is down), and, as `k8sgpu dev up` would, the ground's processes: its stand-ins of the provider's
        machinery (kwok's simulated kubelets, the load-balancer controller) may die of an API server's outage, which
        a real provider's kubelets outlive. Returns what it started."""
        started = []
        runtime = self.runtime
        if runtime is not None and runtime.proc is not None and runtime.proc.poll() is not None:
            code = runtime.proc.returncode
            self.say(f"the runtime exited {code} (its log: {runtime.log}); starting it again")
            runtime.start()
            started.append(f"the runtime (exit {code})")
        for proc, alive in self.ground.status():
            if not alive:
                self.say(f"ground component {proc.name} exited (its log: {proc.log}); starting it again")
                self.ground.start_process(proc.name, timeout=120)
                started.append(proc.name)
        return started

    def fault_kill_burst(self) -> FaultResult:
        assert self.runtime is not None
        runtime, scale = self.runtime, self.scale
        kills_done = threading.Event()
        failures: list[BaseException] = []

        def killer() -> None:
            try:
                for _ in range(scale.kills):
                    time.sleep(self.rng.uniform(*scale.kill_interval))
                    runtime.kill()
                    runtime.start()  # as its Deployment would, at once
            except BaseException as exc:  # noqa: BLE001 - reported by the burst
                failures.append(exc)
            finally:
                kills_done.set()

        thread = threading.Thread(target=killer, name="chaos-killer", daemon=True)
        thread.start()
        extra = [self._special_pod("gpu-0", "gpu"), self._special_pod("gpu-1", "gpu"), self._refused_pod()]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(self._create, extra))
        chunk = max(scale.pods // 20, 1)
        created = 0
        while created < scale.pods:
            n = min(chunk, scale.pods - created)
            self._new_pods(n)
            created += n
            self._update_objects(2)
            if created % (chunk * 4) == 0:
                self._delete_some(max(scale.pods // 30, 1))
                self._relabel_some(max(scale.pods // 30, 1))
        while not kills_done.wait(0.5):
            self._update_objects(1)
        thread.join()
        if failures:
            raise failures[0]
        return self._converge("kill-burst", f"({scale.kills} kills, {runtime.starts} starts)")

    def _special_pod(self, name: str, pool: str) -> dict:
        return {"metadata": {"name": name, "labels": {"app": "chaos-special"}},
                "spec": {"runtimeClassName": self.classes[pool], "restartPolicy": "Never",
                         "containers": [{"name": "c", "image": "cuda:12", "command": ["sleep", "3600"]}]}}

    def _refused_pod(self) -> dict:
        pod = self._special_pod("refused-0", "a6000")
        pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}
        return pod

    def _healthy_ground(self) -> None:
        """The ground as the suite found it: both API servers answer, every provider node is Ready again."""
        def nodes_ready() -> bool:
            try:
                nodes = self.provider.list_node().items
            except Exception:  # noqa: BLE001 - still coming back
                return False
            return bool(nodes) and all(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
                                       for n in nodes)

        _wait(lambda: not self._heal_ground() and nodes_ready(), 180, "every provider node to be Ready again")

    def fault_local_apiserver_restart(self) -> FaultResult:
        self.churn(self.scale.churn)
        self.ground.stop_process("local-kube-apiserver")
        time.sleep(min(self.scale.outage_seconds, 5))
        self.ground.start_process("local-kube-apiserver", timeout=120)
        result = self._converge("local-apiserver-restart")
        self._healthy_ground()
        return result

    def _provider_outage(self, fault: str, stop: Callable[[], None], start: Callable[[], None]) -> FaultResult:
        stop()
        try:
            began = time.monotonic()
            self.churn(self.scale.churn)
            time.sleep(max(self.scale.outage_seconds - (time.monotonic() - began), 0))
        finally:
            start()
        result = self._converge(fault, f"({self.scale.outage_seconds:.0f} s outage)")
        self._healthy_ground()
        return result

    def fault_provider_apiserver_down(self) -> FaultResult:
        name = "provider-kube-apiserver"
        return self._provider_outage("provider-apiserver-down", lambda: self.ground.stop_process(name),
                                     lambda: self.ground.start_process(name, timeout=120))

    def fault_provider_apiserver_frozen(self) -> FaultResult:
        name = "provider-kube-apiserver"
        return self._provider_outage("provider-apiserver-frozen", lambda: self.ground.freeze(name),
                                     lambda: self.ground.thaw(name))

    def fault_etcd_compaction(self) -> FaultResult:
        assert self.runtime is not None
        before = self.runtime.relists()
        self.churn(self.scale.churn)
        revision = compact_etcd(self.state)
        # A watch at the head of etcd outlives a compaction; its end (etcd restarted, the API servers' caches
        # re-listed) makes every watch resume from a compacted revision: 410 Gone.
        self.ground.stop_process("etcd")
        self.ground.start_process("etcd", timeout=60)
        self.churn(self.scale.churn)
        result = self._converge("etcd-compaction")
        self._healthy_ground()
        gone = self.runtime.relists() - before
        result.note = f"(compacted at revision {revision}; the runtime's watches met 410 Gone {gone} times)"
        return result

    def fault_big_secret(self) -> FaultResult:
        secret = {"metadata": {"name": "big"}, "type": "Opaque",
                  "data": {"blob": base64.b64encode(os.urandom(BIG_SECRET_BYTES)).decode()}}
        self.local.create_namespaced_secret(self.namespace, secret)
        pod = self._special_pod("big-0", "a6000")
        pod["spec"]["volumes"] = [{"name": "big", "secret": {"secretName": "big"}}]
        pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "big", "mountPath": "/big"}]
        self._create(pod)
        self.churn(self.scale.churn)
        result = self._converge("big-secret")

        def settled():
            big = self.local.read_namespaced_pod("big-0", self.namespace)
            return (big.status.phase == "Running" or big.status.reason) and big

        try:
            big = _wait(settled, self.scale.converge_timeout, "big-0 to run or show why not")
            result.note = f"(big-0 {big.status.phase}{', ' + big.status.reason if big.status.reason else ''})"
        except TimeoutError:
            result.violations.append(f"pod {self.namespace}/big-0: neither Running nor a reason given")
        return result

    def fault_provider_quota(self) -> FaultResult:
        from kubernetes.client import ApiException

        tenant = self.state.tenant_namespace
        # count/pods, not pods: the node's capacity follows a `pods` quota (the scheduler would then keep the pods
        # off the node), while an object count only the provider's admission enforces. Zero: full whatever the
        # tenant holds (pods still going away would otherwise free room for some of the new ones).
        self.provider.create_namespaced_resource_quota(tenant, {"metadata": {"name": QUOTA},
                                                                "spec": {"hard": {"count/pods": "0"}}})
        try:
            def refuses() -> bool:
                probe = {"metadata": {"name": "quota-probe"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
                try:
                    self.provider.create_namespaced_pod(tenant, probe, dry_run="All")
                    return False
                except ApiException as exc:
                    return exc.status == 403

            _wait(refuses, 60, "the provider's admission to enforce the full quota")
            waiting = self._new_pods(self.scale.churn)

            def held() -> dict[str, str]:
                """How each new pod waits: unbound (the node offers no room while the quota is full: scheduling
                truth), or bound and refused by the provider (bound before the node saw the quota)."""
                found = {}
                for n in waiting:
                    pod = self.local.read_namespaced_pod(n, self.namespace)
                    if pod.status.reason == "ProviderRefused":
                        found[n] = "ProviderRefused"
                    elif not pod.spec.node_name and pod.status.phase == "Pending":
                        found[n] = "unbound"
                return found

            try:
                _wait(lambda: len(held()) == len(waiting), 90,
                      f"{len(waiting)} new pods to wait, unbound or with ProviderRefused")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}: {self._describe(waiting)}") from None
            ways = list(held().values())
        finally:
            self.provider.delete_namespaced_resource_quota(QUOTA, tenant)
        result = self._converge("provider-quota", f"({ways.count('unbound')} pods waited unbound, "
                                                  f"{ways.count('ProviderRefused')} with ProviderRefused, then ran)")

        def not_running() -> list[str]:
            return [n for n in waiting if self.local.read_namespaced_pod(n, self.namespace).status.phase != "Running"]

        try:
            _wait(lambda: not not_running(), self.scale.converge_timeout, "the refused pods to run")
        except TimeoutError:
            result.violations += [f"pod {self.namespace}/{n}: refused for the quota, not Running once it was raised"
                                  for n in not_running()]
        return result

    def _describe(self, names: list[str]) -> str:
        """Where pods stand, and the node's Ready and taints: what a fault that could not be carried out met."""
        pods = []
        for name in names:
            status = self.local.read_namespaced_pod(name, self.namespace)
            pods.append(f"{name} on {status.spec.node_name or '(unbound)'} {status.status.phase} "
                        f"{status.status.reason or ''}".strip())
        node = self.local.read_node(self.node)
        ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
        taints = [f"{t.key}:{t.effect}" for t in node.spec.taints or []]
        return (f"{'; '.join(pods)}; node {self.node} Ready={ready.status if ready else None} "
                f"({ready.reason if ready else ''}), taints {taints}, allocatable {node.status.allocatable}")

    def fault_cleanup(self) -> FaultResult:
        for selector in ("app=chaos", "app=chaos-special"):
            self.local.delete_collection_namespaced_pod(self.namespace, label_selector=selector)
        result = self._converge("cleanup")
        left = self.checker.snapshot()
        result.note = f"({len(left.mirrors)} mirrors, {len(left.copies)} copies left)"
        return result


def _volume(kind: str, name: str) -> dict:
    return {"configMap": {"name": name}} if kind == "ConfigMap" else {"secret": {"secretName": name}}


def _coordination(api_client):
    from kubernetes import client

    return client.CoordinationV1Api(api_client)


def compact_etcd(state: State) -> int:
    """Compacts the ground's etcd to its current revision (v3 HTTP gateway), physically; returns the revision."""
    url = f"http://127.0.0.1:{state.ports['etcd-client']}"

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    # A range over one key answers with the store's current revision in its header.
    revision = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
    return revision


def run_suite(chaos: Chaos, faults: tuple[str, ...] = FAULTS) -> list[FaultResult]:
    chaos.setup()
    results = []
    try:
        for fault in faults:
            results.append(chaos.run(fault))
    finally:
        chaos.teardown()
    return results


def run(scale_name: str, root: Path | None, say: Say, faults: tuple[str, ...] = FAULTS) -> dict:
    """`k8sgpu chaos`: a ground of its own (no worker node: the runtime runs as a process), the suite, the ground
    stopped again."""
    from .dev.binaries import ensure_binaries
    from .dev.catalog import DEFAULT_POOLS
    from .dev.ground import Ground

    scale = SCALES[scale_name]
    root = root or Path(f"/tmp/k8sgpu-chaos-{os.getpid()}")
    binaries = ensure_binaries(progress=say)
    # The default pools with room for 1000 pods a node instead of 110: the node's allocatable already has its
    # pods' requests taken off and kube-scheduler takes them off again, so 440 pods of capacity seat only ~220.
    pools = tuple(dataclasses.replace(pool, pods="1000") for pool in DEFAULT_POOLS)
    ground = Ground(root, pools=pools, progress=say, worker=False)
    state, _ = ground.up(binaries)
    started = time.monotonic()
    try:
        chaos = Chaos(ground, state, scale, root / "chaos", say)
        results = run_suite(chaos, faults)
    finally:
        ground.down()
    return {"scale": scale_name, "sizes": dataclasses.asdict(scale), "seconds": round(time.monotonic() - started, 1),
            "faults": [dataclasses.asdict(r) for r in results]}


def table(report: dict) -> str:
    lines = ["| fault | violations after convergence | converged in s | note |", "| --- | --- | --- | --- |"]
    for r in report["faults"]:
        seconds = f"{r['seconds']}" if not r["violations"] else f"not within {r['seconds']}"
        lines.append(f"| {r['fault']} | {len(r['violations'])} | {seconds} | {r['note']} |")
    for r in report["faults"]:
        for line in r["violations"][:20]:
            lines.append(f"{r['fault']}: {line}")
    return "\n".join(lines)


def add_parser(verbs) -> None:
    """`k8sgpu chaos faults`, under the `chaos` noun."""
    faults = verbs.add_parser(
        "faults", help="the fault suite: each fault followed by the invariant checker until nothing is wrong",
        description="Starts its own ground (no worker node) and the runtime of chaos.gpu as a process; runs each "
                    "fault (runtime SIGKILLs during a burst of pods sharing ConfigMaps/Secrets, local kube-apiserver "
                    "restart, provider kube-apiserver stopped and frozen, etcd compaction, a 1 MiB Secret, the "
                    "provider's ResourceQuota full then raised, cleanup), polls the invariant checker after each "
                    "until it finds no violation, and prints a table: fault, violations left, seconds to converge. "
                    "Exit 1 when any violation is left.")
    faults.add_argument("--scale", choices=tuple(SCALES), default="full",
                        help="full: 300 pods, 20 ConfigMaps/Secrets, 10 kills, 60 s outages (default); short: 30 "
                             "pods, 4 objects, 2 kills, 10 s outages")
    faults.add_argument("--fault", action="append", choices=FAULTS,
                        help="run only this fault (repeatable; run in the suite's order; kill-burst makes the pods "
                             "the others change)")
    faults.add_argument("--report", help="write the results as JSON to this file")
    faults.add_argument("--root", help="where its ground lives (default /tmp/k8sgpu-chaos-<pid>; stopped at the "
                                       "end)")
    faults.set_defaults(func=cmd_faults)


def cmd_faults(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    report = run(args.scale, Path(args.root) if args.root else None, say,
                 tuple(f for f in FAULTS if not args.fault or f in args.fault))
    print(table(report))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.report}", file=sys.stderr)
    return 1 if any(r["violations"] for r in report["faults"]) else 0
