"""Errors classified by behaviour, mapped from HTTP status in one place.

Controllers act on the class, never on a status code or a backend's exception:
NotFound and AlreadyExists are facts, Conflict and Unavailable are retried,
Invalid and Forbidden are permanent for the object at hand (but a provider's
Forbidden on a pod's create, a full quota, is retried with backoff).
"""

from __future__ import annotations

import json


class KubeError(Exception):
    status = 0
    retry = False
    message = ""
    """What the API server said (its Status message), without the request; "" when unknown."""


class NotFound(KubeError):
    status = 404


class AlreadyExists(KubeError):
    status = 409


class Conflict(KubeError):
    status = 409
    retry = True


class Gone(KubeError):
    """A watch's resourceVersion is too old: relist."""

    status = 410
    retry = True


class Invalid(KubeError):
    status = 422


class Forbidden(KubeError):
    status = 403


class Unauthorized(KubeError):
    status = 401
    retry = True


class Unavailable(KubeError):
    """The cluster could not be reached or answered 5xx/429: try again later."""

    status = 503
    retry = True


def from_status(cluster: str, method: str, path: str, status: int, payload: bytes) -> KubeError:
    try:
        body = json.loads(payload)
        message, reason = body.get("message", ""), body.get("reason", "")
    except ValueError:
        message, reason = payload[:200].decode(errors="replace"), ""
    error = _classify(status, reason, f"{cluster}: {method} {path}: {status} {message}")
    error.message = message
    return error


def _classify(status: int, reason: str, text: str) -> KubeError:
    if status == 404:
        return NotFound(text)
    if status == 409:
        return AlreadyExists(text) if reason == "AlreadyExists" else Conflict(text)
    if status == 410:
        return Gone(text)
    if status in (400, 413, 422):  # 413: an object too large for the API server
        return Invalid(text)
    if status == 403:
        return Forbidden(text)
    if status == 401:
        return Unauthorized(text)
    if status == 429 or status >= 500:
        return Unavailable(text)
    return KubeError(text)
