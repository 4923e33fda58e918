"""The runtime's Prometheus metrics: one registry per runtime (no process-global state), served on the health
port's ``/metrics``. Parts register their collectors into ``Metrics.registry``; names follow client-go's and
controller-runtime's (``workqueue_*``, ``rest_client_*``) where the meaning is theirs, ``k8sgpu_*`` otherwise."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__


class Metrics:
    """The runtime's registry and the metrics that belong to no single part."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, node_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Info("k8sgpu_build", "The runtime's version and the node it serves (value 1).",
                               registry=self.registry)
        self.build_info.info({"version": __version__, "node": node_name})

    def exposition(self) -> bytes:
        """The text exposition format of every registered metric."""
        return generate_latest(self.registry)
