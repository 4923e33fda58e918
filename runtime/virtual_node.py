"""The virtual node: clients, the provider and the controllers, started in order, stopped in reverse; the health
port answers for all of them."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from pathlib import Path

from . import errors
from .certificates import ServingCertificate
from .clients import EksLogin, NodeClientCertificate, local_cluster
from .config import RuntimeConfig
from .controllers.node import NodeController
from .controllers.pods import PodController
from .controllers.services import ServiceController
from .health import HealthServer
from .kube import Kube, api_client
from .kubelet.auth import Door
from .kubelet.server import KubeletServer
from .leader import LeaderElector
from .metrics import Metrics
from .provider.remote import RemoteClusterProvider
from .supervisor import Supervisor
from .usage import PodUsageCollector

log = logging.getLogger(__name__)


class LeadershipLost(RuntimeError):
    """The leader could not renew its election Lease in time: it stops leading, and the process exits non-zero
    so that its Deployment starts it again as a candidate."""


class VirtualNode:
    def __init__(self, config: RuntimeConfig):
        self.config = config
        self.address = config.resolved_address(dict(os.environ))
        self.local: Kube | None = None
        self.identity: NodeClientCertificate | EksLogin | None = None
        self.remote: Kube | None = None
        self.node: NodeController | None = None
        self.pods: PodController | None = None
        self.services: ServiceController | None = None
        self.certificate: ServingCertificate | None = None
        self.kubelet: KubeletServer | None = None
        self.health: HealthServer | None = None
        self.election: LeaderElector | None = None  # None: leader election off, this runtime leads alone
        self._election_kube: Kube | None = None
        # The long-running parts of the node and its controllers: restarted when they stop, and the process
        # stopped when one keeps failing.
        self.supervisor = Supervisor(on_give_up=self._report_failed)
        self.metrics = Metrics(config.node.name)
        self.ready = asyncio.Event()
        self.stage = "starting"
        """What the start is doing now: /readyz says it until the node is ready."""
        self.stopping = False

    # -- health --------------------------------------------------------------------------

    def problems(self) -> dict[str, str]:
        """Every long-running part that has ended: name → how (empty: alive). Parts not started yet are no
        problem (a start waiting for a CSR's approval is alive), nor are parts cancelled by stop()."""
        if self.stopping:
            return {}
        found = self.supervisor.problems()
        for part in (self.pods, self.services, self.kubelet):
            if part is not None:
                found.update(part.problems())
        return found

    def waiting(self) -> str:
        """What readiness waits for; "" once the node is registered and every part started."""
        if self.stopping:
            return "stopping"
        if self.ready.is_set():
            return ""
        if self.election is not None and self.election.observed is None and self.election.error:
            return f"{self.stage}: {self.election.error}"
        return self.stage

    def standby(self) -> str:
        """While this runtime campaigns, prepared to lead: who leads (readiness is 200, so a rollout goes on)."""
        election = self.election
        if (self.stopping or election is None or election.leading.is_set() or self.local is None
                or election.observed is None):
            return ""
        return f"standby: leader is {election.leader or 'unknown yet'}"

    async def start_health(self) -> None:
        """The health port, before anything else: liveness answers while the start waits."""
        cfg = self.config.node
        if not cfg.health_port:
            return
        self.health = HealthServer(self.problems, self.waiting, self.supervisor.restarting, self.standby,
                                   metrics=self.metrics)
        await self.health.start(self.config.resolved_health_bind_address(dict(os.environ)), cfg.health_port)

    # -- life ------------------------------------------------------------------------------

    async def connect(self) -> None:
        """The node identity and the provider's client; a standby makes them before it leads (a bootstrap CSR,
        an EKS role assumed), so that a failover does not wait for them."""
        cfg = self.config
        self.stage = "connecting to the local cluster as the node (a CSR may await approval: see the log)"
        self.local, self.identity = await local_cluster(cfg.local, cfg.node.name, self.metrics)
        self.remote = Kube(await api_client(cfg.provider.kubeconfig), "provider", metrics=self.metrics.rest_client)
        for name, part in (self.identity.parts() if self.identity is not None else {}).items():
            self.supervisor.start(name, part)

    async def campaign(self) -> None:
        """Connect, then stand by until this runtime holds the election Lease (nothing without an election)."""
        if self.election is None:
            return
        await self.connect()
        self.supervisor.start("leader-election", self.election.run)
        self.stage = (f"campaigning for leader election Lease {self.election.namespace}/{self.election.name} "
                      f"as {self.election.identity}")
        await self.election.leading.wait()

    async def start(self) -> None:
        cfg = self.config
        if self.local is None:
            await self.connect()
        # GPU accounting is exported by the leader only: registered here, once this runtime leads.
        usage = PodUsageCollector(lambda: provider.mirror_objects())
        provider = RemoteClusterProvider(self.remote, cfg.provider.tenant_namespace, cfg.node.name, self.address,
                                         supervisor=self.supervisor, on_mirror_gone=usage.mirror_gone)
        self.metrics.registry.register(usage)
        self.services = ServiceController(self.local, provider, cfg.provider.load_balancer_class,
                                          supervisor=self.supervisor, metrics=self.metrics)
        # The node counts what the pod controller holds; the pod controller reports to the node.
        self.node = NodeController(self.local, cfg.node, self.address, used=lambda: self.pods.used(),
                                   metrics=self.metrics)
        self.pods = PodController(self.local, provider, cfg.node.name, on_node_change=self.node.pods_changed,
                                  on_capacity=self.node.set_capacity,
                                  on_reachability=self.node.set_provider_reachable,
                                  on_service=self.services.ingress_changed, supervisor=self.supervisor,
                                  default_runtime_class=cfg.node.default_runtime_class, metrics=self.metrics)

        # The provider is listed first, so the node registers with its real capacity.
        self.stage = "listing the local pods and RuntimeClasses and the provider's tenant namespace"
        await self.pods.start()
        self.node.set_capacity(provider.capacity())
        self.stage = f"registering node {cfg.node.name}"
        await self.node.register()
        self.supervisor.start("node-lease", self.node.lease_loop)
        self.supervisor.start("node-status", self.node.status_loop)
        self.stage = "listing the local Services"
        await self.services.start(provider.services())
        self.stage = "opening the kubelet API"
        await self._start_kubelet_api(provider)
        log.info("node %s ready at %s; provider tenant namespace %s", cfg.node.name, self.address,
                 cfg.provider.tenant_namespace)
        self.ready.set()

    async def _start_kubelet_api(self, provider: RemoteClusterProvider) -> None:
        """Listen at once (a taken port fails the start); serve TLS once the certificate is issued."""
        cfg = self.config.node
        if cfg.client_ca_file:
            client_ca = Path(cfg.client_ca_file).read_bytes()
        elif self.identity is not None and self.identity.ca_pem:
            client_ca = self.identity.ca_pem
        elif self.local.api.configuration.ssl_ca_cert:
            client_ca = Path(self.local.api.configuration.ssl_ca_cert).read_bytes()
        else:
            raise RuntimeError("the local cluster's kubeconfig names no CA: give --client-ca-file, the CA that "
                               "signs kube-apiserver's kubelet client certificate")
        self.certificate = ServingCertificate(
            self.local, cfg.name, [self.address], signer=cfg.csr_signer, self_approve=cfg.csr_self_approve,
            client_ca=client_ca, on_state=self.node.set_serving_certificate,
            cert_file=cfg.tls_cert_file, key_file=cfg.tls_private_key_file, metrics=self.metrics)
        self.kubelet = KubeletServer(provider, Door(self.local, cfg.name), cfg.name,
                                     pods=lambda: list(self.pods.pods.store.values()),
                                     started=datetime.datetime.now(datetime.UTC))
        await self.kubelet.start(self.address, cfg.kubelet_port, self.certificate.context)
        self.supervisor.start("kubelet-api", self.kubelet.serve)
        if self.certificate.from_files:
            self.certificate.load_files()
        else:
            self.supervisor.start("serving-certificate", self.certificate.run)

    async def stop(self) -> None:
        self.stopping = True
        await self.supervisor.stop("kubelet-api", "serving-certificate")
        if self.kubelet is not None:
            await self.kubelet.stop()
        decommission = await self._being_removed()
        for part in (self.services, self.pods):
            if part is not None:
                await part.stop()
        await self.supervisor.stop()
        if decommission:
            await self._decommission()
        # After the controllers stopped, so the next leader starts at once; not after a decommission, where the
        # Lease runs out instead, so a replica whose stop comes late cannot register the removed node again.
        if self.election is not None and not decommission:
            await self.election.release()
        if self.identity is not None:
            await self.identity.stop()
        for kube in (self.remote, self.local, self._election_kube):
            if kube is not None:
                await kube.close()
        if self.health is not None:
            await self.health.stop()

    async def _report_failed(self, name: str, why: str) -> None:
        """A part was given up on: the Node says which (if it is registered and the cluster answers) before the
        process stops."""
        if self.node is None or not self.node.ready.is_set():
            return
        self.node.set_part_failed(name, why)
        await self.node.write_status(force=True)

    async def _being_removed(self) -> bool:
        """Whether this runtime stops because its Deployment is being deleted (gone, or deleting in the
        foreground as the node module's destroy does), asked with the pod's ServiceAccount."""
        namespace, _, name = self.config.node.deployment.partition("/")
        if not name or self.pods is None or (self.election is not None and not self.election.leading.is_set()):
            return False
        try:
            account = Kube(await api_client(None), "local")
        except Exception as exc:  # noqa: BLE001 - outside a pod there is no ServiceAccount to ask with
            log.warning("cannot tell whether Deployment %s is being deleted (%s): leaving the node", name, exc)
            return False
        try:
            deployment = await account.get("Deployment", namespace, name)
        except errors.NotFound:
            return True
        except errors.KubeError as exc:
            log.warning("cannot read Deployment %s/%s (%s): leaving the node as it is", namespace, name, exc)
            return False
        finally:
            await account.close()
        return bool(deployment["metadata"].get("deletionTimestamp"))

    async def _decommission(self) -> None:
        """Remove what the node made: its pods, copies and Services on the provider, then its Node (whose
        Lease the garbage collector follows). Pods still bound to it are then collected as on any deleted node."""
        name = self.config.node.name
        log.info("Deployment %s is being deleted: removing node %s and everything it holds on the provider",
                 self.config.node.deployment, name)
        try:
            await self.pods.provider.release_all()
            await self.local.delete("Node", None, name)
        except errors.NotFound:
            pass
        except errors.KubeError as exc:
            log.error("removing node %s: %s", name, exc)
            return
        log.info("node %s removed", name)

    async def _elect(self) -> None:
        """The elector, when leader election is on (its Lease written with the election's own identity)."""
        le = self.config.leader_election
        if not le.leader_elect:
            log.info("leader election off (--no-leader-elect, or no ServiceAccount and no --leader-elect-kubeconfig):"
                     " this runtime leads node %s alone", self.config.node.name)
            return
        self._election_kube = Kube(await api_client(le.kubeconfig or None), "local (leader election)",
                                   metrics=self.metrics.rest_client)
        self.election = LeaderElector(self._election_kube, le.resource_namespace, le.resource_name, le.identity,
                                      lease_duration=le.lease_duration_seconds,
                                      renew_deadline=le.renew_deadline_seconds, retry_period=le.retry_period_seconds,
                                      metrics=self.metrics)

    async def run_until(self, stop: asyncio.Event) -> None:
        """Campaign (where leader election is on), start once leading, then run until ``stop``; a stop while
        standing by or during the start (a CSR awaiting approval) ends it too. A part that keeps failing ends it
        with `PartFailed`, a lost election Lease with `LeadershipLost` (the process exits non-zero; its
        Deployment restarts it)."""
        await self.start_health()  # a taken port fails here, before anything else has started
        ends = [asyncio.create_task(stop.wait(), name="stop"),
                asyncio.create_task(self.supervisor.run(), name="supervisor")]
        stopping, failing = ends
        starting = None
        try:
            await self._elect()
            if self.election is not None:
                ends.append(asyncio.create_task(self.election.lost.wait(), name="leadership-lost"))
            starting = asyncio.create_task(self._campaign_and_start(), name="start")
            await asyncio.wait({starting, *ends}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done() and not failing.done():
                starting.result()
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            if failing.done():
                failing.result()  # raises PartFailed
            if self.election is not None and self.election.lost.is_set():
                raise LeadershipLost(f"lost leader election Lease {self.election.namespace}/{self.election.name} "
                                     f"(not renewed within {self.election.renew_deadline:g} s)")
        finally:
            tasks = [t for t in (starting, *ends) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop()

    async def _campaign_and_start(self) -> None:
        await self.campaign()
        await self.start()
