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
