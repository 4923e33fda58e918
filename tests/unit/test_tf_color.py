"""Terraform colours its output only for a person at a terminal: `make plan > log` carries no ANSI codes."""

from __future__ import annotations

import io
import os
import stat

import pytest

from k8sgpu.cli.tf.runner import Runner, use_color


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("streams, environ, want", [
    ((_Tty(), _Tty()), {}, True),
    ((io.StringIO(), _Tty()), {}, False),  # make plan > log
    ((_Tty(), io.StringIO()), {}, False),  # make plan 2> errors.log
    ((_Tty(), _Tty()), {"NO_COLOR": "1"}, False),
    ((_Tty(), _Tty()), {"NO_COLOR": ""}, True),
])
def test_colour_only_when_both_streams_are_terminals(streams, environ, want):
    assert use_color(streams, environ) is want


def test_a_piped_plan_runs_terraform_with_no_color(tmp_path, monkeypatch, capfd):
    """A stand-in `terraform` on PATH records its arguments; pytest's captured stdout is no terminal."""
    bin_dir, root = tmp_path / "bin", tmp_path / "root"
    bin_dir.mkdir()
    root.mkdir()
    (root / "main.tf").write_text("")
    fake = bin_dir / "terraform"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'argv'}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    cli_config = tmp_path / "terraformrc"
    cli_config.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(cli_config))
    monkeypatch.delenv("NO_COLOR", raising=False)
    Runner(root, progress=lambda m: None).plan()
    init, plan = (tmp_path / "argv").read_text().splitlines()
    assert init.split()[0] == "init" and "-no-color" in init.split()
    assert plan.split()[0] == "plan" and "-no-color" in plan.split()
