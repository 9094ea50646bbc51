"""Runner lifecycle and API: entering, submitting, waiting on exit, cancelling, worker bounds."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import gc
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import pytest
import trio
import uvloop
from helpers import adouble, double, hold, noop
from pydantic import ValidationError

from asyncflow import (
    Future,
    FutureList,
    ThreadPoolTaskRunner,
    _futures,
    allow_failure,
    get_settings,
    quote,
    task,
)
from asyncflow.exceptions import SettingsError, TaskCancelledError

TIMEOUT = 5.0  # seconds: the longest any single wait in these tests may take
SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)


# -- task bodies -------------------------------------------------------------------------------


def record(ran: list[int], i: int) -> int:
    ran.append(i)
    return i


async def sleep_forever(started: Callable[[], object], cancelled: list[bool]) -> None:
    started()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(True)
        raise


async def loop_info() -> tuple[type[Any], int]:
    return type(asyncio.get_running_loop()), threading.get_ident()


@task
def child(x: int) -> int:
    return x + 1


@task
async def async_parent(x: int) -> tuple[int, list[int], Future[int]]:
    one = child.submit(x)
    many = child.map([x, x + 10])
    return await one, await many, one


@task
def thread_parent(x: int) -> tuple[int, list[int], Future[int]]:
    one = child.submit(x)
    many = child.map([x, x + 10])
    return one.result(timeout=TIMEOUT), many.result(timeout=TIMEOUT), one


def scheduler_of(runner: ThreadPoolTaskRunner) -> Any:
    sched = runner._scheduler
    assert sched is not None, "the runner is not started"
    return sched


# -- name, duplicate, equality ------------------------------------------------------------------
def test_name_is_threadpool() -> None:
    assert ThreadPoolTaskRunner().name == "threadpool"


def test_duplicate_is_an_equal_unstarted_runner() -> None:
    runner = ThreadPoolTaskRunner(max_workers=3)
    copy = runner.duplicate()
    assert copy is not runner
    assert type(copy) is ThreadPoolTaskRunner
    assert copy == runner
    assert hash(copy) == hash(runner)
    assert copy.max_workers == 3
    assert runner != ThreadPoolTaskRunner(max_workers=4)
    assert runner != object()
    with runner:
        started_copy = runner.duplicate()
        assert started_copy._scheduler is None
        # The copy is independent: it can run while the original is running.
        with started_copy:
            assert started_copy.submit(double, {"x": 4}).result(timeout=TIMEOUT) == 8
        assert runner.submit(double, {"x": 5}).result(timeout=TIMEOUT) == 10


# -- lifecycle ----------------------------------------------------------------------------------
def test_entering_a_started_runner_again_raises() -> None:
    runner = ThreadPoolTaskRunner()
    with runner, pytest.raises(RuntimeError, match="already started"):
        runner.__enter__()
    # The failed second entry did not disturb the running block; it closed normally.
    assert runner._scheduler is None
    with runner:
        assert runner.submit(double, {"x": 1}).result(timeout=TIMEOUT) == 2


@pytest.mark.anyio
async def test_async_entering_a_started_runner_again_raises() -> None:
    runner = ThreadPoolTaskRunner()
    async with runner:
        with pytest.raises(RuntimeError, match="already started"):
            await runner.__aenter__()
        with pytest.raises(RuntimeError, match="already started"):
            runner.__enter__()
        assert await runner.submit(adouble, {"x": 3}) == 6
    assert runner._scheduler is None


def test_async_with_outside_asyncio_says_to_use_with() -> None:
    runner = ThreadPoolTaskRunner()

    async def use() -> None:
        async with runner:
            pass

    with pytest.raises(RuntimeError, match="needs a running asyncio event loop"):
        trio.run(use)
    assert runner._scheduler is None
    with runner:  # nothing was left half-started
        assert runner.submit(double, {"x": 1}).result(timeout=TIMEOUT) == 2


def test_submit_to_an_unstarted_runner_raises() -> None:
    runner = ThreadPoolTaskRunner()
    with pytest.raises(RuntimeError, match="not started"):
        runner.submit(double, {"x": 1})
    with pytest.raises(RuntimeError, match="not started"):
        runner.map(double, {"x": [1, 2]})
    with runner:
        runner.submit(double, {"x": 1}).result(timeout=TIMEOUT)
    with pytest.raises(RuntimeError, match="not started"):
        runner.submit(double, {"x": 1})


def test_runner_can_be_entered_again_after_exit() -> None:
    runner = ThreadPoolTaskRunner(max_workers=2)
    results = []
    for i in range(3):
        with runner:
            results.append(runner.submit(double, {"x": i}).result(timeout=TIMEOUT))
        assert runner._scheduler is None
    assert results == [0, 2, 4]


@pytest.mark.anyio
async def test_runner_can_be_entered_again_async_after_sync() -> None:
    runner = ThreadPoolTaskRunner()
    with runner:
        first = runner.submit(double, {"x": 1})
    assert first.result() == 2
    async with runner:
        assert await runner.submit(double, {"x": 2}) == 4
    async with runner:
        assert await runner.submit(adouble, {"x": 3}) == 6


def test_sync_with_runs_sync_and_async_bodies() -> None:
    with ThreadPoolTaskRunner() as runner:
        sync_f = runner.submit(double, {"x": 2})
        async_f = runner.submit(adouble, {"x": 3})
        assert sync_f.result(timeout=TIMEOUT) == 4
        assert async_f.result(timeout=TIMEOUT) == 6


@pytest.mark.anyio
async def test_async_with_runs_on_the_callers_loop() -> None:
    runner = ThreadPoolTaskRunner()
    async with runner as entered:
        assert entered is runner
        sched = scheduler_of(runner)
        assert sched.loop is asyncio.get_running_loop()
        assert sched.thread_id == threading.get_ident()
        sync_f = runner.submit(double, {"x": 2})
        async_f = runner.submit(adouble, {"x": 3})
        info = runner.submit(loop_info)
        with anyio.fail_after(TIMEOUT):
            assert await sync_f == 4
            assert await async_f == 6
            loop_type, ident = await info
    # Coroutine bodies run on the caller's loop, in the caller's thread.
    assert loop_type is type(asyncio.get_running_loop())
    assert ident == threading.get_ident()


# -- leaving the block --------------------------------------------------------------------------
class _ExitSignallingRunner(ThreadPoolTaskRunner):
    """Signals when the block starts to exit, before the runner waits for anything."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers)
        self.exiting = threading.Event()
        self._exit_hooks: list[Callable[[], object]] = []

    def _signal_exit(self) -> None:
        self.exiting.set()
        for hook in list(self._exit_hooks):
            hook()

    async def wait_exiting(self) -> None:
        """Wait (in a coroutine body, on any loop) until the block starts to exit."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._exit_hooks.append(functools.partial(loop.call_soon_threadsafe, event.set))
        if self.exiting.is_set():  # registered too late for the hooks: no lost wake-up
            event.set()
        await event.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._signal_exit()
        super().__exit__(exc_type, exc, tb)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._signal_exit()
        await super().__aexit__(exc_type, exc, tb)


async def _coroutine_after_exit(runner: _ExitSignallingRunner, finished: list[str]) -> int:
    await runner.wait_exiting()  # can only return once the block has started to exit
    for _ in range(10):
        await asyncio.sleep(0)  # and takes a few more loop turns after that
    finished.append("coroutine")
    return 1


def _thread_after_exit(runner: _ExitSignallingRunner, finished: list[str]) -> int:
    assert runner.exiting.wait(TIMEOUT)  # can only return once the block has started to exit
    finished.append("thread")
    return 1


def _submit_work_that_ends_after_exit(
    runner: _ExitSignallingRunner, kind: str, finished: list[str]
) -> list[Future[int]]:
    coroutine = functools.partial(_coroutine_after_exit, runner, finished)
    thread = functools.partial(_thread_after_exit, runner, finished)
    if kind == "coroutine":
        return [runner.submit(coroutine)]
    if kind == "thread":
        return [runner.submit(thread)]
    # Downstream work that cannot even start before the exit began.
    up = runner.submit(coroutine)
    middle = runner.submit(adouble, {"x": up})
    return [up, middle, runner.submit(double, {"x": middle})]


_EXIT_KINDS = {
    "coroutine": (["coroutine"], [1]),
    "thread": (["thread"], [1]),
    "downstream": (["coroutine"], [1, 2, 4]),
}


@pytest.mark.parametrize("kind", list(_EXIT_KINDS))
def test_exit_waits_for_every_submitted_task(kind: str) -> None:
    runner = _ExitSignallingRunner(max_workers=2)
    finished: list[str] = []
    with runner:
        futures = _submit_work_that_ends_after_exit(runner, kind, finished)
        assert not any(f.done() for f in futures)
    expected_finished, expected_results = _EXIT_KINDS[kind]
    assert finished == expected_finished
    assert [f.result(timeout=0) for f in futures] == expected_results


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(_EXIT_KINDS))
async def test_async_exit_waits_for_every_submitted_task(kind: str) -> None:
    runner = _ExitSignallingRunner(max_workers=2)
    finished: list[str] = []
    with anyio.fail_after(TIMEOUT):
        async with runner:
            futures = _submit_work_that_ends_after_exit(runner, kind, finished)
            assert not any(f.done() for f in futures)
    expected_finished, expected_results = _EXIT_KINDS[kind]
    assert finished == expected_finished
    assert [f.result(timeout=0) for f in futures] == expected_results


def test_exit_waits_for_nested_submits() -> None:
    children: list[Future[int]] = []
    gate = threading.Event()

    @task
    def slow_child() -> int:
        assert gate.wait(TIMEOUT)
        return 7

    @task
    async def parent() -> None:
        # Submit and return at once, without waiting for the child.
        children.append(slow_child.submit())
        gate.set()

    with ThreadPoolTaskRunner() as runner:
        runner.submit(parent)
    assert len(children) == 1
    assert children[0].done()
    assert children[0].result() == 7


def _cancel_on_error_scenario(
    runner: ThreadPoolTaskRunner, started: Callable[[], object], coro_started: Callable[[], object]
) -> dict[str, Any]:
    """Submit running, queued and waiting work to a 1-worker runner; returns the handles."""
    gate = threading.Event()
    ran: list[int] = []
    cancelled: list[bool] = []
    running = runner.submit(hold, {"started": started, "gate": gate, "value": 1})
    # The thread body cannot be interrupted: let it return once it is marked cancelled.
    running.add_done_callback(lambda _f: gate.set())
    queued = [runner.submit(record, {"ran": ran, "i": i}) for i in range(3)]
    waiting = runner.submit(double, {"x": running})
    forever = runner.submit(sleep_forever, {"started": coro_started, "cancelled": cancelled})
    return {
        "running": running,
        "queued": queued,
        "waiting": waiting,
        "forever": forever,
        "ran": ran,
        "cancelled": cancelled,
    }


def _check_all_cancelled(work: dict[str, Any]) -> None:
    futures: list[Future[Any]] = [
        work["running"],
        *work["queued"],
        work["waiting"],
        work["forever"],
    ]
    for f in futures:
        assert f.done()
        assert f.state.is_cancelled(), f
        with pytest.raises(TaskCancelledError):
            f.exception()
        with pytest.raises(TaskCancelledError):
            f.result()
    assert work["ran"] == []  # queued work never started
    assert work["cancelled"] == [True]  # the running coroutine saw CancelledError


def test_leaving_with_an_exception_cancels_unfinished_work_and_reraises() -> None:
    runner = ThreadPoolTaskRunner(max_workers=1)
    started = threading.Event()
    coro_started = threading.Event()
    work: dict[str, Any] = {}

    def use() -> None:
        with runner:
            work.update(_cancel_on_error_scenario(runner, started.set, coro_started.set))
            assert started.wait(TIMEOUT)
            assert coro_started.wait(TIMEOUT)
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        use()
    _check_all_cancelled(work)
    assert runner._scheduler is None


@pytest.mark.anyio
async def test_async_leaving_with_an_exception_cancels_unfinished_work_and_reraises() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    coro_started = asyncio.Event()
    runner = ThreadPoolTaskRunner(max_workers=1)
    work: dict[str, Any] = {}

    async def use() -> None:
        async with runner:
            work.update(
                _cancel_on_error_scenario(
                    runner,
                    functools.partial(loop.call_soon_threadsafe, started.set),
                    coro_started.set,
                )
            )
            with anyio.fail_after(TIMEOUT):
                await started.wait()
                await coro_started.wait()
            raise KeyError("boom")

    with anyio.fail_after(TIMEOUT), pytest.raises(KeyError, match="boom"):
        await use()
    _check_all_cancelled(work)


def test_cancel_all_cancels_unfinished_work_and_the_runner_goes_on() -> None:
    started = threading.Event()
    coro_started = threading.Event()
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        done_before = runner.submit(double, {"x": 1})
        assert done_before.result(timeout=TIMEOUT) == 2
        work = _cancel_on_error_scenario(runner, started.set, coro_started.set)
        assert started.wait(TIMEOUT)
        assert coro_started.wait(TIMEOUT)
        runner.cancel_all()
        for f in [work["running"], *work["queued"], work["waiting"], work["forever"]]:
            f.wait(TIMEOUT)
        # The coroutine records its cancellation just before its future is final.
        _check_all_cancelled(work)
        assert done_before.state.is_completed()
        assert runner.submit(double, {"x": 4}).result(timeout=TIMEOUT) == 8


def test_cancel_all_from_another_thread_has_cancelled_what_had_not_started_when_it_returns() -> (
    None
):
    # As Future.cancel: queued runs, waiting runs and a plain thread body read Cancelled as soon
    # as the call returns, with no wait in between.
    started = threading.Event()
    gate = threading.Event()
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        running = runner.submit(hold, {"started": started.set, "gate": gate})
        queued = [runner.submit(double, {"x": i}) for i in range(3)]
        waiting = runner.submit(double, {"x": queued[0]})
        assert started.wait(TIMEOUT)
        runner.cancel_all()
        states = [f.state.name for f in [running, *queued, waiting]]
        gate.set()  # the abandoned body returns; its outcome is ignored
    assert states == ["Cancelled"] * 5, states


def test_cancel_all_on_an_unstarted_runner_does_nothing() -> None:
    runner = ThreadPoolTaskRunner()
    runner.cancel_all()
    with runner:
        assert runner.submit(double, {"x": 2}).result(timeout=TIMEOUT) == 4


# -- what can be submitted ----------------------------------------------------------------------
class _Adder:
    def __call__(self, x: int) -> int:
        return x + 100


def test_plain_callables_and_task_objects_are_accepted() -> None:
    named = task(name="dbl")(double)
    with ThreadPoolTaskRunner() as runner:
        futures = [
            runner.submit(double, {"x": 1}),
            runner.submit(adouble, {"x": 2}),
            runner.submit(task(double), {"x": 3}),
            runner.submit(task(adouble), {"x": 4}),
            runner.submit(named, {"x": 5}),
            runner.submit(lambda x: x - 1, {"x": 6}),
            runner.submit(functools.partial(double, 7)),
            runner.submit(_Adder(), {"x": 8}),
            runner.submit(max, {"args": [3, 9, 4]}),
        ]
        mapped = runner.map(named, {"x": [1, 2, 3]})
        assert [f.result(timeout=TIMEOUT) for f in futures] == [2, 4, 6, 8, 10, 5, 14, 108, 9]
        assert isinstance(mapped, FutureList)
        assert mapped.result(timeout=TIMEOUT) == [2, 4, 6]


# -- nested submits -----------------------------------------------------------------------------
@pytest.mark.parametrize("parent", [async_parent, thread_parent], ids=["async", "thread"])
def test_nested_submits_from_a_task_body_go_to_the_same_runner(parent: Any) -> None:
    outer = ThreadPoolTaskRunner()
    inner = ThreadPoolTaskRunner()
    # `inner` is the innermost block here, but the parent runs in `outer`: the body's nested
    # submits must follow the run, not the block that happens to be open in this thread.
    with outer, inner:
        one, many, child_future = outer.submit(parent, {"x": 1}).result(timeout=TIMEOUT)
        assert child_future._scheduler is outer._scheduler
    assert one == 2
    assert many == [2, 12]


@pytest.mark.anyio
@pytest.mark.parametrize("parent", [async_parent, thread_parent], ids=["async", "thread"])
async def test_nested_submits_in_async_with(parent: Any) -> None:
    async with ThreadPoolTaskRunner() as runner:
        with anyio.fail_after(TIMEOUT):
            one, many, child_future = await runner.submit(parent, {"x": 5})
        assert child_future._scheduler is runner._scheduler
    assert one == 6
    assert many == [6, 16]


def test_task_submit_uses_the_runner_of_the_with_block() -> None:
    with ThreadPoolTaskRunner() as runner:
        f = child.submit(41)
        assert f._scheduler is runner._scheduler
        assert f.result(timeout=TIMEOUT) == 42
        assert child.map([1, 2]).result(timeout=TIMEOUT) == [2, 3]


# -- worker bound -------------------------------------------------------------------------------
def test_thread_pool_never_runs_more_than_max_workers_sync_bodies() -> None:
    limit, total = 2, 6
    lock = threading.Lock()
    running = 0
    peak = 0
    started = [threading.Event() for _ in range(total)]
    gates = [threading.Event() for _ in range(total)]

    def body(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        started[i].set()
        try:
            if not gates[i].wait(TIMEOUT):
                raise TimeoutError("the gate never opened")
        finally:
            with lock:
                running -= 1
        return i

    with ThreadPoolTaskRunner(max_workers=limit) as runner:
        futures = [runner.submit(body, {"i": i}) for i in range(total)]
        for i in range(limit):
            assert started[i].wait(TIMEOUT)
        # A round trip through the loop: every submission above has been processed by now.
        runner.submit(noop).result(timeout=TIMEOUT)
        # A run is marked Running when it is handed to a thread: the rest were not handed out.
        assert [f.state.is_running() for f in futures] == [True] * limit + [False] * (total - limit)
        assert all(f.state.is_pending() for f in futures[limit:])
        assert not any(e.is_set() for e in started[limit:])
        for i in range(total):
            gates[i].set()
            nxt = i + limit
            if nxt < total:
                # Each body that returns lets exactly one queued body in (first in, first out).
                assert started[nxt].wait(TIMEOUT)
                if nxt + 1 < total:
                    assert futures[nxt + 1].state.is_pending()
                    assert not started[nxt + 1].is_set()
            with lock:
                assert running <= limit
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(total))
    assert peak == limit


def _gated_first(
    ran: list[str], gate: threading.Event, started: threading.Event
) -> Callable[[str], str]:
    """A body recording its name in ``ran``; the one named "first" waits for ``gate``."""

    def body(name: str) -> str:
        if name == "first":
            started.set()
            if not gate.wait(TIMEOUT):
                raise TimeoutError("the gate never opened")
        ran.append(name)
        return name

    return body


def test_a_thread_going_on_to_queued_runs_skips_the_cancelled_ones_and_keeps_the_order() -> None:
    # One thread: when a body returns, its thread takes the next queued run itself.
    ran: list[str] = []
    gate, started = threading.Event(), threading.Event()
    body = _gated_first(ran, gate, started)
    names = ["first", "b", "c", "d", "e", "f"]
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        futures = [runner.submit(body, {"name": n}) for n in names]
        assert started.wait(TIMEOUT)
        assert futures[2].cancel()
        assert futures[4].cancel()
        gate.set()
        for f in futures:
            f.wait(TIMEOUT)
        assert runner.statistics().abandoned_threads == 0
    assert ran == ["first", "b", "d", "f"]
    assert [f.cancelled() for f in futures] == [False, False, True, False, True, False]
    assert [f.result() for f in futures if not f.cancelled()] == ["first", "b", "d", "f"]


def test_a_run_with_retries_queued_between_plain_runs_starts_in_its_turn() -> None:
    ran: list[str] = []
    gate, started = threading.Event(), threading.Event()
    body = _gated_first(ran, gate, started)
    driven = task(retries=1)(body)  # its attempts are started by the loop, not taken by a thread
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        first = runner.submit(body, {"name": "first"})
        assert started.wait(TIMEOUT)
        rest = [runner.submit(body, {"name": "b"}), runner.submit(driven, {"name": "retried"})]
        # The retried run's attempt is queued by its driver, a few loop turns later: look
        # once a turn until it is there, before the last plain run is queued behind it.
        sched = scheduler_of(runner)
        queued = lambda: any(type(x) is not Future for x in sched.backend._ready)  # noqa: E731
        assert any(sched.call_in_loop(queued) for _ in range(1000))
        rest.append(runner.submit(body, {"name": "c"}))
        gate.set()
        assert [f.result(timeout=TIMEOUT) for f in [first, *rest]] == ["first", "b", "retried", "c"]
    assert ran == ["first", "b", "retried", "c"]


def test_a_cancel_while_a_thread_takes_the_queued_run_means_its_body_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loop decides "not running" for a queued run at the very moment a thread, done with
    # its body, takes that run from the queue: the thread's claim must then fail.
    ran: list[str] = []
    gate, started = threading.Event(), threading.Event()
    body = _gated_first(ran, gate, started)
    claims: dict[str, bool] = {}
    claimed = threading.Event()
    target: list[Future[Any]] = []
    withdraw, claim = Future._withdraw, Future._claim

    def slow_withdraw(self: Future[Any]) -> bool:
        running = withdraw(self)
        if target and self is target[0]:
            gate.set()  # the first body returns; its thread goes for the queued run now
            assert claimed.wait(TIMEOUT), "the thread never tried to take the queued run"
        return running

    def watched_claim(self: Future[Any]) -> bool:
        won = claim(self)
        if target and self is target[0]:
            claims["b"] = won
            claimed.set()
        return won

    monkeypatch.setattr(Future, "_withdraw", slow_withdraw)
    monkeypatch.setattr(Future, "_claim", watched_claim)
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        first = runner.submit(body, {"name": "first"})
        assert started.wait(TIMEOUT)
        b = runner.submit(body, {"name": "b"})
        c = runner.submit(body, {"name": "c"})
        target.append(b)
        assert b.cancel()
        assert first.result(timeout=TIMEOUT) == "first"
        assert c.result(timeout=TIMEOUT) == "c"
    assert claims == {"b": False}
    assert b.cancelled()
    assert ran == ["first", "c"]


def test_cancel_all_starts_no_queued_run_even_when_a_body_returns_meanwhile() -> None:
    # The first body returns while the loop is in the middle of cancel_all (the first queued
    # run's done-callback opens its gate and waits until its thread has reported): that thread
    # must not go on to a queued run that is not cancelled yet.
    ran: list[str] = []
    gate, started = threading.Event(), threading.Event()
    body = _gated_first(ran, gate, started)
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        first = runner.submit(body, {"name": "first"})
        assert started.wait(TIMEOUT)
        rest = [runner.submit(body, {"name": n}) for n in "bcdefgh"]
        workers = scheduler_of(runner).backend
        reported = threading.Event()
        call_soon = workers._call_soon

        def watched_call_soon(fn: Any, *args: Any) -> bool:
            reported.set()  # the first body's thread posts its outcome
            return bool(call_soon(fn, *args))

        workers._call_soon = watched_call_soon
        opened: list[bool] = []

        def on_cancelled(_: Future[Any]) -> None:  # on the loop, inside cancel_all
            if not opened:
                opened.append(True)
                gate.set()
                assert reported.wait(TIMEOUT)

        for f in rest:
            f.add_done_callback(on_cancelled)
        runner.cancel_all()
    assert opened == [True]
    assert all(f.cancelled() for f in [first, *rest])
    assert ran == ["first"]  # (leaving waited for the first body to return)


def test_the_loop_and_a_thread_going_on_take_queued_runs_one_at_a_time() -> None:
    # Both sides pop the thread backend's queue; each pop (and the look before it) happens
    # under the backend's lock, so neither finds the other's run gone between look and pop.
    pops: list[tuple[bool, bool]] = []  # (from the loop thread, under the lock)
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        sched = scheduler_of(runner)
        workers = sched.backend

        class Watched(collections.deque):  # type: ignore[type-arg]
            def popleft(self) -> Any:
                pops.append((threading.get_ident() == sched.thread_id, workers._take.locked()))
                return super().popleft()

        sched.call_in_loop(lambda: setattr(workers, "_ready", Watched(workers._ready)))
        ran: list[str] = []
        gate, started = threading.Event(), threading.Event()
        body = _gated_first(ran, gate, started)
        futures = [runner.submit(body, {"name": n}) for n in ("first", "b", "c")]
        assert started.wait(TIMEOUT)
        gate.set()
        assert [f.result(timeout=TIMEOUT) for f in futures] == ["first", "b", "c"]
    assert (True, True) in pops  # the loop handed out the first
    assert (False, True) in pops  # the thread went on to the others
    assert all(locked for _, locked in pops)


class _WatchedLock:
    """A lock that says (``waiting[who]``) when a thread whose name starts with ``who`` is
    about to take it."""

    def __init__(self, *who: str) -> None:
        self.lock = threading.RLock()  # as the lock it stands in for
        self.waiting = {name: threading.Event() for name in who}

    def __enter__(self) -> bool:
        for name, event in self.waiting.items():
            if threading.current_thread().name.startswith(name):
                event.set()
        return self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class _Behind:
    """C, which runs on the slot a body P lends it (``c_started``) and waits for ``c_gate``;
    D, queued behind it, which waits for ``d_gate``. ``holder[0]``: C's future."""

    def __init__(self) -> None:
        self.c_started, self.c_gate, self.d_gate = (threading.Event() for _ in range(3))
        self.holder: list[Future[Any]] = []

    def c(self) -> str:
        self.c_started.set()
        assert self.c_gate.wait(TIMEOUT)
        return "c"

    def d(self) -> str:
        assert self.d_gate.wait(TIMEOUT)
        return "d"

    def submit(self, runner: ThreadPoolTaskRunner, p: Callable[[], str]) -> list[Future[str]]:
        futures = [runner.submit(p), runner.submit(self.c), runner.submit(self.d)]
        self.holder.append(futures[1])
        return futures

    def after_p(self, runner: ThreadPoolTaskRunner, futures: list[Future[str]]) -> tuple[bool, int]:
        """Once P returned: whether D runs, and how many runs do; then C and D end."""
        pf, cf, df = futures
        assert pf.result(timeout=TIMEOUT) == "p"
        seen = df.running(), runner.statistics().running
        self.open()
        assert cf.result(timeout=TIMEOUT) == "c"
        assert df.result(timeout=TIMEOUT) == "d"
        return seen

    def open(self) -> None:
        self.c_gate.set()
        self.d_gate.set()


