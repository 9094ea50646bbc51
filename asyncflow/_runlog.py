"""A list of task events folded into one record per run and one span per attempt.

Pure functions over ``TaskEvent`` lists: the trace, the report and the graph exports all read
runs through here, so they agree on what an attempt, a state and a duration are. A list may be
incomplete (recorded from the middle of a session, or before the runs ended): a run whose last
event is missing is Running (or Pending, if it never started), and an attempt still running
ends at the last timestamp of the list.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from ._events import TaskEvent
from ._states import UPSTREAM_FAILED, StateType

__all__ = (
    "AttemptSpan",
    "RunSummary",
    "check_events",
    "run_class",
    "runs_of",
    "short_id",
    "state_label",
    "time_origin",
)

_KINDS = frozenset({"submitted", "started", "retrying", "finished", "cancelled"})


@dataclass(frozen=True, slots=True)
class AttemptSpan:
    """One attempt of one run: from its ``started`` event to the event that ended it.

    ``outcome`` names how it ended: ``"Retrying"`` for an attempt that was retried, the run's
    state name for the last attempt (``"Completed"``, ``"Failed"``, ...), ``"Running"`` when
    no event ended it (``end`` is then the last timestamp of the list).
    """

    task_name: str
    run_id: uuid.UUID
    attempt: int
    start: float
    end: float
    worker: str | None
    state: StateType
    outcome: str
    error: str | None
    ended: bool


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One task run as told by its events.

    ``state`` is the final state type, or RUNNING / RETRYING / PENDING for a run whose last
    event is not in the list. ``start`` is the start of the first attempt (``None`` for a run
    that never started), ``end`` the time of its final event; ``duration`` is ``end - start``
    when both are known. ``worker`` is where the last attempt ran.
    """

    task_name: str
    run_id: uuid.UUID
    state: StateType
    state_name: str
    attempts: int
    start: float | None
    end: float | None
    duration: float | None
    error: str | None
    worker: str | None
    upstream: tuple[uuid.UUID, ...]
    submitted: float | None
    tags: frozenset[str]
    spans: tuple[AttemptSpan, ...]

    @property
    def started(self) -> bool:
        """Whether any attempt started."""
        return bool(self.spans)

    @property
    def final(self) -> bool:
        """Whether the run's last event (``finished`` or ``cancelled``) is in the list."""
        return self.state in _FINAL


_FINAL = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED})


def short_id(run_id: uuid.UUID) -> str:
    """The last 8 hex digits of a run id: its run number in the process that made it, so
    they tell the runs of one process apart (its first digits are the same for all of them).
    """
    return run_id.hex[-8:]


def state_label(state: StateType) -> str:
    """``StateType.COMPLETED`` -> ``"Completed"``."""
    return state.value.title()


def run_class(run: RunSummary) -> str:
    """One word for how a run ended, shared by the outputs that color runs.

    ``"skipped"`` is a run that failed without starting (an input failed: ``UpstreamFailed``);
    otherwise the state's lower-case name: completed, failed, crashed, cancelled, running,
    retrying, pending.
    """
    if run.state_name == UPSTREAM_FAILED or (run.state is StateType.FAILED and not run.started):
        return "skipped"
    return run.state.value.lower()


def check_events(events: Iterable[object]) -> list[TaskEvent]:
    """The events as a list, or a ``TypeError`` / ``ValueError`` naming the first bad one."""
    checked: list[TaskEvent] = []
    for index, event in enumerate(events):
        if not isinstance(event, TaskEvent):
            raise TypeError(
                f"event {index} is a {type(event).__name__}, expected an asyncflow TaskEvent"
            )
        if event.kind not in _KINDS:
            raise ValueError(
                f"event {index} ({event.task_name!r}) has an unknown kind {event.kind!r}; "
                f"expected one of {sorted(_KINDS)}"
            )
        checked.append(event)
    return checked


