"""What the runtime needs beyond its node identity (system:node:<name> in system:nodes).

The Node authorizer already lets a node register itself, renew its Lease, read
and write its pods' status, delete its pods, read the Secrets and ConfigMaps its
pods use, read RuntimeClasses and Services, and record Events. Publishing a
LoadBalancer Service's address is not a kubelet's job, and nothing lets a node
approve its own serving certificate (kube-controller-manager never auto-approves
kubernetes.io/kubelet-serving), and a node may not delete its own Node (the
runtime does when its Deployment is deleted: `terraform destroy`), so those are
the extra rules. The Terraform node module grants exactly these rules.

Leader election (two replicas for one node) is not the node's work: its Lease lives in the runtime's own
namespace and is written by the runtime's ServiceAccount (`election_rules`), because NodeRestriction lets a node
write only its own Lease in kube-node-lease, and because the ServiceAccount is there for every way the node
identity is had (bootstrap, kubeconfig, EKS login). The node module grants it in a Role of that namespace.
"""

from __future__ import annotations

KUBELET_SERVING = "kubernetes.io/kubelet-serving"


def extra_rules(signer: str = KUBELET_SERVING, node: str = "k8s.gpu") -> list[dict]:
    """The rules beyond the node identity; ``signer`` is the serving certificate's signer name."""
    return [
        {
            # Write the provider's hostname into status.loadBalancer of Services of class k8s.gpu.
            "apiGroups": [""],
            "resources": ["services/status"],
            "verbs": ["get", "patch", "update"],
        },
        {
            # Approve the node's own serving-certificate CSR (`--csr-self-approve`, on by default).
            "apiGroups": ["certificates.k8s.io"],
            "resources": ["certificatesigningrequests/approval"],
            "verbs": ["update"],
        },
        {
            # ... for this signer only: the approval subresource alone approves nothing.
            "apiGroups": ["certificates.k8s.io"],
            "resources": ["signers"],
            "resourceNames": [signer],
            "verbs": ["approve"],
        },
        {
            # Delete its own Node when decommissioned (its Deployment deleted), after releasing the provider.
            "apiGroups": [""],
            "resources": ["nodes"],
            "resourceNames": [node],
            "verbs": ["delete"],
        },
    ]


EXTRA_RULES: list[dict] = extra_rules()


def election_rules(lease: str = "k8s.gpu") -> list[dict]:
    """What the runtime's ServiceAccount needs, in the runtime's namespace, for the election's Lease ``lease``
    (by default named after the node)."""
    return [
        {
            # Read and renew (or take over, or release) the election's Lease: this one only.
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease],
            "verbs": ["get", "update"],
        },
        {
            # Create it the first time; RBAC cannot restrict create by name (the name is not known before).
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["create"],
        },
    ]


ELECTION_RULES: list[dict] = election_rules()


def election_rbac(namespace: str, service_account: str, lease: str = "k8s.gpu",
                  name: str = "k8sgpu-runtime-leader-election") -> list[dict]:
    """A Role with the election's rules in ``namespace`` and its binding to the ServiceAccount."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": namespace}, "rules": election_rules(lease)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]},
    ]


def extra_rbac(node_name: str = "k8s.gpu", name: str = "k8sgpu-runtime", signer: str = KUBELET_SERVING) -> list[dict]:
    """A ClusterRole with the extra rules and its binding to the node's user."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": extra_rules(signer, node_name)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{node_name}"}]},
    ]


# Kubelet TLS bootstrapping, as the node module sets it up (generic and AKS clusters).
BOOTSTRAPPER = "system:node-bootstrapper"
NODE_CLIENT = "system:certificates.k8s.io:certificatesigningrequests:nodeclient"
SELF_NODE_CLIENT = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"


def bootstrap_group(name: str = "k8sgpu-runtime") -> str:
    """The extra group of the node module's bootstrap token (auth-extra-groups): the only subject bound to
    system:node-bootstrapper and nodeclient. The runtime's ServiceAccount is bound to neither."""
    return f"system:bootstrappers:k8sgpu:{name}"


def spend_rules(token_id: str) -> list[dict]:
    """What the bootstrap token may do besides requesting the first certificate, in kube-system: mark its own
    Secret spent once that certificate is issued (used once, as a kubelet's)."""
    return [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"bootstrap-token-{token_id}"],
             "verbs": ["patch"]}]


def credentials_rules(secret: str = "k8sgpu-runtime-node-credentials") -> list[dict]:
    """What the runtime's ServiceAccount may do with the Secret that keeps the node's certificate and key, in its
    namespace: that Secret only (Terraform creates it, since create cannot be limited by name)."""
    return [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret],
             "verbs": ["get", "patch", "update"]}]


def bootstrap_rbac(node_name: str = "k8s.gpu", name: str = "k8sgpu-runtime") -> list[dict]:
    """The bindings of kubelet TLS bootstrapping: the bootstrap token's group may request a node client
    certificate (approved by kube-controller-manager through nodeclient), and the node itself may renew its own
    (selfnodeclient, which approves only a requester's own name)."""
    def binding(suffix: str, role: str, subject: dict) -> dict:
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{name}-{suffix}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [subject]}
    group = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": bootstrap_group(name)}
    node = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{node_name}"}
    return [binding("bootstrapper", BOOTSTRAPPER, group), binding("nodeclient", NODE_CLIENT, group),
            binding("selfnodeclient", SELF_NODE_CLIENT, node)]


