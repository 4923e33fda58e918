"""What the fuzzers (and writing them) found, each as its smallest reproduction, so that it stays fixed."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import zlib

import aiohttp
import pytest

from k8sgpu.runtime import spdy
from k8sgpu.runtime.admission import admit
from k8sgpu.runtime.catalog import GPUClass, demo_catalog
from k8sgpu.runtime.config import ConfigError, RuntimeConfig, load_file, load_terraform_outputs
from k8sgpu.runtime.kubelet import server as kubelet
from k8sgpu.runtime.kubelet.auth import Door, _TTLCache
from k8sgpu.runtime.provider.streams import _WebSocketPipe, exit_status
from k8sgpu.runtime.quantity import parse_quantity

from .parts import kubelet_server, responses, serve_bytes
from .strategies import upgrade_request

A6000 = GPUClass.from_runtime_class(demo_catalog()[0])


def _status(data: bytes, door: Door | None = None) -> list[int]:
    return [r.status_code for r in responses(asyncio.run(serve_bytes(kubelet_server(door), data)), data)]


# -- HTTP/1.1 ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [
    b"GET /pods\xff HTTP/1.1\r\nHost: k8s.gpu\r\n\r\n",  # a target that is not ASCII: UnicodeDecodeError
    b"GET /pods HTTP/1.1\r\nHost: k8s.gpu\r\nX-Other: \xe9\r\n\r\n",  # a header value that is not ASCII
    b"GET //[ HTTP/1.1\r\nHost: k8s.gpu\r\n\r\n",  # urlsplit: ValueError "Invalid IPv6 URL"
])
def test_requests_h11_takes_but_no_url_can_be_get_400(request_bytes):
    assert _status(request_bytes) == [400]


def test_head_is_answered_without_a_body():
    # A 401's body after HEAD made h11 raise LocalProtocolError out of the connection's handler.
    data = b"HEAD /pods HTTP/1.1\r\nHost: k8s.gpu\r\n\r\nGET /pods HTTP/1.1\r\nHost: k8s.gpu\r\n\r\n"
    assert _status(data, Door(kube=None, node_name="fuzz.gpu")) == [401, 401]


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /pods HTTP/1.1\r\n\r\n", 400),  # no Host: the connection was dropped without an answer
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS hello where HTTP was expected
    (b"GET /pods HTTP/1.1\r\nHost: k8s.gpu\r\nX: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    (b"GET /pods HTTP/1.1\r\nHost: k8s.gpu\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
])
def test_what_h11_refuses_gets_an_answer(request_bytes, status):
    assert _status(request_bytes) == [status]


def test_an_exec_whose_client_leaves_before_opening_streams_ends_at_once(monkeypatch):
    monkeypatch.setattr(kubelet, "STREAM_TIMEOUT", 3600.0)  # waiting for it would fail serve_bytes' bound
    data = upgrade_request("/exec/default/p/c?command=sh&input=1&output=1")
    assert _status(data) == [101]


def _resized(*messages: bytes) -> list[tuple[int, int]]:
    server = kubelet_server()

    async def then(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        client = spdy.SpdyConnection(reader, writer)
        serving = asyncio.create_task(client.serve())
        for kind in ("error", "stdout", "stdin", "resize"):
            stream = await client.open_stream({"streamtype": kind})
            if kind == "resize":
                for message in messages:
                    await stream.write(message)
                await stream.close()
        while sum(len(s.resizes) for s in server.provider.sessions) < 1:
            await asyncio.sleep(0.01)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

    asyncio.run(serve_bytes(server, upgrade_request("/exec/default/p/c?command=sh&input=1&output=1&tty=1"),
                            then=then))
    return server.provider.sessions[0].resizes


@pytest.mark.parametrize("junk", [b"{" * (1 << 20), b"[" * 100_000])
def test_a_resize_stream_of_junk_is_dropped_and_the_next_size_applies(junk):
    # The pending text grew without bound, and no later size could parse; [[[… raised RecursionError.
    assert _resized(junk, b'{"Width": 80, "Height": 24}') == [(80, 24)]


def test_resize_messages_of_the_wrong_shape_are_skipped():
    # [1] raised AttributeError and ended the resize relay; later sizes were lost.
    assert _resized(b'[1]{"Width": "x"}{"Width": 1e400}', b'{"Width": 80, "Height": 24}') == [(80, 24)]


# -- SPDY ---------------------------------------------------------------------------------------------------------

def _serve_frames(*frames: bytes) -> list[spdy.Stream]:
    async def main():
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=theirs)
        accepted: list[spdy.Stream] = []
        conn = spdy.SpdyConnection(reader, writer, accepted.append)
        _, peer = await asyncio.open_connection(sock=ours)
        peer.write(b"".join(frames))
        peer.write_eof()
        await asyncio.wait_for(conn.serve(), 20)
        peer.close()
        return accepted

    return asyncio.run(main())


@pytest.mark.parametrize("kind", [spdy.RST_STREAM, spdy.SYN_STREAM, spdy.SYN_REPLY])
def test_short_control_frames_end_the_connection_quietly(kind):
    _serve_frames(spdy.control_frame(kind, 0, b"\x00"))  # struct.error came out of serve()


def test_a_header_block_that_inflates_past_1_mib_is_refused():
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    bomb = deflate.compress(struct.pack(">I", 1) + b"\x00" * (64 << 20)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    with pytest.raises(spdy.ProtocolError, match="larger than"):
        spdy.HeaderCodec().decode(bomb)


def test_streams_are_refused_beyond_the_limit_and_forgotten_when_closed():
    codec = spdy.HeaderCodec()
    frames = [spdy.control_frame(spdy.SYN_STREAM, spdy.FLAG_FIN, struct.pack(">IIH", 2 * i + 1, 0, 0)
                                 + codec.encode({"streamtype": "data"})) for i in range(spdy.MAX_STREAMS + 5)]
    assert len(_serve_frames(*frames)) == spdy.MAX_STREAMS


def test_the_provider_closing_port_forward_before_a_stream_is_opened_says_so_at_once():
    async def main():
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=theirs)
        conn = spdy.SpdyConnection(reader, writer)
        ours.shutdown(socket.SHUT_WR)  # the peer is done sending (as a WebSocket closed by the provider), still reads
        await conn.serve()
        with pytest.raises(ConnectionError):
            await conn.open_stream({"streamtype": "data"}, timeout=3600)  # waited for the timeout
        writer.close()
        ours.close()

    asyncio.run(main())


class _Messages:
    """What `_WebSocketPipe` reads of an aiohttp WebSocket: its binary messages, then a close."""

    def __init__(self, messages: list[bytes]):
        self._messages = iter(messages)

    async def receive(self):
        data = next(self._messages, None)
        return aiohttp.WSMessage(aiohttp.WSMsgType.BINARY if data else aiohttp.WSMsgType.CLOSE, data, None)


def test_a_frame_in_many_small_websocket_messages_is_read_in_linear_time():
    # The provider's port-forward frames come tunnelled in WebSocket messages; bytes += made the largest frame
    # (16 MiB) in 64-byte messages cost some 2 TB of copying: minutes of a blocked event loop.
    size = (1 << 24) - 1
    frame = spdy.data_frame(1, 0, b"x" * size)
    pipe = _WebSocketPipe(_Messages([frame[i:i + 64] for i in range(0, len(frame), 64)]))

    async def main():
        header = await pipe.readexactly(8)
        return header + await asyncio.wait_for(pipe.readexactly(size), 60)

    assert asyncio.run(main()) == frame


# -- the provider's exec status ------------------------------------------------------------------------------------

def test_an_exit_status_with_a_message_that_is_no_string_is_kept():
    status = {"status": "Failure", "reason": "InternalError", "message": 7}
    assert exit_status(status) == status  # TypeError from the regular expression


# -- the door's caches ---------------------------------------------------------------------------------------------

def test_the_door_caches_stay_bounded_when_every_answer_is_live():
    cache = _TTLCache(300, 300)
    for i in range(25_000):
        cache.put(i, True, True)
    assert len(cache._entries) <= 10_001 and cache.get(24_999) is True


# -- config --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, field", [
    ("node:\n  kubelet_port: .inf\n", "--config node.kubelet_port"),  # OverflowError
    ("node:\n  kubelet_port: 10250.7\n", "--config node.kubelet_port"),  # became 10250
    ("node:\n  name: [a, b]\n", "--config node.name"),  # became "['a', 'b']"
    ("node: {name: [&a [x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a], [*b, *b, *b, *b, *b]]}\n",
     "--config node.name"),  # an alias bomb, expanded by str()
    ("[" * 100_000, "--config"),  # RecursionError
])
def test_config_values_that_are_no_setting_are_refused_naming_it(tmp_path, content, field):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        load_file(RuntimeConfig(), str(path))
    assert refused.value.field == field and len(str(refused.value)) < 300


@pytest.mark.parametrize("content, field", [
    ("[" * 100_000, "--terraform-outputs"),  # RecursionError
    (json.dumps({"node_name": {"value": {"a": 1}}}), "--terraform-outputs node_name"),
    (json.dumps({"tenant_namespace": {"value": True}}), "--terraform-outputs tenant_namespace"),  # became "True"
])
def test_terraform_outputs_that_are_no_setting_are_refused_naming_them(tmp_path, content, field):
    path = tmp_path / "outputs.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        load_terraform_outputs(RuntimeConfig(), str(path))
    assert refused.value.field == field


# -- quantities and admission --------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantity", ["NaN", "Infinity", "-Infinity", "sNaN", "1e999999999", float("inf"), True])
def test_quantities_that_are_no_number_of_bytes_or_cores_are_refused(quantity):
    # NaN raised InvalidOperation (no ValueError) in every comparison; int() of 1e999999999 never ended.
    with pytest.raises(ValueError):
        parse_quantity(quantity)


def _pod(**spec) -> dict:
    return {"metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"runtimeClassName": "seeweb-nvidia-1xa6000", **spec}}


@pytest.mark.parametrize("pod, reason, words", [
    (_pod(containers=[{"name": "c", "resources": {"requests": {"cpu": "NaN"}}}]), "InvalidResources", "cpu"),
    (_pod(containers=[None]), "InvalidPod", "spec.containers[0] is required"),
    (_pod(containers=[{"name": "c", "env": {"a": 1}}]), "InvalidPod", "spec.containers[0].env must be a list"),
    (_pod(containers=[{"name": "c"}], volumes=[{"name": "v", "configMap": {}}]), "InvalidPod",
     "spec.volumes[0].configMap.name is required"),
    ({"spec": {"containers": [{"name": "c"}]}}, "InvalidPod", "metadata is required"),
    (_pod(containers=[{"name": "c", "securityContext": {"capabilities": {"add": [["SYS_ADMIN"]]}}}]), "InvalidPod",
     "capabilities.add[0] must be a string"),
])
def test_pods_of_the_wrong_shape_are_refused_naming_the_field(pod, reason, words):
    refusal = admit(pod, A6000)
    assert refusal is not None and refusal.reason == reason and words in refusal.message, refusal


def test_a_runtime_class_name_that_is_no_string_is_refused_by_the_pod_controllers_decision():
    # decide() looked the name up in the catalog before admission: TypeError, unhashable list.
    from k8sgpu.runtime.controllers.decide import decide

    pod = {"metadata": {"name": "p", "namespace": "default", "uid": "u1"},
           "spec": {"runtimeClassName": [None], "containers": []}}
    action = decide(pod, [], provider_reachable=True, catalog={A6000.name: A6000}, copies={},
                    now="2026-12-02T00:00:00Z")
    assert "runtimeClassName must be a string" in action.message
