"""W5: 1,000 coroutine tasks that each sleep 10 ms, unbounded and at most 100 at once.

The floors: 10 ms unbounded (every sleep at once) and 1,000 / 100 x 10 ms = 100 ms with the
limit; the goal is asyncflow within 10% of each. Times are whole runs (not per task). Every
run checks that task ``i`` returned ``i``. asyncflow unbounded: submit every call inside
``async with ThreadPoolTaskRunner()``; limited: ``ThreadPoolTaskRunner(max_concurrency=100)``,
and ``runner.map(..., max_in_flight=100)`` as a second row. Raw asyncio: ``gather``, limited
by an ``asyncio.Semaphore(100)``; anyio: a task group, limited by a ``CapacityLimiter(100)``.
Dask runs the same coroutines on one worker with as many task slots as the limit (1,000 for
"unbounded"). Prefect runs 50 tasks, unbounded and 5 at once: the same two floors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from typing import Any

from asyncflow import TaskRunner, ThreadPoolTaskRunner, task

from ._config import Config
from ._field import Run, Skip, System, check_echo, measure
from ._report import Goal, Row
from ._systems import (
    dask_runner_system,
    dask_system,
    in_task_group,
    loop_run,
    new_uvloop,
    prefect_each,
    prefect_system,
    prefect_threads,
    runner_each,
    uvloop_missing,
)

__all__ = ("LIMIT", "SLEEP", "TASKS", "run")

TASKS = 1_000
LIMIT = 100
SLEEP = 0.010
PREFECT_TASKS = 50
FLOOR_GOAL = Goal("<=", 1.1)
FLOW = "asyncflow ThreadPoolTaskRunner"


async def nap(x: int) -> int:
    await asyncio.sleep(SLEEP)
    return x


nap_task = task(nap)


check = check_echo


@contextlib.contextmanager
def _floor(seconds: float) -> Iterator[Run]:
    yield lambda: seconds


def _raw(limit: int | None) -> Callable[[], Coroutine[Any, Any, float]]:
    async def run() -> float:
        gate = asyncio.Semaphore(limit) if limit else None

        async def one(i: int) -> int:
            if gate is None:
                return await nap(i)
            async with gate:
                return await nap(i)

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(TASKS)))
        seconds = time.perf_counter() - start
        check(results, TASKS)
        return seconds

    return run


def _anyio(limit: int | None) -> Callable[[], Coroutine[Any, Any, float]]:
    async def run() -> float:
        import anyio

        limiter = anyio.CapacityLimiter(limit) if limit else None
        results: list[int | None] = [None] * TASKS

        async def one(i: int) -> None:
            if limiter is None:
                results[i] = await nap(i)
                return
            async with limiter:
                results[i] = await nap(i)

        seconds = await in_task_group(one, TASKS)
        check(results, TASKS)
        return seconds

    return run


def _asyncflow(
    make: Callable[[], TaskRunner], in_flight: int | None = None
) -> Callable[[], Coroutine[Any, Any, float]]:
    async def run() -> float:
        runner = make()
        start = time.perf_counter()
        async with runner:
            if in_flight is None:
                futures = [runner.submit(nap_task, {"x": i}) for i in range(TASKS)]
                results = [await f for f in futures]
            else:
                results = await runner.map(nap_task, {"x": range(TASKS)}, max_in_flight=in_flight)
        seconds = time.perf_counter() - start
        check(results, TASKS)
        return seconds

    return run


def _dask_job(client: Any) -> float:
    start = time.perf_counter()
    futures = [client.submit(nap, i, pure=False) for i in range(TASKS)]
    results = client.gather(futures)
    seconds = time.perf_counter() - start
    check(results, TASKS)
    return seconds


_prefect_job = prefect_each(nap, PREFECT_TASKS, check)


def systems(limit: int | None) -> list[System | Skip]:
    no_uvloop = uvloop_missing()
    floor = SLEEP * (TASKS / limit if limit else 1)
    flow = FLOW if limit is None else f"{FLOW}(max_concurrency={limit})"
    kinds: list[tuple[str, Callable[[], Coroutine[Any, Any, float]], bool]] = [
        (
            flow,
            _asyncflow(
                ThreadPoolTaskRunner
                if limit is None
                else lambda: ThreadPoolTaskRunner(max_concurrency=limit)
            ),
            True,
        ),
    ]
    if limit is not None:
        in_flight = _asyncflow(ThreadPoolTaskRunner, limit)
        kinds.append((f"asyncflow map(..., max_in_flight={limit})", in_flight, True))
    kinds += [
        ("asyncio, gather" + (f" + Semaphore({limit})" if limit else ""), _raw(limit), False),
        (
            "anyio task group" + (f" + CapacityLimiter({limit})" if limit else ""),
            _anyio(limit),
            False,
        ),
    ]
    field: list[System | Skip] = [
        System(
            f"floor: {floor * 1e3:g} ms",
            TASKS,
            lambda: _floor(floor),
            goal=FLOOR_GOAL,
            note="ratio: asyncflow over the floor",
            floor=True,
        )
    ]
    for name, make, is_flow in kinds:
        label = f"{name}, uvloop"
        if no_uvloop is not None:
            field.append(Skip(label, no_uvloop))
        else:
            start = partial(loop_run, new_uvloop, make)
            field.append(System(label, TASKS, start, asyncflow=is_flow))
    prefect_limit = None if limit is None else PREFECT_TASKS * limit // TASKS
    slots = limit or TASKS
    return [
        *field,
        Skip(
            "asyncflow ProcessPoolTaskRunner",
            "it runs coroutine bodies in worker processes; this workload is about one loop",
        ),
        dask_runner_system(
            f"1 worker, {slots} task slots",
            TASKS,
            runner_each(nap, TASKS, check),
            processes=False,
            workers=1,
            threads=slots,
        ),
        dask_system(
            f"1 worker, {slots} task slots",
            TASKS,
            _dask_job,
            processes=False,
            workers=1,
            threads=slots,
        ),
        prefect_system(
            f"ThreadPoolTaskRunner({prefect_limit or PREFECT_TASKS})",
            PREFECT_TASKS,
            prefect_threads(prefect_limit or PREFECT_TASKS),
            _prefect_job,
            note=f"{PREFECT_TASKS} tasks: the same floor",
        ),
    ]


def _over_floor(rows: list[Row], floor: float) -> list[Row]:
    """The same rows, each noting its time as a multiple of the floor."""
    out = []
    for row in rows:
        if row.value is not None and not row.system.startswith("floor"):
            note = "; ".join(filter(None, (row.note, f"{row.value.median / floor:.2f}x the floor")))
            out.append(dataclasses.replace(row, note=note))
        else:
            out.append(row)
    return out


def run(config: Config) -> list[Row]:
    rows = measure("W5 1,000 tasks sleeping 10 ms, unbounded", systems(None), config, unit="s")
    rows = _over_floor(rows, SLEEP)
    limited = measure(
        f"W5 1,000 tasks sleeping 10 ms, at most {LIMIT} at once",
        systems(LIMIT),
        config,
        unit="s",
    )
    return rows + _over_floor(limited, SLEEP * TASKS / LIMIT)
