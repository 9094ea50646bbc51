"""Local concurrency limits: counters owned by the scheduler's loop, no locks, no tasks.

A run that must wait for a slot is queued here and holds no asyncio task, thread or process.
A run takes its limits in a fixed order (map, then tags in name order, then the runner-wide
one), so two runs can never wait on each other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ("Limit", "RunPolicy", "check_limit")


def check_limit(name: str, value: object, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a positive int, not {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return value


class Limit:
    """At most ``capacity`` runs hold this limit at once; the rest wait in FIFO order."""

    __slots__ = ("capacity", "name", "queue", "used")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.used = 0
        self.queue: deque[Any] = deque()

    def __repr__(self) -> str:
        return f"Limit({self.name!r}, {self.used}/{self.capacity}, {len(self.queue)} waiting)"


class RunPolicy:
    """What the scheduler needs beyond the plain path for one run.

    ``limits`` are taken in order before the run starts; ``held`` counts how many it holds.
    ``driven`` runs go through the policy driver (retries, timeouts, caching, hooks).
    """

    __slots__ = (
        "abandoned",
        "attempt",
        "cancelling",
        "driven",
        "finishing",
        "held",
        "lent",
        "limits",
        "resume",
        "retries",
        "started",
    )

    def __init__(self, limits: tuple[Limit, ...], driven: bool, retries: int) -> None:
        self.limits = limits
        self.held = 0
        self.driven = driven
        self.retries = retries
        self.attempt = 0
        self.started = False  # the driver began (it records the outcome itself)
        self.finishing = False  # the attempts are over: hooks run, then the run ends
        self.abandoned = 0  # attempts whose thread body still runs after the run let go of it
        # The running body lent the limits while it waits for another future.
        self.lent = False
        # Set while a running body waits to take back the limits it lent: called when it has.
        self.resume: Callable[[], object] | None = None
        self.cancelling = False  # cancel() reached a started driver: no more retries