class _Lent(_Behind):
    """P, which awaits C in a loop of its own and returns with that await pending once
    ``p_return`` is set (its slot is lent: C gets it). ``state`` (P's thread's record of what
    its waits lent) takes a ``_WatchedLock``."""

    def __init__(self) -> None:
        super().__init__()
        self.p_go, self.lent, self.p_return = (threading.Event() for _ in range(3))
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.lock = _WatchedLock("asyncflow-", "closer")
        self.state: Any = None

    def p(self) -> str:
        assert self.p_go.wait(TIMEOUT)
        self.state = _futures._lent.state
        self.state.lock = self.lock
        loop = asyncio.new_event_loop()
        self.loops.append(loop)

        awaiting = asyncio.Event()

        async def waiter() -> None:
            awaiting.set()  # (the await below starts in the same loop turn)
            await self.holder[0]

        self.tasks.append(loop.create_task(waiter()))
        loop.run_until_complete(awaiting.wait())  # the await started: the slot is lent
        self.lent.set()
        assert self.p_return.wait(TIMEOUT)
        return "p"  # the await is still pending: the thread takes back the slot now

    def start(self, runner: ThreadPoolTaskRunner) -> list[Future[str]]:
        futures = self.submit(runner, self.p)
        self.p_go.set()
        assert self.lent.wait(TIMEOUT)
        assert self.c_started.wait(TIMEOUT)  # C runs on P's lent slot
        for event in self.lock.waiting.values():
            event.clear()  # (P's wait took the lock to lend)
        return futures

    def close(self) -> None:
        self.open()
        self.p_go.set()
        self.p_return.set()
        for pending in self.tasks:
            pending.get_coro().close()  # (if still pending: it gives back nothing now)
        for loop in self.loops:
            loop.close()


