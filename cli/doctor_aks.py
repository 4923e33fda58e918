"""`k8sgpu doctor --cloud aks`: what Azure Resource Manager says of an AKS cluster, before anything is applied.

Reads the managed cluster and asks for its user credentials with
azure-mgmt-containerservice; it never talks to the cluster's own API (`--cloud
generic` does, with the credentials found here). Each finding ties a setting to
what it means for the virtual node and for the AKS Terraform root, which logs in
with the caller's kubeconfig made from those user credentials.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import yaml
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from k8sgpu.cli.doctor import FAIL, OK, SKIP, WARN, Finding

if TYPE_CHECKING:
    from azure.mgmt.containerservice import ContainerServiceClient
    from azure.mgmt.containerservice.models import ManagedCluster, ManagedClusterProperties

USER_ROLE = "Azure Kubernetes Service Cluster User Role"
NETWORK_UNAVAILABLE = "node.kubernetes.io/network-unavailable:NoSchedule"
CHECKS = ("aks-cluster", "aks-network-plugin", "aks-rbac", "aks-api-server-access", "aks-credentials")


class AzureLoginError(Exception):
    """No Azure credential gave a token, or Azure Resource Manager refused it."""


@dataclasses.dataclass
class Credentials:
    """What listClusterUserCredential gave: the kinds of user entries and API servers, or Azure's refusal."""

    kinds: list[str] = dataclasses.field(default_factory=list)
    servers: list[str] = dataclasses.field(default_factory=list)
    error: HttpResponseError | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"user credentials refused ({_arm_error(self.error)})"
        return f"user credentials: {', '.join(self.kinds) or 'no user entry'}"


def aks(client: ContainerServiceClient, resource_group: str, cluster_name: str, node_name: str) -> list[Finding]:
    try:
        return _findings(client, resource_group, cluster_name, node_name)
    except ClientAuthenticationError as exc:
        raise AzureLoginError(_login_message(exc)) from exc


def _findings(client: ContainerServiceClient, rg: str, name: str, node: str) -> list[Finding]:
    try:
        cluster = client.managed_clusters.get(rg, name)
    except ClientAuthenticationError:
        raise
    except HttpResponseError as exc:
        return [_unreadable(exc, rg, name),
                *(Finding(check, SKIP, "the cluster could not be read") for check in CHECKS[1:])]
    props = cluster.properties
    return [check_cluster(cluster, rg, node), check_network_plugin(props, rg, name, node), check_rbac(props, node),
            check_api_server_access(props, rg, name), check_credentials(client, cluster, rg)]


def _value(setting) -> str | None:
    """A setting as Azure wrote it: the SDK turns known values into str enums, whose format() is their name."""
    return getattr(setting, "value", setting)


def _arm_error(exc: HttpResponseError) -> str:
    code = exc.error.code if exc.error else exc.reason
    message = exc.error.message if exc.error else ""
    return f"{exc.status_code} {code}" + (f": {message}" if message else "")


def _login_message(exc: ClientAuthenticationError) -> str:
    if exc.status_code:
        return (f"Azure Resource Manager refused the credential ({_arm_error(exc)}); check that it belongs to the "
                "subscription's tenant (AZURE_TENANT_ID)")
    return ("no Azure credential gave a token for Azure Resource Manager: set AZURE_TENANT_ID, AZURE_CLIENT_ID and "
            "AZURE_CLIENT_SECRET (a service principal), run `az login`, or run where a managed or workload identity "
            "is assigned; --debug shows what each credential said")


def _unreadable(exc: HttpResponseError, rg: str, name: str) -> Finding:
    if exc.status_code == 404:
        return Finding("aks-cluster", FAIL, f"no AKS cluster {name} in resource group {rg} ({_arm_error(exc)})",
                       "check --subscription-id, --resource-group and --cluster-name; `az aks list -o table` lists "
                       "the clusters the identity can see")
    if exc.status_code == 403:
        return Finding("aks-cluster", FAIL, f"may not read the cluster {name} ({_arm_error(exc)})",
                       "grant the identity running doctor read access to the cluster (Reader on it or on its "
                       "resource group)")
    return Finding("aks-cluster", FAIL, f"reading the cluster {name} failed ({_arm_error(exc)})",
                   "run again; with --debug the full response is shown")


