import json
import subprocess
import sys

import pytest

from k8sgpu.runtime.config import ConfigError, build


@pytest.fixture
def kubeconfig(tmp_path):
    path = tmp_path / "tenant.kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\n")
    return str(path)


def test_flags_beat_environment_beat_file(tmp_path, kubeconfig):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"provider: {{kubeconfig: {kubeconfig}, tenant_namespace: from-file}}\nnode: {{name: a.b}}\n")
    config = build({"config": str(cfg_file), "node_name": "from-flag"}, {"K8SGPU_TENANT_NAMESPACE": "from-env"})
    assert config.node.name == "from-flag" and config.provider.tenant_namespace == "from-env"
    assert config.provider.kubeconfig == kubeconfig


@pytest.mark.parametrize("flags, field", [
    ({"provider_kubeconfig": None}, "--provider-kubeconfig"),
    ({"provider_kubeconfig": "/nonexistent"}, "--provider-kubeconfig"),
    ({"tenant_namespace": "Bad_Name"}, "--tenant-namespace"),
    ({"node_name": "UPPER"}, "--node-name"),
    ({"node_address": "not-an-ip"}, "--node-address"),
    ({"kubelet_port": 70000}, "--kubelet-port"),
    ({"csr_signer": "not a signer"}, "--csr-signer"),
    ({"tls_cert_file": "/etc/hostname"}, "--tls-private-key-file"),
    ({"tls_private_key_file": "/etc/hostname"}, "--tls-cert-file"),
    ({"tls_cert_file": "/nonexistent", "tls_private_key_file": "/etc/hostname"}, "--tls-cert-file"),
    ({"client_ca_file": "/nonexistent"}, "--client-ca-file"),
    ({"health_port": 65536}, "--health-port"),
    ({"node_credentials_secret": "no-slash"}, "--node-credentials-secret"),
    ({"node_credentials_secret": "Ns/Bad_Name"}, "--node-credentials-secret"),
    ({"cert_dir": "/etc/hostname"}, "--cert-dir"),
    ({"health_port": -1}, "--health-port"),
    ({"health_port": 10250}, "--health-port"),
    ({"health_bind_address": "localhost"}, "--health-bind-address"),
])
def test_wrong_values_name_the_field(flags, field, kubeconfig):
    base = {"provider_kubeconfig": kubeconfig, "tenant_namespace": "t"}
    with pytest.raises(ConfigError) as err:
        build({**base, **flags}, {})
    assert err.value.field == field


def test_terraform_outputs_feed_the_config(tmp_path, kubeconfig):
    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps({"node_name": {"value": "gpu.node", "type": "string", "sensitive": False},
                                   "tenant_namespace": {"value": "acme", "type": "string", "sensitive": False}}))
    config = build({"terraform_outputs": str(outputs), "provider_kubeconfig": kubeconfig}, {})
    assert (config.node.name, config.provider.tenant_namespace) == ("gpu.node", "acme")
    outputs.write_text(json.dumps({"node_name": "no-value-wrapper"}))
    with pytest.raises(ConfigError, match="node_name"):
        build({"terraform_outputs": str(outputs), "provider_kubeconfig": kubeconfig, "tenant_namespace": "t"}, {})


def test_cli_exits_non_zero_naming_the_missing_field():
    out = subprocess.run([sys.executable, "-m", "k8sgpu.runtime.main", "start"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert "--provider-kubeconfig: missing" in out.stderr


def test_csr_settings_from_environment_and_outputs(tmp_path, kubeconfig):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"csr_signer": {"value": "aws", "type": "string", "sensitive": False}}))
    config = build({"provider_kubeconfig": kubeconfig, "tenant_namespace": "t", "terraform_outputs": str(outputs)},
                   {"K8SGPU_CSR_SELF_APPROVE": "false"})
    assert config.node.csr_signer == "aws" and config.node.csr_self_approve is False
    with pytest.raises(ConfigError) as err:
        build({"provider_kubeconfig": kubeconfig, "tenant_namespace": "t"}, {"K8SGPU_CSR_SELF_APPROVE": "maybe"})
    assert err.value.field == "K8SGPU_CSR_SELF_APPROVE"


