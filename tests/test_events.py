"""Task run events: the sequence each run emits, who receives them, and what listening costs."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import logging
import os
import threading
import uuid
from typing import Any

import anyio
import pytest
from helpers import TIMEOUT, ahold, collect_holding, noop, park_and_close

import asyncflow
from asyncflow import (
    MemoryCacheStore,
    ProcessPoolTaskRunner,
    RunRecorder,
    StateType,
    TaskEvent,
    ThreadPoolTaskRunner,
    flow,
    get_run_context,
    task,
)
from asyncflow._events import _event
from asyncflow.exceptions import UpstreamFailedError

pytestmark = pytest.mark.anyio


class FakeSleep:
    """The runner's wait between attempts: returns at once."""

    async def __call__(self, delay: float) -> None:
        return None


def steps(events: list[TaskEvent], run_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """What the events of one run say, in order: (kind, attempt, state name, error)."""
    return [(e.kind, e.attempt, e.state_name, e.error) for e in events if e.run_id == run_id]


def fail() -> None:
    raise ValueError("no luck")


async def afail() -> None:
    raise ValueError("no luck")


def flaky(failures: int) -> str:
    attempt = get_run_context().attempt
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt}")
    return "ok"


async def aflaky(failures: int) -> str:
    return flaky(failures)


def thread_name() -> str:
    return threading.current_thread().name


def pid() -> int:
    return os.getpid()


async def apid() -> int:
    return os.getpid()


def listening(sched: Any) -> bool:
    """Whether the scheduler's emission points see a hub (None: no record is built)."""
    return sched.events is not None


# -- the sequence of one run -------------------------------------------------------------------
async def test_a_completed_coroutine_run_is_submitted_started_on_the_loop_then_finished() -> None:
    events: list[TaskEvent] = []
    runner = ThreadPoolTaskRunner(max_workers=1)
    runner.subscribe(events.append)
    async with runner:
        f = runner.submit(task(tags=["io"])(noop))
        await f
    assert steps(events, f.task_run_id) == [
        ("submitted", 0, None, None),
        ("started", 1, None, None),
        ("finished", 1, "Completed", None),
    ]
    submitted, started, finished = events
    assert (submitted.task_name, submitted.upstream) == ("noop", ())
    assert submitted.tags == frozenset({"io"})
    assert started.worker == "loop"
    assert finished.state is StateType.COMPLETED
    assert submitted.timestamp <= started.timestamp <= finished.timestamp


@pytest.mark.parametrize("body", [fail, afail], ids=["thread", "coro"])
async def test_a_failed_run_finishes_failed_with_its_error(body: Any) -> None:
    events: list[TaskEvent] = []
    runner = ThreadPoolTaskRunner(max_workers=1)
    runner.subscribe(events.append)
    async with runner:
        f = runner.submit(body)
        with pytest.raises(ValueError, match="no luck"):
            await f
    assert steps(events, f.task_run_id) == [
        ("submitted", 0, None, None),
        ("started", 1, None, None),
        ("finished", 1, "Failed", "ValueError: no luck"),
    ]
    assert events[-1].state is StateType.FAILED


@pytest.mark.parametrize("body", [flaky, aflaky], ids=["thread", "coro"])
async def test_a_retried_run_starts_once_per_attempt_with_retrying_in_between(body: Any) -> None:
    events: list[TaskEvent] = []
    runner = ThreadPoolTaskRunner(max_workers=1)
    runner._sleep = FakeSleep()
    runner.subscribe(events.append)
    async with runner:
        f = runner.submit(task(retries=3)(body), {"failures": 2})
        assert await f == "ok"
    assert steps(events, f.task_run_id) == [
        ("submitted", 0, None, None),
        ("started", 1, None, None),
        ("retrying", 1, "Retrying", "ConnectionError: attempt 1"),
        ("started", 2, None, None),
        ("retrying", 2, "Retrying", "ConnectionError: attempt 2"),
        ("started", 3, None, None),
        ("finished", 3, "Completed", None),
    ]
    assert {e.state for e in events if e.kind == "retrying"} == {StateType.RETRYING}
    workers = {e.worker for e in events if e.kind == "started"}
    assert workers == ({"loop"} if body is aflaky else {"thread asyncflow-threadpool-0"})


