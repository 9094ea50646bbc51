"""DaskTaskRunner: bodies on a Dask cluster, the graph and the policies here.

Most tests use an in-process cluster: workers are threads of this process. Dask still pickles
what it sends them, so a body reaches this test's gates through this module (functions defined
here travel by reference; the worker finds the same module and the same gates). The crash test
uses a worker process. Dask keeps a thread (its offload pool) and ``multiprocessing`` a process
(its resource tracker) for the life of the process once used: ``_dask_started`` starts both
before these tests, so the leak checks of each test see only what the test started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import distributed
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin
from helpers import TIMEOUT, adouble, double, peak_of_doubling

from asyncflow import DaskTaskRunner, ThreadPoolTaskRunner, allow_failure, get_run_context, task
from asyncflow.exceptions import (
    SerializationError,
    TaskCrashedError,
    TaskTimeoutError,
    UpstreamFailedError,
    WorkerCrashedError,
)

IN_PROCESS = {
    "processes": False,
    "n_workers": 2,
    "threads_per_worker": 1,
    # Any free port: with None the scheduler's HTTP server still tries 8787 first, and warns
    # (an error here) when something else has it.
    "dashboard_address": ":0",
}


def local_cluster(**kwargs: Any) -> Any:
    """A cluster of this test's own (started outside any runner)."""
    cluster: Any = distributed.LocalCluster
    return cluster(**kwargs)


def in_process(**kwargs: Any) -> DaskTaskRunner:
    return DaskTaskRunner(cluster_kwargs={**IN_PROCESS, **kwargs})


@pytest.fixture(scope="module", autouse=True)
def _dask_started() -> None:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with in_process() as runner:
        assert runner.submit(double, {"x": 1}).result(timeout=TIMEOUT) == 2


STARTED = threading.Event()
GATE = threading.Event()
CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _gates() -> Iterator[None]:
    STARTED.clear()
    GATE.clear()
    CALLS.clear()
    try:
        yield
    finally:
        GATE.set()  # no body stays blocked past its test


def held(value: int = 0) -> int:
    """Runs on a worker: say it started, then wait for this module's gate."""
    STARTED.set()
    if not GATE.wait(TIMEOUT):
        raise TimeoutError("the gate never opened")
    return value


def record(what: str) -> None:
    CALLS.append(what)


def flaky() -> int:
    CALLS.append("attempt")
    if len(CALLS) < 3:
        raise OSError("not yet")
    return len(CALLS)


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def describe(x: object) -> str:
    return type(x).__name__


def test_a_graph_of_sync_and_coroutine_bodies_runs_on_the_cluster() -> None:
    with in_process() as runner:
        a = runner.submit(double, {"x": 1})
        b = runner.submit(adouble, {"x": a})
        bad = runner.submit(fail, {"x": b})
        skipped = runner.submit(double, {"x": bad})
        accepted = runner.submit(describe, {"x": allow_failure(bad)})
    assert b.result() == 4
    with pytest.raises(ValueError, match="bad 4"):
        bad.result()
    assert isinstance(skipped.exception(), UpstreamFailedError)
    assert "'fail'" in str(skipped.exception())
    assert accepted.result() == "ValueError"


def test_map_and_the_workers_threads() -> None:
    def where(x: int) -> tuple[int, str]:
        return x * x, threading.current_thread().name

    with in_process() as runner:
        results = runner.map(where, {"x": range(6)}).result()
    assert [value for value, _ in results] == [0, 1, 4, 9, 16, 25]
    # Bodies ran in the cluster's worker threads, not in the runner's loop thread.
    assert all(not name.startswith("asyncflow-loop") for _, name in results)


def test_retries_make_new_attempts_on_the_cluster() -> None:
    with in_process() as runner:
        assert runner.submit(task(retries=2)(flaky)).result(timeout=TIMEOUT) == 3
    assert CALLS == ["attempt"] * 3


def test_a_timeout_fails_the_run_and_releases_its_dask_task() -> None:
    slow = task(timeout=0.2)(held)
    with in_process() as runner:
        run = runner.submit(slow, {"value": 1})
        with pytest.raises(TaskTimeoutError, match=r"timed out after 0\.2 s"):
            run.result(timeout=TIMEOUT)
        assert STARTED.is_set()
        GATE.set()  # the body goes on in its worker thread until it returns
        assert runner.submit(double, {"x": 2}).result(timeout=TIMEOUT) == 4


