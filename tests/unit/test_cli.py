import subprocess
import sys


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
