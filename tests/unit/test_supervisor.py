"""The supervisor: a part that ends is restarted with growing delays; one that keeps failing within the window is
given up on, said so through ``on_give_up``, and `run` raises. The clock and sleep are the test's: nothing waits."""

from __future__ import annotations

import asyncio
import logging

import pytest

from k8sgpu.runtime.supervisor import PartFailed, Supervisor


class Time:
    """A clock and a sleep that only moves it."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def _supervisor(t: Time, **kw) -> Supervisor:
    return Supervisor(clock=t.clock, sleep=t.sleep, base_delay=1.0, max_delay=8.0, **kw)


async def _settle():
    for _ in range(50):
        await asyncio.sleep(0)


def test_a_failing_part_is_restarted_with_growing_delays_and_logged(caplog):
    t = Time()
    starts = []

    async def flaky():
        starts.append(t.now)
        if len(starts) <= 3:
            raise RuntimeError(f"boom {len(starts)}")
        await asyncio.Event().wait()

    async def scenario():
        sup = _supervisor(t, max_failures=5, window=300)
        sup.start("flaky", flaky)
        await _settle()
        problems = sup.problems(), sup.restarting()
        await sup.stop()
        return problems

    with caplog.at_level(logging.ERROR, logger="k8sgpu.runtime.supervisor"):
        problems = asyncio.run(scenario())
    assert len(starts) == 4 and t.slept == [1.0, 2.0, 4.0]
    assert problems == ({}, {})  # running again
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "flaky stopped (1 within 300 s): RuntimeError: boom 1", "flaky stopped (2 within 300 s): RuntimeError: boom 2",
        "flaky stopped (3 within 300 s): RuntimeError: boom 3"]


def test_a_part_that_keeps_failing_is_given_up_on_reported_and_ends_the_run():
    t = Time()
    reported = []

    async def broken():
        raise ValueError("bad quantity")

    async def returns():
        return None

    async def forever():
        await asyncio.Event().wait()

    async def on_give_up(name, why):
        reported.append((name, why))

    async def scenario():
        sup = _supervisor(t, max_failures=3, window=60, on_give_up=on_give_up)
        sup.start("steady", forever)
        sup.start("broken", broken)
        try:
            with pytest.raises(PartFailed, match="broken kept failing, giving up: ValueError: bad quantity"):
                await sup.run()
            return sup.problems()
        finally:
            await sup.stop()

    problems = asyncio.run(scenario())
    assert reported == [("broken", "ValueError: bad quantity")]
    assert problems == {"broken": "gave up: ValueError: bad quantity"}
    assert t.slept == [1.0, 2.0]  # restarted twice, given up at the third end


def test_a_part_that_returns_counts_as_stopped():
    t = Time()

    async def returns():
        return None

    async def scenario():
        sup = _supervisor(t, max_failures=2, window=60)
        sup.start("returns", returns)
        try:
            with pytest.raises(PartFailed, match="returned, though it should run until the runtime stops"):
                await sup.run()
        finally:
            await sup.stop()

    asyncio.run(scenario())


def test_failures_further_apart_than_the_window_never_give_up():
    t = Time()
    runs = []

    async def fails_after_a_while():
        runs.append(t.now)
        if len(runs) > 6:
            await asyncio.Event().wait()
        t.now += 100  # it ran 100 s before failing
        raise RuntimeError("lost the connection")

    async def scenario():
        sup = _supervisor(t, max_failures=2, window=60)
        sup.start("part", fails_after_a_while)
        await _settle()
        given_up = dict(sup.given_up)
        await sup.stop()
        return given_up

    assert asyncio.run(scenario()) == {}
    assert len(runs) == 7
    assert t.slept == [1.0] * 6  # each ran longer than the window: its backoff starts afresh


def test_a_part_waiting_to_be_restarted_is_named_but_no_problem():
    gate = asyncio.Event

    async def scenario():
        release = gate()

        async def slow_sleep(seconds):
            await release.wait()

        async def broken():
            raise RuntimeError("boom")

        sup = Supervisor(sleep=slow_sleep, max_failures=5)
        sup.start("broken", broken)
        await _settle()
        waiting = sup.restarting(), sup.problems()
        await sup.stop()
        return waiting

    assert asyncio.run(scenario()) == ({"broken": "restarting after RuntimeError: boom"}, {})


def test_stop_with_names_cancels_only_those():
    async def forever():
        await asyncio.Event().wait()

    async def scenario():
        sup = Supervisor()
        sup.start("a", forever)
        sup.start("b", forever)
        await sup.stop("a")
        left = {t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        await sup.stop()
        return left

    assert asyncio.run(scenario()) == {"b"}
