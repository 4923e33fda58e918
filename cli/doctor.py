"""`k8sgpu doctor`: checks a cluster before anything is applied, each finding with its evidence and fix.

The generic checks use only the Kubernetes API, as the cluster's admin: what the
node identity may do (SubjectAccessReviews for `system:node:<node>`), what the
runtime's ServiceAccount may do for the leader election, whether
kube-controller-manager signs kubelet serving certificates (a CSR round trip,
deleted afterwards), k3s's egress selector mode, and whether a node of our name
already exists. With the tenant kubeconfig of the provider, as that tenant: whether it may do, in its
namespace, each thing the runtime does there (SelfSubjectAccessReviews of `runtime/rbac.py` `tenant_rules`), and
whether it may read the provider's Nodes (optional) or else has a ResourceQuota to count room from.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid

from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from k8sgpu.runtime.certificates import KUBELET_SERVING, SERVING_USAGES, serving_request
from k8sgpu.runtime.rbac import NODE_READ_RULES, SELF_NODE_CLIENT, election_rules, extra_rules, tenant_rules

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

# What the runtime does as its node, which the Node authorizer must allow: (verb, group, resource, namespace).
NODE_RIGHTS = [
    ("create", "", "nodes", ""),
    ("patch", "", "nodes/status", ""),
    ("update", "coordination.k8s.io", "leases", "kube-node-lease"),
    ("create", "", "events", "default"),
    ("create", "certificates.k8s.io", "certificatesigningrequests", ""),
    ("create", "authentication.k8s.io", "tokenreviews", ""),
    ("create", "authorization.k8s.io", "subjectaccessreviews", ""),
    ("list", "node.k8s.io", "runtimeclasses", ""),
]


@dataclasses.dataclass
class Finding:
    check: str
    status: str
    evidence: str
    fix: str = ""


def _allowed(authz: client.AuthorizationV1Api, user: str, verb: str, group: str, resource: str, namespace: str,
             name: str = "", groups: tuple[str, ...] = ("system:nodes", "system:authenticated")) -> bool:
    resource, _, sub = resource.partition("/")
    review = authz.create_subject_access_review({
        "spec": {"user": user, "groups": list(groups),
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": sub,
                                        "namespace": namespace, "name": name}}})
    return bool(review.status.allowed)


def check_node_rights(api: client.ApiClient, node: str) -> Finding:
    authz = client.AuthorizationV1Api(api)
    user = f"system:node:{node}"
    # Its own Node and Lease only: the Node authorizer checks the name.
    own = ("nodes", "nodes/status", "leases")
    denied = [f"{verb} {resource}" for verb, group, resource, ns in NODE_RIGHTS
              if not _allowed(authz, user, verb, group, resource, ns, node if resource in own else "")]
    if denied:
        return Finding("node-identity", FAIL, f"{user} may not: {', '.join(denied)}",
                       "enable the Node authorizer: kube-apiserver --authorization-mode=Node,RBAC")
    return Finding("node-identity", OK, f"{user} may register its node, renew its Lease, request certificates "
                                        "and review tokens (Node authorizer)")


def check_extra_rbac(api: client.ApiClient, node: str, signer: str) -> Finding:
    authz = client.AuthorizationV1Api(api)
    user = f"system:node:{node}"
    denied = []
    for rule in extra_rules(signer, node):
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                names = rule.get("resourceNames") or [""]
                if not all(_allowed(authz, user, verb, rule["apiGroups"][0], resource, "", n) for n in names):
                    denied.append(f"{verb} {resource}" + (f" {names[0]}" if names[0] else ""))
    if denied:
        return Finding("runtime-rbac", FAIL, f"{user} lacks the runtime's extra rules: {', '.join(denied)}",
                       "apply the node module (`make apply CLOUD=generic`), which grants the ClusterRole "
                       "k8sgpu-runtime bound to the node's user; its rules are listed in the README")
    return Finding("runtime-rbac", OK, f"{user} has the runtime's extra rules (services/status, approval of its "
                                       f"serving certificate from {signer})")


def check_election_rbac(api: client.ApiClient, node: str, namespace: str, service_account: str) -> Finding:
    """The ServiceAccount writes the leader election's Lease (named after the node) in the runtime's namespace."""
    authz = client.AuthorizationV1Api(api)
    user = f"system:serviceaccount:{namespace}:{service_account}"
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
    denied = []
    for rule in election_rules(node):
        for verb in rule["verbs"]:
            name = (rule.get("resourceNames") or [""])[0]
            if not _allowed(authz, user, verb, rule["apiGroups"][0], rule["resources"][0], namespace, name, groups):
                denied.append(f"{verb} leases" + (f" {name}" if name else ""))
    if denied:
        return Finding("leader-election-rbac", FAIL,
                       f"{user} may not, in namespace {namespace}: {', '.join(denied)}; no replica could lead",
                       "apply the node module (`make apply CLOUD=generic`), which grants the Role "
                       f"{service_account}-leader-election; or give --namespace/--service-account of your runtime")
    return Finding("leader-election-rbac", OK, f"{user} may create, read and renew the leader election Lease "
                                               f"{namespace}/{node}")


def check_bootstrap_rbac(api: client.ApiClient, node: str, namespace: str, service_account: str) -> Finding:
    """Kubelet TLS bootstrapping that cannot be turned into another node's identity: the runtime's ServiceAccount
    may not have node client certificates approved (nodeclient approves any node name), and the node renews its own
    (selfnodeclient)."""
    authz = client.AuthorizationV1Api(api)
    account = f"system:serviceaccount:{namespace}:{service_account}"
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
    if _allowed(authz, account, "create", "certificates.k8s.io", "certificatesigningrequests/nodeclient", "", "",
                groups):
        return Finding("bootstrap-rbac", FAIL,
                       f"{account} may create certificatesigningrequests/nodeclient: with its token anyone can have "
                       "a certificate of any system:node:<name> approved",
                       "apply the node module (`make apply CLOUD=generic`): only its expiring bootstrap token's group "
                       "is bound to nodeclient; remove any other binding of the ServiceAccount to it")
    if not _allowed(authz, f"system:node:{node}", "create", "certificates.k8s.io",
                    "certificatesigningrequests/selfnodeclient", ""):
        return Finding("bootstrap-rbac", WARN,
                       f"system:node:{node} may not create certificatesigningrequests/selfnodeclient: renewals of "
                       "its client certificate wait for `kubectl certificate approve`",
                       "apply the node module, which binds "
                       f"{SELF_NODE_CLIENT} to system:node:{node}")
    return Finding("bootstrap-rbac", OK, f"{account} cannot have node certificates approved; system:node:{node} "
                                         "renews its own (selfnodeclient)")


def check_serving_signer(api: client.ApiClient, node: str, signer: str, timeout: float = 30) -> Finding:
    certs = client.CertificatesV1Api(api)
    request = serving_request(node, ["10.0.0.1"], ec.generate_private_key(ec.SECP256R1()))
    name = f"k8sgpu-doctor-{uuid.uuid4().hex[:8]}"
    certs.create_certificate_signing_request({
        "metadata": {"name": name},
        "spec": {"request": base64.b64encode(request).decode(), "signerName": signer, "usages": SERVING_USAGES}})
    try:
        csr = certs.read_certificate_signing_request(name)
        csr.status.conditions = [client.V1CertificateSigningRequestCondition(
            type="Approved", status="True", reason="K8sgpuDoctor", message="k8sgpu doctor: a test of the signer")]
        certs.replace_certificate_signing_request_approval(name, csr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if certs.read_certificate_signing_request(name).status.certificate:
                return Finding("serving-signer", OK, f"a CSR for {signer} was signed ({name}, deleted)")
            time.sleep(0.5)
    finally:
        certs.delete_certificate_signing_request(name)
    return Finding("serving-signer", FAIL, f"an approved CSR for {signer} was not signed within {timeout:.0f}s",
                   "give kube-controller-manager --cluster-signing-cert-file and --cluster-signing-key-file "
                   "(RKE needs them), or use a signer your cluster signs with `--csr-signer`")


def egress_selector_modes(node_args: list[str]) -> set[str]:
    """The --egress-selector-mode values in k3s servers' `k3s.io/node-args` annotations (JSON lists)."""
    modes = set()
    for raw in node_args:
        args = json.loads(raw or "[]")
        for i, arg in enumerate(args):
            if arg.startswith("--egress-selector-mode"):
                modes.add(arg.split("=", 1)[1] if "=" in arg else args[i + 1])
        if not any(a.startswith("--egress-selector-mode") for a in args):
            modes.add("agent (default)")
    return modes


