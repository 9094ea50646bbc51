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
from collections.abc import Callable
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

    A run counts from its submit until it is final (``freed`` is told of its end). A place that
    came free for a coroutine waiting in ``wait`` is held for it (``_held``) until its thread's
    next submit takes it, or until that loop's next turn if none did: a submit right after the
    wait goes in, whoever else submits meanwhile.
    """

    def __init__(self, limit: int, runner_name: str) -> None:
        self.limit = limit
        self._name = runner_name
        # Reentrant: a garbage collection under it (a walk in ``stuck`` allocates) may close
        # an abandoned ``wait``, whose clean-up takes it again on the same thread.
        self._cond = threading.Condition(threading.RLock())
        self._count = 0
        self._held = 0  # places held for woken coroutines
        self._resumed: dict[int, int] = {}  # thread -> held places its resumed coroutines hold
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self.freed = _Freed(self)

    @property
    def count(self) -> int:
        return self._count

    def enter(
        self,
        runs: int,
        nested: bool,
        on_loop: bool,
        stuck: Callable[[int], str | None] | None = None,
    ) -> None:
        """Count ``runs`` new runs, once there is room for one (a nested submit: at once).

        Another thread waits here; the loop's thread gets ``RunnerFullError`` instead. Once
        the room is closed (the session is leaving), only nested submits go in.
        ``stuck(counted)``, asked before a wait, says why no counted run could end while this
        thread waits, if so: that is raised instead of waiting for ever.
        """
        with self._cond:
            if not nested:
                thread = threading.get_ident()
                if self._resumed.get(thread) and not self._closed:
                    self._take_held(thread)  # the place a coroutine of this thread waited for
                else:
                    self._wait_for_a_place(on_loop, stuck)
            self._count += runs

    def _wait_for_a_place(self, on_loop: bool, stuck: Callable[[int], str | None] | None) -> None:
        # (Under the lock.) The main thread waits in slices: a Ctrl-C that lands just before
        # the wait blocks is only seen once the wait ends.
        timeout = _SLICE if threading.current_thread() is threading.main_thread() else None
        while True:
            if self._closed:
                raise RuntimeError(f"runner {self._name!r} is closed")
            if self._count + self._held < self.limit:
                return
            if on_loop:
                raise RunnerFullError(
                    f"runner {self._name!r} holds max_pending={self.limit} unfinished runs: "
                    "`await runner.wait_for_room()` before submitting from its event loop "
                    "(submits from other threads wait by themselves)"
                )
            if stuck is not None:
                reason = stuck(self._count)
                if reason is not None:
                    raise RuntimeError(reason)
                stuck = None  # (asked once, before the first wait: best effort)
            self._cond.wait(timeout)

    def free(self, runs: int) -> None:
        """``runs`` counted runs are final (any thread)."""
        with self._cond:
            self._count -= runs
            self._wake()

    def close(self) -> None:
        """The session is leaving: wake every waiter; from now on only nested submits go in."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._waiters:
                self._resolve(self._waiters.popleft())

    def _wake(self) -> None:
        # (Under the lock.) Coroutines first, one per free place, in the order they came; then
        # every blocked thread, to check for itself (one woken alone could be interrupted).
        while self._waiters and self._count + self._held < self.limit:
            waiter = self._waiters.popleft()
            waiter.woken = True  # (before it can resume: it reads this under the lock)
            self._held += 1
            if not self._resolve(waiter):
                waiter.woken = False
                self._held -= 1
        if self._count + self._held < self.limit:
            self._cond.notify_all()

    @staticmethod
    def _resolve(waiter: _Waiter) -> bool:
        future = waiter.future
        try:
            future.get_loop().call_soon_threadsafe(_set_done, future)
        except RuntimeError:  # its loop is closed: nobody waits there any more
            return False
        return True

    def _take_held(self, thread: int) -> None:
        # (Under the lock.)
        left = self._resumed[thread] - 1
        if left:
            self._resumed[thread] = left
        else:
            del self._resumed[thread]
        self._held -= 1

    async def wait(self) -> None:
        """Return once there is room for a run (or the room is closed)."""
        with self._cond:
            if self._closed or (self._count + self._held < self.limit and not self._waiters):
                return
            waiter = _Waiter(asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            with self._cond:
                if waiter.woken:  # cancelled after it was woken: the place goes on
                    self._held -= 1
                    self._wake()
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
            raise
        with self._cond:
            if not waiter.woken:  # (woken by close)
                return
            # Its place is this thread's until a submit here takes it, or the loop's next turn.
            thread = threading.get_ident()
            self._resumed[thread] = self._resumed.get(thread, 0) + 1
        asyncio.get_running_loop().call_soon(self._let_go, thread)

    def _let_go(self, thread: int) -> None:
        """A resumed coroutine's place, if no submit took it, goes to the next waiter."""
        with self._cond:
            if self._resumed.get(thread):
                self._take_held(thread)
                self._wake()


_SLICE = 0.1  # seconds: how long the main thread waits at a time (see _wait_for_a_place)


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
