"""Futures: results, states, callbacks, awaiting, future lists and the module-level waiters."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import fractions
import gc
import logging
import pickle
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from helpers import (
    Stuck,
    TimedLock,
    adouble,
    ahold,
    collect_holding,
    double,
    hold,
    park_and_close,
)

import asyncflow._futures as futures_module
import asyncflow._waiting as waiting_module
from asyncflow import (
    DoneAndNotDone,
    Future,
    FutureList,
    State,
    StateType,
    ThreadPoolTaskRunner,
    as_completed,
    as_completed_async,
    resolve_futures_to_results,
    resolve_futures_to_states,
    unmapped,
    wait,
    wait_async,
)
from asyncflow._futures import MapGroup, add_done_callback_to_all, params_of, plain_runs
from asyncflow._mapping import MapRows, expand
from asyncflow._task import as_task
from asyncflow.exceptions import TaskCancelledError, TaskCrashedError, UpstreamFailedError

TIMEOUT = 5.0
SHORT = 0.01  # a timeout that is meant to pass: the future is held behind a gate


# -- task bodies -------------------------------------------------------------------------------


def fail(message: str = "bad") -> int:
    raise ValueError(message)


def crash() -> None:
    raise SystemExit(3)


def fail_after_gate(gate: threading.Event) -> int:
    if not gate.wait(TIMEOUT):
        raise TimeoutError("the gate never opened")
    raise ValueError("late failure")


class Held:
    """A gate-held sync task on a running runner: ``future`` runs until ``release()``."""

    def __init__(self, runner: ThreadPoolTaskRunner, value: int = 0) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()
        self.future: Future[int] = runner.submit(
            hold, {"started": self.started.set, "gate": self.gate, "value": value}
        )

    def wait_started(self) -> Held:
        assert self.started.wait(TIMEOUT)
        return self

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def runner() -> Iterator[ThreadPoolTaskRunner]:
    with ThreadPoolTaskRunner(max_workers=4) as r:
        yield r


def first_of(x: list[int]) -> int:
    return x[0]


def test_a_future_copies_as_itself_and_does_not_pickle(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(double, {"x": 2})
    assert copy.copy(f) is f
    params = copy.deepcopy({"x": [f]})
    assert params["x"][0] is f  # a copy of parameters keeps its inputs
    assert runner.submit(first_of, params).result(timeout=TIMEOUT) == 4
    with pytest.raises(TypeError, match="a future of task 'double' cannot be pickled"):
        pickle.dumps(f)


# -- result, exception, wait, done --------------------------------------------------------------
def test_result_of_a_completed_run(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(double, {"x": 21})
    assert f.result() == 42
    assert f.result(timeout=TIMEOUT) == 42
    assert f.exception() is None
    assert f.done()


def test_result_of_a_failed_run_raises_or_returns_the_exception(
    runner: ThreadPoolTaskRunner,
) -> None:
    f = runner.submit(fail, {"message": "bad input"})
    with pytest.raises(ValueError, match="bad input"):
        f.result(timeout=TIMEOUT)
    returned = f.result(raise_on_failure=False)
    assert isinstance(returned, ValueError)
    assert str(returned) == "bad input"
    assert f.exception() is returned
    assert f.done()


def test_wait_never_raises_on_timeout(runner: ThreadPoolTaskRunner) -> None:
    held = Held(runner, value=3).wait_started()
    held.future.wait(SHORT)  # returns (None) instead of raising
    held.future.wait(0)
    assert not held.future.done()
    held.release()
    held.future.wait(TIMEOUT)
    assert held.future.done()
    held.future.wait(0)


def test_result_with_timeout_raises_timeout_error_on_an_unfinished_future(
    runner: ThreadPoolTaskRunner,
) -> None:
    held = Held(runner, value=3).wait_started()
    with pytest.raises(TimeoutError, match="did not finish within"):
        held.future.result(timeout=SHORT)
    with pytest.raises(TimeoutError, match="did not finish within"):
        held.future.exception(timeout=SHORT)
    assert not held.future.done()
    held.release()
    assert held.future.result(timeout=TIMEOUT) == 3


# -- states -------------------------------------------------------------------------------------
def test_state_transitions_pending_running_completed(runner: ThreadPoolTaskRunner) -> None:
    held = Held(runner, value=4)
    downstream = runner.submit(double, {"x": held.future})
    held.wait_started()
    assert held.future.state.is_running()
    assert held.future.state.type is StateType.RUNNING
    assert held.future.state.name == "Running"
    assert not held.future.state.is_final()
    # Held behind an unfinished upstream: not started.
    state = downstream.state
    assert state.is_pending()
    assert state.name == "Pending"
    assert not state.is_final()
    with pytest.raises(ValueError, match="no result yet"):
        state.result()
    held.release()
    assert downstream.result(timeout=TIMEOUT) == 8
    for f in (held.future, downstream):
        final = f.state
        assert isinstance(final, State)
        assert final.is_completed()
        assert final.is_final()
        assert final.name == "Completed"
        assert not final.is_failed()
        assert not final.is_pending()
    assert downstream.state.result() == 8
    assert held.future.state.timestamp <= downstream.state.timestamp


@pytest.mark.anyio
async def test_async_body_is_running_while_held() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    async with ThreadPoolTaskRunner() as runner:
        f = runner.submit(ahold, {"started": started, "gate": gate, "value": 2})
        with anyio.fail_after(TIMEOUT):
            await started.wait()
        assert f.state.is_running()
        assert not f.done()
        gate.set()
        with anyio.fail_after(TIMEOUT):
            assert await f == 2
        assert f.state.is_completed()


def test_failed_state(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(fail, {"message": "nope"})
    f.wait(TIMEOUT)
    state = f.state
    assert state.is_failed()
    assert state.is_final()
    assert state.type is StateType.FAILED
    assert state.name == "Failed"
    assert isinstance(state.data, ValueError)
    assert state.message == "ValueError: nope"
    assert state.result(raise_on_failure=False) is state.data
    with pytest.raises(ValueError, match="nope"):
        state.result()


def test_upstream_failed_state(runner: ThreadPoolTaskRunner) -> None:
    up = runner.submit(fail, {"message": "root cause"})
    down = runner.submit(double, {"x": up})
    down.wait(TIMEOUT)
    state = down.state
    assert state.is_failed()
    assert state.name == "UpstreamFailed"
    err = down.exception()
    assert isinstance(err, UpstreamFailedError)
    assert "fail" in str(err)
    assert "double" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert str(err.__cause__) == "root cause"


def test_cancelled_state(runner: ThreadPoolTaskRunner) -> None:
    held = Held(runner, value=1)
    down = runner.submit(double, {"x": held.future})
    held.future.add_done_callback(lambda _f: held.release())
    held.wait_started()
    assert held.future.cancel() is True
    held.future.wait(TIMEOUT)
    down.wait(TIMEOUT)
    for f in (held.future, down):
        assert f.state.is_cancelled()
        assert f.state.name == "Cancelled"
        with pytest.raises(TaskCancelledError):  # (as concurrent.futures raises here)
            f.exception()
    assert held.future.cancel() is False  # already final


def test_crashed_state(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(crash)
    f.wait(TIMEOUT)
    assert f.state.is_crashed()
    assert f.state.is_final()
    err = f.exception()
    assert isinstance(err, TaskCrashedError)
    assert isinstance(err.__cause__, SystemExit)
    assert "crash" in str(err)


def test_task_run_id_is_a_unique_uuid(runner: ThreadPoolTaskRunner) -> None:
    futures = [runner.submit(double, {"x": i}) for i in range(20)]
    ids = [f.task_run_id for f in futures]
    assert all(isinstance(i, uuid.UUID) for i in ids)
    assert len(set(ids)) == 20
    assert [f.task_run_id for f in futures] == ids  # stable
    for f in futures:
        f.wait(TIMEOUT)
    assert [f.task_run_id for f in futures] == ids


# -- done callbacks -----------------------------------------------------------------------------
def test_done_callback_is_called_once_when_the_run_finishes() -> None:
    calls: list[Future[int]] = []
    called = threading.Event()

    def callback(f: Future[int]) -> None:
        calls.append(f)
        called.set()

    with ThreadPoolTaskRunner() as runner:
        held = Held(runner, value=5).wait_started()
        held.future.add_done_callback(callback)
        assert calls == []
        held.release()
        assert called.wait(TIMEOUT)
        assert held.future.result() == 5
    assert calls == [held.future]


def test_done_callback_is_called_at_once_when_already_done(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(double, {"x": 1})
    f.wait(TIMEOUT)
    where: list[int] = []
    f.add_done_callback(lambda _f: where.append(threading.get_ident()))
    assert where == [threading.get_ident()]


def test_a_raising_done_callback_is_logged_and_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncflow")
    others: list[str] = []
    second = threading.Event()

    def broken(_f: Future[int]) -> None:
        raise RuntimeError("callback exploded")

    def good(_f: Future[int]) -> None:
        others.append("good")
        second.set()

    with ThreadPoolTaskRunner() as runner:
        held = Held(runner, value=9).wait_started()
        held.future.add_done_callback(broken)
        held.future.add_done_callback(good)
        held.release()
        assert held.future.result(timeout=TIMEOUT) == 9
        assert second.wait(TIMEOUT)
        # Also when already done: the raising callback runs here, is logged, nothing escapes.
        held.future.add_done_callback(broken)
    assert others == ["good"]
    records = [r for r in caplog.records if "callback exploded" in str(r.exc_info)]
    assert len(records) == 2
    assert "hold" in records[0].getMessage()
    assert str(held.future.task_run_id) in records[0].getMessage()


# -- awaiting -----------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_await_on_the_runners_loop() -> None:
    async with ThreadPoolTaskRunner() as runner:
        with anyio.fail_after(TIMEOUT):
            assert await runner.submit(double, {"x": 2}) == 4
            assert await runner.submit(adouble, {"x": 3}) == 6
            with pytest.raises(ValueError, match="bad"):
                await runner.submit(fail)


def test_await_from_a_different_event_loop_in_another_thread() -> None:
    async def await_both(held: Held, failing: Future[int], gate: threading.Event) -> int:
        waiting = asyncio.ensure_future(_await(held.future))
        await asyncio.sleep(0)  # let it register as a waiter first
        assert not waiting.done()
        held.release()
        gate.set()
        with pytest.raises(ValueError, match="late failure"):
            await asyncio.wait_for(_await(failing), TIMEOUT)
        return await asyncio.wait_for(waiting, TIMEOUT)

    with ThreadPoolTaskRunner() as runner:
        held = Held(runner, value=11).wait_started()
        gate = threading.Event()
        failing = runner.submit(fail_after_gate, {"gate": gate})
        # The runner's loop lives in its own thread; this is a second loop in the test thread.
        assert asyncio.run(await_both(held, failing, gate)) == 11


@pytest.mark.anyio
async def test_await_from_the_test_loop_a_future_of_a_background_runner() -> None:
    with ThreadPoolTaskRunner() as runner:
        held = Held(runner, value=12).wait_started()
        waiting = asyncio.ensure_future(_await(held.future))
        await asyncio.sleep(0)
        held.release()
        with anyio.fail_after(TIMEOUT):
            assert await waiting == 12


async def _await(f: Future[int]) -> int:
    return await f


def test_await_from_trio() -> None:
    async def main(held: Held, failing: Future[int]) -> int:
        results: list[int] = []

        async def waiter() -> None:
            results.append(await held.future)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()  # the waiter is registered
                assert results == []
                held.release()
            with pytest.raises(ValueError, match="bad"):
                await failing
        return results[0]

    with ThreadPoolTaskRunner() as runner:
        held = Held(runner, value=13).wait_started()
        failing = runner.submit(fail)
        assert trio.run(main, held, failing) == 13


# -- FutureList ---------------------------------------------------------------------------------
def test_future_list_result_keeps_order(runner: ThreadPoolTaskRunner) -> None:
    helds = [Held(runner, value=v).wait_started() for v in (1, 2, 3)]
    futures = FutureList(h.future for h in helds)
    for h in reversed(helds):  # finish in reverse order
        h.release()
        h.future.wait(TIMEOUT)
    assert futures.result(timeout=TIMEOUT) == [1, 2, 3]
    assert runner.map(double, {"x": [3, 1, 2]}).result(timeout=TIMEOUT) == [6, 2, 4]


def test_future_list_result_fails_fast(runner: ThreadPoolTaskRunner) -> None:
    held = Held(runner, value=1).wait_started()
    futures = FutureList([held.future, runner.submit(fail, {"message": "first failure"})])
    with pytest.raises(ValueError, match="first failure"):
        futures.result(timeout=TIMEOUT)
    assert not held.future.done()  # it did not wait for the held one
    held.release()
    values = futures.result(timeout=TIMEOUT, raise_on_failure=False)
    assert values[0] == 1
    assert isinstance(values[1], ValueError)


def test_future_list_result_raises_the_first_failure_already_there_in_list_order(
    runner: ThreadPoolTaskRunner,
) -> None:
    held = Held(runner, value=1).wait_started()
    done = runner.submit(double, {"x": 1})
    assert done.result(TIMEOUT) == 2
    failed = runner.submit(fail, {"message": "failed before the wait"})
    failed.wait(TIMEOUT)
    cancelled = runner.submit(double, {"x": held.future})  # waits for the held one
    assert cancelled.cancel()
    with pytest.raises(ValueError, match="failed before the wait"):
        FutureList([done, failed, cancelled, held.future]).result(timeout=TIMEOUT)
    with pytest.raises(TaskCancelledError):
        FutureList([done, cancelled, failed, held.future]).result(timeout=TIMEOUT)
    assert not held.future.done()  # neither waited for the held one
    held.release()
    assert held.future.result(TIMEOUT) == 1


def test_future_list_result_timeout_says_how_many(runner: ThreadPoolTaskRunner) -> None:
    held = Held(runner, value=1).wait_started()
    finished = runner.submit(double, {"x": 1})
    assert finished.result(TIMEOUT) == 2  # so exactly one of the two is unfinished
    futures = FutureList([held.future, finished])
    with pytest.raises(TimeoutError, match="1 of 2 futures did not finish"):
        futures.result(timeout=SHORT)
    held.release()
    assert futures.result(timeout=TIMEOUT) == [1, 2]


def test_future_list_wait(runner: ThreadPoolTaskRunner) -> None:
    held = Held(runner, value=1).wait_started()
    futures = FutureList([held.future, runner.submit(double, {"x": 1})])
    futures.wait(SHORT)  # never raises on timeout
    assert not held.future.done()
    held.release()
    futures.wait(TIMEOUT)
    assert all(f.done() for f in futures)


@pytest.mark.anyio
async def test_await_future_list() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    async with ThreadPoolTaskRunner() as runner:
        with anyio.fail_after(TIMEOUT):
            assert await runner.map(adouble, {"x": [1, 2, 3]}) == [2, 4, 6]
            held = runner.submit(ahold, {"started": started, "gate": gate, "value": 1})
            await started.wait()
            both = FutureList([held, runner.submit(fail, {"message": "fast"})])
            with pytest.raises(ValueError, match="fast"):
                await both
            assert not held.done()
            gate.set()
            assert await FutureList([held, runner.submit(double, {"x": 4})]) == [1, 8]


def held_or_failing(i: int, started: threading.Event, gate: threading.Event) -> int:
    if i == 0:
        started.set()
        assert gate.wait(TIMEOUT)
    elif i == 1:
        raise ValueError("run 1 failed")
    return i


def test_a_wait_on_a_whole_map_watches_the_map_and_leaves_nothing_behind(
    runner: ThreadPoolTaskRunner,
) -> None:
    started, gate = threading.Event(), threading.Event()
    futures = runner.map(
        held_or_failing, {"i": range(4), "started": unmapped(started), "gate": unmapped(gate)}
    )
    group = futures._group
    assert group is not None  # the map's own list: one watch on the map, not one per run
    assert started.wait(TIMEOUT)
    with pytest.raises(ValueError, match="run 1 failed"):
        futures.result(timeout=TIMEOUT)  # fails fast: run 0 is still held
    assert not futures[0].done()
    futures.wait(SHORT)  # ends early: run 0 is held
    assert not futures[0].done()
    assert group._watchers == []  # neither wait left its watcher behind
    gate.set()
    futures.wait(TIMEOUT)
    values = futures.result(timeout=TIMEOUT, raise_on_failure=False)
    assert [values[0], values[2], values[3]] == [0, 2, 3]
    assert isinstance(values[1], ValueError)
    # A list that no longer holds the map's runs alone is waited on run by run.
    futures[1] = runner.submit(double, {"x": 5})
    assert futures._group is None
    assert futures.result(timeout=TIMEOUT) == [0, 10, 2, 3]
    assert FutureList([*futures, futures[0]])._group is None


@pytest.mark.anyio
async def test_await_a_whole_map_fails_fast() -> None:
    started, gate = threading.Event(), threading.Event()
    async with ThreadPoolTaskRunner() as runner:
        with anyio.fail_after(TIMEOUT):
            futures = runner.map(
                held_or_failing,
                {"i": range(4), "started": unmapped(started), "gate": unmapped(gate)},
            )
            assert futures._group is not None
            with pytest.raises(ValueError, match="run 1 failed"):
                await futures
            assert not futures[0].done()
            gate.set()
            assert await runner.map(double, {"x": [1, 2, 3]}) == [2, 4, 6]
            assert await futures[0] == 0


def test_a_map_list_changed_lets_go_of_its_runs_and_copies_without_its_group(
    runner: ThreadPoolTaskRunner,
) -> None:
    futures = runner.map(double, {"x": range(3)})
    assert futures.result(timeout=TIMEOUT) == [0, 2, 4]
    gone = weakref.ref(futures.pop())
    assert futures._group is None  # changed: waited on run by run
    gc.collect()
    assert gone() is None  # nothing else keeps the run it no longer holds
    assert futures.result(timeout=TIMEOUT) == [0, 2]
    empty = runner.map(double, {"x": []})
    assert pickle.loads(pickle.dumps(empty)) == []
    assert copy.deepcopy(empty) == []


def test_a_run_kept_from_a_map_does_not_keep_the_run_that_failed(
    runner: ThreadPoolTaskRunner,
) -> None:
    gate = threading.Event()
    gate.set()
    futures = runner.map(
        held_or_failing, {"i": range(3), "started": unmapped(threading.Event()), "gate": gate}
    )
    futures.wait(TIMEOUT)
    kept = futures[0]
    failed = weakref.ref(futures[1])
    assert isinstance(futures[1].exception(), ValueError)
    del futures
    gc.collect()
    assert failed() is None  # its map's counter, which the kept run holds, let it go
    assert kept.result() == 0


def column(*values: Any) -> MapRows:
    """The rows of a map over ``x``."""
    return expand("double", {"x": list(values)})[0]


def test_plain_runs_are_made_as_the_constructor_makes_them() -> None:
    owner: Any = object()
    ctx = contextvars.copy_context()
    group = MapGroup(2)
    made = plain_runs(owner, as_task(double), column(1, 2), ctx, group)
    expected = Future(owner, as_task(double), {"x": 2}, None, None, ctx, None)
    expected._group = group
    slots = [name for name in Future.__slots__ if name != "__weakref__"]
    for name in slots:
        if name not in ("_id", "_timestamp", "_task", "_params"):
            assert getattr(made[1], name) == getattr(expected, name), name
    # Each holds its index in the map's rows, its dict made when asked for.
    assert made[1]._params == 1
    assert params_of(made[1]) == expected._params == {"x": 2}
    assert params_of(made[1]) is not params_of(made[1])  # (made each time: no dict kept)
    assert made[1]._task.fn is double
    assert type(made[0]._id) is int
    assert made[1]._id == made[0]._id + 1  # a run number of its own
    # What a backend may send them with, without reading each run again.
    assert made.rows.rows() == [{"x": 1}, {"x": 2}]
    assert group.rows is made.rows
    first, second = made[0]._id, made[1]._id
    assert type(first) is int
    assert type(second) is int
    assert made.ids == range(first, second + 1)  # consecutive: a range
    assert made.shareable is False  # (unless the map says every value is immutable)
    assert made[1].task_run_id != made[0].task_run_id


def test_run_ids_are_taken_together() -> None:
    owner: Any = object()
    ids = futures_module.run_ids(3)
    assert len(ids) == 3
    after = Future(owner, as_task(double), {}, None, None, contextvars.copy_context())
    assert after._id == ids[-1] + 1  # (the numbers were taken: the next run has the next one)
    assert futures_module.run_ids(0) == range(0)


def test_the_rows_of_a_map_are_the_dicts_its_children_get() -> None:
    rows, types = expand("pair", {"x": range(3), "y": unmapped([7]), "z": "ab"})
    assert types == {int, list, str}
    assert rows.keys() == ("y", "z", "x")  # (values for every child first)
    assert rows.rows() == [{"y": [7], "z": "ab", "x": i} for i in range(3)]
    assert [rows.row(i) for i in range(3)] == rows.rows()
    assert rows.rows(1, 2) == [{"y": [7], "z": "ab", "x": 1}]
    several, _ = expand("pair", {"x": [1, 2], "y": (3, 4)})
    assert (len(several), several.keys()) == (2, ("x", "y"))
    assert (
        several.rows() == [several.row(0), several.row(1)] == [{"x": 1, "y": 3}, {"x": 2, "y": 4}]
    )
    assert several.rows(1) == [{"x": 2, "y": 4}]
    alone, _ = expand("double", {"x": {"a": 1, "b": 2}})  # (a dict maps over its keys)
    assert alone.rows() == [alone.row(0), alone.row(1)] == [{"x": "a"}, {"x": "b"}]


def test_a_map_group_says_when_none_of_its_runs_ended_and_when_all_completed() -> None:
    owner: Any = object()
    (failed,) = plain_runs(
        owner, as_task(double), column(1), contextvars.copy_context(), MapGroup(1)
    )
    completing = MapGroup(3)
    assert (completing.untouched, completing.all_completed) == (True, False)
    completing.ended(2, None)
    assert (completing.untouched, completing.all_completed) == (False, False)
    completing.ended(1, None)
    assert (completing.untouched, completing.all_completed) == (False, True)
    failing = MapGroup(2)
    failing.ended(1, failed)
    failing.ended(1, None)
    assert (failing.untouched, failing.all_completed) == (False, False)


# -- wait / as_completed ------------------------------------------------------------------------
def test_wait_returns_done_and_not_done(runner: ThreadPoolTaskRunner) -> None:
    held = Held(runner, value=1).wait_started()
    quick = runner.submit(double, {"x": 1})
    quick.wait(TIMEOUT)
    result = wait([held.future, quick, quick], timeout=SHORT)
    assert isinstance(result, DoneAndNotDone)
    assert result.done == {quick}
    assert result.not_done == {held.future}
    held.release()
    done, not_done = wait([held.future, quick])
    assert done == {held.future, quick}
    assert not_done == set()


@pytest.mark.anyio
async def test_wait_async_returns_done_and_not_done() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    async with ThreadPoolTaskRunner() as runner:
        held = runner.submit(ahold, {"started": started, "gate": gate, "value": 1})
        quick = runner.submit(double, {"x": 1})
        with anyio.fail_after(TIMEOUT):
            await quick
            await started.wait()
            done, not_done = await wait_async([held, quick], timeout=SHORT)
            assert done == {quick}
            assert not_done == {held}
            gate.set()
            done, not_done = await wait_async([held, quick, held])
        assert done == {held, quick}
        assert not_done == set()


def test_as_completed_deduplicates_and_yields_finished_first(runner: ThreadPoolTaskRunner) -> None:
    held = Held(runner, value=1).wait_started()
    quick = runner.submit(double, {"x": 1})
    quick.wait(TIMEOUT)
    it = as_completed([held.future, quick, held.future, quick])
    assert next(it) is quick
    held.release()
    assert next(it) is held.future
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_timeout_says_how_many_are_unfinished(runner: ThreadPoolTaskRunner) -> None:
    helds = [Held(runner, value=v).wait_started() for v in (1, 2)]
    quick = runner.submit(double, {"x": 1})
    quick.wait(TIMEOUT)
    seen: list[Future[Any]] = []
    with pytest.raises(TimeoutError, match="2 of 3 futures unfinished"):
        seen.extend(as_completed([h.future for h in helds] + [quick], timeout=SHORT))
    assert seen == [quick]
    for h in helds:
        h.release()


@pytest.mark.anyio
async def test_as_completed_async() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    async with ThreadPoolTaskRunner() as runner:
        held = runner.submit(ahold, {"started": started, "gate": gate, "value": 1})
        quick = runner.submit(double, {"x": 1})
        with anyio.fail_after(TIMEOUT):
            await quick
            await started.wait()
            seen: list[Future[Any]] = []
            with pytest.raises(TimeoutError, match="1 of 2 futures unfinished"):
                await _collect(as_completed_async([held, quick, held], timeout=SHORT), seen)
            assert seen == [quick]
            order = []
            it = as_completed_async([held, quick])
            order.append(await it.__anext__())
            gate.set()
            order.append(await it.__anext__())
            with pytest.raises(StopAsyncIteration):
                await it.__anext__()
        assert order == [quick, held]


async def _collect(it: AsyncIterator[Future[Any]], into: list[Future[Any]]) -> None:
    async for f in it:
        into.append(f)  # noqa: PERF401 - appending as they come is the point: a timeout may follow


# -- negative timeouts --------------------------------------------------------------------------
_NEGATIVE_TIMEOUT_CALLS: dict[str, Callable[[Future[int]], object]] = {
    "Future.result": lambda f: f.result(timeout=-1),
    "Future.exception": lambda f: f.exception(timeout=-1),
    "Future.wait": lambda f: f.wait(timeout=-1),
    "wait": lambda f: wait([f], timeout=-1),
    "as_completed": lambda f: as_completed([f], timeout=-1),
    "FutureList.result": lambda f: FutureList([f]).result(timeout=-1),
    "FutureList.wait": lambda f: FutureList([f]).wait(timeout=-1),
}


@pytest.mark.parametrize("finished", [False, True], ids=["unfinished", "finished"])
@pytest.mark.parametrize("call", list(_NEGATIVE_TIMEOUT_CALLS))
def test_negative_timeouts_raise_value_error_everywhere(
    runner: ThreadPoolTaskRunner, call: str, finished: bool
) -> None:
    held = Held(runner, value=1).wait_started()
    if finished:
        held.release()
        held.future.wait(TIMEOUT)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        _NEGATIVE_TIMEOUT_CALLS[call](held.future)
    held.release()
    assert held.future.result(timeout=TIMEOUT) == 1


@pytest.mark.anyio
async def test_negative_timeouts_raise_value_error_in_async_forms() -> None:
    async with ThreadPoolTaskRunner() as runner:
        f = runner.submit(adouble, {"x": 1})
        with pytest.raises(ValueError, match="timeout"):
            await wait_async([f], timeout=-0.5)
        with pytest.raises(ValueError, match="timeout"):
            as_completed_async([f], timeout=-0.5)
        with anyio.fail_after(TIMEOUT):
            assert await f == 2


# -- resolving futures in containers ------------------------------------------------------------
@dataclasses.dataclass
class Box:
    value: Any
    items: list[Any]


@dataclasses.dataclass(frozen=True)
class FrozenBox:
    value: Any


def test_resolve_futures_to_results_in_nested_containers(runner: ThreadPoolTaskRunner) -> None:
    a = runner.submit(double, {"x": 1})
    b = runner.submit(adouble, {"x": 2})
    c = runner.submit(double, {"x": 3})
    expr = {
        "list": [a, [b, "plain"]],
        "tuple": (a, (c,)),
        a: b,
        "set": {a, c},
        "frozenset": frozenset({b}),
        "box": Box(a, [b, {"deep": c}]),
        "frozen": FrozenBox(c),
        "plain": 7,
    }
    resolved = resolve_futures_to_results(expr)
    assert resolved == {
        "list": [2, [4, "plain"]],
        "tuple": (2, (6,)),
        2: 4,
        "set": {2, 6},
        "frozenset": frozenset({4}),
        "box": Box(2, [4, {"deep": 6}]),
        "frozen": FrozenBox(6),
        "plain": 7,
    }
    assert expr["box"] == Box(a, [b, {"deep": c}])  # the input is left untouched


def test_resolve_futures_to_results_raises_a_failure(runner: ThreadPoolTaskRunner) -> None:
    failing = runner.submit(fail, {"message": "inside"})
    with pytest.raises(ValueError, match="inside"):
        resolve_futures_to_results({"x": [failing]})


def test_resolve_futures_to_states_in_nested_containers(runner: ThreadPoolTaskRunner) -> None:
    ok = runner.submit(double, {"x": 1})
    bad = runner.submit(fail)
    resolved = resolve_futures_to_states({"ok": [ok], "bad": (bad,), "box": Box(ok, [bad])})
    assert isinstance(resolved["ok"][0], State)
    assert resolved["ok"][0].is_completed()
    assert resolved["ok"][0].data == 2
    assert resolved["bad"][0].is_failed()
    assert isinstance(resolved["bad"][0].data, ValueError)
    assert resolved["box"].value.is_completed()
    assert resolved["box"].items[0].is_failed()


def test_cancel_from_a_script_takes_effect_before_it_returns(stuck: Stuck) -> None:
    # As with concurrent.futures: a queued run is Cancelled when cancel() returns.
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        busy = runner.submit(stuck.body)
        assert stuck.started.wait(TIMEOUT)
        queued = runner.submit(double, {"x": 1})
        assert busy.running()
        assert not queued.running()
        assert queued.cancel() is True
        assert queued.done()
        assert queued.cancelled()
        assert queued.state.is_cancelled()
        assert queued.cancel() is False  # already final
        stuck.release()
        assert busy.result(timeout=TIMEOUT) == "late"
        assert not busy.cancelled()
        assert not busy.running()


def test_whole_list_waits_that_stop_early_leave_no_callback_behind(
    runner: ThreadPoolTaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each failing run is let go by the wait itself, as it puts its callback on it: the wait
    # is under way when the run fails, stops on that failure, and must tidy up.
    gates: dict[int, threading.Event] = {}
    register = add_done_callback_to_all

    def open_gates_once_waited_on(
        futures: list[Future[Any]], fn: Callable[[Future[Any]], object]
    ) -> None:
        register(futures, fn)
        for f in futures:
            gate = gates.pop(id(f), None)
            if gate is not None:
                gate.set()

    monkeypatch.setattr(waiting_module, "add_done_callback_to_all", open_gates_once_waited_on)

    def failing() -> Future[int]:
        gate = threading.Event()
        bad = runner.submit(fail_after_gate, {"gate": gate})
        gates[id(bad)] = gate
        return bad

    held = Held(runner, value=1).wait_started()
    for _ in range(3):
        with pytest.raises(ValueError, match="late failure"):
            FutureList([held.future, failing()]).result(timeout=TIMEOUT)
    FutureList([held.future]).wait(0)  # stops on its timeout
    assert held.future._callbacks is None  # none of the waits left its callback

    async def waits() -> None:
        for _ in range(3):
            with pytest.raises(ValueError, match="late failure"):
                await FutureList([held.future, failing()])

    asyncio.run(waits())
    assert held.future._callbacks is None
    held.release()
    assert held.future.result(TIMEOUT) == 1


def test_a_callback_put_on_many_futures_at_once_runs_once_for_each(
    runner: ThreadPoolTaskRunner,
) -> None:
    # More futures than one locked slice, final and not final mixed.
    final = runner.map(double, {"x": range(2500)})
    assert final.result(timeout=TIMEOUT) == [2 * i for i in range(2500)]
    held = Held(runner, value=1).wait_started()
    seen: list[Future[Any]] = []
    add_done_callback_to_all([*final[:1500], held.future, *final[1500:]], seen.append)
    assert seen == list(final)  # the final ones at once, in order; the held one not yet
    last = threading.Event()
    held.future.add_done_callback(lambda _: last.set())  # runs after seen.append
    held.release()
    assert last.wait(TIMEOUT)
    assert seen == [*final, held.future]


def _nothing() -> None:
    pass


def _abandon_an_await(fut: Future[Any], gate: threading.Event, cleaned: threading.Event) -> None:
    """An ``await fut`` left pending in a loop that is then closed; ``fut`` then ends (gate),
    and the await is a reference cycle only: its task, its coroutine and its waiter."""

    async def waits(entered: asyncio.Event) -> None:
        try:
            entered.set()
            await fut  # (in the same step: its waiter is registered by then)
        finally:
            cleaned.set()

    park_and_close(waits)
    assert fut._waiters
    gate.set()
    assert fut.result(timeout=10) == 0


def _abandon_as_completed(
    runner: ThreadPoolTaskRunner,
    fut: Future[Any],
    cleaned: threading.Event,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ``as_completed`` over ``quick`` and ``fut`` that yielded ``quick`` and was then left
    in a reference cycle, its callback still on ``fut`` (pending)."""
    quick_gate = threading.Event()
    quick = runner.submit(hold, {"started": _nothing, "gate": quick_gate})
    register = futures_module.add_done_callback_to_all

    def then_open(futures: Any, fn: Any) -> None:
        register(futures, fn)
        quick_gate.set()  # quick ends once the wait watches both

    monkeypatch.setattr(waiting_module, "add_done_callback_to_all", then_open)

    def completions() -> Iterator[Future[Any]]:
        try:
            yield from as_completed([quick, fut])
        finally:
            cleaned.set()

    cycle: list[Any] = [completions()]
    cycle.append(cycle)
    assert next(cycle[0]) is quick
    assert fut._callbacks
    monkeypatch.undo()


