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

Unit = Literal["s/task", "s", "bytes", "count", "ratio"]
"""Seconds per task (timings), seconds (one duration), bytes, a count, or a ratio."""

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Goal:
    """``ratio <= 3`` (on the ratio) or ``< 1 MB`` / ``== 0`` (on the measured value)."""

    op: Literal["<=", "<", "==", ">="]
    limit: float
    on: Literal["ratio", "value"] = "ratio"

    def met(self, measured: float) -> bool:
        return _OPS[self.op](measured, self.limit)

    def text(self, unit: Unit) -> str:
        limit = _number(self.limit) if self.on == "ratio" else _format(self.limit, unit, 0)
        return f"{'ratio ' if self.on == 'ratio' else ''}{self.op} {limit}"


@dataclass(frozen=True)
class Row:
    """One line of the report: one system's measurement of one workload (or one quantity).

    ``value`` is what this row's system measured (seconds per task for timings). ``ratio`` is
    asyncflow's median over this system's median, with the lowest and highest ratio of a single
    round as its range; rows that compare something else say so in their note. A row with
    ``skipped`` set measured nothing, and says why.
    """

    workload: str
    system: str
    tasks: int
    unit: Unit
    value: Stats | None
    ratio: Stats | None = None
    goal: Goal | None = None
    rss: Stats | None = None  # bytes: peak resident memory of a run (see _memory.py)
    note: str = ""
    correct: bool = True  # False when the workload computed a wrong answer: the row fails
    skipped: str = ""

    @property
    def ok(self) -> bool | None:
        """Whether the goal is met; None for informational and skipped rows."""
        if self.skipped:
            return None
        if not self.correct:
            return False
        if self.goal is None:
            return None
        stats = self.ratio if self.goal.on == "ratio" else self.value
        if stats is None:  # nothing to compare with: the asyncflow row says why
            return None
        return self.goal.met(stats.median)

    def as_json(self) -> dict[str, Any]:
        value, ratio, rss = self.value, self.ratio, self.rss
        return {
            "workload": self.workload,
            "system": self.system,
            "tasks": self.tasks,
            "unit": self.unit,
            "median": None if value is None else value.median,
            "min": None if value is None else value.min,
            "max": None if value is None else value.max,
            "peak_rss_bytes": None if rss is None else rss.median,
            "ratio": None if ratio is None else ratio.median,
            "round_ratio_min": None if ratio is None else ratio.min,
            "round_ratio_max": None if ratio is None else ratio.max,
            "goal": None if self.goal is None else self.goal.text(self.unit),
            "ok": self.ok,
            "note": self.note,
            "correct": self.correct,
            "skipped": self.skipped or None,
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
    """A timing row from whole-run seconds of a pair: asyncflow's side per task, and the
    ratio of asyncflow's side to the pair's baseline."""
    ratio = Stats(pair.asyncflow.median / pair.baseline.median, pair.rounds.min, pair.rounds.max)
    return Row(
        workload,
        system,
        tasks,
        "s/task",
        pair.asyncflow.scaled(1.0 / tasks),
        ratio,
        goal,
        note=note,
        correct=correct,
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
    """A row for one measured quantity, or its spread over rounds (no ratio)."""
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
    if unit == "ratio":
        return f"{x:.3g}"
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
    if ratio.min == ratio.max:
        return f"{ratio.median:.3g}"
    return f"{ratio.median:.3g} ({ratio.min:.3g}-{ratio.max:.3g})"


def _result(row: Row) -> str:
    if row.skipped:
        return "skipped"
    ok = row.ok
    if ok is None:
        return "info"
    return "PASS" if ok else "**FAIL**"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Row]) -> str:
    """The report. The measured cell reads "median (min-max)" (per task for timings); the ratio
    cell reads "asyncflow's median / this row's median (lowest-highest ratio of one round)"."""
    header = (
        "| Workload | System | Tasks | Measured | Peak RSS | Ratio | Goal | Result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    )
    lines = list(header)
    for row in rows:
        note = row.skipped or row.note
        cells = (
            row.workload,
            row.system + (f" ({note})" if note else ""),
            f"{row.tasks:,}" if row.tasks else "—",
            _cell(row.value, row.unit),
            "—" if row.rss is None else _format(row.rss.median, "bytes", 1),
            _ratio_cell(row),
            "—" if row.goal is None else row.goal.text(row.unit),
            _result(row),
        )
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
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
