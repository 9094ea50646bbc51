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
    # Whole or not at all where it can be: written beside it, then moved into place (a failed
    # write leaves a file that was there as it was). Only for a new file, or a regular file of
    # this user's with one name (its mode kept); anything else is written in place, as it
    # was: a device or a pipe (/dev/null, /dev/stdout), a file of another user's or with other
    # names, or where no file can be made beside it (a read-only directory, a long name).
    # A text that is not all Unicode (an error message naming an undecodable file: lone
    # surrogates) is written with those escaped.
    real = Path(os.path.realpath(target))  # (through a symbolic link, as before)
    try:
        st: os.stat_result | None = real.stat()
    except FileNotFoundError:
        st = None
    if st is None or (
        stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == _effective_uid()
    ):
        temporary = real.with_name(f".{real.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError:
            pass  # (no file can be made beside it: in place, below)
        else:
            try:
                with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as out:
                    out.write(text)
                if st is not None:
                    os.chmod(temporary, stat.S_IMODE(st.st_mode))
                os.replace(temporary, real)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            return target
    with real.open("w", encoding="utf-8", errors="backslashreplace") as out:
        out.write(text)
    return target


def _effective_uid() -> int:
    geteuid = getattr(os, "geteuid", None)
    return -1 if geteuid is None else int(geteuid())


def check_outputs(**paths: str | os.PathLike[str] | None) -> None:
    """Before a run: each output path (``kind=path``; None or "": none) can be written, and no
    two are the same file. A mistake there is said at once, not after a long run."""
    seen: dict[Path, str] = {}
    for kind, given in paths.items():
        if given is None or not str(given):
            continue
        path = Path(given)
        try:
            if path.is_dir():
                raise ValueError(f"cannot write the {kind} to {path}: it is a directory")
            if not path.parent.is_dir():
                raise ValueError(f"cannot write the {kind} to {path}: no directory {path.parent}")
            where = Path(os.path.realpath(path))
            special = where.exists() and not where.is_file()  # (/dev/null: any number of times)
        except OSError as exc:  # (a directory that cannot be looked into)
            raise ValueError(f"cannot write the {kind} to {path}: {exc.strerror or exc}") from None
        if where in seen and not special:
            raise ValueError(f"the {seen[where]} and the {kind} would both be written to {path}")
        seen[where] = kind
