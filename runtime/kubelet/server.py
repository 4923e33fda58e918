"""The kubelet API of the virtual node: HTTPS on the node's address, answered from the provider.

kube-apiserver calls it for `kubectl logs`, `exec`, `attach`, `port-forward`
and the node proxy (`/stats/summary`, `/metrics/resource`, `/pods`). HTTP/1.1
is spoken with h11, because exec, attach and portForward switch the connection
to SPDY/3.1, which no Python web framework upgrades to.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, urlsplit

import h11

from .. import errors
from ..provider import PodProvider
from ..spdy import SpdyConnection, Stream
from . import stats
from .auth import Door

log = logging.getLogger(__name__)

EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")  # v5 over SPDY is v4: SPDY half-closes stdin
PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
STREAM_TIMEOUT = 30.0
IDLE_TIMEOUT = 90.0  # a kubelet's http.Server IdleTimeout: how long a connection may wait for its next request
RESIZE_MESSAGE_BYTES = 4096  # a terminal size is {"Width":N,"Height":N}; more that does not parse is dropped
LOG_OPTIONS = ("follow", "previous", "timestamps", "tailLines", "sinceSeconds", "sinceTime", "limitBytes")

_ROUTES: list[tuple[str, re.Pattern]] = [
    (name, re.compile(pattern)) for name, pattern in (
        ("logs", r"^/containerLogs/(?P<ns>[^/]+)/(?P<pod>[^/]+)/(?P<container>[^/]+)/?$"),
        ("exec", r"^/exec/(?P<ns>[^/]+)/(?P<pod>[^/]+)/(?:[^/]+/)?(?P<container>[^/]+)/?$"),
        ("attach", r"^/attach/(?P<ns>[^/]+)/(?P<pod>[^/]+)/(?:[^/]+/)?(?P<container>[^/]+)/?$"),
        ("portforward", r"^/portForward/(?P<ns>[^/]+)/(?P<pod>[^/]+)(?:/[^/]+)?/?$"),
        ("pods", r"^/pods/?$"),
        ("runningpods", r"^/runningpods/?$"),
        ("summary", r"^/stats/summary/?$"),
        ("resource_metrics", r"^/metrics/resource/?$"),
        ("healthz", r"^/healthz/?$"),
    )
]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, reason: str = ""):
        super().__init__(message)
        self.status, self.reason = status, reason


def _parse(request: h11.Request) -> tuple[str, object, dict[str, str], list[str], dict[str, list[str]]]:
    """Method, split target, headers (lower-case names), offered stream protocols and query of a request that
    h11 accepted; HTTPError 400 for what h11 lets through but a URL or text cannot be (bytes that are not
    ASCII, a broken IPv6 authority)."""
    try:
        method = request.method.decode("ascii")
        target = urlsplit(request.target.decode("ascii"))
        headers = {k.decode("ascii").lower(): v.decode("ascii") for k, v in request.headers}
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(400, f"malformed request: {exc}", "BadRequest") from None
    offered = [p.strip() for k, v in request.headers if k.lower() == b"x-stream-protocol-version"
               for p in v.decode("ascii").split(",")]
    return method, target, headers, offered, parse_qs(target.query, keep_blank_values=True)


def _status_of(exc: errors.KubeError) -> int:
    return 400 if isinstance(exc, errors.Invalid) else (exc.status or 500)


class _Prefixed:
    """A reader that first returns bytes h11 had already read past the upgrade."""

    def __init__(self, prefix: bytes, reader: asyncio.StreamReader):
        self.prefix, self.reader = prefix, reader

    async def readexactly(self, n: int) -> bytes:
        if not self.prefix:
            return await self.reader.readexactly(n)
        head, self.prefix = self.prefix[:n], self.prefix[n:]
        return head + (await self.reader.readexactly(n - len(head)) if len(head) < n else b"")


class KubeletServer:
    def __init__(self, provider: PodProvider, door: Door, node_name: str, pods: Callable[[], list[dict]],
                 started: datetime.datetime):
        self.provider, self.door, self.node_name = provider, door, node_name
        self.pods = pods
        self.started = started
        self.cpu = stats.CpuCounter()
        self._server: asyncio.base_events.Server | None = None
        self._address: tuple = ()
        self._connections: set[asyncio.Task] = set()
        self._spdy: set[SpdyConnection] = set()  # connections switched to SPDY, while they last

    async def start(self, host: str, port: int, tls) -> None:
        """Listen now (a port taken fails here); `serve` then owns the listener."""
        self._address = (host, port, tls)
        self._server = await asyncio.start_server(self._serve_connection, host, port, ssl=tls,
                                                  ssl_handshake_timeout=10)
        log.info("kubelet API listening on https://%s:%d", host, port)

    async def serve(self) -> None:
        """The listener as a supervised part: runs until cancelled; listens again when started after an end.
        A listener closed by anything but its own cancellation is a failure, so its supervisor restarts it."""
        if self._server is None or not self._server.is_serving():
            await self.start(*self._address)
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        raise RuntimeError("the kubelet API's listener was closed")

    def buffered_bytes(self) -> int:
        """What kube-apiserver sent on exec, attach and port-forward streams that the provider has not taken yet,
        all connections together: at most spdy.STREAM_BUFFER_BYTES (and one frame) per open stream."""
        return sum(conn.buffered for conn in self._spdy)

    def problems(self) -> dict[str, str]:
        """The listener, if it has stopped serving (its supervisor says whether it is being restarted)."""
        if self._server is not None and not self._server.is_serving():
            return {"kubelet-api": "not listening"}
        return {}

    async def stop(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # -- HTTP/1.1 ----------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(_next_event(conn, reader), IDLE_TIMEOUT)
                except TimeoutError:
                    break
                if not isinstance(event, h11.Request):
                    break
                while not isinstance(await _next_event(conn, reader), h11.EndOfMessage):
                    pass  # no endpoint takes a request body
                upgraded = await self._handle(conn, reader, writer, event)
                if upgraded or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            # As Go's net/http: a request that is not HTTP/1.1 gets 400 (431 for a head too large), then the end.
            with contextlib.suppress(h11.LocalProtocolError, ConnectionError, OSError):
                await _respond(conn, writer, exc.error_status_hint,
                               _status_body(exc.error_status_hint, "BadRequest", f"malformed request: {exc}"))
        except h11.LocalProtocolError as exc:
            log.warning("kubelet API: ending a connection the server could not answer in HTTP/1.1: %s", exc)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _handle(self, conn: h11.Connection, reader, writer, request: h11.Request) -> bool:
        """Answers one request; True when the connection was switched to SPDY (and is now finished)."""
        try:
            method, target, headers, offered, query = _parse(request)
            user = await self.door.authenticate(writer.get_extra_info("peercert"), headers.get("authorization", ""))
            if user is None:
                raise HTTPError(401, "Unauthorized", "Unauthorized")
            allowed, why = await self.door.authorize(user, method, target.path)
            if not allowed:
                raise HTTPError(403, f"Forbidden ({why})", "Forbidden")
            for name, pattern in _ROUTES:
                match = pattern.match(target.path)
                if match:
                    return await getattr(self, f"_{name}")(conn, reader, writer, match, query, headers, offered)
            raise HTTPError(404, f"no such kubelet endpoint: {target.path}", "NotFound")
        except HTTPError as exc:
            await _respond(conn, writer, exc.status, _status_body(exc.status, exc.reason, str(exc)))
        except errors.KubeError as exc:
            await _respond(conn, writer, _status_of(exc), _status_body(_status_of(exc), type(exc).__name__, str(exc)))
        return False

    # -- plain endpoints ----------------------------------------------------------------

    async def _healthz(self, conn, reader, writer, match, query, headers, offered) -> bool:
        await _respond(conn, writer, 200, b"ok", "text/plain")
        return False

    async def _pods(self, conn, reader, writer, match, query, headers, offered) -> bool:
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.pods()}
        await _respond(conn, writer, 200, json.dumps(body).encode())
        return False

    async def _runningpods(self, conn, reader, writer, match, query, headers, offered) -> bool:
        items = [{"metadata": {k: p["metadata"][k] for k in ("name", "namespace", "uid") if k in p["metadata"]},
                  "spec": {"containers": [{"name": c["name"], "image": c.get("image", "")}
                                          for c in p["spec"].get("containers", [])]}}
                 for p in self.pods() if (p.get("status") or {}).get("phase") == "Running"]
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        await _respond(conn, writer, 200, json.dumps(body).encode())
        return False

    async def _summary(self, conn, reader, writer, match, query, headers, offered) -> bool:
        usage = await self.provider.usage()
        body = stats.summary(self.node_name, self.started, self.pods(), usage, self.cpu)
        await _respond(conn, writer, 200, json.dumps(body).encode())
        return False

    async def _resource_metrics(self, conn, reader, writer, match, query, headers, offered) -> bool:
        usage = await self.provider.usage()
        body = stats.resource_metrics(self.node_name, self.started, self.pods(), usage, self.cpu)
        await _respond(conn, writer, 200, body.encode(), "text/plain; version=0.0.4")
        return False

    async def _logs(self, conn, reader, writer, match, query, headers, offered) -> bool:
        options = {k: query[k][-1] for k in LOG_OPTIONS if k in query}
        chunks = self.provider.logs(match["ns"], match["pod"], match["container"], options)
        try:
            first = await anext(chunks, b"")  # errors before the first byte become the HTTP status
            writer.write(conn.send(h11.Response(status_code=200, headers=[
                ("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")])))
            if first:
                writer.write(conn.send(h11.Data(data=first)))
            await writer.drain()
            await _relay_until_client_leaves(conn, reader, writer, chunks)
        finally:
            await chunks.aclose()
        return False

    # -- streams ---------------------------------------------------------------------------

    async def _exec(self, conn, reader, writer, match, query, headers, offered, attach: bool = False) -> bool:
        protocol = _negotiate(headers, offered, EXEC_PROTOCOLS)
        flags = {name: _flag(query, key) for name, key in
                 (("stdin", "input"), ("stdout", "output"), ("stderr", "error"), ("tty", "tty"))}
        if flags["tty"]:
            flags["stderr"] = False
        ns, pod, container = match["ns"], match["pod"], match["container"]
        if attach:
            session = await self.provider.attach(ns, pod, container, **flags)
        else:
            command = query.get("command") or []
            if not command:
                raise HTTPError(400, "you must specify at least one command for the container", "BadRequest")
            session = await self.provider.exec(ns, pod, container, command, **flags)
        spdy = None
        try:
            spdy = await _switch(conn, reader, writer, protocol)
            self._spdy.add(spdy)
            await _run_container_session(spdy, session, flags)
        finally:
            self._spdy.discard(spdy)
            await session.close()
        return True

    async def _attach(self, conn, reader, writer, match, query, headers, offered) -> bool:
        return await self._exec(conn, reader, writer, match, query, headers, offered, attach=True)

    async def _portforward(self, conn, reader, writer, match, query, headers, offered) -> bool:
        protocol = _negotiate(headers, offered, (PORT_FORWARD_PROTOCOL,))
        ns, pod = match["ns"], match["pod"]
        pairs: dict[str, dict[str, Stream]] = {}
        tasks: set[asyncio.Task] = set()

        def on_stream(stream: Stream) -> None:
            pair = pairs.setdefault(stream.headers.get("requestid", ""), {})
            pair[stream.type] = stream
            if "data" in pair and "error" in pair:
                task = asyncio.create_task(self._forward(ns, pod, pair["data"], pair["error"]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        spdy = await _switch(conn, reader, writer, protocol, on_stream)
        self._spdy.add(spdy)
        try:
            await spdy.serve()
        finally:
            self._spdy.discard(spdy)
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await spdy.close()
        return True

    async def _forward(self, ns: str, pod: str, data: Stream, error: Stream) -> None:
        try:
            port = int(data.headers.get("port", ""))
            session = await self.provider.port_forward(ns, pod, port)
        except (ValueError, errors.KubeError) as exc:
            await error.write(f"error forwarding port {data.headers.get('port')} to pod {ns}/{pod}: {exc}".encode())
            await error.close()
            await data.close()
            return

        async def upstream() -> None:
            while (chunk := await data.read()) is not None:
                await session.send(chunk)
            await session.close_write()

        async def downstream() -> None:
            while (item := await session.receive()) is not None:
                kind, chunk = item
                await (data if kind == "data" else error).write(chunk)

        up, down = asyncio.create_task(upstream()), asyncio.create_task(downstream())
        try:
            await down  # the provider's side ends the connection; the client's half-close does not
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            await session.close()
            await data.close()
            await error.close()


async def _run_container_session(spdy: SpdyConnection, session, flags: dict[str, bool]) -> None:
    """Relay an exec/attach between kube-apiserver's SPDY streams and the provider's session (protocol v4)."""
    wanted = {"error"} | {name for name in ("stdin", "stdout", "stderr") if flags[name]}
    if flags["tty"]:
        wanted.add("resize")
    streams: dict[str, Stream] = {}
    complete = asyncio.Event()

    def on_stream(stream: Stream) -> None:
        streams[stream.type] = stream
        if wanted <= streams.keys():
            complete.set()

    spdy.on_stream = on_stream
    serving = asyncio.create_task(spdy.serve())
    opened = asyncio.create_task(complete.wait())
    # Until the streams are open, or the peer hangs up (then there is nobody to wait for), or the time is up.
    try:
        await asyncio.wait({opened, serving}, timeout=STREAM_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        opened.cancel()
        serving.cancel()
        raise
    if not complete.is_set():
        opened.cancel()
        if not serving.done():
            log.warning("exec: kube-apiserver did not open the streams %s in time",
                        sorted(wanted - streams.keys()))
        serving.cancel()
        await asyncio.gather(opened, serving, return_exceptions=True)
        await spdy.close()
        return

    async def stdin() -> None:
        while (chunk := await streams["stdin"].read()) is not None:
            await session.send_stdin(chunk)
        await session.close_stdin()

    async def resize() -> None:
        decoder, pending = json.JSONDecoder(), ""
        while (chunk := await streams["resize"].read()) is not None:
            pending += chunk.decode(errors="replace")
            while pending.strip():
                try:
                    size, end = decoder.raw_decode(pending.lstrip())
                except (ValueError, RecursionError):  # RecursionError: [[[[… nested past the interpreter's limit
                    if len(pending) > RESIZE_MESSAGE_BYTES:
                        pending = ""  # not a terminal size, and never will be
                    break
                pending = pending.lstrip()[end:]
                if size := _terminal_size(size):
                    await session.resize(*size)

    async def output() -> None:
        status = None
        while (item := await session.receive()) is not None:
            kind, data = item
            if kind == "status":
                status = data
            elif kind == "stderr" and "stderr" in streams:
                await streams["stderr"].write(data)
            elif "stdout" in streams:
                await streams["stdout"].write(data)
        await streams["error"].write(status or json.dumps({"metadata": {}, "status": "Success"}).encode())

    pumps = [asyncio.create_task(output())]
    if "stdin" in streams:
        pumps.append(asyncio.create_task(stdin()))
    if "resize" in streams:
        pumps.append(asyncio.create_task(resize()))
    try:
        # The session ends when the provider's command does, or when kube-apiserver hangs up.
        await asyncio.wait({pumps[0], serving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await spdy.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


def _terminal_size(message: object) -> tuple[int, int] | None:
    """(width, height) of a resize message {"Width": N, "Height": N}; None for anything else."""
    if not isinstance(message, dict):
        return None
    width, height = message.get("Width", 0), message.get("Height", 0)
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 65536 for n in (width, height)):
        return None
    return width, height


async def _switch(conn: h11.Connection, reader, writer, protocol: str, on_stream=None) -> SpdyConnection:
    writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[
        ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)])))
    await writer.drain()
    data, _closed = conn.trailing_data
    return SpdyConnection(_Prefixed(bytes(data), reader), writer, on_stream or (lambda stream: None))


def _negotiate(headers: dict[str, str], offered: list[str], supported: tuple[str, ...]) -> str:
    if "spdy/3.1" not in headers.get("upgrade", "").lower():
        raise HTTPError(400, "this endpoint needs a connection upgrade to SPDY/3.1 (kube-apiserver makes it)",
                        "BadRequest")
    for protocol in supported:
        if protocol in offered:
            return protocol
    raise HTTPError(403, f"none of the offered stream protocols {offered} is supported; "
                         f"supported: {', '.join(supported)}", "Forbidden")


def _flag(query: dict[str, list[str]], key: str) -> bool:
    return query.get(key, [""])[-1].lower() in ("1", "true")


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        return event


async def _respond(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes,
                   content_type: str = "application/json") -> None:
    # IDLE: the request could not be read (h11 lets a server answer that); later, a stream already started and
    # nothing can be said any more.
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    writer.write(conn.send(h11.Response(status_code=status, headers=[
        ("Content-Type", content_type), ("Content-Length", str(len(body)))])))
    if getattr(conn, "_request_method", None) != b"HEAD":  # h11 refuses a body after HEAD, and says so privately
        writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def _status_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


async def _relay_until_client_leaves(conn: h11.Connection, reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter, chunks: AsyncIterator[bytes]) -> None:
    """Send chunks until they end; stop at once when the client closes its side (a `logs -f` ended)."""
    async def relay() -> None:
        async for chunk in chunks:
            writer.write(conn.send(h11.Data(data=chunk)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    sending = asyncio.create_task(relay())
    hangup = asyncio.create_task(reader.read(1))
    try:
        done, _ = await asyncio.wait({sending, hangup}, return_when=asyncio.FIRST_COMPLETED)
        if sending in done:
            sending.result()
        # else: the client closed its side (or broke the protocol): stop reading the provider
    finally:
        for task in (sending, hangup):
            task.cancel()
        await asyncio.gather(sending, hangup, return_exceptions=True)
