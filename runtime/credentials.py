"""Where the node's client certificate and key are kept between runs, as the kubelet keeps them in --cert-dir.

The bootstrap credential is spent once the first certificate is issued, so a restarted or failed-over runtime
must find the node's own certificate again: in a pod, in a Secret of the runtime's namespace that only its
ServiceAccount may read and write (by name: the node module creates it empty); outside a cluster, in the
file `kubelet-client-current.pem` (certificate and key, mode 0600) of a directory, the kubelet's name for it.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import re
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import errors
from .kube import Kube

log = logging.getLogger(__name__)

CURRENT_FILE = "kubelet-client-current.pem"  # the kubelet's name, in its --cert-dir
CERT_KEY, KEY_KEY = "tls.crt", "tls.key"  # the Secret's keys, as in a kubernetes.io/tls Secret
MIN_LEFT = datetime.timedelta(minutes=1)  # a certificate about to expire is not worth starting with
BOOTSTRAP_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


def unusable(cert_pem: bytes, key_pem: bytes, node_name: str, now: datetime.datetime) -> str:
    """Why a stored certificate and key cannot be the node's identity now ("" when they can): parsable, the key
    the certificate's, CN=system:node:<node_name> in O=system:nodes, valid now and for a minute more."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        return f"not a PEM certificate and key ({exc})"
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        return "the key is not the certificate's"
    cn = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    if cn != [f"system:node:{node_name}"] or "system:nodes" not in orgs:
        return f"it is for {cert.subject.rfc4514_string()}, not CN=system:node:{node_name},O=system:nodes"
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc.isoformat()}"
    if now + MIN_LEFT >= cert.not_valid_after_utc:
        return f"expired at {cert.not_valid_after_utc.isoformat()}"
    return ""


def bootstrap_token_id(token: str) -> str:
    """The id of a kubelet-style bootstrap token `<id>.<secret>`; "" for any other bearer token."""
    found = BOOTSTRAP_TOKEN.match(token)
    return found.group(1) if found else ""


def split_pem(pem: bytes) -> tuple[bytes, bytes]:
    """kubelet-client-current.pem: the certificate, then the key, in one file."""
    marker = pem.find(b"-----BEGIN", pem.find(b"-----END CERTIFICATE-----"))
    return pem[:marker], pem[marker:]


class CredentialStore(Protocol):
    where: str

    async def load(self) -> tuple[bytes, bytes] | None: ...

    async def save(self, cert_pem: bytes, key_pem: bytes) -> None: ...


class SecretStore:
    """The Secret `namespace/name`, read and written by the runtime's ServiceAccount (``kube``)."""

    def __init__(self, kube: Kube, namespace: str, name: str):
        self.kube, self.namespace, self.name = kube, namespace, name
        self.where = f"Secret {namespace}/{name}"

    async def load(self) -> tuple[bytes, bytes] | None:
        try:
            secret = await self.kube.get("Secret", self.namespace, self.name)
        except errors.NotFound:
            return None
        data = secret.get("data") or {}
        if not data.get(CERT_KEY) or not data.get(KEY_KEY):
            return None
        return base64.b64decode(data[CERT_KEY]), base64.b64decode(data[KEY_KEY])

    async def save(self, cert_pem: bytes, key_pem: bytes) -> None:
        await self.kube.patch("Secret", self.namespace, self.name, {"data": {
            CERT_KEY: base64.b64encode(cert_pem).decode(), KEY_KEY: base64.b64encode(key_pem).decode()}})

    async def close(self) -> None:
        await self.kube.close()


class DirectoryStore:
    """`<directory>/kubelet-client-current.pem`, readable by this user alone."""

    def __init__(self, directory: str):
        self.path = Path(directory) / CURRENT_FILE
        self.where = str(self.path)

    async def load(self) -> tuple[bytes, bytes] | None:
        try:
            return split_pem(self.path.read_bytes())
        except FileNotFoundError:
            return None

    async def save(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = self.path.with_name(f".{CURRENT_FILE}.new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(cert_pem + key_pem)
        os.replace(fresh, self.path)  # a reader sees the old pair or the new one, never half of one

    async def close(self) -> None:
        pass
