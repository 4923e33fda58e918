"""`k8sgpu doctor --cloud aks` against Azure Resource Manager responses served at the SDK's HTTP transport.

Azure has no emulator. The SDK runs whole (its pipeline, bearer-token policy, RequestsTransport); only the socket is
replaced by a requests adapter that answers from tests/unit/fixtures/aks/<cluster>/<operation>.json and records
every request it saw.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import urllib3
import yaml
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import RequestsTransport
from azure.mgmt.containerservice import ContainerServiceClient

from k8sgpu.cli.doctor import FAIL, OK, SKIP, WARN
from k8sgpu.cli.doctor_aks import USER_ROLE, AzureLoginError, aks
from k8sgpu.cli.main import main

FIXTURES = Path(__file__).parent / "fixtures" / "aks"
SUBSCRIPTION = "5f0c8a3e-2b7d-4c1e-9a6f-3d8e1b2c4a70"
RG = "rg-gpu"
API_VERSION = "2026-08-01"  # the fixtures have the shape of this api-version's responses
TOKEN = "recorded-arm-token"
CLUSTER_PATH = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}/providers/Microsoft.ContainerService/managedClusters"


class RecordedArm(requests.adapters.BaseAdapter):
    """management.azure.com for one cluster's recordings; `patch` edits the managed cluster's body first."""

    def __init__(self, cluster: str, patch: Callable[[dict], None] | None = None):
        super().__init__()
        self.cluster, self.patch, self.seen = cluster, patch, []

    def send(self, request, **kwargs):
        url = urllib.parse.urlsplit(request.url)
        self.seen.append({"method": request.method, "host": url.netloc, "path": url.path,
                          "query": dict(urllib.parse.parse_qsl(url.query)),
                          "authorization": request.headers.get("Authorization")})
        prefix = f"{CLUSTER_PATH}/{self.cluster}"
        operation = url.path.removeprefix(prefix).strip("/") or "managedCluster"
        recording = FIXTURES / self.cluster / f"{operation}.json"
        if not url.path.startswith(prefix) or not recording.exists():
            raise AssertionError(f"no recorded response for {request.method} {request.url}")
        recorded = json.loads(recording.read_text())
        if operation == "managedCluster" and self.patch and recorded["status"] == 200:
            self.patch(recorded["body"])
        body = json.dumps(recorded["body"]).encode()
        response = requests.Response()
        response.status_code, response.url, response.request = recorded["status"], request.url, request
        response.headers.update({**recorded["headers"], "Content-Length": str(len(body))})
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers=response.headers,
                                            status=recorded["status"], preload_content=False)
        return response

    def close(self):
        pass


class StaticCredential:
    def __init__(self):
        self.scopes = []

    def get_token(self, *scopes, **kwargs):
        self.scopes.append(scopes)
        return AccessToken(TOKEN, int(time.time()) + 3600)


def recorded_client(arm: RecordedArm, credential=None) -> ContainerServiceClient:
    session = requests.Session()
    session.mount("https://", arm)
    return ContainerServiceClient(credential or StaticCredential(), SUBSCRIPTION,
                                  transport=RequestsTransport(session=session))


def run_doctor(cluster: str, patch=None) -> tuple[dict, RecordedArm]:
    arm = RecordedArm(cluster, patch)
    findings = aks(recorded_client(arm), RG, cluster, "k8s.gpu")
    assert [f.check for f in findings] == ["aks-cluster", "aks-network-plugin", "aks-rbac", "aks-api-server-access",
                                           "aks-credentials"]
    return {f.check: f for f in findings}, arm


def calls(arm: RecordedArm) -> list[tuple[str, str]]:
    return [(s["method"], s["path"].removeprefix(CLUSTER_PATH)) for s in arm.seen]


def assert_no_secrets(findings: dict, cluster: str) -> None:
    """No token, key or certificate of the recorded kubeconfigs (nor the kubeconfigs themselves) in any finding."""
    secrets = []
    for recording in (FIXTURES / cluster).glob("list*Credential.json"):
        for kubeconfig in json.loads(recording.read_text())["body"].get("kubeconfigs", []):
            secrets.append(kubeconfig["value"])
            for entry in yaml.safe_load(base64.b64decode(kubeconfig["value"]))["users"]:
                secrets += [v for k, v in entry["user"].items() if k != "exec"]
    assert secrets
    text = json.dumps([f.__dict__ for f in findings.values()])
    assert [s for s in secrets if s in text] == []


def test_kubenet_cluster_passes_and_explains_the_network_unavailable_taint():
    found, arm = run_doctor("aks-kubenet")
    assert {c: f.status for c, f in found.items()} == dict.fromkeys(found, OK)
    assert found["aks-cluster"].evidence.startswith("aks-kubenet in westeurope: provisioning Succeeded, power Running, "
                                                    "Kubernetes 1.31.7")
    assert "kubernetes.azure.com/managed=false and providerID k8sgpu://k8s.gpu" in found["aks-cluster"].evidence
    network = found["aks-network-plugin"].evidence
    assert network.startswith("kubenet (pod CIDR 10.244.0.0/16): its route controller has no route for k8s.gpu")
    assert "NetworkUnavailable=True and the taint node.kubernetes.io/network-unavailable:NoSchedule" in network
    assert "GPU RuntimeClasses carry that toleration" in network and "network policy none" in network
    assert "no Entra ID integration" in found["aks-rbac"].evidence
    assert found["aks-api-server-access"].evidence.startswith(
        "public API server aks-kubenet-rg-gpu-5f0c8a-a1b2c3d4.hcp.westeurope.azmk8s.io, no authorized IP ranges")
    assert found["aks-credentials"].evidence == (
        "user credentials: client certificate, token; API server "
        "https://aks-kubenet-rg-gpu-5f0c8a-a1b2c3d4.hcp.westeurope.azmk8s.io:443; the AKS root logs in with your "
        "kubeconfig, i.e. these credentials (`az aks get-credentials`), and keeps no credential of the cluster in "
        "its state")
    assert [f.fix for f in found.values()] == [""] * 5
    assert_no_secrets(found, "aks-kubenet")
    # What the SDK sent: the REST API's paths, our api-version, the bearer token of the credential.
    # Never the admin credentials: nothing of k8sgpu needs them.
    assert calls(arm) == [("GET", "/aks-kubenet"), ("POST", "/aks-kubenet/listClusterUserCredential")]
    assert {s["host"] for s in arm.seen} == {"management.azure.com"}
    assert [s["query"] for s in arm.seen] == [{"api-version": API_VERSION}] * 2
    assert [s["authorization"] for s in arm.seen] == [f"Bearer {TOKEN}"] * 2


def test_azure_cni_overlay_with_authorized_ip_ranges():
    found, arm = run_doctor("aks-overlay")
    network = found["aks-network-plugin"]
    assert network.status == OK
    assert network.evidence.startswith("Azure CNI overlay (pod CIDR 192.168.0.0/16, dataplane cilium): node pools' "
                                       "pods get addresses from the private pod CIDR")
    assert "their status.podIP is the provider's" in network.evidence
    assert "NetworkPolicies (network policy cilium) do not reach them" in network.evidence
    access = found["aks-api-server-access"]
    assert access.status == WARN
    assert "open only to the authorized IP ranges 203.0.113.0/24,198.51.100.7/32" in access.evidence
    assert access.fix.endswith("az aks update -g rg-gpu -n aks-overlay --api-server-authorized-ip-ranges "
                               "203.0.113.0/24,198.51.100.7/32,<your IP>/32")
    # Whoever runs it may not list admin credentials; nothing asks for them.
    credentials = found["aks-credentials"]
    assert credentials.status == OK
    assert credentials.evidence.startswith("user credentials: client certificate, token; API server ")
    assert "the AKS root logs in with your kubeconfig" in credentials.evidence
    assert calls(arm)[-1] == ("POST", "/aks-overlay/listClusterUserCredential")


def test_entra_id_cluster_without_local_accounts_feeds_the_aks_root_through_kubelogin():
    found, arm = run_doctor("aks-entra")
    rbac = found["aks-rbac"]
    assert rbac.status == OK
    assert rbac.evidence.startswith("Kubernetes RBAC on, Entra ID integration (managed) with Azure RBAC authorizing "
                                    "Entra ID identities, 1 admin group(s); user credentials are an exec kubeconfig "
                                    "that runs kubelogin (Kubernetes 1.24 and later); local accounts are "
                                    "disabled (no admin credentials, which nothing of k8sgpu needs)")
    credentials = found["aks-credentials"]
    assert credentials.status == OK
    assert credentials.evidence.startswith("user credentials: exec kubelogin; API server ")
    assert "need kubelogin on PATH (`kubelogin convert-kubeconfig -l azurecli`" in credentials.evidence
    assert found["aks-network-plugin"].status == OK
    assert_no_secrets(found, "aks-entra")
    assert calls(arm) == [("GET", "/aks-entra"), ("POST", "/aks-entra/listClusterUserCredential")]


def test_entra_id_cluster_with_local_accounts_needs_no_admin_credentials():
    found, arm = run_doctor("aks-entra-local")
    assert found["aks-rbac"].status == OK
    assert "local accounts enabled" in found["aks-rbac"].evidence
    assert found["aks-credentials"].status == OK
    assert found["aks-credentials"].evidence.startswith("user credentials: exec kubelogin")
    assert ("POST", "/aks-entra-local/listClusterAdminCredential") not in calls(arm)


def test_entra_id_cluster_whose_user_credentials_run_no_exec_plugin_fails_saying_convert_them():
    entra = {"managed": True, "enableAzureRbac": False, "adminGroupObjectIDs": []}
    found, _ = run_doctor("aks-kubenet", lambda body: body["properties"].update(aadProfile=entra))
    credentials = found["aks-credentials"]
    assert credentials.status == FAIL
    assert credentials.evidence.startswith("user credentials: client certificate, token; API server ")
    assert credentials.evidence.endswith("and on this Entra ID cluster they run no exec plugin")
    assert credentials.fix == ("use credentials of Kubernetes 1.24 or later, converted with kubelogin: az aks "
                               "get-credentials -g rg-gpu -n aks-kubenet && kubelogin convert-kubeconfig -l azurecli")


def test_private_cluster_reachable_only_from_its_vnet_and_credentials_refused():
    found, _ = run_doctor("aks-private")
    access = found["aks-api-server-access"]
    assert access.status == WARN
    assert access.evidence.startswith("private cluster: the API server is at "
                                      "aks-private-rg-gpu-5f0c8a-privlink.privatelink.westeurope.azmk8s.io")
    assert "`k8sgpu apply` (Terraform) and kubectl must reach it too" in access.evidence
    assert access.fix.endswith("az aks command invoke -g rg-gpu -n aks-private --command 'kubectl get nodes'")
    assert found["aks-network-plugin"].evidence.startswith("Azure CNI: node pools' pods get addresses from the VNet")
    credentials = found["aks-credentials"]
    assert credentials.status == FAIL
    assert credentials.evidence.startswith("user credentials refused (403 AuthorizationFailed")
    assert f"--role '{USER_ROLE}'" in credentials.fix


def test_private_cluster_with_run_command_disabled_offers_no_command_invoke():
    found, _ = run_doctor("aks-private",
                          lambda body: body["properties"]["apiServerAccessProfile"].update(disableRunCommand=True))
    assert found["aks-api-server-access"].status == WARN
    assert "command invoke" not in found["aks-api-server-access"].fix
    assert "VNet or a network connected to it" in found["aks-api-server-access"].fix


def test_missing_cluster_fails_with_arms_error_and_skips_the_rest():
    arm = RecordedArm("aks-missing")
    findings = aks(recorded_client(arm), RG, "aks-missing", "k8s.gpu")
    assert [(f.check, f.status) for f in findings] == [
        ("aks-cluster", FAIL), ("aks-network-plugin", SKIP), ("aks-rbac", SKIP), ("aks-api-server-access", SKIP),
        ("aks-credentials", SKIP)]
    assert findings[0].evidence == (
        "no AKS cluster aks-missing in resource group rg-gpu (404 ResourceNotFound: The Resource "
        "'Microsoft.ContainerService/managedClusters/aks-missing' under resource group 'rg-gpu' was not found. For "
        "more details please go to https://aka.ms/ARMResourceNotFoundFix)")
    assert "--subscription-id, --resource-group and --cluster-name" in findings[0].fix
    assert calls(arm) == [("GET", "/aks-missing")]


def test_rbac_disabled_fails():
    found, _ = run_doctor("aks-norbac")
    rbac = found["aks-rbac"]
    assert rbac.status == FAIL
    assert rbac.evidence.startswith("Kubernetes RBAC is disabled (enableRBAC false); the runtime's identity "
                                    "system:node:k8s.gpu needs the Node authorizer and Kubernetes RBAC")
    assert rbac.fix == "AKS cannot turn Kubernetes RBAC on in place: use a cluster created with it (the default)"
    assert found["aks-credentials"].status == OK


def test_stopped_cluster_fails_with_az_aks_start():
    found, _ = run_doctor("aks-kubenet", lambda body: body["properties"]["powerState"].update(code="Stopped"))
    assert found["aks-cluster"].status == FAIL
    assert "power Stopped" in found["aks-cluster"].evidence
    assert found["aks-cluster"].fix == "start it: az aks start -g rg-gpu -n aks-kubenet"


def test_upgrading_cluster_warns():
    found, _ = run_doctor("aks-kubenet", lambda body: body["properties"].update(provisioningState="Upgrading"))
    assert found["aks-cluster"].status == WARN
    assert "provisioning Upgrading" in found["aks-cluster"].evidence
    assert "--query provisioningState` says Succeeded" in found["aks-cluster"].fix


def test_bring_your_own_cni_warns_about_its_daemonset():
    def byo(body):
        body["properties"]["networkProfile"] = {"networkPlugin": "none", "serviceCidr": "10.0.0.0/16"}

    found, _ = run_doctor("aks-kubenet", byo)
    network = found["aks-network-plugin"]
    assert network.status == WARN
    assert network.evidence.startswith("no CNI installed by AKS (bring your own)")
    assert "nodeAffinity excluding type=virtual-kubelet" in network.fix


class NoCredential:
    def get_token(self, *scopes, **kwargs):
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token from the included "
                                        "credentials.")


def test_no_azure_credential_is_an_error_naming_what_to_set():
    arm = RecordedArm("aks-kubenet")
    with pytest.raises(AzureLoginError, match="set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"):
        aks(recorded_client(arm, NoCredential()), RG, "aks-kubenet", "k8s.gpu")
    assert arm.seen == []


def aks_argv(cluster: str, *extra: str) -> list[str]:
    return ["doctor", "--cloud", "aks", "--subscription-id", SUBSCRIPTION, "--resource-group", RG,
            "--cluster-name", cluster, *extra]


def test_cli_prints_json_findings_and_exits_1_on_a_failure(capsys):
    asked = []

    def client_for(subscription_id):
        asked.append(subscription_id)
        return recorded_client(RecordedArm("aks-private"))

    assert main(aks_argv("aks-private", "-o", "json"), aks_client=client_for) == 1
    out = json.loads(capsys.readouterr().out)
    assert asked == [SUBSCRIPTION]
    assert [(f["check"], f["status"]) for f in out] == [
        ("aks-cluster", OK), ("aks-network-plugin", OK), ("aks-rbac", OK), ("aks-api-server-access", WARN),
        ("aks-credentials", FAIL)]
    assert f"--role '{USER_ROLE}'" in out[4]["fix"]


def test_cli_table_exits_0_when_nothing_blocks(capsys, monkeypatch):
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    argv = ["doctor", "--cloud", "aks", "--resource-group", RG, "--cluster-name", "aks-overlay"]
    assert main(argv, aks_client=lambda sub: recorded_client(RecordedArm("aks-overlay"))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("OK    aks-cluster            aks-overlay in westeurope")
    assert [line.split()[:2] for line in lines if not line.startswith(" ")] == [
        ["OK", "aks-cluster"], ["OK", "aks-network-plugin"], ["OK", "aks-rbac"], ["WARN", "aks-api-server-access"],
        ["OK", "aks-credentials"]]
    assert any(line.strip().startswith("fix: run from an address in those ranges") for line in lines)


@pytest.mark.parametrize("missing", ["--resource-group", "--cluster-name", "--subscription-id"])
def test_cli_names_a_missing_aks_flag(missing, capsys, monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    argv = aks_argv("aks-kubenet")
    del argv[argv.index(missing):argv.index(missing) + 2]
    with pytest.raises(SystemExit) as exited:
        main(argv, aks_client=lambda sub: pytest.fail("no client may be built without the flags"))
    assert exited.value.code == 2
    assert f"k8sgpu doctor: error: --cloud aks needs {missing}" in capsys.readouterr().err


def test_cli_without_azure_credentials_prints_one_line_and_exits_1(capsys):
    def client_for(subscription_id):
        return recorded_client(RecordedArm("aks-kubenet"), NoCredential())

    assert main(aks_argv("aks-kubenet"), aks_client=client_for) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: no Azure credential gave a token for Azure Resource Manager: set "
                                   "AZURE_TENANT_ID")
    assert "Traceback" not in captured.err and len(captured.err.splitlines()) == 1
