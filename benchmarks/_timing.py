"""Timing pairs of runs: warm up, then alternate baseline and asyncflow, keep every sample.

A run is a callable that does the work once and returns what it measured, as named durations in
seconds (most workloads time one thing; B2 times the core and the whole run in one go). Only the
callable knows which part of its work counts, so it reads the clock itself.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ("Pair", "Sample", "Stats", "alternate", "on_loop")

Sample = dict[str, float]
"""What one run measured: a duration in seconds per metric name."""


@dataclass(frozen=True)
class Stats:
    """Median, min and max of a list of samples (seconds, or any one unit)."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values))

    def scaled(self, factor: float) -> Stats:
        return Stats(self.median * factor, self.min * factor, self.max * factor)


@dataclass(frozen=True)
class Pair:
    """One metric of a workload, measured on both sides; ``rounds`` holds each round's ratio."""

    asyncflow: Stats
    baseline: Stats
    rounds: Stats


def _once(run: Callable[[], Sample]) -> Sample:
    # Start every run with no garbage left over from the other side, so neither side pays for
    # the other's collections.
    gc.collect()
    return run()


def alternate(
    baseline: Callable[[], Sample],
    asyncflow: Callable[[], Sample],
    runs: int,
    warmup: int,
) -> dict[str, Pair]:
    """``warmup`` discarded rounds, then ``runs`` rounds of baseline-then-asyncflow."""
    for _ in range(warmup):
        _once(baseline)
        _once(asyncflow)
    base: dict[str, list[float]] = {}
    flow: dict[str, list[float]] = {}
    for _ in range(runs):
        for name, seconds in _once(baseline).items():
            base.setdefault(name, []).append(seconds)
        for name, seconds in _once(asyncflow).items():
            flow.setdefault(name, []).append(seconds)
    if base.keys() != flow.keys():
        raise ValueError(f"the two sides measured different things: {base.keys()} {flow.keys()}")
    return {
        name: Pair(
            Stats.of(flow[name]),
            Stats.of(base[name]),
            Stats.of([f / b for f, b in zip(flow[name], base[name], strict=True)]),
        )
        for name in base
    }


def on_loop(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, Sample]]
) -> Callable[[], Sample]:
    """A run that executes a fresh coroutine from ``make`` on ``loop`` (the same loop each time)."""

    def run() -> Sample:
        return loop.run_until_complete(make())

    return run