@pytest.mark.parametrize("ends_elsewhere", [False, True], ids=["ends-with-p", "ends-elsewhere"])
def test_a_body_whose_lent_slot_is_taken_back_at_once_does_not_go_on_over_max_workers(
    ends_elsewhere: bool,
) -> None:
    # P's body has an await of C pending in a loop of its own: its slot was lent (C got it).
    # Either P returns with it pending (its thread takes the slot back at once: take_back_lent),
    # or, while P still runs, the await ends on another thread (closed there, as the garbage
    # collector may finalize it there), which takes it back at once. Either way the pool runs
    # one over its size until P returns: P's thread must not then go on to D while C runs.
    lent = _Lent()
    try:
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            futures = lent.start(runner)
            if ends_elsewhere:
                lent.tasks[0].get_coro().close()  # the pending await ends here, not on P's thread
            lent.p_return.set()
            d_running, running = lent.after_p(runner, futures)
    finally:
        lent.close()
    assert not d_running, "D started while C held the only slot"
    assert running == 1


def test_a_body_back_from_a_timed_out_wait_does_not_go_on_over_max_workers() -> None:
    # B's .result(timeout=) lends its slot (C takes it), times out and takes the slot back at
    # once, over the limit "for a moment" (until B returns). B's thread must not then start D
    # on that extra slot while C still runs.
    behind = _Behind()
    b_go = threading.Event()

    def b() -> str:
        assert b_go.wait(TIMEOUT)
        try:
            behind.holder[0].result(timeout=0.05)  # C is gated: this times out
        except TimeoutError:
            pass
        assert behind.c_started.wait(TIMEOUT)
        return "p"

    try:
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            futures = behind.submit(runner, b)
            b_go.set()
            d_running, running = behind.after_p(runner, futures)
    finally:
        b_go.set()
        behind.open()
    assert not d_running, "D started while C held the only slot"
    assert running == 1


