"""One owner for the runtime's long-running parts: each restarted with backoff when it ends, given up on when it keeps
failing, and then the whole process stops (non-zero) for its Deployment to restart it.

A part is a name and a coroutine function that runs until cancelled (an informer, a work queue's workers, the node's
lease loop). When it ends before the supervisor stops it (it raised, or returned), the end is logged with the part's
name and the part is started again after a delay that doubles from ``base_delay`` up to ``max_delay``. A part that
ends ``max_failures`` times within ``window`` seconds is given up on: ``on_give_up(name, why)`` is awaited (it may
say so on the Node, bounded by ``give_up_timeout``) and `run` raises `PartFailed`. For /healthz, `problems` names the
parts given up on (not alive) and `restarting` those waiting to be started again (alive: a restart heals them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

Part = Callable[[], Coroutine[Any, Any, Any]]


class PartFailed(RuntimeError):
    """A long-running part kept failing: the process stops so that its Deployment restarts it."""

    def __init__(self, name: str, why: str):
        super().__init__(f"{name} kept failing, giving up: {why}")
        self.part, self.why = name, why


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "it returned, though it should run until the runtime stops"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


class Supervisor:
    def __init__(self, *, max_failures: int = 5, window: float = 300.0, base_delay: float = 1.0,
                 max_delay: float = 30.0, give_up_timeout: float = 10.0,
                 on_give_up: Callable[[str, str], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.max_failures, self.window = max_failures, window
        self.base_delay, self.max_delay, self.give_up_timeout = base_delay, max_delay, give_up_timeout
        self.on_give_up = on_give_up
        self._clock, self._sleep = clock, sleep
        self._tasks: dict[str, asyncio.Task] = {}
        self._restarting: dict[str, str] = {}  # part → why it is waiting to be restarted
        self._failed: asyncio.Future | None = None
        self.given_up: dict[str, str] = {}

    def start(self, name: str, part: Part) -> None:
        """Run ``part`` under supervision from now on, as the task named ``name``."""
        if name in self._tasks:
            raise ValueError(f"a part named {name} is supervised already")
        self._tasks[name] = asyncio.get_running_loop().create_task(self._keep(name, part), name=name)

    def problems(self) -> dict[str, str]:
        """Parts given up on: name → why (empty: every part runs or will run again)."""
        return {name: f"gave up: {why}" for name, why in self.given_up.items()}

    def restarting(self) -> dict[str, str]:
        """Parts that stopped and wait for their restart: name → why they stopped."""
        return {name: f"restarting after {why}" for name, why in self._restarting.items()}

    async def _keep(self, name: str, part: Part) -> None:
        ends: deque[float] = deque()
        delay = self.base_delay
        while True:
            started = self._clock()
            try:
                await part()
                exc: BaseException | None = None
            except asyncio.CancelledError:
                raise
            except Exception as caught:  # noqa: BLE001 - a part's failure is what supervision is for
                exc = caught
            now = self._clock()
            why = _why(exc)
            ends.append(now)
            while ends and now - ends[0] > self.window:
                ends.popleft()
            if len(ends) >= self.max_failures:
                log.error("%s stopped %d times within %.0f s, giving up: %s", name, len(ends), self.window, why,
                          exc_info=exc)
                await self._give_up(name, why)
                return
            if now - started > self.window:
                delay = self.base_delay  # it ran well for a while: its next failure starts the backoff afresh
            log.error("%s stopped (%d within %.0f s): %s; restarting in %.1f s", name, len(ends), self.window, why,
                      delay, exc_info=exc)
            self._restarting[name] = why
            try:
                await self._sleep(delay)
            finally:
                self._restarting.pop(name, None)
            delay = min(delay * 2, self.max_delay)

    async def _give_up(self, name: str, why: str) -> None:
        self.given_up[name] = why
        if self.on_give_up is not None:
            try:
                await asyncio.wait_for(self.on_give_up(name, why), self.give_up_timeout)
            except Exception as exc:  # noqa: BLE001 - the process stops anyway; saying so is best effort
                log.warning("could not report that %s failed: %s", name, exc)
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(PartFailed(name, why))

    async def run(self) -> None:
        """Until a part is given up on, then raise `PartFailed` (the parts are left to `stop`)."""
        if self.given_up:
            name, why = next(iter(self.given_up.items()))
            raise PartFailed(name, why)
        self._failed = asyncio.get_running_loop().create_future()
        raise await self._failed

    async def stop(self, *names: str) -> None:
        """Cancel the parts named (all when none is) and wait for them to end."""
        running = [self._tasks.pop(name) for name in (names or list(self._tasks)) if name in self._tasks]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
