"""Timeouts: coroutines are cancelled at the deadline; thread bodies are abandoned (slot kept).

Deadlines here are short (0.05-0.2 s) and every assertion about time allows a generous bound:
the point is that the failure comes at the deadline, not after the body returns.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from helpers import Stuck

from asyncflow import Future, ThreadPoolTaskRunner, get_run_context, task
from asyncflow.exceptions import TaskTimeoutError

TIMEOUT = 5.0  # seconds: the longest any single wait in these tests may take
LATE = 2.0  # seconds: a timeout that fires later than this after its deadline is a failure


# -- helpers -----------------------------------------------------------------------------------


class SignalSleep:
    """The runner's wait between attempts: returns at once and signals that a retry is due."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.retrying = threading.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.retrying.set()


async def hang(cancelled: list[int]) -> str:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(get_run_context().attempt)
        raise
    return "never"


def instant(x: int) -> int:
    return x


def returns_whether_set(event: threading.Event) -> bool:
    return event.is_set()


def timeout_warnings(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncflow" and r.levelno == logging.WARNING and repr(name) in r.getMessage()
    ]


# -- coroutine bodies --------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_coroutine_is_cancelled_at_its_deadline() -> None:
    cancelled: list[int] = []
    async with ThreadPoolTaskRunner() as runner:
        t0 = time.monotonic()
        f = runner.submit(task(timeout=0.1, name="slowpoke")(hang), {"cancelled": cancelled})
        with anyio.fail_after(TIMEOUT), pytest.raises(TaskTimeoutError) as info:
            await f
        elapsed = time.monotonic() - t0
    assert 0.1 <= elapsed < 0.1 + LATE
    assert cancelled == [1]  # the body saw the cancellation
    assert isinstance(info.value, TimeoutError)
    assert "'slowpoke'" in str(info.value)
    assert "0.1" in str(info.value)
    assert f.state.is_failed()
    assert f.state.name == "Failed"
    assert runner.statistics().failed == 1


def test_a_coroutine_timeout_in_a_sync_block() -> None:
    cancelled: list[int] = []
    with ThreadPoolTaskRunner() as runner:
        t0 = time.monotonic()
        f = runner.submit(task(timeout=0.05)(hang), {"cancelled": cancelled})
        assert isinstance(f.exception(timeout=TIMEOUT), TaskTimeoutError)
        assert time.monotonic() - t0 < 0.05 + LATE
    assert cancelled == [1]