def check_egress_selector(api: client.ApiClient) -> Finding:
    version = client.VersionApi(api).get_code().git_version
    if "k3s" not in version:
        return Finding("k3s-egress-selector", SKIP, f"not k3s (server {version})")
    servers = client.CoreV1Api(api).list_node(label_selector="node-role.kubernetes.io/control-plane").items
    modes = egress_selector_modes([(n.metadata.annotations or {}).get("k3s.io/node-args", "") for n in servers])
    if modes == {"disabled"}:
        return Finding("k3s-egress-selector", OK, f"k3s {version} with --egress-selector-mode=disabled")
    return Finding("k3s-egress-selector", FAIL,
                   f"k3s {version} with egress selector mode {', '.join(sorted(modes)) or 'unknown'}: "
                   "kube-apiserver tunnels to nodes through their k3s agent, which the virtual node has not",
                   "start the k3s servers with --egress-selector-mode=disabled")


def check_node_name(api: client.ApiClient, node: str) -> Finding:
    try:
        existing = client.CoreV1Api(api).read_node(node)
    except client.ApiException as exc:
        if exc.status == 404:
            return Finding("node-name", OK, f"no node named {node} yet")
        raise
    provider_id = existing.spec.provider_id or ""
    if provider_id == f"k8sgpu://{node}":
        return Finding("node-name", OK, f"node {node} exists and is k8sgpu's (providerID {provider_id})")
    return Finding("node-name", FAIL, f"a node named {node} exists with providerID {provider_id or '(none)'}",
                   "choose another name with --node-name (and the node module's node_name)")


