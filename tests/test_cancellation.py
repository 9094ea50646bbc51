"""Cancellation: queued, waiting and running runs, cascades through the graph, Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import Stuck

import asyncflow
from asyncflow import Future, ThreadPoolTaskRunner, allow_failure, get_run_context, task, wait
from asyncflow.exceptions import TaskCancelledError

TIMEOUT = 5.0  # seconds: the longest any single wait in these tests may take
LATE = 2.0  # seconds: a cancellation that takes longer than this to show is a failure


# -- helpers -----------------------------------------------------------------------------------


def record(ran: list[str], name: str, *inputs: Any) -> str:
    ran.append(name)
    return name


def record_one(ran: list[str], name: str, x: Any) -> str:
    return record(ran, name, x)


async def arecord_two(ran: list[str], name: str, x: Any, y: Any) -> str:
    return record(ran, name, x, y)


def returns_whether_set(event: threading.Event) -> bool:
    return event.is_set()


async def hang(started: Callable[[], object], cancelled: list[str]) -> None:
    started()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append("cancelled")
        raise


def fail(log: list[int]) -> None:
    log.append(get_run_context().attempt)
    raise ValueError("fails every time")


def double(x: int) -> int:
    return x * 2


def finished(futures: list[Future[Any]]) -> None:
    _, not_done = wait(futures, timeout=TIMEOUT)
    assert not not_done, not_done


# -- queued and waiting runs -------------------------------------------------------------------
def test_a_cancelled_queued_run_never_starts_and_its_dependents_end_cancelled(
    stuck: Stuck,
) -> None:
    ran: list[str] = []
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        blocker = runner.submit(stuck.body)
        assert stuck.started.wait(TIMEOUT)
        queued = runner.submit(record_one, {"ran": ran, "name": "queued", "x": 1})
        child = runner.submit(record_one, {"ran": ran, "name": "child", "x": queued})
        grandchild = runner.submit(
            arecord_two, {"ran": ran, "name": "grandchild", "x": child, "y": 2}
        )
        assert queued.cancel() is True
        finished([queued, child, grandchild])  # at once, while the worker is still busy
        assert not blocker.done()
        for f in (queued, child, grandchild):
            assert f.state.is_cancelled()
            with pytest.raises(TaskCancelledError):
                f.result()
        with pytest.raises(TaskCancelledError, match="upstream 'record_one' was cancelled"):
            child.exception()
        stuck.release()
        assert blocker.result(timeout=TIMEOUT) == "late"
        assert runner.submit(double, {"x": 2}).result(timeout=TIMEOUT) == 4
        stats = runner.statistics()
    assert ran == []
    assert stats.cancelled == 3
    assert queued.cancel() is False  # already final


def test_a_cancelled_run_waiting_for_its_inputs_leaves_the_inputs_alone(stuck: Stuck) -> None:
    ran: list[str] = []
    with ThreadPoolTaskRunner() as runner:
        up = runner.submit(stuck.body)
        waiting = runner.submit(record_one, {"ran": ran, "name": "waiting", "x": up})
        child = runner.submit(record_one, {"ran": ran, "name": "child", "x": waiting})
        sibling = runner.submit(record_one, {"ran": ran, "name": "sibling", "x": up})
        assert stuck.started.wait(TIMEOUT)
        assert waiting.cancel() is True
        finished([waiting, child])
        assert waiting.state.is_cancelled()
        assert child.state.is_cancelled()
        assert not up.done()
        stuck.release()
        assert up.result(timeout=TIMEOUT) == "late"
        assert sibling.result(timeout=TIMEOUT) == "sibling"
    assert ran == ["sibling"]


# -- running runs ------------------------------------------------------------------------------
POLICIES = pytest.mark.parametrize(
    "options",
    [{}, {"retries": 2}, {"timeout": 30}],
    ids=["plain", "retries", "timeout"],
)


@POLICIES
def test_a_cancelled_thread_body_is_abandoned_and_keeps_its_slot(
    options: dict[str, Any], stuck: Stuck, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncflow")
    ran: list[str] = []
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        f = runner.submit(task(name="blocking_io", **options)(stuck.body))
        child = runner.submit(record_one, {"ran": ran, "name": "child", "x": f})
        assert stuck.started.wait(TIMEOUT)
        t0 = time.monotonic()
        assert f.cancel() is True
        finished([f, child])
        assert time.monotonic() - t0 < LATE
        assert f.state.is_cancelled()
        assert child.state.is_cancelled()
        assert not stuck.returned.is_set()  # the body still runs: it was not waited for
        stats = runner.statistics()
        assert stats.abandoned_threads == 1
        assert stats.cancelled == 2
        assert stats.running == 0
        # The abandoned body keeps the only worker: the next sync body waits for it.
        nxt = runner.submit(returns_whether_set, {"event": stuck.returned})
        stats = runner.statistics()  # a round trip through the loop: nxt is registered
        assert stats.queued == 1
        assert nxt.state.is_pending()
        stuck.release()
        assert nxt.result(timeout=TIMEOUT) is True  # it started after the body returned
        assert runner.statistics().abandoned_threads == 0
    assert f.state.is_cancelled()  # the late return changed nothing
    assert stuck.calls == 1  # never retried
    assert ran == []
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncflow" and "'blocking_io'" in r.getMessage()
    ]
    assert any("keeps running" in m for m in messages), messages


async def cancel_while_running(
    body: Callable[..., Any], params: dict[str, Any], options: dict[str, Any]
) -> tuple[Future[Any], list[str], ThreadPoolTaskRunner]:
    """Run coroutine ``body`` (it checks in through ``started``) with a dependent, and cancel it
    while it runs: both end Cancelled. The run, what ran of the dependent, and the runner."""
    started = asyncio.Event()
    ran: list[str] = []
    async with ThreadPoolTaskRunner() as runner:
        f = runner.submit(task(**options)(body), {"started": started.set, **params})
        child = runner.submit(record_one, {"ran": ran, "name": "child", "x": f})
        with anyio.fail_after(TIMEOUT):
            await started.wait()
        assert f.cancel() is True
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(TaskCancelledError):
                await f
            with pytest.raises(TaskCancelledError):
                await child
        assert runner.statistics().cancelled == 2
    return f, ran, runner


@POLICIES
@pytest.mark.anyio
async def test_a_cancelled_coroutine_sees_cancelled_error(options: dict[str, Any]) -> None:
    cancelled: list[str] = []
    f, ran, _ = await cancel_while_running(hang, {"cancelled": cancelled}, options)
    assert cancelled == ["cancelled"]
    assert f.state.is_cancelled()
    assert ran == []


async def hang_then(started: Callable[[], object], then: str) -> str:
    started()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        if then == "raise":
            raise ValueError("cleaning up went wrong") from None
    return "returned after its cancel"


@POLICIES
@pytest.mark.parametrize("then", ["return", "raise"])
@pytest.mark.anyio
async def test_a_cancelled_coroutine_that_handles_the_cancel_still_ends_cancelled(
    options: dict[str, Any], then: str
) -> None:
    # cancel() said True: the run and its dependents end Cancelled, whether the body then
    # returns a value or raises another error while it handles its cancel.
    f, ran, runner = await cancel_while_running(hang_then, {"then": then}, options)
    assert f.state.is_cancelled()
    assert f.state.name == "Cancelled"
    assert ran == []
    assert runner.statistics().retried == 0


# -- the graph: nothing stays pending ----------------------------------------------------------
@pytest.mark.parametrize("root_phase", ["queued", "waiting", "running-thread", "running-coro"])
def test_cancelling_the_root_of_a_diamond_ends_every_node(root_phase: str, stuck: Stuck) -> None:
    ran: list[str] = []
    hooked: list[str] = []
    started = threading.Event()
    cancelled: list[str] = []

    def on_cancel(t: Any, f: Future[Any], state: asyncflow.State[Any]) -> None:
        hooked.append(f"{t.name}:{state.name}")

    with ThreadPoolTaskRunner(max_workers=1) as runner:
        root: Future[Any]
        if root_phase in ("queued", "waiting"):
            blocker = runner.submit(stuck.body)
            assert stuck.started.wait(TIMEOUT)
            x = 1 if root_phase == "queued" else blocker
            root = runner.submit(record_one, {"ran": ran, "name": "root", "x": x})
        elif root_phase == "running-thread":
            root = runner.submit(stuck.body)
            assert stuck.started.wait(TIMEOUT)
        else:
            root = runner.submit(hang, {"started": started.set, "cancelled": cancelled})
            assert started.wait(TIMEOUT)
        left = runner.submit(task(retries=2)(record_one), {"ran": ran, "name": "left", "x": root})
        right = runner.submit(
            task(timeout=30, name="right", on_cancellation=on_cancel)(record_one),
            {"ran": ran, "name": "right", "x": root},
        )
        bottom = runner.submit(arecord_two, {"ran": ran, "name": "bottom", "x": left, "y": right})
        assert root.cancel() is True
        nodes = [root, left, right, bottom]
        finished(nodes)
        assert [f.state.name for f in nodes] == ["Cancelled"] * 4
        stuck.release()
        assert runner.submit(double, {"x": 1}).result(timeout=TIMEOUT) == 2
        sched: Any = runner._scheduler
        assert sched is not None
        assert runner.statistics().queued == runner.statistics().running == 0
        assert sched.graph_size == 0
    assert ran == []
    assert hooked == ["right:Cancelled"]
    if root_phase == "running-coro":
        assert cancelled == ["cancelled"]


# -- everything at once: cancel_all and leaving the block on an error ---------------------------
def hold(started: Callable[[], object], gate: threading.Event) -> str:
    started()
    if not gate.wait(TIMEOUT):
        raise TimeoutError("the gate never opened")
    return "late"


class Scenario:
    """Runs in every phase a run can be cancelled in, on a runner with a tag limit of 1.

    ``signal`` is called once by each of the three runs that must start (a thread body, a
    coroutine, a wait between attempts) before the scenario is in place.
    """

    def __init__(self, signal: Callable[[], object]) -> None:
        self.signal = signal
        self.gate = threading.Event()
        self.ran: list[str] = []
        self.attempts: list[int] = []
        self.cancelled: list[str] = []
        self.runner = ThreadPoolTaskRunner(max_workers=4, tag_limits={"db": 1})
        self.runner._sleep = self._endless_sleep
        self.futures: list[Future[Any]] = []

    async def _endless_sleep(self, delay: float) -> None:
        self.signal()
        await asyncio.Event().wait()

    def submit(self) -> None:
        runner = self.runner
        db = task(tags=["db"])
        # The thread body takes the only "db" slot first (submission order): `limited` waits.
        holder = runner.submit(db(hold), {"started": self.signal, "gate": self.gate})
        limited = runner.submit(db(record_one), {"ran": self.ran, "name": "limited", "x": 1})
        self.futures = [
            holder,
            runner.submit(hang, {"started": self.signal, "cancelled": self.cancelled}),
            limited,
            runner.submit(task(retries=3)(fail), {"log": self.attempts}),
            runner.submit(record_one, {"ran": self.ran, "name": "waiting", "x": limited}),
        ]

    def check_all_cancelled(self) -> None:
        for f in self.futures:
            assert f.state.is_cancelled(), f
        assert self.ran == []  # the runs waiting for a limit or an input never started
        assert self.attempts == [1]  # the retrying run was not tried again
        assert self.cancelled == ["cancelled"]  # the running coroutine saw its cancellation


class Countdown:
    """A thread-safe counter that sets ``done`` when it has been called ``n`` times."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self) -> None:
        with self._lock:
            self._n -= 1
            if self._n == 0:
                self.done.set()