def _slot_counts(runner: ThreadPoolTaskRunner) -> tuple[int, int]:
    sched = scheduler_of(runner)
    workers = sched.backend
    active, parked = sched.call_in_loop(lambda: (workers._active, workers._parked))
    return active, parked


def test_a_wait_ending_on_another_thread_as_its_body_returns_starts_no_run_over_the_bound() -> None:
    # Another thread ends P's pending await and takes its slot back; it is held inside that
    # take back while P returns. P's thread must wait for it (the lock of what P's waits lent),
    # and then neither take the slot back again nor go on to D while C runs.
    lent = _Lent()
    in_take_back, go_on = threading.Event(), threading.Event()
    closer = threading.Thread(target=lambda: lent.tasks[0].get_coro().close(), name="closer")
    try:
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            workers = scheduler_of(runner).backend
            reacquire = workers.reacquire

            def held_reacquire(*args: Any, **kwargs: Any) -> None:
                if threading.current_thread() is closer:
                    in_take_back.set()
                    assert go_on.wait(TIMEOUT)
                reacquire(*args, **kwargs)

            workers.reacquire = held_reacquire
            pf, cf, df = lent.start(runner)
            closer.start()
            assert in_take_back.wait(TIMEOUT)
            lent.p_return.set()
            assert lent.lock.waiting["asyncflow-"].wait(TIMEOUT)  # P's thread, at its end
            go_on.set()
            closer.join(TIMEOUT)
            assert pf.result(timeout=TIMEOUT) == "p"
            counts = _slot_counts(runner)
            d_running = df.running()
            lent.c_gate.set()
            lent.d_gate.set()
            assert cf.result(timeout=TIMEOUT) == "c"
            assert df.result(timeout=TIMEOUT) == "d"
    finally:
        go_on.set()
        lent.close()
    assert not d_running, "D started while C held the only slot"
    assert counts == (1, 0)


