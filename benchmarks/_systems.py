"""The field: which systems are installed, and how to start the ones that need more than a call.

Each ``*_missing()`` returns why a system cannot run here (a ``Skip`` reason), or ``None``. The
libraries are imported only when a system is started, so a missing one never stops the rest.

Prefect runs offline, on its local ephemeral backend: ``PREFECT_API_URL`` is removed from this
process's environment and ``PREFECT_HOME`` points to a temporary directory, so Prefect starts
its own API server as a local subprocess (SQLite database, loopback port) the first time a flow
runs, and keeps it until this process exits.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asyncflow import TaskRunner

from ._field import FASTER, Run, Skip, System
from ._report import Goal

__all__ = (
    "SLOW_RUNS",
    "Job",
    "anyio_each",
    "asyncflow_each",
    "dask_client",
    "dask_each",
    "dask_missing",
    "dask_runner_system",
    "dask_system",
    "loop_run",
    "loop_session",
    "missing",
    "new_uvloop",
    "prefect_each",
    "prefect_flow",
    "prefect_missing",
    "prefect_processes",
    "prefect_system",
    "prefect_task",
    "prefect_threads",
    "ray_each",
    "ray_runner_system",
    "ray_system",
    "runner_each",
    "thread_pool_each",
    "uvloop_missing",
)

Job = Callable[[], float]
"""A timed batch of work that must run inside a Prefect flow: returns its seconds."""


def missing(module: str, extra: str = "bench") -> str | None:
    """Why ``module`` cannot be used (not installed), or None."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install 'asyncflow[{extra}]')"
    return None


def uvloop_missing() -> str | None:
    return missing("uvloop")


def new_uvloop() -> asyncio.AbstractEventLoop:
    import uvloop

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def dask_missing() -> str | None:
    return missing("distributed")


def ray_missing() -> str | None:
    return missing("ray")


def prefect_missing() -> str | None:
    reason = missing("prefect")
    if reason is not None:
        return reason
    from importlib.metadata import version

    major = version("prefect").partition(".")[0]
    if not major.isdigit() or int(major) < 3:
        return f"prefect {version('prefect')} is installed; these workloads need Prefect 3"
    return None


@contextlib.contextmanager
def loop_run(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    make: Callable[[], Coroutine[Any, Any, float]],
) -> Iterator[Run]:
    """A system whose runs are coroutines, each run on the same fresh event loop."""
    loop = new_loop()
    try:
        yield lambda: loop.run_until_complete(make())
    finally:
        _close(loop)


