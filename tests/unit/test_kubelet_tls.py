"""The kubelet API's TLS, as a client sees it on the wire: TLS 1.2 at least, and in 1.2 only the ECDHE AEAD suites
a kubelet is configured with (CIS Kubernetes Benchmark); kube-apiserver's usual offer is taken."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest

from k8sgpu.cli.dev import pki
from k8sgpu.runtime.certificates import TLS12_CIPHERS, serving_context
from k8sgpu.runtime.kubelet.server import KubeletServer


@pytest.fixture
def served(tmp_path):
    """A KubeletServer listening with the serving context and an ECDSA P-256 certificate (what the runtime's CSR
    gets), and the CA that verifies it."""
    ca = pki.make_ca(tmp_path, "ca", "test-ca")
    pair = pki.issue(ca, tmp_path, "kubelet", "system:node:unit.gpu", server=True, ips=("127.0.0.1",))
    context = serving_context(ca.cert.read_bytes())
    context.load_cert_chain(pair.cert, pair.key)
    return context, ca


def _handshake(context: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str, str] | str:
    """(TLS version, suite) the handshake agreed on, or why it failed (the server's alert, or its reset)."""
    async def main():
        server = KubeletServer(provider=None, door=None, node_name="unit.gpu", pods=list,
                               started=datetime.datetime.now(datetime.UTC))
        await server.start("127.0.0.1", 0, context)
        port = server._server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="127.0.0.1")
        except (ssl.SSLError, ConnectionError) as exc:
            return type(exc).__name__ + ": " + str(exc)
        finally:
            await server.stop()
            server._server.close()
        agreed = writer.get_extra_info("ssl_object")
        result = (agreed.version(), agreed.cipher()[0])
        writer.close()
        return result

    return asyncio.run(main())


def _client(ca: pki.KeyPair, *, version: ssl.TLSVersion, ciphers: str = "") -> ssl.SSLContext:
    client = ssl.create_default_context(cafile=str(ca.cert))
    client.minimum_version = client.maximum_version = version
    if ciphers:
        client.set_ciphers(ciphers)
    return client


def test_tls_1_3_and_1_2_with_the_kubelets_suites_are_taken(served):
    context, ca = served
    assert _handshake(context, _client(ca, version=ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
    for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        assert _handshake(context, _client(ca, version=ssl.TLSVersion.TLSv1_2, ciphers=suite)) == ("TLSv1.2", suite)
    # Go's default offer (what kube-apiserver sends) in TLS 1.2: an AEAD suite is agreed.
    agreed = _handshake(context, _client(ca, version=ssl.TLSVersion.TLSv1_2, ciphers="DEFAULT"))
    assert agreed[0] == "TLSv1.2" and agreed[1] in TLS12_CIPHERS.split(":")


# CBC suites an ECDSA certificate could serve (OpenSSL's defaults would). The RSA key exchange suites cannot be
# agreed with the runtime's ECDSA key anyway; TLS12_CIPHERS leaves them out for a --tls-cert-file with an RSA key.
@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"])
def test_tls_1_2_cbc_suites_are_refused(served, suite):
    context, ca = served
    assert isinstance(_handshake(context, _client(ca, version=ssl.TLSVersion.TLSv1_2, ciphers=suite)), str)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_before_1_2_is_refused(served, version):
    context, ca = served
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    client = _client(ca, version=version, ciphers="DEFAULT:@SECLEVEL=0")
    assert isinstance(_handshake(context, client), str)
