"""A real worker node for the local cluster: containerd + runc, kubelet, kube-proxy, bridge CNI.

Everything of the worker lives in two namespaces the ground makes and binds to files under
``<root>/worker/ns``, so that `down` removes all of it by ending their processes and unmounting two files:

* a network namespace: a veth pair to the host (host side ``10.253.N.1``, the node ``10.253.N.2``), the
  pods' bridge ``cni0`` with ``10.244.N.0/24``, and kube-proxy's iptables rules. The host gets a route to
  the pod network, which goes with the veth.
* a private mount namespace: containerd's overlay mounts, the kubelet's volume mounts, a tmpfs over
  ``/run`` and ``/var/log`` (containerd 1.6 keeps shim sockets in ``/run/containerd``; the kubelet
  links container logs in ``/var/log/containers``), and the kubelet's view of the kernel settings it
  would otherwise write machine-wide. The kubelet sets ``vm.overcommit_memory=1``, ``kernel.panic=10``,
  ``kernel.panic_on_oops=1`` (and more) when they differ from what it wants; here each of those files
  in ``/proc/sys`` is covered, in this namespace only, by a file that already holds the kubelet's
  value, so it reads "as wanted" and writes nothing. The machine's own values never change.

Pod cgroups go under a cgroup root of the ground's own (``/k8sgpu-<id>`` in each v1 hierarchy),
removed by `down` once its processes are gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

NODE_NAME = "worker-0"
POD_CIDR_PREFIX = "10.244"
LINK_PREFIX = "10.253"
CNI_BIN_DIR = "/usr/lib/cni"
CGROUP_BASE = Path("/sys/fs/cgroup")
PAUSE_IMAGE = "localhost/k8sgpu/pause:3.10"

# What kubelet's setupKernelTunables wants (pkg/kubelet/cm/container_manager_linux.go).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
# Directories the kubelet, containerd and CNI use outside their configured roots (/run/containerd, shim sockets;
# /var/log/containers; libcni's cache in /var/lib/cni), covered by a tmpfs in the mount namespace. All exist on a
# Debian machine, so no mount point is made on the host (one made for /var/lib/cni would be busy, and stay, while
# another ground's worker has its tmpfs there).
TMPFS_IN_NAMESPACE = ("/run", "/var/log", "/var/lib")
LIBMOUNT_DIR = "/run/mount"

TOOLS = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "ip": "iproute2",
    "iptables": "iptables",
    f"{CNI_BIN_DIR}/bridge": "containernetworking-plugins",
    f"{CNI_BIN_DIR}/host-local": "containernetworking-plugins",
    "gcc": "gcc",
    "buildah": "buildah",
}


class WorkerError(RuntimeError):
    """The worker could not be set up or torn down; the message says what to do."""


def missing_tools() -> list[str]:
    """One line per missing tool: what it is and the Debian package that has it."""
    lines = []
    for tool, package in TOOLS.items():
        found = os.access(tool, os.X_OK) if tool.startswith("/") else shutil.which(tool)
        if not found:
            lines.append(f"{tool} (apt-get install {package})")
    return lines


@dataclasses.dataclass
class WorkerPlan:
    """Where the worker's parts are; saved in the ground's state so `down` finds them."""

    dir: str
    node_ip: str
    host_ip: str
    pod_cidr: str
    host_link: str
    cgroup_root: str
    created_dirs: list[str] = dataclasses.field(default_factory=list)

    @property
    def mount_ns(self) -> str:
        return f"{self.dir}/ns/mnt"

    @property
    def net_ns(self) -> str:
        return f"{self.dir}/ns/net"

    @property
    def containerd_socket(self) -> str:
        # In the worker's own /run (a tmpfs of its mount namespace): a socket path under the ground's root can be
        # longer than a unix socket's 108 bytes.
        return "/run/containerd/containerd.sock"

    def enter(self, *argv: str) -> list[str]:
        """``argv`` run inside the worker's mount and network namespaces."""
        return ["nsenter", f"--mount={self.mount_ns}", f"--net={self.net_ns}", "--", *argv]