def test_bootstrap_settings_from_terraform_outputs(tmp_path, kubeconfig):
    outputs = tmp_path / "outputs.json"
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    outputs.write_text(json.dumps({
        "cluster_endpoint": {"value": "https://10.0.0.1:6443"}, "cluster_ca_certificate": {"value": ca},
        "bootstrap_token": {"value": "abc.def", "sensitive": True}}))
    config = build({"provider_kubeconfig": kubeconfig, "tenant_namespace": "t", "terraform_outputs": str(outputs)}, {})
    assert (config.local.server, config.local.certificate_authority_data, config.local.bootstrap_token) == \
        ("https://10.0.0.1:6443", ca, "abc.def")


@pytest.mark.parametrize("outputs, field", [
    ({"cluster_endpoint": {"value": "http://plain:8080"}, "bootstrap_token": {"value": "x"}},
     "--terraform-outputs cluster_endpoint"),
    ({"cluster_endpoint": {"value": "https://10.0.0.1"}}, "--terraform-outputs bootstrap_token"),
    ({"cluster_endpoint": {"value": "https://10.0.0.1"}, "bootstrap_token": {"value": "x"},
      "cluster_ca_certificate": {"value": "not pem"}}, "--terraform-outputs cluster_ca_certificate"),
    ({"bootstrap_token": "no value key"}, "--terraform-outputs bootstrap_token"),
])
def test_wrong_bootstrap_outputs_name_the_output(tmp_path, kubeconfig, outputs, field):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    with pytest.raises(ConfigError) as err:
        build({"provider_kubeconfig": kubeconfig, "tenant_namespace": "t", "terraform_outputs": str(path)}, {})
    assert err.value.field == field


ROLE = "arn:aws:iam::123456789012:role/k8sgpu-node"


def test_eks_settings_from_the_deployment_environment_and_terraform_outputs(tmp_path, kubeconfig):
    base = {"provider_kubeconfig": kubeconfig, "tenant_namespace": "t"}
    config = build(base, {"K8SGPU_EKS_CLUSTER_NAME": "prod", "K8SGPU_EKS_ROLE_ARN": ROLE, "AWS_REGION": "eu-west-1"})
    assert (config.local.eks_cluster_name, config.local.eks_role_arn, config.local.region) == (
        "prod", ROLE, "eu-west-1")
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"eks_cluster_name": {"value": "prod"}, "role_arn": {"value": ROLE},
                                   "region": {"value": "us-east-2"}, "cluster_endpoint": {"value": "https://eks.example"}}))
    config = build({**base, "terraform_outputs": str(outputs)}, {})
    assert (config.local.eks_cluster_name, config.local.region, config.local.server) == (
        "prod", "us-east-2", "https://eks.example")  # no bootstrap token needed with an EKS login


@pytest.mark.parametrize("flags, field", [
    ({"eks_cluster": "prod"}, "--eks-role-arn"),
    ({"eks_role_arn": ROLE}, "--eks-cluster"),
    ({"eks_cluster": "prod", "eks_role_arn": "arn:aws:iam::123456789012:user/bob"}, "--eks-role-arn"),
    ({"eks_cluster": "prod", "eks_role_arn": ROLE, "node_name": "n" * 65}, "--node-name"),
    ({"eks_cluster": "prod", "eks_role_arn": ROLE, "kubeconfig": "/etc/hostname"}, "--kubeconfig"),
])
def test_wrong_eks_settings_name_the_flag(flags, field, kubeconfig):
    with pytest.raises(ConfigError) as err:
        build({"provider_kubeconfig": kubeconfig, "tenant_namespace": "t", **flags}, {})
    assert err.value.field == field


