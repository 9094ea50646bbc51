"""Starting coroutine runs: first steps in shared starter tasks, a task of its own for a run that
waits, and the task a body sees (``asyncio.current_task()``) kept when the body holds on to it."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from typing import Any

import anyio
import pytest

from asyncflow import ThreadPoolTaskRunner
from asyncflow._starter import BATCH
from asyncflow.exceptions import TaskCancelledError

TIMEOUT = 5.0
pytestmark = pytest.mark.anyio

seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


class _Entered:
    """Set once ``n`` bodies have called it: every first step ran."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.event.set()


def _cancel_current_task() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()


class _CountedTask(asyncio.Task):  # type: ignore[type-arg]
    made = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).made += 1
        super().__init__(*args, **kwargs)


async def test_runs_that_never_wait_share_starter_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    monkeypatch.setattr(asyncio, "Task", _CountedTask)
    _CountedTask.made = 0
    runs = 10 * BATCH
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(add, {"a": i, "b": 1}) for i in range(runs)]
            assert [await f for f in futures] == [i + 1 for i in range(runs)]
    # One starter per batch of first steps (and a few of the session's own), not one per run.
    assert _CountedTask.made <= runs // BATCH + 5


async def test_a_run_that_waits_gets_a_task_of_its_own() -> None:
    gate = asyncio.Event()
    entered = _Entered(3)
    tasks: list[int] = []
    in_step: list[int] = []

    async def wait_then_report(i: int) -> int:
        in_step.append(id(asyncio.current_task()))  # only its id: the task is not kept
        entered()
        await gate.wait()
        tasks.append(id(asyncio.current_task()))
        return i

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(wait_then_report, {"i": i}) for i in range(3)]
            await entered.event.wait()
            gate.set()
            assert [await f for f in futures] == [0, 1, 2]
    assert len(set(in_step)) == 1  # the three first steps ran in one starter
    assert len(set(tasks)) == 3  # each waited in a task of its own
    assert in_step[0] not in tasks


async def test_a_body_that_keeps_its_task_has_it_to_its_end() -> None:
    gate = asyncio.Event()
    entered = _Entered(3)
    same: list[bool] = []
    kept: list[asyncio.Task[Any]] = []

    async def keep_task(i: int) -> int:
        me = asyncio.current_task()
        assert me is not None
        entered()
        await gate.wait()
        same.append(asyncio.current_task() is me)
        kept.append(me)
        return i

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(keep_task, {"i": i}) for i in range(3)]
            await entered.event.wait()
            gate.set()
            assert [await f for f in futures] == [0, 1, 2]
    assert same == [True, True, True]
    assert len({id(t) for t in kept}) == 3  # and no other run's task


async def test_a_task_kept_by_a_run_that_ended_is_not_another_runs_task() -> None:
    kept: list[asyncio.Task[Any]] = []

    async def keep_task(i: int) -> int:
        me = asyncio.current_task()
        assert me is not None
        kept.append(me)
        return i

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(keep_task, {"i": i}) for i in range(5)]
            assert [await f for f in futures] == list(range(5))
    assert len({id(t) for t in kept}) == 5


async def test_a_weak_reference_to_the_task_counts_as_keeping_it() -> None:
    refs: list[weakref.ref[asyncio.Task[Any]]] = []
    shared: list[bool] = []

    async def note_task(i: int) -> int:
        me = asyncio.current_task()
        assert me is not None
        if refs:
            shared.append(refs[-1]() is me)  # the run before's task, if still alive
        refs.append(weakref.ref(me))
        return i

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(note_task, {"i": i}) for i in range(4)]
            assert [await f for f in futures] == list(range(4))
    assert shared == [False, False, False]


