"""State hooks (on_completion, on_failure, on_cancellation) and runner statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from asyncflow import (
    Future,
    RunnerStatistics,
    State,
    Task,
    ThreadPoolTaskRunner,
    task,
)
from asyncflow._scheduler import Scheduler
from asyncflow.exceptions import (
    TaskCancelledError,
    TaskCrashedError,
    TaskTimeoutError,
    UpstreamFailedError,
)

TIMEOUT = 5.0  # seconds: the longest any single wait in these tests may take


# -- helpers -----------------------------------------------------------------------------------
class Calls:
    """Records hook calls as (hook name, task name, future, state)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, Future[Any], State[Any]]] = []

    def hook(self, name: str) -> Callable[[Task[..., Any], Future[Any], State[Any]], None]:
        def hook(t: Task[..., Any], f: Future[Any], state: State[Any]) -> None:
            with self.lock:
                self.seen.append((name, t.name, f, state))

        return hook

    def ahook(self, name: str) -> Callable[[Task[..., Any], Future[Any], State[Any]], Any]:
        async def hook(t: Task[..., Any], f: Future[Any], state: State[Any]) -> None:
            await asyncio.sleep(0)
            with self.lock:
                self.seen.append((name, t.name, f, state))

        return hook

    @property
    def names(self) -> list[str]:
        return [name for name, *_ in self.seen]


