"""B7: one of 100 running tasks kills its worker process; the other 99 complete.

One warmed-up ``with ProcessPoolTaskRunner(2)`` session runs batches of 100 calls of ``step``
(each sleeps 5 ms and returns its worker's pid and start time) with ``runner.map``. In the
crash batch, call 50 writes its start time to a file and ends its worker with ``os._exit(1)``.
Rows:

- how many of the other 99 calls completed (the worst crash batch, warm-up included; goal: all
  99), while the crashed call must fail with ``WorkerCrashedError``;
- the recovery time: from the moment the crashing call started (the stamp) to the start of the
  first call on the replacement worker (a pid that ran nothing before the crash). It covers
  noticing the death, reporting the failure, and starting and setting up a fresh worker;
- for information, the whole batch with the crash next to the same batch without one, both
  through asyncflow, alternating as usual. The other worker keeps running calls meanwhile, so
  the difference is smaller than the recovery time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from asyncflow import Future, ProcessPoolTaskRunner, task
from asyncflow.exceptions import WorkerCrashedError

from ._config import Config
from ._report import Goal, Row, time_row, value_row
from ._timing import Sample, Stats, alternate
from ._work import step

__all__ = ("CRASH_AT", "SLEEP", "TASKS", "WORKERS", "run")

TASKS = 100
WORKERS = 2
CRASH_AT = 50
SLEEP = 0.005  # seconds per call: long enough that calls go to the workers one at a time
NO_CRASH = -1
DEADLINE = 60.0  # seconds: a batch that takes longer has hung
COMPLETED_GOAL = Goal("==", TASKS - 1, on="value")

step_task = task(step)


class _Batches:
    def __init__(self, runner: ProcessPoolTaskRunner, stamp: Path) -> None:
        self.runner = runner
        self.stamp = stamp
        self.completed: list[int] = []  # per crash batch: the other calls that completed
        self.recovery: list[float] = []  # per crash batch: seconds, crash to fresh worker
        self.correct = True

    def _batch(self, crash: int) -> tuple[float, list[Future[Any]]]:
        start = time.perf_counter()
        futures = self.runner.map(
            step_task,
            {"i": range(TASKS), "crash": crash, "seconds": SLEEP, "stamp": str(self.stamp)},
        )
        futures.wait(DEADLINE)
        seconds = time.perf_counter() - start
        return seconds, list(futures)

    def without_crash(self) -> Sample:
        seconds, futures = self._batch(NO_CRASH)
        self.correct &= all(f.done() and f.exception() is None for f in futures)
        return {"run": seconds}

    def with_crash(self) -> Sample:
        self.stamp.unlink(missing_ok=True)
        seconds, futures = self._batch(CRASH_AT)
        crashed = futures.pop(CRASH_AT)
        self.correct &= crashed.done() and isinstance(crashed.exception(), WorkerCrashedError)
        answers: list[tuple[int, float]] = [
            f.result() for f in futures if f.done() and f.exception() is None
        ]
        self.completed.append(len(answers))
        if not self.stamp.exists():  # call CRASH_AT never ran
            self.correct = False
            return {"run": seconds}
        crash_time = float(self.stamp.read_text(encoding="utf-8"))
        before = {pid for pid, began in answers if began < crash_time}
        fresh = [began for pid, began in answers if pid not in before]
        if fresh:  # else every later call ran on the surviving worker: nothing to measure
            self.recovery.append(min(fresh) - crash_time)
        return {"run": seconds}


def run(config: Config) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolTaskRunner(WORKERS) as runner:
        batches = _Batches(runner, Path(tmp) / "crash-time")
        batches.without_crash()  # start both workers before anything is measured
        pairs = alternate(batches.without_crash, batches.with_crash, config.runs, config.warmup)
    pair = pairs["run"]
    name = f"B7 {TASKS} tasks of {SLEEP * 1e3:g} ms on {WORKERS} processes, one crashes"
    done = min(batches.completed, default=0)
    rounds = len(batches.completed)
    return [
        value_row(
            f"{name}: the others complete",
            "asyncflow",
            tasks=TASKS,
            unit="count",
            value=done,
            goal=COMPLETED_GOAL,
            note=f"{done} of {TASKS - 1} completed, worst of {rounds} rounds",
            correct=batches.correct,
        ),
        value_row(
            f"{name}: recovery, from the crash to the first task on a fresh worker",
            "asyncflow",
            tasks=TASKS,
            unit="s",
            value=Stats.of(batches.recovery or [float("nan")]),
            goal=None,
        ),
        time_row(
            f"{name}: whole batch",
            "asyncflow",
            tasks=TASKS,
            pair=pair,
            goal=None,
            note="ratio: this batch over the same batch without a crash",
        ),
    ]
