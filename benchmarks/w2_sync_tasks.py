"""W2: 10,000 no-op sync tasks on 8 threads, from plain sync code.

Each task is ``noop(x) -> x`` with ``x = i``; every run checks that task ``i`` returned ``i``.
asyncflow: ``with ThreadPoolTaskRunner(max_workers=8)``, submit every call, then ``.result()``
on each future in order; the timer covers the submits and the results (the former B2 goal row),
not starting and stopping the runner. ``ThreadPoolExecutor(8)``: the same, on a started
executor. anyio: ``to_thread.run_sync`` per call from a task group on uvloop, at most 8 at once.
asyncflow from coroutine code (``async with``, ``await`` each) is a row of its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from asyncflow import ThreadPoolTaskRunner, task

from ._config import Config
from ._field import Run, Skip, System, check_echo, measure
from ._report import Goal, Row
from ._systems import (
    anyio_each,
    asyncflow_each,
    dask_each,
    dask_runner_system,
    dask_system,
    loop_run,
    new_uvloop,
    prefect_each,
    prefect_system,
    prefect_threads,
    runner_each,
    thread_pool_each,
    uvloop_missing,
)
from ._work import noop

__all__ = ("TASKS", "WORKERS", "run")

TASKS = 10_000
WORKERS = 8
DASK_TASKS = 1_000
PREFECT_TASKS = 100
GOAL = Goal("<=", 1.3)
NAME = "W2 sync no-op tasks on 8 threads"
FLOW = "asyncflow ThreadPoolTaskRunner, sync caller"

noop_task = task(noop)


check = check_echo


_flow_run = asyncflow_each(
    lambda: ThreadPoolTaskRunner(max_workers=WORKERS), noop_task, TASKS, check
)


@contextlib.contextmanager
def _asyncflow() -> Iterator[Run]:
    yield _flow_run


async def _flow_async() -> float:
    runner = ThreadPoolTaskRunner(max_workers=WORKERS)
    start = time.perf_counter()
    async with runner:
        futures = [runner.submit(noop_task, {"x": i}) for i in range(TASKS)]
        results = [await f for f in futures]
    seconds = time.perf_counter() - start
    check(results, TASKS)
    return seconds


def _executor() -> contextlib.AbstractContextManager[Run]:
    return thread_pool_each(WORKERS, noop, TASKS, check)


_anyio = anyio_each("thread", noop, TASKS, WORKERS, check)


_dask_job = dask_each(noop, DASK_TASKS, check)


_prefect_job = prefect_each(noop, PREFECT_TASKS, check)


def systems() -> list[System | Skip]:
    field: list[System | Skip] = [
        System(FLOW, TASKS, _asyncflow, asyncflow=True),
        System("concurrent.futures ThreadPoolExecutor(8)", TASKS, _executor, goal=GOAL),
    ]
    no_uvloop = uvloop_missing()
    for name, make in (
        ("asyncflow ThreadPoolTaskRunner, async caller (uvloop)", _flow_async),
        ("anyio.to_thread.run_sync in a task group, uvloop", _anyio),
    ):
        if no_uvloop is not None:
            field.append(Skip(name, no_uvloop))
            continue
        flow = name.startswith("asyncflow")
        start = lambda make=make: loop_run(new_uvloop, make)  # noqa: E731
        field.append(System(name, TASKS, start, asyncflow=flow))
    return [
        *field,
        Skip(
            "asyncflow ProcessPoolTaskRunner",
            "its sync bodies run in processes, not on threads: that is W3",
        ),
        dask_runner_system(
            "8 threads",
            DASK_TASKS,
            runner_each(noop, DASK_TASKS, check),
            processes=False,
            workers=1,
            threads=8,
        ),
        dask_system("8 threads", DASK_TASKS, _dask_job, processes=False, workers=1, threads=8),
        prefect_system(
            "ThreadPoolTaskRunner(8)", PREFECT_TASKS, prefect_threads(WORKERS), _prefect_job
        ),
    ]


def run(config: Config) -> list[Row]:
    return measure(NAME, systems(), config)
