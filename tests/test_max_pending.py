"""Back-pressure (``max_pending``): a runner holding that many unfinished runs lets no more in
until one ends. Other threads wait in ``submit``; the runner's own loop awaits
``wait_for_room()`` (a submit there raises ``RunnerFullError`` instead of blocking the loop);
submits from inside the runner's runs always go in."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import signal
import threading
from typing import Any

import anyio
import pytest
from helpers import TIMEOUT, Peak, Stuck, ahold, double, hold, peak_of_doubling
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncflow
from asyncflow import (
    DaskTaskRunner,
    Future,
    ProcessPoolTaskRunner,
    TaskRunner,
    ThreadPoolTaskRunner,
    get_run_context,
    task,
)
from asyncflow._context import current_runner
from asyncflow._room import Room, _Waiter
from asyncflow.exceptions import RunnerFullError, UpstreamFailedError


class Observed(threading.Condition):
    """A condition that says when a thread starts to wait on it."""

    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def observe(runner: TaskRunner) -> Observed:
    """Watch the started runner's back-pressure for a thread that waits (set before any does)."""
    sched = runner._scheduler
    assert sched is not None
    assert sched.room is not None
    cond = Observed()
    sched.room._cond = cond
    return cond


# -- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), ("3", TypeError), (True, TypeError)]
)
def test_a_bad_max_pending_is_refused_naming_it(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_pending"):
        ThreadPoolTaskRunner(max_pending=value)


def test_max_pending_is_part_of_the_configuration() -> None:
    runner = ThreadPoolTaskRunner(max_workers=2, max_pending=5)
    assert runner.duplicate() == runner
    assert runner != ThreadPoolTaskRunner(max_workers=2, max_pending=6)
    assert runner != ThreadPoolTaskRunner(max_workers=2)
    assert ProcessPoolTaskRunner(max_pending=3).duplicate() == ProcessPoolTaskRunner(max_pending=3)
    dask = DaskTaskRunner(cluster_kwargs={"n_workers": 1}, max_pending=3)
    assert dask.duplicate() == dask
    assert dask != DaskTaskRunner(cluster_kwargs={"n_workers": 1})


# -- submits from other threads wait ------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_submit_from_a_script_waits_until_a_run_ends() -> None:
    first, second = Stuck(), Stuck()
    with ThreadPoolTaskRunner(max_workers=4, max_pending=2) as runner:
        cond = observe(runner)
        a = runner.submit(first.body)
        b = runner.submit(second.body)
        third: list[Future[int]] = []
        producer = threading.Thread(target=lambda: third.append(runner.submit(double, {"x": 21})))
        producer.start()
        assert cond.waiting.wait(TIMEOUT)  # it waits: both runs hold their places
        assert not third
        first.release()  # one run ends: the waiting submit goes in
        producer.join(TIMEOUT)
        assert not producer.is_alive()
        assert third[0].result(TIMEOUT) == 42
        second.release()
        assert (a.result(TIMEOUT), b.result(TIMEOUT)) == ("late", "late")
    stats = runner.statistics()
    assert (stats.submitted, stats.completed) == (3, 3)


@pytest.mark.timeout(60)
def test_a_script_never_holds_more_than_max_pending_unfinished_runs() -> None:
    peak = Peak()
    runner = ThreadPoolTaskRunner(max_workers=3, max_pending=4)
    with runner.subscribe(peak), runner:
        futures = [runner.submit(double, {"x": i}) for i in range(300)]
        futures += runner.map(double, {"x": range(3)})  # a map counts every run of it
        results = [f.result(TIMEOUT) for f in futures]
    assert results == [2 * i for i in range(300)] + [0, 2, 4]
    assert 1 <= peak.peak <= 4 + 2  # a map goes in whole once there is room for one run
    assert runner.statistics().completed == 303


@pytest.mark.timeout(60)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(1, 6),
    producers=st.integers(1, 4),
    runs=st.integers(0, 40),
    workers=st.integers(1, 4),
)
def test_producer_threads_stay_under_the_limit_and_lose_nothing(
    limit: int, producers: int, runs: int, workers: int
) -> None:
    peak = Peak()
    runner = ThreadPoolTaskRunner(max_workers=workers, max_pending=limit)
    results: list[list[int]] = [[] for _ in range(producers)]
    with runner.subscribe(peak), runner:

        def produce(k: int) -> None:
            futures = [runner.submit(double, {"x": k * 1000 + i}) for i in range(runs)]
            results[k] = [f.result(TIMEOUT) for f in futures]

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 4)
    assert results == [[2 * (k * 1000 + i) for i in range(runs)] for k in range(producers)]
    assert peak.peak <= limit
    assert peak.now == 0