class _Sent(SchedulerPlugin):
    """Keeps the key of every task the cluster's scheduler is given to run."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "released" and finish != "forgotten":
            self.keys.append(str(key))


def test_a_run_waits_here_for_a_free_worker_thread_and_if_cancelled_never_reaches_the_cluster() -> (
    None
):
    sent = _Sent()
    with local_cluster(**{**IN_PROCESS, "n_workers": 1}) as cluster:
        cluster.scheduler.add_plugin(sent)
        with DaskTaskRunner(address=cluster.scheduler_address) as runner:
            busy = runner.submit(held, {"value": 7})
            assert STARTED.wait(TIMEOUT)
            queued = runner.submit(record, {"what": "queued"})  # the only worker thread is busy
            assert queued.state.is_pending()  # not sent: nothing would run it yet
            assert queued.cancel()
            assert queued.state.is_cancelled()
            GATE.set()
            assert busy.result(timeout=TIMEOUT) == 7
            after = runner.submit(record, {"what": "after"})
            after.result(timeout=TIMEOUT)
    assert CALLS == ["after"]
    assert [key.split("-")[0] for key in sent.keys] == ["held", "record"]
    assert sent.keys[1].endswith(after.task_run_id.hex)


def die(path: str) -> None:
    with open(path, "a") as tries:
        tries.write("run\n")
    os._exit(3)


def test_a_worker_that_dies_fails_only_its_run_with_worker_crashed_error(tmp_path: Path) -> None:
    allowed = dask.config.get("distributed.scheduler.allowed-failures")
    tries = tmp_path / "tries"
    runner = DaskTaskRunner(
        cluster_kwargs={"processes": True, "n_workers": 1, "dashboard_address": ":0"}
    )
    with runner:
        crashed = runner.submit(die, {"path": str(tries)})
        error = crashed.exception(timeout=30)
        assert isinstance(error, WorkerCrashedError)
        assert "task 'die' crashed: its Dask worker tcp://" in str(error)
        assert crashed.state.is_crashed()
        # Dask starts a new worker; the session goes on.
        assert runner.submit(double, {"x": 5}).result(timeout=30) == 10
    assert tries.read_text() == "run\n"  # not run again on the new worker (Dask's default: 3)
    # Set on the runner's own scheduler, not in Dask's config, which is the whole process's.
    assert dask.config.get("distributed.scheduler.allowed-failures") == allowed


def test_an_existing_cluster_is_used_and_left_running() -> None:
    with local_cluster(**IN_PROCESS) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        with runner:
            assert runner.submit(double, {"x": 4}).result(timeout=TIMEOUT) == 8
        assert len(cluster.scheduler.workers) == 2  # still there, workers and all
        with runner:  # and a runner can be entered again
            assert runner.submit(double, {"x": 5}).result(timeout=TIMEOUT) == 10


def test_losing_the_cluster_crashes_the_runs_under_way_with_a_clear_error() -> None:
    with local_cluster(**IN_PROCESS) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        with runner:
            run = runner.submit(held)
            assert STARTED.wait(TIMEOUT)
            cluster.close()
            error = run.exception(timeout=30)
            assert isinstance(error, TaskCrashedError)
            assert "the Dask cluster dropped its run" in str(error)


def test_a_cluster_that_cannot_be_reached_fails_the_start_and_the_runner_can_retry() -> None:
    with socket_nobody_listens_on() as address:
        runner = DaskTaskRunner(address=address, client_kwargs={"timeout": 0.5})
        with pytest.raises(OSError, match="Timed out trying to connect"), runner:
            pytest.fail("started without a cluster")
        with pytest.raises(OSError, match="Timed out"), runner:  # the failed start left it free
            pytest.fail("started without a cluster")


class socket_nobody_listens_on:  # noqa: N801 - a context manager used like a function
    """A local TCP address that refuses connections (its port is bound, never listened on)."""

    def __enter__(self) -> str:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -- configuration ------------------------------------------------------------------------------


def test_address_and_cluster_options_are_mutually_exclusive() -> None:
    for options in (
        {"cluster_kwargs": {"n_workers": 1}},
        {"cluster_class": "distributed.LocalCluster"},
        {"adapt_kwargs": {"maximum": 2}},
    ):
        with pytest.raises(ValueError, match=r"either address .* or cluster_class"):
            DaskTaskRunner(address="tcp://127.0.0.1:8786", **options)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": 8786}, "address must be a non-empty str"),
        ({"address": ""}, "address must be a non-empty str"),
        ({"cluster_class": 3}, "cluster_class must be a class or its dotted name"),
        ({"cluster_kwargs": ["n_workers"]}, "cluster_kwargs must be a dict"),
        ({"client_kwargs": {1: 2}}, "client_kwargs must be a dict"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        DaskTaskRunner(**kwargs)


def test_a_cluster_class_by_dotted_name_that_does_not_import_fails_the_start() -> None:
    runner = DaskTaskRunner(cluster_class="distributed.NoSuchCluster")
    with pytest.raises(
        ValueError, match=r"cannot import cluster_class 'distributed\.NoSuchCluster'"
    ):
        runner.__enter__()
    runner = DaskTaskRunner(cluster_class="LocalCluster")
    with pytest.raises(ValueError, match="is not a dotted name"):
        runner.__enter__()


def test_a_cluster_class_by_dotted_name_is_started_with_its_kwargs() -> None:
    runner = DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=IN_PROCESS)
    with runner:
        assert runner.submit(double, {"x": 6}).result(timeout=TIMEOUT) == 12


def test_a_plain_tcp_address_of_another_host_warns() -> None:
    with pytest.warns(UserWarning, match="neither authenticated nor encrypted"):
        DaskTaskRunner(address="tcp://203.0.113.5:8786")
    with pytest.warns(UserWarning, match="neither authenticated nor encrypted"):
        DaskTaskRunner(address="203.0.113.5:8786")  # Dask's default scheme is tcp


@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:8786", "tcp://localhost:8786", "tls://203.0.113.5:8786"]
)
def test_a_local_or_tls_address_does_not_warn(address: str) -> None:
    DaskTaskRunner(address=address)  # filterwarnings = error: a warning would fail this


def test_duplicate_and_equality() -> None:
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2}, max_concurrency=3)
    twin = runner.duplicate()
    assert twin == runner
    assert twin is not runner
    assert runner != DaskTaskRunner(cluster_kwargs={"n_workers": 3}, max_concurrency=3)
    assert DaskTaskRunner(address="tcp://127.0.0.1:1").duplicate().address == "tcp://127.0.0.1:1"
    assert runner.name == "dask"


@pytest.mark.anyio
async def test_async_with_runs_on_the_callers_loop() -> None:
    async with in_process() as runner:
        first = runner.submit(adouble, {"x": 20})
        assert await runner.submit(double, {"x": first}) == 80


def test_an_argument_dask_cannot_send_fails_its_run_and_says_why() -> None:
    with in_process() as runner:
        run = runner.submit(describe, {"x": threading.Lock()})
        error = run.exception(timeout=TIMEOUT)
        assert isinstance(error, SerializationError)
        assert str(error).startswith(
            "task 'describe': parameter 'x' cannot be sent to the Dask cluster (TypeError: "
        )
        assert "cannot pickle '_thread.lock' object" in str(error)
        lambdas = runner.submit(lambda x: x, {"x": 1})  # functions travel by value: fine
        assert lambdas.result(timeout=TIMEOUT) == 1
        assert runner.submit(double, {"x": 1}).result(timeout=TIMEOUT) == 2


# -- bodies that never return, stuck bodies, Ctrl-C -----------------------------------------------


async def raises_cancelled() -> None:
    raise asyncio.CancelledError


def exits() -> None:
    raise SystemExit(3)


def interrupted() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("body", [raises_cancelled, exits, interrupted])
def test_a_body_that_never_returns_crashes_its_run_and_the_runner_goes_on(body: Any) -> None:
    with in_process() as runner:
        run = runner.submit(body)
        error = run.exception(timeout=TIMEOUT)
        assert isinstance(error, TaskCrashedError)
        assert run.state.is_crashed()
        assert runner.submit(double, {"x": 2}).result(timeout=TIMEOUT) == 4


def raise_with_a_cycle_of_causes(kind: str) -> None:
    first = SystemExit(3) if kind == "exit" else StopIteration("none left")
    second = ValueError("its cause")
    first.__cause__ = second
    second.__cause__ = first  # (user code can make a cycle of causes)
    raise first


def test_what_is_carried_from_a_body_keeps_its_kind_when_its_causes_make_a_cycle() -> None:
    # (Dask pickled the carried error with its causes, for ever: it came back as a plain
    # Exception, the crash a failure.)
    with in_process() as runner:
        exits = runner.submit(raise_with_a_cycle_of_causes, {"kind": "exit"})
        stops = runner.submit(raise_with_a_cycle_of_causes, {"kind": "stop"})
        assert isinstance(exits.exception(timeout=TIMEOUT), TaskCrashedError)
        assert exits.state.is_crashed()
        assert isinstance(stops.exception(timeout=TIMEOUT), StopIteration)
        assert stops.state.is_failed()


def test_a_timed_out_body_keeps_its_worker_thread_until_it_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow = task(timeout=0.2)(held)
    with in_process(n_workers=1) as runner:
        run = runner.submit(slow, {"value": 1})
        with pytest.raises(TaskTimeoutError):
            run.result(timeout=TIMEOUT)
        after = runner.submit(record, {"what": "after"})
        stats = runner.statistics()  # (taken on the loop: the submit before it is in)
        assert stats.abandoned_threads == 1
        assert after.state.is_pending()  # the only worker thread is still in the body
        assert CALLS == []
        GATE.set()
        after.result(timeout=TIMEOUT)
    assert CALLS == ["after"]
    assert "keeps running until the body returns" in caplog.text


def reads_its_context() -> tuple[str, int, str]:
    context = get_run_context()
    if context.attempt == 1:
        raise OSError("once more")
    return context.task_name, context.attempt, str(context.task_run_id)


def submits_from_the_worker() -> None:
    task(double).submit(1)


def test_a_body_on_the_cluster_knows_its_run_and_cannot_submit() -> None:
    with in_process() as runner:
        run = runner.submit(task(retries=1, name="ctx")(reads_its_context))
        assert run.result(timeout=TIMEOUT) == ("ctx", 2, str(run.task_run_id))
        nested = runner.submit(submits_from_the_worker)
        with pytest.raises(RuntimeError, match=r"not available on a cluster"):
            nested.result(timeout=TIMEOUT)


RETURNED = threading.Event()


def held_then_returned() -> None:
    try:
        held()
    finally:
        RETURNED.set()


def test_ctrl_c_leaves_at_once_without_waiting_for_a_stuck_body() -> None:
    RETURNED.clear()

    def stuck_then_ctrl_c() -> None:
        with in_process(n_workers=1) as runner:
            runner.submit(held_then_returned)
            assert STARTED.wait(TIMEOUT)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stuck_then_ctrl_c()
    assert not RETURNED.is_set()  # left while the body was still in its worker thread
    GATE.set()
    assert RETURNED.wait(TIMEOUT)


class _FakeCluster:
    """A cluster class as the runner uses one: made with ``asynchronous=True``, then awaited
    (``_start``), then closed."""

    def __init__(self, asynchronous: bool) -> None:
        assert asynchronous

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> None:
        raise NotImplementedError


class _SlowCluster(_FakeCluster):
    """A cluster class whose start ends when ``go`` is set; says when it starts, when it has
    started and when it is closed."""

    starting = threading.Event()
    go = threading.Event()
    started = threading.Event()
    closed = threading.Event()

    async def _start(self) -> None:
        self.starting.set()
        await asyncio.get_running_loop().run_in_executor(None, self.go.wait, TIMEOUT)
        self.started.set()

    async def close(self) -> None:
        self.closed.set()


def test_ctrl_c_while_the_cluster_starts_closes_it_once_started_and_frees_the_runner() -> None:
    for event in (_SlowCluster.starting, _SlowCluster.go, _SlowCluster.started):
        event.clear()
    _SlowCluster.closed.clear()
    runner = DaskTaskRunner(cluster_class=_SlowCluster)
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    def ctrl_c() -> None:  # a real SIGINT: it interrupts the main thread's wait for the start
        assert _SlowCluster.starting.wait(TIMEOUT)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        assert interrupted.wait(TIMEOUT)  # the start goes on only once Ctrl-C is on its way
        _SlowCluster.go.set()

    pressing = threading.Thread(target=ctrl_c)
    previous = signal.signal(signal.SIGINT, on_sigint)
    pressing.start()
    try:
        with pytest.raises(KeyboardInterrupt), runner:
            pytest.fail("started")
    finally:
        pressing.join()
        signal.signal(signal.SIGINT, previous)
    # Dask cannot close a cluster whose start was cut short: it was let finish, then closed.
    assert _SlowCluster.started.is_set()
    assert _SlowCluster.closed.is_set()
    with in_process() as again:  # (no runner was left claimed or running)
        assert again.submit(double, {"x": 1}).result(timeout=TIMEOUT) == 2
    assert runner.statistics().submitted == 0


def its_task_name() -> str:
    return get_run_context().task_name


async def opens_a_dask_runner() -> tuple[str, str]:
    async with in_process() as runner:
        name = await runner.submit(task(name="inner")(its_task_name))
        try:
            await runner.submit(submits_from_the_worker)
        except RuntimeError as exc:
            return name, str(exc)
    return name, "submitted"


def test_an_in_process_cluster_started_in_a_run_gives_its_bodies_their_own_context() -> None:
    # Its workers run bodies in a copy of the context it was started in: the outer run's.
    with ThreadPoolTaskRunner() as outer:
        run = outer.submit(task(name="outer")(opens_a_dask_runner))
        name, error = run.result(timeout=30)
    assert name == "inner"
    assert "not available on a cluster" in error


def test_an_adaptive_cluster_is_sent_all_the_work_it_should_grow_for() -> None:
    runner = DaskTaskRunner(
        cluster_kwargs={**IN_PROCESS, "n_workers": 1}, adapt_kwargs={"minimum": 1, "maximum": 1}
    )
    with runner:
        runs = [runner.submit(held, {"value": i}) for i in range(3)]
        assert STARTED.wait(TIMEOUT)
        assert runner.statistics().running == 3  # all sent: Dask's scheduler holds two of them
        GATE.set()
        assert [run.result(timeout=TIMEOUT) for run in runs] == [0, 1, 2]


def test_a_cluster_that_is_not_adapted_is_sent_only_what_its_threads_can_run() -> None:
    with in_process(n_workers=1) as runner:
        runs = [runner.submit(held, {"value": i}) for i in range(3)]
        assert STARTED.wait(TIMEOUT)
        stats = runner.statistics()
        assert (stats.running, stats.queued) == (1, 2)
        GATE.set()
        assert [run.result(timeout=TIMEOUT) for run in runs] == [0, 1, 2]


class _FailingCluster(_FakeCluster):
    """A cluster class whose start fails once ``go`` is set."""

    starting: asyncio.Event
    go: asyncio.Event
    closed = False

    async def _start(self) -> None:
        self.starting.set()
        await self.go.wait()
        raise OSError("the cluster could not start")

    async def close(self) -> None:
        type(self).closed = True


@pytest.mark.anyio
async def test_a_start_cancelled_then_failing_ends_cancelled_and_its_cluster_is_closed() -> None:
    _FailingCluster.starting, _FailingCluster.go = asyncio.Event(), asyncio.Event()
    _FailingCluster.closed = False

    async def enter() -> None:
        async with DaskTaskRunner(cluster_class=_FailingCluster):
            pytest.fail("started")

    entering = asyncio.ensure_future(enter())
    await _FailingCluster.starting.wait()
    entering.cancel()  # the cancel reaches the start before its failure does (FIFO)
    _FailingCluster.go.set()
    with pytest.raises(asyncio.CancelledError):
        await entering
    assert _FailingCluster.closed


def test_a_crash_retry_setting_of_the_users_own_is_kept() -> None:
    kwargs = {**IN_PROCESS, "scheduler_kwargs": {"allowed_failures": 5}}
    with DaskTaskRunner(cluster_kwargs=kwargs) as runner:
        cluster = runner._scheduler.backend._cluster  # type: ignore[union-attr]
        assert cluster.scheduler.allowed_failures == 5
    with in_process() as runner:
        cluster = runner._scheduler.backend._cluster  # type: ignore[union-attr]
        assert cluster.scheduler.allowed_failures == 0


def test_back_pressure_holds_on_a_cluster_too() -> None:
    peak = peak_of_doubling(DaskTaskRunner(cluster_kwargs=IN_PROCESS, max_pending=2), 8)
    assert 1 <= peak.peak <= 2
    assert peak.now == 0
