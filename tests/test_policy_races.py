"""Races between cancellation, timeouts, lent limits and hooks: nothing leaks, nothing hangs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import anyio
import pytest
from helpers import TIMEOUT

from asyncflow import Future, ThreadPoolTaskRunner, task
from asyncflow.exceptions import TaskCancelledError


def test_cancels_racing_with_returning_bodies_leak_no_limit_or_thread_count() -> None:
    # Cancel runs from the script thread while their bodies are returning: whichever wins,
    # every limit slot is back and no thread is counted as abandoned once all bodies returned.
    gate = threading.Event()

    @task(tags=["db"], timeout=30)
    def body(i: int) -> int:
        gate.wait(TIMEOUT)
        return i

    with ThreadPoolTaskRunner(max_workers=8, tag_limits={"db": 4}) as runner:
        futures = [runner.submit(body, {"i": i}) for i in range(40)]
        gate.set()
        for f in futures[::2]:
            f.cancel()
        for f in futures:
            f.wait(TIMEOUT)
            assert f.done()
        more = runner.submit(body, {"i": 99})
        assert more.result(timeout=TIMEOUT) == 99  # the limit still has free slots
    stats = runner.statistics()
    assert stats.abandoned_threads == 0
    assert stats.completed + stats.cancelled == 41


def test_a_run_cancelled_while_its_body_waits_for_its_limit_back_ends_and_exits() -> None:
    # parent (db) lends its slot while it blocks on child; q (db) takes the slot; the child
    # finishes, so parent's body waits to get the slot back; then parent is cancelled. Its body
    # must go on (without the slot) and the runner must close.
    child_gate, q_gate = threading.Event(), threading.Event()
    q_started = threading.Event()

    @task
    def child() -> int:
        child_gate.wait(TIMEOUT)
        return 1

    @task(tags=["db"])
    def q() -> str:
        q_started.set()
        q_gate.wait(TIMEOUT)
        return "q"

    got: list[int] = []

    @task(tags=["db"])
    def parent() -> str:
        got.append(child.submit().result(timeout=TIMEOUT))
        return "parent"

    with ThreadPoolTaskRunner(max_workers=4, tag_limits={"db": 1}) as runner:
        fp = runner.submit(parent)
        fq = runner.submit(q)
        assert q_started.wait(TIMEOUT)  # parent lent its slot to q
        child_gate.set()  # parent's wait ends; it now waits for the slot q holds
        assert fp.cancel()
        with pytest.raises(TaskCancelledError):
            fp.result(timeout=TIMEOUT)
        q_gate.set()
        assert fq.result(timeout=TIMEOUT) == "q"
    assert got == [1]  # parent's body went on and returned; the block closed


def test_a_timed_wait_in_a_limited_body_keeps_its_timeout() -> None:
    # parent lends its db slot while it waits 0.1 s for a child; q takes the slot and keeps
    # it. When parent's wait times out, it must not wait for q to give the slot back.
    child_gate, q_gate, q_started = threading.Event(), threading.Event(), threading.Event()

    @task
    def child() -> int:
        child_gate.wait(TIMEOUT)
        return 1

    @task(tags=["db"])
    def q() -> str:
        q_started.set()
        q_gate.wait(TIMEOUT)
        return "q"

    @task(tags=["db"])
    def parent() -> str:
        waiting = child.submit()
        runner.submit(q)  # waits for the db slot, which parent lends during its wait below
        try:
            waiting.result(timeout=0.5)
        except TimeoutError:
            return f"timed out; q started meanwhile: {q_started.is_set()}"
        return "no timeout"

    try:
        with ThreadPoolTaskRunner(max_workers=4, tag_limits={"db": 1}) as runner:
            # q keeps the slot until q_gate opens, after parent's result is in.
            result = runner.submit(parent).result(timeout=TIMEOUT)
            assert result == "timed out; q started meanwhile: True"
            child_gate.set()
            q_gate.set()
    finally:
        child_gate.set()
        q_gate.set()


@pytest.mark.anyio
async def test_an_interrupted_await_takes_its_limit_back() -> None:
    # A body that stops awaiting (asyncio.wait_for timing out) and goes on holds its limit
    # again (at once: an interrupted wait does not queue for it).
    back_inside = asyncio.Event()
    release = asyncio.Event()
    never = asyncio.Event()

    @task
    async def slow_child() -> None:
        await never.wait()

    @task(tags=["db"])
    async def parent() -> str:
        child = slow_child.submit()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.ensure_future(child), 0.05)
        back_inside.set()
        await release.wait()
        child.cancel()
        return "parent"

    async with ThreadPoolTaskRunner(tag_limits={"db": 1}) as runner:
        assert runner._scheduler is not None
        db = runner._scheduler._tag_limits["db"]
        fp = runner.submit(parent)
        with anyio.fail_after(TIMEOUT):
            await back_inside.wait()
            assert db.used == 1  # parent holds the slot again
            release.set()
            assert await fp == "parent"
    assert db.used == 0


def test_a_hook_raising_system_exit_is_logged_and_the_runner_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad_hook(*_: object) -> None:
        raise SystemExit(3)

    calls: list[str] = []

    @task(on_completion=[bad_hook, lambda *_: calls.append("second hook")])
    def work() -> int:
        return 1

    with caplog.at_level(logging.ERROR, logger="asyncflow"), ThreadPoolTaskRunner() as runner:
        assert runner.submit(work).result(timeout=TIMEOUT) == 1
        assert runner.submit(work).result(timeout=TIMEOUT) == 1
    assert calls == ["second hook", "second hook"]
    assert "bad_hook" in caplog.text


@pytest.mark.anyio
async def test_a_cancelled_run_is_not_retried_even_if_its_clean_up_raises() -> None:
    started = asyncio.Event()
    attempts = 0

    @task(retries=3)
    async def body() -> str:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            return "ran again"
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("clean-up failed") from None
        return "unreachable"

    async with ThreadPoolTaskRunner() as runner:
        f: Future[str] = runner.submit(body)
        with anyio.fail_after(TIMEOUT):
            await started.wait()
            assert f.cancel()
            with pytest.raises(TaskCancelledError):
                await f
    assert attempts == 1
    assert runner.statistics().retried == 0
