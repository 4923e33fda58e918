"""Any bytes as a SPDY/3.1 peer's frames: served or closed, never raising, buffers within their bounds."""

import asyncio
import socket
import sys

import _common  # noqa: F401
import atheris

with atheris.instrument_imports(include=["k8sgpu"]):
    from k8sgpu.runtime import spdy


async def _serve(data: bytes) -> None:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)
    accepted: list = []
    conn = spdy.SpdyConnection(reader, writer, accepted.append)
    _, peer = await asyncio.open_connection(sock=ours)
    peer.write(data)
    peer.write_eof()
    await asyncio.wait_for(conn.serve(), 20)
    assert len(conn.streams) <= spdy.MAX_STREAMS
    for stream in accepted:
        while await stream.read() is not None:
            pass
    assert conn.buffered == 0
    writer.close()
    peer.close()


def one(data: bytes) -> None:
    asyncio.run(_serve(data))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
