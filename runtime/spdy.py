"""SPDY/3.1 framing and connections, as kube-apiserver speaks it to kubelets and to port-forward clients.

kube-apiserver reaches a kubelet's exec, attach and portForward endpoints over
SPDY/3.1 (it translates kubectl's WebSocket into SPDY itself), and takes
port-forwarding as SPDY tunnelled in a WebSocket. The peer is Go's
spdystream, which opens every stream from the client side, sends header blocks
compressed with zlib and the SPDY/3 dictionary (one compression context per
direction for the whole connection), and neither sends nor honours flow-control
windows; so WINDOW_UPDATE frames are read and ignored here too.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_CANCEL = 5
RST_PROTOCOL_ERROR = 1
RST_REFUSED_STREAM = 3
# What one stream holds of the peer's data before the connection stops reading (spdystream has no flow control,
# so the only backpressure there is, as in Go's spdystream, is not reading the socket): a slow consumer, e.g. a
# provider that does not take a container's stdin, makes the peer's writes wait instead of the runtime buffer.
STREAM_BUFFER_BYTES = 1 << 20
# A header block, decompressed (as a kubelet's MaxHeaderBytes): a small block of zeros inflates a thousandfold.
MAX_HEADER_BYTES = 1 << 20
# Streams one connection may have open at once: exec opens at most five, port-forward two per connection.
MAX_STREAMS = 1000

_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges "
    "age allow authorization cache-control connection content-base content-encoding content-language "
    "content-length content-location content-md5 content-range content-type date etag expect expires from "
    "host if-match if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after server te trailer "
    "transfer-encoding upgrade user-agent vary via warning www-authenticate method get status"
).split() + ["200 OK"] + "version HTTP/1.1 url public set-cookie keep-alive origin".split()
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
# The header compression dictionary of the SPDY/3 specification, section 2.6.10.1.
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class ProtocolError(Exception):
    pass


class HeaderCodec:
    """Header blocks of one connection: a zlib stream per direction, primed with the dictionary."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                         DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)

    def encode(self, headers: dict[str, str]) -> bytes:
        raw = [struct.pack(">I", len(headers))]
        for name, value in headers.items():
            n, v = name.lower().encode(), value.encode()
            raw += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
        return self._deflate.compress(b"".join(raw)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, block: bytes) -> dict[str, str]:
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BYTES)
            if self._inflate.unconsumed_tail:
                raise ProtocolError(f"SPDY header block larger than {MAX_HEADER_BYTES} bytes")
            (count,) = struct.unpack_from(">I", raw, 0)
            pos, headers = 4, {}
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4:pos + 4 + n].decode()
                pos += 4 + n
                (n,) = struct.unpack_from(">I", raw, pos)
                # Several values of one name are joined by NUL; kubelet streams carry one each.
                headers[name] = raw[pos + 4:pos + 4 + n].decode()
                pos += 4 + n
        except (zlib.error, struct.error, UnicodeDecodeError) as exc:
            raise ProtocolError(f"bad SPDY header block: {exc}") from None
        return headers


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


class Stream:
    """One stream opened by the peer: its headers, the data it sent, and a way to answer."""

    def __init__(self, conn: SpdyConnection, stream_id: int, headers: dict[str, str]):
        self.conn, self.id, self.headers = conn, stream_id, headers
        self.replied = asyncio.Event()
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.buffered = 0  # bytes received and not yet read
        self._room = asyncio.Event()
        self._room.set()
        self.remote_closed = False
        self.local_closed = False

    @property
    def type(self) -> str:
        return self.headers.get("streamtype", "")

    async def read(self) -> bytes | None:
        """The next chunk the peer sent; None once it half-closed the stream (or the connection ended)."""
        chunk = await self._incoming.get()
        if chunk:
            self.buffered -= len(chunk)
            self.conn.buffered -= len(chunk)
            if self.buffered < STREAM_BUFFER_BYTES:
                self._room.set()
        return chunk

    async def write(self, data: bytes) -> None:
        if data and not self.local_closed:
            await self.conn.send(data_frame(self.id, 0, data))

    async def close(self) -> None:
        if not self.local_closed:
            self.local_closed = True
            await self.conn.send(data_frame(self.id, FLAG_FIN, b""))
        self.conn._forget(self)

    def _feed(self, data: bytes | None) -> None:
        if data is None:
            if self.remote_closed:
                return
            self.remote_closed = True
            self._room.set()  # nothing more comes: whoever waits for room goes on
            self.conn._forget(self)
        elif self.remote_closed:
            return  # data after the peer's FIN (or after the connection ended) is dropped
        else:
            self.buffered += len(data)
            self.conn.buffered += len(data)
            if self.buffered >= STREAM_BUFFER_BYTES:
                self._room.clear()
        self._incoming.put_nowait(data)

    async def _wait_for_room(self) -> None:
        await self._room.wait()


