"""Small helpers the e2e tests share: API clients, kubectl, waiting, the runtime as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client, config

from k8sgpu.cli.dev.binaries import find_kubectl


def api(kubeconfig: str) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


def kubectl(kubeconfig: str, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120):
    return subprocess.run([str(find_kubectl()), f"--kubeconfig={kubeconfig}", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, check=check)


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RuntimeProcess:
    """`k8sgpu-runtime start` as a user runs it, with its log in a file."""

    def __init__(self, args: list[str], log: Path):
        self.args, self.log = args, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> RuntimeProcess:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "k8sgpu.runtime.main", "start", *self.args],
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