async def test_a_run_cancelled_while_it_waits_is_cancelled_without_starting() -> None:
    events: list[TaskEvent] = []
    runner = ThreadPoolTaskRunner(max_workers=1)
    runner.subscribe(events.append)
    started, gate = asyncio.Event(), asyncio.Event()
    async with runner:
        up = runner.submit(ahold, {"started": started, "gate": gate})
        down = runner.submit(noop, wait_for=[up])
        await started.wait()
        assert down.cancel()
        gate.set()
        await up
    mine = [e for e in events if e.run_id == down.task_run_id]
    assert [(e.kind, e.attempt, e.state_name) for e in mine] == [
        ("submitted", 0, None),
        ("cancelled", 0, "Cancelled"),
    ]
    assert mine[0].upstream == (up.task_run_id,)
    last = mine[-1]
    assert last.state is StateType.CANCELLED
    assert last.error is not None
    assert last.error.startswith("TaskCancelledError")


async def test_a_run_whose_upstream_failed_finishes_upstream_failed_without_starting() -> None:
    events: list[TaskEvent] = []
    runner = ThreadPoolTaskRunner(max_workers=1)
    runner.subscribe(events.append)
    async with runner:
        up = runner.submit(afail)
        down = runner.submit(task(name="join")(lambda a, b: None), {"a": up, "b": up})
        with pytest.raises(UpstreamFailedError):
            await down
    kinds = steps(events, down.task_run_id)
    assert [k[:3] for k in kinds] == [
        ("submitted", 0, None),
        ("finished", 0, "UpstreamFailed"),
    ]
    assert kinds[-1][3] is not None
    assert kinds[-1][3].startswith("UpstreamFailedError")
    submitted = next(e for e in events if e.run_id == down.task_run_id)
    assert submitted.upstream == (up.task_run_id,)  # one entry, though it is used twice


# -- where an attempt runs ---------------------------------------------------------------------
async def test_started_names_the_worker_thread_that_ran_the_body() -> None:
    events: list[TaskEvent] = []
    runner = ThreadPoolTaskRunner(max_workers=2)
    runner.subscribe(events.append)
    async with runner:
        futures = [runner.submit(thread_name) for _ in range(6)]
        names = [await f for f in futures]
    for f, name in zip(futures, names, strict=True):
        (started,) = (e for e in events if e.run_id == f.task_run_id and e.kind == "started")
        assert started.worker == f"thread {name}"
        assert steps(events, f.task_run_id)[-1][:3] == ("finished", 1, "Completed")


@pytest.mark.parametrize("body", [pid, apid], ids=["sync", "coro"])
def test_started_names_the_worker_process_that_ran_the_body(body: Any) -> None:
    events: list[TaskEvent] = []
    runner = ProcessPoolTaskRunner(max_workers=1)
    runner.subscribe(events.append)
    with runner:
        f = runner.submit(body)
        worker_pid = f.result(timeout=TIMEOUT)
    assert worker_pid != os.getpid()
    assert steps(events, f.task_run_id) == [
        ("submitted", 0, None, None),
        ("started", 1, None, None),
        ("finished", 1, "Completed", None),
    ]
    assert events[1].worker == f"process {worker_pid}"


def test_a_crashed_process_run_finishes_crashed() -> None:
    events: list[TaskEvent] = []
    runner = ProcessPoolTaskRunner(max_workers=1)
    runner.subscribe(events.append)
    with runner:
        f = runner.submit(os._exit, {"status": 3})
        f.wait(TIMEOUT)
    assert [k[:3] for k in steps(events, f.task_run_id)] == [
        ("submitted", 0, None),
        ("started", 1, None),
        ("finished", 1, "Crashed"),
    ]
    assert events[-1].state is StateType.CRASHED
    assert events[-1].error is not None
    assert events[-1].error.startswith("WorkerCrashedError")


