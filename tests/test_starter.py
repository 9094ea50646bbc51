"""Starting coroutine runs: first steps in shared starter tasks, a task of its own for a run that
waits, and the task a body sees (``asyncio.current_task()``) kept when the body holds on to it."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import traceback
import weakref
from typing import Any

import anyio
import pytest

from asyncflow import ThreadPoolTaskRunner, _starter
from asyncflow._starter import BATCH
from asyncflow.exceptions import TaskCancelledError

TIMEOUT = 5.0
pytestmark = pytest.mark.anyio

seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")
held: contextvars.ContextVar[Any] = contextvars.ContextVar("held", default=None)


@pytest.fixture(autouse=True)
def every_run_through_a_starter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run's first step in a starter: no task is remembered as one whose runs wait (the
    tests of that turn it back on)."""
    monkeypatch.setattr(_starter, "_REMEMBER", False)


def _remember(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_starter, "_REMEMBER", True)


class _Entered:
    """Set once ``n`` bodies have called it: every first step ran."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.event.set()


async def _three_past_a_gate(body: Any, entered: _Entered, gate: asyncio.Event) -> list[Any]:
    """Submit three runs of ``body`` (``i`` = 0, 1, 2), open ``gate`` once all three entered,
    and return what they returned."""
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(body, {"i": i}) for i in range(3)]
            await entered.event.wait()
            gate.set()
            return [await f for f in futures]


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

    starters: list[int] = []
    make_starter = _starter._Starter.__init__

    def counted_starter(self: Any, *args: Any, **kwargs: Any) -> None:
        starters.append(1)
        make_starter(self, *args, **kwargs)

    monkeypatch.setattr(asyncio, "Task", _CountedTask)
    monkeypatch.setattr(_starter._Starter, "__init__", counted_starter)
    _CountedTask.made = 0
    runs = 10 * BATCH
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(add, {"a": i, "b": 1}) for i in range(runs)]
            assert [await f for f in futures] == [i + 1 for i in range(runs)]
    # One starter per batch of first steps (and a few tasks of the session's own), not one
    # task per run.
    assert 1 <= len(starters) <= runs // BATCH + 1
    assert _CountedTask.made <= 5


async def test_a_run_that_waits_gets_a_task_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    _remember(monkeypatch)
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

    assert await _three_past_a_gate(wait_then_report, entered, gate) == [0, 1, 2]
    assert len(set(tasks)) == 3  # each waited in a task of its own
    # The first one's first step ran in a starter: it moved to its task at its first wait.
    assert in_step[0] not in tasks
    # Once a run of the task waited, its later runs got their task from the start.
    assert in_step[1:] == tasks[1:]


async def test_runs_of_a_task_that_waited_start_in_tasks_of_their_own_and_others_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _remember(monkeypatch)
    gate = asyncio.Event()
    entered = _Entered(1)
    seen: list[tuple[str, str]] = []  # (run, the class of the task of its first step)

    async def waits(i: int) -> int:
        seen.append((f"waits {i}", type(asyncio.current_task()).__name__))
        entered()
        await gate.wait()
        return i

    async def never_waits(i: int) -> int:
        seen.append((f"never {i}", type(asyncio.current_task()).__name__))
        return i

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            first = runner.submit(waits, {"i": 0})
            await entered.event.wait()  # it waited in its first step
            later = [
                runner.submit(never_waits, {"i": 1}),
                runner.submit(waits, {"i": 2}),
                runner.submit(never_waits, {"i": 3}),  # (after one given a task up front)
            ]
            gate.set()
            assert [await f for f in [first, *later]] == [0, 1, 2, 3]
    starter, own = _starter._Starter.__name__, asyncio.Task.__name__
    assert seen == [
        ("waits 0", starter),
        ("never 1", starter),
        ("waits 2", own),
        ("never 3", own),
    ]


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

    assert await _three_past_a_gate(keep_task, entered, gate) == [0, 1, 2]
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

    assert await _three_past_a_gate(with_scopes, entered, gate) == [0, 1, 2]


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
        await asyncio.Event().wait()  # (until cancelled)
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


# -- a body that changes its task without keeping it --------------------------------------------
async def test_a_done_callback_on_the_task_is_called_when_the_run_ends() -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()
    ended = asyncio.Event()
    called: list[Any] = []

    def on_done(task: Any) -> None:
        called.append(task)
        ended.set()

    async def body() -> int:
        _current_task().add_done_callback(on_done)  # (the task is not kept)
        entered.set()
        await gate.wait()
        return len(called)  # its task is not done while it runs

    async def noop() -> None:
        return None

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            f = runner.submit(body)
            await entered.wait()
            await runner.submit(noop)  # (a later batch: its starter began and ended meanwhile)
            gate.set()
            assert await f == 0
            await ended.wait()
    assert len(called) == 1


async def test_a_run_that_ended_after_adding_a_done_callback_shares_no_task() -> None:
    called: list[Any] = []
    later: list[asyncio.Task[Any]] = []
    ended = asyncio.Event()

    def on_done(task: Any) -> None:
        called.append(task)
        ended.set()

    async def adds_one() -> int:
        _current_task().add_done_callback(on_done)  # (the task is not kept)
        return 1

    async def runs_later() -> int:
        later.append(_current_task())
        return 2

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            first = runner.submit(adds_one)
            second = runner.submit(runs_later)
            assert (await first, await second) == (1, 2)
            await ended.wait()
    assert called[0] is not later[0]


async def test_a_name_given_to_the_task_stays_the_runs_alone() -> None:
    async def names_it() -> str:
        _current_task().set_name("namer")
        return "named"

    async def reads_it() -> str:
        return _current_task().get_name()

    async def names_it_and_waits() -> str:
        _current_task().set_name("mine")
        await asyncio.sleep(0)
        return _current_task().get_name()

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            named = runner.submit(names_it)
            other = runner.submit(reads_it)
            waits = runner.submit(names_it_and_waits)
            assert await named == "named"
            assert await other != "namer"
            assert await waits == "mine"  # the name it gave outlives its first wait


async def test_a_cancel_taken_back_in_a_first_step_reaches_no_later_run() -> None:
    # On Python 3.11 uncancel() leaves the cancel to be delivered at the task's next step.
    async def flips() -> int:
        task: Any = _current_task()
        task.cancel()
        task.uncancel()
        return 1

    async def keeps() -> bool:
        me = asyncio.current_task()
        await asyncio.sleep(0)
        return me is asyncio.current_task()

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            first = runner.submit(flips)
            second = runner.submit(keeps)
            assert await first == 1
            assert await second is True


# -- a cancel before a run's own task took its first step ---------------------------------------
async def test_such_a_cancel_waits_for_the_task_the_run_awaited_to_end() -> None:
    """As a task cancelled while it awaits another: that one is cancelled, and the run sees its
    cancel once that one ended."""
    release = asyncio.Event()
    inner_waits = asyncio.Event()
    futures: list[Any] = []
    seen: list[bool] = []

    async def inner_body() -> str:
        try:
            inner_waits.set()
            await release.wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # a clean-up that takes two loop turns
            await asyncio.sleep(0)
            raise
        return "released"

    inner: list[asyncio.Task[str]] = []

    async def waits_on_inner() -> None:
        try:
            await inner[0]
        except asyncio.CancelledError:
            seen.append(inner[0].done())
            raise

    async def cancels_the_first() -> bool:
        return bool(futures[0].cancel())

    with anyio.fail_after(TIMEOUT):
        inner.append(asyncio.get_running_loop().create_task(inner_body()))
        await inner_waits.wait()
        async with ThreadPoolTaskRunner() as runner:
            futures.append(runner.submit(waits_on_inner))
            futures.append(runner.submit(cancels_the_first))
            assert await futures[1] is True
            with pytest.raises(TaskCancelledError):
                await futures[0]
        await asyncio.wait([inner[0]])
    assert inner[0].cancelled()
    assert seen == [True]


async def test_such_a_cancel_leaves_the_awaited_task_awaitable_by_others() -> None:
    """The run awaits a task others await too, and the session ends with an error right after
    the run's first step: the others still get that task's result."""
    release = asyncio.Event()
    entered = asyncio.Event()
    shared_cancelled = asyncio.Event()

    async def shared_work() -> str:
        try:
            await release.wait()
        except asyncio.CancelledError:  # (it finishes its work all the same)
            shared_cancelled.set()
            await release.wait()
        return "done"

    shared = asyncio.get_running_loop().create_task(shared_work())

    async def other_awaiter() -> str:
        await shared_cancelled.wait()
        release.set()
        return await shared

    other = asyncio.get_running_loop().create_task(other_awaiter())

    async def body() -> str:
        entered.set()
        return await shared  # its first wait

    async def session() -> None:
        async with ThreadPoolTaskRunner() as runner:
            runner.submit(body)
            await entered.wait()
            raise KeyError("the session ends with an error")

    with anyio.fail_after(TIMEOUT):
        with pytest.raises(KeyError):
            await session()
        assert await other == "done"
        assert await shared == "done"


# -- what a started run keeps -------------------------------------------------------------------
class _Big:
    """A payload that can be weakly referenced."""


@pytest.mark.parametrize("keep", [False, True])
async def test_what_a_run_first_waited_on_is_freed_once_it_woke(keep: bool) -> None:
    gate = asyncio.Event()
    checked = asyncio.Event()
    freed: list[bool] = []

    async def body() -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task() if keep else None  # (kept: the starter follows the run)
        f = loop.create_future()
        loop.call_soon(f.set_result, _Big())
        obj = await f  # its first wait
        ref = weakref.ref(obj)
        del obj, f
        await asyncio.sleep(0)  # (a loop turn: the handle that woke it held the future)
        gc.collect()
        freed.append(ref() is None)
        checked.set()
        await gate.wait()
        del me

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            fut = runner.submit(body)
            await checked.wait()
            gate.set()
            await fut
    assert freed == [True]


async def test_a_starter_following_a_run_keeps_nothing_of_earlier_runs() -> None:
    gate_a = asyncio.Event()
    gate_b = asyncio.Event()
    entered = asyncio.Event()
    refs: list[weakref.ref[Any]] = []

    async def a() -> None:
        await gate_a.wait()
        refs.append(weakref.ref(_current_task()))  # (its own task, not the starter)
        marker = _Big()
        held.set(marker)  # alive while its context is
        refs.append(weakref.ref(marker))

    async def b() -> None:
        me = asyncio.current_task()  # kept: the starter follows b
        entered.set()
        await gate_b.wait()
        del me

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            fa = runner.submit(a)
            fb = runner.submit(b)
            await entered.wait()
            gate_a.set()
            await fa
            gc.collect()
            alive = [r() is not None for r in refs]
            gate_b.set()
            await fb
    assert alive == [False, False]


def _current_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None
    return task


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_runs_start_where_tasks_take_native_coroutines_only() -> None:
    """Python 3.12's tasks refuse generator-based coroutines: the starters' tasks are given
    native ones. (Run in a fresh interpreter told to accept only what 3.12 accepts.)"""
    program = (
        "import asyncio, asyncio.coroutines as c, collections.abc, types\n"
        "c._COROUTINE_TYPES = (types.CoroutineType, collections.abc.Coroutine)\n"
        "from asyncflow import ThreadPoolTaskRunner\n"
        "async def add(a, b):\n"
        "    return a + b\n"
        "async def waits(a):\n"
        "    await asyncio.sleep(0)\n"
        "    return a\n"
        "async def main():\n"
        "    async with ThreadPoolTaskRunner() as runner:\n"
        "        one = runner.submit(add, {'a': 1, 'b': 2})\n"
        "        two = runner.submit(waits, {'a': 4})\n"
        "        print(await one, await two)\n"
        "asyncio.run(main())\n"
    )
    done = await anyio.run_process([sys.executable, "-c", program], check=False)
    assert done.stderr.decode() == ""
    assert done.stdout.decode().split() == ["3", "4"]


# -- what waits on what: a first step's wait, handed to the run's own task --------------------
async def test_runs_of_one_batch_may_await_the_same_pending_future() -> None:
    """One shared asyncio future (a "connect once" task, say) awaited by several runs: the
    mark a first step's ``await`` puts on it does not refuse the next run's ``await``."""
    shared: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    entered = asyncio.Event()
    count = 0

    async def body(i: int) -> int:
        nonlocal count
        count += 1
        if count == 3:
            entered.set()
        return await shared + i

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(body, {"i": i}) for i in range(3)]
            await entered.wait()
            shared.set_result(10)
            assert [await f for f in futures] == [10, 11, 12]


async def test_runs_of_one_batch_may_await_the_same_pending_task_while_one_is_followed() -> None:
    """The same, with the later run followed by its starter (it keeps its task)."""
    shared: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    entered = asyncio.Event()
    kept: list[Any] = []

    async def first() -> int:
        return await shared

    async def keeps() -> int:
        kept.append(asyncio.current_task())
        entered.set()
        return await shared + 1

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(first), runner.submit(keeps)]
            await entered.wait()
            shared.set_result(10)
            assert [await f for f in futures] == [10, 11]


@pytest.mark.parametrize("keep", [False, True])
async def test_an_exception_thrown_into_a_run_is_no_context_of_its_next_one(keep: bool) -> None:
    """A run whose awaited task failed, which handled that and then raised another error: as
    in a task of its own, that error has no context and no exception is being handled."""
    seen: list[Any] = []
    kept: list[Any] = []

    async def fails() -> None:
        raise ValueError("inner")

    async def body() -> None:
        if keep:
            kept.append(asyncio.current_task())
        t = asyncio.ensure_future(fails())
        try:
            await t
        except ValueError:
            pass
        seen.append(sys.exc_info()[1])
        raise KeyError("outer")

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            fut = runner.submit(body)
            with pytest.raises(KeyError) as info:
                await fut
    assert seen == [None]
    assert info.value.__context__ is None


async def test_an_attribute_set_on_the_task_reaches_no_later_run() -> None:
    """asyncio tasks take attributes (``task.x = ...``; some libraries tag tasks that way): a
    run that set one in its first step does not leave it to the next run's task."""
    seen: list[Any] = []

    async def tags() -> None:
        asyncio.current_task().tag = "first run's"  # type: ignore[union-attr]

    async def reads() -> None:
        seen.append(getattr(asyncio.current_task(), "tag", None))

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(tags), runner.submit(reads)]
            for f in futures:
                await f
    assert seen == [None]


