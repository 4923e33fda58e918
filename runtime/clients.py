"""How the runtime reaches the local cluster as its node: the one place that knows how to authenticate.

Either a kubeconfig that already is the node (`--kubeconfig`), an IAM role that
EKS maps to the node (`--eks-cluster`, `--eks-role-arn`: see `eks`), or kubelet TLS
bootstrapping: bootstrap credentials (`--bootstrap-kubeconfig`, the Terraform
outputs' endpoint, CA and token, or the pod's service account) ask for a client
certificate of `system:node:<node>` from the signer
`kubernetes.io/kube-apiserver-client-kubelet`. kube-controller-manager approves
it when the requester may create `certificatesigningrequests/nodeclient` (the
ClusterRole `system:certificates.k8s.io:certificatesigningrequests:nodeclient`),
as for any kubelet. The key never leaves memory but for the instant the client
library reads it; the certificate is renewed at 70-90 % of its life.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from .certificates import keep_renewed, pem_files, private_pem, request_certificate
from .config import LocalClusterConfig
from .eks import EksToken
from .kube import Kube, api_client
from .metrics import Metrics
from .supervisor import Part

log = logging.getLogger(__name__)

KUBELET_CLIENT = "kubernetes.io/kube-apiserver-client-kubelet"
CLIENT_USAGES = ["digital signature", "client auth"]
OLD_SESSION_GRACE = 900.0  # requests and watches under the old certificate end before its session closes


def client_request(node_name: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def _endpoint_api(cfg: k8s_client.Configuration, local: LocalClusterConfig) -> tuple[k8s_client.ApiClient,
                                                                                      bytes | None]:
    """A client of the Terraform outputs' endpoint and CA, else of the in-cluster endpoint and CA."""
    if not local.server:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
        except k8s_config.ConfigException as exc:
            raise k8s_config.ConfigException(
                f"not in a pod ({exc}): outside the cluster give its endpoint and CA with --terraform-outputs "
                "(cluster_endpoint, cluster_ca_certificate) or a --bootstrap-kubeconfig") from None
        return k8s_client.ApiClient(configuration=cfg), Path(cfg.ssl_ca_cert).read_bytes()
    cfg.host = local.server
    ca_pem = local.certificate_authority_data.encode() or None
    with tempfile.TemporaryDirectory(prefix="k8sgpu-ca-") as tmp:
        if ca_pem:
            Path(tmp, "ca.crt").write_bytes(ca_pem)
            cfg.ssl_ca_cert = str(Path(tmp, "ca.crt"))
        return k8s_client.ApiClient(configuration=cfg), ca_pem  # the CA is read now


