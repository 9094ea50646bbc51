"""Local concurrency limits: counters owned by the scheduler's loop, no locks, no tasks.

A run that must wait for a slot is queued here and holds no asyncio task, thread or process.
A run takes its limits in a fixed order (map, then tags in name order, then the runner-wide
one), so two runs can never wait on each other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = (
    "Limit",
    "RunPolicy",
    "acquire",
    "check_limit",
    "drop_reclaim",
    "lend",
    "reclaim",
    "release",
)

# A run, as seen here: its future (``done()``, ``_policy``). Launching one is the scheduler's.
Launch = Callable[[Any, "RunPolicy"], None]


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
        "queued",
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
        # The attempt of a sync body handed to the backend, until it is over (see Attempt).
        self.queued: Any = None


def acquire(run: Any, pol: RunPolicy) -> bool:
    """Take the run's limits in order from the first it lacks; False: it waits in a queue."""
    limits = pol.limits
    i = pol.held
    while i < len(limits):
        limit = limits[i]
        if limit.used >= limit.capacity:
            limit.queue.append(run)
            return False
        limit.used += 1
        i += 1
        pol.held = i
    return True


def release(pol: RunPolicy, launch: Launch) -> None:
    """Give back the limits a run holds; hand each to the next run waiting for it (launched
    once it holds all its limits, or resumed if it is a running body taking them back)."""
    limits = pol.limits
    held, pol.held = pol.held, 0
    for i in range(held - 1, -1, -1):
        limit = limits[i]
        limit.used -= 1
        queue = limit.queue
        while queue and limit.used < limit.capacity:
            waiter = queue.popleft()
            if waiter.done():  # cancelled while it waited
                continue
            wpol = waiter._policy
            limit.used += 1
            wpol.held += 1
            if acquire(waiter, wpol):
                resume, wpol.resume = wpol.resume, None
                if resume is None:
                    launch(waiter, wpol)
                else:  # a running body took back the limits it had lent
                    resume()


def lend(run: Any, attempt: int | None, launch: Launch) -> bool:
    """``run``'s body (of ``attempt``) waits for another future: lend the run's limits
    meanwhile. False if there is nothing to lend."""
    pol: RunPolicy | None = run._policy
    if (
        pol is None
        or pol.lent
        or not pol.limits
        or pol.held < len(pol.limits)
        or run.done()
        or (attempt is not None and pol.driven and attempt != pol.attempt)
    ):
        return False
    pol.lent = True
    release(pol, launch)
    return True


def reclaim(run: Any, resume: Callable[[], object], attempt: int | None, force: bool) -> bool:
    """Take back the limits ``run`` lent. True if it has them now (``resume`` is called at
    once); otherwise ``resume()`` is called when it does (the run waits in the limits' queues
    meanwhile). With ``force`` (a timed wait that timed out, an interrupted wait) they are taken
    back at once, even over a limit for a moment. Nothing to take back if the run is over, did
    not lend, or this is an abandoned attempt's body."""
    pol: RunPolicy | None = run._policy
    if (
        pol is None
        or not pol.lent
        or run.done()
        or (attempt is not None and pol.driven and attempt != pol.attempt)
    ):
        resume()
        return True
    pol.lent = False
    if force:
        for limit in pol.limits[pol.held :]:
            limit.used += 1
        pol.held = len(pol.limits)
    elif not acquire(run, pol):
        pol.resume = resume
        return False
    resume()
    return True


def drop_reclaim(run: Any) -> None:
    """A body waiting to take back its limits goes on without them (its run ended, or the next
    attempt takes them instead)."""
    pol: RunPolicy | None = run._policy
    if pol is None or pol.resume is None:
        return
    resume, pol.resume = pol.resume, None
    if pol.held < len(pol.limits):
        try:
            pol.limits[pol.held].queue.remove(run)
        except ValueError:
            pass
    resume()
