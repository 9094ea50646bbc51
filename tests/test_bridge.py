"""The sync/async bridge: blocking calls on the loop thread, blocked workers, many waiters."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any
from unittest import mock

import anyio
import pytest
from helpers import adouble, ahold, double, hold, noop

import asyncflow._futures
from asyncflow import (
    Future,
    FutureList,
    Task,
    ThreadPoolTaskRunner,
    allow_failure,
    as_completed,
    as_completed_async,
    flow,
    quote,
    resolve_futures_to_results,
    task,
    task_input_hash,
    wait,
    wait_async,
)
from asyncflow._context import current_future, current_runner
from asyncflow._task import as_task
from asyncflow.exceptions import TaskCancelledError, UpstreamFailedError

TIMEOUT = 5.0


# -- task bodies -------------------------------------------------------------------------------


def fail() -> int:
    raise ValueError("upstream broke")


def blocking_calls(f: Future[Any]) -> dict[str, Callable[[], object]]:
    """Every blocking call on ``f`` that must refuse to run on the scheduler's loop thread.

    The timeouts only bound the damage if the refusal ever broke: the calls must not block.
    """
    return {
        "result": f.result,
        "result(timeout)": lambda: f.result(timeout=TIMEOUT),
        "exception": lambda: f.exception(timeout=TIMEOUT),
        "wait": lambda: f.wait(TIMEOUT),
        "resolve_futures_to_results": lambda: resolve_futures_to_results([f]),
    }


def many_blocking_calls(f: Future[Any]) -> dict[str, Callable[[], object]]:
    """Blocking calls on several futures: they point to the async forms."""
    return {
        "wait()": lambda: wait([f], timeout=TIMEOUT),
        "as_completed()": lambda: next(as_completed([f], timeout=TIMEOUT)),
        "FutureList.result": lambda: FutureList([f]).result(timeout=TIMEOUT),
        "FutureList.wait": lambda: FutureList([f]).wait(TIMEOUT),
    }


def _error_of(call: Callable[[], object]) -> str:
    try:
        call()
    except RuntimeError as exc:
        return str(exc)
    return "no error"


# -- row 19: blocking on the loop thread ---------------------------------------------------------
@pytest.mark.anyio
async def test_blocking_on_an_unfinished_future_from_the_loop_thread_raises_at_once() -> None:
    started, gate = asyncio.Event(), asyncio.Event()
    async with ThreadPoolTaskRunner() as runner:
        f = runner.submit(ahold, {"started": started, "gate": gate, "value": 3})
        with anyio.fail_after(TIMEOUT):
            await started.wait()
        for name, call in blocking_calls(f).items():
            with pytest.raises(RuntimeError, match="await") as info:
                call()
            assert "ahold" in str(info.value), name
        for call in many_blocking_calls(f).values():
            with pytest.raises(RuntimeError, match="wait_async"):
                call()
        assert not f.done()
        gate.set()
        with anyio.fail_after(TIMEOUT):
            assert await f == 3
        # Finished futures never block: the same calls just work on the loop thread.
        assert f.result() == 3
        assert f.exception() is None
        assert wait([f]).done == {f}
        assert list(as_completed([f])) == [f]


def test_blocking_on_an_unfinished_future_in_a_coroutine_body_raises_at_once() -> None:
    gate = threading.Event()
    started = threading.Event()

    held_box: list[Future[int]] = []

    async def blocks_on_held() -> list[str]:
        # The held future reaches the body through a closure: as a parameter, it would be an
        # input and the body would not start before it finished.
        f = held_box[0]
        calls = [*blocking_calls(f).values(), *many_blocking_calls(f).values()]
        return [_error_of(call) for call in calls]

    with ThreadPoolTaskRunner() as runner:
        held = runner.submit(hold, {"started": started.set, "gate": gate, "value": 1})
        held_box.append(held)
        assert started.wait(TIMEOUT)
        messages = runner.submit(blocks_on_held).result(timeout=TIMEOUT)
        assert not held.done()
        gate.set()
        assert held.result(timeout=TIMEOUT) == 1
    assert len(messages) == 9
    assert all("own event loop thread" in m for m in messages)
    assert all("await" in m or "wait_async" in m for m in messages)


def test_blocking_on_another_runner_s_run_that_needs_this_one_raises_at_once() -> None:
    # Blocking would stop this runner's loop, and with it the run the other one needs.
    gate = asyncio.Event()
    box: list[Future[int]] = []

    async def blocks_on_other() -> list[str]:
        f = box[0]
        calls = [*blocking_calls(f).values(), *many_blocking_calls(f).values()]
        messages = [_error_of(call) for call in calls]
        gate.set()  # (this loop goes on: the run the other one needs ends)
        return messages

    with ThreadPoolTaskRunner() as other, ThreadPoolTaskRunner() as runner:
        mine = runner.submit(ahold, {"started": asyncio.Event(), "gate": gate, "value": 2})
        theirs = other.submit(double, {"x": mine})  # needs this runner's run
        box.append(theirs)
        messages = runner.submit(blocks_on_other).result(timeout=TIMEOUT)
        assert theirs.result(timeout=TIMEOUT) == 4
    assert len(messages) == 9
    assert all("event loop of runner 'threadpool'" in m for m in messages), messages
    assert all("run of task 'ahold'" in m for m in messages)
    assert all("await" in m or "wait_async" in m for m in messages)


@pytest.mark.anyio
async def test_an_async_with_block_may_block_on_another_runner_s_run_unless_it_needs_one_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = asyncio.Event()
    with ThreadPoolTaskRunner() as other:
        async with ThreadPoolTaskRunner() as runner:
            mine = runner.submit(ahold, {"started": asyncio.Event(), "gate": gate, "value": 1})
            needs_mine = other.submit(double, {"x": mine})
            with pytest.raises(RuntimeError, match="run of task 'ahold'"):
                needs_mine.result(TIMEOUT)  # it would stop ``mine`` from ever running
            gate.set()
            assert await needs_mine == 2
            # A run that needs nothing here: blocking on it only holds this loop up a while.
            blocked = _Blocked(monkeypatch)
            go = threading.Event()
            alone = other.submit(hold, {"started": noop_started, "gate": go, "value": 5})
            opener = blocked.open_once_blocked(go)
            assert alone.result(TIMEOUT) == 5  # (unfinished when called: it blocks, then ends)
            opener.join(TIMEOUT)


@flow
def inner_flow(n: int) -> Any:
    return [task(double).submit(i) for i in range(n)]  # (returned futures: waited for)


class _Blocked:
    """Makes futures say when a thread blocks on one (their ``threading.Event`` waits)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.waiting = threading.Event()
        waiting = self.waiting

        class Event(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                waiting.set()
                return super().wait(timeout)

        own = types.SimpleNamespace(**vars(threading))  # (the futures' module only)
        own.Event = Event
        monkeypatch.setattr(asyncflow._futures, "threading", own)

    def open_once_blocked(self, gate: threading.Event) -> threading.Thread:
        """A started thread that opens ``gate`` once a thread blocks on a future (join it)."""

        def opener() -> None:
            if self.waiting.wait(TIMEOUT):
                gate.set()

        thread = threading.Thread(target=opener)
        thread.start()
        return thread


@pytest.mark.anyio
async def test_an_async_flow_may_block_on_a_long_lived_runner_s_run_that_needs_nothing_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocked = _Blocked(monkeypatch)

    @flow
    def uses(shared: ThreadPoolTaskRunner) -> int:
        go = threading.Event()
        f = shared.submit(hold, {"started": noop_started, "gate": go, "value": 7})
        opener = blocked.open_once_blocked(go)
        try:
            value: int = f.result(TIMEOUT)  # unfinished: it blocks this loop a while, and ends
        finally:
            opener.join(TIMEOUT)
        return value

    @flow
    async def outer(shared: ThreadPoolTaskRunner) -> int:
        return uses(shared)

    with ThreadPoolTaskRunner() as shared:
        with anyio.fail_after(TIMEOUT):
            assert await outer(shared) == 7


def noop_started() -> None:
    pass


@pytest.mark.anyio
async def test_a_sync_flow_called_from_an_async_flow_may_wait_for_its_own_runs() -> None:
    @flow
    async def outer() -> Any:
        return inner_flow(3)

    with anyio.fail_after(TIMEOUT):
        assert await outer() == [0, 2, 4]


class _NoBackend(ThreadPoolTaskRunner):
    def _make_backend(self, scheduler: Any) -> Any:
        raise OSError("no backend here")


@pytest.mark.anyio
async def test_a_session_that_failed_to_start_leaves_its_loop_free_to_block() -> None:
    with pytest.raises(OSError, match="no backend here"):
        async with _NoBackend():
            pytest.fail("started")
    with ThreadPoolTaskRunner() as other:
        started, gate = threading.Event(), threading.Event()
        held = other.submit(hold, {"started": started.set, "gate": gate, "value": 3})

        def open_once_started() -> None:
            if started.wait(TIMEOUT):
                gate.set()

        opener = threading.Thread(target=open_once_started)
        opener.start()
        assert held.result(TIMEOUT) == 3  # (blocks this loop: it runs no runner)
        opener.join(TIMEOUT)


@pytest.mark.anyio
async def test_result_from_another_thread_works_while_the_loop_awaits() -> None:
    loop = asyncio.get_running_loop()
    started, gate, got_it = asyncio.Event(), asyncio.Event(), asyncio.Event()
    results: list[int] = []

    def blocking_reader(f: Future[int]) -> None:
        results.append(f.result(timeout=TIMEOUT))
        loop.call_soon_threadsafe(got_it.set)

    async with ThreadPoolTaskRunner() as runner:
        f = runner.submit(ahold, {"started": started, "gate": gate, "value": 8})
        reader = threading.Thread(target=blocking_reader, args=(f,))
        reader.start()
        with anyio.fail_after(TIMEOUT):
            await started.wait()
            gate.set()
            await got_it.wait()
        reader.join(TIMEOUT)
    assert results == [8]


# -- row 20: a blocked worker gives its slot back ------------------------------------------------
@task
def leaf(x: int) -> int:
    return x + 1


@task
def blocking_parent(x: int) -> int:
    return leaf.submit(x).result(timeout=TIMEOUT) * 10


@task
def blocking_parent_many(x: int) -> list[int]:
    children = leaf.map([x, x + 1, x + 2])
    done, not_done = wait(children, timeout=TIMEOUT)
    assert done == set(children)
    assert not not_done
    firsts = [f.result() for f in as_completed(children, timeout=TIMEOUT)]
    assert sorted(firsts) == [x + 1, x + 2, x + 3]
    return children.result(timeout=TIMEOUT)


def test_one_slot_parent_blocking_on_its_child_completes() -> None:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(blocking_parent, {"x": 1}).result(timeout=TIMEOUT) == 20
        assert runner.submit(blocking_parent_many, {"x": 1}).result(timeout=TIMEOUT) == [2, 3, 4]


@task
def parent_running_a_loop(x: int) -> list[int]:
    # A sync body running a loop of its own that awaits its children: its thread waits there
    # as in .result(), and gives its slot back meanwhile.
    async def children() -> list[int]:
        one = await leaf.submit(x)
        both = await asyncio.gather(leaf.submit(one), leaf.submit(one + 1))
        return [one, *both]

    return asyncio.run(children())


def test_one_slot_parent_awaiting_its_children_in_a_loop_of_its_own_completes() -> None:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        fut = runner.submit(parent_running_a_loop, {"x": 1})
        assert fut.result(timeout=TIMEOUT) == [2, 3, 4]
        assert runner.submit(leaf, {"x": 5}).result(timeout=TIMEOUT) == 6  # the slot is back


together = threading.Barrier(2, timeout=1)


@task
def alone_or_together(name: str) -> str:
    """Says whether another body ran at the same time (a barrier of two passes only then)."""
    try:
        together.wait()
    except threading.BrokenBarrierError:
        return "alone"
    finally:
        together.reset()
    return "together"


@task
def parent_awaiting_and_blocking_in_its_loop() -> list[str]:
    # An await under way and a .result() in the same loop: the slot is lent once.
    async def children() -> list[str]:
        first = asyncio.ensure_future(alone_or_together.submit("x"))
        await asyncio.sleep(0)  # (its await is under way)
        second = alone_or_together.submit("y").result(timeout=TIMEOUT)
        return [await first, second]

    return asyncio.run(children())


def test_a_body_s_loop_lends_its_one_slot_once_to_waits_under_way_together() -> None:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        ran = runner.submit(parent_awaiting_and_blocking_in_its_loop).result(timeout=TIMEOUT)
    assert ran == ["alone", "alone"]  # (never two children at once)


@task
def held_child(gate: threading.Event) -> int:
    gate.wait(TIMEOUT)
    return 1


@task
def parent_leaving_an_await_pending(children: list[Future[int]], gate: threading.Event) -> str:
    loop = asyncio.new_event_loop()

    async def wait_a_little() -> str:
        child = held_child.submit(gate)
        children.append(child)
        done, _ = await asyncio.wait({asyncio.ensure_future(child)}, timeout=0.05)
        return "done" if done else "timed out"

    try:
        return loop.run_until_complete(wait_a_little())  # (the await is left pending)
    finally:
        loop.close()


def leave_an_await_pending(runner: ThreadPoolTaskRunner) -> None:
    """A body of ``runner`` leaves an await pending in its loop, which it closes, and returns."""
    children: list[Future[int]] = []
    gate = threading.Event()
    parent = runner.submit(parent_leaving_an_await_pending, {"children": children, "gate": gate})
    assert parent.result(timeout=TIMEOUT) == "timed out"
    gate.set()
    assert children[0].result(timeout=TIMEOUT) == 1


def test_an_await_a_body_left_pending_in_its_loop_does_not_keep_its_slot_lent() -> None:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        leave_an_await_pending(runner)
        # One slot, taken back when the parent returned: two bodies never run together, and
        # the runner closes (it waited forever for a slot lent for good).
        pair = runner.map(alone_or_together, {"name": ["a", "b"]})
        assert pair.result(timeout=TIMEOUT) == ["alone", "alone"]
    gc.collect()  # (that await, finalized: it gives back nothing now)


@task
def parent_awaiting_while_collecting() -> int:
    async def main() -> int:
        child = asyncio.ensure_future(leaf.submit(1))
        await asyncio.sleep(0)  # (its await is under way: the slot is lent)
        gc.collect()  # (the collector may finalize another body's pending await here)
        return await child

    return asyncio.run(main())


def test_an_await_left_pending_and_collected_on_another_thread_counts_for_its_own() -> None:
    # The await a body of the first runner left pending is finalized by the collector on a
    # worker thread of the second, in the middle of an await of its own there: what it gives
    # back is the first thread's (nothing, its body has ended), not the second's.
    gc.disable()  # (only the collection in the body)
    try:
        with (
            ThreadPoolTaskRunner(max_workers=1) as first,
            ThreadPoolTaskRunner(max_workers=1) as second,
        ):
            leave_an_await_pending(first)
            assert second.submit(parent_awaiting_while_collecting).result(TIMEOUT) == 2
            for runner in (first, second):  # (each closes: none waits for a slot lent for good)
                pair = runner.map(alone_or_together, {"name": ["a", "b"]})
                assert pair.result(timeout=TIMEOUT) == ["alone", "alone"]
    finally:
        gc.enable()


@task
async def inner_leaf(x: int) -> int:
    return x + 1


@task
async def inner_parent(x: int, how: str) -> int:
    if how == "one":
        return await inner_leaf.submit(x)
    return sum(await inner_leaf.map(x=[x, x]))


@task
def body_running_a_runner(how: str) -> int:
    # The inner runner's async bodies run on this worker thread, in this body's loop.
    async def main() -> int:
        async with ThreadPoolTaskRunner(max_workers=1, max_concurrency=2) as inner:
            fut = inner.submit(inner_parent, {"x": 1, "how": how})
        result: int = fut.result()
        return result

    return asyncio.run(main())


@pytest.mark.parametrize("how", ["one", "list"])
def test_a_runner_with_limits_in_a_body_s_loop_lends_them_without_blocking_it(how: str) -> None:
    with ThreadPoolTaskRunner(max_workers=2) as outer:
        fut = outer.submit(body_running_a_runner, {"how": how})
        assert fut.result(timeout=TIMEOUT) == (2 if how == "one" else 4)


async def await_list(x: int) -> list[int]:
    return await leaf.map(x=[x, x + 1])


async def by_wait_async(x: int) -> list[int]:
    children = leaf.map(x=[x, x + 1])
    await wait_async(children)
    return children.result()


async def by_as_completed_async(x: int) -> list[int]:
    return sorted([f.result() async for f in as_completed_async(leaf.map(x=[x, x + 1]))])


@task
def parent_waiting_in_its_loop(how: str) -> list[int]:
    waits = {"list": await_list, "wait": by_wait_async, "completed": by_as_completed_async}
    return asyncio.run(waits[how](1))


@pytest.mark.parametrize("how", ["list", "wait", "completed"])
def test_one_slot_parent_waiting_for_a_list_in_a_loop_of_its_own_completes(how: str) -> None:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        fut = runner.submit(parent_waiting_in_its_loop, {"how": how})
        assert fut.result(timeout=TIMEOUT) == [2, 3]


@task
def outer_child() -> int:
    return 1


@task
async def held_inner_child(gate: asyncio.Event) -> int:
    await gate.wait()
    return 10


@task
async def inner_parent_waiting(gate: asyncio.Event, waiting: asyncio.Event) -> int:
    waiting.set()
    return await held_inner_child.submit(gate)


@task
def body_with_two_runs_waiting(order: str) -> tuple[int, bool]:
    """Waits for a run of its own runner and, in its loop, a run of an inner runner waits
    too, on the same thread: each run's limits are lent and taken back by its own waits."""
    run = current_future.get()
    assert run is not None

    async def main() -> tuple[int, bool]:
        gate, waiting = asyncio.Event(), asyncio.Event()
        async with ThreadPoolTaskRunner(max_workers=1) as inner:
            if order == "inner-first":
                parent = inner.submit(inner_parent_waiting, {"gate": gate, "waiting": waiting})
                await waiting.wait()  # (the inner run's await is under way)
                got = await outer_child.submit()  # needs this body's max_concurrency lent
                lent_after = run._policy.lent
            else:
                mine = asyncio.ensure_future(outer_child.submit())  # (lends first)
                await asyncio.sleep(0)
                parent = inner.submit(inner_parent_waiting, {"gate": gate, "waiting": waiting})
                await waiting.wait()
                got = await mine  # ends first: this body's limits come back now
                lent_after = run._policy.lent
            gate.set()
            return got + await parent, lent_after

    return asyncio.run(main())


@pytest.mark.parametrize("order", ["inner-first", "own-first"])
def test_a_body_s_limits_are_lent_by_its_own_waits_beside_an_inner_runner_s(order: str) -> None:
    with ThreadPoolTaskRunner(max_workers=2, max_concurrency=1) as outer:
        fut = outer.submit(body_with_two_runs_waiting, {"order": order})
        assert fut.result(timeout=TIMEOUT) == (11, False)  # (its limits back once it waited)


def test_a_wait_that_ends_after_its_runner_was_left_does_not_hang_its_body() -> None:
    # An abandoned body (its runner left by Ctrl-C) blocked under a limit on another runner's
    # run: once that run ends, the body goes on, though its runner's loop is closed.
    gate, waiting, done = threading.Event(), threading.Event(), threading.Event()

    @task
    def held() -> int:
        gate.wait(TIMEOUT)
        return 1

    @task
    def waiter(other: Future[int]) -> int:
        waiting.set()
        try:
            return other.result()
        finally:
            done.set()

    with ThreadPoolTaskRunner(max_workers=1) as other_runner:
        other = other_runner.submit(held)
        runner = ThreadPoolTaskRunner(max_workers=1, max_concurrency=1)
        runner.__enter__()
        runner.submit(waiter, {"other": quote(other)})
        assert waiting.wait(TIMEOUT)
        runner.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)  # (the body is left)
        gate.set()
        assert done.wait(TIMEOUT), "the body hung after its runner was left"


