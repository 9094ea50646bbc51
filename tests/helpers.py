"""Shared test bodies and gates. Nothing here sleeps: tests decide when bodies may go on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

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
