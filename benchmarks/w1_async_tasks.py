"""W1: 10,000 no-op coroutine tasks, submitted, then awaited in order.

Each task is ``async def echo(x): return x`` with ``x = i``, so every run can check that task
``i`` returned ``i``. asyncflow submits them inside ``async with runner`` and awaits each
future; the timer covers the whole block (constructing the runner, which reads settings once,
is not timed). Raw asyncio: ``create_task`` each, then one ``gather``; anyio: ``start_soon``
each in a task group, results written into a list. Dask and Prefect run the same coroutine as
their tasks, fewer of them (their cost per task is what is compared).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from asyncflow import ProcessPoolTaskRunner, TaskEvent, TaskRunner, ThreadPoolTaskRunner, task

from ._config import Config
from ._field import Skip, System, check_echo, measure
from ._report import Goal, Row
from ._systems import (
    dask_each,
    dask_runner_system,
    dask_system,
    in_task_group,
    loop_run,
    loop_session,
    new_uvloop,
    prefect_each,
    prefect_system,
    prefect_threads,
    runner_each,
    uvloop_missing,
)

__all__ = ("TASKS", "run")

TASKS = 10_000
DASK_TASKS = 500
PREFECT_TASKS = 25
GOAL = Goal("<=", 2.5)  # asyncflow (uvloop) over raw asyncio + uvloop
ASYNCIO_GOAL = Goal("<=", 3.0)  # the former B1 goal, both on the default asyncio loop
NAME = "W1 async no-op tasks"
FLOW = "asyncflow ThreadPoolTaskRunner, uvloop"
FLOW_ASYNCIO = "asyncflow ThreadPoolTaskRunner, asyncio loop"


async def echo(x: int) -> int:
    return x


echo_task = task(echo)


check = check_echo


async def raw_asyncio(n: int = TASKS) -> float:
    start = time.perf_counter()
    tasks = [asyncio.create_task(echo(i)) for i in range(n)]
    results = await asyncio.gather(*tasks)
    seconds = time.perf_counter() - start
    check(results, n)
    return seconds


async def anyio_group(n: int = TASKS) -> float:
    results: list[int | None] = [None] * n

    async def one(i: int) -> None:
        results[i] = await echo(i)

    seconds = await in_task_group(one, n)
    check(results, n)
    return seconds


def _ignore(event: TaskEvent) -> None:
    return None


def listened() -> ThreadPoolTaskRunner:
    """A runner with one no-op event subscriber: every run builds and delivers its events."""
    runner = ThreadPoolTaskRunner()
    runner.subscribe(_ignore)
    return runner


def with_asyncflow(
    make: Callable[[], TaskRunner], n: int = TASKS
) -> Callable[[], Coroutine[Any, Any, float]]:
    async def run() -> float:
        runner = make()  # reads settings: not part of the per-task cost
        start = time.perf_counter()
        async with runner:
            futures = [runner.submit(echo_task, {"x": i}) for i in range(n)]
            results = [await f for f in futures]
        seconds = time.perf_counter() - start
        check(results, n)
        return seconds

    return run


async def in_session(runner: TaskRunner, n: int = TASKS) -> float:
    start = time.perf_counter()
    futures = [runner.submit(echo_task, {"x": i}) for i in range(n)]
    results = [await f for f in futures]
    seconds = time.perf_counter() - start
    check(results, n)
    return seconds


_dask_job = dask_each(echo, DASK_TASKS, check)


_prefect_job = prefect_each(echo, PREFECT_TASKS, check)


def systems() -> list[System | Skip]:
    no_uvloop = uvloop_missing()
    field: list[System | Skip] = []
    if no_uvloop is None:
        field += [
            System(
                FLOW,
                TASKS,
                lambda: loop_run(new_uvloop, with_asyncflow(ThreadPoolTaskRunner)),
                asyncflow=True,
            ),
            System(
                "asyncflow ThreadPoolTaskRunner, uvloop, one no-op event subscriber",
                TASKS,
                lambda: loop_run(new_uvloop, with_asyncflow(listened)),
                asyncflow=True,
                note="3 events per task",
            ),
            System(
                "asyncflow ProcessPoolTaskRunner, uvloop",
                TASKS,
                lambda: loop_session(new_uvloop, ProcessPoolTaskRunner(2), in_session),
                asyncflow=True,
                note="bodies run in 2 worker processes; session started outside the timer",
            ),
            System(
                "asyncio + uvloop, create_task + gather",
                TASKS,
                lambda: loop_run(new_uvloop, raw_asyncio),
                goal=GOAL,
            ),
            System("anyio task group, uvloop", TASKS, lambda: loop_run(new_uvloop, anyio_group)),
        ]
    else:
        field += [Skip(FLOW, no_uvloop), Skip("asyncio + uvloop", no_uvloop)]
    field += [
        System(
            FLOW_ASYNCIO,
            TASKS,
            lambda: loop_run(asyncio.new_event_loop, with_asyncflow(ThreadPoolTaskRunner)),
            asyncflow=True,
        ),
        System(
            "asyncio, create_task + gather",
            TASKS,
            lambda: loop_run(asyncio.new_event_loop, raw_asyncio),
            versus=FLOW_ASYNCIO,
            goal=ASYNCIO_GOAL,
        ),
    ]
    return [
        *field,
        dask_runner_system(
            "threads",
            DASK_TASKS,
            runner_each(echo, DASK_TASKS, check),
            processes=False,
            workers=1,
            threads=1,
        ),
        dask_system("threads", DASK_TASKS, _dask_job, processes=False, workers=1, threads=1),
        dask_system("2 processes", DASK_TASKS, _dask_job, processes=True, workers=2, threads=1),
        prefect_system("ThreadPoolTaskRunner", PREFECT_TASKS, prefect_threads(), _prefect_job),
    ]


def run(config: Config) -> list[Row]:
    return measure(NAME, systems(), config)