class _Run:
    """The mutable fold of one run's events (private to ``runs_of``)."""

    __slots__ = (
        "error",
        "final",
        "final_name",
        "last_kind",
        "open",
        "run_id",
        "spans",
        "submitted",
        "tags",
        "task_name",
        "upstream",
    )

    def __init__(self, event: TaskEvent) -> None:
        self.task_name = event.task_name
        self.run_id = event.run_id
        self.submitted: float | None = None
        self.upstream: tuple[uuid.UUID, ...] = ()
        self.tags: frozenset[str] = frozenset()
        self.open: TaskEvent | None = None  # the ``started`` event of the running attempt
        self.spans: list[AttemptSpan] = []
        self.final: TaskEvent | None = None
        self.final_name: str | None = None
        self.error: str | None = None
        self.last_kind = event.kind

    def close(self, event: TaskEvent, state: StateType, outcome: str) -> None:
        started = self.open
        if started is None:
            return
        self.open = None
        self.spans.append(
            AttemptSpan(
                self.task_name,
                self.run_id,
                started.attempt or len(self.spans) + 1,
                started.timestamp,
                max(event.timestamp, started.timestamp),
                started.worker,
                state,
                outcome,
                event.error,
                True,
            )
        )

    def add(self, event: TaskEvent) -> None:
        self.last_kind = event.kind
        if event.kind == "submitted":
            self.task_name = event.task_name
            self.submitted = event.timestamp
            self.upstream = event.upstream
            self.tags = event.tags
        elif event.kind == "started":
            # Two starts in a row: the first attempt's end was not recorded.
            self.close(event, StateType.RUNNING, "Unknown")
            self.open = event
        elif event.kind == "retrying":
            self.close(event, StateType.RETRYING, "Retrying")
            self.error = event.error
        else:  # finished, cancelled
            state = event.state or (
                StateType.CANCELLED if event.kind == "cancelled" else StateType.COMPLETED
            )
            name = event.state_name or state_label(state)
            self.close(event, state, name)
            self.final = event
            self.final_name = name
            self.error = event.error

    def summary(self, last_timestamp: float) -> RunSummary:
        spans = list(self.spans)
        if self.open is not None:
            spans.append(
                AttemptSpan(
                    self.task_name,
                    self.run_id,
                    self.open.attempt or len(spans) + 1,
                    self.open.timestamp,
                    max(last_timestamp, self.open.timestamp),
                    self.open.worker,
                    StateType.RUNNING,
                    "Running",
                    None,
                    False,
                )
            )
        if self.final is not None:
            state = self.final.state or (
                StateType.CANCELLED if self.final.kind == "cancelled" else StateType.COMPLETED
            )
            name = self.final_name or state_label(state)
            end: float | None = self.final.timestamp
        else:
            if self.open is not None:
                state = StateType.RUNNING
            elif self.last_kind == "retrying":
                state = StateType.RETRYING
            else:
                state = StateType.PENDING
            name = state_label(state)
            end = None
        start = spans[0].start if spans else None
        return RunSummary(
            task_name=self.task_name,
            run_id=self.run_id,
            state=state,
            state_name=name,
            attempts=len(spans),
            start=start,
            end=end,
            duration=None if start is None or end is None else max(end - start, 0.0),
            error=self.error if state is not StateType.COMPLETED else None,
            worker=spans[-1].worker if spans else None,
            upstream=self.upstream,
            submitted=self.submitted,
            tags=self.tags,
            spans=tuple(spans),
        )


def runs_of(events: Iterable[object]) -> list[RunSummary]:
    """One summary per run, in the order the runs first appear in ``events``.

    Each run's events are taken in list order (the order a runner emits them); timestamps only
    place them in time.
    """
    checked = check_events(events)
    runs: dict[uuid.UUID, _Run] = {}
    for event in checked:
        run = runs.get(event.run_id)
        if run is None:
            run = runs[event.run_id] = _Run(event)
        run.add(event)
    last = max((e.timestamp for e in checked), default=0.0)
    return [run.summary(last) for run in runs.values()]


def time_origin(events: Iterable[TaskEvent]) -> float:
    """The earliest timestamp of ``events`` (0.0 for none): outputs count time from here."""
    return min((e.timestamp for e in events), default=0.0)
