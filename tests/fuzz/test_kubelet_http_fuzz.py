"""The kubelet API's HTTP/1.1 door takes arbitrary bytes (what is left of a connection once TLS is done): every
connection ends, nothing raises out of its handler, and what comes back is HTTP/1.1 with no 5xx; a request h11
refuses gets a 4xx, but for a transfer coding other than chunked: 501, as Go's net/http (so a kubelet) and
RFC 9112 section 6.1 answer it."""

from __future__ import annotations

import asyncio

import h11
from hypothesis import given
from hypothesis import strategies as st

from k8sgpu.runtime.kubelet.auth import Door

from .parts import kubelet_server, responses, serve_bytes
from .strategies import http_requests, spdy_frames, upgrade_request


def _well_formed(data: bytes) -> bool:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return True
    except h11.RemoteProtocolError:
        return False
    return True


@given(data=http_requests())
def test_any_bytes_get_http_answers_and_never_a_5xx(data):
    received = asyncio.run(serve_bytes(kubelet_server(), data))
    answers = responses(received, data)
    assert all(a.status_code < 500 or _unsupported_coding(a) for a in answers), answers
    if not _well_formed(data):
        assert answers and (400 <= answers[-1].status_code < 500 or _unsupported_coding(answers[-1])), answers


def _unsupported_coding(answer: h11.Response) -> bool:
    return answer.status_code == 501


@given(data=http_requests().filter(lambda d: b"authorization" not in d.lower()))
def test_without_credentials_the_real_door_says_401(data):
    received = asyncio.run(serve_bytes(kubelet_server(Door(kube=None, node_name="fuzz.gpu")), data))
    answers = responses(received, data)
    assert all(a.status_code in (400, 401, 431, 501) for a in answers), answers


@given(path=st.sampled_from(["/exec/default/p/c?command=sh&input=1&output=1&tty=1",
                             "/attach/default/p/c?input=1&output=1&error=1", "/portForward/default/p"]),
       frames=st.lists(spdy_frames(), max_size=12))
def test_spdy_after_the_upgrade_takes_any_frames(path, frames):
    received = asyncio.run(serve_bytes(kubelet_server(), upgrade_request(path) + b"".join(frames)))
    assert responses(received)[0].status_code == 101