def check_cluster(cluster: ManagedCluster, rg: str, node: str) -> Finding:
    props = cluster.properties
    state = _value(props.provisioning_state)
    power = _value(props.power_state.code) if props.power_state else "unknown"
    version = props.current_kubernetes_version or props.kubernetes_version
    evidence = (f"{cluster.name} in {cluster.location}: provisioning {state}, power {power}, "
                f"Kubernetes {version}")
    if power == "Stopped":
        return Finding("aks-cluster", FAIL, evidence, f"start it: az aks start -g {rg} -n {cluster.name}")
    if state == "Failed":
        return Finding("aks-cluster", FAIL, evidence,
                       "the cluster's last operation failed: see its activity log and repair it before installing")
    if state != "Succeeded":
        return Finding("aks-cluster", WARN, evidence + " (an operation is running)",
                       f"wait until `az aks show -g {rg} -n {cluster.name} --query provisioningState` says Succeeded")
    return Finding("aks-cluster", OK, f"{evidence}; node {node} will carry kubernetes.azure.com/managed=false and "
                                      f"providerID k8sgpu://{node}, which mark it unmanaged for Azure")


def check_network_plugin(props: ManagedClusterProperties, rg: str, name: str, node: str) -> Finding:
    network = props.network_profile
    plugin = _value(network.network_plugin) if network else None
    if not plugin:
        return Finding("aks-network-plugin", WARN, "the cluster reports no network plugin",
                       f"look at `az aks show -g {rg} -n {name} --query networkProfile`")
    policy = _value(network.network_policy) or "none"
    remote = (f"pods bound to {node} get no address from this cluster's network: they run on the GPU provider, "
              "their status.podIP is the provider's, and this cluster's NetworkPolicies "
              f"(network policy {policy}) do not reach them; a LoadBalancer Service of loadBalancerClass k8s.gpu "
              "is published by the provider")
    if plugin == "kubenet":
        return Finding("aks-network-plugin", OK,
                       f"kubenet (pod CIDR {network.pod_cidr}): its route controller has no route for {node}, so "
                       f"the node gets NetworkUnavailable=True and the taint {NETWORK_UNAVAILABLE}; the AKS root's "
                       "GPU RuntimeClasses carry that toleration (module aks output `tolerations`), so pods naming "
                       f"them still schedule on it. {remote}")
    if plugin == "azure":
        if _value(network.network_plugin_mode) == "overlay":
            dataplane = _value(network.network_dataplane) or "azure"
            kind = (f"Azure CNI overlay (pod CIDR {network.pod_cidr}, dataplane {dataplane})"
                    ": node pools' pods get addresses from the private pod CIDR, routed by Azure")
        else:
            kind = "Azure CNI: node pools' pods get addresses from the VNet"
        return Finding("aks-network-plugin", OK,
                       f"{kind}; the AKS root's RuntimeClasses tolerate {NETWORK_UNAVAILABLE} either way. {remote}")
    if plugin == "none":
        return Finding("aks-network-plugin", WARN,
                       f"no CNI installed by AKS (bring your own): what your CNI does with a node it does not run "
                       f"on decides whether {node} gets tainted, and doctor cannot see it. {remote}",
                       "make sure the CNI's DaemonSet does not tolerate every taint, or give it a nodeAffinity "
                       f"excluding type=virtual-kubelet: a pod bound to {node} runs on the GPU provider")
    return Finding("aks-network-plugin", WARN, f"network plugin {plugin}, which doctor does not know",
                   "check what the plugin does with a node that runs no agent of it")


def check_rbac(props: ManagedClusterProperties, node: str) -> Finding:
    needs = (f"the runtime's identity system:node:{node} needs the Node authorizer and Kubernetes RBAC "
             "(ClusterRole k8sgpu-runtime); `k8sgpu doctor --cloud generic` checks both inside the cluster")
    if props.enable_rbac is False:
        return Finding("aks-rbac", FAIL, f"Kubernetes RBAC is disabled (enableRBAC false); {needs}",
                       "AKS cannot turn Kubernetes RBAC on in place: use a cluster created with it (the default)")
    aad = props.aad_profile
    if aad is None:
        return Finding("aks-rbac", OK, f"Kubernetes RBAC on, no Entra ID integration (local accounts); {needs}")
    authz = "Azure RBAC" if aad.enable_azure_rbac else "Kubernetes RBAC"
    entra = (f"Kubernetes RBAC on, Entra ID integration ({'managed' if aad.managed else 'legacy'}) with {authz} "
             f"authorizing Entra ID identities, {len(aad.admin_group_object_i_ds or [])} admin group(s); user "
             "credentials are an exec kubeconfig that runs kubelogin (Kubernetes 1.24 and later)")
    if props.disable_local_accounts:
        return Finding("aks-rbac", OK, f"{entra}; local accounts are disabled (no admin credentials, which nothing "
                                       f"of k8sgpu needs); {needs}")
    return Finding("aks-rbac", OK, f"{entra}; local accounts enabled; {needs}")


