"""SPDY/3.1 framing takes any frames from its peer: the connection serves them or closes, never raises, never
holds more than its bounds, and every stream it accepted reads to its end."""

from __future__ import annotations

import asyncio
import socket

from hypothesis import given

from k8sgpu.runtime import spdy

from .strategies import spdy_sessions


@given(frames=spdy_sessions())
def test_a_spdy_connection_serves_any_frames(frames):
    async def main():
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=theirs)
        accepted: list[spdy.Stream] = []
        conn = spdy.SpdyConnection(reader, writer, accepted.append)
        serving = asyncio.create_task(conn.serve())
        peer_reader, peer_writer = await asyncio.open_connection(sock=ours)
        peer_writer.write(b"".join(frames))
        await peer_writer.drain()
        peer_writer.write_eof()
        await asyncio.wait_for(serving, 20)  # raises what serve() raised
        assert conn.buffered <= spdy.STREAM_BUFFER_BYTES * max(1, len(accepted)) + 16 * 1024 * 1024
        assert len(conn.streams) <= spdy.MAX_STREAMS
        for stream in accepted:  # each reads its data, then None
            while await asyncio.wait_for(stream.read(), 5) is not None:
                pass
        assert conn.buffered == 0
        await conn.close()
        peer_writer.close()
        await peer_reader.read()

    asyncio.run(main())