def test_a_wait_ending_on_another_thread_while_its_body_ends_takes_the_slot_back_once() -> None:
    # P returns with its await pending, and its thread takes the slot back (take_back_lent)
    # while another thread ends that await: one of the two takes it back, not both (else the
    # pool would count a slot in use for good, and a later run would never start).
    lent = _Lent()
    closer = threading.Thread(target=lambda: lent.tasks[0].get_coro().close(), name="closer")
    try:
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            pf, cf, df = lent.start(runner)
            with lent.lock:  # P's thread, at its end, and the closer wait here together
                lent.p_return.set()
                closer.start()
                assert lent.lock.waiting["asyncflow-"].wait(TIMEOUT)
                assert lent.lock.waiting["closer"].wait(TIMEOUT)
            closer.join(TIMEOUT)
            assert pf.result(timeout=TIMEOUT) == "p"
            lent.c_gate.set()
            lent.d_gate.set()
            assert cf.result(timeout=TIMEOUT) == "c"
            assert df.result(timeout=TIMEOUT) == "d"
            assert runner.submit(noop).result(timeout=TIMEOUT) is None
            counts = _slot_counts(runner)
    finally:
        lent.close()
    assert counts == (0, 0)


def test_a_body_back_from_a_wait_gets_its_slot_before_a_thread_goes_on_to_a_queued_run() -> None:
    # P waits for X (its slot is lent: X runs on it); X's thread then goes on to Q1. P, woken
    # by X's end, asks for its slot back while Q1 runs: when Q1 returns, its thread must leave
    # the slot to P rather than go on to Q2.
    order: list[str] = []
    p_go, x_gate, q1_started, q1_gate = (threading.Event() for _ in range(4))
    holder: list[Future[str]] = []

    def p() -> str:
        assert p_go.wait(TIMEOUT)
        assert holder[0].result(timeout=TIMEOUT) == "x"
        order.append("p resumed")
        return "p"

    def x() -> str:
        assert x_gate.wait(TIMEOUT)
        return "x"

    def q(name: str) -> str:
        order.append(f"{name} started")
        if name == "q1":
            q1_started.set()
            assert q1_gate.wait(TIMEOUT)
        return name

    try:
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            workers = scheduler_of(runner).backend
            pf = runner.submit(p)
            holder.append(runner.submit(x))
            qs = [runner.submit(q, {"name": n}) for n in ("q1", "q2")]
            p_go.set()  # P waits for X, lending its slot
            x_gate.set()
            assert q1_started.wait(TIMEOUT)
            # P asks for its slot back; look once a loop turn until its request is queued.
            asked = lambda: bool(workers._regrants)  # noqa: E731
            assert any(scheduler_of(runner).call_in_loop(asked) for _ in range(1000))
            q1_gate.set()
            assert pf.result(timeout=TIMEOUT) == "p"
            assert [f.result(timeout=TIMEOUT) for f in qs] == ["q1", "q2"]
    finally:
        for gate in (p_go, x_gate, q1_gate):
            gate.set()
    assert order == ["q1 started", "p resumed", "q2 started"]


