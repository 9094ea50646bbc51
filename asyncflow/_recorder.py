"""``RunRecorder``: a subscriber that keeps a runner's task events and writes them out.

``runner.subscribe(recorder)`` hands it every ``TaskEvent`` on the runner's loop thread; it
keeps them in a list and does nothing else there (one lock, one append), so recording costs the
loop little. Everything else is done on demand, by pure functions over the list: ``runs()``
(``_runlog``), ``chrome_trace()`` (``_trace``), ``html_report()`` (``_report``), ``mermaid()``
and ``dot()`` (``_graphexport``).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._events import TaskEvent
from ._graphexport import dot, mermaid
from ._report import html_report
from ._runlog import RunSummary, check_events, runs_of
from ._trace import chrome_trace

__all__ = ("RunRecorder",)


class RunRecorder:
    """Collects task events; turns them into a trace, a report or a graph.

    ``RunRecorder()`` starts empty; ``RunRecorder(events)`` starts from events kept elsewhere.
    A recorder is a callable taking one ``TaskEvent``, so ``runner.subscribe(recorder)`` is all
    it takes to record a runner. It may be called from any thread.
    """

    __slots__ = ("_events", "_lock")

    def __init__(self, events: Iterable[TaskEvent] = ()) -> None:
        self._lock = threading.Lock()
        self._events: list[TaskEvent] = check_events(events)

    def __call__(self, event: TaskEvent) -> None:
        if not isinstance(event, TaskEvent):
            raise TypeError(
                f"RunRecorder takes TaskEvent records, got {type(event).__name__}: {event!r}"
            )
        with self._lock:
            self._events.append(event)

    def __repr__(self) -> str:
        return f"<RunRecorder {len(self)} events>"

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    @property
    def events(self) -> list[TaskEvent]:
        """A copy of the events recorded so far, in the order they came."""
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        """Forget every event recorded so far."""
        with self._lock:
            self._events.clear()

    def runs(self) -> list[RunSummary]:
        """One summary per run (task, run id, state, attempts, start, end, duration, error,
        worker, upstream), in the order the runs were first seen."""
        return runs_of(self.events)

    def chrome_trace(self) -> dict[str, Any]:
        """The Chrome trace (JSON Object Format) as a dict: load it in Perfetto or
        chrome://tracing once written with ``write_trace``."""
        return chrome_trace(self.events)

    def write_trace(self, path: str | os.PathLike[str]) -> Path:
        """Write the Chrome trace as JSON to ``path``; returns the path."""
        return _write(path, json.dumps(self.chrome_trace(), separators=(",", ":")), "trace")

    def html_report(self, *, title: str = "asyncflow run report") -> str:
        """The self-contained HTML report: a timeline and a table of runs."""
        return html_report(self.events, title=title)

    def write_report(
        self, path: str | os.PathLike[str], *, title: str = "asyncflow run report"
    ) -> Path:
        """Write the HTML report to ``path``; returns the path."""
        return _write(path, self.html_report(title=title), "report")

    def mermaid(self) -> str:
        """The task graph as a Mermaid flowchart."""
        return mermaid(self.events)

    def dot(self) -> str:
        """The task graph as Graphviz DOT."""
        return dot(self.events)


def _write(path: str | os.PathLike[str], text: str, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the {what} path must be a str or a path, got {type(path).__name__}")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write the {what} to {target}: it is a directory")
    real = target.resolve() if target.is_symlink() else target  # (written through a link)
    if real.exists() and not real.is_file():  # a terminal, a pipe (/dev/stdout): as it comes
        with real.open("w", encoding="utf-8", errors="backslashreplace") as out:
            out.write(text)
        return target
    # Whole or not at all: written beside it, then moved into place (a failed write leaves a
    # file that was there as it was), with the mode the file had, or the one a new file gets.
    # A text that is not all Unicode (an error message naming an undecodable file: lone
    # surrogates) is written with those escaped.
    mode = stat.S_IMODE(real.stat().st_mode) if real.exists() else None
    temporary = real.with_name(f".{real.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as out:
            out.write(text)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, real)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def check_outputs(**paths: str | os.PathLike[str] | None) -> None:
    """Before a run: each output path (``kind=path``; None or "": none) can be written, and no
    two are the same file. A mistake there is said at once, not after a long run."""
    seen: dict[Path, str] = {}
    for kind, given in paths.items():
        if given is None:
            continue
        if not str(given):
            raise ValueError(f"the {kind} file name is empty")
        path = Path(given)
        if path.is_dir():
            raise ValueError(f"cannot write the {kind} to {path}: it is a directory")
        if not path.parent.is_dir():
            raise ValueError(f"cannot write the {kind} to {path}: no directory {path.parent}")
        where = path.resolve()
        if where in seen:
            raise ValueError(f"the {seen[where]} and the {kind} would both be written to {path}")
        seen[where] = kind
