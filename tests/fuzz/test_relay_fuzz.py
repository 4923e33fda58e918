"""The provider's side of exec, attach and port-forward, as the runtime reads it: any WebSocket messages from the
provider's API server (a real aiohttp WebSocket server on loopback stands in for it) come out of the runtime's
sessions as output, a status or the end, and never as an exception."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from k8sgpu.runtime import spdy
from k8sgpu.runtime.provider.streams import ContainerSession, PortSession

from .strategies import spdy_frames

# How long one session may take before it counts as hung: generous, as a frame cut into single-byte WebSocket
# messages is thousands of messages, and this machine is shared.
HUNG = 60
CHANNELS = st.sampled_from([0, 1, 2, 3, 4, 255, 7])
channel_messages = st.one_of(
    st.tuples(CHANNELS, st.binary(max_size=64)).map(lambda m: bytes([m[0]]) + m[1]),
    st.tuples(st.just(3), st.sampled_from([b"[1]", b"null", b"\"x\"", b"{", b"{}", b'{"status": "Failure"}',
                                           b'{"status": "Failure", "reason": "InternalError", "message": 7}',
                                           b'{"status": "Failure", "reason": "InternalError", '
                                           b'"message": "exit status 3"}'])).map(lambda m: bytes([m[0]]) + m[1]),
    st.binary(max_size=16),
    st.text(max_size=16),
)


async def _serve(messages: list, protocols: tuple[str, ...]):
    """A WebSocket server that sends ``messages`` (bytes as binary, str as text) and closes."""
    async def handler(request):
        ws = web.WebSocketResponse(protocols=protocols)
        await ws.prepare(request)
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/"


@given(messages=st.lists(channel_messages, max_size=8))
def test_exec_sessions_take_any_provider_messages(messages):
    async def main():
        runner, url = await _serve(messages, ("v5.channel.k8s.io",))
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("v5.channel.k8s.io",)) as ws:
                session = ContainerSession(ws)
                out = []
                while (item := await asyncio.wait_for(session.receive(), HUNG)) is not None:
                    out.append(item)
                await session.close()
                assert all(kind in ("stdout", "stderr", "status") for kind, _ in out)
        finally:
            await runner.cleanup()

    asyncio.run(main())


@given(frames=st.lists(spdy_frames(), max_size=10), split=st.integers(1, 64))
def test_port_forward_sessions_take_any_provider_frames(frames, split):
    """The provider's port-forward answers with SPDY frames tunnelled in WebSocket messages, cut anywhere."""
    replies = spdy.control_frame(spdy.SYN_REPLY, 0, b"\x00\x00\x00\x01" + spdy.HeaderCodec().encode({}))
    data = replies + b"".join(frames)
    messages = [data[i:i + split] for i in range(0, len(data), split)]

    async def main():
        runner, url = await _serve(messages, ("SPDY/3.1+portforward.k8s.io",))
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    url, protocols=("SPDY/3.1+portforward.k8s.io",)) as ws:
                session = PortSession(ws, 7777)
                try:
                    await asyncio.wait_for(session.open(), HUNG)
                except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                    await session.close()
                    return  # what RemoteProvider.port_forward turns into an error on the stream
                while await asyncio.wait_for(session.receive(), HUNG) is not None:
                    pass
                await session.close()
        finally:
            await runner.cleanup()

    asyncio.run(main())