@pytest.mark.timeout(30)
def test_ctrl_c_while_a_script_waits_for_room_cancels_the_runs_and_leaves() -> None:
    stuck = Stuck()

    def ctrl_c(cond: Observed) -> None:  # a real SIGINT, once the main thread waits for room
        assert cond.waiting.wait(TIMEOUT)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    runner = ThreadPoolTaskRunner(max_workers=2, max_pending=1)
    held: list[Future[str]] = []
    pressing: list[threading.Thread] = []

    def script() -> None:
        with runner:
            held.append(runner.submit(stuck.body))
            pressing.append(threading.Thread(target=ctrl_c, args=(observe(runner),)))
            pressing[0].start()
            runner.submit(double, {"x": 1})
            pytest.fail("the submit went in")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            script()
    finally:
        for t in pressing:
            t.join(TIMEOUT)
        signal.signal(signal.SIGINT, previous)
        stuck.release()  # (the abandoned thread body returns, and its thread with it)
    assert held[0].cancelled(), held[0].exception(0)
    assert runner.statistics().submitted == 1


@pytest.mark.timeout(30)
def test_a_map_goes_in_whole_once_there_is_room_for_one_run() -> None:
    stuck = Stuck()
    with ThreadPoolTaskRunner(max_workers=4, max_pending=2) as runner:
        cond = observe(runner)
        held = runner.submit(stuck.body)
        big = runner.map(double, {"x": range(5)})  # room for one: all five go in
        assert big.result(TIMEOUT) == [0, 2, 4, 6, 8]
        other = runner.submit(stuck.body)  # 2 unfinished now: the next map waits
        out: list[Any] = []
        producer = threading.Thread(target=lambda: out.append(runner.map(double, {"x": [1, 2]})))
        producer.start()
        assert cond.waiting.wait(TIMEOUT)
        stuck.release()
        producer.join(TIMEOUT)
        assert out[0].result(TIMEOUT) == [2, 4]
        assert (held.result(TIMEOUT), other.result(TIMEOUT)) == ("late", "late")


@pytest.mark.timeout(30)
def test_a_nested_submit_from_a_thread_body_never_waits() -> None:
    @task
    def parent(n: int) -> int:
        # Every unfinished run is a parent: a child that waited for room would never get it.
        return task(double).submit(n).result(TIMEOUT) + 1

    with ThreadPoolTaskRunner(max_workers=2, max_pending=2) as runner:
        parents = runner.map(parent, {"n": [1, 2]})
        assert parents.result(TIMEOUT) == [3, 5]
    assert runner.statistics().completed == 4


# -- the runner's own loop ----------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_submit_from_the_loop_of_a_full_runner_raises_and_loses_nothing() -> None:
    started = [asyncio.Event(), asyncio.Event()]
    gate = asyncio.Event()
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner(max_pending=2) as runner:
            held = [runner.submit(ahold, {"started": s, "gate": gate, "value": 7}) for s in started]
            with pytest.raises(RunnerFullError, match=r"max_pending=2.*wait_for_room"):
                runner.submit(double, {"x": 1})
            with pytest.raises(RunnerFullError):
                runner.map(double, {"x": [1]})
            assert isinstance(RunnerFullError("x"), RuntimeError)
            gate.set()
            await runner.wait_for_room()
            late = runner.submit(double, {"x": 4})  # right after the wait: it goes in
            assert [await f for f in held] == [7, 7]
            assert await late == 8
    stats = runner.statistics()
    assert (stats.submitted, stats.completed) == (3, 3)