# -- subscribers -------------------------------------------------------------------------------
def test_subscribers_are_called_on_the_loop_thread_in_every_later_session() -> None:
    seen: list[tuple[str, int]] = []
    runner = ThreadPoolTaskRunner(max_workers=1)
    runner.subscribe(lambda e: seen.append((e.kind, threading.get_ident())))
    loops = []
    for _ in range(2):
        with runner:
            sched = runner._scheduler
            assert sched is not None
            loops.append(sched.thread_id)
            runner.submit(noop).result(timeout=TIMEOUT)
    assert [kind for kind, _ in seen] == ["submitted", "started", "finished"] * 2
    assert [ident for _, ident in seen] == [loops[0]] * 3 + [loops[1]] * 3


async def test_a_subscriber_attached_during_a_session_sees_the_runs_from_then_on() -> None:
    events: list[TaskEvent] = []
    async with ThreadPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(noop)
        await before
        runner.subscribe(events.append)
        after = runner.submit(noop)
        await after
    assert {e.run_id for e in events} == {after.task_run_id}
    assert [e.kind for e in events] == ["submitted", "started", "finished"]


async def test_an_unsubscribed_callback_gets_nothing_more_and_listening_costs_nothing() -> None:
    events: list[TaskEvent] = []
    async with ThreadPoolTaskRunner(max_workers=1) as runner:
        sched = runner._scheduler
        assert sched is not None
        assert not listening(sched)  # nobody listens: the emission points see None
        with runner.subscribe(events.append) as subscription:
            assert listening(sched)
            await runner.submit(noop)
        assert not listening(sched)
        await runner.submit(noop)
        other = runner.subscribe(events.append)
        other.close()
        other.close()  # closing twice is harmless
        assert not listening(sched)
        await runner.submit(noop)
    assert [e.kind for e in events] == ["submitted", "started", "finished"]
    assert "closed" in repr(subscription)


@pytest.mark.parametrize("error", [RuntimeError, SystemExit])
async def test_a_raising_subscriber_is_logged_once_and_never_breaks_the_run(
    caplog: pytest.LogCaptureFixture, error: type[BaseException]
) -> None:
    # (Even SystemExit: it must not end the scheduler's loop.)
    caplog.set_level(logging.ERROR, logger="asyncflow")
    calls: list[str] = []
    events: list[TaskEvent] = []

    def bad(event: TaskEvent) -> None:
        calls.append(event.kind)
        raise error("subscriber bug")

    runner = ThreadPoolTaskRunner(max_workers=1)
    runner.subscribe(bad)
    runner.subscribe(events.append)
    async with runner:
        results = [await runner.submit(task(name="seven")(lambda: 7)) for _ in range(3)]
    assert results == [7, 7, 7]
    assert len(calls) == 9  # still called with every event
    assert len(events) == 9  # and the others still get them
    errors = [r for r in caplog.records if "subscriber" in r.getMessage()]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "subscriber bug" in str(errors[0].exc_info[1])


def test_subscribe_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="subscribe\\(\\) needs a callable"):
        ThreadPoolTaskRunner(max_workers=1).subscribe("print")  # type: ignore[arg-type]


# -- the async stream --------------------------------------------------------------------------
async def test_the_event_stream_yields_every_event_and_ends_with_the_session() -> None:
    runner = ThreadPoolTaskRunner(max_workers=2)
    received: list[TaskEvent] = []

    async def consume() -> None:
        async with runner.events() as stream:
            ready.set()
            # The iteration ends when the runner's session ends.
            received.extend([event async for event in stream])

    ready = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await ready.wait()
        async with runner:
            futures = [runner.submit(task(name="one")(lambda: 1)) for _ in range(5)]
            futures.append(runner.submit(fail))
    assert len(received) == 18
    for f in futures:
        assert [e.kind for e in received if e.run_id == f.task_run_id] == [
            "submitted",
            "started",
            "finished",
        ]