async def test_a_cancel_message_asked_in_the_first_step_reaches_the_run() -> None:
    """``asyncio.current_task().cancel("why")`` in the first step, then a wait: the body sees
    the message."""
    args: list[Any] = []

    async def body() -> None:
        asyncio.current_task().cancel("why")  # type: ignore[union-attr]
        try:
            await asyncio.Event().wait()  # (until cancelled)
        except asyncio.CancelledError as exc:
            args.append(exc.args)
            raise

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            fut = runner.submit(body)
            with pytest.raises(TaskCancelledError):
                await fut
    assert args == [("why",)]


async def test_a_task_the_body_started_may_await_what_the_body_awaits() -> None:
    """The body starts a plain asyncio task that awaits the same future as the body: that
    task's first step comes before the run's own task's, and its ``await`` is not refused."""
    shared: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    helper_started = asyncio.Event()
    outcome: list[Any] = []

    async def helper() -> None:
        helper_started.set()
        try:
            outcome.append(await shared)
        except BaseException as exc:
            outcome.append(repr(exc))

    async def body() -> int:
        asyncio.Task(helper())  # (not through a loop's task factory)
        return await shared

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            fut = runner.submit(body)
            await helper_started.wait()
            shared.set_result(3)
            assert await fut == 3
    assert outcome == [3]


