"""Long-running tasks: started with a name, their end logged, and what has ended reported by name.

Every long-running part of the runtime (an informer, a work queue's workers, a renewal loop) is meant to
run until the runtime stops it. One that ends before then (an error, or returning) is a part the node no
longer has; `problems` names it, and the health port's /healthz reports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
    """A named task whose unexpected end is logged with its name (a cancellation is expected: not logged)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(_log_end)
    return task


def _log_end(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("%s stopped: %s: %s", task.get_name(), type(exc).__name__, exc, exc_info=exc)
    else:
        log.error("%s stopped: it returned, though it should run until the runtime stops", task.get_name())


def why_ended(task: asyncio.Task) -> str | None:
    """None while ``task`` runs; else a line saying how it ended."""
    if not task.done():
        return None
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is not None:
        return f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    return "ended"


def problems(tasks: Iterable[asyncio.Task]) -> dict[str, str]:
    """The long-running tasks among ``tasks`` that have ended: task name → how (empty: all run)."""
    return {task.get_name(): why for task in tasks if (why := why_ended(task)) is not None}
