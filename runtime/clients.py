"""How the runtime reaches the local cluster as its node: the one place that knows how to authenticate.

Either a kubeconfig that already is the node (`--kubeconfig`), an IAM role that
EKS maps to the node (`--eks-cluster`, `--eks-role-arn`: see `eks`), or kubelet TLS
bootstrapping. Bootstrapping: a node client certificate kept from an earlier run
(`credentials`: the node module's Secret, or `--cert-dir`) is used while it is
valid; else the bootstrap credential (a kubelet-style bootstrap token that expires,
from the Terraform outputs or the node module's Secret, or `--bootstrap-kubeconfig`)
asks for one of `system:node:<node>` from the signer
`kubernetes.io/kube-apiserver-client-kubelet`, which kube-controller-manager
approves because the token's group may create `certificatesigningrequests/nodeclient`.
The certificate is stored and the token spent (it authenticates no more). Renewals,
at 70-90 % of the certificate's life, are asked for by the node itself and approved
through `selfnodeclient`, which approves only the requester's own name: nothing the
runtime holds after the bootstrap can get a certificate for another node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
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

from . import errors
from .certificates import keep_renewed, pem_files, private_pem, request_certificate
from .config import LocalClusterConfig
from .credentials import CredentialStore, DirectoryStore, SecretStore, bootstrap_token_id, unusable
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


async def cluster_endpoint(local: LocalClusterConfig) -> tuple[str, bytes | None]:
    """The local cluster's API endpoint and CA, with no credential: the Terraform outputs', the bootstrap
    kubeconfig's, else the pod's."""
    if local.server:
        return local.server, local.certificate_authority_data.encode() or None
    if local.bootstrap_kubeconfig:
        api = await api_client(local.bootstrap_kubeconfig)
        await api.close()
        path = api.configuration.ssl_ca_cert
        return api.configuration.host, Path(path).read_bytes() if path else None
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg, try_refresh_token=False)
    except k8s_config.ConfigException as exc:
        raise k8s_config.ConfigException(
            f"not in a pod ({exc}): outside the cluster give its endpoint and CA with --terraform-outputs "
            "(cluster_endpoint, cluster_ca_certificate) or a --bootstrap-kubeconfig") from None
    return cfg.host, Path(cfg.ssl_ca_cert).read_bytes()


async def bootstrap_api(local: LocalClusterConfig, host: str, ca_pem: bytes | None) -> k8s_client.ApiClient:
    """The bootstrap identity's client: a bootstrap kubeconfig, else the bootstrap token at ``host``."""
    if local.bootstrap_kubeconfig:
        return await api_client(local.bootstrap_kubeconfig)
    if not local.bootstrap_token:
        raise BootstrapError("no bootstrap token (Terraform output bootstrap_token, in a pod K8SGPU_BOOTSTRAP_TOKEN) "
                             "and no valid node certificate stored: give one, or --kubeconfig of the node")
    cfg = k8s_client.Configuration(host=host)
    cfg.api_key = {"BearerToken": local.bootstrap_token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    with tempfile.TemporaryDirectory(prefix="k8sgpu-ca-") as tmp:
        if ca_pem:
            Path(tmp, "ca.crt").write_bytes(ca_pem)
            cfg.ssl_ca_cert = str(Path(tmp, "ca.crt"))
        return k8s_client.ApiClient(configuration=cfg)  # the CA is read now


def _node_api(host: str, ca_pem: bytes | None, cert_pem: bytes, key_pem: bytes) -> k8s_client.ApiClient:
    cfg = k8s_client.Configuration(host=host)
    cfg.connection_pool_maxsize = 4096
    with pem_files(cert_pem, key_pem, ca_pem) as (cfg.cert_file, cfg.key_file, ca_file):
        if ca_file:
            cfg.ssl_ca_cert = ca_file
        return k8s_client.ApiClient(configuration=cfg)  # the TLS context is built, the files can go


class BootstrapError(RuntimeError):
    """No way to the node's first certificate: no stored one, and the bootstrap credential missing or refused."""


class NodeClientCertificate:
    """The node's client certificate: the stored one while it is valid, else one obtained with the bootstrap
    credential, which is then spent; renewed with the node's own certificate (selfnodeclient). Its requests and
    expiry go to ``metrics``."""

    def __init__(self, local: LocalClusterConfig, node_name: str, store: CredentialStore | None,
                 metrics: Metrics | None = None):
        self.local, self.node_name, self.store, self.metrics = local, node_name, store, metrics
        self._requests = metrics.rest_client if metrics else None
        self.host, self.ca_pem = "", None
        self.certificate_pem = b""
        self.kube: Kube | None = None
        self._retired: list[asyncio.Task] = []
        self._rng = random.Random()

    async def start(self) -> Kube:
        self.host, self.ca_pem = await cluster_endpoint(self.local)
        pair = await self._stored() or await self._bootstrap()
        self.kube = Kube(self._use(*pair), "local", metrics=self._requests)
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
        if self.store is not None:
            await self.store.close()

    async def _stored(self) -> tuple[bytes, bytes] | None:
        if self.store is None:
            return None
        found = await self.store.load()
        if found is None:
            log.info("no node client certificate in %s yet", self.store.where)
            return None
        why = unusable(*found, self.node_name, datetime.datetime.now(datetime.UTC))
        if why:
            log.info("the node client certificate in %s cannot be used: %s", self.store.where, why)
            return None
        log.info("node client certificate for system:node:%s from %s", self.node_name, self.store.where)
        return found

    async def _bootstrap(self) -> tuple[bytes, bytes]:
        """The first certificate, requested by the bootstrap identity (kube-controller-manager approves it through
        nodeclient), stored, and the bootstrap token spent."""
        bootstrap = Kube(await bootstrap_api(self.local, self.host, self.ca_pem), "local (bootstrap)",
                         metrics=self._requests)
        try:
            pair = await self._request(bootstrap, "waiting for approval; kube-controller-manager approves it when "
                                                  "the bootstrap identity may create "
                                                  "certificatesigningrequests/nodeclient")
            await self._save(*pair)
            await self._spend(bootstrap)
            return pair
        except errors.Unauthorized as exc:
            # Another runtime of this node may have spent the token a moment ago, after storing its certificate.
            pair = await self._stored()
            if pair is not None:
                return pair
            raise BootstrapError(
                f"the bootstrap token was refused ({exc}): it expired or was spent, and no valid node certificate "
                f"is stored{' in ' + self.store.where if self.store else ''}; make a new one (node module: "
                "terraform apply -replace='module.node.terraform_data.bootstrap_token[0]')") from None
        finally:
            await bootstrap.close()

    async def _spend(self, bootstrap: Kube) -> None:
        """Used once: the bootstrap token stops authenticating (its Secret says so), as the node module allows its
        group to write; the Secret stays, so Terraform sees no drift."""
        token_id = bootstrap_token_id(self.local.bootstrap_token) if not self.local.bootstrap_kubeconfig else ""
        if not token_id:
            return
        try:
            await bootstrap.patch("Secret", "kube-system", f"bootstrap-token-{token_id}", {"data": {
                "usage-bootstrap-authentication": None, "usage-bootstrap-signing": None, "expiration": None}})
            log.info("bootstrap token %s spent: it authenticates no more", token_id)
        except errors.Unauthorized:
            log.info("bootstrap token %s was already spent", token_id)
        except errors.KubeError as exc:
            log.warning("could not spend bootstrap token %s (%s): it stays valid until its expiration", token_id, exc)

    async def _request(self, kube: Kube, awaiting: str) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = await request_certificate(
            kube, generate_name=f"k8sgpu-client-{self.node_name}-",
            request=client_request(self.node_name, key), signer=KUBELET_CLIENT, usages=CLIENT_USAGES,
            labels={"k8sgpu.io/node": self.node_name}, approve=False,
            on_awaiting=lambda name, _: self._awaiting(name, awaiting))
        expires = x509.load_pem_x509_certificate(cert).not_valid_after_utc
        log.info("node client certificate for system:node:%s issued, valid until %s", self.node_name,
                 expires.isoformat())
        return cert, private_pem(key)

    async def _save(self, cert_pem: bytes, key_pem: bytes) -> None:
        if self.store is None:
            log.warning("the node client certificate is kept in memory only: a restart needs a new bootstrap "
                        "token (give --cert-dir, or --node-credentials-secret in a pod)")
            return
        await self.store.save(cert_pem, key_pem)
        log.info("node client certificate stored in %s", self.store.where)

    def _use(self, cert_pem: bytes, key_pem: bytes) -> k8s_client.ApiClient:
        self.certificate_pem = cert_pem
        if self.metrics is not None:
            self.metrics.certificate_expires("client", cert_pem)
        return _node_api(self.host, self.ca_pem, cert_pem, key_pem)

    def _awaiting(self, name: str, why: str) -> None:
        log.warning("node client certificate %s is not approved yet (%s), or run: kubectl certificate approve %s",
                    name, why, name)

    async def _renew(self) -> None:
        """A new certificate asked for by the node itself: kube-controller-manager approves it through
        selfnodeclient (bound to system:node:<node> alone), which approves no other node's name."""
        pair = await self._request(self.kube, "waiting for approval; kube-controller-manager approves it when "
                                              f"system:node:{self.node_name} may create "
                                              "certificatesigningrequests/selfnodeclient")
        await self._save(*pair)
        old = self.kube.rebind(self._use(*pair))
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


async def credential_store(local: LocalClusterConfig, metrics: Metrics | None = None) -> CredentialStore | None:
    """Where the node's certificate is kept: the Secret (written by the pod's ServiceAccount), else the cert dir."""
    if local.node_credentials_secret:
        namespace, name = local.node_credentials_secret.split("/", 1)
        return SecretStore(Kube(await api_client(None), "local (service account)",
                                metrics=metrics.rest_client if metrics else None), namespace, name)
    if local.cert_dir:
        return DirectoryStore(local.cert_dir)
    return None


async def local_cluster(local: LocalClusterConfig, node_name: str,
                        metrics: Metrics | None = None) -> tuple[Kube, NodeClientCertificate | EksLogin | None]:
    """The local cluster as the node: from its kubeconfig, an EKS login, or bootstrapped. Its requests, and the
    expiry of a client certificate it logs in with, go to ``metrics``."""
    if local.kubeconfig:
        api = await api_client(local.kubeconfig)
        cert_file = api.configuration.cert_file  # the kubeconfig's client certificate, if it names one
        if metrics is not None and cert_file and Path(cert_file).is_file():
            try:
                metrics.certificate_expires("client", Path(cert_file).read_bytes())
            except ValueError as exc:  # not PEM: the TLS handshake will say so
                log.warning("cannot read the client certificate of %s: %s", local.kubeconfig, exc)
        return Kube(api, "local", metrics=metrics.rest_client if metrics else None), None
    if local.eks_cluster_name:
        return await EksLogin.start(local, node_name, metrics)
    identity = NodeClientCertificate(local, node_name, await credential_store(local, metrics), metrics)
    try:
        return await identity.start(), identity
    except BaseException:
        await identity.stop()
        raise
