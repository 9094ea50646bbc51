"""Concurrency limits: runner-wide, per tag, per map call; waiting runs hold no thread or task."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from helpers import Stuck

from asyncflow import (
    Future,
    ThreadPoolTaskRunner,
    as_completed_async,
    task,
    unmapped,
    wait_async,
)
from asyncflow._context import current_future
from asyncflow.exceptions import TaskCancelledError, TaskTimeoutError

TIMEOUT = 5.0  # seconds: the longest any single wait in these tests may take


# -- helpers -----------------------------------------------------------------------------------
def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Meter:
    """Counts bodies inside it (now and at the peak); they stay inside until ``open()``.

    Sync bodies wait on a condition; coroutine bodies wait on a future of their own loop,
    woken thread-safely. Nothing here sleeps: the test decides when bodies may leave.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.now = 0
        self.peak = 0
        self.entered = 0
        self._open = False
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def _enter(self) -> None:
        with self._cond:
            self.now += 1
            self.entered += 1
            self.peak = max(self.peak, self.now)
            self._cond.notify_all()

    def _leave(self) -> None:
        with self._cond:
            self.now -= 1
            self._cond.notify_all()

    def body(self, i: int) -> int:
        self._enter()
        try:
            with self._cond:
                if not self._cond.wait_for(lambda: self._open, TIMEOUT):
                    raise TimeoutError("the meter never opened")
            return i
        finally:
            self._leave()

    async def abody(self, i: int) -> int:
        self._enter()
        try:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            with self._cond:
                if self._open:
                    waiter.set_result(None)
                else:
                    self._async_waiters.append((loop, waiter))
            with anyio.fail_after(TIMEOUT):
                await waiter
            return i
        finally:
            self._leave()

    def open(self) -> None:
        with self._cond:
            self._open = True
            waiters, self._async_waiters = self._async_waiters, []
            self._cond.notify_all()
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(_wake, waiter)

    def wait_inside(self, n: int) -> None:
        """Block until exactly ``n`` bodies are inside (from a thread other than the loop's)."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.now == n, TIMEOUT), (self.now, n)


@pytest.fixture
def meter() -> Iterator[Meter]:
    m = Meter()
    try:
        yield m
    finally:
        m.open()  # never leave a body waiting


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asyncflow-threadpool-")]


def instant(x: int) -> int:
    return x


# -- max_concurrency ---------------------------------------------------------------------------
def test_max_concurrency_bounds_sync_and_async_bodies_together(meter: Meter) -> None:
    with ThreadPoolTaskRunner(max_workers=8, max_concurrency=3) as runner:
        futures = [runner.submit(meter.body if i % 2 else meter.abody, {"i": i}) for i in range(10)]
        meter.wait_inside(3)
        stats = runner.statistics()  # a round trip through the loop
        assert stats.running == 3
        assert stats.queued == 7
        assert meter.now == 3
        meter.open()
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(10))
    assert meter.peak == 3
    assert meter.entered == 10


def test_runs_waiting_for_a_slot_hold_no_thread(meter: Meter) -> None:
    with ThreadPoolTaskRunner(max_workers=8, max_concurrency=1) as runner:
        futures = [runner.submit(meter.body, {"i": i}) for i in range(50)]
        meter.wait_inside(1)
        stats = runner.statistics()
        assert stats.queued == 49
        assert len(worker_threads()) == 1
        meter.open()
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(50))
        assert len(worker_threads()) == 1  # one body at a time never needed a second thread
    assert meter.peak == 1


def test_runs_waiting_for_a_slot_hold_no_asyncio_task(meter: Meter) -> None:
    async def tasks_on_the_loop() -> int:
        return len(asyncio.all_tasks())

    with ThreadPoolTaskRunner(max_workers=4, tag_limits={"db": 1}) as runner:
        # Retries make these runs go through the policy driver (an asyncio task per run once
        # it starts): the 29 waiting for the "db" slot must not have one yet.
        db = task(tags=["db"], retries=1)
        futures = [runner.submit(db(meter.body), {"i": i}) for i in range(30)]
        meter.wait_inside(1)
        assert runner.submit(tasks_on_the_loop).result(timeout=TIMEOUT) <= 3
        meter.open()
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(30))
    assert meter.peak == 1


@pytest.mark.anyio
async def test_max_concurrency_in_async_with() -> None:
    inside = 0
    peak = 0
    full = asyncio.Event()
    gate = asyncio.Event()

    async def body(i: int) -> int:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        if inside == 2:
            full.set()
        try:
            await gate.wait()
        finally:
            inside -= 1
        return i

    async with ThreadPoolTaskRunner(max_concurrency=2) as runner:
        futures = runner.map(body, {"i": range(6)})
        with anyio.fail_after(TIMEOUT):
            await full.wait()
        for _ in range(3):
            await asyncio.sleep(0)  # yield: a third body would start now if it could
        stats = runner.statistics()
        assert (stats.running, stats.queued) == (2, 4)
        assert inside == 2
        gate.set()
        with anyio.fail_after(TIMEOUT):
            assert await futures == list(range(6))
    assert peak == 2


def test_a_cancelled_run_waiting_for_a_slot_never_starts_and_frees_nothing_it_did_not_hold(
    meter: Meter,
) -> None:
    ran: list[int] = []

    def record(i: int) -> int:
        ran.append(i)
        return i

    with ThreadPoolTaskRunner(max_workers=4, max_concurrency=2) as runner:
        holders = [runner.submit(meter.body, {"i": i}) for i in range(2)]
        meter.wait_inside(2)
        waiting = [runner.submit(record, {"i": i}) for i in range(3)]
        assert waiting[0].cancel() is True
        waiting[0].wait(TIMEOUT)
        assert waiting[0].state.is_cancelled()
        stats = runner.statistics()
        assert (stats.running, stats.queued) == (2, 2)  # no slot was handed out by the cancel
        meter.open()
        assert [f.result(timeout=TIMEOUT) for f in holders] == [0, 1]
        assert [f.result(timeout=TIMEOUT) for f in waiting[1:]] == [1, 2]
    assert sorted(ran) == [1, 2]
    assert meter.peak == 2


def test_a_failing_run_gives_its_slot_back() -> None:
    def maybe_fail(i: int) -> int:
        if i % 2 == 0:
            raise ValueError(f"run {i} failed")
        return i

    with ThreadPoolTaskRunner(max_concurrency=1, tag_limits={"db": 1}) as runner:
        futures = runner.map(task(tags=["db"])(maybe_fail), {"i": range(6)})
        futures.wait(TIMEOUT)
        assert [f.state.is_completed() for f in futures] == [False, True] * 3
        assert runner.submit(instant, {"x": 9}).result(timeout=TIMEOUT) == 9


# -- tag limits --------------------------------------------------------------------------------
def test_tag_limits_bound_runs_with_the_tag_only() -> None:
    db_meter, other_meter = Meter(), Meter()
    try:
        with ThreadPoolTaskRunner(max_workers=10, tag_limits={"db": 2}) as runner:
            db = task(tags=["db", "etl"])
            tagged = [
                runner.submit(db(db_meter.body if i % 2 else db_meter.abody), {"i": i})
                for i in range(6)
            ]
            untagged = [
                runner.submit(
                    task(tags=["etl"])(other_meter.body if i % 2 else other_meter.abody),
                    {"i": i},
                )
                for i in range(4)
            ]
            db_meter.wait_inside(2)
            other_meter.wait_inside(4)  # untagged runs are not held back by the db limit
            stats = runner.statistics()
            assert (stats.running, stats.queued) == (6, 4)
            db_meter.open()
            other_meter.open()
            assert [f.result(timeout=TIMEOUT) for f in tagged] == list(range(6))
            assert [f.result(timeout=TIMEOUT) for f in untagged] == list(range(4))
    finally:
        db_meter.open()
        other_meter.open()
    assert db_meter.peak == 2
    assert other_meter.peak == 4


def test_a_run_with_several_limited_tags_respects_each(meter: Meter) -> None:
    a_meter, b_meter = Meter(), Meter()

    def both(i: int) -> int:
        a_meter._enter()
        b_meter._enter()
        try:
            return meter.body(i)
        finally:
            a_meter._leave()
            b_meter._leave()

    def only(m: Meter, i: int) -> int:
        m._enter()
        try:
            return meter.body(i)
        finally:
            m._leave()

    with ThreadPoolTaskRunner(max_workers=10, tag_limits={"a": 2, "b": 1}) as runner:
        ab = task(tags=["a", "b"])
        futures: list[Future[int]] = []
        for i in range(4):
            futures.append(runner.submit(ab(both), {"i": i}))
            futures.append(runner.submit(task(tags=["a"])(only), {"m": a_meter, "i": i}))
            futures.append(runner.submit(task(tags=["b"])(only), {"m": b_meter, "i": i}))
        meter.wait_inside(2)  # e.g. one "a,b" run and one "a" run
        meter.open()
        assert len([f.result(timeout=TIMEOUT) for f in futures]) == 12
    assert a_meter.peak <= 2
    assert b_meter.peak == 1
    assert meter.entered == 12


def test_max_concurrency_and_tag_limits_together(meter: Meter) -> None:
    with ThreadPoolTaskRunner(max_workers=10, max_concurrency=3, tag_limits={"db": 1}) as runner:
        db = task(tags=["db"])
        tagged = [runner.submit(db(meter.body), {"i": i}) for i in range(3)]
        plain = [runner.submit(meter.abody, {"i": 10 + i}) for i in range(4)]
        meter.wait_inside(3)  # one db run and two others: the runner-wide bound
        stats = runner.statistics()
        assert (stats.running, stats.queued) == (3, 4)
        meter.open()
        assert [f.result(timeout=TIMEOUT) for f in tagged] == [0, 1, 2]
        assert [f.result(timeout=TIMEOUT) for f in plain] == [10, 11, 12, 13]
    assert meter.peak == 3


# -- max_in_flight -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["runner.map", "task.map"])
def test_max_in_flight_bounds_one_map_call(how: str, meter: Meter) -> None:
    with ThreadPoolTaskRunner(max_workers=8) as runner:
        if how == "runner.map":
            futures = runner.map(meter.body, {"i": range(8)}, max_in_flight=2)
        else:
            futures = task(meter.abody).map(range(8), max_in_flight=2)
        meter.wait_inside(2)
        stats = runner.statistics()
        assert (stats.running, stats.queued) == (2, 6)
        meter.open()
        assert futures.result(timeout=TIMEOUT) == list(range(8))
    assert meter.peak == 2


def test_max_in_flight_is_per_map_call(meter: Meter) -> None:
    with ThreadPoolTaskRunner(max_workers=8) as runner:
        first = runner.map(meter.body, {"i": range(4)}, max_in_flight=1)
        second = runner.map(meter.abody, {"i": range(4, 8)}, max_in_flight=1)
        others = [runner.submit(meter.body, {"i": 8})]
        meter.wait_inside(3)  # one of each map, and the unlimited run
        stats = runner.statistics()
        assert (stats.running, stats.queued) == (3, 6)
        meter.open()
        assert first.result(TIMEOUT) + second.result(TIMEOUT) == list(range(8))
        assert others[0].result(timeout=TIMEOUT) == 8
    assert meter.peak == 3


# -- abandoned thread bodies and limits --------------------------------------------------------


def returns_whether_set(event: threading.Event) -> bool:
    return event.is_set()


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_an_abandoned_thread_body_keeps_its_tag_slot_until_it_returns(how: str) -> None:
    # A limit of 1 on "db" says at most one db body runs at a time. A body abandoned by a
    # timeout or a cancel still runs (it still holds its connection, say), so the next db run
    # must wait for it to return, as it waits for a worker slot.
    stuck = Stuck()
    with ThreadPoolTaskRunner(max_workers=4, tag_limits={"db": 1}) as runner:
        try:
            options: dict[str, Any] = {"tags": ["db"]}
            if how == "timeout":
                options["timeout"] = 0.05
            first = runner.submit(task(**options)(stuck.body))
            assert stuck.started.wait(TIMEOUT)
            if how == "cancel":
                first.cancel()
            first.wait(TIMEOUT)
            expected = TaskTimeoutError if how == "timeout" else TaskCancelledError
            with pytest.raises(expected):
                first.result()
            assert not stuck.returned.is_set()
            nxt = runner.submit(task(tags=["db"])(returns_whether_set), {"event": stuck.returned})
            stats = runner.statistics()  # a round trip through the loop: nxt is registered
            assert nxt.state.is_pending(), "the next db run started beside the abandoned one"
            assert (stats.running, stats.queued) == (0, 1)
            stuck.gate.set()
            assert nxt.result(timeout=TIMEOUT) is True  # it ran after the abandoned body
        finally:
            stuck.gate.set()


# -- bad values --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be >= 1, got 0"),
        ({"max_concurrency": -3}, ValueError, "max_concurrency must be >= 1"),
        ({"max_concurrency": "2"}, TypeError, "max_concurrency must be a positive int"),
        ({"max_concurrency": 2.0}, TypeError, "max_concurrency must be a positive int"),
        ({"max_concurrency": True}, TypeError, "max_concurrency must be a positive int"),
        ({"tag_limits": {"db": 0}}, ValueError, r"tag_limits\['db'\] must be >= 1, got 0"),
        ({"tag_limits": {"db": "2"}}, TypeError, r"tag_limits\['db'\] must be a positive int"),
        ({"tag_limits": {"db": None}}, TypeError, r"tag_limits\['db'\] must be a positive int"),
        ({"tag_limits": [("db", 2)]}, TypeError, "tag_limits must be a dict"),
        ({"tag_limits": {1: 2}}, TypeError, "tag_limits keys must be tag strings"),
    ],
    ids=repr,
)
def test_invalid_limits_fail_at_runner_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"ThreadPoolTaskRunner: {message}"):
        ThreadPoolTaskRunner(**kwargs)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (0, ValueError, "max_in_flight must be >= 1, got 0"),
        (-1, ValueError, "max_in_flight must be >= 1"),
        (1.5, TypeError, "max_in_flight must be a positive int"),
        ("2", TypeError, "max_in_flight must be a positive int"),
    ],
    ids=repr,
)
def test_invalid_max_in_flight_fails_before_anything_is_submitted(
    bad: Any, error: type[Exception], message: str
) -> None:
    with ThreadPoolTaskRunner() as runner:
        calls: list[Callable[[], object]] = [
            lambda: runner.map(instant, {"x": [1, 2]}, max_in_flight=bad),
            lambda: task(instant).map([1, 2], max_in_flight=bad),
        ]
        for call in calls:
            with pytest.raises(error, match=message):
                call()
        assert runner.statistics().submitted == 0
        assert runner.map(instant, {"x": [1, 2]}, max_in_flight=1).result(TIMEOUT) == [1, 2]


def test_limits_are_part_of_the_configuration() -> None:
    runner = ThreadPoolTaskRunner(max_workers=3, max_concurrency=2, tag_limits={"db": 1})
    twin = runner.duplicate()
    assert twin == runner
    assert twin is not runner
    assert twin != ThreadPoolTaskRunner(max_workers=3, max_concurrency=2, tag_limits={"db": 2})
    assert twin != ThreadPoolTaskRunner(max_workers=3, tag_limits={"db": 1})
    with twin:
        assert twin.submit(instant, {"x": 1}).result(timeout=TIMEOUT) == 1


# -- a run waiting for another lends its limits (no deadlock on nested submits) ----------------
@task
async def async_child(x: int) -> int:
    return x + 1


@task
async def async_parent(x: int) -> int:
    return await async_child.submit(x) * 10


@task
async def async_parent_of_a_list(x: int, how: str) -> list[int]:
    children = async_child.map(x=[x, x + 1])
    if how == "list":
        return await children
    if how == "wait":
        await wait_async(children)
        return children.result()
    return sorted([f.result() async for f in as_completed_async(children)])


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["list", "wait", "completed"])
async def test_an_async_parent_waiting_for_a_list_of_children_lends_its_slot(how: str) -> None:
    async with ThreadPoolTaskRunner(max_concurrency=1) as runner:
        fut = runner.submit(async_parent_of_a_list, {"x": 1, "how": how})
        with anyio.fail_after(TIMEOUT):
            assert await fut == [2, 3]


@task
async def gated_async_child(x: int, gate: asyncio.Event, started: asyncio.Event) -> int:
    started.set()  # (it runs: its parent lent it the slot)
    await gate.wait()
    return x


@task
async def parent_cancelled_while_waiting_for_a_list(how: str) -> bool:
    run = current_future.get()
    assert run is not None
    assert run._policy is not None
    gate, started = asyncio.Event(), asyncio.Event()
    children = gated_async_child.map(gate=unmapped(gate), started=unmapped(started), x=[1])

    async def wait_for_them() -> object:
        return await children if how == "list" else await wait_async(children)

    waiting = asyncio.ensure_future(wait_for_them())
    await started.wait()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    lent: bool = run._policy.lent  # its limits: back with the body, which goes on
    gate.set()
    await children
    return lent


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["list", "wait"])
async def test_a_wait_for_a_list_cancelled_gives_the_limits_back_to_its_body(how: str) -> None:
    async with ThreadPoolTaskRunner(max_concurrency=1) as runner:
        fut = runner.submit(parent_cancelled_while_waiting_for_a_list, {"how": how})
        with anyio.fail_after(TIMEOUT):
            assert await fut is False


@task(tags=["db"])
def db_child(x: int) -> int:
    return x + 1


@task(tags=["db"])
def db_parent(x: int) -> int:
    return db_child.submit(x).result(timeout=TIMEOUT) * 10


@pytest.mark.anyio
async def test_an_async_parent_awaiting_its_child_lends_its_slot() -> None:
    # With one slot, the parent holds it while it awaits the child: without lending, the
    # child could never start.
    async with ThreadPoolTaskRunner(max_concurrency=1) as runner:
        futures = [runner.submit(async_parent, {"x": i}) for i in range(3)]
        with anyio.fail_after(TIMEOUT):
            assert [await f for f in futures] == [10, 20, 30]


def test_a_sync_parent_blocking_on_its_child_lends_its_tag_slot() -> None:
    with ThreadPoolTaskRunner(max_workers=4, tag_limits={"db": 1}) as runner:
        futures = [runner.submit(db_parent, {"x": i}) for i in range(3)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [10, 20, 30]


def test_lent_slots_still_bound_the_bodies_that_run(meter: Meter) -> None:
    # Parents block on children that wait at the meter: at most one body holds the slot at a
    # time, lent or not, so the meter never sees two children inside together.
    @task
    def metered_child(i: int) -> int:
        return meter.body(i)

    @task
    def parent(i: int) -> int:
        return metered_child.submit(i).result(timeout=TIMEOUT)

    with ThreadPoolTaskRunner(max_workers=4, max_concurrency=1) as runner:
        futures = [runner.submit(parent, {"i": i}) for i in range(4)]
        meter.wait_inside(1)
        meter.open()
        assert [f.result(timeout=TIMEOUT) for f in futures] == [0, 1, 2, 3]
    assert meter.peak == 1