async def test_cancel_scopes_and_task_groups_across_the_first_wait() -> None:
    gate = asyncio.Event()
    entered = _Entered(3)

    async def with_scopes(i: int) -> int:
        with anyio.fail_after(TIMEOUT):  # records the task it is entered in
            async with anyio.create_task_group() as tg:  # so does this one
                tg.start_soon(gate.wait)
                entered()
                await gate.wait()
        return i

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(with_scopes, {"i": i}) for i in range(3)]
            await entered.event.wait()
            gate.set()
            assert [await f for f in futures] == [0, 1, 2]


@pytest.mark.parametrize("keep", [False, True])
async def test_each_run_steps_in_its_own_context(keep: bool) -> None:
    gate = asyncio.Event()
    token = seen.set("submitter")
    kept: list[Any] = []

    async def mark(name: str) -> str:
        before = seen.get()
        seen.set(name)
        if keep:  # its task is then the starter, whose own context is not the run's
            kept.append(asyncio.current_task())
        await gate.wait()
        return f"{before}->{seen.get()}"

    async def plain(name: str) -> str:
        before = seen.get()
        seen.set(name)
        return before

    try:
        with anyio.fail_after(TIMEOUT):
            async with ThreadPoolTaskRunner() as runner:
                waits = [runner.submit(mark, {"name": f"w{i}"}) for i in range(3)]
                ends = [runner.submit(plain, {"name": f"p{i}"}) for i in range(3)]
                assert [await f for f in ends] == ["submitter"] * 3
                gate.set()
                assert [await f for f in waits] == [f"submitter->w{i}" for i in range(3)]
    finally:
        seen.reset(token)
    assert len({id(t) for t in kept}) == (3 if keep else 0)


async def test_a_run_cancelled_before_its_own_task_first_steps_ends_cancelled() -> None:
    """The first run waits; the second, started by the same starter right after, cancels the
    first before the first's own task took a step."""
    waited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    saw: list[str] = []
    futures: list[Any] = []

    async def waits() -> None:
        try:
            await waited
        except asyncio.CancelledError:
            saw.append("cancelled")
            raise

    async def cancels_the_first() -> bool:
        return bool(futures[0].cancel())

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures.append(runner.submit(waits))
            futures.append(runner.submit(cancels_the_first))
            assert await futures[1] is True
            with pytest.raises(TaskCancelledError):
                await futures[0]
    assert saw == ["cancelled"]
    assert waited.cancelled()  # what it waited on was cancelled, as by its task


async def test_a_body_that_cancels_its_own_task_and_returns_does_not_cancel_the_next_run() -> None:
    async def cancels_itself() -> int:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return 1

    async def plain(i: int) -> int:
        await asyncio.sleep(0)
        return i

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            first = runner.submit(cancels_itself)
            rest = [runner.submit(plain, {"i": i}) for i in range(3)]
            assert await first == 1  # it returned before its task saw the cancel
            assert [await f for f in rest] == [0, 1, 2]


@pytest.mark.parametrize("keep", [False, True])
async def test_a_body_that_cancels_its_own_task_and_waits_is_cancelled(keep: bool) -> None:
    kept: list[Any] = []

    async def cancels_itself() -> int:
        if keep:
            task = asyncio.current_task()
            kept.append(task)
        _cancel_current_task()  # (its task is not kept by this frame)
        await asyncio.sleep(TIMEOUT * 10)
        return 1

    async def plain() -> int:
        return 2

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            first = runner.submit(cancels_itself)
            second = runner.submit(plain)
            with pytest.raises(TaskCancelledError):
                await first
            assert await second == 2
    assert len(kept) == int(keep)


async def test_a_starter_cancelled_before_its_first_step_leaves_no_run_behind() -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            me = asyncio.current_task()
            before = asyncio.all_tasks()
            futures = [runner.submit(add, {"a": i, "b": 1}) for i in range(3)]
            starters = [t for t in asyncio.all_tasks() - before if t is not me]
            assert len(starters) == 1
            starters[0].cancel()  # (as a loop's shutdown cancels every task)
            assert [await f for f in futures] == [1, 2, 3]
