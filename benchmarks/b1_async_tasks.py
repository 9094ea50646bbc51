"""B1: no-op coroutine tasks submitted to ``async with ThreadPoolTaskRunner()``, then awaited.

Baseline: the same coroutines through ``asyncio.create_task`` and one ``gather``, on the same
loop. Both sides run on the default asyncio loop and again on uvloop (one row each). A second
row per loop measures the runner with one no-op event subscriber attached (three ``TaskEvent``
records built and delivered per task), against the same baseline.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from asyncflow import TaskEvent, ThreadPoolTaskRunner, task

from ._config import Config
from ._report import Goal, Row, time_row
from ._timing import Sample, alternate, on_loop

__all__ = ("TASKS", "run")

TASKS = 10_000
GOAL = Goal("<=", 3.0)


async def noop() -> None:
    return None


noop_task = task(noop)


async def baseline(n: int = TASKS) -> Sample:
    start = time.perf_counter()
    tasks = [asyncio.create_task(noop()) for _ in range(n)]
    await asyncio.gather(*tasks)
    return {"run": time.perf_counter() - start}


def _ignore(event: TaskEvent) -> None:
    return None


async def with_asyncflow(n: int = TASKS, listened: bool = False) -> Sample:
    runner = ThreadPoolTaskRunner()  # reads settings: not part of the per-task cost
    if listened:
        runner.subscribe(_ignore)
    start = time.perf_counter()
    async with runner:
        futures = [runner.submit(noop_task) for _ in range(n)]
        for future in futures:
            await future
    return {"run": time.perf_counter() - start}


async def with_asyncflow_listened(n: int = TASKS) -> Sample:
    return await with_asyncflow(n, listened=True)


def _loops() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]]:
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio", asyncio.new_event_loop)
    ]
    try:
        import uvloop
    except ImportError:  # e.g. on Windows
        print("B1: uvloop is not installed, measured on asyncio only", file=sys.stderr)
    else:
        loops.append(("uvloop", uvloop.new_event_loop))
    return loops


def run(config: Config) -> list[Row]:
    rows = []
    for system, new_loop in _loops():
        loop = new_loop()
        try:
            pairs = alternate(
                on_loop(loop, baseline), on_loop(loop, with_asyncflow), config.runs, config.warmup
            )
            listened = alternate(
                on_loop(loop, baseline),
                on_loop(loop, with_asyncflow_listened),
                config.runs,
                config.warmup,
            )
        finally:
            loop.close()
        rows.append(
            time_row("B1 async no-op tasks", system, tasks=TASKS, pair=pairs["run"], goal=GOAL)
        )
        rows.append(
            time_row(
                "B1 async no-op tasks, one no-op event subscriber",
                system,
                tasks=TASKS,
                pair=listened["run"],
                goal=None,
                note="3 events per task",
            )
        )
    return rows
