"""Any bytes on a kubelet API connection (after TLS): answered in HTTP/1.1 without a 5xx but 501, never raising."""

import asyncio
import sys

import _common  # noqa: F401
import atheris

with atheris.instrument_imports(include=["k8sgpu", "h11"]):
    from fuzz.parts import kubelet_server, responses, serve_bytes


def one(data: bytes) -> None:
    answers = responses(asyncio.run(serve_bytes(kubelet_server(), data)), data)
    assert all(a.status_code < 500 or a.status_code == 501 for a in answers), answers


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