@pytest.mark.anyio
async def test_wait_for_room_returns_at_once_with_room_or_without_a_limit() -> None:
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            await runner.wait_for_room()  # no limit
        async with ThreadPoolTaskRunner(max_pending=1) as runner:
            await runner.wait_for_room()
            assert await runner.submit(double, {"x": 2}) == 4
    with pytest.raises(RuntimeError, match="not started"):
        await ThreadPoolTaskRunner(max_pending=1).wait_for_room()


@pytest.mark.anyio
async def test_coroutines_waiting_for_room_go_in_one_by_one_in_order() -> None:
    gates = [asyncio.Event() for _ in range(3)]
    went_in = {name: asyncio.Event() for name in "ab"}
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner(max_pending=1) as runner:
            room = runner._scheduler.room  # type: ignore[union-attr]
            assert room is not None
            first = runner.submit(ahold, {"started": asyncio.Event(), "gate": gates[0]})
            subs: dict[str, Future[int]] = {}

            async def producer(name: str, gate: asyncio.Event, *, task_status: Any) -> None:
                task_status.started()
                await runner.wait_for_room()  # (waiting before the test goes on)
                subs[name] = runner.submit(ahold, {"started": asyncio.Event(), "gate": gate})
                went_in[name].set()

            async with anyio.create_task_group() as tg:
                await tg.start(producer, "a", gates[1])
                await tg.start(producer, "b", gates[2])
                assert len(room._waiters) == 2
                gates[0].set()  # one place: "a" gets it, "b" still waits
                await went_in["a"].wait()
                assert not went_in["b"].is_set()
                assert len(room._waiters) == 1
                gates[1].set()
                await went_in["b"].wait()
                gates[2].set()
            await first
            assert [await subs[k] for k in "ab"] == [0, 0]


@pytest.mark.anyio
async def test_room_given_to_a_cancelled_waiter_goes_to_the_next() -> None:
    gate = asyncio.Event()
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner(max_pending=1) as runner:
            room = runner._scheduler.room  # type: ignore[union-attr]
            assert room is not None
            held = runner.submit(ahold, {"started": asyncio.Event(), "gate": gate})

            async def waiting(started: asyncio.Event) -> None:
                started.set()
                await runner.wait_for_room()

            started = [asyncio.Event(), asyncio.Event()]
            first, second = (asyncio.ensure_future(waiting(s)) for s in started)
            for s in started:
                await s.wait()
            assert len(room._waiters) == 2
            gate.set()
            await held  # its end woke "first" (the room is kept for it) ...
            first.cancel()  # ... which is cancelled before it resumes: "second" gets the room
            await second
            assert first.cancelled()
            assert await runner.submit(double, {"x": 3}) == 6


@pytest.mark.anyio
async def test_a_nested_submit_from_a_coroutine_body_never_raises() -> None:
    @task
    async def parent(n: int) -> int:
        return await task(double).submit(n) + 1

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner(max_pending=1) as runner:
            assert await runner.submit(parent, {"n": 5}) == 11


# -- the room itself ----------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_closing_the_room_refuses_a_waiting_thread_but_not_a_nested_submit() -> None:
    room = Room(1, "r")
    cond = Observed()
    room._cond = cond
    room.enter(1, nested=False, on_loop=False)
    refused: list[BaseException] = []

    def wait() -> None:
        try:
            room.enter(1, nested=False, on_loop=False)
        except RuntimeError as exc:
            refused.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    assert cond.waiting.wait(TIMEOUT)
    room.close()  # the session is leaving
    t.join(TIMEOUT)
    assert [str(e) for e in refused] == ["runner 'r' is closed"]
    room.enter(1, nested=True, on_loop=False)  # a run's own submit still goes in
    assert room.count == 2


