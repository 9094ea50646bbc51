"""Task run events: the small immutable records a runner emits to its subscribers.

Each run emits, in order: one ``submitted``; per attempt one ``started`` (an attempt that is
retried is followed by one ``retrying``); and exactly one last event, ``finished`` (state
Completed, Failed or Crashed) or ``cancelled`` (state Cancelled). A run that never started (an
input failed, or it was cancelled while waiting) has no ``started`` event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from ._states import StateType

__all__ = ("EventKind", "TaskEvent")

EventKind = Literal["submitted", "started", "retrying", "finished", "cancelled"]


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One thing that happened to one task run.

    ``timestamp`` is wall-clock time (``time.time()``) taken when it happened. ``attempt`` counts
    from 1 (0 on ``submitted``). ``upstream`` holds the run ids of the runs this one waits on
    (on ``submitted``). ``state`` and ``error`` (``"TypeName: message"``) are set on
    ``retrying``, ``finished`` and ``cancelled``. ``worker`` names where an attempt runs, on
    ``started``: ``"loop"``, ``"thread <name>"`` or ``"process <pid>"``.
    """

    kind: EventKind
    task_name: str
    run_id: uuid.UUID
    timestamp: float
    attempt: int = 0
    upstream: tuple[uuid.UUID, ...] = ()
    tags: frozenset[str] = frozenset()
    state: StateType | None = None
    state_name: str | None = None
    error: str | None = None
    worker: str | None = None