def plan(root: Path) -> WorkerPlan:
    """Addresses for the worker from the ground's root, avoiding ones this machine already uses."""
    digest = int(hashlib.sha256(str(root).encode()).hexdigest(), 16)
    taken = _run_out(["ip", "-4", "-o", "addr"]) + _run_out(["ip", "-4", "route"])
    for attempt in range(200):
        n = (digest + attempt) % 200 + 20
        if f"{LINK_PREFIX}.{n}." not in taken and f"{POD_CIDR_PREFIX}.{n}." not in taken:
            break
    else:
        raise WorkerError(f"no free {LINK_PREFIX}.N.0/24 for the worker's link; run `k8sgpu dev down` elsewhere")
    for covered in TMPFS_IN_NAMESPACE:
        if root.resolve().is_relative_to(covered):
            raise WorkerError(f"the ground's root {root} is under {covered}, which the worker covers with a tmpfs of "
                              "its own: give --root elsewhere (e.g. .k8sgpu/dev or /tmp/...), or --no-worker")
    ident = f"{digest:x}"[:8]
    return WorkerPlan(dir=str(root / "worker"), node_ip=f"{LINK_PREFIX}.{n}.2", host_ip=f"{LINK_PREFIX}.{n}.1",
                      pod_cidr=f"{POD_CIDR_PREFIX}.{n}.0/24", host_link=f"kgw{ident}",
                      cgroup_root=f"/k8sgpu-{ident}")


# -- namespaces, link, cgroups --------------------------------------------------------------------


def make_namespaces(w: WorkerPlan) -> None:
    """The mount and network namespaces, the veth pair, addresses and routes, the cgroup root."""
    ns_dir = Path(w.dir) / "ns"
    ns_dir.mkdir(parents=True, exist_ok=True)
    if not _is_mount(w.mount_ns):
        # libmount makes /run/mount (its lock and temporary mount target) at the first mount, on the host's /run
        # before the tmpfs covers it there: when it was not there before, it goes with the worker.
        had_libmount_dir = os.path.isdir(LIBMOUNT_DIR)
        Path(w.mount_ns).touch()
        _run(["unshare", f"--mount={w.mount_ns}", "--propagation", "private", "true"], "creating the mount namespace")
        sysctl_dir = Path(w.dir) / "sysctl"
        sysctl_dir.mkdir(exist_ok=True)
        script = []
        for path in TMPFS_IN_NAMESPACE:
            if not os.path.isdir(path):
                os.makedirs(path)
                w.created_dirs.append(path)
            script.append(f"mount -t tmpfs -o mode=755 k8sgpu-worker {path}")
        for key, value in KUBELET_SYSCTLS.items():
            held = sysctl_dir / key.replace("/", ".")
            held.write_text(f"{value}\n")
            script.append(f"mount --bind {held} /proc/sys/{key}")
        script.append("mkdir -p /run/netns")
        _run(["nsenter", f"--mount={w.mount_ns}", "--", "sh", "-ec", "; ".join(script)],
             "preparing the mount namespace")
        if not had_libmount_dir and os.path.isdir(LIBMOUNT_DIR):
            w.created_dirs.insert(0, LIBMOUNT_DIR)
    if not _is_mount(w.net_ns):
        Path(w.net_ns).touch()
        _run(["unshare", f"--net={w.net_ns}", "true"], "creating the network namespace")
        peer = w.host_link[:-1] + "p"
        _run(["ip", "link", "add", w.host_link, "type", "veth", "peer", "name", peer], "creating the worker's veth")
        _run(["ip", "link", "set", peer, "netns", w.net_ns], "moving the veth into the worker")
        _run(["ip", "addr", "add", f"{w.host_ip}/24", "dev", w.host_link], "addressing the host's veth")
        _run(["ip", "link", "set", w.host_link, "up"], "bringing the host's veth up")
        inside = ["nsenter", f"--net={w.net_ns}", "--"]
        for argv in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", peer, "name", "eth0"],
                     ["ip", "addr", "add", f"{w.node_ip}/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                     ["ip", "route", "add", "default", "via", w.host_ip],
                     # /proc/sys/net is the reader's network namespace: this is the worker's own setting.
                     ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]):
            _run(inside + argv, f"worker network: {' '.join(argv)}")
        _run(["ip", "route", "add", w.pod_cidr, "via", w.node_ip, "dev", w.host_link], "routing to the pod network")
    for hierarchy in _cgroup_hierarchies(v2=False):
        path = hierarchy / w.cgroup_root.lstrip("/")
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not (path / name).read_text().strip():
                    (path / name).write_text((hierarchy / name).read_text())


