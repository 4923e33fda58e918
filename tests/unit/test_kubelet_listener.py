"""The kubelet API's listener is a supervised part: closed by anything but its supervisor, it fails, and the
supervisor listens again; stopped by its supervisor, it ends quietly and stops listening."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest

from k8sgpu.cli.dev import pki
from k8sgpu.runtime.kubelet.server import KubeletServer
from k8sgpu.runtime.supervisor import Supervisor


def _server() -> KubeletServer:
    return KubeletServer(provider=None, door=None, node_name="unit.gpu", pods=list,
                         started=datetime.datetime.now(datetime.UTC))


@pytest.fixture
def tls(tmp_path) -> ssl.SSLContext:
    ca = pki.make_ca(tmp_path, "ca", "test-ca")
    pair = pki.issue(ca, tmp_path, "kubelet", "kubelet", server=True, ips=("127.0.0.1",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    return context


async def _connects(server: KubeletServer) -> bool:
    port = server._server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _until(predicate, turns: int = 200) -> bool:
    for _ in range(turns):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


def test_a_closed_listener_is_restarted_by_its_supervisor(tls):
    async def main():
        supervisor = Supervisor(base_delay=0.01)
        server = _server()
        await server.start("127.0.0.1", 0, tls)
        supervisor.start("kubelet-api", server.serve)
        first = server._server
        assert await _connects(server)

        first.close()  # not the supervisor's doing
        assert await _until(lambda: server._server is not first and server._server.is_serving())
        assert await _connects(server)
        assert not supervisor.problems()

        await supervisor.stop("kubelet-api")
        assert not server._server.is_serving()
        await server.stop()

    asyncio.run(main())


def test_a_listener_stopped_by_its_supervisor_is_not_restarted(tls):
    async def main():
        supervisor = Supervisor(base_delay=0.01)
        server = _server()
        await server.start("127.0.0.1", 0, tls)
        supervisor.start("kubelet-api", server.serve)
        await asyncio.sleep(0.05)
        listener = server._server
        await supervisor.stop("kubelet-api")
        await asyncio.sleep(0.05)
        assert server._server is listener and not listener.is_serving()
        assert not supervisor.restarting() and not supervisor.problems()

    asyncio.run(main())