@pytest.mark.anyio
async def test_a_coroutine_that_finishes_in_time_completes() -> None:
    async def quick(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    async with ThreadPoolTaskRunner() as runner:
        f = runner.submit(task(timeout=30)(quick), {"x": 1})
        with anyio.fail_after(TIMEOUT):
            assert await f == 2
    assert f.state.is_completed()


@pytest.mark.anyio
async def test_a_timed_out_coroutine_is_retried() -> None:
    async def hang_once(cancelled: list[int]) -> int:
        attempt = get_run_context().attempt
        if attempt == 1:
            await hang(cancelled)
        return attempt

    cancelled: list[int] = []
    async with ThreadPoolTaskRunner() as runner:
        f = runner.submit(task(timeout=0.05, retries=2)(hang_once), {"cancelled": cancelled})
        with anyio.fail_after(TIMEOUT):
            assert await f == 2
        assert runner.statistics().retried == 1
    assert cancelled == [1]


def test_timeouts_on_every_attempt_fail_with_timeout_error() -> None:
    cancelled: list[int] = []
    with ThreadPoolTaskRunner() as runner:
        f = runner.submit(task(timeout=0.05, retries=2)(hang), {"cancelled": cancelled})
        assert isinstance(f.exception(timeout=TIMEOUT), TaskTimeoutError)
    assert cancelled == [1, 2, 3]
    assert f.state.is_failed()


def test_timeout_as_a_timedelta() -> None:
    cancelled: list[int] = []
    options: dict[str, Any] = {"timeout": datetime.timedelta(milliseconds=50)}
    with ThreadPoolTaskRunner() as runner:
        t = task(**options)(hang)
        assert t.timeout == pytest.approx(0.05)
        f = runner.submit(t, {"cancelled": cancelled})
        assert isinstance(f.exception(timeout=TIMEOUT), TaskTimeoutError)
    assert cancelled == [1]


# -- thread bodies -----------------------------------------------------------------------------
def test_a_thread_body_fails_at_its_deadline_and_its_thread_is_abandoned(
    stuck: Stuck, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncflow")
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        t0 = time.monotonic()
        f = runner.submit(task(timeout=0.1, name="blocking_io")(stuck.body))
        err = f.exception(timeout=TIMEOUT)
        elapsed = time.monotonic() - t0
        assert isinstance(err, TaskTimeoutError)
        assert "'blocking_io'" in str(err)
        assert elapsed < 0.1 + LATE
        # The failure came while the body was still running: it was not waited for.
        assert stuck.started.is_set()
        assert not stuck.returned.is_set()
        assert f.state.is_failed()
        warnings = timeout_warnings(caplog, "blocking_io")
        assert len(warnings) == 1
        assert "keeps running" in warnings[0]
        assert runner.statistics().abandoned_threads == 1
        # The abandoned body keeps its worker slot: the next sync body waits for it.
        nxt = runner.submit(returns_whether_set, {"event": stuck.returned})
        stats = runner.statistics()  # a round trip through the loop: nxt is registered
        assert stats.running == 0
        assert stats.queued == 1
        assert nxt.state.is_pending()
        stuck.release()
        assert nxt.result(timeout=TIMEOUT) is True  # it started only after the body returned
        assert runner.statistics().abandoned_threads == 0
    assert f.state.is_failed()  # the late return changed nothing


def test_a_thread_body_that_finishes_in_time_completes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncflow")
    with ThreadPoolTaskRunner() as runner:
        assert runner.submit(task(timeout=30)(instant), {"x": 3}).result(timeout=TIMEOUT) == 3
        assert runner.statistics().abandoned_threads == 0
    assert timeout_warnings(caplog, "instant") == []


def test_a_thread_body_that_raises_before_its_deadline_fails_with_its_own_error() -> None:
    def broken() -> None:
        raise KeyError("own error")

    with ThreadPoolTaskRunner() as runner:
        err = runner.submit(task(timeout=30)(broken)).exception(timeout=TIMEOUT)
    assert isinstance(err, KeyError)


def test_the_deadline_starts_when_a_worker_takes_the_body(stuck: Stuck) -> None:
    cancelled: list[int] = []
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        blocker = runner.submit(stuck.body)
        assert stuck.started.wait(TIMEOUT)
        queued = runner.submit(task(timeout=0.1)(instant), {"x": 7})
        # A 0.3 s timer run by the runner itself: when it fires, `queued` has waited for the
        # worker three times longer than its own timeout.
        clock = runner.submit(task(timeout=0.3)(hang), {"cancelled": cancelled})
        assert isinstance(clock.exception(timeout=TIMEOUT), TaskTimeoutError)
        assert not queued.done()
        stuck.release()
        assert blocker.result(timeout=TIMEOUT) == "late"
        assert queued.result(timeout=TIMEOUT) == 7


def test_a_timed_out_thread_body_is_retried_once_its_slot_is_free(stuck: Stuck) -> None:
    def stuck_once(returned: threading.Event) -> tuple[int, bool]:
        attempt = get_run_context().attempt
        if attempt == 1:
            stuck.body()
        return attempt, returned.is_set()

    sleep = SignalSleep()
    runner = ThreadPoolTaskRunner(max_workers=1)
    runner._sleep = sleep
    with runner:
        f = runner.submit(task(timeout=0.1, retries=2)(stuck_once), {"returned": stuck.returned})
        assert sleep.retrying.wait(TIMEOUT)  # attempt 1 timed out
        assert not stuck.returned.is_set()
        assert runner.statistics().abandoned_threads == 1
        assert not f.done()
        stuck.release()
        # Attempt 2 ran only after the abandoned body returned (one worker, no oversubscription).
        assert f.result(timeout=TIMEOUT) == (2, True)
        stats = runner.statistics()
    assert stats.retried == 1
    assert stats.abandoned_threads == 0
    assert len(sleep.delays) == 1


def test_abandoned_threads_are_counted_until_their_bodies_return() -> None:
    bodies = [Stuck(), Stuck()]
    try:
        with ThreadPoolTaskRunner(max_workers=2) as runner:
            futures: list[Future[Any]] = [runner.submit(task(timeout=0.05)(s.body)) for s in bodies]
            for f in futures:
                assert isinstance(f.exception(timeout=TIMEOUT), TaskTimeoutError)
            assert runner.statistics().abandoned_threads == 2
            for s in bodies:
                s.release()
            # Both slots are held by abandoned bodies until they return. These two bodies wait
            # for each other, so both finish only once both slots are free again: by then
            # both abandoned bodies have returned and been counted out.
            both = threading.Barrier(2)
            after = [runner.submit(both.wait, {"timeout": TIMEOUT}) for _ in range(2)]
            assert sorted(f.result(timeout=TIMEOUT) for f in after) == [0, 1]
            assert runner.statistics().abandoned_threads == 0
    finally:
        for s in bodies:
            s.release()


@pytest.mark.parametrize("kind", ["thread", "coro"])
def test_a_timed_out_run_fails_its_dependents_as_upstream_failed(kind: str, stuck: Stuck) -> None:
    cancelled: list[int] = []
    body: Callable[..., Any] = stuck.body if kind == "thread" else hang
    params: dict[str, Any] = {} if kind == "thread" else {"cancelled": cancelled}
    with ThreadPoolTaskRunner() as runner:
        up = runner.submit(task(timeout=0.05)(body), params)
        down = runner.submit(instant, {"x": up})
        down.wait(TIMEOUT)
        assert down.state.name == "UpstreamFailed"
        assert isinstance(down.exception().__cause__, TaskTimeoutError)  # type: ignore[union-attr]
        stuck.release()
