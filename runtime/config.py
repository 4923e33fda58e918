"""The runtime's one typed configuration, built from flags, environment, a file or Terraform outputs.

Nothing else in the runtime reads the environment or files for settings. Every
field has a default and a line saying what it does; `RuntimeConfig.validate`
refuses a wrong value with the field named and what to write instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import yaml

from .eks import ROLE_ARN, SESSION_NAME

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LOG_FORMATS = ("text", "json")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TAINT_KEY = "virtual-kubelet.io/provider"
TAINT_VALUE = "k8sgpu"


class ConfigError(ValueError):
    """A setting is missing or wrong. ``field`` names it as the flag a user would type."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass
class NodeConfig:
    name: str = "k8s.gpu"
    """Name of the virtual node; the runtime authenticates as system:node:<name>."""
    address: str = ""
    """Address kube-apiserver reaches the kubelet API at (InternalIP); empty: the pod IP in-cluster, else 127.0.0.1."""
    kubelet_port: int = 10250
    """Port of the kubelet API, advertised in status.daemonEndpoints."""
    csr_signer: str = "kubernetes.io/kubelet-serving"
    """Signer of the kubelet API's serving certificate: "aws" (EKS: beta.eks.amazonaws.com/app-serving) or a name."""
    csr_self_approve: bool = True
    """Approve the serving certificate's CSR ourselves where RBAC allows; else wait for someone to approve it."""
    tls_cert_file: str = ""
    """Serving certificate of the kubelet API from a file instead of the CSR API (with tls_private_key_file)."""
    tls_private_key_file: str = ""
    """Key of tls_cert_file."""
    client_ca_file: str = ""
    """CA that signs clients of the kubelet API (kube-apiserver's kubelet client certificate); empty: the
    cluster CA of the local kubeconfig or service account."""
    lease_duration_seconds: int = 40
    """Duration of the node Lease in kube-node-lease."""
    lease_renew_seconds: float = 10
    """How often the Lease is renewed."""
    status_update_seconds: float = 60
    """Node status is written on change and at least this often."""
    health_port: int = 10248
    """Plain-HTTP port of /healthz (liveness) and /readyz (readiness), apart from the kubelet API; 10248 is the
    kubelet's healthz port; 0: no health port."""
    deployment: str = ""
    """NAMESPACE/NAME of the Deployment running this runtime (the node module sets it). When the runtime stops
    because that Deployment is being deleted (`terraform destroy`), it first removes what the node made: its
    pods, ConfigMap/Secret copies and Services on the provider, then the Node. Any other stop (a restart, a
    drain, a rollout) leaves everything for the next runtime. Empty: never."""
    default_runtime_class: str = ""
    """GPU offering (a catalog RuntimeClass) for pods bound to the node that name no runtimeClassName (bound by
    nodeName, or by nodeSelector and toleration): admitted, limited and placed as if they named it. Empty: such
    pods are refused (NoRuntimeClass)."""
    health_bind_address: str = ""
    """Address the health port listens on; empty: 0.0.0.0 in a pod ($POD_IP set: kubelet probes come to the
    pod IP, `kubectl port-forward` to loopback), else 127.0.0.1 (a runtime on a workstation opens no port)."""
    log_format: str = "text"
    """How log lines are written to stderr: text (for people) or json (one object a line: ts, level, logger,
    msg, and pod {namespace, name, uid} on lines about a pod)."""