def test_the_event_stream_works_from_another_loop_than_the_runners() -> None:
    async def main() -> list[str]:
        kinds: list[str] = []
        with ThreadPoolTaskRunner(max_workers=1) as runner:  # its own loop thread
            async with runner.events() as stream:
                runner.submit(noop)
                async for event in stream:
                    kinds.append(event.kind)
                    if event.kind == "finished":
                        break
        return kinds

    assert asyncio.run(main()) == ["submitted", "started", "finished"]


async def test_a_slow_consumer_loses_events_rather_than_blocking_the_scheduler() -> None:
    async with ThreadPoolTaskRunner(max_workers=1) as runner:
        async with runner.events(max_buffer=2) as stream:
            futures = [runner.submit(noop) for _ in range(10)]
            for f in futures:
                await f  # nobody reads the stream meanwhile: the runs are not held up
            first = [await stream.__anext__(), await stream.__anext__()]
        assert stream.dropped == 28
        assert [e.kind for e in first] == ["submitted", "submitted"]


async def test_event_stream_arguments_and_misuse_are_refused() -> None:
    runner = ThreadPoolTaskRunner(max_workers=1)
    with pytest.raises(ValueError, match="max_buffer must be an int >= 1"):
        runner.events(max_buffer=0)
    stream = runner.events()
    with pytest.raises(RuntimeError, match=r"async with runner\.events"):
        await stream.__anext__()
    async with stream:
        with pytest.raises(RuntimeError, match="entered once"):
            await stream.__aenter__()


def test_a_flow_reports_to_the_subscribers_of_the_runner_it_was_given() -> None:
    events: list[TaskEvent] = []
    runner = ThreadPoolTaskRunner(max_workers=1)
    runner.subscribe(events.append)

    @flow(task_runner=runner)
    def twice() -> Any:
        return [task(lambda: 1).submit() for _ in range(2)]

    assert twice() == [1, 1]
    assert twice() == [1, 1]
    assert [e.kind for e in events].count("finished") == 4


def test_every_run_of_a_process_map_has_its_full_sequence() -> None:
    events: list[TaskEvent] = []
    runner = ProcessPoolTaskRunner(max_workers=1)
    runner.subscribe(events.append)
    with runner:
        futures = runner.map(task(name="square")(lambda x: x * x), {"x": range(40)})
        assert futures.result(timeout=TIMEOUT) == [x * x for x in range(40)]
    labels = set()
    spans = []
    for f in futures:
        mine = [e for e in events if e.run_id == f.task_run_id]
        assert [(e.kind, e.attempt) for e in mine] == [
            ("submitted", 0),
            ("started", 1),
            ("finished", 1),
        ]
        labels.add(mine[1].worker)
        spans.append((mine[1].timestamp, mine[2].timestamp))
    # One worker ran them one after the other, batched or not: their spans do not overlap.
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end
    (label,) = labels  # one worker ran them all
    assert label is not None
    assert label.startswith("process ")


async def test_a_run_recorder_reads_real_events_into_run_summaries() -> None:
    recorder = RunRecorder()
    runner = ThreadPoolTaskRunner(max_workers=2)
    runner._sleep = FakeSleep()
    runner.subscribe(recorder)
    async with runner:
        retried = runner.submit(task(retries=2)(flaky), {"failures": 1})
        failed = runner.submit(afail)
        skipped = runner.submit(noop, wait_for=[failed])
        await retried
    runs = {run.run_id: run for run in recorder.runs()}
    one, two, three = (runs[f.task_run_id] for f in (retried, failed, skipped))
    assert (one.state_name, one.attempts, one.worker) == (
        "Completed",
        2,
        "thread asyncflow-threadpool-0",
    )
    assert (two.state_name, two.attempts, two.worker) == ("Failed", 1, "loop")
    assert (three.state_name, three.attempts, three.upstream) == (
        "UpstreamFailed",
        0,
        (failed.task_run_id,),
    )


