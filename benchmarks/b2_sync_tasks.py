"""B2: no-op sync tasks through ``ThreadPoolTaskRunner(max_workers=8)`` from sync code.

Baseline: ``concurrent.futures.ThreadPoolExecutor(8)``. Both sides submit every task, then call
``.result()`` on each future in order. The goal row times only that part; a second,
informational row times the whole ``with`` block, start-up and shutdown included.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from asyncflow import ThreadPoolTaskRunner, task

from ._config import Config
from ._report import Goal, Row, time_row
from ._timing import Sample, alternate

__all__ = ("TASKS", "run")

TASKS = 10_000
WORKERS = 8
GOAL = Goal("<=", 1.5)


def noop() -> None:
    return None


noop_task = task(noop)


def baseline(n: int = TASKS) -> Sample:
    begin = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as executor:
        start = time.perf_counter()
        futures = [executor.submit(noop) for _ in range(n)]
        for future in futures:
            future.result()
        core = time.perf_counter() - start
        del futures
    return {"core": core, "whole": time.perf_counter() - begin}


_loop_kinds: set[str] = set()


def with_asyncflow(n: int = TASKS) -> Sample:
    begin = time.perf_counter()
    with ThreadPoolTaskRunner(max_workers=WORKERS) as runner:
        start = time.perf_counter()
        futures = [runner.submit(noop_task) for _ in range(n)]
        for future in futures:
            future.result()
        core = time.perf_counter() - start
        del futures
        scheduler = runner._scheduler
        assert scheduler is not None
        _loop_kinds.add(type(scheduler.loop).__module__.partition(".")[0])
    return {"core": core, "whole": time.perf_counter() - begin}


def run(config: Config) -> list[Row]:
    _loop_kinds.clear()
    pairs = alternate(baseline, with_asyncflow, config.runs, config.warmup)
    system = f"sync caller, runner loop: {'/'.join(sorted(_loop_kinds))}"
    return [
        time_row(
            "B2 sync no-op tasks, submit + result",
            system,
            tasks=TASKS,
            pair=pairs["core"],
            goal=GOAL,
        ),
        time_row(
            "B2 sync no-op tasks, whole `with` block",
            system,
            tasks=TASKS,
            pair=pairs["whole"],
            goal=None,
            note="start-up and shutdown included",
        ),
    ]
