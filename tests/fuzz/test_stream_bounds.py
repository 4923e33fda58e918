"""SPDY streams are bounded: 200 MB pushed into `kubectl exec -i` or a port-forward whose container does not take
its input leave the runtime holding at most spdy.STREAM_BUFFER_BYTES (and one frame) of it; the sender is held
back instead (TCP backpressure, as Go's spdystream does it), and once the container takes its input everything
arrives, in order."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from pathlib import Path

import pytest

from k8sgpu.runtime import spdy

from .parts import kubelet_server, responses
from .strategies import upgrade_request

TOTAL = 200 * 1024 * 1024
CHUNK = 32 * 1024  # what kube-apiserver's io.Copy writes per frame
# The runtime's own bound, and a bound on the whole process's resident memory growth while 200 MB wait.
BUFFER_BOUND = spdy.STREAM_BUFFER_BYTES + CHUNK
RSS_BOUND = 64 * 1024 * 1024


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def _read_upgrade(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    assert responses(head)[0].status_code == 101, head
    return head


@pytest.mark.parametrize("path, headers", [
    ("/exec/default/p/c?command=cat&input=1&output=1&error=1", [{"streamtype": "error"}, {"streamtype": "stdout"},
                                                                {"streamtype": "stderr"}, {"streamtype": "stdin"}]),
    ("/portForward/default/p", [{"streamtype": "error", "port": "7777", "requestid": "0"},
                                {"streamtype": "data", "port": "7777", "requestid": "0"}]),
])
def test_200_mb_into_a_paused_container_stay_with_the_sender(path, headers):
    async def main():
        server = kubelet_server()
        ours, theirs = socket.socketpair()
        server_reader, server_writer = await asyncio.open_connection(sock=theirs)
        handler = asyncio.create_task(server._serve_connection(server_reader, server_writer))
        reader, writer = await asyncio.open_connection(sock=ours)
        writer.write(upgrade_request(path))
        await _read_upgrade(reader)
        client = spdy.SpdyConnection(reader, writer)  # kube-apiserver's side
        serving = asyncio.create_task(client.serve())
        streams = [await client.open_stream(h) for h in headers]
        target = streams[-1]  # stdin, or the forwarded connection's data
        session = None
        while session is None:  # the provider's session is made once the streams are open
            await asyncio.sleep(0.01)
            session = (server.provider.sessions or [None])[0]

        sent, digest = 0, hashlib.sha256()

        async def push() -> None:
            nonlocal sent
            block = bytes(range(256)) * (CHUNK // 256)
            while sent < TOTAL:
                chunk = block[: min(CHUNK, TOTAL - sent)]
                digest.update(chunk)
                await target.write(chunk)
                sent += len(chunk)
            await target.close()

        rss_before = _rss()
        pushing = asyncio.create_task(push())
        # Until the sender is held back: nothing more is taken for a while (that wait is no assertion).
        last, still = -1, 0
        while still < 20 and not pushing.done():
            await asyncio.sleep(0.02)
            still = still + 1 if sent == last else 0
            last = sent
        held_back_at, buffered, rss_growth = sent, server.buffered_bytes(), _rss() - rss_before

        session.resume()
        await asyncio.wait_for(pushing, 120)
        while session.taken < TOTAL:
            await asyncio.sleep(0.01)
        taken_digest = session.digest.hexdigest()
        await session.close()
        await client.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await asyncio.wait_for(handler, 20)
        return held_back_at, buffered, rss_growth, taken_digest == digest.hexdigest()

    held_back_at, buffered, rss_growth, intact = asyncio.run(main())
    print(f"held back after {held_back_at} bytes; runtime buffered {buffered}; RSS grew {rss_growth} bytes")
    assert held_back_at < TOTAL // 10, "the sender was never held back"
    assert 0 < buffered <= BUFFER_BOUND
    assert rss_growth < RSS_BOUND
    assert intact, "what the container took is not what was sent"