class Gate:
    """A thread body held until ``open()``."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()

    def body(self, value: int = 0) -> int:
        self.started.set()
        if not self.gate.wait(TIMEOUT):
            raise TimeoutError("the gate never opened")
        return value

    def open(self) -> None:
        self.gate.set()


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    try:
        yield g
    finally:
        g.open()


def double(x: int) -> int:
    return x * 2


async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


async def afail(x: int) -> int:
    raise ValueError(f"bad {x}")


def crash() -> None:
    raise SystemExit(2)


async def forever(started: threading.Event) -> None:
    started.set()
    await asyncio.Event().wait()


# -- hooks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [double, adouble], ids=["thread", "coro"])
@pytest.mark.parametrize("kind", ["sync-hook", "async-hook"])
def test_on_completion_gets_the_task_the_future_and_the_final_state(
    body: Callable[..., Any], kind: str
) -> None:
    calls = Calls()
    hook = calls.hook("done") if kind == "sync-hook" else calls.ahook("done")
    t = task(name="doubler", on_completion=hook)(body)
    with ThreadPoolTaskRunner() as runner:
        f = runner.submit(t, {"x": 21})
        assert f.result(timeout=TIMEOUT) == 42
        assert calls.names == ["done"]  # the hook ran before the result was handed out
    ((_, name, future, state),) = calls.seen
    assert name == "doubler"
    assert future is f
    assert state.is_completed()
    assert state.name == "Completed"
    assert state.data == 42


@pytest.mark.anyio
async def test_hooks_have_run_when_await_returns() -> None:
    calls = Calls()
    t = task(on_completion=[calls.ahook("a"), calls.hook("b")], on_failure=calls.hook("x"))(adouble)
    async with ThreadPoolTaskRunner() as runner:
        with anyio.fail_after(TIMEOUT):
            assert await runner.submit(t, {"x": 1}) == 2
        assert calls.names == ["a", "b"]  # in the order given


@pytest.mark.parametrize("body", [fail, afail], ids=["thread", "coro"])
def test_on_failure_runs_once_after_retries_are_exhausted(body: Callable[..., Any]) -> None:
    calls = Calls()
    t = task(retries=2, on_failure=calls.hook("failed"), on_completion=calls.hook("done"))(body)
    runner = ThreadPoolTaskRunner()
    runner._sleep = _no_wait
    with runner:
        f = runner.submit(t, {"x": 3})
        with pytest.raises(ValueError, match="bad 3"):
            f.result(timeout=TIMEOUT)
        assert calls.names == ["failed"]
    ((_, _, future, state),) = calls.seen
    assert future is f
    assert state.is_failed()
    assert state.data is f.exception()
    assert "ValueError: bad 3" in state.message


async def _no_wait(delay: float) -> None:
    return None


def test_on_failure_is_not_called_when_a_retry_succeeds() -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("flaky")
        return "ok"

    calls = Calls()
    t = task(retries=5, on_failure=calls.hook("failed"), on_completion=calls.hook("done"))(flaky)
    runner = ThreadPoolTaskRunner()
    runner._sleep = _no_wait
    with runner:
        assert runner.submit(t).result(timeout=TIMEOUT) == "ok"
    assert calls.names == ["done"]


def test_on_failure_for_crashed_and_timed_out_runs() -> None:
    calls = Calls()

    async def hang() -> None:
        await asyncio.Event().wait()

    with ThreadPoolTaskRunner() as runner:
        crashed = runner.submit(task(on_failure=calls.hook("crash"))(crash))
        timed_out = runner.submit(task(timeout=0.05, on_failure=calls.hook("timeout"))(hang))
        crashed.wait(TIMEOUT)
        timed_out.wait(TIMEOUT)
    states = {name: state for name, _, _, state in calls.seen}
    assert states["crash"].is_crashed()
    assert isinstance(states["crash"].data, TaskCrashedError)
    assert states["timeout"].is_failed()
    assert isinstance(states["timeout"].data, TaskTimeoutError)


def test_on_failure_for_a_run_whose_upstream_failed() -> None:
    calls = Calls()
    ran: list[int] = []

    def record(x: int) -> int:
        ran.append(x)
        return x

    t = task(name="downstream", on_failure=calls.hook("failed"))(record)
    with ThreadPoolTaskRunner() as runner:
        up = runner.submit(fail, {"x": 1})
        down = runner.submit(t, {"x": up})
        down.wait(TIMEOUT)
    # It never started: its hook runs after it is final, and the runner's exit waits for it.
    ((_, name, future, state),) = calls.seen
    assert name == "downstream"
    assert future is down
    assert state.name == "UpstreamFailed"
    assert isinstance(state.data, UpstreamFailedError)
    assert ran == []


def test_on_cancellation_for_running_queued_and_downstream_runs(gate: Gate) -> None:
    calls = Calls()
    started = threading.Event()
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        blocker = runner.submit(gate.body)
        assert gate.started.wait(TIMEOUT)
        running = runner.submit(
            task(name="running", on_cancellation=calls.hook("cancelled"))(forever),
            {"started": started},
        )
        queued = runner.submit(
            task(name="queued", on_cancellation=calls.ahook("cancelled"))(double), {"x": 1}
        )
        downstream = runner.submit(
            task(name="downstream", on_cancellation=calls.hook("cancelled"))(double),
            {"x": queued},
        )
        assert started.wait(TIMEOUT)
        running.cancel()
        with pytest.raises(TaskCancelledError):
            running.result(timeout=TIMEOUT)
        # It had started: its hook ran before its result was handed out.
        assert [name for _, name, _, _ in calls.seen] == ["running"]
        queued.cancel()
        gate.open()
        assert blocker.result(timeout=TIMEOUT) == 0
    assert sorted(name for _, name, _, _ in calls.seen) == ["downstream", "queued", "running"]
    assert all(state.is_cancelled() for _, _, _, state in calls.seen)
    assert {f for _, _, f, _ in calls.seen} == {running, queued, downstream}


def test_a_raising_hook_is_logged_with_the_task_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()

    def broken(t: Task[..., Any], f: Future[Any], state: State[Any]) -> None:
        raise RuntimeError("hook bug")

    async def abroken(t: Task[..., Any], f: Future[Any], state: State[Any]) -> None:
        raise RuntimeError("async hook bug")

    caplog.set_level(logging.ERROR, logger="asyncflow")
    ok = task(
        name="ok_task", on_completion=[broken, calls.hook("after"), abroken, calls.hook("last")]
    )
    bad = task(name="bad_task", on_failure=[abroken, calls.hook("failed")])
    with ThreadPoolTaskRunner() as runner:
        assert runner.submit(ok(double), {"x": 2}).result(timeout=TIMEOUT) == 4
        with pytest.raises(ValueError, match="bad 5"):
            runner.submit(bad(afail), {"x": 5}).result(timeout=TIMEOUT)
    assert calls.names == ["after", "last", "failed"]
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncflow"]
    assert len([m for m in messages if "'ok_task'" in m]) == 2
    assert len([m for m in messages if "'bad_task'" in m]) == 1
    assert all(r.exc_info for r in caplog.records if r.name == "asyncflow")


def test_a_cancel_that_arrives_while_hooks_run_does_not_stop_them() -> None:
    seen: list[str] = []
    in_hook = threading.Event()
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    async def slow(t: Task[..., Any], f: Future[Any], state: State[Any]) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters.append((loop, waiter))
        in_hook.set()
        with anyio.fail_after(TIMEOUT):
            await waiter
        seen.append("slow")

    def after(t: Task[..., Any], f: Future[Any], state: State[Any]) -> None:
        seen.append("after")

    def wake(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    t = task(name="notified", on_completion=[slow, after])(double)
    with ThreadPoolTaskRunner() as runner:
        f = runner.submit(t, {"x": 4})
        assert in_hook.wait(TIMEOUT)  # the body is done; its first hook is running
        assert f.cancel() is False  # too late to cancel the run: its hooks run to their end
        ((loop, waiter),) = waiters
        loop.call_soon_threadsafe(wake, waiter)
        f.wait(TIMEOUT)
        assert f.state.is_completed()
        assert f.result() == 8
    assert "after" in seen  # every hook ran


def test_a_cancel_taken_is_true_even_if_the_run_s_hooks_start_before_it_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whether the cancel was taken is decided on the loop: the caller may read the run's state
    # only once its on_cancellation hooks run (an ordinary thread switch can make it that late).
    in_hook, leave_hook = threading.Event(), threading.Event()

    async def hook(t: Task[..., Any], f: Future[Any], state: State[Any]) -> None:
        in_hook.set()
        await anyio.to_thread.run_sync(leave_hook.wait, TIMEOUT)

    real = Scheduler.call_in_loop

    def call_in_loop(self: Scheduler, fn: Callable[[], Any]) -> Any:
        out = real(self, fn)
        if threading.current_thread() is threading.main_thread():
            assert in_hook.wait(TIMEOUT)  # the caller goes on once the hooks run
        return out

    held = task(on_cancellation=[hook])(forever)
    started = threading.Event()
    with ThreadPoolTaskRunner() as runner:
        run = runner.submit(held, {"started": started})
        assert started.wait(TIMEOUT)
        monkeypatch.setattr(Scheduler, "call_in_loop", call_in_loop)
        try:
            assert run.cancel() is True
        finally:
            leave_hook.set()
        run.wait(TIMEOUT)
    assert run.cancelled()


# -- statistics --------------------------------------------------------------------------------
def test_statistics_of_a_runner_never_started_are_zero_and_frozen() -> None:
    stats = ThreadPoolTaskRunner().statistics()
    assert stats == RunnerStatistics()
    assert dataclasses.astuple(stats) == (0,) * 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.completed = 1  # type: ignore[misc]


def test_statistics_count_running_and_queued_runs(gate: Gate) -> None:
    started = threading.Event()
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        held = runner.submit(gate.body, {"value": 1})
        assert gate.started.wait(TIMEOUT)
        coro = runner.submit(forever, {"started": started})
        queued = runner.submit(double, {"x": 2})
        waiting = runner.submit(double, {"x": queued})
        assert started.wait(TIMEOUT)
        stats = runner.statistics()
        assert stats.submitted == 4
        assert stats.running == 2  # the thread body and the coroutine
        assert stats.queued == 2  # one waits for a worker, one for its input
        assert (stats.completed, stats.failed, stats.cancelled) == (0, 0, 0)
        coro.cancel()
        gate.open()
        assert waiting.result(timeout=TIMEOUT) == 8
        assert held.result(timeout=TIMEOUT) == 1
        stats = runner.statistics()
    assert (stats.running, stats.queued) == (0, 0)
    assert (stats.completed, stats.cancelled) == (3, 1)


def test_a_run_waiting_for_a_worker_is_queued_whatever_its_options(gate: Gate) -> None:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        held = runner.submit(gate.body)
        assert gate.started.wait(TIMEOUT)
        plain = runner.submit(double, {"x": 1})
        with_timeout = runner.submit(task(timeout=30)(double), {"x": 2})
        with_retries = runner.submit(task(retries=2)(double), {"x": 3})
        with_hook = runner.submit(task(on_completion=lambda *_: None)(double), {"x": 4})
        waiting = [plain, with_timeout, with_retries, with_hook]
        runner.statistics()  # a round trip through the loop: every run is registered
        stats = runner.statistics()
        states = [f.state.name for f in waiting]
        gate.open()
        assert [f.result(timeout=TIMEOUT) for f in waiting] == [2, 4, 6, 8]
        assert held.result(timeout=TIMEOUT) == 0
    assert states == ["Pending"] * 4  # none of them is running: the only worker is busy
    assert (stats.running, stats.queued) == (1, 4)


def test_statistics_count_outcomes_and_retries_and_survive_the_exit() -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("flaky")
        return "ok"

    runner = ThreadPoolTaskRunner()
    runner._sleep = _no_wait
    with runner:
        ok = runner.submit(double, {"x": 1})
        retried = runner.submit(task(retries=3)(flaky))
        failed = runner.submit(fail, {"x": 1})
        upstream_failed = runner.submit(double, {"x": failed})
        crashed = runner.submit(crash)
        for f in (ok, retried, failed, upstream_failed, crashed):
            f.wait(TIMEOUT)
    stats = runner.statistics()
    assert stats == RunnerStatistics(
        submitted=5,
        running=0,
        queued=0,
        completed=2,
        failed=3,  # failed, upstream failed and crashed
        cancelled=0,
        retried=2,
        abandoned_threads=0,
    )
    assert runner.statistics() == stats  # kept after the exit
    with runner:  # a new session starts from zero
        assert runner.statistics() == RunnerStatistics()
        assert runner.submit(double, {"x": 2}).result(timeout=TIMEOUT) == 4
    assert runner.statistics().submitted == 1
    assert runner.statistics().completed == 1


def test_statistics_from_task_bodies_in_a_sync_block() -> None:
    def from_thread(runner: ThreadPoolTaskRunner) -> RunnerStatistics:
        return runner.statistics()

    async def from_loop(runner: ThreadPoolTaskRunner) -> RunnerStatistics:
        return runner.statistics()

    with ThreadPoolTaskRunner() as runner:
        in_thread = runner.submit(from_thread, {"runner": runner}).result(timeout=TIMEOUT)
        on_loop = runner.submit(from_loop, {"runner": runner}).result(timeout=TIMEOUT)
    assert (in_thread.submitted, in_thread.running) == (1, 1)  # itself
    assert (on_loop.submitted, on_loop.running, on_loop.completed) == (2, 1, 1)


@pytest.mark.anyio
async def test_statistics_inside_and_after_async_with() -> None:
    def from_thread(runner: ThreadPoolTaskRunner) -> RunnerStatistics:
        return runner.statistics()

    gate = asyncio.Event()
    started = asyncio.Event()

    async def held() -> int:
        started.set()
        await gate.wait()
        return 1

    runner = ThreadPoolTaskRunner()
    async with runner:
        h = runner.submit(held)
        with anyio.fail_after(TIMEOUT):
            await started.wait()
            stats = runner.statistics()  # on the runner's own loop: answered at once
            assert (stats.submitted, stats.running) == (1, 1)
            in_thread = await runner.submit(from_thread, {"runner": runner})
            assert (in_thread.submitted, in_thread.running) == (2, 2)
            gate.set()
            assert await h == 1
    stats = runner.statistics()
    assert (stats.submitted, stats.completed, stats.running) == (2, 2, 0)