def check_api_server_access(props: ManagedClusterProperties, rg: str, name: str) -> Finding:
    access = props.api_server_access_profile
    inside = "the runtime runs inside the cluster, but `k8sgpu apply` (Terraform) and kubectl must reach it too"
    vnet = ", API server VNet integration" if access and access.enable_vnet_integration else ""
    if access and access.enable_private_cluster:
        fix = ("run `k8sgpu apply` and `doctor --cloud generic` from a machine in the cluster's VNet or a network "
               "connected to it (peering, VPN, ExpressRoute, a jumpbox)")
        if not access.disable_run_command:
            fix += f"; for a one-off kubectl: az aks command invoke -g {rg} -n {name} --command 'kubectl get nodes'"
        return Finding("aks-api-server-access", WARN,
                       f"private cluster: the API server is at {props.private_fqdn}{vnet}, reachable from the "
                       f"cluster's VNet; {inside}", fix)
    if access and access.authorized_ip_ranges:
        ranges = ",".join(access.authorized_ip_ranges)
        return Finding("aks-api-server-access", WARN,
                       f"public API server {props.fqdn}{vnet}, open only to the authorized IP ranges {ranges}; "
                       f"{inside}, from an address in those ranges",
                       "run from an address in those ranges, or add yours: "
                       f"az aks update -g {rg} -n {name} --api-server-authorized-ip-ranges {ranges},<your IP>/32")
    return Finding("aks-api-server-access", OK,
                   f"public API server {props.fqdn}{vnet}, no authorized IP ranges: Terraform and kubectl reach it "
                   "from any address")


def list_credentials(client: ContainerServiceClient, rg: str, name: str) -> Credentials:
    """The cluster's user credentials (listClusterUserCredential), described without their secrets."""
    try:
        result = client.managed_clusters.list_cluster_user_credentials(rg, name)
    except ClientAuthenticationError:
        raise
    except HttpResponseError as exc:
        return Credentials(error=exc)
    found = Credentials()
    for kubeconfig in result.kubeconfigs or []:
        config = yaml.safe_load(kubeconfig.value) or {}
        found.servers += [c["cluster"]["server"] for c in config.get("clusters") or []]
        for entry in config.get("users") or []:
            found.kinds += [k for k in kubeconfig_user_kinds(entry.get("user") or {}) if k not in found.kinds]
    return found


def kubeconfig_user_kinds(user: dict) -> list[str]:
    """How a kubeconfig user entry authenticates, named without any of its secrets."""
    kinds = []
    if "client-certificate-data" in user or "client-certificate" in user:
        kinds.append("client certificate")
    if "token" in user:
        kinds.append("token")
    if "exec" in user:
        kinds.append(f"exec {user['exec'].get('command', '?')}")
    if "auth-provider" in user:
        kinds.append(f"auth-provider {user['auth-provider'].get('name', '?')}")
    return kinds


def check_credentials(client: ContainerServiceClient, cluster: ManagedCluster, rg: str) -> Finding:
    """The user credentials, which the AKS root logs in with (the caller's kubeconfig); doctor never asks for the
    admin ones, which nothing of k8sgpu needs."""
    props, name = cluster.properties, cluster.name
    user = list_credentials(client, rg, name)
    servers = sorted(set(user.servers))
    evidence = "; ".join([user.describe()] + ([f"API server {', '.join(servers)}"] if servers else []))
    why = ("the AKS root logs in with your kubeconfig, i.e. these credentials (`az aks get-credentials`), and keeps "
           "no credential of the cluster in its state")
    if user.error is not None:
        if user.error.status_code == 403:
            fix = (f"grant '{USER_ROLE}' on the cluster to the identity that runs doctor and `k8sgpu apply`: "
                   f"az role assignment create --assignee <its object id> --role '{USER_ROLE}' --scope {cluster.id}")
        else:
            fix = "Azure refused the user credentials: see its message; run again with --debug for the response"
        return Finding("aks-credentials", FAIL, f"{evidence}; {why}", fix)
    if props.aad_profile is not None:
        if not any(kind.startswith("exec") for kind in user.kinds):
            return Finding("aks-credentials", FAIL, f"{evidence}; {why}, and on this Entra ID cluster they run no "
                                                    "exec plugin",
                           "use credentials of Kubernetes 1.24 or later, converted with kubelogin: az aks "
                           f"get-credentials -g {rg} -n {name} && kubelogin convert-kubeconfig -l azurecli")
        return Finding("aks-credentials", OK,
                       f"{evidence}; {why}: on this Entra ID cluster they run kubelogin, so Terraform and kubectl "
                       "need kubelogin on PATH (`kubelogin convert-kubeconfig -l azurecli`; in a pipeline -l spn, msi "
                       "or workloadidentity) and an Entra ID identity that may create namespaces, RBAC and "
                       "RuntimeClasses (an admin group, or an Azure RBAC role)")
    if not user.kinds:
        return Finding("aks-credentials", FAIL, f"{evidence}; {why}, and they carry no user entry",
                       "Azure returned a kubeconfig without a user: see `az aks get-credentials` for this cluster")
    return Finding("aks-credentials", OK, f"{evidence}; {why}")
