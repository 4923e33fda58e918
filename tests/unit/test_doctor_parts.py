from k8sgpu.cli.doctor import FAIL, Finding, egress_selector_modes, render


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