@pytest.mark.timeout(30)
def test_leaving_on_ctrl_c_refuses_the_producers_waiting_for_room() -> None:
    stuck = Stuck()
    ran: list[int] = []
    refused: list[str] = []
    answered = threading.Event()  # the producer's submit went in or was refused
    tidying = threading.Event()
    runner = ThreadPoolTaskRunner(max_workers=2, max_pending=2)

    def work(i: int) -> int:
        ran.append(i)
        return i

    async def tidy_on_cancel() -> None:  # keeps the session open until the producer is answered
        tidying.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await anyio.to_thread.run_sync(answered.wait, TIMEOUT)
            raise

    def producer() -> None:
        try:
            runner.submit(work, {"i": 1})
        except RuntimeError as exc:
            refused.append(str(exc))
        answered.set()

    def script() -> None:
        with runner:
            runner.submit(stuck.body)
            runner.submit(tidy_on_cancel)
            assert tidying.wait(TIMEOUT)
            cond = observe(runner)
            pressing.append(threading.Thread(target=producer))
            pressing[0].start()
            assert cond.waiting.wait(TIMEOUT)  # the producer waits for room
            raise KeyboardInterrupt

    pressing: list[threading.Thread] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            script()
    finally:
        for t in pressing:
            t.join(TIMEOUT)
        stuck.release()
    assert refused == ["runner 'threadpool' is closed"]
    assert ran == []  # the places the cancelled runs freed went to no one
    assert runner.statistics().submitted == 2


@pytest.mark.anyio
async def test_a_woken_coroutine_s_place_is_kept_from_producer_threads() -> None:
    gate = asyncio.Event()
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner(max_pending=1) as runner:
            held = runner.submit(ahold, {"started": asyncio.Event(), "gate": gate, "value": 1})
            later: list[Future[int]] = []

            async def producer() -> Future[int]:
                ready.set()
                await runner.wait_for_room()  # (waiting before the test goes on)
                # A thread submits now (it waits: the place is this coroutine's) ...
                cond = observe(runner)
                thread = threading.Thread(
                    target=lambda: later.append(runner.submit(double, {"x": 5}))
                )
                thread.start()
                assert cond.waiting.wait(TIMEOUT)
                threads.append(thread)
                return runner.submit(double, {"x": 2})  # ... and this one goes in

            threads: list[threading.Thread] = []
            ready = asyncio.Event()
            waiting = asyncio.ensure_future(producer())
            await ready.wait()
            gate.set()
            mine = await waiting
            assert await held == 1
            assert await mine == 4
            await anyio.to_thread.run_sync(threads[0].join, TIMEOUT)
            assert await later[0] == 10


@pytest.mark.timeout(30)
def test_a_coroutine_waiting_on_a_loop_closed_under_it_holds_no_place() -> None:
    stuck = Stuck()
    with ThreadPoolTaskRunner(max_pending=1) as runner:
        room = runner._scheduler.room  # type: ignore[union-attr]
        assert room is not None
        held = runner.submit(stuck.body)
        loop = asyncio.new_event_loop()
        waiting = loop.create_task(runner.wait_for_room())
        loop.run_until_complete(asyncio.sleep(0))  # it waits for room
        loop.close()  # (a loop torn down without finishing it)
        stuck.release()
        assert held.result(TIMEOUT) == "late"
        assert (room.count, room._held) == (0, 0)
        assert runner.submit(double, {"x": 1}).result(TIMEOUT) == 2
    waiting._log_destroy_pending = False  # type: ignore[attr-defined]  # (expected here)


@pytest.mark.anyio
async def test_wait_for_room_inside_one_of_the_runner_s_runs_returns_at_once() -> None:
    @task
    async def parent(n: int) -> int:
        await runner.wait_for_room()  # the run holds the only place: it must not wait for it
        await asyncflow.wait_for_room()
        return await task(double).submit(n) + 1

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner(max_pending=1) as runner:
            assert await runner.submit(parent, {"n": 5}) == 11


@pytest.mark.anyio
async def test_an_async_flow_waits_for_room_in_its_own_runner() -> None:
    peak = Peak()
    given = ThreadPoolTaskRunner(max_pending=2)
    given.subscribe(peak)

    @asyncflow.flow(task_runner=given)
    async def produce(n: int) -> list[int]:
        futures = []
        for i in range(n):
            await asyncflow.wait_for_room()  # (the flow's own copy of ``given``)
            futures.append(task(double).submit(i))
        return [await f for f in futures]

    with anyio.fail_after(TIMEOUT):
        assert await produce(20) == [2 * i for i in range(20)]
    assert 1 <= peak.peak <= 2
    with pytest.raises(RuntimeError, match="needs a runner"):
        await asyncflow.wait_for_room()


