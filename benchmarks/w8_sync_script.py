"""W8: 10,000 submits from a plain sync script, each followed later by ``.result()``.

The script submits every call, then calls ``.result()`` on each future in order; every run
checks that call ``i`` returned ``i``. asyncflow: ``with ThreadPoolTaskRunner()`` and a no-op
coroutine task, which runs on the runner's own loop thread: this measures the bridge from sync
code to that loop and back (the timer covers the submits and the results, not starting and
stopping the runner). Its floor, written by hand: ``asyncio.run_coroutine_threadsafe`` onto a
uvloop loop running in a thread, then ``.result()`` on each ``concurrent.futures.Future``.
``ThreadPoolExecutor(8)`` with a sync no-op is there for scale. Dask (``client.submit`` then
``.result()``, the coroutine on its workers' loop) and Prefect (``.submit`` then ``.result()``
in a sync flow) run fewer calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

from asyncflow import ProcessPoolTaskRunner, ThreadPoolTaskRunner, task

from ._config import Config
from ._field import Run, Skip, System, check_echo, measure
from ._report import Row
from ._systems import (
    asyncflow_each,
    dask_runner_system,
    dask_system,
    new_uvloop,
    prefect_each,
    prefect_system,
    prefect_threads,
    runner_each,
    thread_pool_each,
    uvloop_missing,
)
from ._work import noop

__all__ = ("TASKS", "run")

TASKS = 10_000
DASK_TASKS = 500
PREFECT_TASKS = 25
NAME = "W8 submits from a sync script, .result() later"


async def echo(x: int) -> int:
    return x


echo_task = task(echo)


check = check_echo


_flow_run = asyncflow_each(ThreadPoolTaskRunner, echo_task, TASKS, check)


@contextlib.contextmanager
def _asyncflow() -> Iterator[Run]:
    yield _flow_run


@contextlib.contextmanager
def _asyncflow_processes() -> Iterator[Run]:
    job = runner_each(echo_task, TASKS, check)
    with ProcessPoolTaskRunner(2) as runner:

        def run() -> float:
            return job(runner)

        run()  # start both workers
        yield run


@contextlib.contextmanager
def _threadsafe() -> Iterator[Run]:
    loop = new_uvloop()
    thread = threading.Thread(target=loop.run_forever, name="bench-loop", daemon=True)
    thread.start()
    try:

        def run() -> float:
            start = time.perf_counter()
            futures = [asyncio.run_coroutine_threadsafe(echo(i), loop) for i in range(TASKS)]
            results = [f.result() for f in futures]
            seconds = time.perf_counter() - start
            check(results, TASKS)
            return seconds

        yield run
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def _executor() -> contextlib.AbstractContextManager[Run]:
    return thread_pool_each(8, noop, TASKS, check)


def _dask_job(client: Any) -> float:
    start = time.perf_counter()
    futures = [client.submit(echo, i, pure=False) for i in range(DASK_TASKS)]
    results = [f.result() for f in futures]
    seconds = time.perf_counter() - start
    check(results, DASK_TASKS)
    return seconds


_prefect_job = prefect_each(echo, PREFECT_TASKS, check)


def systems() -> list[System | Skip]:
    no_uvloop = uvloop_missing()
    bridge = "asyncio.run_coroutine_threadsafe to a uvloop thread"
    dask = partial(dask_system, tasks=DASK_TASKS, job=_dask_job)
    on_dask = partial(
        dask_runner_system, tasks=DASK_TASKS, job=runner_each(echo, DASK_TASKS, check)
    )
    return [
        System("asyncflow ThreadPoolTaskRunner", TASKS, _asyncflow, asyncflow=True),
        System(
            "asyncflow ProcessPoolTaskRunner(2)",
            TASKS,
            _asyncflow_processes,
            asyncflow=True,
            note="bodies run in 2 worker processes; started outside the timer",
        ),
        Skip(bridge, no_uvloop) if no_uvloop else System(bridge, TASKS, _threadsafe),
        System(
            "concurrent.futures ThreadPoolExecutor(8), sync no-op",
            TASKS,
            _executor,
        ),
        on_dask(label="threads", processes=False, workers=1, threads=1),
        dask(label="threads", processes=False, workers=1, threads=1),
        on_dask(label="2 processes", processes=True, workers=2, threads=1),
        dask(label="2 processes", processes=True, workers=2, threads=1),
        prefect_system("ThreadPoolTaskRunner", PREFECT_TASKS, prefect_threads(), _prefect_job),
    ]


def run(config: Config) -> list[Row]:
    return measure(NAME, systems(), config)
