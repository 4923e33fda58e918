"""The health port: plain HTTP, apart from the kubelet API (which refuses anonymous callers).

`/healthz` (liveness), from the supervisor's view: 200 while the event loop answers and no long-running
part has been given up on (parts waiting for their restart are listed after "ok"); 500 naming each part
that has stopped for good, one per line. It answers from the moment the process listens, so a start that waits
(a CSR awaiting approval) is alive, merely not ready.
`/readyz` (readiness): 200 once the node is registered (informers synced, provider listed), and 200 for a
standby of the leader election (`standby: leader is <holder>`), so a rollout goes on; 503 saying what the runtime
still waits for, and again while it stops.
`/metrics`: the runtime's Prometheus metrics (runtime/metrics.py), without credentials; nothing else is served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from .metrics import Metrics

log = logging.getLogger(__name__)


class HealthServer:
    """``problems()``: part name → why it is not alive (empty: alive). ``restarting()``: parts that stopped
    and are being restarted (alive). ``waiting()``: what readiness waits for ("" once ready). ``standby()``: a
    line saying who leads while this runtime stands by ("" when it leads or elects no leader)."""

    def __init__(self, problems: Callable[[], dict[str, str]], waiting: Callable[[], str],
                 restarting: Callable[[], dict[str, str]] = dict, standby: Callable[[], str] = str,
                 metrics: Metrics | None = None):
        self.problems, self.waiting, self.restarting, self.standby = problems, waiting, restarting, standby
        self.metrics = metrics
        self.port = 0
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if metrics is not None:
            app.router.add_get("/metrics", self._metrics)
        self._app = app

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host``:``port`` (0: a free port, then in ``self.port``); a taken port fails here."""
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise RuntimeError(f"cannot listen on the health port {host}:{port}: {exc.strerror or exc}; give "
                               "--health-port another port, or 0 to turn the health port off") from None
        self.port = self._runner.addresses[0][1]
        log.info("health port listening on http://%s:%d (/healthz, /readyz%s)", host, self.port,
                 ", /metrics" if self.metrics is not None else "")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        problems = self.problems()
        if not problems:
            notes = "".join(f"{name}: {why}\n" for name, why in sorted(self.restarting().items()))
            return web.Response(text=f"ok\n{notes}")
        lines = "".join(f"{name}: {why}\n" for name, why in sorted(problems.items()))
        return web.Response(status=500, text=f"not alive: {len(problems)} part(s) stopped\n{lines}")

    async def _readyz(self, request: web.Request) -> web.Response:
        standby = self.standby()
        if standby:
            return web.Response(text=f"{standby}\n")
        waiting = self.waiting()
        if not waiting:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"not ready: {waiting}\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": self.metrics.content_type})