@pytest.mark.timeout(30)
def test_a_sync_flow_s_submits_wait_for_room() -> None:
    peak = Peak()
    given = ThreadPoolTaskRunner(max_workers=2, max_pending=3)
    given.subscribe(peak)

    @asyncflow.flow(task_runner=given)
    def produce(n: int) -> Any:  # (its futures come back as their results)
        return [task(double).submit(i) for i in range(n)]

    assert produce(30) == [2 * i for i in range(30)]
    assert 1 <= peak.peak <= 3


@pytest.mark.timeout(30)
def test_a_hook_of_a_run_that_never_started_runs_as_part_of_it() -> None:
    seen: list[Any] = []

    def report(t: Any, fut: Future[Any], state: Any) -> None:
        seen.append(get_run_context().task_run_id)
        seen.append(task(double).submit(3))  # nested: it neither waits nor is refused

    @task
    def fail() -> None:
        raise ValueError("no")

    after = task(double).with_options(on_failure=[report])
    with ThreadPoolTaskRunner(max_pending=1) as runner:
        upstream = runner.submit(fail)
        skipped = runner.submit(after, {"x": upstream})  # waits in the submit for room
        assert isinstance(skipped.exception(TIMEOUT), UpstreamFailedError)
    assert seen[0] == skipped.task_run_id
    assert seen[1].result(TIMEOUT) == 6


@pytest.mark.timeout(60)
def test_every_way_a_run_ends_gives_its_place_back() -> None:
    stuck = Stuck()
    calls: list[int] = []

    @task(retries=2, retry_delay=0)
    def flaky(i: int) -> int:
        calls.append(i)
        if len(calls) < 2:
            raise ConnectionError("once")
        return i

    @task
    def fail() -> None:
        raise ValueError("no")

    cached = task(double).with_options(cache_key=lambda *a: "same")
    runner = ThreadPoolTaskRunner(max_workers=2, max_pending=4)
    with runner:
        room = runner._scheduler.room  # type: ignore[union-attr]
        assert room is not None
        assert runner.map(double, {"x": range(50)}).result(TIMEOUT)[-1] == 98  # in batches
        assert runner.submit(flaky, {"i": 7}).result(TIMEOUT) == 7  # retried
        assert [runner.submit(cached, {"x": 1}).result(TIMEOUT) for _ in range(2)] == [2, 2]
        failed = runner.submit(fail)
        skipped = runner.map(double, {"x": [failed, failed]})  # skipped, upstream failed
        assert all(isinstance(f.exception(TIMEOUT), UpstreamFailedError) for f in skipped)
        running = runner.submit(stuck.body)
        assert stuck.started.wait(TIMEOUT)
        running.cancel()  # abandoned thread body
        queued = runner.submit(double, {"x": [running]})  # skipped: its input was cancelled
        queued.wait(TIMEOUT)
        assert queued.cancelled()
        stuck.release()
    assert room.count == 0
    assert room._held == 0


@pytest.mark.timeout(60)
def test_a_process_runner_holds_at_most_max_pending_unfinished_runs() -> None:
    peak = peak_of_doubling(ProcessPoolTaskRunner(max_workers=2, max_pending=3), 12)
    assert 1 <= peak.peak <= 3


@pytest.mark.timeout(30)
def test_a_submit_that_fails_gives_its_place_back() -> None:
    with ThreadPoolTaskRunner(max_pending=1) as runner:
        sched = runner._scheduler
        assert sched is not None
        room = sched.room
        assert room is not None
        real = sched.submit

        def refuse(*args: Any) -> None:
            raise RuntimeError("refused")

        sched.submit = refuse  # type: ignore[method-assign,assignment]
        with pytest.raises(RuntimeError, match="refused"):
            runner.submit(double, {"x": 1})
        assert room.count == 0
        sched.submit = real  # type: ignore[method-assign]
        assert runner.submit(double, {"x": 1}).result(TIMEOUT) == 2
    assert room.count == 0


