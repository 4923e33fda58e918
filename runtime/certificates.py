"""Certificates through the CertificateSigningRequest API, as the kubelet gets them.

The serving certificate of the kubelet API: the runtime makes its own key (it
never leaves memory), asks for a certificate with a CSR, approves it itself
where its RBAC allows, and otherwise says in its log and in a node condition
which `kubectl certificate approve` someone must run. The certificate is renewed
at 70-90 % of its life; a new certificate is loaded into the same TLS context,
so connections that are open keep theirs and new ones get the new one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import logging
import random
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import errors
from .kube import Kube, resource_path
from .metrics import Metrics

log = logging.getLogger(__name__)

KUBELET_SERVING = "kubernetes.io/kubelet-serving"
EKS_SERVING = "beta.eks.amazonaws.com/app-serving"
SERVING_USAGES = ["digital signature", "key encipherment", "server auth"]


def signer_name(value: str) -> str:
    """`--csr-signer`: "aws" is what EKS signs; any other value is a signer name."""
    return EKS_SERVING if value == "aws" else (value or KUBELET_SERVING)


def serving_request(node_name: str, addresses: list[str], key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM CSR for system:node:<node> in system:nodes, with a SAN for every address and the node's name."""
    sans: list[x509.GeneralName] = [x509.DNSName(node_name)]
    for address in addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            sans.append(x509.DNSName(address))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def renewal_delay(cert_pem: bytes, now: datetime.datetime, rng: random.Random) -> float:
    """Seconds until renewal: at a random point between 70 % and 90 % of the certificate's life."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    at = start + (end - start) * rng.uniform(0.7, 0.9)
    return max((at - now).total_seconds(), 0.0)


@contextlib.contextmanager
def pem_files(cert_pem: bytes, key_pem: bytes, ca_pem: bytes | None = None) -> Iterator[tuple[str, str, str | None]]:
    """Paths for libraries that read certificates only from files (ssl, kubernetes_asyncio): the key lives in a
    file readable by us alone, and only while the caller's block reads it."""
    with tempfile.TemporaryDirectory(prefix="k8sgpu-tls-") as tmp:
        cert_file, key_file, ca_file = Path(tmp, "tls.crt"), Path(tmp, "tls.key"), Path(tmp, "ca.crt")
        cert_file.write_bytes(cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem)
        if ca_pem:
            ca_file.write_bytes(ca_pem)
        yield str(cert_file), str(key_file), str(ca_file) if ca_pem else None


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    with pem_files(cert_pem, key_pem) as (cert_file, key_file, _):
        context.load_cert_chain(cert_file, key_file)


async def keep_renewed(current: Callable[[], bytes], renew: Callable[[], Awaitable[None]], what: str,
                       rng: random.Random) -> None:
    """Call ``renew`` at 70-90 % of the life of the certificate ``current()`` returns, for ever; a failed
    renewal is retried a minute later."""
    while True:
        await asyncio.sleep(renewal_delay(current(), datetime.datetime.now(datetime.UTC), rng))
        while True:
            try:
                await renew()
                break
            except (errors.KubeError, CertificateDenied) as exc:
                log.warning("renewing the %s failed, retrying in 60 s: %s", what, exc)
                await asyncio.sleep(60)


async def request_certificate(kube: Kube, *, generate_name: str, request: bytes, signer: str, usages: list[str],
                              labels: dict[str, str], approve: bool,
                              on_awaiting: Callable[[str, str], None]) -> bytes:
    """Create a CSR, approve it when asked to (reporting a refusal), and wait until it is issued."""
    csr = await kube.create("CertificateSigningRequest", None, {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": generate_name, "labels": labels},
        "spec": {"request": base64.b64encode(request).decode(), "signerName": signer, "usages": usages},
    })
    name = csr["metadata"]["name"]
    log.info("requested certificate %s from signer %s", name, signer)
    if approve:
        csr.setdefault("status", {})["conditions"] = [{
            "type": "Approved", "status": "True", "reason": "K8sgpuSelfApproved",
            "message": "the k8sgpu runtime approved its own serving certificate",
        }]
        try:
            await kube.replace("CertificateSigningRequest", None, name, csr, subresource="approval")
        except errors.Forbidden as exc:
            on_awaiting(name, f"the node may not approve it ({exc})")
    else:
        on_awaiting(name, "waiting for approval")
    return await _wait_issued(kube, name)


