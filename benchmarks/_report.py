"""Report rows: one measured quantity each, printed as a Markdown table or written as JSON."""

from __future__ import annotations

import json
import operator
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncflow

from ._timing import Pair, Stats

__all__ = (
    "Goal",
    "Row",
    "Unit",
    "environment",
    "markdown_table",
    "time_row",
    "value_row",
    "write_json",
)

Unit = Literal["s/task", "s", "bytes", "count"]
"""Seconds per task (timings), seconds (one duration), bytes, or a count."""

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Goal:
    """``ratio <= 3`` (on the ratio) or ``< 1 MB`` / ``== 0`` (on the measured value)."""

    op: Literal["<=", "<", "=="]
    limit: float
    on: Literal["ratio", "value"] = "ratio"

    def met(self, measured: float) -> bool:
        return _OPS[self.op](measured, self.limit)

    def text(self, unit: Unit) -> str:
        limit = _number(self.limit) if self.on == "ratio" else _format(self.limit, unit, 0)
        return f"{'ratio ' if self.on == 'ratio' else ''}{self.op} {limit}"


@dataclass(frozen=True)
class Row:
    """One line of the report. ``value`` is asyncflow's side: per-task seconds for timings."""

    workload: str
    system: str
    tasks: int
    unit: Unit
    value: Stats
    baseline: Stats | None = None
    goal: Goal | None = None
    rounds: Stats | None = None  # each round's asyncflow time / that round's baseline time
    note: str = ""
    correct: bool = True  # False when the workload computed a wrong answer: the row fails

    @property
    def ratio(self) -> float | None:
        if self.baseline is None:
            return None
        return self.value.median / self.baseline.median

    @property
    def ok(self) -> bool | None:
        """Whether the goal is met; None for informational rows."""
        if not self.correct:
            return False
        if self.goal is None:
            return None
        measured = self.ratio if self.goal.on == "ratio" else self.value.median
        assert measured is not None, "a ratio goal needs a baseline"
        return self.goal.met(measured)

    def as_json(self) -> dict[str, Any]:
        base = self.baseline
        return {
            "workload": self.workload,
            "system": self.system,
            "tasks": self.tasks,
            "unit": self.unit,
            "median": self.value.median,
            "min": self.value.min,
            "max": self.value.max,
            "baseline_median": None if base is None else base.median,
            "baseline_min": None if base is None else base.min,
            "baseline_max": None if base is None else base.max,
            "ratio": self.ratio,
            "round_ratio_min": None if self.rounds is None else self.rounds.min,
            "round_ratio_max": None if self.rounds is None else self.rounds.max,
            "goal": None if self.goal is None else self.goal.text(self.unit),
            "ok": self.ok,
            "note": self.note,
            "correct": self.correct,
        }


def time_row(
    workload: str,
    system: str,
    *,
    tasks: int,
    pair: Pair,
    goal: Goal | None,
    note: str = "",
    correct: bool = True,
) -> Row:
    """A timing row from whole-run seconds: both sides are reported per task."""
    per_task = 1.0 / tasks
    return Row(
        workload,
        system,
        tasks,
        "s/task",
        pair.asyncflow.scaled(per_task),
        pair.baseline.scaled(per_task),
        goal,
        pair.rounds,
        note,
        correct,
    )


def value_row(
    workload: str,
    system: str,
    *,
    tasks: int,
    unit: Unit,
    value: float | Stats,
    goal: Goal | None,
    note: str = "",
    correct: bool = True,
) -> Row:
    """A row for one measured quantity, or its spread over rounds (no baseline)."""
    stats = value if isinstance(value, Stats) else Stats(value, value, value)
    return Row(workload, system, tasks, unit, stats, goal=goal, note=note, correct=correct)


# -- formatting ---------------------------------------------------------------------------------
def _number(x: float) -> str:
    return f"{x:.3g}"


def _time_scale(seconds: float) -> tuple[float, str]:
    """µs for per-task costs of the thread and async workloads, ms from a millisecond up."""
    return (1e3, "ms") if abs(seconds) >= 1e-3 else (1e6, "µs")


def _format(x: float, unit: Unit, digits: int = 2) -> str:
    if unit in ("s/task", "s"):
        factor, suffix = _time_scale(x)
        return f"{x * factor:.{digits}f} {suffix}"
    if unit == "bytes":
        sign = "-" if x < 0 else ""
        size = abs(x)
        for limit, suffix in ((1e6, "MB"), (1e3, "kB")):
            if size >= limit:
                return f"{sign}{size / limit:.{digits}f} {suffix}"
        return f"{sign}{size:.0f} B"
    return f"{x:.0f}"


def _cell(stats: Stats | None, unit: Unit) -> str:
    if stats is None:
        return "—"
    if stats.min == stats.max:
        return _format(stats.median, unit)
    if unit in ("s/task", "s"):  # the unit once: "12.31 µs (11.90-13.02)"
        factor, _ = _time_scale(stats.median)
        spread = f"{stats.min * factor:.2f}-{stats.max * factor:.2f}"
    else:
        spread = f"{_format(stats.min, unit)} - {_format(stats.max, unit)}"
    return f"{_format(stats.median, unit)} ({spread})"


def _ratio_cell(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return "—"
    rounds = row.rounds
    if rounds is None:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} ({rounds.min:.2f}-{rounds.max:.2f})"


def _result(row: Row) -> str:
    ok = row.ok
    if ok is None:
        return "info"
    return "PASS" if ok else "**FAIL**"


def markdown_table(rows: Sequence[Row]) -> str:
    """The report. Time cells read "median (min-max)" per task; the ratio cell reads
    "median / median (lowest-highest ratio of one round)"."""
    header = (
        "| Workload | System | Tasks | asyncflow | baseline | Ratio | Goal | Result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    )
    lines = list(header)
    for row in rows:
        cells = (
            row.workload + (f" ({row.note})" if row.note else ""),
            row.system,
            f"{row.tasks:,}",
            _cell(row.value, row.unit),
            _cell(row.baseline, row.unit),
            _ratio_cell(row),
            "—" if row.goal is None else row.goal.text(row.unit),
            _result(row),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "asyncflow": asyncflow.__version__,
        "asyncflow_path": str(Path(asyncflow.__file__).parent),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "executable": sys.executable,
    }


def write_json(path: Path, rows: Sequence[Row], settings: dict[str, Any]) -> None:
    document = {
        "environment": environment(),
        "settings": settings,
        "rows": [row.as_json() for row in rows],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