# The provider side. The tenant kubeconfig needs rights in its namespace only: `tenant_rules` are what the runtime
# does there, verb by verb. Reading the provider's Nodes (cluster-scoped) is optional: with it each offering's room
# is counted node by node (GPUs of one product on one node) and the node shows the provider's GPU products; without
# it capacity and room come from the tenant's ResourceQuotas (runtime/placement.py).

def tenant_rules() -> list[dict]:
    """The Role the tenant kubeconfig needs in its namespace on the provider, and no more."""
    return [
        {
            # Mirrors: listed and watched (this node's, and every tenant pod for the room they take), created,
            # their labels and annotations patched, deleted (with a UID precondition).
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["list", "watch", "create", "patch", "delete"],
        },
        {
            # kubectl logs.
            "apiGroups": [""],
            "resources": ["pods/log"],
            "verbs": ["get"],
        },
        {
            # kubectl exec, attach, port-forward over WebSocket: a GET, authorized as `get`; kube-apiserver 1.35
            # checks `create` as well (AuthorizePodWebsocketUpgradeCreatePermission).
            "apiGroups": [""],
            "resources": ["pods/exec", "pods/attach", "pods/portforward"],
            "verbs": ["get", "create"],
        },
        {
            # Copies of the ConfigMaps and Secrets the pods use: listed and watched, created, replaced, deleted.
            "apiGroups": [""],
            "resources": ["configmaps", "secrets"],
            "verbs": ["list", "watch", "create", "update", "delete"],
        },
        {
            # LoadBalancer Services of class k8s.gpu: the provider publishes them and writes their hostname.
            "apiGroups": [""],
            "resources": ["services"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        },
        {
            # The provider's Events about the mirrors (copied to the local pods), and the tenant's quotas (room).
            "apiGroups": [""],
            "resources": ["events", "resourcequotas"],
            "verbs": ["list", "watch"],
        },
        {
            # CPU and memory of the mirrors for /stats/summary and kubectl top (optional: without it, no figures).
            "apiGroups": ["metrics.k8s.io"],
            "resources": ["pods"],
            "verbs": ["list"],
        },
    ]


TENANT_RULES: list[dict] = tenant_rules()

# Optional, cluster-scoped: room node by node and the GPU products (a ClusterRole; the runtime works without it).
NODE_READ_RULES: list[dict] = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]


def tenant_rbac(namespace: str, subject: dict, name: str = "k8sgpu-tenant") -> list[dict]:
    """The tenant's Role in its ``namespace`` on the provider and its binding to ``subject`` (an RBAC subject)."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": namespace}, "rules": tenant_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [subject]},
    ]


def node_read_rbac(subject: dict, name: str = "k8sgpu-tenant-node-reader") -> list[dict]:
    """The optional ClusterRole that lets the tenant read the provider's Nodes, and its binding to ``subject``."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": NODE_READ_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [subject]},
    ]


# The serving certificate's approval, bounded by content. RBAC lets the node approve any CSR of its signer
# (`certificatesigningrequests/approval` update, `signers` approve), whoever asked for it and whatever name it
# carries; kube-controller-manager's kubelet-serving signer then signs any CN=system:node:<anything>. A
# ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, kube-apiserver >= 1.30) refuses the node's approval
# unless the CSR is its own (spec.username, set by kube-apiserver: a node can create CSRs only as itself), of its
# signer, and for exactly the subject O=system:nodes, CN=system:node:<node> (UTF8String, as the runtime writes it).
# CEL has no base64 or PEM functions, so the policy decodes the request itself: spec.request is the base64 of the
# PEM; its first bytes are decoded, the PEM must start with its BEGIN line and hold base64 only, and the DER's
# CertificationRequestInfo must begin with version 0 and that exact subject (lengths included: no further name).

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ASCII = "".join(chr(c) for c in range(32, 127))
_PEM_PREFIX = 600   # PEM bytes decoded: enough for the header line and a subject of the longest node name
_DER_PREFIX = 400   # DER bytes decoded: the two outer headers (<= 8) and version + subject (<= 320)


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decode(source: str, count: str) -> str:
    """CEL: the first ``count`` bytes (ints) of the base64 string ``source``."""
    def sextet(k: int) -> str:
        return f"variables.b64.indexOf({source}.charAt(j / 3 * 4 + {k}))"
    return (f"variables.idx.filter(j, j < {count}).map(j, j % 3 == 0 ? {sextet(0)} * 4 + {sextet(1)} / 16 : "
            f"j % 3 == 1 ? ({sextet(1)} % 16) * 16 + {sextet(2)} / 4 : ({sextet(2)} % 4) * 64 + {sextet(3)})")


def _der_length(x: str) -> str:
    return f"({x} < 128 ? [{x}] : {x} < 256 ? [129, {x}] : [130, {x} / 256, {x} % 256])"