async def test_runs_resume_after_a_bare_yield_and_after_what_they_awaited_ended_early() -> None:
    """A bare yield (``asyncio.sleep(0)``) and an awaited future that ends before the run's own
    task first steps: both resume, in order, with what they awaited."""
    early = asyncio.get_running_loop().create_future()
    order: list[str] = []

    async def yields() -> str:
        await asyncio.sleep(0)
        order.append("yields")
        return "yielded"

    async def awaits_early() -> int:
        value: int = await early
        order.append("awaits")
        return value

    async def ends_it() -> None:
        early.set_result(7)  # (after the two first steps, before their tasks' first steps)

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            futures = [runner.submit(yields), runner.submit(awaits_early), runner.submit(ends_it)]
            assert [await f for f in futures] == ["yielded", 7, None]
    assert order == ["yields", "awaits"]


# -- what a body sees of errors thrown in at its waits, as in a task of its own ---------------
def _frames(exc: BaseException) -> list[str]:
    return [frame.f_code.co_name for frame, _ in traceback.walk_tb(exc.__traceback__)]


async def _failing(gate: asyncio.Event) -> None:
    await gate.wait()
    raise ValueError("child")


async def _body(keep: bool, entered: asyncio.Event, gate: asyncio.Event) -> list[str]:
    kept = asyncio.current_task() if keep else None  # keep: the starter follows the run
    child = asyncio.create_task(_failing(gate))
    entered.set()
    try:
        await child
    except ValueError as exc:
        del kept
        return _frames(exc)
    raise AssertionError("not reached")


