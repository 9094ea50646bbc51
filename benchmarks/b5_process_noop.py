"""B5: 2,000 no-op tasks on 2 worker processes, from sync code.

asyncflow: ``runner.map(noop_task, {"x": range(2000)})`` then ``.result()``, inside one
``with ProcessPoolTaskRunner(2)`` session whose workers were started and warmed up first. Two
baselines, each on one ``ProcessPoolExecutor(2, mp_context=spawn)`` started and warmed up the
same way: (a) ``submit`` per call then ``.result()`` on each future; (b) ``executor.map`` with
``chunksize=100``, a chunk size tuned by hand for this batch. Only the calls and the results
are timed, never starting or stopping the pools. Every run checks that the results are the
inputs, in order.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from asyncflow import ProcessPoolTaskRunner, task

from ._config import Config
from ._report import Goal, Row, time_row
from ._timing import Pair, Sample, alternate
from ._work import noop

__all__ = ("CHUNKSIZE", "TASKS", "WORKERS", "run")

TASKS = 2_000
WORKERS = 2
CHUNKSIZE = 100
SUBMIT_GOAL = Goal("<=", 1 / 3)  # time ratio: at least 3 times the throughput of (a)
MAP_GOAL = Goal("<=", 1.0)  # at least the throughput of (b)

noop_task = task(noop)
_EXPECTED = list(range(TASKS))


class _Sides:
    """The three timed runs, on pools started once; remembers whether every answer was right."""

    def __init__(self, runner: ProcessPoolTaskRunner, executor: ProcessPoolExecutor) -> None:
        self.runner = runner
        self.executor = executor
        self.correct = True

    def _check(self, results: list[int]) -> None:
        self.correct &= results == _EXPECTED

    def submit(self) -> Sample:
        start = time.perf_counter()
        futures = [self.executor.submit(noop, i) for i in range(TASKS)]
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - start
        self._check(results)
        return {"run": seconds}

    def chunked(self) -> Sample:
        start = time.perf_counter()
        results = list(self.executor.map(noop, range(TASKS), chunksize=CHUNKSIZE))
        seconds = time.perf_counter() - start
        self._check(results)
        return {"run": seconds}

    def asyncflow(self) -> Sample:
        start = time.perf_counter()
        results = self.runner.map(noop_task, {"x": range(TASKS)}).result()
        seconds = time.perf_counter() - start
        self._check(results)
        return {"run": seconds}


def _note(pair: Pair, correct: bool) -> str:
    if not correct:
        return "WRONG results"
    return f"asyncflow {pair.baseline.median / pair.asyncflow.median:.2f}x the throughput"


def run(config: Config) -> list[Row]:
    spawn = multiprocessing.get_context("spawn")
    with (
        ProcessPoolTaskRunner(WORKERS) as runner,
        ProcessPoolExecutor(WORKERS, mp_context=spawn) as executor,
    ):
        sides = _Sides(runner, executor)
        # Start every worker and let asyncflow learn that this task is cheap (it then sends its
        # calls in batches) before the warm-up rounds of the comparison.
        sides.asyncflow()
        sides.chunked()
        submit = alternate(sides.submit, sides.asyncflow, config.runs, config.warmup)["run"]
        chunked = alternate(sides.chunked, sides.asyncflow, config.runs, config.warmup)["run"]
    name = f"B5 no-op tasks on {WORKERS} processes"
    return [
        time_row(
            name,
            "ProcessPoolExecutor (spawn) submit + result",
            tasks=TASKS,
            pair=submit,
            goal=SUBMIT_GOAL,
            note=_note(submit, sides.correct),
            correct=sides.correct,
        ),
        time_row(
            name,
            f"ProcessPoolExecutor (spawn) map, chunksize={CHUNKSIZE}",
            tasks=TASKS,
            pair=chunked,
            goal=MAP_GOAL,
            note=_note(chunked, sides.correct),
            correct=sides.correct,
        ),
    ]
