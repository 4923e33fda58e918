"""The health port's answers, and how a stopped long-running part reaches /healthz: real asyncio tasks and a real
HTTP listener; the only stand-in is the cluster under the service controller, whose watch fails like a bug would."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from k8sgpu.runtime.controllers.services import ServiceController
from k8sgpu.runtime.health import HealthServer
from k8sgpu.runtime.supervisor import PartFailed, Supervisor


class _BrokenWatchKube:
    """Lists fine; its watch raises what no Reflector handles (not a KubeError), as a bug in decoding would."""

    name = "local"

    async def list(self, kind, namespace, **selectors):
        return {"items": [], "metadata": {"resourceVersion": "1"}}

    async def watch(self, kind, namespace, resource_version, **options):
        await asyncio.sleep(0.05)
        raise RuntimeError("cannot decode the watch event")
        yield  # an async generator, like Kube.watch


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


def test_healthz_lists_a_restarting_part_and_turns_500_once_the_supervisor_gives_up_on_it():
    async def scenario():
        released = asyncio.Event()

        async def held_sleep(seconds):  # the first restart waits for the test; later ones are at once
            await released.wait()

        supervisor = Supervisor(max_failures=3, window=300, sleep=held_sleep)
        services = ServiceController(_BrokenWatchKube(), provider=None, load_balancer_class="k8s.gpu",
                                     supervisor=supervisor)
        ready = asyncio.Event()
        health = HealthServer(supervisor.problems, lambda: "" if ready.is_set() else "listing the local Services",
                              supervisor.restarting)
        await health.start("127.0.0.1", 0)
        failed = asyncio.create_task(supervisor.run())
        try:
            before = await _get(health.port, "/healthz"), await _get(health.port, "/readyz")
            await services.start([])
            ready.set()
            after_start = await _get(health.port, "/healthz"), await _get(health.port, "/readyz")
            for _ in range(100):  # the watch fails 50 ms in
                if supervisor.restarting():
                    break
                await asyncio.sleep(0.01)
            restarting = await _get(health.port, "/healthz")
            released.set()
            with pytest.raises(PartFailed):
                await asyncio.wait_for(failed, 5)
            given_up = await _get(health.port, "/healthz")
        finally:
            await services.stop()
            await health.stop()
        return before, after_start, restarting, given_up

    before, after_start, restarting, (status, body) = asyncio.run(scenario())
    assert before == ((200, "ok\n"), (503, "not ready: listing the local Services\n"))
    assert after_start == ((200, "ok\n"), (200, "ok\n"))
    assert restarting == (200, "ok\nlocal-services: restarting after RuntimeError: cannot decode the watch event\n")
    assert status == 500
    assert body.splitlines() == ["not alive: 1 part(s) stopped",
                                 "local-services: gave up: RuntimeError: cannot decode the watch event"]


def test_a_taken_health_port_fails_naming_the_flag():
    async def scenario():
        first = HealthServer(dict, str)
        await first.start("127.0.0.1", 0)
        try:
            with pytest.raises(RuntimeError, match=f"health port 127.0.0.1:{first.port}.*--health-port"):
                await HealthServer(dict, str).start("127.0.0.1", first.port)
        finally:
            await first.stop()

    asyncio.run(scenario())


def test_metrics_are_served_without_credentials_and_nothing_else_is():
    from k8sgpu.runtime.metrics import Metrics

    async def scenario():
        health = HealthServer(dict, str, metrics=Metrics("k8s.gpu"))
        await health.start("127.0.0.1", 0)
        try:
            return await _get(health.port, "/metrics"), await _get(health.port, "/metrics/../stats/summary")
        finally:
            await health.stop()

    (status, body), (other_status, _) = asyncio.run(scenario())
    assert status == 200
    assert '# HELP k8sgpu_build_info ' in body
    assert 'k8sgpu_build_info{node="k8s.gpu",version="' in body
    assert other_status == 404
