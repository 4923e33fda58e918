"""What the fuzzed kubelet API talks to on its other sides: a provider whose containers are paused (they take no
stdin and say nothing until their session is closed) and a door that lets every caller in, so that arbitrary
requests reach every handler. The kubelet API's own parts (h11 handling, routes, SPDY, the relays) are the real
ones; `serve_bytes` runs one connection of the real server over a socket pair."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import socket

import h11

from k8sgpu.runtime import errors
from k8sgpu.runtime.kubelet.auth import Door, User
from k8sgpu.runtime.kubelet.server import KubeletServer

# Bounds on one connection: the server must finish with it (answer, or close) well inside this.
CONNECTION_SECONDS = 20


class OpenDoor(Door):
    def __init__(self):
        super().__init__(kube=None, node_name="fuzz.gpu")

    async def authenticate(self, peercert, authorization):
        return User("system:kube-apiserver", ("system:masters",))

    async def authorize(self, user, method, path):
        return True, ""


class PausedSession:
    """An exec, attach or port-forward into a paused container: stdin is not taken until `resume()` (then it is
    counted and hashed), nothing comes out until the session is closed."""

    def __init__(self):
        self.closed = asyncio.Event()
        self.running = asyncio.Event()
        self.resizes: list[tuple[int, int]] = []
        self.taken = 0
        self.digest = hashlib.sha256()

    def resume(self) -> None:
        self.running.set()

    async def send_stdin(self, data: bytes) -> None:
        await self.running.wait()
        self.taken += len(data)
        self.digest.update(data)

    send = send_stdin

    async def close_stdin(self) -> None:
        pass

    close_write = close_stdin

    async def resize(self, width: int, height: int) -> None:
        assert isinstance(width, int) and isinstance(height, int)
        self.resizes.append((width, height))

    async def receive(self):
        await self.closed.wait()
        return None

    async def close(self) -> None:
        self.closed.set()


class PausedProvider:
    """The provider seam's kubelet-facing calls; a pod named `missing` is not found, as a provider says."""

    def __init__(self):
        self.sessions: list[PausedSession] = []

    def _check(self, name: str) -> None:
        if name == "missing":
            raise errors.NotFound("pods \"missing\" not found")

    async def logs(self, namespace, name, container, options):
        self._check(name)
        yield b"line 1\n"
        yield b"line 2\n"

    async def _session(self, name: str) -> PausedSession:
        self._check(name)
        session = PausedSession()
        self.sessions.append(session)
        return session

    async def exec(self, namespace, name, container, command, **flags):
        return await self._session(name)

    async def attach(self, namespace, name, container, **flags):
        return await self._session(name)

    async def port_forward(self, namespace, name, port):
        if not 0 < port < 65536:
            raise errors.Invalid(f"invalid port {port}")
        return await self._session(name)

    async def usage(self):
        return {}


def kubelet_server(door: Door | None = None) -> KubeletServer:
    return KubeletServer(provider=PausedProvider(), door=door or OpenDoor(), node_name="fuzz.gpu",
                         pods=lambda: [], started=datetime.datetime.now(datetime.UTC))


async def serve_bytes(server: KubeletServer, data: bytes, *, then=None) -> bytes:
    """Send ``data`` to one connection of ``server`` (then run ``then(reader, writer)`` if given), half-close, and
    return all the server sent back. Whatever the handler raises is raised here; a handler that does not finish
    within CONNECTION_SECONDS fails with TimeoutError."""
    ours, theirs = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=theirs)
    handler = asyncio.create_task(server._serve_connection(server_reader, server_writer))
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        writer.write(data)
        await writer.drain()
        if then is not None:
            await then(reader, writer)
        if writer.can_write_eof():
            writer.write_eof()
        received = await asyncio.wait_for(reader.read(), CONNECTION_SECONDS)
        await asyncio.wait_for(handler, CONNECTION_SECONDS)
        return received
    finally:
        handler.cancel()
        await asyncio.gather(handler, return_exceptions=True)
        writer.close()


def responses(data: bytes, sent: bytes = b"") -> list[h11.Response | h11.InformationalResponse]:
    """The HTTP responses in what the server sent, one after the other (after a 101 the rest is SPDY and not read).
    An answer to a HEAD the server could read has no body; one it could not read has one: with HEAD in ``sent``
    each answer is read both ways, and the one that leaves a next answer (or nothing) is taken."""
    out: list = []
    methods = ["HEAD", "GET"] if b"HEAD " in sent else ["GET"]
    while data:
        for method in methods:
            try:
                answer, rest = _one_response(data, method)
            except h11.RemoteProtocolError:
                continue
            if not rest or rest.startswith(b"HTTP/1.1 ") or answer.status_code == 101:
                break
        else:
            raise AssertionError(f"the server sent something that is not HTTP/1.1: {data[:200]!r}")
        out.append(answer)
        if answer.status_code == 101:
            break
        data = rest
    return out


# The client side's request, proposing the upgrade, so that a 101 is a valid answer to it.
_PROPOSAL = [("Host", "x"), ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]


def _one_response(data: bytes, method: str) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=_PROPOSAL))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    answer = None
    while True:
        event = conn.next_event()
        if isinstance(event, h11.InformationalResponse | h11.Response):
            answer = event
            if event.status_code == 101:
                return answer, b""
        elif isinstance(event, h11.EndOfMessage):
            return answer, bytes(conn.trailing_data[0])
        elif event is h11.NEED_DATA:
            conn.receive_data(b"")  # the server closed after what it sent
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            if answer is None:
                raise h11.RemoteProtocolError("no response")
            return answer, b""