async def _frames_seen(submit: bool, keep: bool) -> list[str]:
    entered, gate = asyncio.Event(), asyncio.Event()
    with anyio.fail_after(TIMEOUT):
        if not submit:  # a plain asyncio task of the same body
            task = asyncio.create_task(_body(keep, entered, gate))
            await entered.wait()
            gate.set()
            return await task
        async with ThreadPoolTaskRunner() as runner:
            fut = runner.submit(_body, {"keep": keep, "entered": entered, "gate": gate})
            await entered.wait()
            gate.set()
            frames: list[str] = await fut
            return frames


@pytest.mark.parametrize("keep", [False, True], ids=["own-task", "followed"])
async def test_an_error_thrown_into_a_run_at_its_first_wait_shows_no_starter_frame(
    keep: bool,
) -> None:
    """An awaited task fails after the run's first wait: the error the body catches has, as
    in a task of its own, the body's frame and the child's, and no frame of asyncflow's own
    (``_resume`` re-raises it into the run at its first wait; ``_follow`` at every wait)."""
    plain = await _frames_seen(submit=False, keep=keep)
    assert plain == ["_body", "_failing"]
    assert await _frames_seen(submit=True, keep=keep) == plain


async def test_a_cancel_of_a_followed_run_shows_no_starter_frame() -> None:
    """The same for a cancel at a later wait of a run its starter follows."""
    entered = asyncio.Event()
    seen: list[list[str]] = []

    async def body() -> None:
        kept = asyncio.current_task()
        await asyncio.sleep(0)  # (a first wait; the starter follows)
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            seen.append(_frames(exc))
            del kept
            raise

    with anyio.fail_after(TIMEOUT):
        task = asyncio.create_task(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        entered.clear()
        async with ThreadPoolTaskRunner() as runner:
            fut = runner.submit(body)
            await entered.wait()
            fut.cancel()
            with pytest.raises(TaskCancelledError):
                await fut
    assert seen[0] == ["body", "wait"]
    assert seen[1] == seen[0]


async def test_a_done_future_of_another_loop_is_refused_as_in_a_task() -> None:
    """A body awaits a future of another event loop (a bug asyncio refuses: "attached to a
    different loop"). It ends between the run's first step and its own task's first step: the
    body gets the RuntimeError a task of its own raises, not the future's result."""
    other = asyncio.new_event_loop()
    try:
        seen: list[str] = []

        async def body(fut: asyncio.Future[int]) -> None:
            try:
                seen.append(repr(await fut))
            except RuntimeError as exc:
                seen.append("RuntimeError" if "different loop" in str(exc) else repr(exc))

        async def ends(fut: asyncio.Future[int]) -> None:
            fut.set_result(1)  # (after body's first step, before its own task's first one)

        with anyio.fail_after(TIMEOUT):
            plain_fut: asyncio.Future[int] = other.create_future()
            task = asyncio.create_task(body(plain_fut))
            await asyncio.create_task(ends(plain_fut))
            await task
            fut: asyncio.Future[int] = other.create_future()
            async with ThreadPoolTaskRunner() as runner:
                futures = [runner.submit(body, {"fut": fut}), runner.submit(ends, {"fut": fut})]
                for f in futures:
                    await f
    finally:
        other.close()
    assert seen[0] == "RuntimeError"  # a task of its own
    assert seen[1] == seen[0]


async def test_first_steps_keep_the_order_runs_were_queued_in_once_a_task_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of a task whose runs waited (a task of its own up front), then a run of a task
    that never waits: their bodies start in that order, as two ``asyncio.create_task``."""
    _remember(monkeypatch)
    order: list[str] = []
    entered = asyncio.Event()
    gate = asyncio.Event()

    async def waits(i: int) -> int:
        order.append(f"waits {i}")
        entered.set()
        await gate.wait()
        return i

    async def never(i: int) -> int:
        order.append(f"never {i}")
        return i

    with anyio.fail_after(TIMEOUT):
        plain = [asyncio.create_task(waits(1)), asyncio.create_task(never(2))]
        await plain[1]
        gate.set()
        await plain[0]
        assert order == ["waits 1", "never 2"]
        order.clear()
        gate.clear()
        entered.clear()
        async with ThreadPoolTaskRunner() as runner:
            first = runner.submit(waits, {"i": 0})
            await entered.wait()  # a run of `waits` waited in its first step
            order.clear()
            later = [runner.submit(waits, {"i": 1}), runner.submit(never, {"i": 2})]
            await later[1]
            gate.set()
            assert [await f for f in [first, *later]] == [0, 1, 2]
    assert order == ["waits 1", "never 2"]


async def test_what_a_run_that_waited_captured_is_freed_with_its_future(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A function made per submit (a closure over some data) whose run waited: once the run
    ended and its future is dropped, the data is freed, as with ``asyncio.create_task``."""
    _remember(monkeypatch)
    refs: list[weakref.ref[Any]] = []

    def make() -> Any:
        big = _Big()
        refs.append(weakref.ref(big))

        async def body() -> int:
            await asyncio.sleep(0)
            return id(big)

        return body

    with anyio.fail_after(TIMEOUT):
        task = asyncio.create_task(make()())
        await task
        del task
        gc.collect()
        assert refs[0]() is None  # a task of its own: freed
        async with ThreadPoolTaskRunner() as runner:
            fut = runner.submit(make())
            await fut
            del fut
            gc.collect()
            alive = refs[1]() is not None
    assert alive is False