async def test_a_cached_run_finishes_without_starting() -> None:
    events: list[TaskEvent] = []
    runner = ThreadPoolTaskRunner(max_workers=1, cache_store=MemoryCacheStore())
    runner.subscribe(events.append)
    cached = task(cache_key=lambda ctx, params: "same")(lambda: 5)
    async with runner:
        first = runner.submit(cached)
        assert await first == 5
        second = runner.submit(cached)
        assert await second == 5
    assert [k[:3] for k in steps(events, first.task_run_id)] == [
        ("submitted", 0, None),
        ("started", 1, None),
        ("finished", 1, "Completed"),
    ]
    assert [k[:3] for k in steps(events, second.task_run_id)] == [
        ("submitted", 0, None),
        ("finished", 0, "Cached"),
    ]


def test_records_built_on_the_emission_path_equal_records_built_by_their_class() -> None:
    values = (
        "finished",
        "t",
        uuid.uuid4(),
        1.5,
        2,
        (uuid.uuid4(),),
        frozenset({"a"}),
        StateType.FAILED,
        "Failed",
        "ValueError: x",
        "loop",
    )
    fast = _event(*values)  # type: ignore[arg-type]
    slow = TaskEvent(*values)  # type: ignore[arg-type]
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert [getattr(fast, f.name) for f in dataclasses.fields(TaskEvent)] == list(values)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.attempt = 3  # type: ignore[misc]


def test_what_subscribe_and_events_return_are_public_names() -> None:
    # (For annotations in the caller's code.)
    runner = ThreadPoolTaskRunner(max_workers=1)
    subscription = runner.subscribe(lambda event: None)
    assert isinstance(subscription, asyncflow.Subscription)
    subscription.close()
    assert isinstance(runner.events(), asyncflow.EventStream)
    assert {"Subscription", "EventStream"} <= set(asyncflow.__all__)


@pytest.mark.parametrize("how", ["subscribe", "events"])
def test_an_abandoned_subscription_collected_under_the_hub_lock_does_not_hang(how: str) -> None:
    # A subscription left open in a coroutine pending in a reference cycle is closed by the
    # garbage collector, which can run inside any section holding the hub's lock (on an
    # allocation there): its close takes that lock again on the same thread.
    cleaned = threading.Event()
    runner = ThreadPoolTaskRunner(max_workers=1)

    async def watch(entered: asyncio.Event) -> None:
        try:
            if how == "subscribe":
                with runner.subscribe(_ignore):
                    entered.set()
                    await asyncio.Event().wait()
            else:
                async with runner.events():
                    entered.set()
                    await asyncio.Event().wait()
        finally:
            cleaned.set()

    hub = runner._hub
    gc.disable()
    try:
        park_and_close(watch)  # with the subscription still open
        assert not cleaned.is_set()
        lock = collect_holding(hub, "_lock")
    finally:
        gc.enable()
    assert cleaned.is_set()
    assert lock.stuck == 0
    assert hub._callbacks == ()


class _ClosingOnRead(tuple):  # type: ignore[type-arg]
    """The subscribers, which close ``closing`` the first time they are read through (as a
    collection run by an allocation there would finalize a subscription left open)."""

    closing: Any = None

    def __iter__(self) -> Any:
        closing, type(self).closing = type(self).closing, None
        if closing is not None:
            closing.close()
        return super().__iter__()


def test_a_subscription_closed_by_a_collection_inside_a_subscribe_stays_closed() -> None:
    # The collection runs while subscribe makes the new list of subscribers from the old one:
    # what it then stores must not bring back the one closed meanwhile.
    runner = ThreadPoolTaskRunner(max_workers=1)
    hub = runner._hub
    closing = runner.subscribe(_ignore)
    _ClosingOnRead.closing = closing
    hub._callbacks = _ClosingOnRead(hub._callbacks)
    kept = runner.subscribe(_also_ignore)
    assert _ClosingOnRead.closing is None  # (it was read through)
    assert hub._callbacks == (_also_ignore,)
    kept.close()
    assert not hub._callbacks


def _ignore(_: object) -> None:
    pass


def _also_ignore(_: object) -> None:
    pass