class SpdyConnection:
    """One side of a SPDY connection. As a server it accepts the peer's streams and answers each at
    once; as a client it opens streams (`open_stream`) and the peer answers."""

    def __init__(self, reader, writer, on_stream: Callable[[Stream], Awaitable[None] | None] = lambda s: None):
        self.reader, self.writer = reader, writer
        self.on_stream = on_stream
        self.codec = HeaderCodec()
        self.streams: dict[int, Stream] = {}  # open streams: those closed both ways are forgotten
        self._last_id = 0
        self.buffered = 0  # bytes the peer sent that nobody has read yet, all streams together
        self._lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self._next_id = 1  # client-initiated streams are odd

    def _forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed and self.streams.get(stream.id) is stream:
            del self.streams[stream.id]

    async def open_stream(self, headers: dict[str, str], timeout: float = 30) -> Stream:
        """Open a stream (client side) and wait for the peer's SYN_REPLY."""
        stream_id, self._next_id = self._next_id, self._next_id + 2
        stream = Stream(self, stream_id, headers)
        self.streams[stream_id] = stream
        self._last_id = max(self._last_id, stream_id)
        # stream id, associated stream id, priority and slot, then the header block
        await self.send(control_frame(SYN_STREAM, 0, struct.pack(">IIH", stream_id, 0, 0)
                                      + self.codec.encode(headers)))
        if self.closed.is_set():  # the peer went away before this stream was known: no reply will come
            raise ConnectionError("the SPDY connection was closed by the peer")
        await asyncio.wait_for(stream.replied.wait(), timeout)
        return stream

    async def send(self, frame: bytes) -> None:
        if self.writer.is_closing():
            return
        async with self._lock:
            self.writer.write(frame)
            await self.writer.drain()

    async def serve(self) -> None:
        """Read frames until the peer goes away; every stream then reads None."""
        try:
            while True:
                header = await self.reader.readexactly(8)
                first, second = struct.unpack(">II", header)
                flags, length = second >> 24, second & 0xFFFFFF
                payload = await self.reader.readexactly(length)
                if first & 0x80000000:
                    await self._control((first >> 16) & 0x7FFF, first & 0xFFFF, flags, payload)
                else:
                    stream = self.streams.get(first & 0x7FFFFFFF)
                    if stream is None:
                        continue
                    if payload:
                        stream._feed(payload)
                    if flags & FLAG_FIN:
                        stream._feed(None)
                    await stream._wait_for_room()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except (ProtocolError, struct.error) as exc:
            log.warning("closing SPDY connection: %s", exc)
        finally:
            for stream in list(self.streams.values()):
                stream.replied.set()
                stream._feed(None)
            self.closed.set()

    async def _control(self, version: int, kind: int, flags: int, payload: bytes) -> None:
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version}, expected {VERSION}")
        if kind == SYN_STREAM:
            (stream_id,) = struct.unpack_from(">I", payload, 0)
            stream_id &= 0x7FFFFFFF
            headers = self.codec.decode(payload[10:])
            if stream_id == 0 or stream_id in self.streams or len(self.streams) >= MAX_STREAMS:
                why = RST_PROTOCOL_ERROR if stream_id == 0 or stream_id in self.streams else RST_REFUSED_STREAM
                await self.send(control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, why)))
                return
            stream = Stream(self, stream_id, headers)
            self.streams[stream_id] = stream
            self._last_id = max(self._last_id, stream_id)
            await self.send(control_frame(SYN_REPLY, 0, struct.pack(">I", stream_id) + self.codec.encode({})))
            if flags & FLAG_FIN:
                stream._feed(None)
            result = self.on_stream(stream)
            if asyncio.iscoroutine(result):
                await result
        elif kind == SYN_REPLY:
            (stream_id,) = struct.unpack_from(">I", payload, 0)
            self.codec.decode(payload[4:])
            stream = self.streams.get(stream_id & 0x7FFFFFFF)
            if stream is not None:
                stream.replied.set()
                if flags & FLAG_FIN:
                    stream._feed(None)
        elif kind == RST_STREAM:
            (stream_id,) = struct.unpack_from(">I", payload, 0)
            stream = self.streams.get(stream_id & 0x7FFFFFFF)
            if stream is not None:
                stream.local_closed = True
                stream.replied.set()
                stream._feed(None)
                self._forget(stream)
        elif kind == PING:
            await self.send(control_frame(PING, 0, payload[:4]))
        elif kind == GOAWAY:
            raise asyncio.IncompleteReadError(b"", None)
        elif kind == HEADERS:
            self.codec.decode(payload[4:])  # keeps the inflate context in step
        # SETTINGS and WINDOW_UPDATE: spdystream uses no flow control, nothing to do.

    async def close(self) -> None:
        """Half-close every stream still open on our side, say GOAWAY, and end the connection."""
        for stream in list(self.streams.values()):
            await stream.close()
        last = self._last_id
        await self.send(control_frame(GOAWAY, 0, struct.pack(">II", last, 0)))
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