def remove_namespaces(w: WorkerPlan, progress=print) -> list[str]:
    """Ends every process left in the worker's namespaces (pods, shims), then the namespaces, link and
    cgroups. Returns what could not be removed."""
    # The pods' processes first, so that their shims (their parents) reap them; then the shims.
    ended = 0
    for find in (_pod_processes, _processes_in):
        deadline = time.monotonic() + 10
        while (victims := find(w)) and time.monotonic() < deadline:
            for pid in victims:
                _kill(pid, signal.SIGKILL)
            ended += len(victims)
            time.sleep(0.2)
    if ended:
        progress("worker: ended the processes left in its cgroups and namespaces (containers, shims)")
    for ns in (w.mount_ns, w.net_ns):
        if _is_mount(ns):
            subprocess.run(["umount", ns], capture_output=True)
    if _run_out(["ip", "-o", "link", "show", w.host_link]):
        subprocess.run(["ip", "link", "del", w.host_link], capture_output=True)
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / w.cgroup_root.lstrip("/")
        if top.is_dir():
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                _rmdir(sub)
            _rmdir(top)
    for path in reversed(w.created_dirs):
        try:
            os.rmdir(path)
        except OSError:
            pass
    return leftovers(w)


def leftovers(w: WorkerPlan) -> list[str]:
    """What of the worker is still on the machine: processes, mounts, the link, the route, cgroups, directories."""
    left = [f"process {pid}" for pid in _processes_in(w)]
    left += [f"mount {line.split()[1]}" for line in Path("/proc/self/mounts").read_text().splitlines()
             if line.split()[1].startswith(w.dir)]
    if _run_out(["ip", "-o", "link", "show", w.host_link]):
        left.append(f"link {w.host_link}")
    if w.pod_cidr in _run_out(["ip", "-4", "route"]):
        left.append(f"route {w.pod_cidr}")
    left += [f"cgroup {h / w.cgroup_root.lstrip('/')}" for h in _cgroup_hierarchies()
             if (h / w.cgroup_root.lstrip("/")).exists()]
    left += [f"directory {path}" for path in w.created_dirs if os.path.exists(path)]
    return left


def _cgroup_hierarchies(v2: bool = True) -> list[Path]:
    """The cgroup hierarchies this machine mounts: v1 ones, and (``v2``) the hybrid cgroup2 mount, where
    runc makes a pod's cgroups too."""
    kinds = ("cgroup", "cgroup2") if v2 else ("cgroup",)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        if right.split()[0] in kinds:
            found.append(Path(left.split()[4]))
    return found


def _pod_processes(w: WorkerPlan) -> list[int]:
    """PIDs in the worker's cgroups: the pods' processes (runc gives them mount namespaces of their own)."""
    pids: set[int] = set()
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / w.cgroup_root.lstrip("/")
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                continue
    return sorted(pids)


def _processes_in(w: WorkerPlan) -> list[int]:
    """PIDs of the worker: in its cgroups, or in its mount namespace (containerd's shims)."""
    pids = set(_pod_processes(w))
    try:
        ino = os.stat(w.mount_ns).st_ino if _is_mount(w.mount_ns) else None
    except OSError:
        ino = None
    if ino is not None:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/mnt").st_ino == ino:
                        pids.add(int(entry))
                except OSError:
                    continue
    pids.discard(os.getpid())
    return sorted(pids)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _is_mount(path: str) -> bool:
    return any(line.split()[1] == path for line in Path("/proc/self/mounts").read_text().splitlines())