# -- after a second review ----------------------------------------------------------------------
@pytest.mark.anyio
async def test_wait_for_room_in_a_run_inside_another_runner_s_block_returns_at_once() -> None:
    gate = asyncio.Event()

    @task
    async def parent(n: int) -> int:
        await asyncflow.wait_for_room()  # this run's runner is r1, whatever block is open
        return await task(double).submit(n) + 1

    with anyio.fail_after(TIMEOUT):
        async with (
            ThreadPoolTaskRunner(max_pending=1) as r1,
            ThreadPoolTaskRunner(max_pending=1) as r2,
        ):
            held = r2.submit(ahold, {"started": asyncio.Event(), "gate": gate})  # r2: full
            assert await r1.submit(parent, {"n": 2}) == 5
            gate.set()
            await held


@pytest.mark.timeout(30)
def test_a_hook_of_a_skipped_run_sees_its_own_context_not_its_upstream_s() -> None:
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    seen: list[tuple[int, str]] = []

    @task(retries=2, retry_delay=0)
    async def upstream() -> None:  # (its body runs in its driver's task, where it ends)
        who.set("set inside the upstream's body")
        raise ValueError("always")

    def report(t: Any, fut: Future[Any], state: Any) -> None:
        seen.append((get_run_context().attempt, who.get()))

    after = task(double).with_options(on_failure=[report])
    who.set("the submitter")
    with ThreadPoolTaskRunner() as runner:
        failing = runner.submit(upstream)
        skipped = runner.submit(after, {"x": failing})
        assert isinstance(skipped.exception(TIMEOUT), UpstreamFailedError)
    assert seen == [(1, "the submitter")]


class _RecordingLoop:
    """Stands for a waiter's loop on another thread: records whether the waiter was marked
    woken when its wake-up was handed to that loop (it may resume at once, there)."""

    def __init__(self) -> None:
        self.woken_then: list[bool] = []
        self.waiter: Any = None

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        self.woken_then.append(self.waiter.woken)


class _FutureOn:
    def __init__(self, loop: _RecordingLoop) -> None:
        self._loop = loop

    def get_loop(self) -> _RecordingLoop:
        return self._loop


def test_a_waiter_is_marked_woken_before_its_loop_can_resume_it() -> None:
    room = Room(1, "r")
    room.enter(1, nested=False, on_loop=False)
    loop = _RecordingLoop()
    waiter = _Waiter(_FutureOn(loop))  # type: ignore[arg-type]
    loop.waiter = waiter
    room._waiters.append(waiter)
    room.free(1)
    assert loop.woken_then == [True]
    assert room._held == 1


@pytest.mark.anyio
async def test_a_place_held_for_a_woken_coroutine_is_not_taken_once_the_room_closed() -> None:
    room = Room(1, "r")
    room.enter(1, nested=False, on_loop=True)
    ready = asyncio.Event()

    async def waiting() -> None:
        ready.set()
        await room.wait()
        room.enter(1, nested=False, on_loop=True)  # its submit, right after the wait

    with anyio.fail_after(TIMEOUT):
        waiter = asyncio.ensure_future(waiting())
        await ready.wait()
        room.free(1)  # woken: the place is held for it ...
        room.close()  # ... and the session leaves before it resumes
        with pytest.raises(RuntimeError, match="closed"):
            await waiter


@pytest.mark.anyio
async def test_a_done_callback_s_submit_is_not_a_nested_one_of_the_run_that_ended() -> None:
    gate = asyncio.Event()
    outcomes: list[str] = []
    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner(max_pending=1) as runner:
            ended = runner.submit(ahold, {"started": asyncio.Event(), "gate": gate})

            def submit_next(f: Future[Any]) -> None:  # (the run's end woke the producer first)
                try:
                    runner.submit(double, {"x": 1})
                    outcomes.append("went in")
                except RunnerFullError:
                    outcomes.append("full")

            ended.add_done_callback(submit_next)
            ready = asyncio.Event()

            async def producer() -> int:
                ready.set()
                await runner.wait_for_room()
                value: int = await runner.submit(double, {"x": 4})
                return value

            produced = asyncio.ensure_future(producer())
            await ready.wait()
            gate.set()
            assert await produced == 8
            await ended
    assert outcomes == ["full"]  # the place was the producer's: the callback is not the run


