"""B4: after 100,000 no-op tasks whose futures were dropped, the scheduler holds nothing.

One ``async with ThreadPoolTaskRunner()`` session runs batches of 1,000 no-op coroutine tasks:
submit the batch, await it, drop the futures. ``tracemalloc`` is on from the start; its current
size is read after a few warm-up batches and again after the measured batches (each time after
``gc.collect()``, still inside the session). The growth between the two, the scheduler's
``live_count`` and ``graph_size`` are checked; the peak above the starting size and the number
of ``Future`` objects ``gc`` still finds are informational.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from asyncflow import Future, ThreadPoolTaskRunner, task

from ._config import Config
from ._report import Goal, Row, Unit, value_row

__all__ = ("BATCH", "run")

BATCH = 1_000
WARMUP_BATCHES = 5
BATCHES = 100
QUICK_BATCHES = 20
GROWTH_GOAL = Goal("<", 1_000_000, on="value")  # bytes
ZERO_GOAL = Goal("==", 0, on="value")


async def noop() -> None:
    return None


noop_task = task(noop)


async def _batch(runner: ThreadPoolTaskRunner) -> None:
    futures = [runner.submit(noop_task) for _ in range(BATCH)]
    for future in futures:
        await future


def _futures_alive() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Future))


async def _soak(batches: int) -> dict[str, int]:
    async with ThreadPoolTaskRunner() as runner:
        for _ in range(WARMUP_BATCHES):
            await _batch(runner)
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(batches):
            await _batch(runner)
        gc.collect()
        end, peak = tracemalloc.get_traced_memory()
        scheduler = runner._scheduler
        assert scheduler is not None
        return {
            "growth": end - start,
            "peak": peak - start,
            "live_count": scheduler.live_count,
            "graph_size": scheduler.graph_size,
            "futures_alive": _futures_alive(),
        }


def run(config: Config) -> list[Row]:
    batches = QUICK_BATCHES if config.quick else BATCHES
    tasks = batches * BATCH
    loop = asyncio.new_event_loop()
    tracemalloc.start()
    try:
        found = loop.run_until_complete(_soak(batches))
    finally:
        tracemalloc.stop()
        loop.close()
    measured: tuple[tuple[str, Unit, str, Goal | None], ...] = (
        ("tracemalloc growth", "bytes", "growth", GROWTH_GOAL),
        ("scheduler live_count", "count", "live_count", ZERO_GOAL),
        ("scheduler graph_size", "count", "graph_size", ZERO_GOAL),
        ("Future objects alive (gc)", "count", "futures_alive", None),
        ("tracemalloc peak above start", "bytes", "peak", None),
    )
    return [
        value_row(
            f"B4 dropped futures: {what}",
            "asyncio",
            tasks=tasks,
            unit=unit,
            value=found[key],
            goal=goal,
        )
        for what, unit, key, goal in measured
    ]
