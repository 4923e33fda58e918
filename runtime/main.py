"""`k8sgpu-runtime`: the virtual GPU node agent."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from . import __version__
from .config import ConfigError, build
from .logs import configure

DESCRIPTION = """\
The k8sgpu runtime registers the virtual node (default k8s.gpu) in a Kubernetes
cluster and runs every pod bound to it on a remote GPU provider: a Kubernetes
cluster reached with a tenant kubeconfig. The pods look local: their status,
events, ConfigMaps, Secrets and LoadBalancer Services are kept in step.

Settings come from flags, then environment variables (named in each flag's
help), then the Terraform outputs file, then the config file, then defaults.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="k8sgpu-runtime", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"k8sgpu-runtime {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    start = verbs.add_parser("start", help="register the node and serve its pods until stopped",
                             description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    start.add_argument("--kubeconfig", help="kubeconfig of the node identity (system:node:<name>) in the "
                                            "cluster the node joins; absent: bootstrap a node client certificate "
                                            "(see --bootstrap-kubeconfig) [env K8SGPU_KUBECONFIG]")
    start.add_argument("--bootstrap-kubeconfig", help="kubeconfig of an identity allowed to request node client "
                                                      "certificates (kubelet TLS bootstrapping); absent: the "
                                                      "Terraform outputs' endpoint and bootstrap token, else the "
                                                      "in-cluster endpoint with the bootstrap token of "
                                                      "$K8SGPU_BOOTSTRAP_TOKEN [env K8SGPU_BOOTSTRAP_KUBECONFIG]")
    start.add_argument("--cert-dir", help="directory where the node's client certificate and key are kept "
                                          "(kubelet-client-current.pem, mode 0600), so that a restart needs no "
                                          "bootstrap token; outside a cluster (default: in memory only) "
                                          "[env K8SGPU_CERT_DIR]")
    start.add_argument("--node-credentials-secret", metavar="NAMESPACE/NAME",
                       help="Secret, read and written by the pod's ServiceAccount, that keeps the node's client "
                            "certificate and key across restarts and failovers (the node module sets it) "
                            "[env K8SGPU_NODE_CREDENTIALS_SECRET]")
    start.add_argument("--provider-kubeconfig", help="tenant kubeconfig of the GPU provider's cluster "
                                                     "(required) [env K8SGPU_PROVIDER_KUBECONFIG]")
    start.add_argument("--tenant-namespace", help="your namespace on the GPU provider (required) "
                                                  "[env K8SGPU_TENANT_NAMESPACE]")
    start.add_argument("--node-name", help="name of the virtual node (default k8s.gpu); the runtime "
                                           "authenticates as system:node:<name> [env K8SGPU_NODE_NAME]")
    start.add_argument("--node-address", help="IP address kube-apiserver reaches this runtime at (default: "
                                              "$POD_IP, else 127.0.0.1) [env K8SGPU_NODE_ADDRESS]")
    start.add_argument("--kubelet-port", type=int, help="port of the kubelet API advertised in the node "
                                                        "status (default 10250) [env K8SGPU_KUBELET_PORT]")
    start.add_argument("--health-port", type=int, help="plain-HTTP port of /healthz (liveness: 500 naming a "
                                                       "stopped part) and /readyz (readiness: 200 once the node "
                                                       "is registered), apart from the kubelet API (default "
                                                       "10248; 0: none) [env K8SGPU_HEALTH_PORT]")
    start.add_argument("--health-bind-address", help="address the health port listens on (default: 0.0.0.0 in a "
                                                     "pod, where $POD_IP is set, else 127.0.0.1) "
                                                     "[env K8SGPU_HEALTH_BIND_ADDRESS]")
    start.add_argument("--deployment", metavar="NAMESPACE/NAME",
                       help="the Deployment running this runtime: when it stops because that Deployment is being "
                            "deleted (terraform destroy), it first deletes its pods, copies and Services on the "
                            "provider and its Node; other stops leave them [env K8SGPU_DEPLOYMENT]")
    start.add_argument("--default-runtime-class", metavar="RUNTIME_CLASS",
                       help="GPU offering for pods bound to the node that name no runtimeClassName (by nodeName, "
                            "or nodeSelector and toleration): admitted, limited and placed as if they named it; "
                            "unset: such pods are refused [env K8SGPU_DEFAULT_RUNTIME_CLASS]")
    start.add_argument("--csr-signer", help="signer of the kubelet API's serving certificate: "
                                            "kubernetes.io/kubelet-serving (default), aws (EKS: "
                                            "beta.eks.amazonaws.com/app-serving) or any signer name "
                                            "[env K8SGPU_CSR_SIGNER]")
    start.add_argument("--csr-self-approve", action=argparse.BooleanOptionalAction, default=None,
                       help="approve the serving certificate's CSR ourselves where RBAC allows (default: on); "
                            "otherwise the runtime logs the `kubectl certificate approve` to run and waits "
                            "[env K8SGPU_CSR_SELF_APPROVE]")
    start.add_argument("--tls-cert-file", help="serve the kubelet API with this certificate instead of one "
                                               "from the CSR API [env K8SGPU_TLS_CERT_FILE]")
    start.add_argument("--tls-private-key-file", help="key of --tls-cert-file [env K8SGPU_TLS_PRIVATE_KEY_FILE]")
    start.add_argument("--client-ca-file", help="CA of the kubelet API's client certificates (kube-apiserver's "
                                                "kubelet client certificate); default: the local cluster's CA "
                                                "[env K8SGPU_CLIENT_CA_FILE]")
    start.add_argument("--eks-cluster", help="log in to this EKS cluster as the IAM role --eks-role-arn instead of "
                                             "a kubeconfig: tokens of the role, assumed with the node name as "
                                             "session name, which EKS maps to system:node:<name>; endpoint and "
                                             "CA from the Terraform outputs, in a pod its in-cluster "
                                             "configuration, else eks:DescribeCluster "
                                             "[env K8SGPU_EKS_CLUSTER_NAME]")
    start.add_argument("--eks-role-arn", help="the node's IAM role (Terraform output role_arn); the runtime's own "
                                              "credentials (boto3's chain: environment, profile, web identity, "
                                              "EKS Pod Identity) must be allowed to assume it "
                                              "[env K8SGPU_EKS_ROLE_ARN]")
    start.add_argument("--region", help="AWS region of the EKS cluster (default: boto3's) [env AWS_REGION]")
    start.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=None,
                       help="campaign for a leader election Lease, so that several runtimes (the node module runs "
                            "2) serve one node, one at a time; the others stand by, Ready, and take over when the "
                            "leader stops or dies (default: on where an identity can write the Lease: the pod's "
                            "ServiceAccount or --leader-elect-kubeconfig; else off, and this runtime leads alone) "
                            "[env K8SGPU_LEADER_ELECT]")
    start.add_argument("--leader-elect-lease-duration", metavar="DURATION",
                       help="how long a standby waits from the last change of the Lease it saw before taking it "
                            "over (default 15s) [env K8SGPU_LEADER_ELECT_LEASE_DURATION]")
    start.add_argument("--leader-elect-renew-deadline", metavar="DURATION",
                       help="how long the leader tries to renew before it stops leading and exits; shorter than "
                            "the lease duration (default 10s) [env K8SGPU_LEADER_ELECT_RENEW_DEADLINE]")
    start.add_argument("--leader-elect-retry-period", metavar="DURATION",
                       help="how often standbys try to take the Lease and the leader renews it (default 2s) "
                            "[env K8SGPU_LEADER_ELECT_RETRY_PERIOD]")
    start.add_argument("--leader-elect-resource-name", metavar="NAME",
                       help="name of the election's Lease (default: the node name) "
                            "[env K8SGPU_LEADER_ELECT_RESOURCE_NAME]")
    start.add_argument("--leader-elect-resource-namespace", metavar="NAMESPACE",
                       help="namespace of the election's Lease (default: the pod's, from its ServiceAccount; "
                            "required outside a pod) [env K8SGPU_LEADER_ELECT_RESOURCE_NAMESPACE]")
    start.add_argument("--leader-elect-kubeconfig", metavar="FILE",
                       help="kubeconfig of the identity that writes the election's Lease (default: the pod's "
                            "ServiceAccount; never the node identity, which may write only its node's Lease) "
                            "[env K8SGPU_LEADER_ELECT_KUBECONFIG]")
    start.add_argument("--config", help="YAML file with sections node, local, provider, leader_election "
                                        "[env K8SGPU_CONFIG]")
    start.add_argument("--terraform-outputs", help="JSON of `terraform output -json` "
                                                   "[env K8SGPU_TERRAFORM_OUTPUTS]")
    start.add_argument("--log-format", metavar="text|json",
                       help="log lines as text (default) or as JSON objects, one a line: ts, level, logger, msg, "
                            "and pod {namespace, name, uid} on lines about a pod [env K8SGPU_LOG_FORMAT]")
    start.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = build(vars(args))
    except ConfigError as exc:
        print(f"k8sgpu-runtime: error: {exc}", file=sys.stderr)
        return 2
    configure(config.node.log_format, logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    # botocore's debug log carries signed requests, session tokens among them: never at debug.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    from .virtual_node import VirtualNode

    # The caches hold a few hundred thousand objects per thousand pods, which every youngest-generation collection
    # (CPython's default: after 700 allocations) and its promotions make the full collections walk: decoding one
    # 10,000-pod PodMetrics list beside 10,000 cached pods took 76 ms at the default, 36 ms at 10,000.
    gc.set_threshold(10_000, 10, 10)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await VirtualNode(config).run_until(stop)

    try:
        asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - the one error boundary of the agent
        if args.verbose > 1:
            raise
        print(f"k8sgpu-runtime: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
