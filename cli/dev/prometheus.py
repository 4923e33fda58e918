"""The ground's Prometheus: Debian's `prometheus` package's binary, run by the ground on 127.0.0.1 with a
generated configuration and its data under the ground's root, stopped by PID with it.

It scrapes every runtime of the ground every 2 s. Each runtime is registered as a file under
``<root>/prometheus/targets/`` (file service discovery): the demo registers its runtime's pods on the worker node
(their pod IPs, after the rollout) or its runtime process, the tests their runtime processes. Debian's build leaves
Kubernetes service discovery out (`kubernetes_sd_configs` is unknown to it), hence the files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from .components import Component

SCRAPE_INTERVAL = "2s"
INSTALL_HINT = ("the dev ground's Prometheus is Debian's package: run `make packages`, or "
                "`apt-get install --no-install-recommends prometheus` (then `systemctl disable --now prometheus` "
                "where systemd started its service)")


def find_prometheus() -> str:
    """The prometheus binary: $K8SGPU_PROMETHEUS, else on PATH, else Debian's /usr/bin/prometheus; '' if none."""
    for candidate in (os.environ.get("K8SGPU_PROMETHEUS", ""), shutil.which("prometheus") or "",
                      "/usr/bin/prometheus"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return ""


def prometheus_url(state) -> str:
    """The ground's Prometheus (empty on a ground started before it had one)."""
    port = (state.ports or {}).get("prometheus")
    return f"http://127.0.0.1:{port}" if port else ""


def _dir(state) -> Path:
    return Path(state.root) / "prometheus"


def targets_dir(state) -> Path:
    return _dir(state) / "targets"


def add_scrape_target(state, name: str, address: str, labels: dict[str, str] | None = None) -> Path:
    """Have the ground's Prometheus scrape ``address`` (host:port of a runtime's health port) as ``name``."""
    directory = targets_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [address], "labels": {"runtime": name, **(labels or {})}}]))
    os.replace(tmp, path)
    return path


def remove_scrape_target(state, name: str) -> None:
    (targets_dir(state) / f"{name}.json").unlink(missing_ok=True)


def config(state) -> dict:
    jobs = [{
        "job_name": "k8sgpu-runtime",
        "file_sd_configs": [{"files": [str(targets_dir(state) / "*.json")], "refresh_interval": SCRAPE_INTERVAL}],
    }]
    return {"global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": jobs}


def component(state, ready) -> Component:
    """The ground's row: after the local API server (whose pods it discovers)."""
    port = state.ports["prometheus"]
    directory = _dir(state)

    def prepare() -> None:
        targets_dir(state).mkdir(parents=True, exist_ok=True)
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config(state), sort_keys=False))

    return Component(
        "prometheus", depends=("local-kube-apiserver",),
        argv=(state.binaries.get("prometheus") or find_prometheus() or "prometheus",
              f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
              f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=7d", "--log.level=warn"),
        ports=(port,), prepare=prepare, ready=lambda: ready(f"http://127.0.0.1:{port}/-/ready"), ready_timeout=60)