@dataclasses.dataclass
class LocalClusterConfig:
    kubeconfig: str = ""
    """Kubeconfig of the node identity (system:node:<name>) in the user's cluster; empty: bootstrap one."""
    bootstrap_kubeconfig: str = ""
    """Kubeconfig of a bootstrap identity that may request a node client certificate (kubelet TLS
    bootstrapping); empty: server and bootstrap_token, else the in-cluster endpoint with bootstrap_token."""
    server: str = ""
    """API endpoint of the user's cluster, for bootstrapping with bootstrap_token (Terraform output)."""
    certificate_authority_data: str = ""
    """PEM CA of server (Terraform output cluster_ca_certificate)."""
    bootstrap_token: str = ""
    """The bootstrap credential: a kubelet-style bootstrap token `<id>.<secret>` that expires (Terraform output
    bootstrap_token; in a pod K8SGPU_BOOTSTRAP_TOKEN, from the node module's Secret; never logged). Spent once the
    node's first certificate is issued; needed again only when no stored certificate is valid."""
    cert_dir: str = ""
    """Directory of kubelet-client-current.pem, the node's client certificate and key (mode 0600), outside a
    cluster; empty: kept in memory only (a restart needs a new bootstrap token)."""
    node_credentials_secret: str = ""
    """NAMESPACE/NAME of the Secret, read and written by the pod's ServiceAccount, that keeps the node's client
    certificate and key across restarts and failovers (the node module sets it); empty: cert_dir."""
    eks_cluster_name: str = ""
    """EKS cluster to log in to with eks_role_arn (the x-k8s-aws-id of its tokens); empty: no EKS login."""
    eks_role_arn: str = ""
    """IAM role EKS maps to system:node:<name>; assumed with the node name as session name."""
    region: str = ""
    """AWS region of the EKS cluster and of STS; empty: boto3's (AWS_REGION, the profile's)."""
    eks_token_lifetime_seconds: float = 900
    """How long EKS accepts a token after signing; a new one is signed at 14/15 of it."""
    eks_role_session_seconds: int = 3600
    """DurationSeconds of the assumed role's session (900-43200); botocore renews it before it ends."""


@dataclasses.dataclass
class ProviderConfig:
    kubeconfig: str = ""
    """Tenant kubeconfig of the remote GPU cluster (required)."""
    tenant_namespace: str = ""
    """Namespace on the provider where mirrored pods and their objects live (required)."""
    load_balancer_class: str = "k8s.gpu"
    """Services of type LoadBalancer with this loadBalancerClass are published by the provider."""


@dataclasses.dataclass
class LeaderElectionConfig:
    leader_elect: bool = True
    """Campaign for a leader election Lease, so that two or more runtimes serve one node, one at a time. On by
    default where an identity to write the Lease exists (the pod's ServiceAccount, or kubeconfig); with none, off:
    the runtime leads alone."""
    lease_duration_seconds: float = 15.0
    """How long a candidate waits, from the last change of the Lease it saw, before it takes a Lease another holds
    (client-go's LeaseDuration)."""
    renew_deadline_seconds: float = 10.0
    """How long the leader tries to renew before it stops leading and exits (client-go's RenewDeadline)."""
    retry_period_seconds: float = 2.0
    """How often candidates try to take the Lease and the leader renews it (client-go's RetryPeriod)."""
    resource_name: str = ""
    """Name of the election's Lease; empty: the node's name."""
    resource_namespace: str = ""
    """Namespace of the election's Lease; empty: the pod's (its ServiceAccount's namespace file, else
    $POD_NAMESPACE). Required outside a pod."""
    kubeconfig: str = ""
    """Kubeconfig of the identity that writes the election's Lease; empty: the pod's ServiceAccount. Not the node
    identity: NodeRestriction lets a node write only its own Lease in kube-node-lease."""
    identity: str = ""
    """This candidate's holderIdentity; empty: $POD_NAME (a container the kubelet restarts in the same pod is the
    same candidate), else the host name and a random suffix."""