def test_shortened_lifetimes_are_bounded(tmp_path, kubeconfig):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("local: {eks_token_lifetime_seconds: 1000}\n")
    with pytest.raises(ConfigError) as err:
        build({"provider_kubeconfig": kubeconfig, "tenant_namespace": "t", "config": str(config_file),
               "eks_cluster": "prod", "eks_role_arn": ROLE}, {})
    assert err.value.field == "local.eks_token_lifetime_seconds"


def test_health_port_from_flag_environment_and_file(tmp_path, kubeconfig):
    base = {"provider_kubeconfig": kubeconfig, "tenant_namespace": "t"}
    default = build(base, {})
    assert default.node.health_port == 10248
    # In a pod the kubelet probes the pod IP and `kubectl port-forward` dials loopback: every interface.
    assert default.resolved_health_bind_address({"POD_IP": "10.1.2.3"}) == "0.0.0.0"
    assert default.resolved_health_bind_address({}) == "127.0.0.1"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("node: {health_port: 18080, health_bind_address: 127.0.0.2}\n")
    from_file = build({**base, "config": str(cfg_file)}, {})
    assert (from_file.node.health_port, from_file.resolved_health_bind_address({"POD_IP": "10.1.2.3"})) == \
        (18080, "127.0.0.2")
    from_env = build({**base, "config": str(cfg_file)}, {"K8SGPU_HEALTH_PORT": "0",
                                                         "K8SGPU_HEALTH_BIND_ADDRESS": "::"})
    assert (from_env.node.health_port, from_env.node.health_bind_address) == (0, "::")
    assert build({**base, "health_port": 9000}, {"K8SGPU_HEALTH_PORT": "0"}).node.health_port == 9000
    with pytest.raises(ConfigError) as err:
        build(base, {"K8SGPU_HEALTH_PORT": "ten"})
    assert err.value.field == "K8SGPU_HEALTH_PORT"


@pytest.mark.parametrize("args, env, message", [
    (["--health-port", "ten"], {}, "argument --health-port: invalid int value"),
    (["--health-port", "70000"], {}, "--health-port: 70000 is not a port"),
    ([], {"K8SGPU_HEALTH_BIND_ADDRESS": "everywhere"}, "--health-bind-address: 'everywhere' is not an IP address"),
])
def test_cli_exits_2_naming_a_bad_health_setting(args, env, message, kubeconfig):
    out = subprocess.run([sys.executable, "-m", "k8sgpu.runtime.main", "start", "--provider-kubeconfig", kubeconfig,
                          "--tenant-namespace", "t", *args], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", **env})
    assert out.returncode == 2
    assert message in out.stderr


def test_help_names_the_health_flags_and_their_environment():
    out = subprocess.run([sys.executable, "-m", "k8sgpu.runtime.main", "start", "--help"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert out.returncode == 0
    for text in ("--health-port", "K8SGPU_HEALTH_PORT", "--health-bind-address", "K8SGPU_HEALTH_BIND_ADDRESS"):
        assert text in out.stdout


def test_default_runtime_class_from_flag_environment_and_file(tmp_path, kubeconfig):
    base = {"provider_kubeconfig": kubeconfig, "tenant_namespace": "t"}
    assert build(base, {}).node.default_runtime_class == ""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("node: {default_runtime_class: from-file}\n")
    assert build({**base, "config": str(cfg_file)}, {}).node.default_runtime_class == "from-file"
    from_env = build({**base, "config": str(cfg_file)}, {"K8SGPU_DEFAULT_RUNTIME_CLASS": "from-env"})
    assert from_env.node.default_runtime_class == "from-env"
    assert build({**base, "default_runtime_class": "flag"}, {"K8SGPU_DEFAULT_RUNTIME_CLASS": "env"}
                 ).node.default_runtime_class == "flag"
    with pytest.raises(ConfigError) as err:
        build({**base, "default_runtime_class": "Not A Class"}, {})
    assert err.value.field == "--default-runtime-class"
