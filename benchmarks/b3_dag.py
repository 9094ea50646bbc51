"""B3: a layered DAG, 100 layers of 100 tasks; each task takes two futures of the layer before.

Task ``i`` of a layer gets ``a=prev[i]`` and ``b=prev[(i + 1) % 100]`` and returns
``(a + b) % 1_000_003``; the first layer gets plain numbers. Baseline: the same graph written by
hand in asyncio, every node an ``asyncio.create_task`` coroutine that awaits its two input tasks.
Both sides build the whole graph first, then wait for the last layer, on the default asyncio
loop; the final values are checked against a plain-Python computation of the same graph.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asyncflow import Future, ThreadPoolTaskRunner, task

from ._config import Config
from ._report import Goal, Row, time_row
from ._timing import Sample, alternate, on_loop

__all__ = ("LAYERS", "WIDTH", "run")

LAYERS = 100
WIDTH = 100
MODULUS = 1_000_003
GOAL = Goal("<=", 3.0)


async def add(a: int, b: int) -> int:
    return (a + b) % MODULUS


add_task = task(add)


async def add_inputs(a: asyncio.Task[int], b: asyncio.Task[int]) -> int:
    return ((await a) + (await b)) % MODULUS


def expected(layers: int = LAYERS, width: int = WIDTH) -> list[int]:
    values = [i % MODULUS for i in range(width)]
    for _ in range(layers - 1):
        values = [(values[i] + values[(i + 1) % width]) % MODULUS for i in range(width)]
    return values


async def baseline_graph(layers: int = LAYERS, width: int = WIDTH) -> tuple[float, list[int]]:
    start = time.perf_counter()
    prev = [asyncio.create_task(add(i, 0)) for i in range(width)]
    for _ in range(layers - 1):
        prev = [
            asyncio.create_task(add_inputs(prev[i], prev[(i + 1) % width])) for i in range(width)
        ]
    values = await asyncio.gather(*prev)
    return time.perf_counter() - start, values


async def asyncflow_graph(layers: int = LAYERS, width: int = WIDTH) -> tuple[float, list[int]]:
    runner = ThreadPoolTaskRunner()  # reads settings: not part of the per-task cost
    start = time.perf_counter()
    async with runner:
        prev: list[Future[Any]] = [runner.submit(add_task, {"a": i, "b": 0}) for i in range(width)]
        for _ in range(layers - 1):
            prev = [
                runner.submit(add_task, {"a": prev[i], "b": prev[(i + 1) % width]})
                for i in range(width)
            ]
        values = [await f for f in prev]
    return time.perf_counter() - start, values


async def baseline() -> Sample:
    seconds, _ = await baseline_graph()
    return {"run": seconds}


async def with_asyncflow() -> Sample:
    seconds, _ = await asyncflow_graph()
    return {"run": seconds}


def run(config: Config) -> list[Row]:
    loop = asyncio.new_event_loop()
    try:
        # One checked round first: a fast wrong answer would be worth nothing.
        want = expected()
        _, got_base = loop.run_until_complete(baseline_graph())
        _, got_flow = loop.run_until_complete(asyncflow_graph())
        same = got_base == want and got_flow == want
        pairs = alternate(
            on_loop(loop, baseline), on_loop(loop, with_asyncflow), config.runs, config.warmup
        )
    finally:
        loop.close()
    note = "final values match" if same else "WRONG final values"
    return [
        time_row(
            "B3 layered DAG 100x100",
            "asyncio",
            tasks=LAYERS * WIDTH,
            pair=pairs["run"],
            goal=GOAL,
            note=note,
            correct=same,
        )
    ]
