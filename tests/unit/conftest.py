"""Unit tests' shared guard: a test whose event loop still has tasks when its `asyncio.run` coroutine returns
fails, naming them (a part left running is a part some `stop()` forgot)."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(autouse=True)
def no_tasks_left_behind(monkeypatch):
    real_run = asyncio.run
    left: list[str] = []

    async def checked(coro):
        result = await coro
        for _ in range(5):  # tasks cancelled on the way out may need a few turns to finish
            await asyncio.sleep(0)
        current = asyncio.current_task()
        left.extend(sorted(f"{t.get_name()}: {t.get_coro()!r}" for t in asyncio.all_tasks()
                           if t is not current and not t.done()))
        return result

    def run(main, **kwargs):
        return real_run(checked(main), **kwargs)

    monkeypatch.setattr(asyncio, "run", run)
    yield
    assert not left, f"the test left asyncio tasks running: {left}"
