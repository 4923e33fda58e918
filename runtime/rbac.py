"""What the runtime needs beyond its node identity (system:node:<name> in system:nodes).

The Node authorizer already lets a node register itself, renew its Lease, read
and write its pods' status, delete its pods, read the Secrets and ConfigMaps its
pods use, read RuntimeClasses and Services, and record Events. Publishing a
LoadBalancer Service's address is not a kubelet's job, so that is the one extra
rule. The Terraform node module grants exactly these rules.
"""

from __future__ import annotations

EXTRA_RULES: list[dict] = [
    {
        # Write the provider's hostname into status.loadBalancer of Services of class k8s.gpu.
        "apiGroups": [""],
        "resources": ["services/status"],
        "verbs": ["get", "patch", "update"],
    },
]


def extra_rbac(node_name: str = "k8s.gpu", name: str = "k8sgpu-runtime") -> list[dict]:
    """A ClusterRole with EXTRA_RULES and its binding to the node's user."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": EXTRA_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{node_name}"}]},
    ]
