"""W4: a layered DAG, 100 layers of 100 tasks; each task takes two results of the layer before.

Task ``i`` of a layer gets ``a=prev[i]`` and ``b=prev[(i + 1) % width]`` and returns
``(a + b) % 1_000_003``; the first layer gets plain numbers. Every system builds the whole graph
first, then waits for the last layer, and every run checks the last layer's values against a
plain-Python computation of the same graph. asyncflow: futures as parameters, inside
``async with ThreadPoolTaskRunner()`` (the timer covers the whole block). Hand-written asyncio:
every node an ``asyncio.create_task`` coroutine that awaits its two input tasks, one ``gather``
for the last layer. anyio: every node a task of one task group that waits for its inputs'
``anyio.Event``. Dask (``client.submit`` with futures as arguments) and Prefect (``.submit``
with futures as parameters) build smaller graphs of the same shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from functools import cache, partial
from typing import Any

from asyncflow import Future, ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner, task

from ._config import Config
from ._field import Skip, System, WrongAnswerError, measure
from ._report import Goal, Row
from ._systems import (
    Job,
    dask_runner_system,
    dask_system,
    loop_run,
    loop_session,
    new_uvloop,
    prefect_system,
    prefect_task,
    prefect_threads,
    uvloop_missing,
)

__all__ = ("LAYERS", "WIDTH", "check", "expected", "run", "submit_graph")

LAYERS = 100
WIDTH = 100
MODULUS = 1_000_003
PROCESS_LAYERS = 20  # asyncflow's process runner: 20 x 100
DASK_LAYERS = 10  # 10 x 100
PREFECT_SHAPE = (4, 5)  # 4 layers of 5
GOAL = Goal("<=", 2.5)
ASYNCIO_GOAL = Goal("<=", 3.0)  # the former B3 goal, both on the default asyncio loop
NAME = "W4 layered DAG, 2 inputs per task"
FLOW = "asyncflow ThreadPoolTaskRunner, uvloop"
FLOW_ASYNCIO = "asyncflow ThreadPoolTaskRunner, asyncio loop"


async def add(a: int, b: int) -> int:
    return (a + b) % MODULUS


def add_sync(a: int, b: int) -> int:
    return (a + b) % MODULUS


add_task = task(add)
add_sync_task = task(add_sync)


async def add_inputs(a: asyncio.Task[int], b: asyncio.Task[int]) -> int:
    return ((await a) + (await b)) % MODULUS


@cache
def expected(layers: int = LAYERS, width: int = WIDTH) -> list[int]:
    values = [i % MODULUS for i in range(width)]
    for _ in range(layers - 1):
        values = [(values[i] + values[(i + 1) % width]) % MODULUS for i in range(width)]
    return values


def check(values: list[Any], layers: int, width: int) -> None:
    if values != expected(layers, width):
        raise WrongAnswerError("wrong final values")


async def hand_written(layers: int = LAYERS, width: int = WIDTH) -> float:
    start = time.perf_counter()
    prev = [asyncio.create_task(add(i, 0)) for i in range(width)]
    for _ in range(layers - 1):
        prev = [
            asyncio.create_task(add_inputs(prev[i], prev[(i + 1) % width])) for i in range(width)
        ]
    values = await asyncio.gather(*prev)
    seconds = time.perf_counter() - start
    check(values, layers, width)
    return seconds


async def anyio_graph(layers: int = LAYERS, width: int = WIDTH) -> float:
    import anyio

    n = layers * width
    values = [0] * n
    done = [anyio.Event() for _ in range(n)]

    async def node(k: int) -> None:
        layer, i = divmod(k, width)
        if layer == 0:
            values[k] = await add(i, 0)
        else:
            a, b = k - width, (layer - 1) * width + (i + 1) % width
            await done[a].wait()
            await done[b].wait()
            values[k] = await add(values[a], values[b])
        done[k].set()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(n):
            tg.start_soon(node, k)
    seconds = time.perf_counter() - start
    check(values[-width:], layers, width)
    return seconds


def submit_graph(runner: TaskRunner, layers: int, width: int) -> list[Future[Any]]:
    prev: list[Future[Any]] = [runner.submit(add_task, {"a": i, "b": 0}) for i in range(width)]
    for _ in range(layers - 1):
        prev = [
            runner.submit(add_task, {"a": prev[i], "b": prev[(i + 1) % width]})
            for i in range(width)
        ]
    return prev


def with_asyncflow(make: Callable[[], TaskRunner]) -> Callable[[], Coroutine[Any, Any, float]]:
    async def run() -> float:
        runner = make()  # reads settings: not part of the per-task cost
        start = time.perf_counter()
        async with runner:
            values = [await f for f in submit_graph(runner, LAYERS, WIDTH)]
        seconds = time.perf_counter() - start
        check(values, LAYERS, WIDTH)
        return seconds

    return run


async def in_session(runner: TaskRunner) -> float:
    start = time.perf_counter()
    values = [await f for f in submit_graph(runner, PROCESS_LAYERS, WIDTH)]
    seconds = time.perf_counter() - start
    check(values, PROCESS_LAYERS, WIDTH)
    return seconds


def _dask_job(client: Any) -> float:
    start = time.perf_counter()
    prev = [client.submit(add_sync, i, 0, pure=False) for i in range(WIDTH)]
    for _ in range(DASK_LAYERS - 1):
        prev = [
            client.submit(add_sync, prev[i], prev[(i + 1) % WIDTH], pure=False)
            for i in range(WIDTH)
        ]
    values = client.gather(prev)
    seconds = time.perf_counter() - start
    check(values, DASK_LAYERS, WIDTH)
    return seconds


def _on_dask_job(runner: TaskRunner) -> float:
    """The graph of ``_dask_job`` through asyncflow's Dask runner (sync bodies, as there)."""
    start = time.perf_counter()
    prev = [runner.submit(add_sync_task, {"a": i, "b": 0}) for i in range(WIDTH)]
    for _ in range(DASK_LAYERS - 1):
        prev = [
            runner.submit(add_sync_task, {"a": prev[i], "b": prev[(i + 1) % WIDTH]})
            for i in range(WIDTH)
        ]
    values = [f.result() for f in prev]
    seconds = time.perf_counter() - start
    check(values, DASK_LAYERS, WIDTH)
    return seconds


