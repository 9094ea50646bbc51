"""Back-pressure: a session holding ``max_pending`` unfinished runs lets no more in until one ends.

Why not an ``anyio`` or ``threading`` semaphore: a submit from another thread must block, one
from the scheduler's own loop thread must never block (it would stop the runs it waits for),
a nested submit from inside a run must always go in (the run waiting for room would hold room
itself: with every unfinished run a parent blocked on its child's submit, nothing could end),
and a map goes in whole once there is room for one run. No library primitive waits in threads
and in coroutines on one count with those rules.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

from ._futures import CountingCallback
from .exceptions import RunnerFullError

__all__ = ("Room",)


class _Waiter:
    """A coroutine in ``wait``; ``woken``: it was given the room that came free."""

    __slots__ = ("future", "woken")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.woken = False


class Room:
    """The count of one session's unfinished runs, against its limit.

    A run counts from its submit until it is final (``freed`` is its done-callback). Room for a
    coroutine that waited is kept for it from when it is woken until it resumes (``_held``):
    its next submit, with no ``await`` in between, goes in.
    """

    def __init__(self, limit: int, runner_name: str) -> None:
        self.limit = limit
        self._name = runner_name
        self._cond = threading.Condition(threading.Lock())
        self._count = 0
        self._held = 0  # woken coroutines that have not resumed yet
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self.freed = _Freed(self)  # the done-callback of every counted run

    @property
    def count(self) -> int:
        return self._count

    def enter(self, runs: int, nested: bool, on_loop: bool) -> None:
        """Count ``runs`` new runs, once there is room for one (a nested submit: at once).

        Another thread waits here; the loop's thread gets ``RunnerFullError`` instead.
        """
        with self._cond:
            if not nested:
                while self._count + self._held >= self.limit and not self._closed:
                    if on_loop:
                        raise RunnerFullError(
                            f"runner {self._name!r} holds max_pending={self.limit} unfinished "
                            "runs: `await runner.wait_for_room()` before submitting from its "
                            "event loop (submits from other threads wait by themselves)"
                        )
                    self._cond.wait()
            self._count += runs

    def free(self, runs: int) -> None:
        """``runs`` counted runs are final (any thread)."""
        with self._cond:
            self._count -= runs
            self._wake()

    def close(self) -> None:
        """The session stopped accepting runs: wake every waiter (its submit then says so)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._waiters:
                self._resolve(self._waiters.popleft())

    def _wake(self) -> None:
        # (Under the lock.) Coroutines first, one per free place, in the order they came; then
        # every blocked thread, to check for itself (one woken alone could be interrupted).
        while self._waiters and self._count + self._held < self.limit:
            self._held += 1
            waiter = self._waiters.popleft()
            waiter.woken = True
            self._resolve(waiter)
        if self._count + self._held < self.limit:
            self._cond.notify_all()

    @staticmethod
    def _resolve(waiter: _Waiter) -> None:
        future = waiter.future
        try:
            future.get_loop().call_soon_threadsafe(_set_done, future)
        except RuntimeError:  # its loop is closed: nobody waits any more
            pass

    async def wait(self) -> None:
        """Return once the session holds fewer than ``limit`` unfinished runs (or is closed)."""
        with self._cond:
            if self._closed or (self._count + self._held < self.limit and not self._waiters):
                return
            waiter = _Waiter(asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
        resumed = False
        try:
            await waiter.future
            resumed = True
        finally:
            with self._cond:
                if waiter.woken:
                    self._held -= 1
                    if not resumed:  # cancelled after it was woken: the room goes on
                        self._wake()
                elif waiter in self._waiters:  # (else: woken by close)
                    self._waiters.remove(waiter)
        if resumed:
            # The caller submits now, before the loop's next turn; then, if it did not, the
            # next waiter gets the room.
            asyncio.get_running_loop().call_soon(self._wake_locked)

    def _wake_locked(self) -> None:
        with self._cond:
            self._wake()


class _Freed(CountingCallback):
    __slots__ = ("_room",)

    def __init__(self, room: Room) -> None:
        self._room = room

    def __call__(self, _run: Any) -> None:
        self._room.free(1)

    def completed(self, count: int) -> None:
        self._room.free(count)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
