"""The kubelet API's door: who is asking (client certificate or TokenReview) and may they
(SubjectAccessReview on the node's subresources), decided by the cluster as for any kubelet."""

from __future__ import annotations

import dataclasses
import time

from .. import errors
from ..kube import Kube

AUTHENTICATED = "system:authenticated"
_CACHE_ENTRIES = 10_000
_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


def certificate_user(peercert: dict | None) -> User | None:
    """The user a verified client certificate names: CN is the user, each O a group."""
    if not peercert:
        return None
    names: list[str] = []
    groups: list[str] = []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
            elif key == "organizationName":
                groups.append(value)
    if not names:
        return None
    return User(names[0], tuple(groups) + (AUTHENTICATED,))


def subresource(path: str) -> str:
    """The nodes subresource a kubelet path is authorized as (kubelet's own mapping)."""
    for prefix, sub in (("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log")):
        if path == prefix or path.startswith(prefix + "/"):
            return sub
    return "proxy"


class _TTLCache:
    def __init__(self, allowed_ttl: float, denied_ttl: float):
        self.allowed_ttl, self.denied_ttl = allowed_ttl, denied_ttl
        self._entries: dict[object, tuple[float, object]] = {}

    def get(self, key: object) -> object | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: object, value: object, allowed: bool) -> None:
        if len(self._entries) > _CACHE_ENTRIES:
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
            while len(self._entries) > _CACHE_ENTRIES:  # still full of live answers: the oldest go first
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (time.monotonic() + (self.allowed_ttl if allowed else self.denied_ttl), value)


class Door:
    """Authenticates and authorizes one request; answers are cached like kubelet's webhook caches
    (tokens 2 min, allowed 5 min, denied 30 s)."""

    def __init__(self, kube: Kube, node_name: str):
        self.kube, self.node_name = kube, node_name
        self._tokens = _TTLCache(120, 10)
        self._decisions = _TTLCache(300, 30)

    async def authenticate(self, peercert: dict | None, authorization: str) -> User | None:
        user = certificate_user(peercert)
        if user is not None:
            return user
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await self._token_user(token.strip())

    async def _token_user(self, token: str) -> User | None:
        cached = self._tokens.get(token)
        if cached is not None:
            return cached or None  # type: ignore[return-value]
        review = await self.kube.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
        status = review.get("status") or {}
        user: User | None = None
        if status.get("authenticated"):
            info = status.get("user") or {}
            extra = tuple(sorted((k, tuple(v)) for k, v in (info.get("extra") or {}).items()))
            user = User(info.get("username", ""), tuple(info.get("groups") or ()), info.get("uid", ""), extra)
        self._tokens.put(token, user or False, user is not None)
        return user

    async def authorize(self, user: User, method: str, path: str) -> tuple[bool, str]:
        """(allowed, why) for a request, as a SubjectAccessReview on nodes/<subresource> of this node."""
        verb, sub = _VERBS.get(method, "get"), subresource(path)
        key = (user, verb, sub)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        review = {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "user": user.name, "groups": list(user.groups), "uid": user.uid,
                "extra": {k: list(v) for k, v in user.extra},
                "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": sub,
                                       "name": self.node_name},
            },
        }
        try:
            answer = (await self.kube.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                              body=review)).get("status") or {}
        except errors.KubeError as exc:
            return False, f"authorization check failed: {exc}"
        allowed = bool(answer.get("allowed"))
        decision = (allowed, f'user={user.name} verb={verb} resource=nodes subresource="{sub}"')
        self._decisions.put(key, decision, allowed)
        return decision