class _FinalizingState(_futures._LentState):
    """A thread's record of what its waits lent that, when the body's end takes back what
    they lent, first finalizes ``victim`` (a pending await of the same body) on this thread,
    as a collection triggered by an allocation there may."""

    def __init__(self) -> None:
        self.victim: Any = None
        super().__init__()

    @property
    def runs(self) -> Any:
        return self._runs

    @runs.setter
    def runs(self, value: Any) -> None:
        self._runs = value
        victim, self.victim = self.victim, None
        if victim is not None:
            victim.close()


def test_a_pending_await_finalized_on_its_own_thread_as_its_body_ends_does_not_hang() -> None:
    p_go, c_gate = threading.Event(), threading.Event()
    holder: list[Future[str]] = []
    loops: list[asyncio.AbstractEventLoop] = []
    tasks: list[asyncio.Task[None]] = []

    def p() -> str:
        assert p_go.wait(TIMEOUT)
        state = _futures._lent.state = _FinalizingState()

        awaiting = asyncio.Event()

        async def waiter() -> None:
            awaiting.set()  # (the await below starts in the same loop turn)
            await holder[0]

        loop = asyncio.new_event_loop()
        loops.append(loop)
        tasks.append(loop.create_task(waiter()))
        loop.run_until_complete(awaiting.wait())  # the await started: the slot is lent
        state.victim = tasks[0].get_coro()
        return "p"  # the await pending: the body's end takes back what it lent, once

    def c() -> str:
        assert c_gate.wait(TIMEOUT)
        return "c"

    try:
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            pf = runner.submit(p)
            holder.append(runner.submit(c))
            p_go.set()
            assert pf.result(timeout=TIMEOUT) == "p"
            c_gate.set()
            assert holder[0].result(timeout=TIMEOUT) == "c"
            assert runner.submit(noop).result(timeout=TIMEOUT) is None
            counts = _slot_counts(runner)
    finally:
        p_go.set()
        c_gate.set()
        for loop in loops:
            loop.close()
    assert counts == (0, 0)


