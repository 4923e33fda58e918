"""The work queue's per-key backoff, and that a sync's decision is what the queue carries out. No real waiting: the
queue's clock (``call_later``) and dice (``rand``) are the test's, or the running loop's ``call_later`` is."""

from __future__ import annotations

import asyncio

import pytest

from k8sgpu.runtime.controllers.pods import MAX_RETRY_DELAY, PodController
from k8sgpu.runtime.reflector import DONE, RETRY, WorkQueue, requeue_after


class FakeClock:
    """``call_later`` that only records: ``fire()`` runs what is due next, at once."""

    def __init__(self):
        self.calls: list[tuple[float, object]] = []
        self.delays: list[float] = []

    def __call__(self, delay, callback):
        self.calls.append((delay, callback))
        self.delays.append(delay)
        return _Handle()

    def fire(self) -> None:
        _, callback = self.calls.pop(0)
        callback()


class _Handle:
    def cancel(self) -> None:
        pass


async def _noop(key):
    return DONE


def test_a_keys_backoff_doubles_per_retry_up_to_the_cap_and_each_key_has_its_own():
    clock = FakeClock()
    queue = WorkQueue(_noop, base_delay=0.2, max_delay=5.0, rand=lambda: 0.0, call_later=clock)
    delays = []
    for _ in range(8):
        delays.append(queue.retry("a"))
        clock.fire()
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert queue.retry("b") == pytest.approx(0.2)  # another key starts from the base
    queue.forget("a")
    assert queue.retry("a") == pytest.approx(0.2)  # forgotten: from the base again


def test_jitter_shortens_each_delay_by_at_most_its_share_and_never_passes_the_cap():
    for dice, factor in ((0.0, 1.0), (0.5, 0.9), (1.0, 0.8)):
        queue = WorkQueue(_noop, base_delay=1.0, max_delay=4.0, jitter=0.2, rand=lambda d=dice: d,
                          call_later=FakeClock())
        assert [queue.backoff(n) for n in (1, 2, 3, 4, 10, 1000)] == pytest.approx(
            [1.0 * factor, 2.0 * factor, 4.0 * factor, 4.0 * factor, 4.0 * factor, 4.0 * factor])


def test_a_retry_while_a_timer_is_pending_counts_but_schedules_no_second_timer():
    clock = FakeClock()
    queue = WorkQueue(_noop, rand=lambda: 0.0, call_later=clock)
    queue.retry("a")
    queue.retry("a")
    assert len(clock.calls) == 1 and queue.failures("a") == 2


def test_the_queue_carries_out_what_the_handler_returns():
    answers: dict[str, list] = {"k": [RETRY, RETRY, RETRY, DONE], "later": [requeue_after(7.0)]}
    seen = []

    async def handler(key):
        seen.append(key)
        return answers[key].pop(0)

    async def scenario():
        clock = FakeClock()
        queue = WorkQueue(handler, base_delay=0.5, max_delay=60, rand=lambda: 0.0, call_later=clock)
        queue.add("k")
        for n in range(3):
            if n:
                clock.fire()  # the retry is due
            await queue.process(await queue._queue.get())
        # three retries in a row: the key's backoff grew each time
        assert clock.delays == pytest.approx([0.5, 1.0, 2.0]) and queue.failures("k") == 3
        clock.fire()
        await queue.process(await queue._queue.get())
        assert queue.failures("k") == 0 and len(clock.delays) == 3  # done: forgotten, nothing scheduled
        queue.add("later")
        await queue.process(await queue._queue.get())
        assert clock.delays[-1] == 7.0 and queue.failures("later") == 0

    asyncio.run(scenario())
    assert seen == ["k", "k", "k", "k", "later"]


def test_a_handler_that_raises_is_retried_with_the_keys_backoff():
    async def handler(key):
        raise RuntimeError("a bug")

    async def scenario():
        clock = FakeClock()
        queue = WorkQueue(handler, base_delay=1.0, rand=lambda: 0.0, call_later=clock)
        queue.add("k")
        for n in range(3):
            if n:
                clock.fire()
            await queue.process(await queue._queue.get())
        assert clock.delays == pytest.approx([1.0, 2.0, 4.0])

    asyncio.run(scenario())


class _Nothing:
    name = "local"


def _pending_pod() -> dict:
    return {"kind": "Pod", "metadata": {"namespace": "ns", "name": "p", "uid": "u1", "resourceVersion": "1"},
            "spec": {"runtimeClassName": "rc", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Pending"}}


def test_a_pod_retried_again_and_again_backs_off_further_each_time():
    """While the provider cannot be reached, each sync of a pending pod asks for a retry. Its delays must grow:
    the key's failures are forgotten only after a sync that succeeded (once they were reset after every sync, so
    the pod came back every 0.2 s for ever)."""

    async def scenario():
        loop = asyncio.get_running_loop()
        scheduled: list[tuple[float, object]] = []
        due = asyncio.Event()

        def call_later(delay, callback, *args):
            scheduled.append((delay, lambda: callback(*args)))
            due.set()
            return _Handle()

        loop.call_later = call_later  # the queue's clock: nothing waits for real
        controller = PodController(_Nothing(), _Nothing(), "n.gpu", workers=1)
        controller.provider_reachable = False
        controller.pods.store["ns/p"] = _pending_pod()
        worker = asyncio.create_task(controller.queue.run())
        try:
            controller.queue.add("ns/p")
            delays = []
            for _ in range(4):
                await due.wait()  # (no wait_for: its timeout would go through this call_later)
                due.clear()
                delay, fire = scheduled.pop(0)
                delays.append(delay)
                fire()
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            controller.queue.close()
            del loop.call_later
        assert all(later > earlier for earlier, later in zip(delays, delays[1:], strict=False)), delays
        assert delays[-1] <= MAX_RETRY_DELAY

    asyncio.run(scenario())
