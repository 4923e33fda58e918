"""The virtual node: clients, the provider and the controllers, started in order, stopped in reverse."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from pathlib import Path

from .certificates import ServingCertificate
from .clients import EksLogin, NodeClientCertificate, local_cluster
from .config import RuntimeConfig
from .controllers.node import NodeController
from .controllers.pods import PodController
from .controllers.services import ServiceController
from .kube import Kube, api_client
from .kubelet.auth import Door
from .kubelet.server import KubeletServer
from .provider.remote import RemoteClusterProvider

log = logging.getLogger(__name__)


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
        self._tasks: list[asyncio.Task] = []
        self.ready = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        self.local, self.identity = await local_cluster(cfg.local, cfg.node.name)
        self.remote = Kube(await api_client(cfg.provider.kubeconfig), "provider")
        provider = RemoteClusterProvider(self.remote, cfg.provider.tenant_namespace, cfg.node.name, self.address)
        self.services = ServiceController(self.local, provider, cfg.provider.load_balancer_class)
        # The node counts what the pod controller holds; the pod controller reports to the node.
        self.node = NodeController(self.local, cfg.node, self.address, used=lambda: self.pods.used())
        self.pods = PodController(self.local, provider, cfg.node.name, on_node_change=self.node.pods_changed,
                                  on_capacity=self.node.set_capacity,
                                  on_reachability=self.node.set_provider_reachable,
                                  on_service=self.services.ingress_changed)

        # The provider is listed first, so the node registers with its real capacity.
        await self.pods.start()
        self.node.set_capacity(provider.capacity())
        await self.node.register()
        self._tasks.append(asyncio.create_task(self.node.lease_loop(), name="node-lease"))
        self._tasks.append(asyncio.create_task(self.node.status_loop(), name="node-status"))
        await self.services.start(provider.services())
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
            cert_file=cfg.tls_cert_file, key_file=cfg.tls_private_key_file)
        self.kubelet = KubeletServer(provider, Door(self.local, cfg.name), cfg.name,
                                     pods=lambda: list(self.pods.pods.store.values()),
                                     started=datetime.datetime.now(datetime.UTC))
        await self.kubelet.start(self.address, cfg.kubelet_port, self.certificate.context)
        self._tasks.append(asyncio.create_task(self._certify(), name="serving-certificate"))

    async def _certify(self) -> None:
        try:
            await self.certificate.start()
        except Exception as exc:  # noqa: BLE001 - reported on the node; pods keep running without the API
            log.error("no serving certificate for the kubelet API: %s", exc)
            self.node.set_serving_certificate(False, "CertificateFailed", str(exc)[:500])

    async def stop(self) -> None:
        for part in (self.kubelet, self.certificate):
            if part is not None:
                await part.stop()
        for part in (self.services, self.pods):
            if part is not None:
                await part.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.identity is not None:
            await self.identity.stop()
        for kube in (self.remote, self.local):
            if kube is not None:
                await kube.close()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Start, then run until ``stop``; a stop during the start (a CSR awaiting approval) ends it too."""
        starting = asyncio.create_task(self.start(), name="start")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                await stopping
        finally:
            for task in (starting, stopping):
                task.cancel()
            await asyncio.gather(starting, stopping, return_exceptions=True)
            await self.stop()
