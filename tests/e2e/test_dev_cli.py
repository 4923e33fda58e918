"""`k8sgpu dev up|status|down|demo` as a user runs them: exit codes, messages, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from k8sgpu.cli.dev.catalog import DEFAULT_POOLS
from k8sgpu.cli.dev.ground import listening_ports

from .helpers import kubectl

pytestmark = pytest.mark.e2e


def k8sgpu(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_up_status_down_lifecycle(binaries, tmp_path):
    root = str(tmp_path / "ground")
    up = k8sgpu("dev", "--root", root, "up", "-o", "json")
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    assert info["local"]["kubeconfig"].endswith("local.kubeconfig")
    assert "starting etcd" in up.stderr  # progress is shown
    try:
        again = k8sgpu("dev", "--root", root, "up")
        assert again.returncode == 0
        assert "already up" in again.stdout

        status = k8sgpu("dev", "--root", root, "status", "-o", "json")
        assert status.returncode == 0, status.stdout
        procs = json.loads(status.stdout)["processes"]
        names = {p["name"] for p in procs}
        assert {"etcd", "local-kube-apiserver", "local-kube-controller-manager", "local-kube-scheduler",
                "provider-kube-apiserver", "provider-kube-controller-manager", "provider-kube-scheduler"} <= names
        assert {f"provider-kwok-{p.name}" for p in DEFAULT_POOLS} <= names
        ports = {port for p in procs for port in p["ports"]}
        assert ports <= listening_ports()

        # A crashed component is reported, with a non-zero exit code.
        victim = next(p for p in procs if p["name"] == "local-kube-scheduler")
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (crashed := k8sgpu("dev", "--root", root, "status")).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert crashed.returncode == 1
        assert "local-kube-scheduler" in crashed.stdout and "EXITED" in crashed.stdout

        # `up` again starts only what died, on the same ground: etcd's data, so both clusters' objects, stay.
        for cluster in ("local", "provider"):
            kubectl(info[cluster]["kubeconfig"], "create", "configmap", "kept", "--from-literal=k=v")
        apiserver = next(p for p in procs if p["name"] == "provider-kube-apiserver")
        os.kill(apiserver["pid"], signal.SIGKILL)
        restarted = k8sgpu("dev", "--root", root, "up")
        assert restarted.returncode == 0, restarted.stderr
        assert "starting only that" in restarted.stderr
        after = {p["name"]: p["pid"] for p in json.loads(k8sgpu("dev", "--root", root, "status", "-o", "json").stdout)[
            "processes"]}
        dead = {"local-kube-scheduler", "provider-kube-apiserver"}
        # What runs apart from the provider's API server was left alone (its clients may have exited with it).
        apart = {p["name"]: p["pid"] for p in procs
                 if p["name"].startswith(("etcd", "moto", "eks-", "local-", "worker-")) and p["name"] not in dead}
        assert {n: after[n] for n in apart} == apart
        assert all(after[n] != next(p["pid"] for p in procs if p["name"] == n) for n in dead)
        assert k8sgpu("dev", "--root", root, "status").returncode == 0
        for cluster in ("local", "provider"):
            kept = kubectl(info[cluster]["kubeconfig"], "get", "configmap", "kept", "-o", "jsonpath={.data.k}")
            assert kept.stdout == "v"
    finally:
        down = k8sgpu("dev", "--root", root, "down")
    assert down.returncode == 0, down.stderr
    assert "dev ground down" in down.stdout
    for p in procs:
        assert not os.path.exists(f"/proc/{p['pid']}") or _is_zombie_or_other(p["pid"], p["name"]), p["name"]
    assert not ports & listening_ports()
    gone = k8sgpu("dev", "--root", root, "status")
    assert gone.returncode == 3
    assert "dev ground is down" in gone.stdout


def _is_zombie_or_other(pid: int, name: str) -> bool:
    """A recycled PID belongs to another program; a zombie no longer runs."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z" or name.split("-")[-1] not in open(f"/proc/{pid}/cmdline").read()


def test_demo_applies_terraform_and_runs_the_guides_pod_on_the_virtual_node(binaries, tmp_path):
    root = str(tmp_path / "demo-ground")
    assert k8sgpu("dev", "--root", root, "up").returncode == 0
    try:
        demo = k8sgpu("dev", "--root", root, "demo", timeout=400)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "Apply complete!" in demo.stdout
        # The runtime's pod, from its image, Running on the worker node; the node registered with its IP.
        assert any(line.startswith("k8sgpu-runtime-") and "Running" in line and "worker-0" in line
                   for line in demo.stdout.splitlines())
        # Two replicas: the node is at the IP of the one that leads.
        assert "k8s.gpu is Ready at 10.244." in demo.stdout and "the runtime pod that leads" in demo.stdout
        assert "node/k8s.gpu condition met" in demo.stdout
        assert "pod/nvidia-smi condition met" in demo.stdout
        assert "pod/nvidia-smi-mig condition met" in demo.stdout and "nvidia.com/mig-1g.10gb" in demo.stdout
        # kubectl get pod -o wide shows it Running on the virtual node
        assert any("nvidia-smi" in line and "Running" in line and "k8s.gpu" in line
                   for line in demo.stdout.splitlines())
        assert "GPU 0: NVIDIA-RTX-A6000" in demo.stdout  # kubectl exec through the runtime's kubelet API
        # No runtime process on the machine: the demo's runtime is the Deployment's pod.
        status = json.loads(k8sgpu("dev", "--root", root, "status", "-o", "json").stdout)
        assert not any(p["name"] == "k8sgpu-runtime" for p in status["processes"])
    finally:
        down = k8sgpu("dev", "--root", root, "down")
    assert down.returncode == 0, down.stderr


def test_demo_refuses_when_the_ground_is_down(tmp_path):
    demo = k8sgpu("dev", "--root", str(tmp_path), "demo")
    assert demo.returncode == 1
    assert "the dev ground is down; run `k8sgpu dev up`" in demo.stderr