def _der(tag: int, content: str) -> str:
    return f"[{tag}] + {_der_length(f'size({content})')} + {content}"


# O=system:nodes as one RDN: SET { SEQUENCE { OID 2.5.4.10, UTF8String "system:nodes" } }.
_ORGANIZATION_RDN = [49, 21, 48, 19, 6, 3, 85, 4, 10, 12, 12, *b"system:nodes"]


def serving_approval_policy(node_name: str = "k8s.gpu", signer: str = KUBELET_SERVING,
                            name: str = "k8sgpu-runtime") -> list[dict]:
    """The ValidatingAdmissionPolicy and its binding that let system:node:<node_name> approve only its own serving
    CSR: requested by itself, of ``signer``, for subject O=system:nodes, CN=system:node:<node_name>."""
    user = f"system:node:{node_name}"
    variables = [
        ("idx", "[" + ", ".join(str(i) for i in range(_PEM_PREFIX)) + "]"),
        ("b64", _cel_string(_B64)),
        ("ascii", _cel_string(_ASCII)),
        ("request", "string(object.spec.request)"),
        ("pemBytes", _decode("variables.request",
                             f"(size(variables.request) / 4 * 3 - 3 < {_PEM_PREFIX} ? "
                             f"size(variables.request) / 4 * 3 - 3 : {_PEM_PREFIX})")),
        ("pem", "variables.pemBytes.map(b, b == 10 ? '\\n' : b >= 32 && b < 127 ? "
                "variables.ascii.charAt(b - 32) : '?').join('')"),
        ("body", "variables.pem.startsWith('-----BEGIN CERTIFICATE REQUEST-----\\n') ? "
                 "variables.pem.substring(36).split('-')[0].replace('\\n', '') : ''"),
        ("der", "variables.body.matches('^[A-Za-z0-9+/]*=*$') ? " + _decode(
            "variables.body", f"(size(variables.body) / 4 * 3 - 3 < {_DER_PREFIX} ? "
                              f"size(variables.body) / 4 * 3 - 3 : {_DER_PREFIX})") + " : []"),
        ("cn", _cel_string(user)),
        ("cnValue", _der(12, "variables.cn.split('').map(c, variables.ascii.indexOf(c) + 32)")),
        ("cnAttribute", "[6, 3, 85, 4, 3] + variables.cnValue"),
        ("cnRdn", _der(49, f"([48] + {_der_length('size(variables.cnAttribute)')} + variables.cnAttribute)")),
        ("subject", f"[48] + {_der_length(f'size(variables.cnRdn) + {len(_ORGANIZATION_RDN)}')} + "
                    f"{_ORGANIZATION_RDN} + variables.cnRdn"),
        ("expected", "[2, 1, 0] + variables.subject"),
        ("outer", "size(variables.der) < 2 ? 99 : variables.der[1] < 128 ? 2 : variables.der[1] == 129 ? 3 : "
                  "variables.der[1] == 130 ? 4 : 99"),
        ("start", "size(variables.der) < variables.outer + 2 ? 99 : variables.outer + ("
                  "variables.der[variables.outer + 1] < 128 ? 2 : variables.der[variables.outer + 1] == 129 ? 3 : "
                  "variables.der[variables.outer + 1] == 130 ? 4 : 99)"),
        ("subjectIsTheNode", "size(variables.der) >= variables.start + size(variables.expected) && "
                             "variables.der[0] == 48 && variables.der[variables.outer] == 48 && "
                             "variables.idx.filter(i, i < size(variables.expected)).all(i, "
                             "variables.der[variables.start + i] == variables.expected[i])"),
    ]
    refused = f"k8sgpu: {user} may approve only its own kubelet serving certificate"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"{name}-serving-approval"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["certificates.k8s.io"], "apiVersions": ["*"], "operations": ["UPDATE"],
                "resources": ["certificatesigningrequests/approval"]}]},
            "matchConditions": [{"name": "node-identity",
                                 "expression": f"request.userInfo.username == {_cel_string(user)}"}],
            "variables": [{"name": n, "expression": e} for n, e in variables],
            "validations": [
                {"expression": "object.spec.username == request.userInfo.username",
                 "messageExpression": f"{_cel_string(refused + ': this CSR was requested by ')} + "
                                      "object.spec.username + ', not by the node (RBAC cannot tell them apart)'",
                 "reason": "Forbidden"},
                {"expression": f"object.spec.signerName == {_cel_string(signer)}",
                 "messageExpression": f"{_cel_string(refused + f' (signer {signer}): this CSR is for signer ')} "
                                      "+ object.spec.signerName",
                 "reason": "Forbidden"},
                {"expression": "variables.subjectIsTheNode",
                 "message": f"{refused}: the request's subject is not exactly O=system:nodes, CN={user} (a "
                            "serving certificate of another node name would let this node pose as that node)",
                 "reason": "Forbidden"},
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": f"{name}-serving-approval"},
        "spec": {"policyName": f"{name}-serving-approval", "validationActions": ["Deny"]},
    }
    return [policy, binding]
