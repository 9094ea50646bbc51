"""Run statistics of a runner session."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("RunnerStatistics",)


@dataclass(frozen=True)
class RunnerStatistics:
    """Counts for the current (or last) session of a runner.

    ``running`` and ``queued`` are runs in flight now (queued: waiting for inputs, a limit or a
    worker); ``retried`` counts retry attempts; ``abandoned_threads`` counts worker threads still
    running a body whose run already ended (timed out or cancelled).
    """

    submitted: int = 0
    running: int = 0
    queued: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    abandoned_threads: int = 0
