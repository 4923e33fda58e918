"""The node's stored client certificate: when it can be the node's identity, and how it is kept on disk."""

import asyncio
import datetime
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k8sgpu.runtime.certificates import private_pem
from k8sgpu.runtime.credentials import DirectoryStore, bootstrap_token_id, split_pem, unusable

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def _pair(cn="system:node:k8s.gpu", org="system:nodes", start=NOW - HOUR, end=NOW + HOUR, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(end).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), private_pem(key)


def test_a_valid_certificate_of_the_node_is_usable():
    assert unusable(*_pair(), "k8s.gpu", NOW) == ""


@pytest.mark.parametrize("pair, why", [
    (lambda: _pair(cn="system:node:other"), "not CN=system:node:k8s.gpu"),
    (lambda: _pair(org="system:masters"), "not CN=system:node:k8s.gpu"),
    (lambda: _pair(end=NOW - datetime.timedelta(seconds=1)), "expired at"),
    (lambda: _pair(end=NOW + datetime.timedelta(seconds=30)), "expired at"),  # less than a minute left
    (lambda: _pair(start=NOW + HOUR, end=NOW + 2 * HOUR), "not valid before"),
    (lambda: (_pair()[0], _pair()[1]), "the key is not the certificate's"),
    (lambda: (b"junk", b"junk"), "not a PEM certificate and key"),
])
def test_a_stored_certificate_that_cannot_be_the_node_is_refused_with_the_reason(pair, why):
    assert why in unusable(*pair(), "k8s.gpu", NOW)


@pytest.mark.parametrize("token, token_id", [
    ("abcdef.0123456789abcdef", "abcdef"),
    ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", ""),  # a ServiceAccount JWT
    ("ABCDEF.0123456789abcdef", ""),
    ("abcdef.0123456789abcde", ""),
])
def test_bootstrap_token_id_only_for_kubelet_style_tokens(token, token_id):
    assert bootstrap_token_id(token) == token_id


def test_directory_store_keeps_certificate_and_key_in_one_file_for_its_user_alone(tmp_path):
    store = DirectoryStore(str(tmp_path / "pki"))
    assert asyncio.run(store.load()) is None
    cert, key = _pair()
    asyncio.run(store.save(cert, key))
    path = tmp_path / "pki" / "kubelet-client-current.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    assert asyncio.run(store.load()) == (cert, key)
    assert split_pem(path.read_bytes()) == (cert, key)
    newer = _pair()
    asyncio.run(store.save(*newer))
    assert asyncio.run(store.load()) == newer
    assert [p.name for p in path.parent.iterdir()] == ["kubelet-client-current.pem"]