def test_max_workers_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCFLOW_THREAD_POOL_MAX_WORKERS", "3")
    runner = ThreadPoolTaskRunner()
    assert runner.max_workers == 3
    assert runner.duplicate().max_workers == 3
    assert ThreadPoolTaskRunner(max_workers=5).max_workers == 5  # the argument wins
    monkeypatch.delenv("ASYNCFLOW_THREAD_POOL_MAX_WORKERS")
    assert ThreadPoolTaskRunner().max_workers == min(32, (os.cpu_count() or 1) + 4)


def test_settings_follow_every_change_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read again with the same variables are the same (frozen) settings; any change,
    # in a name's case too, is read anew; an invalid value is refused every time it is read.
    monkeypatch.delenv("ASYNCFLOW_DEFAULT_RETRIES", raising=False)
    monkeypatch.delenv("asyncflow_default_retries", raising=False)
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setenv("ASYNCFLOW_DEFAULT_RETRIES", "2")
    assert get_settings().default_retries == 2
    assert ThreadPoolTaskRunner()._options.default_retries == 2
    monkeypatch.setenv("ASYNCFLOW_DEFAULT_RETRIES", "3")
    assert get_settings().default_retries == 3
    monkeypatch.delenv("ASYNCFLOW_DEFAULT_RETRIES")
    monkeypatch.setenv("asyncflow_default_retries", "4")  # (names are matched in any case)
    assert get_settings().default_retries == 4
    monkeypatch.setenv("asyncflow_default_retries", "many")
    for _ in range(2):
        with pytest.raises(SettingsError, match="DEFAULT_RETRIES"):
            get_settings()
    monkeypatch.delenv("asyncflow_default_retries")
    assert get_settings().default_retries == first.default_retries == 0
    with pytest.raises(ValidationError):  # shared, so it cannot be changed
        first.default_retries = 5


def test_max_workers_from_the_environment_bounds_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCFLOW_THREAD_POOL_MAX_WORKERS", "1")
    first_started, second_started = threading.Event(), threading.Event()
    gate = threading.Event()
    with ThreadPoolTaskRunner() as runner:
        first = runner.submit(hold, {"started": first_started.set, "gate": gate, "value": 1})
        second = runner.submit(hold, {"started": second_started.set, "gate": gate, "value": 2})
        assert first_started.wait(TIMEOUT)
        runner.submit(noop).result(timeout=TIMEOUT)
        assert second.state.is_pending()  # not handed to a thread
        assert not second_started.is_set()
        gate.set()
        assert first.result(timeout=TIMEOUT) == 1
        assert second.result(timeout=TIMEOUT) == 2


# -- the background loop ------------------------------------------------------------------------
def test_with_uses_a_background_loop_thread_that_is_gone_after_exit() -> None:
    runner = ThreadPoolTaskRunner()
    with runner:
        sched = scheduler_of(runner)
        assert sched.thread_id != threading.get_ident()
        loop_threads = [t for t in threading.enumerate() if t.ident == sched.thread_id]
        assert len(loop_threads) == 1
        assert loop_threads[0].is_alive()
        _, body_thread = runner.submit(loop_info).result(timeout=TIMEOUT)
        assert body_thread == sched.thread_id  # coroutine bodies run on that thread
    assert not loop_threads[0].is_alive()
    assert sched.loop.is_closed()
    assert runner._scheduler is None


@pytest.mark.parametrize(
    ("setting", "is_uvloop"),
    [("asyncio", False), ("uvloop", True), ("auto", True)],
)
def test_event_loop_setting_picks_the_background_loop(
    monkeypatch: pytest.MonkeyPatch, setting: str, is_uvloop: bool
) -> None:
    monkeypatch.setenv("ASYNCFLOW_EVENT_LOOP", setting)
    with ThreadPoolTaskRunner() as runner:
        loop = scheduler_of(runner).loop
        body_loop_type, _ = runner.submit(loop_info).result(timeout=TIMEOUT)
    assert body_loop_type is type(loop)
    assert isinstance(loop, uvloop.Loop) is is_uvloop
    assert isinstance(loop, asyncio.AbstractEventLoop)


