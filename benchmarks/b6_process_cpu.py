"""B6: 16 CPU-bound tasks of about 50 ms each on 2 worker processes: how close to ideal.

The loop count of ``burn`` is calibrated once, in this process, so that one call takes about
50 ms. asyncflow runs 16 calls with ``runner.map`` in one warmed-up
``with ProcessPoolTaskRunner(2)`` session. The "baseline" of the goal row is the ideal wall
time: one call of ``burn`` timed here, in this process, while the workers are idle, times
16 / 2. It is measured again in every round, so a slow patch on the machine moves both numbers.

Two rows for information tell the cost of the machine (two busy processes on two cores) from
the cost of the pool:

- asyncflow's wall time next to the busiest worker's own time: the durations of its calls, as
  that worker measured them, summed. What is left is the pool's: sending calls and results, and
  the gaps between calls on that worker;
- the same 16 calls through ``ProcessPoolExecutor(2, mp_context=spawn).map``, against the same
  ideal.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from asyncflow import ProcessPoolTaskRunner, task

from ._config import Config
from ._report import Goal, Row, time_row
from ._timing import Pair, Sample, Stats, alternate
from ._work import burn, burn_timed

__all__ = ("TARGET", "TASKS", "WORKERS", "calibrate", "run")

TASKS = 16
WORKERS = 2
TARGET = 0.050  # seconds of CPU per task
GOAL = Goal("<=", 1.15)
_PROBE = 200_000  # loop turns timed to calibrate

burn_task = task(burn_timed)


def _timed(loops: int) -> float:
    start = time.perf_counter()
    burn(loops)
    return time.perf_counter() - start


def calibrate() -> int:
    """The loop count for one ``TARGET``-second call (best of three probes)."""
    best = min(_timed(_PROBE) for _ in range(3))
    return max(1, round(_PROBE * TARGET / best))


class _Sides:
    def __init__(
        self, runner: ProcessPoolTaskRunner, executor: ProcessPoolExecutor, loops: int
    ) -> None:
        self.runner = runner
        self.executor = executor
        self.loops = loops
        self.expected = burn(loops)
        self.correct = True
        self.single: list[float] = []  # every single call timed here for the ideal
        self.walls: list[float] = []  # asyncflow's wall times, warm-up rounds included
        self.busy: list[float] = []  # the same runs: the busiest worker's own seconds

    def _check(self, answers: list[tuple[int, float, int]]) -> float:
        """The busiest worker's own seconds (its calls' durations, summed); notes a wrong
        result."""
        self.correct &= len(answers) == TASKS and all(v == self.expected for v, _, _ in answers)
        per_worker: dict[int, float] = {}
        for _, seconds, pid in answers:
            per_worker[pid] = per_worker.get(pid, 0.0) + seconds
        return max(per_worker.values())

    def ideal(self) -> Sample:
        seconds = _timed(self.loops)
        self.single.append(seconds)
        return {"run": seconds * TASKS / WORKERS}

    def asyncflow(self) -> Sample:
        start = time.perf_counter()
        answers = self.runner.map(burn_task, {"loops": [self.loops] * TASKS}).result()
        seconds = time.perf_counter() - start
        self.walls.append(seconds)
        self.busy.append(self._check(answers))
        return {"run": seconds}

    def executor_map(self) -> Sample:
        start = time.perf_counter()
        answers = list(self.executor.map(burn_timed, [self.loops] * TASKS))
        seconds = time.perf_counter() - start
        self._check(answers)
        return {"run": seconds}

    def busy_pair(self, runs: int) -> Pair:
        """asyncflow's wall time next to its busy time, over the timed rounds only."""
        walls, busy = self.walls[-runs:], self.busy[-runs:]
        return Pair(
            Stats.of(walls),
            Stats.of(busy),
            Stats.of([w / b for w, b in zip(walls, busy, strict=True)]),
        )


def run(config: Config) -> list[Row]:
    loops = calibrate()
    spawn = multiprocessing.get_context("spawn")
    with (
        ProcessPoolTaskRunner(WORKERS) as runner,
        ProcessPoolExecutor(WORKERS, mp_context=spawn) as executor,
    ):
        sides = _Sides(runner, executor, loops)
        flow = alternate(sides.ideal, sides.asyncflow, config.runs, config.warmup)["run"]
        busy = sides.busy_pair(config.runs)
        stdlib = alternate(sides.ideal, sides.executor_map, config.runs, config.warmup)["run"]
    single = statistics.median(sides.single)
    note = f"{loops:,} loop turns, one call {single * 1e3:.1f} ms here"
    if not sides.correct:
        note = "WRONG results"
    name = f"B6 CPU-bound tasks on {WORKERS} processes"
    ideal = f"ideal: {TASKS} x one call / {WORKERS}"
    return [
        time_row(name, ideal, tasks=TASKS, pair=flow, goal=GOAL, note=note, correct=sides.correct),
        time_row(
            name,
            "the busiest worker's own time",
            tasks=TASKS,
            pair=busy,
            goal=None,
            note="what is left is the pool's",
            correct=sides.correct,
        ),
        time_row(
            f"{name}, ProcessPoolExecutor (spawn) map",
            ideal,
            tasks=TASKS,
            pair=stdlib,
            goal=None,
            note="the stdlib pool in the asyncflow column",
            correct=sides.correct,
        ),
    ]
