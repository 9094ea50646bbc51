"""Run one workload on many systems: start each, time its runs, check its answers, make rows.

A system is started outside the timer (a pool, a cluster, an event loop), then runs the
workload ``warmup + runs`` times; each run reads the clock itself around the part that counts
and checks its own answer. The quiet systems (plain asyncio, anyio, ``concurrent.futures``,
asyncflow) are started together and take turns, one run each per round, so a slow patch on
the machine hits them all alike. A system marked ``alone`` (Dask, Prefect: each keeps
background threads, processes or a server busy) is started only for its own rounds and
stopped before the next one starts.

Every row's ratio is the median time of an asyncflow system over the median time of the row's
system, both per task: below 1, asyncflow is faster. For systems that took turns with it, the
range is the lowest and highest ratio of a single round; for the others, asyncflow's median
over this system's slowest and fastest run.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ._config import Config
from ._memory import PEAKS, Peaks
from ._report import Goal, Row, Unit
from ._timing import Stats

__all__ = ("FASTER", "Run", "Skip", "System", "WrongAnswerError", "measure")

Run = Callable[[], float]
"""One run of a workload on a started system: does the work, checks the answer (raising
``WrongAnswerError`` when it is wrong) and returns the seconds that count."""

FASTER = Goal("<", 1.0)
"""asyncflow faster than this system (its time over this system's time below 1)."""


class WrongAnswerError(Exception):
    """A run computed a wrong answer: its system's row fails, whatever its time."""


def check_echo(results: list[Any], n: int) -> None:
    """The check of workloads whose call ``i`` returns ``i``."""
    if results != list(range(n)):
        raise WrongAnswerError("call i did not return i")


@dataclass(frozen=True)
class Skip:
    """A system that is not measured here, and why (not installed, cannot run here)."""

    name: str
    reason: str


@dataclass(frozen=True)
class System:
    """One way to run the workload.

    ``start`` is a context manager that starts the system and yields its ``Run``. ``tasks``
    is how many tasks one run does (per-task times divide by it). ``versus`` names the
    asyncflow system its ratio is computed against (default: the workload's first asyncflow
    system); asyncflow systems have no ratio of their own unless ``versus`` names another.
    """

    name: str
    tasks: int
    start: Callable[[], AbstractContextManager[Run]]
    asyncflow: bool = False
    alone: bool = False
    versus: str | None = None
    goal: Goal | None = None
    note: str = ""
    family: str = ""  # systems of one family share child processes (Prefect's server)
    runs: int | None = None  # at most this many timed rounds, after ``warmups`` rounds
    warmups: int = 1  # warm-up rounds of a system with ``runs`` set
    floor: bool = False  # a computed floor: nothing runs, so no memory and no "faster" note

    @property
    def owner(self) -> str:
        return self.family or self.name


@dataclass
class _Result:
    system: System
    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    wrong: str = ""
    error: str = ""
    turns: bool = False  # took turns with the asyncflow systems (round ratios exist)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _once(result: _Result, run: Run, peaks: Peaks, keep: bool) -> None:
    if result.wrong or result.error:
        return
    # No garbage left over from another run, and none of the long-lived objects (imported
    # libraries, started clusters) in the collector's way: the automatic collections during a
    # run then cost every system the same.
    gc.collect()
    gc.freeze()
    peaks.begin()
    try:
        seconds = run()
    except WrongAnswerError as exc:
        result.wrong = str(exc) or "wrong result"
        return
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result.error = _describe(exc)
        return
    rss = peaks.end(result.system.owner)
    if keep:
        result.seconds.append(seconds)
        if rss is not None:
            result.rss.append(rss)


@contextlib.contextmanager
def _started(result: _Result, stack: contextlib.ExitStack, peaks: Peaks) -> Iterator[Run | None]:
    try:
        run = stack.enter_context(result.system.start())
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result.error = f"could not start: {_describe(exc)}"
        yield None
        return
    peaks.claim(result.system.owner)
    yield run


def _rounds(group: Sequence[_Result], config: Config, peaks: Peaks) -> None:
    """Start the systems of ``group`` together, then run them in turn, round by round."""
    with contextlib.ExitStack() as stack:
        runs: list[tuple[_Result, Run]] = []
        for result in group:
            with _started(result, stack, peaks) as run:
                if run is not None:
                    runs.append((result, run))
        for i in range(config.warmup + config.runs):
            for result, run in runs:
                cap = result.system.runs
                if cap is None or config.warmup - 1 <= i < config.warmup + cap:
                    _once(result, run, peaks, keep=i >= config.warmup)
        gc.unfreeze()
    gc.collect()
    if any(result.system.alone for result in group):
        for result in group:  # let its server digest what it was sent before the next system
            peaks.quiet(result.system.owner)


def _ratio(flow: _Result, other: _Result) -> Stats | None:
    if not flow.seconds or not other.seconds:
        return None
    a = [s / flow.system.tasks for s in flow.seconds]
    b = [s / other.system.tasks for s in other.seconds]
    median = statistics.median(a) / statistics.median(b)
    if flow.turns and other.turns and len(a) == len(b):
        per_round = [x / y for x, y in zip(a, b, strict=True)]
        return Stats(median, min(per_round), max(per_round))
    return Stats(median, statistics.median(a) / max(b), statistics.median(a) / min(b))


def _row(workload: str, result: _Result, versus: _Result | None, unit: Unit) -> Row:
    system = result.system
    if result.error and not system.asyncflow:
        return Row(workload, system.name, system.tasks, unit, None, skipped=result.error)
    per_task = 1.0 / system.tasks if unit == "s/task" else 1.0
    value = Stats.of(result.seconds).scaled(per_task) if result.seconds else None
    ratio = None if versus is None or versus is result else _ratio(versus, result)
    notes = [system.note] if system.note else []
    if versus is not None and versus is not result and not versus.system.asyncflow:
        notes.append(f"ratio: {versus.system.name} over this")
    if ratio is not None and not (system.asyncflow or system.floor) and ratio.median < 1:
        notes.append(f"asyncflow {1 / ratio.median:.3g}x faster")
    if result.wrong:
        notes.append(f"WRONG: {result.wrong}")
    if result.error:
        notes.append(f"FAILED: {result.error}")
    return Row(
        workload,
        system.name,
        system.tasks,
        unit,
        value,
        ratio,
        system.goal,
        Stats.of([float(b) for b in result.rss]) if result.rss and not system.floor else None,
        "; ".join(notes),
        correct=not (result.wrong or result.error) and value is not None,
    )


def measure(
    workload: str,
    systems: Sequence[System | Skip],
    config: Config,
    unit: Unit = "s/task",
) -> list[Row]:
    """Every system's rows for one workload, in the order given."""
    peaks = PEAKS
    results = {s.name: _Result(s) for s in systems if isinstance(s, System)}
    together = [r for r in results.values() if not r.system.alone]
    for result in together:
        result.turns = True
    _rounds(together, config, peaks)
    for result in results.values():
        if result.system.alone:
            print(f"  {workload}: {result.system.name}", file=sys.stderr, flush=True)
            _rounds([result], config, peaks)
    first = next((r for r in results.values() if r.system.asyncflow), None)
    rows = []
    for system in systems:
        if isinstance(system, Skip):
            rows.append(Row(workload, system.name, 0, unit, None, skipped=system.reason))
            continue
        result = results[system.name]
        versus = results[system.versus] if system.versus is not None else first
        if system.asyncflow and system.versus is None:
            versus = None
        rows.append(_row(workload, result, versus, unit))
    return rows