@dataclasses.dataclass
class RuntimeConfig:
    node: NodeConfig = dataclasses.field(default_factory=NodeConfig)
    local: LocalClusterConfig = dataclasses.field(default_factory=LocalClusterConfig)
    provider: ProviderConfig = dataclasses.field(default_factory=ProviderConfig)
    leader_election: LeaderElectionConfig = dataclasses.field(default_factory=LeaderElectionConfig)

    def validate(self) -> RuntimeConfig:
        if not _DNS_SUBDOMAIN.match(self.node.name):
            raise ConfigError("--node-name", f"{self.node.name!r} is not a valid node name: use lower-case "
                                             "letters, digits, '-' and '.', e.g. k8s.gpu")
        if self.node.address:
            try:
                ipaddress.ip_address(self.node.address)
            except ValueError:
                raise ConfigError("--node-address", f"{self.node.address!r} is not an IP address: give the "
                                                    "address kube-apiserver can reach this runtime at") from None
        if not 0 < self.node.kubelet_port < 65536:
            raise ConfigError("--kubelet-port", f"{self.node.kubelet_port} is not a port (1-65535)")
        if not 0 <= self.node.health_port < 65536:
            raise ConfigError("--health-port", f"{self.node.health_port} is not a port (1-65535, or 0: none)")
        if self.node.health_port == self.node.kubelet_port:
            raise ConfigError("--health-port", f"{self.node.health_port} is the kubelet API's port "
                                               "(--kubelet-port): give another, e.g. 10248, or 0 for none")
        if self.node.deployment and not re.match(r"^[a-z0-9-]+/[a-z0-9.-]+$", self.node.deployment):
            raise ConfigError("--deployment", f"{self.node.deployment!r} is not NAMESPACE/NAME of a Deployment")
        if self.node.log_format not in LOG_FORMATS:
            raise ConfigError("--log-format", f"{self.node.log_format!r} is not a log format: give "
                                              f"{' or '.join(LOG_FORMATS)}")
        if self.node.default_runtime_class and not _DNS_SUBDOMAIN.match(self.node.default_runtime_class):
            raise ConfigError("--default-runtime-class", f"{self.node.default_runtime_class!r} is not a RuntimeClass "
                                                         "name: give a catalog entry, e.g. seeweb-nvidia-1xa6000")
        if self.node.health_bind_address:
            try:
                ipaddress.ip_address(self.node.health_bind_address)
            except ValueError:
                raise ConfigError("--health-bind-address",
                                  f"{self.node.health_bind_address!r} is not an IP address: give 0.0.0.0 (every "
                                  "interface), 127.0.0.1 or the pod's address") from None
        if not self.node.csr_signer or not re.match(r"^(aws|[a-z0-9.-]+/[A-Za-z0-9._/-]+)$", self.node.csr_signer):
            raise ConfigError("--csr-signer", f"{self.node.csr_signer!r} is not a signer: write aws (EKS), "
                                              "kubernetes.io/kubelet-serving, or another <domain>/<name>")
        if bool(self.node.tls_cert_file) != bool(self.node.tls_private_key_file):
            raise ConfigError("--tls-cert-file" if not self.node.tls_cert_file else "--tls-private-key-file",
                              "give both --tls-cert-file and --tls-private-key-file, or neither (CSR API)")
        for flag, path in (("--tls-cert-file", self.node.tls_cert_file),
                           ("--tls-private-key-file", self.node.tls_private_key_file),
                           ("--client-ca-file", self.node.client_ca_file)):
            if path and not Path(path).is_file():
                raise ConfigError(flag, f"{path} does not exist")
        if self.node.lease_renew_seconds >= self.node.lease_duration_seconds:
            raise ConfigError("node.lease_renew_seconds", "must be shorter than node.lease_duration_seconds")
        if self.local.bootstrap_kubeconfig and not Path(self.local.bootstrap_kubeconfig).is_file():
            raise ConfigError("--bootstrap-kubeconfig", f"{self.local.bootstrap_kubeconfig} does not exist")
        if self.local.server and not self.local.server.startswith("https://"):
            raise ConfigError("--terraform-outputs cluster_endpoint",
                              f"{self.local.server!r} is not an https:// URL of the cluster's API")
        self._validate_eks()
        if self.local.server and not self.local.bootstrap_token and not self.local.eks_cluster_name:
            raise ConfigError("--terraform-outputs bootstrap_token",
                              "missing: cluster_endpoint needs the bootstrap token to request the node's "
                              "certificate (or give --kubeconfig of the node identity)")
        if self.local.node_credentials_secret and not re.match(r"^[a-z0-9-]+/[a-z0-9.-]+$",
                                                               self.local.node_credentials_secret):
            raise ConfigError("--node-credentials-secret", f"{self.local.node_credentials_secret!r} is not NAMESPACE/"
                                                           "NAME, e.g. k8sgpu/k8sgpu-runtime-node-credentials")
        if self.local.cert_dir and Path(self.local.cert_dir).exists() and not Path(self.local.cert_dir).is_dir():
            raise ConfigError("--cert-dir", f"{self.local.cert_dir} is not a directory")
        if self.local.certificate_authority_data and "BEGIN CERTIFICATE" not in self.local.certificate_authority_data:
            raise ConfigError("--terraform-outputs cluster_ca_certificate", "is not a PEM certificate")
        if self.local.kubeconfig and not Path(self.local.kubeconfig).is_file():
            raise ConfigError("--kubeconfig", f"{self.local.kubeconfig} does not exist; give the kubeconfig of "
                                              "the cluster to join, or none to use the in-cluster configuration")
        if not self.provider.kubeconfig:
            raise ConfigError("--provider-kubeconfig", "missing: give the tenant kubeconfig of the GPU provider "
                                                       "(env K8SGPU_PROVIDER_KUBECONFIG)")
        if not Path(self.provider.kubeconfig).is_file():
            raise ConfigError("--provider-kubeconfig", f"{self.provider.kubeconfig} does not exist")
        if not self.provider.tenant_namespace:
            raise ConfigError("--tenant-namespace", "missing: give your namespace on the GPU provider "
                                                    "(env K8SGPU_TENANT_NAMESPACE)")
        if not _DNS_LABEL.match(self.provider.tenant_namespace):
            raise ConfigError("--tenant-namespace", f"{self.provider.tenant_namespace!r} is not a namespace name "
                                                    "(lower-case letters, digits and '-', at most 63)")
        self._validate_leader_election()
        return self

    def _validate_leader_election(self) -> None:
        le = self.leader_election
        if not le.leader_elect:
            return
        for flag, seconds in (("--leader-elect-lease-duration", le.lease_duration_seconds),
                              ("--leader-elect-renew-deadline", le.renew_deadline_seconds),
                              ("--leader-elect-retry-period", le.retry_period_seconds)):
            if not seconds > 0:
                raise ConfigError(flag, f"{seconds:g} s: must be more than 0")
        if le.renew_deadline_seconds >= le.lease_duration_seconds:
            raise ConfigError("--leader-elect-renew-deadline",
                              f"{le.renew_deadline_seconds:g} s must be shorter than --leader-elect-lease-duration "
                              f"({le.lease_duration_seconds:g} s): a leader must stop before others may take over")
        # client-go's rule: the retry period with its jitter (x 1.2) fits in the renew deadline.
        if le.retry_period_seconds * 1.2 >= le.renew_deadline_seconds:
            raise ConfigError("--leader-elect-retry-period",
                              f"{le.retry_period_seconds:g} s must be shorter than --leader-elect-renew-deadline "
                              f"({le.renew_deadline_seconds:g} s) / 1.2, so the leader tries more than once")
        if le.resource_name and not _DNS_SUBDOMAIN.match(le.resource_name):
            raise ConfigError("--leader-elect-resource-name", f"{le.resource_name!r} is not a Lease name "
                                                              "(lower-case letters, digits, '-' and '.')")
        if not le.resource_namespace:
            raise ConfigError("--leader-elect-resource-namespace",
                              "missing: outside a pod name the namespace of the election's Lease (the runtime's "
                              "own, where --leader-elect-kubeconfig may write Leases), or give --no-leader-elect")
        if not _DNS_LABEL.match(le.resource_namespace):
            raise ConfigError("--leader-elect-resource-namespace",
                              f"{le.resource_namespace!r} is not a namespace name (lower-case letters, digits, '-')")
        if le.kubeconfig and not Path(le.kubeconfig).is_file():
            raise ConfigError("--leader-elect-kubeconfig", f"{le.kubeconfig} does not exist")

    def _validate_eks(self) -> None:
        local = self.local
        if not local.eks_cluster_name and not local.eks_role_arn:
            return
        if not local.eks_cluster_name:
            raise ConfigError("--eks-cluster", "missing: --eks-role-arn logs in to an EKS cluster; name it "
                                               "(Terraform output eks_cluster_name)")
        if not local.eks_role_arn:
            raise ConfigError("--eks-role-arn", "missing: EKS login assumes the node's IAM role; give its ARN "
                                                "(Terraform output role_arn)")
        if not ROLE_ARN.match(local.eks_role_arn):
            raise ConfigError("--eks-role-arn", f"{local.eks_role_arn!r} is not an IAM role ARN, e.g. "
                                                "arn:aws:iam::123456789012:role/k8sgpu-node")
        if local.kubeconfig or local.bootstrap_kubeconfig:
            flag = "--kubeconfig" if local.kubeconfig else "--bootstrap-kubeconfig"
            raise ConfigError(flag, "give either it or the EKS login (--eks-cluster, --eks-role-arn), not both")
        if not SESSION_NAME.match(self.node.name):
            raise ConfigError("--node-name", f"{self.node.name!r} cannot be the role's session name (EKS maps "
                                             "system:node:{{SessionName}}): at most 64 characters")
        if not 10 <= local.eks_token_lifetime_seconds <= 900:
            raise ConfigError("local.eks_token_lifetime_seconds", "must be between 10 and 900 (EKS: 900)")
        if not 900 <= local.eks_role_session_seconds <= 43200:
            raise ConfigError("local.eks_role_session_seconds", "must be between 900 and 43200 (STS's limits)")

    def resolved_address(self, environ: dict[str, str]) -> str:
        return self.node.address or environ.get("POD_IP", "") or "127.0.0.1"

    def resolved_health_bind_address(self, environ: dict[str, str]) -> str:
        return self.node.health_bind_address or ("0.0.0.0" if environ.get("POD_IP") else "127.0.0.1")


