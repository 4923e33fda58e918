"""The ground's table of components: dependency order, refused tables."""

from __future__ import annotations

import pytest

from k8sgpu.cli.dev.components import Component, CycleError, ordered


def names(rows):
    return [c.name for c in rows]


def test_dependencies_start_first_and_the_table_order_is_kept_otherwise():
    table = [
        Component("kubelet", depends=("containerd", "apiserver")),
        Component("etcd"),
        Component("apiserver", depends=("etcd",)),
        Component("containerd", depends=("namespaces",)),
        Component("namespaces"),
        Component("moto"),
    ]
    assert names(ordered(table)) == ["etcd", "apiserver", "namespaces", "containerd", "kubelet", "moto"]


def test_a_cycle_is_refused_naming_a_member():
    with pytest.raises(CycleError, match="cycle through"):
        ordered([Component("a", depends=("b",)), Component("b", depends=("a",))])


def test_an_unknown_dependency_is_refused_naming_both():
    with pytest.raises(ValueError, match="kubelet depends on unknown containerd"):
        ordered([Component("kubelet", depends=("containerd",))])


def test_a_missing_tool_is_named_with_the_package_that_has_it(monkeypatch, tmp_path):
    from k8sgpu.cli.dev import worker

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(worker, "CNI_BIN_DIR", str(tmp_path))
    monkeypatch.setattr(worker, "TOOLS", {"containerd": "containerd", "runc": "runc",
                                          f"{tmp_path}/bridge": "containernetworking-plugins"})
    assert worker.missing_tools() == ["containerd (apt-get install containerd)", "runc (apt-get install runc)",
                                      f"{tmp_path}/bridge (apt-get install containernetworking-plugins)"]
