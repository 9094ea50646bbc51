"""Task events as a Chrome trace (the JSON Object Format), for Perfetto or chrome://tracing.

One track per place bodies run: the runner's process holds a ``loop`` track and one track per
worker thread; each worker process is a process of its own in the trace (its real pid) with one
track. Each attempt is a complete span (``ph: "X"``) on the track of the worker that ran it; a
retried attempt is followed by an instant event (``ph: "i"``); a run that never started (failed
or cancelled input, cancelled while waiting) is an instant event on the loop track, where the
scheduler decided it. Times are microseconds from the first event.

Spans on one track must nest or follow each other. Coroutines share the loop and overlap, and a
worker may be seen running two bodies at once when events are recorded late, so a track whose
spans overlap is split into lanes: ``loop``, ``loop (2)``, ... each its own track.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ._runlog import AttemptSpan, RunSummary, check_events, runs_of, time_origin
from ._states import StateType

__all__ = ("RUNNER_PID", "chrome_trace")

# The runner's own process in the trace. Not its real pid: the trace may be written in another
# process than the one that ran the tasks. pid 0 is special to Perfetto (the kernel's swapper),
# and a worker process, a child of the runner, can never be pid 1.
RUNNER_PID = 1
_LOOP = "loop"
_PROCESS = re.compile(r"process (\d+)\Z")

# Chrome's reserved color names (``cname``), by how an attempt ended.
_CNAMES = {
    StateType.COMPLETED: "good",
    StateType.RETRYING: "yellow",
    StateType.FAILED: "bad",
    StateType.CRASHED: "terrible",
    StateType.CANCELLED: "grey",
    StateType.RUNNING: "thread_state_running",
}


def _us(seconds: float) -> int:
    """Whole microseconds: a span's end (``ts + dur``) is then exactly the next one's ``ts``."""
    return round(seconds * 1_000_000)


class _Tracks:
    """Tracks (pid, tid) by worker name and lane, with the end time of each lane's last span."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, int], tuple[int, int]] = {}
        self.names: dict[tuple[int, int], str] = {}
        self.lane_ends: dict[str, list[float]] = {}
        self.next_tid: dict[int, int] = {}
        self.processes: dict[int, str] = {}

    def track(self, worker: str, lane: int) -> tuple[int, int]:
        key = (worker, lane)
        found = self.ids.get(key)
        if found is not None:
            return found
        match = _PROCESS.match(worker)
        pid = int(match.group(1)) if match else RUNNER_PID
        if pid <= RUNNER_PID:  # not a child's pid: keep it on a track of the runner
            match, pid = None, RUNNER_PID
        self.processes.setdefault(pid, f"worker {worker}" if match else "asyncflow runner")
        tid = self.next_tid.get(pid, 1)
        self.next_tid[pid] = tid + 1
        self.ids[key] = (pid, tid)
        self.names[(pid, tid)] = worker if lane == 0 else f"{worker} ({lane + 1})"
        return pid, tid

    def place(self, worker: str, start: float, end: float) -> tuple[int, int]:
        """The track of the first lane of ``worker`` free at ``start``; it is busy until end."""
        ends = self.lane_ends.setdefault(worker, [])
        for lane, busy_until in enumerate(ends):
            if busy_until <= start:
                ends[lane] = end
                return self.track(worker, lane)
        ends.append(end)
        return self.track(worker, len(ends) - 1)


def _span_name(span: AttemptSpan) -> str:
    name = span.task_name
    if span.attempt > 1:
        name += f" #{span.attempt}"
    if span.state is not StateType.COMPLETED:
        name += f" ({span.outcome})"
    return name


def _span_event(span: AttemptSpan, origin: float, pid: int, tid: int) -> dict[str, Any]:
    args: dict[str, Any] = {
        "run_id": str(span.run_id),
        "attempt": span.attempt,
        "state": span.outcome,
        "worker": span.worker,
    }
    if span.error is not None:
        args["error"] = span.error
    return {
        "name": _span_name(span),
        "cat": "task",
        "ph": "X",
        "ts": _us(span.start - origin),
        "dur": _us(span.end - origin) - _us(span.start - origin),
        "pid": pid,
        "tid": tid,
        "cname": _CNAMES.get(span.state, "bad"),
        "args": args,
    }


def _instant(
    name: str, ts: int, track: tuple[int, int], cname: str, args: dict[str, Any]
) -> dict[str, Any]:
    pid, tid = track
    return {
        "name": name,
        "cat": "task",
        "ph": "i",
        "s": "t",
        "ts": ts,
        "pid": pid,
        "tid": tid,
        "cname": cname,
        "args": args,
    }


def _never_started(run: RunSummary, origin: float, tracks: _Tracks) -> dict[str, Any] | None:
    if run.started or run.end is None:
        return None  # pending runs (no final event yet) have nothing to show
    args: dict[str, Any] = {"run_id": str(run.run_id), "state": run.state_name}
    if run.error is not None:
        args["error"] = run.error
    return _instant(
        f"{run.task_name} ({run.state_name})",
        _us(run.end - origin),
        tracks.track(_LOOP, 0),
        _CNAMES.get(run.state, "grey") if run.state is not StateType.COMPLETED else "good",
        args,
    )


def chrome_trace(events: Iterable[object]) -> dict[str, Any]:
    """The Chrome trace of ``events`` (a list of ``TaskEvent``) as a JSON-ready dict."""
    checked = check_events(events)
    origin = time_origin(checked)
    runs = runs_of(checked)
    tracks = _Tracks()
    body: list[dict[str, Any]] = []
    spans = sorted((s for run in runs for s in run.spans), key=lambda s: (s.start, s.end))
    for span in spans:
        pid, tid = tracks.place(span.worker or "unknown worker", span.start, span.end)
        body.append(_span_event(span, origin, pid, tid))
        if span.outcome == "Retrying":
            body.append(
                _instant(
                    f"{span.task_name} retrying",
                    _us(span.end - origin),
                    (pid, tid),
                    "yellow",
                    {
                        "run_id": str(span.run_id),
                        "attempt": span.attempt,
                        "error": span.error,
                    },
                )
            )
    for run in runs:
        instant = _never_started(run, origin, tracks)
        if instant is not None:
            body.append(instant)
    meta: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": name}}
        for pid, name in sorted(tracks.processes.items())
    ]
    # The loop's lanes first, then the workers in the order they first ran a body.
    order = sorted(tracks.ids.items(), key=lambda item: (item[0][0] != _LOOP, item[1]))
    for index, (_, (pid, tid)) in enumerate(order):
        name = tracks.names[(pid, tid)]
        meta.append(
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}
        )
        meta.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": pid,
                "tid": tid,
                "args": {"sort_index": index},
            }
        )
    return {
        "traceEvents": meta + body,
        "displayTimeUnit": "ms",
        "otherData": {
            "generator": "asyncflow",
            "time_origin": origin,
            "runs": len(runs),
        },
    }
