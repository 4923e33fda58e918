"""Pieces of the kubelet API that stand alone: SPDY framing, exit codes, the door's mapping,
the serving CSR and the stats."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import random

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k8sgpu.runtime import spdy
from k8sgpu.runtime.certificates import (
    EKS_SERVING,
    KUBELET_SERVING,
    renewal_delay,
    serving_request,
    signer_name,
)
from k8sgpu.runtime.kubelet.auth import certificate_user, subresource
from k8sgpu.runtime.kubelet.stats import CpuCounter, resource_metrics, summary
from k8sgpu.runtime.provider import ContainerUsage, PodUsage
from k8sgpu.runtime.provider.streams import exit_status


def test_spdy_dictionary_is_the_specifications():
    # SHA-256 of the 1423 bytes in the SPDY/3 draft, section 2.6.10.1 (and Go's spdystream).
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == \
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"


def test_header_blocks_share_one_compression_context_per_direction():
    sender, receiver = spdy.HeaderCodec(), spdy.HeaderCodec()
    first = sender.encode({"streamtype": "stdout", "port": "80"})
    second = sender.encode({"streamtype": "stdout", "port": "80"})
    assert len(second) < len(first)  # the second block refers back to the first
    assert receiver.decode(first) == {"streamtype": "stdout", "port": "80"}
    assert receiver.decode(second) == {"streamtype": "stdout", "port": "80"}


def test_spdy_client_and_server_exchange_streams_and_half_close():
    async def run() -> tuple[list, list]:
        accepted: asyncio.Queue = asyncio.Queue()
        server_side: list = []

        async def serve(reader, writer):
            conn = spdy.SpdyConnection(reader, writer, accepted.put_nowait)
            server_side.append(conn)
            await conn.serve()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = spdy.SpdyConnection(reader, writer)
        serving = asyncio.create_task(client.serve())
        stream = await client.open_stream({"streamtype": "data", "port": "7777"})
        theirs = await asyncio.wait_for(accepted.get(), 5)
        await stream.write(b"ping")
        await stream.close()
        got = [await theirs.read(), await theirs.read()]
        await theirs.write(b"pong")
        await theirs.close()
        back = [await stream.read(), await stream.read()]
        await client.close()
        await asyncio.wait_for(server_side[0].closed.wait(), 5)
        serving.cancel()
        server.close()
        return [theirs.headers, *got], back

    received, back = asyncio.run(run())
    assert received == [{"streamtype": "data", "port": "7777"}, b"ping", None]
    assert back == [b"pong", None]


def test_kwok_exit_errors_become_the_kubelets_exit_codes():
    kwok = {"metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
            "message": "Internal error occurred: error executing command in container: cmd wait: sh -c exit 3: "
                       "exit status 3"}
    assert exit_status(kwok)["reason"] == "NonZeroExitCode"
    assert exit_status(kwok)["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    kubelet = {"status": "Failure", "reason": "NonZeroExitCode", "details": {"causes": [
        {"reason": "ExitCode", "message": "2"}]}}
    assert exit_status(kubelet) == kubelet
    other = {"status": "Failure", "reason": "InternalError", "message": "container not found"}
    assert exit_status(other) == other
    assert exit_status({"status": "Success"}) == {"status": "Success"}


def test_paths_map_to_node_subresources_as_kubelet_does():
    assert subresource("/stats/summary") == "stats"
    assert subresource("/metrics/resource") == "metrics"
    assert subresource("/logs/syslog") == "log"
    for path in ("/containerLogs/ns/p/c", "/exec/ns/p/c", "/portForward/ns/p", "/pods", "/healthz", "/statsx"):
        assert subresource(path) == "proxy", path


def test_certificate_user_is_cn_with_organizations_as_groups():
    peer = {"subject": ((("organizationName", "system:masters"),), (("commonName", "kube-apiserver-client"),))}
    user = certificate_user(peer)
    assert user.name == "kube-apiserver-client"
    assert user.groups == ("system:masters", "system:authenticated")
    assert certificate_user(None) is None and certificate_user({}) is None


def test_serving_csr_names_the_node_and_every_address():
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(serving_request("k8s.gpu", ["10.1.2.3", "node.example"], key))
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:k8s.gpu"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["k8s.gpu", "node.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert signer_name("aws") == EKS_SERVING
    assert signer_name("") == KUBELET_SERVING
    assert signer_name("example.com/serving") == "example.com/serving"


def test_renewal_falls_between_70_and_90_percent_of_the_life(tmp_path):
    from k8sgpu.cli.dev import pki
    ca = pki.make_ca(tmp_path, "ca", "test-ca")
    leaf = pki.issue(ca, tmp_path, "leaf", "leaf", server=True)
    cert = x509.load_pem_x509_certificate(leaf.cert.read_bytes())
    life = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    start = cert.not_valid_before_utc
    delays = [renewal_delay(leaf.cert.read_bytes(), start, random.Random(seed)) for seed in range(50)]
    assert all(0.7 * life <= d <= 0.9 * life for d in delays)
    assert renewal_delay(leaf.cert.read_bytes(), cert.not_valid_after_utc, random.Random(1)) == 0


def _pod(name: str) -> dict:
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "c"}, {"name": "sidecar"}]},
            "status": {"startTime": "2026-11-26T10:00:00Z", "phase": "Running",
                       "containerStatuses": [{"name": "sidecar",
                                              "state": {"running": {"startedAt": "2026-11-26T10:00:05Z"}}}]}}


def test_summary_integrates_cpu_and_leaves_unmeasured_pods_without_figures():
    counter = CpuCounter()
    t0 = datetime.datetime(2026, 11, 26, 10, 0, 0, tzinfo=datetime.UTC)
    pods = [_pod("measured"), _pod("unmeasured")]

    def usage(at: datetime.datetime, nanocores: int) -> dict:
        return {("default", "measured"): PodUsage(at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                                  (ContainerUsage("c", nanocores, 512 * 2**20),))}

    summary("k8s.gpu", t0, pods, usage(t0, 500_000_000), counter)
    later = summary("k8s.gpu", t0, pods, usage(t0 + datetime.timedelta(seconds=10), 1_500_000_000), counter)
    measured = next(p for p in later["pods"] if p["podRef"]["name"] == "measured")
    # (0.5 + 1.5) / 2 cores for 10 s = 10 core-seconds
    assert measured["containers"][0]["cpu"]["usageCoreNanoSeconds"] == 10 * 10**9
    assert measured["memory"]["workingSetBytes"] == 512 * 2**20
    assert later["node"]["cpu"]["usageNanoCores"] == 1_500_000_000
    unmeasured = next(p for p in later["pods"] if p["podRef"]["name"] == "unmeasured")
    # Every container from the first second, with its start; figures only once measured.
    assert unmeasured["containers"] == [{"name": "c", "startTime": "2026-11-26T10:00:00Z"},
                                        {"name": "sidecar", "startTime": "2026-11-26T10:00:05Z"}]
    assert "cpu" not in unmeasured
    assert [c["name"] for c in measured["containers"]] == ["c", "sidecar"] and "cpu" not in measured["containers"][1]
    pending = {**_pod("pending"), "status": {"phase": "Pending"}}
    assert summary("k8s.gpu", t0, [pending], {}, CpuCounter())["pods"][0]["containers"] == []
    text = resource_metrics("k8s.gpu", t0, pods, usage(t0 + datetime.timedelta(seconds=20), 0), counter)
    assert 'container_cpu_usage_seconds_total{container="c",namespace="default",pod="measured"} 17.5 ' in text
    assert "scrape_error 0" in text
    json.dumps(later)  # serialisable as the kubelet's JSON


def test_a_renewed_certificate_serves_new_connections_and_keeps_open_ones(tmp_path):
    """What rotation does: the new chain goes into the same TLS context the server listens with."""
    import ssl

    from k8sgpu.cli.dev import pki
    from k8sgpu.runtime.certificates import _load_chain

    ca = pki.make_ca(tmp_path, "ca", "test-ca")
    old = pki.issue(ca, tmp_path, "old", "old", server=True, ips=("127.0.0.1",))
    new = pki.issue(ca, tmp_path, "new", "new", server=True, ips=("127.0.0.1",))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(server_ctx, old.cert.read_bytes(), old.key.read_bytes())
    client_ctx = ssl.create_default_context(cafile=str(ca.cert))

    async def run() -> tuple[str, str, bytes]:
        async def echo(reader, writer):
            while data := await reader.read(100):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]

        async def connect():
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            cn = dict(x[0] for x in writer.get_extra_info("peercert")["subject"])["commonName"]
            return reader, writer, cn

        r1, w1, first = await connect()
        _load_chain(server_ctx, new.cert.read_bytes(), new.key.read_bytes())
        r2, w2, second = await connect()
        w1.write(b"still open")
        await w1.drain()
        echoed = await r1.read(100)
        for w in (w1, w2):
            w.close()
        server.close()
        return first, second, echoed

    first, second, echoed = asyncio.run(run())
    assert (first, second, echoed) == ("old", "new", b"still open")