def _prefect_job() -> Job:
    add_p = prefect_task(add)
    layers, width = PREFECT_SHAPE

    def job() -> float:
        start = time.perf_counter()
        prev = [add_p.submit(i, 0) for i in range(width)]
        for _ in range(layers - 1):
            prev = [add_p.submit(prev[i], prev[(i + 1) % width]) for i in range(width)]
        values = [f.result() for f in prev]
        seconds = time.perf_counter() - start
        check(values, layers, width)
        return seconds

    return job


def systems() -> list[System | Skip]:
    tasks = LAYERS * WIDTH
    no_uvloop = uvloop_missing()
    field: list[System | Skip] = []
    if no_uvloop is None:
        field += [
            System(
                FLOW,
                tasks,
                lambda: loop_run(new_uvloop, with_asyncflow(ThreadPoolTaskRunner)),
                asyncflow=True,
            ),
            System(
                "asyncflow ProcessPoolTaskRunner(2), uvloop",
                PROCESS_LAYERS * WIDTH,
                lambda: loop_session(new_uvloop, ProcessPoolTaskRunner(2), in_session),
                asyncflow=True,
                note="bodies run in 2 worker processes; session started outside the timer",
                runs=5,
            ),
            System(
                "hand-written asyncio, uvloop",
                tasks,
                lambda: loop_run(new_uvloop, hand_written),
                goal=GOAL,
            ),
            System(
                "hand-written anyio (events), uvloop",
                tasks,
                lambda: loop_run(new_uvloop, anyio_graph),
            ),
        ]
    else:
        field += [Skip(FLOW, no_uvloop), Skip("hand-written asyncio, uvloop", no_uvloop)]
    dask_tasks = DASK_LAYERS * WIDTH
    dask = partial(dask_system, tasks=dask_tasks, job=_dask_job)
    on_dask = partial(dask_runner_system, tasks=dask_tasks, job=_on_dask_job)
    return [
        *field,
        System(
            FLOW_ASYNCIO,
            tasks,
            lambda: loop_run(asyncio.new_event_loop, with_asyncflow(ThreadPoolTaskRunner)),
            asyncflow=True,
        ),
        System(
            "hand-written asyncio, asyncio loop",
            tasks,
            lambda: loop_run(asyncio.new_event_loop, hand_written),
            versus=FLOW_ASYNCIO,
            goal=ASYNCIO_GOAL,
        ),
        on_dask(label="threads", processes=False, workers=1, threads=2),
        dask(label="threads", processes=False, workers=1, threads=2),
        on_dask(label="2 processes", processes=True, workers=2, threads=1),
        dask(label="2 processes", processes=True, workers=2, threads=1),
        prefect_system(
            "ThreadPoolTaskRunner",
            PREFECT_SHAPE[0] * PREFECT_SHAPE[1],
            prefect_threads(),
            _prefect_job,
        ),
    ]


def run(config: Config) -> list[Row]:
    return measure(NAME, systems(), config)