_CLOSED_STDIO_SCRIPT = """
import os, sys
from asyncflow import ThreadPoolTaskRunner

def double(x):
    return 2 * x

try:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        values = runner.map(double, {"x": range(3)}).result()
except RuntimeError as exc:
    values = f"RuntimeError: {exc}"
with open(sys.argv[1], "w") as out:
    out.write(f"{values}")
"""


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-"])
@pytest.mark.parametrize("setting", ["auto", "uvloop"])
def test_a_process_with_a_standard_descriptor_closed_runs_on_asyncio_or_says_why(
    tmp_path: Path, closed: str, setting: str
) -> None:
    # libuv aborts the process (SIGABRT) when a descriptor of its own is numbered 0 to 2, so
    # uvloop is not taken then: "auto" picks asyncio, an explicit "uvloop" says why it cannot.
    script, out = tmp_path / "closed.py", tmp_path / "out.txt"
    script.write_text(_CLOSED_STDIO_SCRIPT)
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT, "ASYNCFLOW_EVENT_LOOP": setting}
    done = subprocess.run(
        ["sh", "-c", f'exec "$0" "$1" "$2" {closed}', sys.executable, str(script), str(out)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    if setting == "auto":
        assert out.read_text() == "[0, 2, 4]"
    else:
        fd = {"<&-": 0, ">&-": 1, "2>&-": 2}[closed]
        assert out.read_text() == (
            f"RuntimeError: ASYNCFLOW_EVENT_LOOP=uvloop but this process's descriptor {fd} is "
            "closed: libuv aborts the process when one of its own descriptors is numbered 0, 1 "
            "or 2 (use ASYNCFLOW_EVENT_LOOP=auto or asyncio)"
        )


# -- parameters reach the body the same way, with or without an upstream -------------------------
def identity(x: Any) -> Any:
    return x


def append_one(out: list[int]) -> int:
    out.append(1)
    return len(out)


def _upstream(runner: ThreadPoolTaskRunner, with_upstream: bool) -> list[Future[Any]] | None:
    if not with_upstream:
        return None
    up = runner.submit(double, {"x": 1})
    up.wait(TIMEOUT)
    return [up]


@pytest.mark.parametrize("with_upstream", [False, True], ids=["alone", "after-upstream"])
def test_annotations_around_plain_values_reach_the_body_unwrapped(with_upstream: bool) -> None:
    with ThreadPoolTaskRunner() as runner:
        wait_for = _upstream(runner, with_upstream)
        quoted = runner.submit(identity, {"x": quote([1, 2])}, wait_for=wait_for)
        allowed = runner.submit(identity, {"x": allow_failure(5)}, wait_for=wait_for)
        assert quoted.result(timeout=TIMEOUT) == [1, 2]
        assert allowed.result(timeout=TIMEOUT) == 5


@pytest.mark.parametrize("with_upstream", [False, True], ids=["alone", "after-upstream"])
def test_a_container_without_futures_reaches_the_body_as_the_same_object(
    with_upstream: bool,
) -> None:
    out: list[int] = []
    with ThreadPoolTaskRunner() as runner:
        wait_for = _upstream(runner, with_upstream)
        assert runner.submit(append_one, {"out": out}, wait_for=wait_for).result(TIMEOUT) == 1
    assert out == [1]  # the body appended to the caller's list, not to a copy


@pytest.mark.parametrize("with_upstream", [False, True], ids=["alone", "after-upstream"])
def test_a_future_put_into_a_parameter_after_submit_is_not_an_input(with_upstream: bool) -> None:
    # Only futures present at submit are inputs. One added to a container afterwards is just
    # a value: the body gets it as it is (here: its own, unfinished future).
    holder: list[Future[Any]] = []
    gate = threading.Event()

    def peek(holder: list[Future[Any]]) -> tuple[bool, bool]:
        assert gate.wait(TIMEOUT)
        return isinstance(holder[0], Future), holder[0].done()

    with ThreadPoolTaskRunner() as runner:
        wait_for = _upstream(runner, with_upstream)
        f = runner.submit(peek, {"holder": holder}, wait_for=wait_for)
        holder.append(f)
        gate.set()
        assert f.result(timeout=TIMEOUT) == (True, False)


# -- many coroutine runs at once: made tasks in batches (bounded memory) ------------------------
async def count_tasks(i: int) -> int:
    await asyncio.sleep(0)
    return len(asyncio.all_tasks())


@pytest.mark.anyio
async def test_many_coroutine_runs_become_tasks_in_batches_not_all_at_once() -> None:
    async with ThreadPoolTaskRunner() as runner:
        futures = [runner.submit(count_tasks, {"i": i}) for i in range(5000)]
        cancelled = futures[4999]
        assert cancelled.cancel()  # cancelled while it waits to become a task
        seen = [await f for f in futures[:4999]]
    assert cancelled.cancelled()
    # Each body saw how many tasks existed: never all 5,000 at once, but up to one batch of
    # 100 plus those of the batch before (still finishing) and this test's own.
    assert max(seen) <= 300, max(seen)
    assert min(seen) >= 1


async def wait_on(event: asyncio.Event) -> int:
    await event.wait()
    return 0


async def add_two(a: int, b: int) -> int:
    return a + b


@pytest.mark.anyio
async def test_a_waiting_run_holds_no_list_of_its_inputs_or_of_its_dependents() -> None:
    # What a waiting run holds, every full garbage collection walks: a graph of a million
    # waiting runs must not hold a million more objects than it needs. A run whose inputs are
    # its parameter values keeps no list of them, and a run that one or two others wait for
    # keeps no list of those either. Left: a plain run's future and its context snapshot (its
    # parameters of plain values are not tracked); a run with inputs, its parameters too.
    n = 2000
    release = asyncio.Event()
    async with ThreadPoolTaskRunner() as runner:
        head = runner.submit(wait_on, {"event": release})
        gc.collect()
        before = len(gc.get_objects())
        plain = [runner.submit(add_two, {"a": i, "b": 1}) for i in range(n)]
        after_plain = len(gc.get_objects())
        chain = [head, head]  # each run takes the two before it: two wait for each
        for _ in range(n):
            chain.append(runner.submit(add_two, {"a": chain[-2], "b": chain[-1]}))
        after_chain = len(gc.get_objects())
        release.set()
        with anyio.fail_after(TIMEOUT):
            assert [await f for f in plain] == [i + 1 for i in range(n)]
            assert await chain[-1] == 0
    assert after_plain - before <= 2.2 * n, (after_plain - before) / n
    assert after_chain - after_plain <= 3.2 * n, (after_chain - after_plain) / n


# -- context variables: each run sees the submitter's context as it was at submit ---------------
where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


def set_and_read(value: str) -> tuple[str, str]:
    before = where.get()
    where.set(value)
    return before, where.get()


async def aset_and_read(value: str) -> tuple[str, str]:
    return set_and_read(value)


held: contextvars.ContextVar[object] = contextvars.ContextVar("held")


def held_value() -> object:
    return held.get()


def test_each_run_gets_the_very_object_its_submitter_had_set() -> None:
    # Values equal to those of an earlier submit are still other objects (a fresh list per
    # job, 1 then True then 1.0): each run sees its own, not an equal one.
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        values: list[object] = [[], [], 1, True, 1.0]
        futures = []
        for value in values:
            token = held.set(value)
            futures.append(runner.submit(held_value))
            held.reset(token)
        seen = [f.result(TIMEOUT) for f in futures]
    assert all(a is b for a, b in zip(seen, values, strict=True)), seen
    assert [type(v) for v in seen] == [list, list, int, bool, float]


@pytest.mark.parametrize("body", [set_and_read, aset_and_read], ids=["thread", "coroutine"])
def test_runs_submitted_in_one_context_never_see_each_others_changes(body: Any) -> None:
    # The runs of one map share one snapshot of the context: each still runs in a copy of its
    # own, so what one body sets the next does not see.
    token = where.set("submitter")
    try:
        with ThreadPoolTaskRunner(max_workers=1) as runner:
            first = [runner.submit(body, {"value": f"run {i}"}) for i in range(3)]
            mapped = runner.map(body, {"value": ["map 0", "map 1", "map 2"]})
            where.set("changed after submit")
            later = runner.submit(body, {"value": "later"})
            results = [f.result(TIMEOUT) for f in first] + mapped.result(TIMEOUT)
            assert later.result(TIMEOUT) == ("changed after submit", "later")
        assert results == [("submitter", f"run {i}") for i in range(3)] + [
            ("submitter", f"map {i}") for i in range(3)
        ]
        assert where.get() == "changed after submit"  # no body's change came back here
    finally:
        where.reset(token)
