"""exec, attach and port-forward into a provider's pod, over the Kubernetes WebSocket channel protocols.

kube-apiserver (1.30 and later) takes `v5.channel.k8s.io` for exec and attach
and passes `v4.channel.k8s.io` port-forwarding through to the kubelet. Each
message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 error (a
metav1.Status), 4 resize, and in v5 255 with a channel number closes that
channel (stdin's end of file). Port-forwarding goes as SPDY tunnelled in the
WebSocket (`SPDY/3.1+portforward.k8s.io`), which kube-apiserver requires of
WebSocket clients since 1.31.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import aiohttp

from ..spdy import SpdyConnection, Stream

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
_OUT = {STDOUT: "stdout", STDERR: "stderr", ERROR: "status"}

# kwok (the dev ground's provider) reports a command's non-zero exit as an internal error
# "... exit status N" where a kubelet says NonZeroExitCode; both become the kubelet's answer.
_EXIT_STATUS = re.compile(r"exit status (\d+)\s*$", re.MULTILINE)


def exit_status(status: dict) -> dict:
    """The metav1.Status a kubelet gives for a command's end, from the provider's."""
    if status.get("status") != "Failure" or status.get("reason") == "NonZeroExitCode":
        return status
    match = _EXIT_STATUS.search(str(status.get("message", "")))
    if status.get("reason") != "InternalError" or not match:
        return status
    code = match.group(1)
    return {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": code}]}}


class ContainerSession:
    """A running exec or attach in the provider's container."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws

    async def send_stdin(self, data: bytes) -> None:
        if data and not self.ws.closed:
            await self.ws.send_bytes(bytes([STDIN]) + data)

    async def close_stdin(self) -> None:
        if not self.ws.closed:
            await self.ws.send_bytes(bytes([CLOSE, STDIN]))

    async def resize(self, width: int, height: int) -> None:
        if not self.ws.closed:
            await self.ws.send_bytes(bytes([RESIZE]) + json.dumps({"Width": width, "Height": height}).encode())

    async def receive(self) -> tuple[str, bytes] | None:
        """("stdout" | "stderr", bytes) or ("status", metav1.Status JSON); None when the session ended."""
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                continue
            channel, data = message.data[0], message.data[1:]
            kind = _OUT.get(channel)
            if kind is None or (not data and kind != "status"):
                continue
            if kind == "status":
                try:
                    status = json.loads(data)
                except ValueError:
                    status = None
                if isinstance(status, dict):  # anything else is passed on as it came, as a Status that is no JSON
                    data = json.dumps(exit_status(status)).encode()
            return kind, data
        return None

    async def close(self) -> None:
        await self.ws.close()


class _WebSocketPipe:
    """A byte stream over a WebSocket's binary messages: what a SPDY connection reads and writes."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        # A bytearray: a frame of up to 16 MiB may come in many small messages, and bytes += would copy it each time.
        self._buffer = bytearray()
        self._pending: list[bytes] = []

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            message = await self.ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                self._buffer += message.data
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.ERROR):
                raise asyncio.IncompleteReadError(bytes(self._buffer), n)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def write(self, data: bytes) -> None:
        self._pending.append(data)

    async def drain(self) -> None:
        if self._pending and not self.ws.closed:
            data, self._pending = b"".join(self._pending), []
            await self.ws.send_bytes(data)

    def is_closing(self) -> bool:
        return self.ws.closed

    def close(self) -> None:
        pass  # the session closes the WebSocket

    async def wait_closed(self) -> None:
        await self.ws.close()


class PortSession:
    """One forwarded connection to a port of the provider's pod: SPDY streams (an error stream and a data
    stream, as kubectl opens them) tunnelled in a WebSocket, so each side can half-close."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, port: int):
        self.ws, self.port = ws, port
        pipe = _WebSocketPipe(ws)
        self.conn = SpdyConnection(pipe, pipe)
        self._serving: asyncio.Task | None = None
        self._data: Stream | None = None
        self._errors: asyncio.Task | None = None

    async def open(self) -> PortSession:
        self._serving = asyncio.create_task(self.conn.serve())
        headers = {"port": str(self.port), "requestid": "0"}
        error = await self.conn.open_stream({"streamtype": "error", **headers})
        await error.close()  # nothing is sent on it: only the provider writes errors
        self._data = await self.conn.open_stream({"streamtype": "data", **headers})
        self._errors = asyncio.create_task(_read_all(error))
        return self

    async def send(self, data: bytes) -> None:
        await self._data.write(data)

    async def close_write(self) -> None:
        await self._data.close()

    async def receive(self) -> tuple[str, bytes] | None:
        """("data" | "error", bytes); None when the provider closed the connection."""
        chunk = await self._data.read()
        if chunk is not None:
            return "data", chunk
        if self._errors is not None:
            text, self._errors = await self._errors, None
            if text:
                return "error", text
        return None

    async def close(self) -> None:
        if self._errors is not None:
            self._errors.cancel()
        with contextlib.suppress(ConnectionError, OSError):
            await self.conn.close()
        if self._serving is not None:
            self._serving.cancel()
            await asyncio.gather(self._serving, return_exceptions=True)
        await self.ws.close()


async def _read_all(stream: Stream) -> bytes:
    chunks = []
    while (chunk := await stream.read()) is not None:
        chunks.append(chunk)
    return b"".join(chunks)
