"""A thin asyncio Kubernetes REST client over kubernetes_asyncio's connection and authentication.

kubernetes_asyncio loads kubeconfigs and in-cluster configuration and owns the
aiohttp session (TLS, client certificates, bearer tokens). On top of it this
module speaks plain JSON: objects stay dicts, because building the client's
model classes for thousands of pods costs more than the rest of the runtime; orjson reads and writes them (the
standard library's decoder took a fifth of the runtime's CPU with 300 pods, in watch events).
Errors are classified once here (see `errors`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import yarl
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from . import errors
from .metrics import RestClientMetrics

log = logging.getLogger(__name__)

# API group/version of each kind the runtime touches.
_RESOURCES: dict[str, tuple[str, str, bool]] = {
    # kind: (api prefix, plural, namespaced)
    "Pod": ("/api/v1", "pods", True),
    "Node": ("/api/v1", "nodes", False),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "Event": ("/api/v1", "events", True),
    "ResourceQuota": ("/api/v1", "resourcequotas", True),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "RuntimeClass": ("/apis/node.k8s.io/v1", "runtimeclasses", False),
    "CertificateSigningRequest": ("/apis/certificates.k8s.io/v1", "certificatesigningrequests", False),
}


def resource_path(kind: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    prefix, plural, namespaced = _RESOURCES[kind]
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


async def api_client(kubeconfig: str | None) -> k8s_client.ApiClient:
    """An ApiClient for a kubeconfig file, or the in-cluster service account when none is given."""
    cfg = k8s_client.Configuration()
    # Every watch holds a connection for its whole life (one per referenced ConfigMap or Secret, too),
    # so the pool must be far larger than the client's default of 100.
    cfg.connection_pool_maxsize = 4096
    if kubeconfig:
        await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        k8s_config.load_incluster_config(client_configuration=cfg)
    api = k8s_client.ApiClient(configuration=cfg)
    _look_up_the_environment_once(api)
    return api


def _look_up_the_environment_once(api: k8s_client.ApiClient) -> None:
    """kubernetes_asyncio's session trusts the environment, so aiohttp reads ``~/.netrc`` and the proxy variables
    for every request, each in a thread of its own. The same connection pool goes on in a session that does not:
    the proxy (the kubeconfig's ``proxy-url``, else HTTPS_PROXY/NO_PROXY) is looked up once, here; credentials come
    from the kubeconfig alone."""
    old = api.rest_client.pool_manager
    proxy, proxy_auth = api.configuration.proxy or None, None
    if proxy is None:
        with contextlib.suppress(LookupError):
            proxy, proxy_auth = aiohttp.helpers.get_env_proxy_for_url(yarl.URL(api.configuration.host))
    connector = old.connector
    old.detach()
    # The read buffer as kubernetes_asyncio sets it: one watch event may be as large as etcd's 1.5 MiB.
    api.rest_client.pool_manager = aiohttp.ClientSession(connector=connector, proxy=proxy, proxy_auth=proxy_auth,
                                                         read_bufsize=2**21)


class Kube:
    """JSON over the Kubernetes REST API, for one cluster. Every request is counted in ``metrics`` under the
    cluster label ``local`` or ``provider`` (the first word of ``name``)."""

    def __init__(self, api: k8s_client.ApiClient, name: str,
                 on_unauthorized: Callable[[str], Awaitable[None]] | None = None,
                 metrics: RestClientMetrics | None = None):
        self.api = api
        self.name = name  # "local" or "provider", for messages
        self.cluster = name.split(" ", 1)[0]
        self.metrics = metrics
        self._host = api.configuration.host.rstrip("/")
        # Credentials that can be renewed (EKS tokens) hear of a 401 with the Authorization header that got it.
        self.on_unauthorized = on_unauthorized

    async def close(self) -> None:
        await self.api.close()

    def rebind(self, api: k8s_client.ApiClient) -> k8s_client.ApiClient:
        """Use a new client (a renewed certificate) for new requests; returns the old one, whose open
        requests and watches go on until it is closed."""
        old, self.api = self.api, api
        self._host = api.configuration.host.rstrip("/")
        return old

    def _session(self) -> aiohttp.ClientSession:
        return self.api.rest_client.pool_manager

    async def _headers(self, content_type: str | None = None) -> dict[str, str]:
        # auth_settings() runs the configuration's token refresh hook (exec plugins, EKS tokens).
        settings = await self.api.configuration.auth_settings()
        headers = {"Accept": "application/json"}
        for setting in settings.values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      timeout: float = 30) -> dict:
        data = None if body is None else orjson.dumps(body)
        try:
            return await self._request(method, path, params, data, content_type, timeout)
        except errors.Unauthorized:
            if self.on_unauthorized is None:
                raise
            # The credentials were renewed by _refused: once more with the new ones.
            return await self._request(method, path, params, data, content_type, timeout)

    async def _request(self, method: str, path: str, params: dict[str, Any] | None, data: bytes | None,
                       content_type: str, timeout: float) -> dict:
        headers = await self._headers(content_type if data is not None else None)
        started = time.monotonic()
        try:
            async with self._session().request(
                method, self._host + path, params=_params(params), data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                payload = await resp.read()
                self._observe(method, resp.status, started)
                if resp.status >= 300:
                    raise await self._error(method, path, resp.status, payload, headers)
                return orjson.loads(payload) if payload else {}
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._observe(method, "<error>", started)
            raise errors.Unavailable(f"{self.name} cluster unreachable ({method} {path}): {exc!r}") from exc

    def _observe(self, verb: str, code: int | str, started: float) -> None:
        """Count one request by its answer's status ("<error>": no answer)."""
        if self.metrics is not None:
            self.metrics.observe(self.cluster, verb, code, time.monotonic() - started)

    async def _error(self, method: str, path: str, status: int, payload: bytes,
                     headers: dict[str, str]) -> errors.KubeError:
        if status == 401 and self.on_unauthorized is not None:
            await self.on_unauthorized(headers.get("Authorization", ""))
        return errors.from_status(self.name, method, path, status, payload)

    async def stream(self, path: str, params: dict[str, Any]) -> AsyncIterator[bytes]:
        """The body of a GET as it arrives (pod logs); errors before the first byte raise as in `request`."""
        headers = await self._headers()
        headers["Accept"] = "*/*"
        started, answered = time.monotonic(), False
        try:
            async with self._session().get(
                self._host + path, params=_params(params), headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            ) as resp:
                self._observe("GET", resp.status, started)
                answered = True
                if resp.status >= 300:
                    raise await self._error("GET", path, resp.status, await resp.read(), headers)
                async for chunk in resp.content.iter_any():
                    yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if not answered:
                self._observe("GET", "<error>", started)
            raise errors.Unavailable(f"{self.name} cluster unreachable (GET {path}): {exc!r}") from exc

    async def websocket(self, path: str, query: list[tuple[str, str]],
                        protocols: tuple[str, ...]) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket to a pod subresource (exec, attach, portforward) with the cluster's credentials."""
        headers = await self._headers()
        del headers["Accept"]  # passed on to the kubelet, whose routes refuse application/json (406)
        started = time.monotonic()
        try:
            socket = await self._session().ws_connect(
                self._host + path, params=query, headers=headers, protocols=protocols, max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5), autoping=True,
            )
            self._observe("CONNECT", 101, started)
            return socket
        except aiohttp.WSServerHandshakeError as exc:
            self._observe("CONNECT", exc.status, started)
            raise await self._error("CONNECT", path, exc.status, json.dumps({"message": exc.message}).encode(),
                                    headers) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._observe("CONNECT", "<error>", started)
            raise errors.Unavailable(f"{self.name} cluster unreachable (CONNECT {path}): {exc!r}") from exc

    async def get(self, kind: str, namespace: str | None, name: str) -> dict:
        return await self.request("GET", resource_path(kind, namespace, name))

    async def list(self, kind: str, namespace: str | None = None, **params: Any) -> dict:
        return await self.request("GET", resource_path(kind, namespace), params=params, timeout=120)

    async def create(self, kind: str, namespace: str | None, body: dict) -> dict:
        return await self.request("POST", resource_path(kind, namespace), body=body)

    async def replace(self, kind: str, namespace: str | None, name: str, body: dict,
                      subresource: str | None = None) -> dict:
        return await self.request("PUT", resource_path(kind, namespace, name, subresource), body=body)

    async def patch(self, kind: str, namespace: str | None, name: str, body: dict | list, *,
                    subresource: str | None = None, patch_type: str = "merge") -> dict:
        content_type = {"merge": "application/merge-patch+json",
                        "strategic": "application/strategic-merge-patch+json",
                        "json": "application/json-patch+json"}[patch_type]
        return await self.request("PATCH", resource_path(kind, namespace, name, subresource), body=body,
                                  content_type=content_type)

    async def delete(self, kind: str, namespace: str | None, name: str, *, grace_seconds: int | None = None,
                     uid: str | None = None) -> dict:
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if uid:
            options["preconditions"] = {"uid": uid}
        return await self.request("DELETE", resource_path(kind, namespace, name), body=options)

    async def watch(self, kind: str, namespace: str | None, resource_version: str,
                    timeout_seconds: int = 300, **params: Any) -> AsyncIterator[dict]:
        """Events of one watch request; ends when the server closes it. 410 raises `errors.Gone`."""
        headers = await self._headers()
        query = {**params, "watch": "true", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        path = resource_path(kind, namespace)
        started, answered = time.monotonic(), False
        try:
            async with self._session().get(
                self._host + path, params=_params(query), headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30),
            ) as resp:
                self._observe("WATCH", resp.status, started)
                answered = True
                if resp.status >= 300:
                    raise await self._error("WATCH", path, resp.status, await resp.read(), headers)
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise errors.from_status(self.name, "WATCH", path, status.get("code", 500),
                                                 json.dumps(status).encode())
                    yield event
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if not answered:
                self._observe("WATCH", "<error>", started)
            raise errors.Unavailable(f"{self.name} cluster unreachable (watch {path}): {exc!r}") from exc


def _params(params: dict[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        key = {"label_selector": "labelSelector", "field_selector": "fieldSelector",
               "resource_version": "resourceVersion", "limit": "limit"}.get(key, key)
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out
