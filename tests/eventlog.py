"""Hand-built task event lists for the trace, report and graph tests.

``EventLog`` writes the events a runner would emit (see ``asyncflow._events``), at times given
in seconds from a fixed origin, so expected positions and durations are exact.
"""

from __future__ import annotations

import uuid

from asyncflow._events import TaskEvent
from asyncflow._states import StateType

ORIGIN = 1_700_000_000.0  # a wall-clock time, as time.time() gives


class EventLog:
    """Appends ``TaskEvent`` records; each method takes its time in seconds from ``ORIGIN``."""

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []
        self.names: dict[uuid.UUID, str] = {}
        self.attempts: dict[uuid.UUID, int] = {}

    def submit(self, name: str, at: float, upstream: tuple[uuid.UUID, ...] = ()) -> uuid.UUID:
        run = uuid.uuid4()
        self.names[run] = name
        self.attempts[run] = 0
        self.events.append(TaskEvent("submitted", name, run, ORIGIN + at, upstream=upstream))
        return run

    def start(self, run: uuid.UUID, at: float, worker: str) -> None:
        self.attempts[run] += 1
        self.events.append(
            TaskEvent(
                "started",
                self.names[run],
                run,
                ORIGIN + at,
                attempt=self.attempts[run],
                worker=worker,
            )
        )

    def retry(self, run: uuid.UUID, at: float, error: str) -> None:
        self.events.append(
            TaskEvent(
                "retrying",
                self.names[run],
                run,
                ORIGIN + at,
                attempt=self.attempts[run],
                state=StateType.RETRYING,
                state_name="Retrying",
                error=error,
            )
        )

    def finish(
        self,
        run: uuid.UUID,
        at: float,
        state: StateType = StateType.COMPLETED,
        name: str | None = None,
        error: str | None = None,
    ) -> None:
        self.events.append(
            TaskEvent(
                "finished",
                self.names[run],
                run,
                ORIGIN + at,
                attempt=self.attempts[run],
                state=state,
                state_name=name or state.value.title(),
                error=error,
            )
        )

    def cancel(self, run: uuid.UUID, at: float) -> None:
        self.events.append(
            TaskEvent(
                "cancelled",
                self.names[run],
                run,
                ORIGIN + at,
                attempt=self.attempts[run],
                state=StateType.CANCELLED,
                state_name="Cancelled",
                error="CancelledError: cancelled",
            )
        )

    def sorted_events(self) -> list[TaskEvent]:
        """The events in time order (stable), as a runner's subscribers see them."""
        return sorted(self.events, key=lambda e: e.timestamp)


class Sample:
    """One session with every kind of run: the run ids are attributes, the events ``events``.

    fetch (thread w-0, retried once, then completed on thread w-1) -> parse (fails on w-0)
    -> store (never starts: UpstreamFailed); two coroutines overlap on the loop; crunch runs
    in process 4242 and crashes; waiter is cancelled while it waits; slow is still running.
    """

    def __init__(self) -> None:
        log = EventLog()
        self.fetch = log.submit("fetch", 0.0)
        self.parse = log.submit("parse", 0.001, upstream=(self.fetch,))
        self.store = log.submit("store", 0.002, upstream=(self.parse,))
        self.coro_a = log.submit("poll", 0.003)
        self.coro_b = log.submit("poll", 0.003)
        self.crunch = log.submit("crunch", 0.004)
        self.waiter = log.submit("waiter", 0.005, upstream=(self.crunch,))
        self.slow = log.submit("slow", 0.006)
        log.start(self.fetch, 0.010, "thread w-0")
        log.start(self.coro_a, 0.010, "loop")
        log.start(self.coro_b, 0.020, "loop")
        log.start(self.crunch, 0.030, "process 4242")
        log.retry(self.fetch, 0.200, "ConnectionError: refused")
        log.start(self.slow, 0.210, "thread w-0")
        log.finish(self.coro_a, 0.300)
        log.finish(self.coro_b, 0.350)
        log.start(self.fetch, 0.400, "thread w-1")
        log.finish(
            self.crunch,
            0.450,
            StateType.CRASHED,
            error="WorkerCrashedError: worker 4242 died (signal 9)",
        )
        log.cancel(self.waiter, 0.460)
        log.finish(self.fetch, 0.600)
        log.start(self.parse, 0.610, "thread w-1")
        log.finish(self.parse, 0.800, StateType.FAILED, error="ValueError: bad page")
        log.finish(
            self.store,
            0.810,
            StateType.FAILED,
            name="UpstreamFailed",
            error="UpstreamFailedError: parse failed",
        )
        self.log = log
        self.events = log.sorted_events()
        self.last = 0.810  # seconds from ORIGIN of the last event