async def _settle(tasks: set[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on ``loop`` (anyio's process pool keeps a task that stops its
    workers when cancelled), wait for it, then close the loop."""
    left = asyncio.all_tasks(loop)
    for t in left:
        t.cancel()
    if left:
        loop.run_until_complete(_settle(left))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@contextlib.contextmanager
def loop_session(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    runner: TaskRunner,
    body: Callable[[TaskRunner], Coroutine[Any, Any, float]],
) -> Iterator[Run]:
    """A system whose runs are ``body(runner)`` inside one ``async with runner`` session, kept
    open on one event loop across runs: starting it (and its workers) is not timed."""
    loop = new_loop()
    try:
        loop.run_until_complete(runner.__aenter__())
        try:
            yield lambda: loop.run_until_complete(body(runner))
        finally:
            loop.run_until_complete(runner.__aexit__(None, None, None))
    finally:
        _close(loop)


# -- Dask -----------------------------------------------------------------------------------------
def _quiet_dask() -> None:
    # Dask reports a closing cluster's heartbeats and comms as errors: noise for a benchmark.
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def dask_client(*, processes: bool, workers: int, threads: int) -> Iterator[Any]:
    """A ``distributed.Client`` on a fresh ``LocalCluster`` (no dashboard), closed on exit."""
    from distributed import Client, LocalCluster

    _quiet_dask()
    with (
        LocalCluster(  # type: ignore[no-untyped-call, unused-ignore]
            n_workers=workers,
            threads_per_worker=threads,
            processes=processes,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call, unused-ignore]
    ):
        yield client


# -- Prefect --------------------------------------------------------------------------------------
_prefect_home: str | None = None


def _prefect_offline() -> None:
    """Point Prefect at its own ephemeral local server, before it is first imported."""
    global _prefect_home
    if _prefect_home is not None:
        return
    _prefect_home = tempfile.mkdtemp(prefix="asyncflow-bench-prefect-")
    atexit.register(shutil.rmtree, _prefect_home, ignore_errors=True)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(
        {
            "PREFECT_HOME": _prefect_home,
            "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            # Prefect's loggers keep their levels (and send their records to its server, as
            # by default); only the console stays quiet.
            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
            "PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL": "CRITICAL",
            "PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL": "CRITICAL",
            "PREFECT_LOGGING_SERVER_LEVEL": "CRITICAL",
        }
    )


def prefect_task(fn: Callable[..., Any]) -> Any:
    """``prefect.task(fn)``, after Prefect was pointed at its local server."""
    _prefect_offline()
    from prefect import task

    return task(fn)


# The flow's body and its mailboxes live at module level: Prefect's process runner sends the
# flow run's context (the flow with its function) to its workers, and cloudpickle sends a
# module-level function by name, where a closure would take its queues (and their locks) along.
_inbox: queue.Queue[Job | None] = queue.Queue()
_outbox: queue.Queue[tuple[float, BaseException | None]] = queue.Queue()


def _do(job: Job) -> None:
    try:
        _outbox.put((job(), None))
    except BaseException as exc:
        _outbox.put((0.0, exc))


def _host() -> None:
    """The flow: run each job it is handed until it is handed None."""
    while (job := _inbox.get()) is not None:
        _do(job)


@contextlib.contextmanager
def prefect_flow(make_runner: Callable[[], Any]) -> Iterator[Callable[[Job], float]]:
    """A Prefect flow running in a thread, with the task runner ``make_runner()``, that runs
    each job it is handed inside the flow: ``call(job)`` returns the job's seconds.

    One flow serves every round, so starting a flow run (and Prefect's bookkeeping after it)
    is paid once, outside the timer; the timer inside each job covers the tasks only.
    """
    _prefect_offline()
    from prefect import flow

    host = flow(name="asyncflow-bench", task_runner=make_runner(), persist_result=False)(_host)

    def serve() -> None:
        try:
            host()
        except BaseException as exc:  # the flow could not start: tell the waiting caller
            _outbox.put((0.0, exc))

    def call(job: Job) -> float:
        _inbox.put(job)
        seconds, exc = _outbox.get()
        if exc is not None:
            raise exc
        return seconds

    thread = threading.Thread(target=serve, name="prefect-flow", daemon=True)
    thread.start()
    try:
        call(time.perf_counter)  # the flow is running once this returns
        yield call
    finally:
        _inbox.put(None)
        thread.join(timeout=120)


# -- the slow systems, as rows --------------------------------------------------------------------
SLOW_RUNS = 5
"""Timed rounds of Dask and Prefect (after one warm-up): they are orders of magnitude slower,
so more rounds would only make the run longer."""


def dask_runner_system(
    label: str,
    tasks: int,
    job: Callable[[TaskRunner], float],
    *,
    processes: bool,
    workers: int,
    threads: int,
) -> System | Skip:
    """``job(runner)`` on a ``DaskTaskRunner`` of a fresh ``LocalCluster`` of ``workers`` x
    ``threads``: the same cluster as the row ``dask_system(label, ...)``, whose time over this
    one's is this row's ratio (below 1: asyncflow's Dask runner is slower than Dask itself)."""
    name = f"asyncflow DaskTaskRunner, LocalCluster {label}"
    reason = dask_missing()
    if reason is not None:
        return Skip(name, reason)

    @contextlib.contextmanager
    def start() -> Iterator[Run]:
        from asyncflow import DaskTaskRunner

        _quiet_dask()
        cluster = {
            "n_workers": workers,
            "threads_per_worker": threads,
            "processes": processes,
            "dashboard_address": None,
        }
        with DaskTaskRunner(cluster_kwargs=cluster) as runner:
            yield lambda: job(runner)

    return _over_a_cluster(name, tasks, start, f"Dask distributed LocalCluster, {label}")


def _over_a_cluster(
    name: str, tasks: int, start: Callable[[], contextlib.AbstractContextManager[Run]], versus: str
) -> System:
    """The row of an asyncflow runner over a cluster: its ratio is the cluster's own row's time
    (``versus``) over its own, with no goal."""
    return System(name, tasks, start, asyncflow=True, alone=True, versus=versus, runs=SLOW_RUNS)


_RAY_INIT = {"include_dashboard": False, "logging_level": logging.ERROR}


def ray_runner_system(
    label: str, tasks: int, job: Callable[[TaskRunner], float], *, cpus: int
) -> System | Skip:
    """``job(runner)`` on a ``RayTaskRunner`` of a fresh local Ray cluster of ``cpus`` CPUs:
    the same cluster as the row ``ray_system(label, ...)``, whose time over this one's is this
    row's ratio (below 1: asyncflow's Ray runner is slower than Ray itself)."""
    name = f"asyncflow RayTaskRunner, local Ray {label}"
    reason = ray_missing()
    if reason is not None:
        return Skip(name, reason)

    @contextlib.contextmanager
    def start() -> Iterator[Run]:
        from asyncflow import RayTaskRunner

        with RayTaskRunner(init_kwargs={**_RAY_INIT, "num_cpus": cpus}) as runner:
            yield lambda: job(runner)

    return _over_a_cluster(name, tasks, start, f"Ray, local cluster, {label}")


def ray_system(label: str, tasks: int, job: Callable[[Any], float], *, cpus: int) -> System | Skip:
    """``job(ray)`` with this process connected to a fresh local Ray cluster of ``cpus`` CPUs
    (no goal: Ray is not among the issue's field, and is here for its runner's ratio)."""
    name = f"Ray, local cluster, {label}"
    reason = ray_missing()
    if reason is not None:
        return Skip(name, reason)

    @contextlib.contextmanager
    def start() -> Iterator[Run]:
        import ray

        ray.init(num_cpus=cpus, **_RAY_INIT)  # type: ignore[arg-type]
        try:
            yield lambda: job(ray)
        finally:
            ray.shutdown()

    return System(name, tasks, start, alone=True, goal=None, runs=SLOW_RUNS)


def runner_each(fn: Any, n: int, check: Check) -> Callable[[TaskRunner], float]:
    """An asyncflow job on a started runner: submit ``fn(x=i)`` for each ``i``, take each
    result, check; returns the seconds."""

    def job(runner: TaskRunner) -> float:
        start = time.perf_counter()
        futures = [runner.submit(fn, {"x": i}) for i in range(n)]
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - start
        check(results, n)
        return seconds

    return job


def dask_system(
    label: str,
    tasks: int,
    job: Callable[[Any], float],
    *,
    processes: bool,
    workers: int,
    threads: int,
    goal: Goal | None = FASTER,
    note: str = "",
) -> System | Skip:
    """``job(client)`` on a fresh ``LocalCluster`` of ``workers`` x ``threads``."""
    name = f"Dask distributed LocalCluster, {label}"
    reason = dask_missing()
    if reason is not None:
        return Skip(name, reason)

    @contextlib.contextmanager
    def start() -> Iterator[Run]:
        with dask_client(processes=processes, workers=workers, threads=threads) as client:
            yield lambda: job(client)

    return System(name, tasks, start, alone=True, goal=goal, note=note, runs=SLOW_RUNS)


def prefect_threads(max_workers: int | None = None) -> Callable[[], Any]:
    def make() -> Any:
        from prefect.task_runners import ThreadPoolTaskRunner as PrefectThreads

        return PrefectThreads(max_workers=max_workers)

    return make


def prefect_processes(max_workers: int) -> Callable[[], Any]:
    def make() -> Any:
        from prefect.task_runners import ProcessPoolTaskRunner as PrefectProcesses

        return PrefectProcesses(max_workers=max_workers)

    return make


def prefect_system(
    label: str,
    tasks: int,
    make_runner: Callable[[], Any],
    make_job: Callable[[], Job],
    *,
    goal: Goal | None = FASTER,
    note: str = "",
) -> System | Skip:
    """The job ``make_job()`` (it builds its Prefect tasks) inside one flow on ``make_runner()``."""
    name = f"Prefect 3 {label}"
    reason = prefect_missing()
    if reason is not None:
        return Skip(name, reason)

    @contextlib.contextmanager
    def start() -> Iterator[Run]:
        _prefect_offline()
        job = make_job()
        with prefect_flow(make_runner) as call:
            yield lambda: call(job)

    return System(
        name, tasks, start, alone=True, goal=goal, note=note, family="Prefect", runs=SLOW_RUNS
    )


# -- the same job for Dask and Prefect: call ``fn(i)`` for i in range(n), check the results ------
Check = Callable[[list[Any], int], None]


def asyncflow_each(
    make_runner: Callable[[], TaskRunner], flow_task: Any, n: int, check: Check
) -> Callable[[], float]:
    """asyncflow from sync code: in one session (started outside the timer), submit
    ``flow_task(x=i)`` for each ``i``, then take each result, check; returns the seconds."""

    job = runner_each(flow_task, n, check)

    def run() -> float:
        with make_runner() as runner:
            return job(runner)

    return run


@contextlib.contextmanager
def thread_pool_each(workers: int, fn: Callable[[int], Any], n: int, check: Check) -> Iterator[Run]:
    """``ThreadPoolExecutor(workers)``, started outside the timer: each run submits ``fn(i)``
    for each ``i``, takes each result, checks; returns the seconds."""
    with ThreadPoolExecutor(workers) as executor:

        def run() -> float:
            start = time.perf_counter()
            futures = [executor.submit(fn, i) for i in range(n)]
            results = [f.result() for f in futures]
            seconds = time.perf_counter() - start
            check(results, n)
            return seconds

        yield run


async def in_task_group(one: Callable[[int], Coroutine[Any, Any, None]], n: int) -> float:
    """The seconds that ``one(i)`` for each ``i`` takes, each a task of one anyio task group."""
    import anyio

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return time.perf_counter() - start


def anyio_each(
    offload: str, fn: Callable[[int], Any], n: int, limit: int, check: Check
) -> Callable[[], Coroutine[Any, Any, float]]:
    """anyio: ``fn(i)`` for each ``i`` through ``anyio.to_thread`` or ``anyio.to_process``
    (``offload``: "thread" or "process"), at most ``limit`` at once, from one task group;
    the coroutine checks the results and returns the seconds."""

    async def run() -> float:
        import anyio
        import anyio.to_process
        import anyio.to_thread

        run_sync = anyio.to_thread.run_sync if offload == "thread" else anyio.to_process.run_sync
        limiter = anyio.CapacityLimiter(limit)
        results: list[Any] = [None] * n

        async def one(i: int) -> None:
            results[i] = await run_sync(fn, i, limiter=limiter)

        seconds = await in_task_group(one, n)
        check(results, n)
        return seconds

    return run


def dask_each(fn: Callable[[int], Any], n: int, check: Check) -> Callable[[Any], float]:
    """A Dask job: submit ``fn(i)`` for each ``i``, gather, check; returns the seconds."""

    def job(client: Any) -> float:
        start = time.perf_counter()
        futures = [client.submit(fn, i, pure=False) for i in range(n)]
        results = client.gather(futures)
        seconds = time.perf_counter() - start
        check(results, n)
        return seconds

    return job


def ray_each(fn: Callable[..., Any], args: list[Any], check: Check) -> Callable[[Any], float]:
    """A Ray job: a Ray task ``fn(a)`` for each of ``args`` (Ray's retries off, as asyncflow
    sets them), ``ray.get`` them all, check; returns the seconds."""

    def job(ray: Any) -> float:
        remote = ray.remote(fn).options(max_retries=0, retry_exceptions=False)
        start = time.perf_counter()
        results = ray.get([remote.remote(a) for a in args])
        seconds = time.perf_counter() - start
        check(results, len(args))
        return seconds

    return job


def prefect_each(fn: Callable[[int], Any], n: int, check: Check) -> Callable[[], Job]:
    """A Prefect job factory: submit ``fn(i)`` as a Prefect task for each ``i``, take each
    result, check; the job returns the seconds."""

    def make() -> Job:
        task_p = prefect_task(fn)

        def job() -> float:
            start = time.perf_counter()
            futures = [task_p.submit(i) for i in range(n)]
            results = [f.result() for f in futures]
            seconds = time.perf_counter() - start
            check(results, n)
            return seconds

        return job

    return make
