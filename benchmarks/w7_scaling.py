"""W7: W1 and W4 on asyncflow at 1,000, 10,000, 100,000 and 1,000,000 tasks: does the cost per
task stay flat as the graph grows?

The same runs as the asyncflow rows of W1 (no-op coroutine tasks, all submitted, then awaited)
and W4 (a layered DAG 100 tasks wide, as many layers as the size needs), on uvloop, each run
checked. Every task is submitted before the first one runs, so at the peak every node of the
graph is alive at once: memory per live node is the run's peak resident memory (the growth of
this process, see ``_memory.py``) divided by the number of tasks. It includes the benchmark's
own list of futures and of results (16 bytes per task). The 1,000,000 size runs only in a full
run (without ``--quick``), at most 5 timed rounds. Goals, at the largest size: time per task
within 1.5 times the time per task at 10,000, and at most 1 kB per live node. The same graphs
in plain asyncio (as in W1 and W4), on uvloop, at every size, show what growth is the
interpreter's (its cyclic garbage collector walks every live object) and not asyncflow's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from asyncflow import ThreadPoolTaskRunner

from . import w1_async_tasks, w4_dag
from ._config import Config
from ._field import Skip, System, measure
from ._report import Goal, Row, value_row
from ._systems import loop_run, new_uvloop, uvloop_missing
from ._timing import Stats

__all__ = ("SIZES", "run")

SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = SIZES[:3]
LARGEST_RUNS = 5
TIME_GOAL = Goal("<=", 1.5, on="value")
MEMORY_GOAL = Goal("<=", 1000, on="value")  # bytes per live node


async def _w1(n: int) -> float:
    return await w1_async_tasks.with_asyncflow(ThreadPoolTaskRunner, n)()


async def _w4(n: int) -> float:
    layers = n // w4_dag.WIDTH
    runner = ThreadPoolTaskRunner()
    start = time.perf_counter()
    async with runner:
        values = [await f for f in w4_dag.submit_graph(runner, layers, w4_dag.WIDTH)]
    seconds = time.perf_counter() - start
    w4_dag.check(values, layers, w4_dag.WIDTH)
    return seconds


async def _w1_raw(n: int) -> float:
    return await w1_async_tasks.raw_asyncio(n)


async def _w4_raw(n: int) -> float:
    return await w4_dag.hand_written(n // w4_dag.WIDTH, w4_dag.WIDTH)


def _scaled(
    shape: str,
    make: Callable[[int], Coroutine[Any, Any, float]],
    raw: tuple[str, Callable[[int], Coroutine[Any, Any, float]]],
    sizes: tuple[int, ...],
) -> list[System | Skip]:
    no_uvloop = uvloop_missing()
    field: list[System | Skip] = []
    for n in sizes:
        name = f"asyncflow, {shape}, {n:,} tasks"
        raw_name = f"{raw[0]}, {n:,} tasks"
        if no_uvloop is not None:
            field += [Skip(name, no_uvloop), Skip(raw_name, no_uvloop)]
            continue
        # The smaller sizes warm up the code; the largest one runs 5 times, none thrown away.
        runs, warmups = (LARGEST_RUNS, 0) if n >= 1_000_000 else (None, 1)
        field += [
            System(
                name,
                n,
                partial(loop_run, new_uvloop, partial(make, n)),
                asyncflow=True,
                runs=runs,
                warmups=warmups,
            ),
            System(
                raw_name,
                n,
                partial(loop_run, new_uvloop, partial(raw[1], n)),
                versus=name,
                runs=runs,
                warmups=warmups,
            ),
        ]
    return field


def _goals(workload: str, rows: list[Row], sizes: tuple[int, ...]) -> list[Row]:
    by_size = {
        row.tasks: row
        for row in rows
        if row.value is not None and row.system.startswith("asyncflow")
    }
    largest, reference = sizes[-1], 10_000
    if largest not in by_size or reference not in by_size:
        return []
    big, ref = by_size[largest], by_size[reference]
    assert big.value is not None
    assert ref.value is not None
    goals = [
        value_row(
            f"{workload}: time per task, {largest:,} over {reference:,}",
            "asyncflow",
            tasks=largest,
            unit="ratio",
            value=Stats(
                big.value.median / ref.value.median,
                big.value.min / ref.value.max,
                big.value.max / ref.value.min,
            ),
            goal=TIME_GOAL,
            correct=big.correct and ref.correct,
        )
    ]
    if big.rss is not None:
        goals.append(
            value_row(
                f"{workload}: memory per live node at {largest:,}",
                "asyncflow",
                tasks=largest,
                unit="bytes",
                value=big.rss.scaled(1 / largest),
                goal=MEMORY_GOAL,
                note="peak RSS growth / tasks",
                correct=big.correct,
            )
        )
    return goals


def _per_node(rows: list[Row]) -> list[Row]:
    """The same rows, each noting its memory per task."""
    out = []
    for row in rows:
        if row.rss is not None:
            per = row.rss.median / row.tasks
            note = "; ".join(filter(None, (row.note, f"{per:,.0f} B per task")))
            out.append(dataclasses.replace(row, note=note))
        else:
            out.append(row)
    return out


def run(config: Config) -> list[Row]:
    sizes = QUICK_SIZES if config.quick else SIZES
    rows: list[Row] = []
    for label, shape, make, raw in (
        ("W7 scaling of W1", "async no-op tasks", _w1, ("asyncio create_task + gather", _w1_raw)),
        ("W7 scaling of W4", "DAG 100 wide", _w4, ("hand-written asyncio DAG", _w4_raw)),
    ):
        found = measure(label, _scaled(shape, make, raw, sizes), config)
        rows += _per_node(found) + _goals(label, found, sizes)
    return rows


if __name__ == "__main__":  # a quick look at one size: python -m benchmarks.w7_scaling
    print(asyncio.run(_w4(10_000)))
