"""A live progress display of task runs, drawn with rich (an optional dependency).

``ProgressDisplay`` is an event subscriber: the runner calls it with each ``TaskEvent`` on the
scheduler's loop thread, so it only updates a few counters under a lock and never draws there.
rich's ``Live`` redraws from its own refresh thread, reading a snapshot of those counters.

The display is off (every method does nothing) when rich is not installed or when its console
is not a terminal, so it can be attached unconditionally.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._events import TaskEvent
from ._states import StateType

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = ("ProgressCounts", "ProgressDisplay")

_MAX_TASK_ROWS = 12  # more task names than this are summed up in one "+N more" line
_FAILED = (StateType.FAILED, StateType.CRASHED)


@dataclass(frozen=True)
class ProgressCounts:
    """Counts of runs seen so far. ``running`` counts runs inside an attempt right now;
    ``rate`` is finished runs (done, failed or cancelled) per second of ``elapsed``."""

    submitted: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    retries: int = 0
    elapsed: float = 0.0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def rate(self) -> float:
        return self.finished / self.elapsed if self.elapsed > 0 else 0.0


class _Tally:
    """Mutable counters of one task name (or of all runs); only touched under the lock."""

    __slots__ = ("cancelled", "done", "failed", "retries", "running", "submitted")

    def __init__(self) -> None:
        self.submitted = self.running = self.done = self.failed = 0
        self.cancelled = self.retries = 0

    def frozen(self, elapsed: float) -> ProgressCounts:
        return ProgressCounts(
            self.submitted,
            self.running,
            self.done,
            self.failed,
            self.cancelled,
            self.retries,
            elapsed,
        )


def _load_rich() -> Any:
    """The rich package, or None when it is not installed (the display is then off)."""
    try:
        import rich.console
        import rich.live
        import rich.table
        import rich.text
    except ImportError:
        return None
    return rich


class ProgressDisplay:
    """Live counts of submitted, running, done and failed runs, a rate, and one row per task.

    Subscribe it to a runner (it is a callable taking a ``TaskEvent``), then ``start()`` it, or
    use it as a context manager; ``stop()`` removes the live display and prints one final line.
    ``console`` defaults to a rich console on stderr. ``enabled`` is False, and the display does
    nothing at all, when rich is not installed or the console is not a terminal.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        title: str = "asyncflow",
        refresh_per_second: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rich = _load_rich()
        if console is None and self._rich is not None:
            console = self._rich.console.Console(stderr=True)
        self.console = console
        self.enabled: bool = console is not None and console.is_terminal
        self.title = title
        self._refresh_per_second = refresh_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._total = _Tally()
        self._tasks: dict[str, _Tally] = {}
        self._in_attempt: set[uuid.UUID] = set()
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._live: Live | None = None

    # -- the subscriber: called on the scheduler's loop thread, must not block -----------------
    def __call__(self, event: TaskEvent) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._started_at is None:
                self._started_at = self._clock()
            tally = self._tasks.get(event.task_name)
            if tally is None:
                tally = self._tasks[event.task_name] = _Tally()
            kind = event.kind
            if kind == "submitted":
                tally.submitted += 1
                self._total.submitted += 1
            elif kind == "started":
                self._in_attempt.add(event.run_id)
                tally.running += 1
                self._total.running += 1
            elif kind == "retrying":
                self._end_attempt(event.run_id, tally)
                tally.retries += 1
                self._total.retries += 1
            else:  # "finished" or "cancelled": the last event of a run
                self._end_attempt(event.run_id, tally)
                if kind == "cancelled":
                    tally.cancelled += 1
                    self._total.cancelled += 1
                elif event.state in _FAILED:
                    tally.failed += 1
                    self._total.failed += 1
                else:
                    tally.done += 1
                    self._total.done += 1

    def _end_attempt(self, run_id: uuid.UUID, tally: _Tally) -> None:
        if run_id in self._in_attempt:
            self._in_attempt.discard(run_id)
            tally.running -= 1
            self._total.running -= 1

    # -- reading -------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        if self._started_at is None:
            return 0.0
        end = self._clock() if self._stopped_at is None else self._stopped_at
        return max(0.0, end - self._started_at)

    def counts(self) -> ProgressCounts:
        """A snapshot of the counts of all runs."""
        with self._lock:
            return self._total.frozen(self._elapsed())

    def task_counts(self) -> dict[str, ProgressCounts]:
        """A snapshot of the counts per task name, in the order the names were first seen."""
        with self._lock:
            elapsed = self._elapsed()
            return {name: tally.frozen(elapsed) for name, tally in self._tasks.items()}

    def summary(self) -> str:
        """One line: the counts, the elapsed time and the rate."""
        c = self.counts()
        parts = [f"{c.submitted} submitted", f"{c.done} done", f"{c.failed} failed"]
        if c.cancelled:
            parts.append(f"{c.cancelled} cancelled")
        if c.running:
            parts.append(f"{c.running} running")
        if c.retries:
            parts.append(f"{c.retries} retries")
        return f"{self.title}: {', '.join(parts)} in {c.elapsed:.2f} s ({c.rate:.1f} runs/s)"

    def __rich__(self) -> RenderableType:
        """What the live display draws (called on rich's refresh thread)."""
        rich = self._rich
        with self._lock:
            elapsed = self._elapsed()
            total = self._total.frozen(elapsed)
            rows = [(name, tally.frozen(elapsed)) for name, tally in self._tasks.items()]
        table = rich.table.Table(box=None, expand=False)
        table.add_column("task")
        for column in ("submitted", "running", "done", "failed"):
            table.add_column(column, justify="right")
        for name, c in rows[:_MAX_TASK_ROWS]:
            failed = rich.text.Text(str(c.failed), style="red" if c.failed else "")
            # (A name as text, not markup: "load[/b]" is a task name like any other.)
            table.add_row(
                rich.text.Text(name), str(c.submitted), str(c.running), str(c.done), failed
            )
        if len(rows) > _MAX_TASK_ROWS:
            table.add_row(f"+{len(rows) - _MAX_TASK_ROWS} more", "", "", "", "")
        return rich.console.Group(rich.text.Text(self._headline(total), style="bold"), table)  # type: ignore[no-any-return]

    def _headline(self, c: ProgressCounts) -> str:
        return (
            f"{self.title}  {c.submitted} submitted · {c.running} running · {c.done} done · "
            f"{c.failed} failed · {c.rate:.1f} runs/s · {c.elapsed:.1f} s"
        )

    # -- showing -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the live display (and the clock of the rate). Does nothing when off."""
        if not self.enabled or self._live is not None:
            return
        with self._lock:
            self._started_at = self._clock()
            self._stopped_at = None
        self._live = self._rich.live.Live(
            console=self.console,
            get_renderable=self.__rich__,
            refresh_per_second=self._refresh_per_second,
            transient=True,
        )
        self._live.start()

    def stop(self) -> None:
        """Stop the live display and print the final line. Does nothing when off or not
        started."""
        live, self._live = self._live, None
        if live is None:
            return
        with self._lock:
            self._stopped_at = self._clock()
        live.stop()
        assert self.console is not None  # enabled implies a console
        # (As text: a title is not markup, nor emoji codes such as ":100:".)
        self.console.print(self._rich.text.Text(self.summary()))

    def __enter__(self) -> ProgressDisplay:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