@pytest.mark.parametrize("wait", ["await", "as_completed"])
def test_an_abandoned_wait_collected_while_the_futures_lock_is_held_does_not_hang(
    monkeypatch: pytest.MonkeyPatch, wait: str
) -> None:
    # A wait left pending in a reference cycle is closed by the garbage collector, which can
    # run inside any locked section of the futures (an allocation there). The wait's cleanup
    # takes the futures' lock: it must not hang the thread that holds it already.
    cleaned = threading.Event()
    gate = threading.Event()
    started = threading.Event()
    gc.disable()
    try:
        with ThreadPoolTaskRunner(max_workers=2) as runner:
            fut = runner.submit(hold, {"started": started.set, "gate": gate})
            assert started.wait(10)
            if wait == "await":
                _abandon_an_await(fut, gate, cleaned)
            else:
                _abandon_as_completed(runner, fut, cleaned, monkeypatch)
            assert not cleaned.is_set()
            lock = collect_holding(futures_module, "_lock")
            monkeypatch.undo()
            gate.set()
    finally:
        gc.enable()
    assert cleaned.is_set()
    assert lock.stuck == 0


def test_an_abandoned_await_of_a_limited_body_collected_under_the_futures_lock_does_not_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A sync body of a run with limits awaits on a loop of its own (lending its slot and its
    # limits), and abandons the await. A collection on the body's thread, while it holds the
    # futures' lock, closes the await: taking the limits back must not wait for the loop,
    # which may need that lock first (here: an add_done_callback queued ahead of the answer;
    # in life, any run ending).
    gate_f, gate_g, started = threading.Event(), threading.Event(), threading.Event()
    abandoned, f_ended, cleaned = threading.Event(), threading.Event(), threading.Event()
    shared: list[Any] = []
    lock = TimedLock(futures_module._lock)

    def body() -> int:
        f, g, sched = shared

        async def waits(entered: asyncio.Event) -> None:
            try:
                entered.set()
                await f
            finally:
                cleaned.set()

        park_and_close(waits)
        abandoned.set()
        assert f_ended.wait(10)  # f's end let go of the await: a reference cycle only now
        with lock:
            sched.post(g.add_done_callback, _ignore)
            gc.collect()
        return 1

    gc.disable()
    try:
        with ThreadPoolTaskRunner(max_workers=3, max_concurrency=10) as runner:
            f = runner.submit(hold, {"started": started.set, "gate": gate_f})
            g = runner.submit(hold, {"started": _nothing, "gate": gate_g})
            assert started.wait(10)
            shared[:] = [f, g, runner._scheduler]
            monkeypatch.setattr(futures_module, "_lock", lock)
            b = runner.submit(body)
            assert abandoned.wait(10)
            gate_f.set()
            assert f.result(timeout=10) == 0
            f_ended.set()
            assert b.result(timeout=20) == 1
            monkeypatch.undo()
            gate_g.set()
            assert g.result(timeout=10) == 0
    finally:
        gc.enable()
    assert cleaned.is_set()
    assert lock.stuck == 0


def _ignore(_: object) -> None:
    pass


def test_a_timeout_of_any_real_number_or_infinity_is_waited(runner: ThreadPoolTaskRunner) -> None:
    # A Fraction or a numpy-like float is as many seconds; infinity is no limit.
    gate, started = threading.Event(), threading.Event()
    fut = runner.submit(hold, {"started": started.set, "gate": gate, "value": 7})
    assert started.wait(10)
    with pytest.raises(TimeoutError):
        fut.exception(timeout=fractions.Fraction(1, 100))  # type: ignore[arg-type]
    fut.wait(timeout=fractions.Fraction(1, 100))  # type: ignore[arg-type]  # (at its timeout)
    assert not fut.done()

    def open_once_waited_for() -> None:
        while fut._event is None:  # (made by the blocking wait below, before it waits)
            pass
        gate.set()

    opener = threading.Thread(target=open_once_waited_for)
    opener.start()
    assert fut.result(timeout=float("inf")) == 7  # (a wait with no limit, not an error)
    assert fut.result(timeout=10**400) == 7
    opener.join()
