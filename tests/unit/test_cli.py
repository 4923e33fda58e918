import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "k8sgpu.cli.main", *args], capture_output=True, text=True)


def test_help_lists_the_dev_verbs():
    out = run("dev", "--help")
    assert out.returncode == 0
    for verb in ("build", "up", "status", "down", "demo"):
        assert verb in out.stdout


def test_unknown_verb_exits_non_zero_and_names_the_choices():
    out = run("dev", "launch")
    assert out.returncode == 2
    assert "invalid choice: 'launch'" in out.stderr


def test_status_of_a_ground_never_started(tmp_path):
    out = run("dev", "--root", str(tmp_path), "status")
    assert out.returncode == 3
    assert "k8sgpu dev up" in out.stdout


def test_dev_image_has_help():
    out = run("dev", "image", "--help")
    assert out.returncode == 0
    assert "OCI archive" in out.stdout and "--wheels" in out.stdout


def test_quantities_parse_as_the_kubernetes_client_does():
    from decimal import Decimal

    from k8sgpu.runtime.quantity import parse_quantity

    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("32861620Ki") == 32861620 * 1024
    assert parse_quantity("1.5G") == Decimal("1.5E9")
    assert parse_quantity(2) == 2
    for bad in ("1ki", "abc", "1Zi"):
        with pytest.raises(ValueError):
            parse_quantity(bad)


def test_chaos_has_help_naming_every_fault_of_the_suite():
    from k8sgpu.cli.chaos import FAULTS

    out = run("chaos", "faults", "--help")
    assert out.returncode == 0
    assert "--scale" in out.stdout and "--report" in out.stdout
    for fault in FAULTS:
        assert fault in out.stdout


def test_chaos_refuses_an_unknown_scale_or_fault_naming_the_choices():
    out = run("chaos", "faults", "--scale", "huge")
    assert out.returncode == 2 and "invalid choice: 'huge'" in out.stderr
    out = run("chaos", "faults", "--fault", "meteor")
    assert out.returncode == 2 and "invalid choice: 'meteor'" in out.stderr
