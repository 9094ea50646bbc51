"""Shared test bodies and gates. Nothing here sleeps: tests decide when bodies may go on."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable
from typing import Any

from asyncflow import TaskEvent

TIMEOUT = 5.0  # seconds: the longest any single wait in the tests may take


class Stuck:
    """A thread body stuck until ``release()``; ``returned`` is set just before it returns."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()
        self.returned = threading.Event()
        self.calls = 0

    def body(self) -> str:
        self.calls += 1
        self.started.set()
        try:
            if not self.gate.wait(TIMEOUT):
                raise TimeoutError("the gate never opened")
            return "late"
        finally:
            self.returned.set()

    def release(self) -> None:
        self.gate.set()


def hold(started: Callable[[], object], gate: threading.Event, value: int = 0) -> int:
    """A thread body: say it started, then wait for the gate."""
    started()
    if not gate.wait(TIMEOUT):
        raise TimeoutError("the gate never opened")
    return value


async def ahold(started: asyncio.Event, gate: asyncio.Event, value: int = 0) -> int:
    """A coroutine body: say it started, then wait for the gate."""
    started.set()
    await gate.wait()
    return value


def double(x: int) -> int:
    return x * 2


async def adouble(x: int) -> int:
    return x * 2


async def noop() -> None:
    return None


class TimedLock:
    """Stands in for a lock, around it: every take has a time limit, so a lock that cannot be
    taken again by the thread holding it fails (``stuck``), not hangs."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.stuck = 0

    def __enter__(self) -> None:
        if not self.real.acquire(timeout=TIMEOUT):
            self.stuck += 1
            raise RuntimeError("the lock could not be taken again")

    def __exit__(self, *exc: object) -> None:
        self.real.release()


def collect_holding(owner: Any, name: str) -> TimedLock:
    """A full garbage collection while the lock ``owner.<name>`` is held, with a ``TimedLock``
    in its place meanwhile (put back after): its ``stuck`` counts takes that would have hung."""
    real = getattr(owner, name)
    lock = TimedLock(real)
    setattr(owner, name, lock)
    try:
        with lock:
            gc.collect()
    finally:
        setattr(owner, name, real)
    return lock


def park_and_close(coro_fn: Callable[[asyncio.Event], Any]) -> None:
    """Run ``coro_fn(entered)`` on a loop of its own until it set ``entered``, then close the
    loop with it pending: once nothing else holds it, it is a reference cycle only (its task,
    its coroutine), for the garbage collector to close."""
    entered = asyncio.Event()

    async def start() -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro_fn(entered))
        await entered.wait()
        return task

    other = asyncio.new_event_loop()
    task = other.run_until_complete(start())
    other.close()
    del task


class Peak:
    """The most unfinished runs a runner held at once, from its events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __call__(self, event: TaskEvent) -> None:
        with self._lock:
            if event.kind == "submitted":
                self.now += 1
                self.peak = max(self.peak, self.now)
            elif event.kind in ("finished", "cancelled"):
                self.now -= 1


def peak_of_doubling(runner: Any, count: int) -> Peak:
    """Start ``runner``, submit ``double(x=i)`` for ``i`` in ``range(count)`` from this thread
    and check every result: the most unfinished runs it held at once, from its events."""
    peak = Peak()
    with runner.subscribe(peak), runner:
        futures = [runner.submit(double, {"x": i}) for i in range(count)]
        assert [f.result(TIMEOUT) for f in futures] == [2 * i for i in range(count)]
    return peak