def test_cancel_all_cancels_runs_in_every_phase_and_the_runner_goes_on() -> None:
    started = Countdown(3)
    scenario = Scenario(started)
    try:
        with scenario.runner as runner:
            scenario.submit()
            assert started.done.wait(TIMEOUT)
            runner.cancel_all()
            finished(scenario.futures)
            scenario.check_all_cancelled()
            assert runner.statistics().cancelled == 5
            scenario.gate.set()
            after = runner.submit(task(tags=["db"])(double), {"x": 5})
            assert after.result(timeout=TIMEOUT) == 10
    finally:
        scenario.gate.set()


def test_leaving_the_block_on_an_error_cancels_runs_in_every_phase() -> None:
    started = Countdown(3)
    scenario = Scenario(started)

    def use() -> None:
        with scenario.runner:
            scenario.submit()
            assert started.done.wait(TIMEOUT)
            scenario.gate.set()  # the abandoned thread body may end whenever it likes
            raise KeyError("boom")

    try:
        with pytest.raises(KeyError, match="boom"):
            use()
    finally:
        scenario.gate.set()
    scenario.check_all_cancelled()
    assert scenario.runner.statistics().cancelled == 5


@pytest.mark.anyio
async def test_leaving_an_async_block_on_an_error_cancels_runs_in_every_phase() -> None:
    loop = asyncio.get_running_loop()
    all_started = asyncio.Event()
    countdown = Countdown(3)

    def started() -> None:  # called on worker threads and on this loop
        countdown()
        if countdown.done.is_set():
            loop.call_soon_threadsafe(all_started.set)

    scenario = Scenario(started)

    async def use() -> None:
        async with scenario.runner:
            scenario.submit()
            await all_started.wait()
            scenario.gate.set()
            raise KeyError("boom")

    try:
        with anyio.fail_after(TIMEOUT), pytest.raises(KeyError, match="boom"):
            await use()
    finally:
        scenario.gate.set()
    scenario.check_all_cancelled()
    assert scenario.runner.statistics().cancelled == 5