def generic(api: client.ApiClient, node: str, signer: str = KUBELET_SERVING, namespace: str = "k8sgpu",
            service_account: str = "k8sgpu-runtime") -> list[Finding]:
    return [check_node_rights(api, node), check_extra_rbac(api, node, signer),
            check_election_rbac(api, node, namespace, service_account),
            check_bootstrap_rbac(api, node, namespace, service_account), check_serving_signer(api, node, signer),
            check_egress_selector(api), check_node_name(api, node)]


def _self_allowed(authz: client.AuthorizationV1Api, verb: str, group: str, resource: str, namespace: str) -> bool:
    resource, _, sub = resource.partition("/")
    review = authz.create_self_subject_access_review({"spec": {"resourceAttributes": {
        "verb": verb, "group": group, "resource": resource, "subresource": sub, "namespace": namespace}}})
    return bool(review.status.allowed)


def _denied(authz: client.AuthorizationV1Api, rules: list[dict], namespace: str) -> list[str]:
    return [f"{verb} {resource}" + (f" ({rule['apiGroups'][0]})" if rule["apiGroups"][0] else "")
            for rule in rules for resource in rule["resources"] for verb in rule["verbs"]
            if not _self_allowed(authz, verb, rule["apiGroups"][0], resource, namespace)]


def check_tenant_rbac(api: client.ApiClient, namespace: str) -> Finding:
    """As the tenant: may it do, in its namespace, everything the runtime does there?"""
    denied = _denied(client.AuthorizationV1Api(api), tenant_rules(), namespace)
    if denied:
        return Finding("provider-tenant-rbac", FAIL, f"the tenant may not, in namespace {namespace}: "
                       f"{', '.join(denied)}",
                       f"ask the provider to bind the tenant to the Role of the README (section \"The provider "
                       f"tenant's rights\") in {namespace}")
    return Finding("provider-tenant-rbac", OK, f"the tenant may, in namespace {namespace}, all the runtime does: "
                                               "pods (exec, attach, port-forward, logs), ConfigMaps, Secrets, "
                                               "Services, Events, ResourceQuotas, pod metrics")


def check_tenant_node_read(api: client.ApiClient, namespace: str) -> Finding:
    """Node read is optional: without it the tenant's ResourceQuotas must bound what the node offers."""
    if not _denied(client.AuthorizationV1Api(api), NODE_READ_RULES, ""):
        return Finding("provider-node-read", OK, "the tenant may read the provider's Nodes: each offering's room "
                                                 "is counted node by node, and the node shows the GPU products")
    quotas = client.CoreV1Api(api).list_namespaced_resource_quota(namespace).items
    hard = {k: v for q in quotas for k, v in ((q.status and q.status.hard) or q.spec.hard or {}).items()}
    if not quotas:
        return Finding("provider-node-read", FAIL,
                       f"the tenant may not read the provider's Nodes (optional) and namespace {namespace} has no "
                       "ResourceQuota: the node would offer no room, and no pod would be scheduled to it",
                       "ask the provider for a ResourceQuota in the tenant namespace (GPUs, pods), or for "
                       "get/list/watch on nodes (a ClusterRole)")
    return Finding("provider-node-read", WARN,
                   f"the tenant may not read the provider's Nodes (optional): capacity and room come from the "
                   f"ResourceQuota(s) of {namespace} ({', '.join(f'{k}={v}' for k, v in sorted(hard.items()))}); "
                   "lost: room node by node (a 2-GPU pod is offered room where two single GPUs are free on two "
                   "nodes, and waits on the provider) and the node's GPU products",
                   "for room node by node, ask the provider for get/list/watch on nodes (a ClusterRole)")


def tenant(api: client.ApiClient, namespace: str) -> list[Finding]:
    return [check_tenant_rbac(api, namespace), check_tenant_node_read(api, namespace)]


def render(findings: list[Finding], output: str) -> str:
    if output == "json":
        return json.dumps([dataclasses.asdict(f) for f in findings], indent=2)
    width = max([22] + [len(f.check) for f in findings])
    lines = []
    for f in findings:
        lines.append(f"{f.status.upper():5s} {f.check:{width}s} {f.evidence}")
        if f.fix:
            lines.append(f"{'':5s} {'':{width}s} fix: {f.fix}")
    return "\n".join(lines)
