"""LoadBalancer Services of class `k8s.gpu`: published by the provider, hostname written back."""

from __future__ import annotations

import logging

from .. import errors
from ..kube import Kube
from ..metrics import Metrics
from ..provider import PodProvider
from ..reflector import DONE, RETRY, Reflector, Result, WorkQueue, key_of
from ..supervisor import Supervisor

log = logging.getLogger(__name__)


class ServiceController:
    def __init__(self, kube: Kube, provider: PodProvider, load_balancer_class: str,
                 supervisor: Supervisor | None = None, metrics: Metrics | None = None):
        """Its informer and workers run under ``supervisor`` (the node's; absent, one of its own)."""
        self.kube, self.provider, self.lb_class = kube, provider, load_balancer_class
        self.services = Reflector(kube, "Service", None, on_event=self._on_local)
        self.queue = WorkQueue(self.sync, workers=2, name="services",
                               metrics=metrics.workqueue if metrics is not None else None)
        self._ingress: dict[str, list[dict]] = {}
        self._published: set[str] = set()
        self._own_supervisor = supervisor is None
        self.supervisor = supervisor or Supervisor()

    def ours(self, service: dict | None) -> bool:
        spec = (service or {}).get("spec") or {}
        return spec.get("type") == "LoadBalancer" and spec.get("loadBalancerClass") == self.lb_class

    async def start(self, remote_services: list[tuple[str, str]]) -> None:
        self.supervisor.start("local-services", self.services.run)
        await self.services.synced.wait()
        self._published = {f"{ns}/{name}" for ns, name in remote_services}
        for key in self._published:
            self.queue.add(key)
        self.supervisor.start("service-workers", self.queue.run)

    def problems(self) -> dict[str, str]:
        """Its informer and workers, if given up on (with a supervisor of its own; else the node's reports
        them): name → how; empty while both run."""
        return self.supervisor.problems() if self._own_supervisor else {}

    async def stop(self) -> None:
        await self.supervisor.stop("local-services", "service-workers")
        self.queue.close()

    def _on_local(self, kind: str, obj: dict) -> None:
        key = key_of(obj)
        if self.ours(obj) or key in self._published:
            self.queue.add(key)

    def ingress_changed(self, namespace: str, name: str, ingress: list[dict]) -> None:
        key = f"{namespace}/{name}"
        self._ingress[key] = ingress
        self.queue.add(key)

    async def sync(self, key: str) -> Result:
        namespace, name = key.split("/", 1)
        service = self.services.store.get(key)
        try:
            if not self.ours(service) or (service or {}).get("metadata", {}).get("deletionTimestamp"):
                if key in self._published:
                    await self.provider.delete_service(namespace, name)
                    self._published.discard(key)
                    self._ingress.pop(key, None)
                return DONE
            assert service is not None
            await self.provider.put_service(service)
            self._published.add(key)
            ingress = self._ingress.get(key)
            current = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            if ingress and ingress != current:
                await self.kube.patch("Service", namespace, name, {"status": {"loadBalancer": {"ingress": ingress}}},
                                      subresource="status")
                log.info("service %s published at %s", key, ", ".join(i.get("hostname") or i.get("ip", "")
                                                                    for i in ingress))
            return DONE
        except (errors.Unavailable, errors.Conflict) as exc:
            log.info("service %s: retrying after %s", key, exc)
            return RETRY