# -- Ctrl-C in a script ------------------------------------------------------------------------
CTRL_C_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import signal
    import threading

    from asyncflow import ThreadPoolTaskRunner

    # What an interactive script gets: Ctrl-C raises KeyboardInterrupt (even if this process
    # was started with SIGINT ignored, as background jobs are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    coro_started = threading.Event()


    async def forever():
        coro_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            print("coroutine cancelled", flush=True)
            raise


    def blocked():
        coro_started.wait(10)
        print("ready", flush=True)
        threading.Event().wait()  # never returns: this thread can only be abandoned


    runner = ThreadPoolTaskRunner(max_workers=2)
    try:
        with runner:
            coro = runner.submit(forever)
            thread = runner.submit(blocked)
            thread.result()
    except KeyboardInterrupt:
        print("states", coro.state.name, thread.state.name, flush=True)
        others = [
            t.name
            for t in threading.enumerate()
            if t is not threading.main_thread() and (not t.daemon or "loop" in t.name)
        ]
        print("threads", others, flush=True)
        raise
    """
)


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What ``proc`` wrote to stdout up to and including ``marker``; fails after ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} within {timeout} s; got {data!r}"
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            assert chunk, f"stdout closed before {marker!r}; got {data!r}"
            data += chunk
    return data


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX-only")
def test_ctrl_c_during_a_blocking_result_interrupts_cancels_and_exits(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(CTRL_C_SCRIPT)
    package_root = str(Path(asyncflow.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": package_root}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        before = _read_until(proc, b"ready\n", timeout=30)  # includes interpreter start-up
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        rest, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = (before + rest).decode()
    assert elapsed < 5.0
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err.decode()
    assert "coroutine cancelled" in out  # the running coroutine was cancelled
    assert "states Cancelled Cancelled" in out
    assert "threads []" in out  # no loop thread and no non-daemon thread left


# -- a cancel that lands while a worker thread reads the run it is about to call ----------------
def _cancel_at_line(code: Any, line: int, run: Future[Any]) -> Callable[..., Any]:
    """A trace function that clears ``run`` as a cancel does, just before ``line`` of ``code``."""

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None
        if event == "line" and frame.f_lineno == line:
            run._params = run._ctx = run._deps = run._allowed = run._handle = None
        return trace

    return trace


def test_a_cancel_between_the_reads_of_a_starting_run_never_passes_futures_unresolved() -> None:
    # A worker thread reads a run's inputs and parameters while the loop thread may cancel it,
    # which clears the parameters, then the inputs. Whichever of the two reads the cancel lands
    # between, the body must not be called with the futures themselves in place of values.
    import contextvars
    import inspect

    from asyncflow._params import TOP_LEVEL
    from asyncflow._scheduler import call_sync
    from asyncflow._task import as_task

    called: list[object] = []

    def body(x: object) -> None:
        called.append(x)

    ctx = contextvars.copy_context()
    owner: Any = None
    up: Future[Any] = Future(owner, as_task(body), {"x": 1}, None, None, ctx, None)
    lines, first = inspect.getsourcelines(call_sync)
    reads = [
        first + i for i, text in enumerate(lines) if "params_of(fut)" in text or "fut._deps" in text
    ]
    assert len(reads) == 2  # the two reads, in the order they run
    for inputs in ([up], TOP_LEVEL):
        run: Future[Any] = Future(owner, as_task(body), {"x": up}, inputs, None, ctx, None)
        before = sys.gettrace()  # (a debugger's or coverage's, put back after)
        sys.settrace(_cancel_at_line(call_sync.__code__, reads[1], run))
        try:
            with pytest.raises(TaskCancelledError):
                contextvars.copy_context().run(call_sync, run)
        finally:
            sys.settrace(before)
    assert called == []


def test_a_run_with_retries_cancelled_while_its_attempt_is_queued_never_starts_its_body() -> None:
    # D's first attempt waits in the queue behind A. A's done-callback (on the loop, while A's
    # outcome is handled) cancels D: the slot A frees must not go to D's queued attempt (its
    # body would then run, or at least its thread be counted abandoned, though D never started).
    ran: list[str] = []
    a_started, a_gate = threading.Event(), threading.Event()
    handed: list[bool] = []  # for each attempt handed to a worker: was its run's cancel asked?

    def body(name: str) -> str:
        if name == "a":
            a_started.set()
            assert a_gate.wait(TIMEOUT)
        ran.append(name)
        return name

    driven = task(retries=1)(body)
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        a = runner.submit(body, {"name": "a"})
        assert a_started.wait(TIMEOUT)
        sched: Any = runner._scheduler
        assert sched is not None
        mark_running = sched.mark_running

        def watched(item: Any, *args: Any, **kwargs: Any) -> bool:
            if type(item) is not Future:
                handed.append(item.fut._policy.cancelling)
            return bool(mark_running(item, *args, **kwargs))

        sched.mark_running = watched
        d = runner.submit(driven, {"name": "d"})
        queued = lambda: any(type(x) is not Future for x in sched.backend._ready)  # noqa: E731
        assert any(sched.call_in_loop(queued) for _ in range(1000))
        a.add_done_callback(lambda _: d.cancel())
        a_gate.set()
        assert a.result(timeout=TIMEOUT) == "a"
        d.wait(TIMEOUT)
        assert d.cancelled()
    assert handed == [], "a cancelled run's queued attempt was handed to a worker"
    assert ran == ["a"], ran


def test_a_skipped_run_cancelled_by_another_skipped_runs_callback_stays_cancelled() -> None:
    def fail() -> int:
        raise ValueError("up")

    gate = threading.Event()

    def gated_fail() -> int:
        assert gate.wait(5)
        return fail()

    with ThreadPoolTaskRunner() as runner:
        up = runner.submit(gated_fail)
        first = runner.submit(task(name="first")(double_it), {"x": up})
        second = runner.submit(task(name="second")(double_it), {"x": up})
        third = runner.submit(task(name="third")(double_it), {"x": second})
        accepting = runner.submit(task(name="accepting")(kind_of), {"x": allow_failure(second)})
        below = runner.submit(task(name="below")(kind_of), {"x": accepting})
        first.add_done_callback(lambda _f: second.cancel())
        gate.set()
        third.wait(5)
        below.wait(5)
        assert accepting.state.is_cancelled()  # allow_failure accepts a failure, not a cancel
        assert below.state.is_cancelled()
        assert first.state.name == "UpstreamFailed"
        assert second.state.is_cancelled()  # not made UpstreamFailed over its Cancelled state
        # ... and what waits on it is cancelled, as if it had been cancelled before.
        assert third.state.is_cancelled()
        with pytest.raises(TaskCancelledError, match="its upstream 'second' was cancelled"):
            third.exception()
    stats = runner.statistics()
    assert (stats.failed, stats.cancelled) == (2, 4)


def double_it(x: int) -> int:
    return x * 2


def kind_of(x: object) -> str:
    return type(x).__name__


def _fails() -> None:
    raise ValueError("boom")


def test_cancel_on_the_loop_of_a_run_its_registration_ends_first_returns_false() -> None:
    # cancel() on the loop thread first registers what other threads submitted; a run whose
    # input already failed ends UpstreamFailed then, and the cancel did nothing: False.
    go, started = threading.Event(), threading.Event()
    cancelled: list[Future[Any]] = []

    async def holds_the_loop() -> bool:
        started.set()
        assert go.wait(TIMEOUT)  # (blocks the loop while the main thread submits)
        return cancelled[0].cancel()

    with ThreadPoolTaskRunner() as runner:
        failed = runner.submit(_fails)
        failed.wait(TIMEOUT)
        holder = runner.submit(holds_the_loop)
        assert started.wait(TIMEOUT)
        cancelled.append(runner.submit(lambda x: x, {"x": failed}))  # (into the inbox)
        go.set()
        assert holder.result(timeout=TIMEOUT) is False
        assert cancelled[0].state.name == "UpstreamFailed"
