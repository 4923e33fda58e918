"""Session fixtures: the dev ground (two real clusters on 127.0.0.1), started once, stopped by PID."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from k8sgpu.cli.dev.binaries import ensure_binaries
from k8sgpu.cli.dev.ground import Ground, State, listening_ports
from k8sgpu.cli.tf.providers import ensure_providers


def pytest_configure(config):
    """A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the ground's fixture still stops it by PID."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _log(message: str) -> None:
    print(f"[ground] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def binaries():
    return ensure_binaries(progress=_log)


@pytest.fixture(scope="session")
def ground(binaries, tmp_path_factory) -> State:
    """Both clusters, up for the whole test session; stopped at its end even when tests fail."""
    root = Path(os.environ.get("K8SGPU_TEST_ROOT") or tmp_path_factory.mktemp("ground"))
    g = Ground(root, progress=_log)
    state, _ = g.up(binaries)
    try:
        yield state
    finally:
        g.down()
        _assert_gone(state)


def _assert_gone(state: State) -> None:
    """Nothing of the ground may outlive it: no process, no listener on its ports."""
    deadline = time.monotonic() + 10
    while True:
        alive = [p.name for p in state.processes if p.alive()]
        ports = sorted(listening_ports() & {port for p in state.processes for port in p.ports})
        if not alive and not ports:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"ground left behind: processes {alive}, listening ports {ports}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory) -> dict[str, str]:
    """The environment CI has: no terraform on PATH, the providers built from source in the mirror."""
    config = ensure_providers(progress=lambda m: print(f"[providers] {m}", file=sys.stderr, flush=True))
    path = ":".join(p for p in os.environ["PATH"].split(":")
                    if p and not os.path.exists(os.path.join(p, "terraform")))
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{path}", "TF_CLI_CONFIG_FILE": str(config),
            "TF_IN_AUTOMATION": "1", "NO_COLOR": "1"}
