import re
from pathlib import Path

import pytest
import yaml

from k8sgpu.cli.doctor import FAIL, Finding, egress_selector_modes, render
from k8sgpu.cli.main import main
from k8sgpu.runtime.rbac import tenant_rbac, tenant_rules


def test_k3s_egress_selector_mode_is_read_from_the_servers_node_args():
    assert egress_selector_modes(['["server","--egress-selector-mode","disabled"]']) == {"disabled"}
    assert egress_selector_modes(['["server","--egress-selector-mode=pod"]']) == {"pod"}
    assert egress_selector_modes(['["server","--disable","traefik"]']) == {"agent (default)"}
    assert egress_selector_modes(['["server","--egress-selector-mode=disabled"]', '["server"]']) == \
        {"disabled", "agent (default)"}


def test_table_shows_the_fix_under_a_failure():
    text = render([Finding("node-name", FAIL, "a node named k8s.gpu exists", "choose another --node-name")], "table")
    assert text.splitlines()[0].startswith("FAIL  node-name")
    assert text.splitlines()[1].strip() == "fix: choose another --node-name"


@pytest.mark.parametrize("args, message", [
    (["--provider-kubeconfig", "/dev/null"], "--provider-kubeconfig and --tenant-namespace go together"),
    (["--tenant-namespace", "tenant-demo"], "--provider-kubeconfig and --tenant-namespace go together"),
    (["--provider-kubeconfig", "/nonexistent/tenant.kubeconfig", "--tenant-namespace", "t"],
     "--provider-kubeconfig: /nonexistent/tenant.kubeconfig does not exist"),
])
def test_the_tenant_checks_need_both_flags_and_a_kubeconfig_that_exists(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--cloud", "generic", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_tenant_role_covers_every_subresource_the_runtime_streams():
    granted = {(resource, verb) for rule in tenant_rules() for resource in rule["resources"] for verb in rule["verbs"]}
    assert {("pods/log", "get"), ("pods/exec", "get"), ("pods/exec", "create"), ("pods/attach", "get"),
            ("pods/portforward", "get"), ("resourcequotas", "watch")} <= granted
    # Namespaced only, and nothing that edits RBAC, quotas or the namespace.
    assert not granted & {("nodes", "list"), ("namespaces", "get"), ("roles", "create"), ("resourcequotas", "update"),
                          ("pods", "deletecollection")}


def test_the_readme_shows_the_tenant_role_as_the_runtime_defines_it():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"<!-- tenant-role -->\n```yaml\n(.*?)```\n<!-- /tenant-role -->", readme, re.S).group(1)
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant:tenant-demo"}
    assert list(yaml.safe_load_all(block)) == tenant_rbac("tenant-demo", user)
