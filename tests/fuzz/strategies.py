"""Hypothesis strategies for what the runtime's doors take: Pod-shaped JSON (right and wrong types), HTTP/1.1
requests as kube-apiserver sends them to a kubelet, and SPDY/3.1 frames."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from k8sgpu.runtime import spdy

# Any JSON value: what a field of the wrong type may hold instead.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

quantities = st.one_of(
    st.sampled_from(["500m", "1", "8", "32861620Ki", "1.5G", "0", "1e3", "NaN", "Infinity", "-1", "1e999999999",
                     "9Ei", "1ki", "", "m", "12Mi", "0.1"]),
    st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.from_regex(r"\A[+-]?[0-9]{0,25}(\.[0-9]{0,5})?([eE][+-]?[0-9]{1,12})?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?\Z"),
)


def shaped(right: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the Pod schema's type, sometimes any JSON value in its place."""
    return st.one_of(right, right, right, json_values)


def fields(required: dict | None = None, optional: dict | None = None) -> st.SearchStrategy:
    return shaped(st.fixed_dictionaries({k: v for k, v in (required or {}).items()},
                                        optional={k: v for k, v in (optional or {}).items()}))


names = st.sampled_from(["c", "cuda", "kube-api-access-x1", "cfg", "sec", "a" * 70, "", "Ünïcode", "x/y"])
key_ref = fields({"name": shaped(names)}, {"optional": shaped(st.booleans()), "key": shaped(names)})
resource_list = shaped(st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "ephemeral-storage"]),
                                       quantities, max_size=3))
security_context = fields(optional={
    "privileged": shaped(st.booleans()),
    "capabilities": fields(optional={"add": shaped(st.lists(shaped(st.sampled_from(["CHOWN", "SYS_ADMIN"])),
                                                            max_size=2))}),
    "procMount": shaped(st.sampled_from(["Default", "Unmasked"])),
    "seccompProfile": fields(optional={"type": shaped(st.sampled_from(["RuntimeDefault", "Unconfined"]))}),
    "windowsOptions": fields(optional={"hostProcess": shaped(st.booleans())}),
})
container = fields({"name": shaped(names)}, {
    "image": shaped(st.just("nvidia/cuda:12.6.0-base-ubuntu20.04")),
    "command": shaped(st.lists(st.text(max_size=5), max_size=2)),
    "resources": fields(optional={"requests": resource_list, "limits": resource_list}),
    "securityContext": security_context,
    "ports": shaped(st.lists(fields(optional={"containerPort": shaped(st.integers(0, 70000)),
                                              "hostPort": shaped(st.integers(0, 70000))}), max_size=2)),
    "env": shaped(st.lists(fields({"name": shaped(names)}, {"value": shaped(st.text(max_size=5)), "valueFrom": fields(
        optional={"configMapKeyRef": key_ref, "secretKeyRef": key_ref,
                  "fieldRef": fields({"fieldPath": shaped(st.just("metadata.name"))})})}), max_size=3)),
    "envFrom": shaped(st.lists(fields(optional={"configMapRef": key_ref, "secretRef": key_ref}), max_size=2)),
    "volumeMounts": shaped(st.lists(fields({"name": shaped(names), "mountPath": shaped(st.just("/data"))}),
                                    max_size=2)),
})
volume = fields({"name": shaped(names)}, {
    "configMap": key_ref,
    "secret": fields({"secretName": shaped(names)}, {"optional": shaped(st.booleans())}),
    "emptyDir": shaped(st.just({})),
    "hostPath": fields({"path": shaped(st.just("/"))}),
    "persistentVolumeClaim": fields({"claimName": shaped(names)}),
    "projected": fields(optional={"sources": shaped(st.lists(fields(optional={
        "configMap": key_ref, "secret": key_ref,
        "serviceAccountToken": fields({"path": shaped(st.just("token"))})}), max_size=3))}),
})
metadata = fields({"name": shaped(names), "namespace": shaped(st.sampled_from(["default", "team-a"])),
                   "uid": shaped(st.uuids().map(str))},
                  {"labels": shaped(st.dictionaries(st.text(max_size=10), shaped(st.text(max_size=10)), max_size=3)),
                   "annotations": shaped(st.dictionaries(st.text(max_size=10), shaped(st.text(max_size=10)),
                                                         max_size=3))})
pod_spec = fields({"containers": shaped(st.lists(container, max_size=3))}, {
    "runtimeClassName": shaped(st.sampled_from(["seeweb-nvidia-1xa6000", "seeweb-nvidia-1xa100", "other"])),
    "initContainers": shaped(st.lists(container, max_size=2)),
    "ephemeralContainers": shaped(st.lists(container, max_size=1)),
    "volumes": shaped(st.lists(volume, max_size=3)),
    "imagePullSecrets": shaped(st.lists(fields({"name": shaped(names)}), max_size=2)),
    "hostNetwork": shaped(st.booleans()), "hostPID": shaped(st.booleans()), "hostIPC": shaped(st.booleans()),
    "securityContext": fields(optional={
        "sysctls": shaped(st.lists(fields({"name": shaped(st.sampled_from(["kernel.shm_rmid_forced", "vm.x"]))},
                                          {"value": shaped(st.just("1"))}), max_size=2)),
        "seccompProfile": fields(optional={"type": shaped(st.sampled_from(["RuntimeDefault", "Unconfined"]))})}),
    "restartPolicy": shaped(st.sampled_from(["Always", "Never"])),
    "terminationGracePeriodSeconds": shaped(st.integers(0, 100)),
})
pods = shaped(fields({"metadata": metadata, "spec": pod_spec}, {"apiVersion": st.just("v1"), "kind": st.just("Pod")}))

# -- HTTP/1.1 ----------------------------------------------------------------------------------------------------