def test_two_slots_two_parents_each_blocking_on_a_child_complete() -> None:
    both_in = threading.Barrier(2)

    @task
    def parent(x: int) -> int:
        both_in.wait(TIMEOUT)  # both slots are taken by parents before any child exists
        return leaf.submit(x).result(timeout=TIMEOUT) * 10

    with ThreadPoolTaskRunner(max_workers=2) as runner:
        assert runner.map(parent, {"x": [1, 2]}).result(timeout=TIMEOUT) == [20, 30]


class SlotMeter:
    """Counts bodies that hold a worker slot (running, not parked in ``.result()``)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.peak = 0
        self.entered: list[str] = []
        self.children_done = 0

    def enter(self, name: str) -> None:
        with self.cond:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.entered.append(name)
            self.cond.notify_all()

    def leave(self, child_done: bool = False) -> None:
        with self.cond:
            self.active -= 1
            self.children_done += child_done
            self.cond.notify_all()


def test_the_bound_holds_after_slots_are_given_back_and_taken_again() -> None:  # noqa: PLR0915 - one scenario, step by step
    limit = 2
    meter = SlotMeter()
    child_started = [threading.Event(), threading.Event()]
    child_gates = [threading.Event(), threading.Event()]
    finish = threading.Event()  # holds whoever runs after the children
    both_in = threading.Barrier(2)

    @task
    def gated_child(i: int) -> int:
        meter.enter(f"child{i}")
        child_started[i].set()
        try:
            assert child_gates[i].wait(TIMEOUT)
        finally:
            meter.leave(child_done=True)
        return i

    @task
    def filler(i: int) -> str:
        meter.enter(f"filler{i}")
        try:
            assert finish.wait(TIMEOUT)
        finally:
            meter.leave()
        return f"filler{i}"

    @task
    def parent(i: int) -> str:
        meter.enter(f"parent{i}")
        both_in.wait(TIMEOUT)
        child_future = gated_child.submit(i)
        meter.leave()  # about to block: the slot is given back
        value = child_future.result(timeout=TIMEOUT)
        meter.enter(f"parent{i}-resumed")  # the slot was taken again
        try:
            assert finish.wait(TIMEOUT)
        finally:
            meter.leave()
        return f"parent{value}"

    with ThreadPoolTaskRunner(max_workers=limit) as runner:
        parents = runner.map(parent, {"i": [0, 1]})
        for event in child_started:
            assert event.wait(TIMEOUT)
        # Both parents are parked; their children hold the two slots. Fillers must queue.
        fillers = runner.map(filler, {"i": [0, 1]})
        runner.submit(noop).result(timeout=TIMEOUT)
        assert all(f.state.is_pending() for f in fillers)  # not handed to a thread
        with meter.cond:
            assert meter.active == limit
            assert len(meter.entered) == 4, meter.entered
        for gate in child_gates:
            gate.set()
        with meter.cond:
            # Once the children are done, exactly `limit` of the four waiting bodies (two
            # fillers, two parents wanting their slot back) hold a slot; the others wait.
            assert meter.cond.wait_for(
                lambda: meter.children_done == 2 and meter.active == limit, TIMEOUT
            )
        runner.submit(noop).result(timeout=TIMEOUT)
        with meter.cond:
            assert meter.active == limit
            assert len(meter.entered) == 4 + limit, meter.entered
        # The two that hold no slot yet: a filler not handed out, or a parent still parked.
        assert (
            sum(f.state.is_pending() for f in fillers)
            + sum(f"parent{i}-resumed" not in meter.entered for i in range(2))
            == 2
        )
        finish.set()
        assert parents.result(timeout=TIMEOUT) == ["parent0", "parent1"]
        assert fillers.result(timeout=TIMEOUT) == ["filler0", "filler1"]
    assert meter.peak == limit
    assert sorted(meter.entered[4:]) == [
        "filler0",
        "filler1",
        "parent0-resumed",
        "parent1-resumed",
    ]


# -- row 22: many threads waiting on one future -------------------------------------------------
def test_many_threads_blocking_on_the_same_future_all_get_the_value() -> None:
    n = 200
    barrier = threading.Barrier(n + 1)
    results: list[int] = []
    lock = threading.Lock()
    started, gate = threading.Event(), threading.Event()

    def reader(f: Future[int]) -> None:
        barrier.wait(TIMEOUT)
        value = f.result(timeout=TIMEOUT)
        with lock:
            results.append(value)

    with ThreadPoolTaskRunner() as runner:
        f = runner.submit(hold, {"started": started.set, "gate": gate, "value": 99})
        assert started.wait(TIMEOUT)
        threads = [threading.Thread(target=reader, args=(f,)) for _ in range(n)]
        for t in threads:
            t.start()
        barrier.wait(TIMEOUT)
        gate.set()
        for t in threads:
            t.join(TIMEOUT)
        assert not any(t.is_alive() for t in threads)
    assert results == [99] * n


# -- row 24: a raising done-callback -------------------------------------------------------------
@pytest.mark.anyio
async def test_a_raising_done_callback_is_logged_with_the_task_and_waiting_still_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncflow")
    started, gate = asyncio.Event(), asyncio.Event()
    after: list[str] = []

    def broken(_f: Future[int]) -> None:
        raise LookupError("callback broke")

    async with ThreadPoolTaskRunner() as runner:
        f = runner.submit(ahold, {"started": started, "gate": gate, "value": 4})
        f.add_done_callback(broken)
        f.add_done_callback(lambda _f: after.append("ran"))
        with anyio.fail_after(TIMEOUT):
            await started.wait()
            waiter = asyncio.ensure_future(_await(f))
            await asyncio.sleep(0)
            gate.set()
            assert await waiter == 4
    assert after == ["ran"]
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], LookupError)]
    assert len(logged) == 1
    assert "'ahold'" in logged[0].getMessage()
    assert str(f.task_run_id) in logged[0].getMessage()


async def _await(f: Future[int]) -> int:
    return await f


# -- row 25: dropped futures ---------------------------------------------------------------------
def _asyncio_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


def test_dropped_futures_leave_no_warnings(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []

    async def arecord(i: int) -> None:
        await asyncio.sleep(0)
        ran.append(i)

    def record(i: int) -> None:
        ran.append(i)

    with ThreadPoolTaskRunner(max_workers=2) as runner:
        for i in range(50):
            runner.submit(arecord, {"i": i})  # futures dropped at once
            runner.submit(record, {"i": 100 + i})
        gc.collect()
    gc.collect()
    assert sorted(ran) == [*range(50), *range(100, 150)]
    assert _asyncio_errors(caplog) == []


@pytest.mark.anyio
async def test_dropped_futures_cancelled_on_error_leave_no_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()
    cancelled: list[int] = []

    async def forever(i: int) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    async def use() -> None:
        async with ThreadPoolTaskRunner() as runner:
            for i in range(10):
                runner.submit(forever, {"i": i})
            await started.wait()
            raise KeyError("stop")

    with anyio.fail_after(TIMEOUT), pytest.raises(KeyError):
        await use()
    gc.collect()
    assert len(cancelled) >= 1
    assert _asyncio_errors(caplog) == []


# -- row 26: a coroutine object instead of a function ---------------------------------------------
def test_submitting_a_coroutine_object_raises_type_error_and_closes_it() -> None:
    with ThreadPoolTaskRunner() as runner:
        coro = adouble(1)
        with pytest.raises(TypeError, match=r"^submit\(\) got a coroutine .* pass the function"):
            runner.submit(coro, {})
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        mapped = adouble(2)
        with pytest.raises(TypeError, match=r"^map\(\) got a coroutine .* pass the function"):
            runner.map(mapped, {"x": [1]})
        assert inspect.getcoroutinestate(mapped) == inspect.CORO_CLOSED
        assert runner.submit(adouble, {"x": 5}).result(timeout=TIMEOUT) == 10
    gc.collect()  # a coroutine left unclosed would warn here ("never awaited")


@pytest.mark.parametrize("decorator", [task, flow], ids=["task", "flow"])
def test_decorating_a_coroutine_object_raises_type_error_and_closes_it(
    decorator: Callable[..., Any],
) -> None:
    coro = adouble(1)
    name = decorator.__name__
    with pytest.raises(TypeError, match=rf"^@{name} got a coroutine .* pass the function itself"):
        decorator(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


# -- waiting on its own future -------------------------------------------------------------------
async def _await_own(holder: list[Future[Any]]) -> None:
    await holder[0]


async def _result_own_async(holder: list[Future[Any]]) -> None:
    holder[0].result(timeout=TIMEOUT)


def _result_own_sync(holder: list[Future[Any]]) -> None:
    holder[0].result(timeout=TIMEOUT)


def _wait_own_sync(holder: list[Future[Any]]) -> None:
    wait(holder, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("waited", "message"),
    [("own", "its own future"), ("dependent", "waits for its own result: that would deadlock")],
)
@pytest.mark.parametrize(
    "body",
    [_await_own, _result_own_async, _result_own_sync, _wait_own_sync],
    ids=["await", "async-result", "thread-result", "thread-wait"],
)
def test_a_task_waiting_for_its_own_future_gets_value_error(
    body: Callable[[list[Future[Any]]], object], waited: str, message: str
) -> None:
    # Its own future, or (dependent) a run that takes its result two links down: that one
    # cannot start before this one ends, so the wait would never end either.
    holder: list[Future[Any]] = []
    gate = threading.Event()
    with ThreadPoolTaskRunner() as runner:
        opener = runner.submit(hold, {"started": lambda: None, "gate": gate})
        # The body starts after `opener`, i.e. after the future it waits for is in the holder.
        # The holder goes in through a partial, not as a parameter, so it is not searched.
        f = runner.submit(functools.partial(body, holder), wait_for=[opener])
        if waited == "own":
            holder.append(f)
        else:
            middle = runner.submit(double, {"x": f})
            holder.append(runner.submit(double, {"x": [middle]}))
        gate.set()
        with pytest.raises(ValueError, match=message):
            f.result(timeout=TIMEOUT)
        assert runner.submit(double, {"x": 1}).result(timeout=TIMEOUT) == 2


@pytest.mark.anyio
async def test_a_coroutine_that_caught_a_runs_error_lives_on_when_a_dependent_is_skipped() -> None:
    # await hangs this coroutine's frame on the run's error; a dependent submitted after, and
    # skipped at once on the runner's own loop, takes that error as its cause: the coroutine
    # (suspended in its next await) must not be finalized by it.
    with ThreadPoolTaskRunner() as runner:
        failed = runner.submit(fail)
        with pytest.raises(ValueError, match="upstream broke"):
            await failed
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(UpstreamFailedError):
                await runner.submit(double, {"x": failed})
        done = runner.submit(double, {"x": 2})
        with anyio.fail_after(TIMEOUT):
            assert await done == 4


async def await_again(holder: list[Future[Any]]) -> Any:
    return await holder[0]  # raises the first run's error again: this run fails with it


@pytest.mark.anyio
async def test_a_coroutine_that_caught_a_runs_error_lives_on_when_another_run_raises_it() -> None:
    # Caught while this coroutine handled an error of its own, the run's error took that one as
    # its __context__ (this coroutine's frame in its traceback); another run raising it again
    # ends with it: clearing its chain's frames must not finalize this coroutine, suspended.
    holder: list[Future[Any]] = []
    async with ThreadPoolTaskRunner() as runner:
        failed = runner.submit(fail)
        holder.append(failed)
        own: dict[str, int] = {}
        try:
            own["this coroutine's own"]
        except KeyError:
            with pytest.raises(ValueError, match="upstream broke"):
                await failed
        again = runner.submit(functools.partial(await_again, holder))
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(ValueError, match="upstream broke"):
                await again
        assert await runner.submit(double, {"x": 2}) == 4


class Big:
    pass


def fails_holding(kept: list[weakref.ref[Big]]) -> None:
    big = Big()
    kept.append(weakref.ref(big))
    raise ValueError("with a big local")


async def afails_holding(kept: list[weakref.ref[Big]]) -> None:
    big = Big()
    kept.append(weakref.ref(big))
    raise ValueError("with a big local")


@pytest.mark.parametrize("options", [{}, {"timeout": TIMEOUT}], ids=["plain", "driven"])
@pytest.mark.parametrize("body", [fails_holding, afails_holding], ids=["sync", "async"])
def test_a_stored_failure_does_not_keep_the_bodys_locals(
    body: Callable[..., Any], options: dict[str, Any]
) -> None:
    kept: list[weakref.ref[Big]] = []
    with ThreadPoolTaskRunner() as runner:
        fut = runner.submit(task(**options)(body), {"kept": quote(kept)})
        assert isinstance(fut.exception(TIMEOUT), ValueError)
    gc.collect()
    assert kept[0]() is None


def stops(i: int = 0) -> int:
    return next(iter([]))


@pytest.mark.anyio
async def test_awaiting_a_run_that_raised_stop_iteration_names_the_task() -> None:
    # A StopIteration cannot leave an await (PEP 479): it comes as the cause of an error that
    # says so, not as a bare "generator raised StopIteration".
    async with ThreadPoolTaskRunner() as runner:
        fut = runner.submit(stops)
        with pytest.raises(RuntimeError, match="task 'stops' raised StopIteration") as info:
            await fut
        assert isinstance(info.value.__cause__, StopIteration)
        with pytest.raises(RuntimeError, match="task 'stops' raised StopIteration"):
            await runner.map(stops, {"i": [0, 1]})
    with pytest.raises(StopIteration):
        fut.result()


@pytest.mark.anyio
async def test_an_async_flow_returning_a_run_that_raised_stop_iteration_names_the_task() -> None:
    @flow
    async def returns_it() -> Any:
        return task(stops).submit()

    with pytest.raises(RuntimeError, match="task 'stops' raised StopIteration") as info:
        await returns_it()
    assert isinstance(info.value.__cause__, StopIteration)


class _AsyncPipeline:
    """A callable object whose ``__call__`` is a coroutine function."""

    async def __call__(self, x: int) -> int:
        assert current_runner.get() is not None
        return await task(double).submit(x)


@pytest.mark.anyio
async def test_a_flow_of_an_object_with_an_async_call_is_an_async_flow() -> None:
    # As for tasks: the object is called inside the flow's runner, and awaited there.
    obj = _AsyncPipeline()
    obj.name, obj.fn, obj.task_runner = "its own name", print, None  # type: ignore[attr-defined]
    pipeline = flow(name="pipeline")(obj)
    assert (pipeline.name, pipeline.fn) == ("pipeline", obj)  # not the object's attributes
    assert pipeline.is_async
    assert await pipeline(3) == 6
    partial_flow = flow(functools.partial(_AsyncPipeline(), 4))
    assert partial_flow.is_async
    assert await partial_flow() == 8


def test_a_class_whose_instances_have_an_async_call_is_a_sync_callable() -> None:
    # Calling the class makes an instance; only its instances' calls are coroutines.
    assert not flow(_AsyncPipeline).is_async
    assert not task(_AsyncPipeline).is_async
    assert isinstance(flow(_AsyncPipeline)(), _AsyncPipeline)
    with ThreadPoolTaskRunner() as runner:
        made = runner.submit(_AsyncPipeline).result(timeout=TIMEOUT)
        assert isinstance(made, _AsyncPipeline)
        assert runner.submit(made, {"x": 2}).result(timeout=TIMEOUT) == 4


async def _afn(self: object, x: int, y: int) -> int:
    return x + y


class _PartlyAsync:
    """``__call__`` is a partialmethod of a coroutine function."""

    __call__ = functools.partialmethod(_afn, 10)


class _AsyncMeta(type):
    async def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return "made later"


class _MadeByACoroutine(metaclass=_AsyncMeta):
    pass


@pytest.mark.anyio
async def test_other_async_callables_are_async_tasks_and_flows() -> None:
    callables: list[tuple[Callable[..., Any], object]] = [
        (functools.partial(_PartlyAsync(), 1), 11),
        (_MadeByACoroutine, "made later"),
    ]
    for fn, value in callables:
        assert task(fn).is_async
        assert flow(fn).is_async
        assert await flow(fn)() == value
        async with ThreadPoolTaskRunner() as runner:
            assert await runner.submit(fn) == value


@pytest.mark.anyio
async def test_a_flow_of_a_task_or_of_a_flow_runs_its_function() -> None:
    # Of a task: the task's function, under the task's name; of a flow: a copy of that flow
    # (its runner, unless another is given).
    for body, is_async in [(double, False), (adouble, True)]:
        named = task(name="named")(body)
        of_task = flow(named)
        assert (of_task.name, of_task.fn, of_task.is_async) == ("named", body, is_async)
        result: Any = of_task(x=3)
        assert (await result if is_async else result) == 6
    runner = ThreadPoolTaskRunner(max_workers=3)
    inner = flow(name="inner", task_runner=runner)(adouble)
    outer = flow(inner)
    assert (outer.name, outer.task_runner, outer.fn) == ("inner", runner, adouble)
    assert await outer(x=4) == 8
    other = ThreadPoolTaskRunner(max_workers=2)
    renamed = flow(name="outer", task_runner=other)(inner)
    assert (renamed.name, renamed.task_runner) == ("outer", other)
    with pytest.raises(TypeError, match="flow name must be a string, not 3"):
        flow(name=3)(double)  # type: ignore[call-overload]


class _Configured:
    """A callable object with attributes named as a task's and a flow's options."""

    def __init__(self, fn: Callable[[int], Any]) -> None:
        self.fn, self.name, self.retries, self.timeout, self.is_async = fn, "own", "x", "y", "z"

    def __call__(self, x: int) -> Any:
        return self.fn(x)


def test_a_callable_object_s_own_attributes_never_replace_a_task_s() -> None:
    # (update_wrapper copies them onto the task: they used to replace its options and its
    # function, so the object's own call was skipped.)
    t = task(name="fetch", retries=2, timeout=5)(_Configured(double))
    assert (t.name, t.retries, t.timeout, t.is_async) == ("fetch", 2, 5.0, False)
    assert isinstance(t.fn, _Configured)
    assert flow(t).name == "fetch"
    with ThreadPoolTaskRunner() as runner:
        assert runner.submit(t, {"x": 4}).result(timeout=TIMEOUT) == 8


class _SyncCall:
    def __call__(self, x: int) -> int:
        return x + 1


@pytest.mark.anyio
async def test_what_python_calls_decides_whether_a_callable_is_async() -> None:
    obj = _SyncCall()
    obj.__call__ = adouble  # type: ignore[method-assign,assignment]  # (never called)
    assert not task(obj).is_async
    of_async_task = functools.partial(task(adouble), 5)
    assert task(of_async_task).is_async
    assert flow(of_async_task).is_async
    async with ThreadPoolTaskRunner() as runner:
        assert await runner.submit(obj, {"x": 1}) == 2
        assert await runner.submit(of_async_task) == 10
    assert await flow(of_async_task)() == 10


@pytest.mark.anyio
async def test_a_task_of_a_task_is_a_copy_and_a_task_of_a_flow_is_as_async_as_the_flow() -> None:
    inner = task(name="inner", retries=3, tags=["db"])(adouble)
    copy = task(inner)
    assert copy is not inner
    assert (copy.name, copy.retries, copy.tags, copy.fn) == ("inner", 3, frozenset({"db"}), adouble)
    renamed = task(name="renamed", retries=0)(inner)
    assert (renamed.name, renamed.retries, renamed.tags) == ("renamed", 0, frozenset({"db"}))
    for no_name in (None, ""):  # (as for a plain function: its own name stays)
        assert task(name=no_name, timeout=5)(inner).name == "inner"
    of_flow = task(flow(adouble))
    assert of_flow.is_async
    assert flow(of_flow).is_async
    assert flow(functools.partial(flow(adouble), 6)).is_async
    async with ThreadPoolTaskRunner() as runner:
        assert await runner.submit(copy, {"x": 2}) == 4
        assert await runner.submit(of_flow, {"x": 3}) == 6
    assert await flow(of_flow)(x=5) == 10


def double_sum(x: int, y: int) -> int:
    return 2 * (x + y)


def test_a_partial_of_a_task_keeps_the_task_s_name_and_options() -> None:
    attempts: list[int] = []

    def flaky(x: int, y: int) -> int:
        attempts.append(y)
        if len(attempts) == 1:
            raise ValueError("once")
        return x + y

    adder = task(name="adder", retries=1)(flaky)
    plus_one = functools.partial(adder, 1)
    with ThreadPoolTaskRunner() as runner:
        first = runner.submit(plus_one, {"y": 2})
        assert first.result(timeout=TIMEOUT) == 3  # (retried once)
        assert first.task_name == "adder"
        assert runner.submit(plus_one, {"y": 3}).result(timeout=TIMEOUT) == 4
    assert attempts == [2, 2, 3]
    assert as_task(plus_one) is as_task(plus_one)  # (made once while it lives)
    made = task(plus_one)
    assert (made.name, made.retries, made(y=5)) == ("adder", 1, 6)
    assert task(name="other", retries=0)(plus_one).retries == 0
    # Not the task's cache: its key would not see the partial's arguments.
    cached = task(cache_key=task_input_hash)(double_sum)
    with ThreadPoolTaskRunner() as runner:
        one, hundred = functools.partial(cached, 1), functools.partial(cached, 100)
        assert runner.submit(one, {"y": 2}).result(timeout=TIMEOUT) == 6
        assert runner.submit(hundred, {"y": 2}).result(timeout=TIMEOUT) == 204
    spec = mock.Mock(spec=Task, return_value=42)  # (a mock of a task is called as it is)
    assert task(functools.partial(spec, 1))() == 42


# -- futures of other runners ---------------------------------------------------------------------
def test_a_finished_future_of_a_closed_runner_is_a_plain_value() -> None:
    with ThreadPoolTaskRunner() as first:
        done = first.submit(double, {"x": 2})
        failed = first.submit(fail)
    assert done.result() == 4
    with ThreadPoolTaskRunner() as second:
        assert second.submit(double, {"x": done}).result(timeout=TIMEOUT) == 8
        assert second.submit(double, {"x": [done][0]}, wait_for=[done]).result(TIMEOUT) == 8
        downstream = second.submit(double, {"x": failed})
        downstream.wait(TIMEOUT)
    assert isinstance(downstream.exception(), UpstreamFailedError)


@pytest.mark.anyio
async def test_a_finished_future_of_a_closed_runner_in_async_with() -> None:
    with ThreadPoolTaskRunner() as first:
        done = first.submit(double, {"x": 3})
    async with ThreadPoolTaskRunner() as second:
        with anyio.fail_after(TIMEOUT):
            assert await second.submit(adouble, {"x": done}) == 12


def test_an_unfinished_future_of_another_live_runner_is_an_upstream() -> None:
    started, gate = threading.Event(), threading.Event()
    fail_gate = threading.Event()

    def fail_late() -> int:
        assert fail_gate.wait(TIMEOUT)
        raise ValueError("late")

    with ThreadPoolTaskRunner() as first, ThreadPoolTaskRunner() as second:
        up = first.submit(hold, {"started": started.set, "gate": gate, "value": 5})
        up_failing = first.submit(fail_late)
        down = second.submit(double, {"x": up})
        ordered = second.submit(adouble, {"x": 1}, wait_for=[up])
        down_failing = second.submit(double, {"x": up_failing})
        assert started.wait(TIMEOUT)
        second.submit(noop).result(timeout=TIMEOUT)
        assert down.state.is_pending()
        assert ordered.state.is_pending()
        gate.set()
        fail_gate.set()
        assert down.result(timeout=TIMEOUT) == 10
        assert ordered.result(timeout=TIMEOUT) == 2
        down_failing.wait(TIMEOUT)
        assert down_failing.state.name == "UpstreamFailed"
        assert isinstance(down_failing.exception(), UpstreamFailedError)


def test_a_failure_on_another_runner_is_named_as_the_cause_and_allow_failure_accepts_it() -> None:
    gate = threading.Event()

    def fail_late() -> int:
        assert gate.wait(TIMEOUT)
        raise ValueError("late")

    def kind(x: object, y: object = None) -> str:
        return type(x).__name__

    with ThreadPoolTaskRunner() as first, ThreadPoolTaskRunner() as second:
        up = first.submit(fail_late)
        skipped = second.submit(double, {"x": up})
        below = second.submit(double, {"x": skipped})
        accepted = second.submit(kind, {"x": allow_failure(up)})
        both = second.submit(kind, {"x": allow_failure(up), "y": up})  # plainly too: skipped
        second.submit(noop).result(timeout=TIMEOUT)  # all four registered, waiting on `up`
        assert not any(f.done() for f in (skipped, below, accepted, both))
        gate.set()
        assert accepted.result(timeout=TIMEOUT) == "ValueError"
        for run in (skipped, below):
            run.wait(TIMEOUT)
            assert run.state.name == "UpstreamFailed"
        error = skipped.exception()
        assert isinstance(error, UpstreamFailedError)
        assert "'fail_late'" in str(error)  # the other runner's task, by name
        assert isinstance(error.__cause__, ValueError)
        below_error = below.exception()
        assert isinstance(below_error, UpstreamFailedError)
        assert "'double'" in str(below_error)
        assert isinstance(below_error.__cause__, ValueError)
        both.wait(TIMEOUT)
        assert both.state.name == "UpstreamFailed"


def test_a_cancelled_future_of_another_live_runner_cancels_the_downstream() -> None:
    started, gate = threading.Event(), threading.Event()
    with ThreadPoolTaskRunner() as first, ThreadPoolTaskRunner() as second:
        up = first.submit(hold, {"started": started.set, "gate": gate, "value": 5})
        up.add_done_callback(lambda _f: gate.set())
        down = second.submit(double, {"x": up})
        assert started.wait(TIMEOUT)
        up.cancel()
        down.wait(TIMEOUT)
        assert down.state.is_cancelled()
        with pytest.raises(TaskCancelledError):  # (as concurrent.futures raises here)
            down.exception()


@pytest.mark.anyio
async def test_an_unfinished_future_of_a_background_runner_is_an_upstream_in_async_with() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    gate = threading.Event()
    with ThreadPoolTaskRunner() as first:
        up = first.submit(
            hold,
            {
                "started": functools.partial(loop.call_soon_threadsafe, started.set),
                "gate": gate,
                "value": 6,
            },
        )
        async with ThreadPoolTaskRunner() as second:
            down = second.submit(adouble, {"x": up})
            with anyio.fail_after(TIMEOUT):
                await started.wait()
                await second.submit(noop)
                assert down.state.is_pending()
                gate.set()
                assert await down == 12