@pytest.mark.timeout(30)
def test_a_callback_a_body_adds_to_a_final_future_runs_as_part_of_the_body() -> None:
    box: list[Future[int]] = []
    went_in: list[Future[int]] = []

    def body() -> str:
        # Called at once, here: its submit is this run's nested one (waiting for room would
        # wait for this very run to end).
        box[0].add_done_callback(lambda f: went_in.append(runner.submit(double, {"x": 5})))
        return "returned"

    with ThreadPoolTaskRunner(max_pending=1) as runner:
        box.append(runner.submit(double, {"x": 1}))
        box[0].wait(TIMEOUT)
        assert runner.submit(body).result(TIMEOUT) == "returned"
        assert went_in[0].result(TIMEOUT) == 10


@pytest.mark.anyio
async def test_a_submit_that_would_wait_for_room_for_ever_on_a_runner_s_loop_raises() -> None:
    gate = asyncio.Event()
    outcome: list[str] = []

    @asyncflow.flow(task_runner=ThreadPoolTaskRunner(max_pending=1))
    def inner(upstream: Future[int]) -> None:
        first = task(double).submit(upstream)  # needs the async block's run, on this loop
        try:
            task(double).submit(1)  # full: its place frees only once ``upstream`` ran
        except RuntimeError as exc:
            outcome.append(str(exc))
        first.cancel()  # (leaving the flow would wait for it: that is not refused)

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            upstream = runner.submit(ahold, {"started": asyncio.Event(), "gate": gate, "value": 4})
            inner(upstream)
            gate.set()
            assert await upstream == 4
    assert len(outcome) == 1
    assert "is full (max_pending)" in outcome[0]
    assert "run of task 'ahold'" in outcome[0]


@pytest.mark.anyio
async def test_a_submit_on_a_runner_s_loop_waits_for_room_when_a_run_can_still_end() -> None:
    gate = asyncio.Event()
    release = threading.Event()
    results: list[int] = []

    @asyncflow.flow(task_runner=ThreadPoolTaskRunner(max_pending=2))
    def inner(upstream: Future[int]) -> None:
        first = task(double).submit(upstream)  # needs the async block's run, on this loop
        other = task(hold).submit(started=lambda: None, gate=release, value=3)  # can end
        cond = observe(current_runner.get())

        def release_once_waiting() -> None:
            if cond.waiting.wait(TIMEOUT):
                release.set()

        opener = threading.Thread(target=release_once_waiting)
        opener.start()
        third = task(double).submit(5)  # full: it waits until ``other`` ends
        opener.join(TIMEOUT)
        results.extend([other.result(TIMEOUT), third.result(TIMEOUT)])
        first.cancel()  # (leaving the flow would wait for it)

    with anyio.fail_after(TIMEOUT):
        async with ThreadPoolTaskRunner() as runner:
            upstream = runner.submit(ahold, {"started": asyncio.Event(), "gate": gate, "value": 4})
            inner(upstream)
            gate.set()
            assert await upstream == 4
    assert results == [3, 10]


@pytest.mark.timeout(30)
def test_a_wait_collected_while_its_thread_holds_the_room_lock_does_not_hang() -> None:
    # (A garbage collection during a walk under the room's lock can close an abandoned wait,
    # whose clean-up takes the lock again on the same thread.)
    room = Room(1, "r")
    room.enter(1, nested=False, on_loop=False)
    loop = asyncio.new_event_loop()
    waiting = loop.create_task(room.wait())
    loop.run_until_complete(asyncio.sleep(0))  # it waits
    loop.close()  # (abandoned: its loop is gone)
    room.free(1)  # a place: the wait on the closed loop is dropped from the room
    assert (len(room._waiters), room._held) == (0, 0)
    waiting._log_destroy_pending = False  # type: ignore[attr-defined]  # (expected here)
    with room._cond:
        del waiting
        gc.collect()  # closes the wait: its clean-up takes the lock, held here
    room.enter(1, nested=False, on_loop=False)
    assert (room.count, room._held) == (1, 0)