async def bootstrap_api(local: LocalClusterConfig) -> tuple[k8s_client.ApiClient, bytes | None]:
    """The bootstrap identity's client and the cluster CA: a bootstrap kubeconfig, an endpoint with a
    token, or the pod's service account."""
    if local.server:
        cfg = k8s_client.Configuration()
        cfg.api_key = {"BearerToken": local.bootstrap_token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return _endpoint_api(cfg, local)
    api = await api_client(local.bootstrap_kubeconfig or None)
    path = api.configuration.ssl_ca_cert
    return api, Path(path).read_bytes() if path else None


def _node_api(host: str, ca_pem: bytes | None, cert_pem: bytes, key_pem: bytes) -> k8s_client.ApiClient:
    cfg = k8s_client.Configuration(host=host)
    cfg.connection_pool_maxsize = 4096
    with pem_files(cert_pem, key_pem, ca_pem) as (cfg.cert_file, cfg.key_file, ca_file):
        if ca_file:
            cfg.ssl_ca_cert = ca_file
        return k8s_client.ApiClient(configuration=cfg)  # the TLS context is built, the files can go


class NodeClientCertificate:
    """Obtains the node's client certificate with the bootstrap credentials and keeps it fresh; its expiry goes
    to ``metrics``."""

    def __init__(self, bootstrap: Kube, ca_pem: bytes | None, node_name: str, metrics: Metrics | None = None):
        self.bootstrap, self.node_name, self.metrics = bootstrap, node_name, metrics
        self.ca_pem = ca_pem
        self.certificate_pem = b""
        self.kube: Kube | None = None
        self._retired: list[asyncio.Task] = []
        self._rng = random.Random()

    async def start(self) -> Kube:
        api = await self._obtain()
        self.kube = Kube(api, "local", metrics=self.bootstrap.metrics)
        return self.kube

    def parts(self) -> dict[str, Part]:
        """Its long-running part, for the node's supervisor: the renewal of the certificate."""
        return {"node-client-certificate": self.keep_renewed}

    async def keep_renewed(self) -> None:
        await keep_renewed(lambda: self.certificate_pem, self._renew, "node client certificate", self._rng)

    async def stop(self) -> None:
        for task in self._retired:
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        await self.bootstrap.close()

    async def _obtain(self) -> k8s_client.ApiClient:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = await request_certificate(
            self.bootstrap, generate_name=f"k8sgpu-client-{self.node_name}-",
            request=client_request(self.node_name, key), signer=KUBELET_CLIENT, usages=CLIENT_USAGES,
            labels={"k8sgpu.io/node": self.node_name}, approve=False, on_awaiting=self._awaiting)
        self.certificate_pem = cert
        if self.metrics is not None:
            self.metrics.certificate_expires("client", cert)
        expires = x509.load_pem_x509_certificate(cert).not_valid_after_utc
        log.info("node client certificate for system:node:%s issued, valid until %s", self.node_name,
                 expires.isoformat())
        return _node_api(self.bootstrap.api.configuration.host, self.ca_pem, cert, private_pem(key))

    def _awaiting(self, name: str, why: str) -> None:
        log.warning("node client certificate %s is not approved yet (%s); kube-controller-manager approves it "
                    "when the bootstrap identity may create certificatesigningrequests/nodeclient, or run: "
                    "kubectl certificate approve %s", name, why, name)

    async def _renew(self) -> None:
        old = self.kube.rebind(await self._obtain())
        self._retired.append(asyncio.create_task(_close_later(old), name="retired-session"))


async def _close_later(api: k8s_client.ApiClient) -> None:
    await asyncio.sleep(OLD_SESSION_GRACE)
    await api.close()


class EksLogin:
    """The node's identity on EKS: its IAM role's tokens, signed anew before they expire and after a 401."""

    def __init__(self, token: EksToken, ca_pem: bytes | None):
        self.token, self.ca_pem = token, ca_pem

    @classmethod
    async def start(cls, local: LocalClusterConfig, node_name: str,
                    metrics: Metrics | None = None) -> tuple[Kube, EksLogin]:
        # Finding the source credentials may ask the instance metadata or Pod Identity agent: blocking I/O.
        token = await asyncio.to_thread(
            EksToken, local.eks_cluster_name, local.eks_role_arn, node_name, local.region,
            lifetime=local.eks_token_lifetime_seconds, role_session_seconds=local.eks_role_session_seconds)
        await token.current()  # a role that cannot be assumed fails the start, not later
        cfg = k8s_client.Configuration()
        cfg.connection_pool_maxsize = 4096
        try:
            api, ca_pem = _endpoint_api(cfg, local)
        except k8s_config.ConfigException:  # neither the outputs' endpoint nor a pod: ask EKS where it is
            server, ca = await asyncio.to_thread(token.cluster_endpoint)
            log.info("EKS cluster %s: API at %s (eks:DescribeCluster)", local.eks_cluster_name, server)
            api, ca_pem = _endpoint_api(cfg, dataclasses.replace(local, server=server,
                                                                 certificate_authority_data=ca.decode()))
        # The client runs the refresh hook only for a key it already has.
        await token.refresh_hook(api.configuration)
        api.configuration.refresh_api_key_hook = token.refresh_hook
        return (Kube(api, "local", on_unauthorized=token.unauthorized,
                     metrics=metrics.rest_client if metrics else None), cls(token, ca_pem))

    def parts(self) -> dict[str, Part]:
        return {}  # tokens are signed on demand: no long-running part

    async def stop(self) -> None:
        pass


async def local_cluster(local: LocalClusterConfig, node_name: str,
                        metrics: Metrics | None = None) -> tuple[Kube, NodeClientCertificate | EksLogin | None]:
    """The local cluster as the node: from its kubeconfig, an EKS login, or bootstrapped. Its requests, and the
    expiry of a client certificate it logs in with, go to ``metrics``."""
    requests = metrics.rest_client if metrics else None
    if local.kubeconfig:
        api = await api_client(local.kubeconfig)
        cert_file = api.configuration.cert_file  # the kubeconfig's client certificate, if it names one
        if metrics is not None and cert_file and Path(cert_file).is_file():
            try:
                metrics.certificate_expires("client", Path(cert_file).read_bytes())
            except ValueError as exc:  # not PEM: the TLS handshake will say so
                log.warning("cannot read the client certificate of %s: %s", local.kubeconfig, exc)
        return Kube(api, "local", metrics=requests), None
    if local.eks_cluster_name:
        return await EksLogin.start(local, node_name, metrics)
    api, ca_pem = await bootstrap_api(local)
    identity = NodeClientCertificate(Kube(api, "local (bootstrap)", metrics=requests), ca_pem, node_name, metrics)
    try:
        return await identity.start(), identity
    except BaseException:
        await identity.stop()
        raise