async def _wait_issued(kube: Kube, name: str) -> bytes:
    while True:
        current = await kube.get("CertificateSigningRequest", None, name)
        found = _issued(current)
        if found is not None:
            return found
        try:
            async for event in kube.watch("CertificateSigningRequest", None, current["metadata"]["resourceVersion"],
                                          field_selector=f"metadata.name={name}"):
                found = _issued(event.get("object") or {})
                if found is not None:
                    return found
        except errors.Gone:
            continue
        except errors.Unavailable as exc:
            log.warning("watching %s%s failed, retrying: %s", resource_path("CertificateSigningRequest"), name, exc)
            await asyncio.sleep(2)


# TLS 1.2's suites the kubelet API takes: the six ECDHE AEAD suites of the CIS Kubernetes Benchmark's kubelet
# --tls-cipher-suites (it allows "a subset"; its two TLS_RSA_WITH_AES_*_GCM suites are left out: RSA key exchange
# has no forward secrecy, and Go's own defaults dropped it in 1.22). kube-apiserver, a Go client, offers these first.
# No CBC suite. TLS 1.3's three suites are all AEAD and, as in Go, not configurable.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def serving_context(client_ca: bytes) -> ssl.SSLContext:
    """The kubelet API's TLS: 1.2 at least, the suites above, client certificates of `client_ca` optional
    (kube-apiserver presents its kubelet client certificate; bearer-token clients present none)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=client_ca.decode())
    return context


class ServingCertificate:
    """The TLS context of the kubelet API, with a certificate from files or from the CSR API; its expiry goes to
    ``metrics``."""

    def __init__(self, kube: Kube, node_name: str, addresses: list[str], *, signer: str, self_approve: bool,
                 client_ca: bytes, on_state: Callable[[bool, str, str], None],
                 cert_file: str = "", key_file: str = "", metrics: Metrics | None = None):
        self.kube, self.node_name, self.addresses = kube, node_name, addresses
        self.signer, self.self_approve = signer_name(signer), self_approve
        self.on_state = on_state
        self.cert_file, self.key_file = cert_file, key_file
        self.context = serving_context(client_ca)
        self.certificate_pem = b""
        self.metrics = metrics
        self._rng = random.Random()

    @property
    def from_files(self) -> bool:
        return bool(self.cert_file)

    def load_files(self) -> None:
        """The certificate given as files: loaded once, never renewed by the runtime."""
        self.certificate_pem = Path(self.cert_file).read_bytes()
        self.context.load_cert_chain(self.cert_file, self.key_file)
        if self.metrics is not None:
            self.metrics.certificate_expires("serving", self.certificate_pem)
        self.on_state(True, "CertificateFromFile", f"serving certificate from {self.cert_file}")

    async def run(self) -> None:
        """The certificate as a supervised part: obtained from the CSR API, then renewed at 70-90 % of its life,
        until cancelled. A failure is said on the node before it ends the part (its supervisor restarts it with
        a new CSR, and gives up on one that keeps failing)."""
        try:
            if not self.certificate_pem:
                await self._obtain()
            await keep_renewed(lambda: self.certificate_pem, self._obtain, "serving certificate", self._rng)
        except (errors.KubeError, CertificateDenied) as exc:
            self.on_state(False, "CertificateFailed", str(exc)[:500])
            raise

    async def _obtain(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = await request_certificate(
            self.kube, generate_name=f"k8sgpu-serving-{self.node_name}-",
            request=serving_request(self.node_name, self.addresses, key), signer=self.signer, usages=SERVING_USAGES,
            labels={"k8sgpu.io/node": self.node_name}, approve=self.self_approve, on_awaiting=self._awaiting)
        _load_chain(self.context, cert, private_pem(key))
        self.certificate_pem = cert
        if self.metrics is not None:
            self.metrics.certificate_expires("serving", cert)
        expires = x509.load_pem_x509_certificate(cert).not_valid_after_utc
        log.info("serving certificate issued by %s, valid until %s", self.signer, expires.isoformat())
        self.on_state(True, "CertificateIssued", f"serving certificate from signer {self.signer}, "
                                                 f"valid until {expires:%Y-%m-%dT%H:%M:%SZ}")

    def _awaiting(self, name: str, why: str) -> None:
        if not self.self_approve:
            why = "self-approval is off (--no-csr-self-approve)"
        command = f"kubectl certificate approve {name}"
        log.warning("serving certificate %s awaits approval: %s. Approve it with: %s", name, why, command)
        self.on_state(False, "AwaitingApproval", f"serving certificate CSR {name} awaits approval; run: {command}")


class CertificateDenied(Exception):
    pass


def _issued(csr: dict) -> bytes | None:
    status = csr.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Denied", "Failed") and condition.get("status") == "True":
            raise CertificateDenied(f"CSR {csr['metadata']['name']} {condition['type'].lower()}: "
                                    f"{condition.get('reason', '')} {condition.get('message', '')}".strip())
    if status.get("certificate"):
        return base64.b64decode(status["certificate"])
    return None
