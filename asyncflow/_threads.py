"""Worker threads for sync task bodies.

Why not ``anyio.to_thread.run_sync`` per task: it costs ~134 µs a call here (against ~10 µs for
a ``ThreadPoolExecutor`` round trip) and its threads are cached per event loop beyond the
runner's life, so a runner could not promise "no thread left behind" on exit. Instead, a few
long-lived threads take ready bodies from a queue and hand outcomes back in batches, with one
wake-up of the loop per batch. The loop side owns every counter; threads only take and post
(a thread going on to the next queued run on its own slot posts that too).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._futures import COMPLETED, Future, blocking_hooks, take_back_lent
from ._scheduler import call_sync

if TYPE_CHECKING:
    from ._scheduler import Scheduler

_CLOSED_CHECK = 0.1  # seconds between looks at whether the loop closed under a waiting body
_KEPT = object()  # in place of an outcome's ok: a worker took this run itself, on its slot

__all__ = ("LeftRunning", "ThreadWorkers")

logger = logging.getLogger("asyncflow")


class LeftRunning:
    """A backend's bodies that cannot be stopped (a thread's), waited for at close unless
    abandoned (Ctrl-C)."""

    def __init__(self) -> None:
        self.abandoned = False
        self._quiet: asyncio.Event | None = None

    def abandon(self) -> None:
        self.abandoned = True
        self.wake()

    def wake(self) -> None:
        """Call when the last body running ended."""
        if self._quiet is not None:
            self._quiet.set()

    async def wait(self, busy: Callable[[], object], abandon: bool) -> None:
        """Until ``busy()`` is false, or the bodies are abandoned (now or meanwhile)."""
        self.abandoned = self.abandoned or abandon
        while busy() and not self.abandoned:
            self._quiet = asyncio.Event()
            await self._quiet.wait()
        self._quiet = None


class ThreadWorkers:
    """At most ``max_workers`` sync bodies run at once; threads start on demand.

    A thread whose body blocks on another future (``.result()``) gives its slot back while it
    waits and takes one again before it goes on, so waiting bodies never starve the pool.
    """

    def __init__(self, scheduler: Scheduler, max_workers: int, name: str) -> None:
        self._sched = scheduler
        self._loop = scheduler.loop
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[Any | None] = queue.SimpleQueue()
        self._ready: deque[Any] = deque()
        self._active = 0  # slots in use: handed to a thread and not reported back
        self._parked = 0  # threads blocked in .result() (or waiting for a slot back)
        self._regrants: deque[threading.Event] = deque()
        self._threads: list[threading.Thread] = []
        # Outcomes (item, ok, value) in the order bodies ended; while someone listens to events,
        # also (item, None, worker name) when a thread takes an item, ahead of its outcome.
        self._done: deque[tuple[Any, object, Any]] = deque()
        self._done_scheduled = False
        self._left = LeftRunning()
        # Taking from ``_ready`` (the loop, or a thread going on to the next run) and ``_hold``.
        self._take = threading.Lock()
        self._hold = False
        # Worker threads (ids) whose body took back a lent slot without waiting: over the bound.
        self._over: set[int] = set()

    # -- loop side ---------------------------------------------------------------------------
    def submit(self, item: Any) -> None:
        self._ready.append(item)
        if self._active < self._max:
            self._pump()

    def submit_many(self, items: list[Any]) -> None:
        self._ready.extend(items)
        if self._active < self._max:
            self._pump()

    def _pump(self) -> None:
        while self._active < self._max:
            if self._regrants:
                self._active += 1
                self._parked -= 1
                self._regrants.popleft().set()
                continue
            if self._hold:  # cancelling everything: nothing queued starts meanwhile
                return
            with self._take:  # (a thread going on may pop from the other side of this check)
                if not self._ready:
                    return
                item = self._ready.popleft()
            if item._status >= COMPLETED:  # cancelled while it waited for a slot
                continue
            self._active += 1
            self._sched.mark_running(item)
            if len(self._threads) < self._active + self._parked:
                error = self._spawn()
                if error is not None:  # no thread for it: fail the run rather than lose it
                    self._active -= 1
                    self._loop.call_soon(self._sched.on_outcome, item, False, error)
                    continue
            self._queue.put(item)

    def _spawn(self) -> RuntimeError | None:
        thread = threading.Thread(
            target=self._work,
            name=f"asyncflow-{self._name}-{len(self._threads)}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a process or system limit
            return RuntimeError(f"could not start a worker thread: {exc}")
        self._threads.append(thread)
        return None

    def _flush(self) -> None:
        self._done_scheduled = False
        done = self._done
        on_outcome = self._sched.on_outcome
        while done:
            item, ok, value = done.popleft()
            if ok is True or ok is False:
                # The slot is free before the outcome is handled: a run it makes ready may take
                # it (in queue order) instead of a new thread being started.
                self._active -= 1
                on_outcome(item, ok, value)
            elif ok is _KEPT:  # a worker took ``item`` from the queue itself, on its own slot
                self._active += 1
            else:  # a worker started ``item`` (``value`` names it): told while someone listens
                self._sched.worker_took(item, value)
        self._pump()
        self._maybe_quiet()

    def _on_release(self) -> None:
        self._active -= 1
        self._parked += 1
        self._pump()

    def _on_reacquire(self, event: threading.Event) -> None:
        self._regrants.append(event)
        self._pump()

    def _maybe_quiet(self) -> None:
        if not self._active and not self._parked:
            self._left.wake()

    def interrupt(self, item: Any) -> bool:
        """A thread cannot be stopped: its body is left to run (see ``abandon``)."""
        return False

    def abandon(self) -> None:
        self._left.abandon()

    async def aclose(self, abandon: bool = False) -> None:
        # Bodies whose runs were cancelled or timed out may still be running: a thread cannot
        # be killed, so wait for them to return before the threads are stopped; unless told to
        # abandon them (Ctrl-C): they are daemon threads and end with the process.
        await self._left.wait(lambda: self._active or self._parked, abandon)
        busy = bool(self._active or self._parked)
        for _ in self._threads:
            self._queue.put(None)
        if not busy:
            for thread in self._threads:
                thread.join()
        self._threads.clear()

    # -- worker threads ----------------------------------------------------------------------
    def _call_soon(self, fn: Any, *args: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the runner is gone, nothing escapes
            logger.debug("runner loop closed; a worker dropped %r", fn)
            return False
        return True

    def release(self) -> None:
        """Worker side: this thread is about to block; lend its slot to queued work."""
        self._call_soon(self._on_release)

    def reacquire(self, wait: bool = True, thread: int | None = None) -> None:
        """Worker side: wait until a slot is free again, then go on.

        ``wait=False`` (a timed wait that timed out, or a wait that ended on another thread)
        takes the slot back at once, briefly running one body over the limit, so the caller's
        timeout is kept. ``thread``: the id of the worker thread whose slot it is, if not this
        one."""
        if not wait:
            # That thread's body now runs over the bound until it returns: its thread must not
            # go on to a queued run after it (the outcome hands the slot back through the loop).
            self._over.add(threading.get_ident() if thread is None else thread)
            self._call_soon(self._on_reacquire_now)
            return
        event = threading.Event()
        if not self._call_soon(self._on_reacquire, event):
            return
        # (The loop may close before it answers: an abandoned body's wait ends after its
        # runner was left, by Ctrl-C. Then there is no slot to wait for.)
        while not event.wait(_CLOSED_CHECK) and not self._loop.is_closed():
            pass

    def _on_reacquire_now(self) -> None:
        self._active += 1
        self._parked -= 1

    def _take_ready(self) -> Any | None:
        """Worker side, holding a slot whose body just ended: the next queued run, claimed to
        run on that slot, or None (the slot then goes back through the loop).

        A worker going straight on to the next run skips two thread wake-ups per run (the
        loop's, to hand it over, and its own). Only plain runs are taken this way, and only
        while no waiting body asks for its slot back (those go first)."""
        ready = self._ready
        take = self._take
        # Not waiting for the lock: another thread taking (or the loop) has it only briefly,
        # and a thread put to sleep on it costs more than the loop handing this slot on.
        if not take.acquire(blocking=False):
            return None
        try:
            while ready and not (self._hold or self._regrants or self._left.abandoned):
                item = ready[0]
                if type(item) is not Future:  # an attempt of a driven run: the loop starts it
                    return None
                ready.popleft()
                if item._claim():
                    return item
                # Cancelled while queued: nothing to report (the loop skips those too).
        finally:
            take.release()
        return None

    def hold(self, on: bool) -> None:
        """Loop side: while on (the scheduler cancels every run), nothing queued is started,
        by the loop or by a thread going on; when off again, queued runs go on."""
        with self._take:
            self._hold = on
        if not on and self._active < self._max:
            self._pump()

    def _work(self) -> None:
        blocking_hooks.slot = self
        get = self._queue.get
        done = self._done
        sched = self._sched
        worker = f"thread {threading.current_thread().name}"
        over = self._over
        me = threading.get_ident()
        item = None
        while True:
            if item is None:
                item = get()
                if item is None:
                    return
            ctx = item._ctx
            if ctx is None or item._status >= COMPLETED:
                outcome: tuple[Any, object, Any] = (item, False, None)
            else:
                if sched.events is not None:
                    done.append((item, None, worker))
                    self._schedule_flush()
                try:
                    # A copy: runs waiting together may share one context snapshot.
                    outcome = (item, True, ctx.copy().run(call_sync, item))
                except BaseException as exc:  # reported to the scheduler, never lost
                    outcome = (item, False, exc)
                take_back_lent()
            del ctx
            if over and me in over:  # its slot was one over the bound: the outcome hands it back
                over.discard(me)
                item = None
            else:
                item = self._take_ready() if self._ready else None
            if item is not None:  # counted ahead of the outcome that frees the slot
                done.append((item, _KEPT, None))
            done.append(outcome)
            del outcome
            if not self._done_scheduled:
                self._done_scheduled = True
                self._call_soon(self._flush)

    def _schedule_flush(self) -> None:
        if not self._done_scheduled:
            self._done_scheduled = True
            self._call_soon(self._flush)