paths = st.one_of(
    st.sampled_from(["/pods", "/runningpods/", "/healthz", "/stats/summary", "/metrics/resource", "/logs/",
                     "/containerLogs/default/p/c", "/exec/default/p/c", "/attach/default/p/c",
                     "/portForward/default/p", "/", "*", "//[", "http://[::1", "/%zz", "/containerLogs//\x7f",
                     "/exec/a/b/c/d/e", "/configz", "/spec/"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=40).map(lambda s: "/" + s),
)
queries = st.lists(st.sampled_from(["follow=1", "tailLines=-1", "tailLines=x", "command=ls", "command=", "input=1",
                                    "output=1", "error=1", "tty=1", "limitBytes=99999999999999999999", "sinceTime=x",
                                    "%", "&&", "a=%ff"]), max_size=4).map("&".join)
header_pairs = st.lists(st.tuples(
    st.sampled_from(["Host", "Connection", "Upgrade", "X-Stream-Protocol-Version", "Authorization",
                     "Content-Length", "Transfer-Encoding", "Expect", "X-Other"]),
    st.one_of(st.sampled_from(["Upgrade", "SPDY/3.1", "v4.channel.k8s.io, v5.channel.k8s.io", "portforward.k8s.io",
                               "Bearer x", "0", "5", "-1", "chunked", "100-continue", "k8s.gpu", ""]),
              st.binary(max_size=12))), max_size=6)


@st.composite
def http_requests(draw) -> bytes:
    """A request line, headers and maybe a body: mostly well-formed, then cut, doubled or mixed with bytes."""
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"G\x00T", b"\xffGET"]))
    target = draw(paths).encode("latin-1", "replace")
    query = draw(queries)
    if query:
        target += b"?" + query.encode()
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b""]))
    lines = [method + b" " + target + b" " + version]
    if draw(st.booleans()):
        lines.append(b"Host: k8s.gpu")
    for name, value in draw(header_pairs):
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=64))
    mutation = draw(st.sampled_from(["none", "none", "cut", "twice", "flip", "garbage"]))
    if mutation == "cut":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif mutation == "twice":
        raw = raw + raw
    elif mutation == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
    elif mutation == "garbage":
        raw = draw(st.binary(max_size=256))
    return raw


def upgrade_request(path: str) -> bytes:
    """What kube-apiserver sends for `kubectl exec -i` or `kubectl port-forward` (see REFERENCE.md)."""
    protocol = "portforward.k8s.io" if path.startswith("/portForward") else "v4.channel.k8s.io"
    return (f"POST {path} HTTP/1.1\r\nHost: k8s.gpu\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            f"X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n").encode()


# -- SPDY/3.1 --------------------------------------------------------------------------------------------------

stream_headers = st.dictionaries(st.sampled_from(["streamtype", "port", "requestid", "x"]),
                                 st.sampled_from(["stdin", "stdout", "stderr", "error", "resize", "data", "7777",
                                                  "0", "1", "-1", "99999999999", ""]), max_size=4)


@st.composite
def spdy_frames(draw, codec: spdy.HeaderCodec | None = None) -> bytes:
    """One frame: a well-formed control or data frame (header blocks compressed in the connection's context
    when ``codec`` is given), or one with a wrong version, length, payload or header block."""
    kind = draw(st.sampled_from(["syn", "syn", "data", "data", "fin", "rst", "ping", "settings", "window", "goaway",
                                 "headers", "reply", "raw", "badversion", "short"]))
    stream_id = draw(st.integers(0, 9) | st.integers(0, 2**31 - 1))
    flags = draw(st.sampled_from([0, 0, spdy.FLAG_FIN, 0xFF]))
    if kind == "syn":
        block = codec.encode(draw(stream_headers)) if codec and draw(st.booleans()) else draw(st.binary(max_size=40))
        return spdy.control_frame(spdy.SYN_STREAM, flags, struct.pack(">IIH", stream_id, 0, 0) + block)
    if kind in ("data", "fin"):
        payload = draw(st.binary(max_size=64) | st.binary(min_size=4096, max_size=8192))
        return spdy.data_frame(stream_id, spdy.FLAG_FIN if kind == "fin" else flags, payload)
    if kind == "rst":
        return spdy.control_frame(spdy.RST_STREAM, 0, struct.pack(">II", stream_id, 5)[:draw(st.integers(0, 8))])
    if kind == "ping":
        return spdy.control_frame(spdy.PING, 0, draw(st.binary(max_size=6)))
    if kind == "settings":
        return spdy.control_frame(spdy.SETTINGS, 0, draw(st.binary(max_size=16)))
    if kind == "window":
        return spdy.control_frame(spdy.WINDOW_UPDATE, 0, draw(st.binary(max_size=8)))
    if kind == "goaway":
        return spdy.control_frame(spdy.GOAWAY, 0, draw(st.binary(max_size=8)))
    if kind in ("headers", "reply"):
        kind_code = spdy.HEADERS if kind == "headers" else spdy.SYN_REPLY
        block = codec.encode(draw(stream_headers)) if codec and draw(st.booleans()) else draw(st.binary(max_size=40))
        return spdy.control_frame(kind_code, flags, struct.pack(">I", stream_id) + block)
    if kind == "badversion":
        return struct.pack(">HHI", 0x8000 | draw(st.integers(0, 0x7FFF)), 1, 0)
    if kind == "short":
        return draw(st.binary(max_size=7))
    return draw(st.binary(max_size=64))


@st.composite
def spdy_sessions(draw) -> list[bytes]:
    """What a peer sends on one connection: frames in order, header blocks in one compression context."""
    codec = spdy.HeaderCodec()
    return [draw(spdy_frames(codec)) for _ in range(draw(st.integers(0, 16)))]