# Flag name → (section, field, environment variable)
SETTINGS: dict[str, tuple[str, str, str]] = {
    "kubeconfig": ("local", "kubeconfig", "K8SGPU_KUBECONFIG"),
    "bootstrap_kubeconfig": ("local", "bootstrap_kubeconfig", "K8SGPU_BOOTSTRAP_KUBECONFIG"),
    # No flag: a command line is seen by every process of the machine.
    "bootstrap_token": ("local", "bootstrap_token", "K8SGPU_BOOTSTRAP_TOKEN"),
    "cert_dir": ("local", "cert_dir", "K8SGPU_CERT_DIR"),
    "node_credentials_secret": ("local", "node_credentials_secret", "K8SGPU_NODE_CREDENTIALS_SECRET"),
    "provider_kubeconfig": ("provider", "kubeconfig", "K8SGPU_PROVIDER_KUBECONFIG"),
    "tenant_namespace": ("provider", "tenant_namespace", "K8SGPU_TENANT_NAMESPACE"),
    "node_name": ("node", "name", "K8SGPU_NODE_NAME"),
    "node_address": ("node", "address", "K8SGPU_NODE_ADDRESS"),
    "kubelet_port": ("node", "kubelet_port", "K8SGPU_KUBELET_PORT"),
    "health_port": ("node", "health_port", "K8SGPU_HEALTH_PORT"),
    "health_bind_address": ("node", "health_bind_address", "K8SGPU_HEALTH_BIND_ADDRESS"),
    "log_format": ("node", "log_format", "K8SGPU_LOG_FORMAT"),
    "deployment": ("node", "deployment", "K8SGPU_DEPLOYMENT"),
    "default_runtime_class": ("node", "default_runtime_class", "K8SGPU_DEFAULT_RUNTIME_CLASS"),
    "csr_signer": ("node", "csr_signer", "K8SGPU_CSR_SIGNER"),
    "csr_self_approve": ("node", "csr_self_approve", "K8SGPU_CSR_SELF_APPROVE"),
    "tls_cert_file": ("node", "tls_cert_file", "K8SGPU_TLS_CERT_FILE"),
    "tls_private_key_file": ("node", "tls_private_key_file", "K8SGPU_TLS_PRIVATE_KEY_FILE"),
    "client_ca_file": ("node", "client_ca_file", "K8SGPU_CLIENT_CA_FILE"),
    "eks_cluster": ("local", "eks_cluster_name", "K8SGPU_EKS_CLUSTER_NAME"),
    "eks_role_arn": ("local", "eks_role_arn", "K8SGPU_EKS_ROLE_ARN"),
    "region": ("local", "region", "AWS_REGION"),
    "leader_elect": ("leader_election", "leader_elect", "K8SGPU_LEADER_ELECT"),
    "leader_elect_lease_duration": ("leader_election", "lease_duration_seconds",
                                    "K8SGPU_LEADER_ELECT_LEASE_DURATION"),
    "leader_elect_renew_deadline": ("leader_election", "renew_deadline_seconds",
                                    "K8SGPU_LEADER_ELECT_RENEW_DEADLINE"),
    "leader_elect_retry_period": ("leader_election", "retry_period_seconds", "K8SGPU_LEADER_ELECT_RETRY_PERIOD"),
    "leader_elect_resource_name": ("leader_election", "resource_name", "K8SGPU_LEADER_ELECT_RESOURCE_NAME"),
    "leader_elect_resource_namespace": ("leader_election", "resource_namespace",
                                        "K8SGPU_LEADER_ELECT_RESOURCE_NAMESPACE"),
    "leader_elect_kubeconfig": ("leader_election", "kubeconfig", "K8SGPU_LEADER_ELECT_KUBECONFIG"),
}

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$|^\d+(?:\.\d+)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_seconds(value: str) -> float:
    """Seconds from a number or a Go duration as kube-controller-manager's flags take it: 15, 15s, 500ms, 1m30s."""
    text = value.strip()
    if not _DURATION.match(text):
        raise ValueError(value)
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    return sum(float(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def _set(config: RuntimeConfig, section: str, field: str, value: Any, source: str) -> None:
    target = getattr(config, section)
    kind = type(getattr(target, field))
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            value = value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(source, f"{_shown(value)} is not true or false")
    # A setting is one scalar: a list or mapping (a YAML alias bomb too) is refused before str() could expand it,
    # and a number must be a whole one (int() would cut 10250.7 and fail with OverflowError on .inf).
    if isinstance(value, bool) and kind is not bool or not isinstance(value, str | int | float) or (
            kind is int and isinstance(value, float) and not value.is_integer()):
        raise ConfigError(source, f"{_shown(value)} is not a valid {kind.__name__}")
    if kind is float and isinstance(value, str):
        try:
            value = parse_seconds(value)
        except ValueError:
            raise ConfigError(source, f"{_shown(value)} is not a duration: write seconds, e.g. 15 or 15s") from None
    try:
        setattr(target, field, kind(value))
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(source, f"{_shown(value)} is not a valid {kind.__name__}") from None


def _shown(value: Any) -> str:
    """A setting's value for an error message: its type for a list or mapping, at most 80 characters else."""
    if isinstance(value, list | dict):
        return f"a {'list' if isinstance(value, list) else 'mapping'}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


SECTIONS = ("node", "local", "provider", "leader_election")


def load_file(config: RuntimeConfig, path: str) -> None:
    """A YAML file shaped like the dataclasses: {node: {name: ...}, provider: {...}, local: {...},
    leader_election: {...}}."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("--config", f"{path} is not UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError("--config", f"{path} is nested too deep to be a configuration") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping with sections node, local, provider")
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"--config {section}", f"unknown section; known: {', '.join(SECTIONS)}")
        for key, value in values.items():
            known = {f.name for f in dataclasses.fields(getattr(config, section))}
            if key not in known:
                raise ConfigError(f"--config {section}.{key}", f"unknown setting; known: {', '.join(sorted(known))}")
            _set(config, section, key, value, f"--config {section}.{key}")


# terraform output name → (section, field)
TERRAFORM_OUTPUTS: dict[str, tuple[str, str]] = {
    "node_name": ("node", "name"),
    "tenant_namespace": ("provider", "tenant_namespace"),
    "csr_signer": ("node", "csr_signer"),
    "cluster_endpoint": ("local", "server"),
    "cluster_ca_certificate": ("local", "certificate_authority_data"),
    "bootstrap_token": ("local", "bootstrap_token"),
    "eks_cluster_name": ("local", "eks_cluster_name"),
    "role_arn": ("local", "eks_role_arn"),
    "region": ("local", "region"),
}


def load_terraform_outputs(config: RuntimeConfig, path: str) -> None:
    """The JSON of `terraform output -json`: {name: {"value": ..., "sensitive": ..., "type": ...}}."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError("--terraform-outputs", f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError("--terraform-outputs", f"{path} is not the JSON of `terraform output -json`: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("--terraform-outputs", f"{path} is not the JSON of `terraform output -json`")
    for name, (section, field) in TERRAFORM_OUTPUTS.items():
        if name not in data:
            continue
        entry = data[name]
        if not isinstance(entry, dict) or "value" not in entry:
            raise ConfigError(f"--terraform-outputs {name}", "malformed: expected {\"value\": ...}")
        _set(config, section, field, entry["value"], f"--terraform-outputs {name}")


def resolve_leader_election(config: RuntimeConfig, environ: dict[str, str],
                            service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> None:
    """Fill in what the election takes from where the runtime runs: off with no identity to write its Lease (no
    ServiceAccount, no kubeconfig), the node's name, the pod's namespace, the pod's name as identity."""
    le = config.leader_election
    in_pod = bool(environ.get("KUBERNETES_SERVICE_HOST")) and (service_account_dir / "token").is_file()
    if not le.kubeconfig and not in_pod:
        le.leader_elect = False
    le.resource_name = le.resource_name or config.node.name
    if not le.resource_namespace:
        namespace_file = service_account_dir / "namespace"
        if in_pod and namespace_file.is_file():
            le.resource_namespace = namespace_file.read_text().strip()
        else:
            le.resource_namespace = environ.get("POD_NAMESPACE", "")
    le.identity = le.identity or environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4()}"


def build(flags: dict[str, Any], environ: dict[str, str] | None = None,
          service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> RuntimeConfig:
    """Defaults < config file < Terraform outputs < environment < flags; then the election's defaults from where
    it runs; then validated."""
    environ = dict(os.environ if environ is None else environ)
    config = RuntimeConfig()
    config_file = flags.get("config") or environ.get("K8SGPU_CONFIG")
    if config_file:
        load_file(config, config_file)
    outputs = flags.get("terraform_outputs") or environ.get("K8SGPU_TERRAFORM_OUTPUTS")
    if outputs:
        load_terraform_outputs(config, outputs)
    for flag, (section, field, env) in SETTINGS.items():
        if environ.get(env):
            _set(config, section, field, environ[env], env)
        if flags.get(flag) is not None:
            _set(config, section, field, flags[flag], "--" + flag.replace("_", "-"))
    resolve_leader_election(config, environ, service_account_dir)
    return config.validate()