def _run(argv: list[str], step: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise WorkerError(f"{step}: {argv[0]} is not installed ({exc})") from exc
    if done.returncode != 0:
        raise WorkerError(f"{step}: `{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()[-500:]} "
                          "(the worker node needs root and a kernel with network and mount namespaces, veth and "
                          "overlayfs; or start the ground without it: k8sgpu dev up --no-worker)")


def _run_out(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


# -- images ---------------------------------------------------------------------------------------

PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void leave(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGINT, leave); signal(SIGTERM, leave); signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


def pause_archive(cache: Path) -> Path:
    """The pod sandbox image, as an OCI archive: a static `pause` of a few lines of C, FROM scratch (no
    registry here to pull one from). Built once per content."""
    digest = hashlib.sha256(PAUSE_C.encode()).hexdigest()[:12]
    archive = cache / "images" / f"pause-{digest}.tar"
    if archive.exists():
        return archive
    work = cache / "images" / f"pause-{digest}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "pause.c").write_text(PAUSE_C)
    _run(["gcc", "-static", "-Os", "-s", "-o", str(work / "pause"), str(work / "pause.c")], "building pause")
    write_oci_archive(archive, PAUSE_IMAGE, {"pause": (work / "pause").read_bytes()}, entrypoint=["/pause"])
    shutil.rmtree(work, ignore_errors=True)
    return archive


def write_oci_archive(archive: Path, name: str, files: dict[str, bytes], entrypoint: list[str]) -> None:
    """An OCI image layout in a tar: one layer of ``files`` (mode 0755), named ``name`` for `ctr import`."""
    import io
    import tarfile

    def tar(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path, data in members.items():
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(data), 0o755
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layer_digest, layer = blob(tar(files))
    config_digest, config = blob(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Entrypoint": entrypoint},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode())
    manifest_digest, manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}]}).encode())
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": len(manifest),
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}}]}).encode()
    members = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for digest, data in ((layer_digest, layer), (config_digest, config), (manifest_digest, manifest)):
        members[f"blobs/sha256/{digest.removeprefix('sha256:')}"] = data
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".tmp")
    partial.write_bytes(tar(members))
    os.replace(partial, archive)


def import_image(w: WorkerPlan, ctr_import: list[str]) -> None:
    """Run a `ctr images import` (into the `k8s.io` namespace the kubelet's CRI sees) in the worker."""
    _run(w.enter(*ctr_import), f"importing an image into the worker's containerd: {' '.join(ctr_import)}")


# -- configuration files ------------------------------------------------------------------------


def write_containerd_config(w: WorkerPlan) -> Path:
    base = Path(w.dir) / "containerd"
    for sub in ("root", "state", "opt"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    cni = write_cni_config(w)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{base}/root"
state = "{base}/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{w.containerd_socket}"
[ttrpc]
  address = "{w.containerd_socket}.ttrpc"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # The machine lacks CAP_SYS_RESOURCE: a negative oom_score_adj is refused and sandboxes fail.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni.parent}"
"""
    path = base / "config.toml"
    path.write_text(text)
    return path


def write_cni_config(w: WorkerPlan) -> Path:
    conf = Path(w.dir) / "cni" / "net.d" / "10-k8sgpu.conflist"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": "k8sgpu-worker",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": w.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(Path(w.dir) / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2))
    return conf


def write_kubelet_config(w: WorkerPlan, client_ca: Path, serving_cert: Path, serving_key: Path) -> Path:
    base = Path(w.dir) / "kubelet"
    base.mkdir(parents=True, exist_ok=True)
    resolv = base / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")  # pods here need no DNS; never the host's resolver
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": w.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "containerRuntimeEndpoint": f"unix://{w.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": w.cgroup_root,
        "cgroupsPerQOS": True,
        # The machine lacks CAP_SYS_RESOURCE: the kubelet may not lower its own OOM score.
        "oomScoreAdj": 0,
        "failSwapOn": False,
        "failCgroupV1": False,
        "protectKernelDefaults": False,
        "podLogsDir": str(base / "pod-logs"),
        "volumePluginDir": str(base / "volume-plugins"),
        "resolvConf": str(resolv),
        "clusterDomain": "cluster.local",
        "maxPods": 30,
        "serializeImagePulls": False,
        # Images are imported, never pulled: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "nodeStatusReportFrequency": "1m",
        "makeIPTablesUtilChains": False,
    }
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_kube_proxy_config(w: WorkerPlan, kubeconfig: Path) -> Path:
    base = Path(w.dir) / "kube-proxy"
    base.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": w.pod_cidr,
        "bindAddress": w.node_ip,
        "healthzBindAddress": f"{w.node_ip}:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # Zero leaves the machine's conntrack settings as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
