"""Waiting on many futures: ``wait``, ``as_completed`` and their async forms."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import operator
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, NamedTuple

from ._futures import (
    COMPLETED,
    CountingCallback,
    Future,
    Lending,
    LoopLending,
    MapGroup,
    add_done_callback_to_all,
    all_results,
    check_timeout,
    refuse_blocking_on_a_host,
    refuse_waiting_on_itself,
    status_of,
)

__all__ = (
    "DoneAndNotDone",
    "as_completed",
    "as_completed_async",
    "wait",
    "wait_all_or_first_failure",
    "wait_async",
)


class DoneAndNotDone(NamedTuple):
    done: set[Future[Any]]
    not_done: set[Future[Any]]


def _unique(futures: Iterable[Any]) -> list[Future[Any]]:
    futures = list(futures)
    # The common case, checked in C: futures only, each once (a map's list).
    if set(map(type, futures)) <= {Future} and len(set(map(id, futures))) == len(futures):
        return futures
    seen: dict[int, Future[Any]] = {}
    for f in futures:
        if not isinstance(f, Future):
            raise TypeError(f"expected asyncflow futures, got {f!r}")
        seen.setdefault(id(f), f)
    return list(seen.values())


def _check_timeout(timeout: float | None) -> float | None:
    """The deadline of a wait of ``timeout`` seconds (None: none)."""
    seconds = None if timeout is None else check_timeout(timeout)
    return None if seconds is None else time.monotonic() + seconds


def _check_blocking_allowed(pending: list[Future[Any]], one_runner: bool = False) -> None:
    """``one_runner``: the futures are runs of one runner (those of a map)."""
    me = threading.get_ident()
    schedulers = {pending[0]._scheduler} if one_runner else set(map(_scheduler_of, pending))
    for sched in schedulers:  # (a list has few: checked in C)
        if sched.thread_id == me:
            f = next(f for f in pending if f._scheduler is sched)
            raise RuntimeError(
                f"cannot block on unfinished futures (task {f._task.name!r} among them) "
                "from the runner's own event loop thread (it would deadlock): use the async "
                "form (`await future_list`, wait_async, as_completed_async)"
            )
    refuse_blocking_on_a_host(
        pending,
        f"unfinished futures (task {pending[0]._task.name!r} among them)",
        "use the async form (`await future_list`, wait_async, as_completed_async)",
    )
    refuse_waiting_on_itself(pending)


_scheduler_of = operator.attrgetter("_scheduler")


def _get(
    q: queue.SimpleQueue[Future[Any]], deadline: float | None, lend_slot: bool
) -> Future[Any] | None:
    """Next finished future, or None at the deadline. With ``lend_slot``, a task body gives
    back its worker slot and limits while it blocks."""
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    lending = Lending().lend() if lend_slot else None
    got = None
    try:
        got = q.get(timeout=timeout)
    except queue.Empty:
        pass
    finally:
        if lending is not None:
            lending.give_back(got is not None or timeout is None)
    return got


def _sync_completions(
    futures: list[Future[Any]], timeout: float | None, lend_slot: bool = True
) -> Iterator[Future[Any] | None]:
    """Yield each future as it finishes (finished ones first); yield None at the deadline."""
    deadline = _check_timeout(timeout)
    pending = [f for f in futures if f._status < COMPLETED]
    yield from (f for f in futures if f._status >= COMPLETED)
    if not pending:
        return
    _check_blocking_allowed(pending)
    q: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
    add_done_callback_to_all(pending, q.put)
    try:
        for _ in range(len(pending)):
            got = _get(q, deadline, lend_slot)
            yield got
            if got is None:
                return
    finally:  # a timed-out or abandoned wait must not leave its callbacks behind
        for f in pending:
            if f._status < COMPLETED:
                f.remove_done_callback(q.put)


class _LentSlot:
    """A task body blocked in a whole-list wait lends its slot and limits once, not per
    future."""

    def __init__(self, futures: list[Future[Any]]) -> None:
        pending = any(f._status < COMPLETED for f in futures)
        self._lending = Lending() if pending else None
        self.done = False

    def __enter__(self) -> _LentSlot:
        if self._lending is not None:
            self._lending.lend()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lending is not None:
            self._lending.give_back(self.done)


def wait(futures: Iterable[Future[Any]], timeout: float | None = None) -> DoneAndNotDone:
    """Block until every future is final or ``timeout`` passed; return ``(done, not_done)``."""
    unique = _unique(futures)
    _wait_all(unique, timeout, stop_on_failure=False)
    done = {f for f in unique if f._status >= COMPLETED}
    return DoneAndNotDone(done, {f for f in unique if f not in done})


class _AllDone(CountingCallback):
    """One done-callback shared by many futures. It signals once: when the last one is final,
    or, with ``stop_on_failure``, when one ends other than Completed. A waiter on a whole list
    is woken once, not once per future (per-future wake-ups make a big map's wait cost a
    thread switch per run)."""

    __slots__ = ("_left", "_lock", "_signal", "_stop", "failed", "fired")

    def __init__(self, count: int, stop_on_failure: bool, signal: Callable[[], object]) -> None:
        self._left = count
        self._stop = stop_on_failure
        self._signal = signal
        self._lock = threading.Lock()  # callbacks of futures of several runners: several threads
        self.failed: Future[Any] | None = None
        self.fired = False

    def __call__(self, f: Future[Any]) -> None:
        with self._lock:
            if self.fired:
                return
            self._left -= 1
            if self._stop and f._status != COMPLETED:
                self.failed = f
            elif self._left:
                return
            self.fired = True
        self._signal()

    def completed(self, count: int) -> None:
        """``count`` of the futures ended Completed (one call for a batch of them)."""
        with self._lock:
            if self.fired:
                return
            self._left -= count
            if self._left > 0:
                return
            self.fired = True
        self._signal()

    def detach(self, pending: list[Future[Any]]) -> None:
        """A wait that ended early must not leave its callback behind."""
        if self.fired and self.failed is None:
            return  # every one is final: none holds it any more
        for f in pending:
            if f._status < COMPLETED:
                f.remove_done_callback(self)


def _unfinished(
    unique: list[Future[Any]], stop_on_failure: bool
) -> tuple[Future[Any] | None, list[Future[Any]]]:
    """Before a whole-list wait: a failure already there (with ``stop_on_failure``: nothing
    to wait for then), else the futures still to wait for."""
    statuses = list(map(status_of, unique))  # (a list may be a whole map: in C)
    if not statuses:
        return None, []
    top = max(statuses)
    if stop_on_failure and top > COMPLETED:
        return unique[next(i for i, s in enumerate(statuses) if s > COMPLETED)], []
    if top < COMPLETED:  # none is final yet (a map just made)
        return None, list(unique)
    return None, list(itertools.compress(unique, map(COMPLETED.__gt__, statuses)))


def _watch_all(
    pending: list[Future[Any]],
    stop_on_failure: bool,
    signal: Callable[[], object],
    group: MapGroup | None,
) -> tuple[_AllDone, Callable[[], None]]:
    """A waiter that ``signal``s once all of ``pending`` are final (or, with
    ``stop_on_failure``, one failed), and how to take it off. With ``group`` (whose runs
    ``pending`` are part of), the group is watched instead of each future."""
    if group is None:
        waiter = _AllDone(len(pending), stop_on_failure, signal)
        add_done_callback_to_all(pending, waiter)
        return waiter, functools.partial(waiter.detach, pending)
    watched = group.watch(lambda left: _AllDone(left, stop_on_failure, signal))
    if watched is None or (stop_on_failure and group.failed is not None):
        # Every run ended, or one failed, since the list was looked at.
        waiter = _AllDone(0, stop_on_failure, signal)
        waiter.failed = group.failed if stop_on_failure else None
        waiter.fired = True
        signal()
        if watched is not None:
            group.unwatch(watched)
        return waiter, _nothing
    assert isinstance(watched, _AllDone)
    return watched, functools.partial(group.unwatch, watched)


def _nothing() -> None:
    pass


def _wait_all(
    unique: list[Future[Any]],
    timeout: float | None,
    stop_on_failure: bool,
    group: MapGroup | None = None,
) -> Future[Any] | None:
    """Block until all are final or the timeout passed; with ``stop_on_failure``, return the
    first future that failed as soon as it is final (None otherwise). ``group``: the map
    whose runs ``unique`` are, all of them."""
    deadline = _check_timeout(timeout)
    if group is not None and unique and group.untouched:
        pending = unique  # none has ended yet (a map just made): no pass over them
    else:
        failed, pending = _unfinished(unique, stop_on_failure)
        if not pending:
            return failed
    _check_blocking_allowed(pending, one_runner=group is not None)
    event = threading.Event()
    waiter, detach = _watch_all(pending, stop_on_failure, event.set, group)
    with _LentSlot(pending) as lent:
        try:
            finished = event.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
        finally:
            # Ended early (a timeout, a failure, an interrupt): leave no callback behind on the
            # futures still running.
            detach()
        lent.done = finished
    return waiter.failed


def as_completed(
    futures: Iterable[Future[Any]], timeout: float | None = None
) -> Iterator[Future[Any]]:
    """Yield futures as they finish (already finished ones first, each once).

    Raises ``TimeoutError`` saying how many are unfinished when ``timeout`` passes first.
    """
    unique = _unique(futures)
    deadline_check = _check_timeout(timeout)  # validate eagerly, not at first next()
    del deadline_check
    return _as_completed(unique, timeout)


def _as_completed(unique: list[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
    for yielded, f in enumerate(_sync_completions(unique, timeout)):
        if f is None:
            raise TimeoutError(
                f"{len(unique) - yielded} of {len(unique)} futures unfinished "
                f"after {timeout} seconds"
            )
        yield f


def wait_all_or_first_failure(
    futures: list[Future[Any]],
    timeout: float | None,
    stop_on_failure: bool,
    group: MapGroup | None = None,
) -> Future[Any] | None:
    """Block until all are final or the timeout passed; with ``stop_on_failure``, return the
    first future seen to fail as soon as it is final (None otherwise). ``group``: the map
    whose runs ``futures`` are, all of them, each once."""
    if group is not None:
        return _wait_all(list(futures), timeout, stop_on_failure, group)
    return _wait_all(_unique(futures), timeout, stop_on_failure)


async def _wait_all_async(
    unique: list[Future[Any]],
    timeout: float | None,
    stop_on_failure: bool,
    group: MapGroup | None = None,
) -> Future[Any] | None:
    """Async form of ``_wait_all``."""
    deadline = _check_timeout(timeout)
    failed, pending = _unfinished(unique, stop_on_failure)
    if not pending:
        return failed
    refuse_waiting_on_itself(pending)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    def signal() -> None:
        if threading.get_ident() == loop_thread:
            wake()
        else:
            with contextlib.suppress(RuntimeError):  # the waiting loop is closed
                loop.call_soon_threadsafe(wake)

    loop_thread = threading.get_ident()
    waiter, detach = _watch_all(pending, stop_on_failure, signal, group)
    lent = LoopLending.start(loop)
    finished = False
    try:
        if deadline is None:
            await done
        else:
            await asyncio.wait({done}, timeout=max(deadline - time.monotonic(), 0))
        finished = done.done()
    finally:
        detach()  # those still running keep no callback of a finished wait
        done.cancel()
        # (Interrupted, or timed out: back at once, the timeout is kept. A cancel also
        # cancels ``done``: it is done then, not finished.)
        if lent is not None and not finished:
            lent.interrupted()
    if lent is not None:
        await lent.ended()
    return waiter.failed


def _async_queue(
    pending: list[Future[Any]],
) -> tuple[asyncio.Queue[Future[Any]], Callable[[Future[Any]], None]]:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[Future[Any]] = asyncio.Queue()

    def notify(f: Future[Any]) -> None:
        if f._scheduler.loop is loop:  # callbacks run on that loop's thread
            q.put_nowait(f)
        else:
            try:
                loop.call_soon_threadsafe(q.put_nowait, f)
            except RuntimeError:  # the waiting loop is closed
                pass

    refuse_waiting_on_itself(pending)
    for f in pending:
        f.add_done_callback(notify)
    return q, notify


async def _async_completions(
    futures: list[Future[Any]], timeout: float | None
) -> AsyncGenerator[Future[Any] | None, None]:
    deadline = _check_timeout(timeout)
    pending = [f for f in futures if f._status < COMPLETED]
    for f in futures:
        if f._status >= COMPLETED:
            yield f
    if not pending:
        return
    q, notify = _async_queue(pending)
    try:
        loop = asyncio.get_running_loop()
        for _ in range(len(pending)):
            lent = LoopLending.start(loop)
            got = None
            try:
                if deadline is None:
                    got = await q.get()
                else:
                    got = await asyncio.wait_for(q.get(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                pass
            finally:
                if lent is not None and got is None:  # (interrupted, or timed out: at once)
                    lent.interrupted()
            if got is None:
                yield None
                return
            if lent is not None:
                await lent.ended()
            yield got
    finally:  # a timed-out or abandoned wait must not leave its callbacks behind
        for f in pending:
            if f._status < COMPLETED:
                f.remove_done_callback(notify)


async def wait_async(
    futures: Iterable[Future[Any]], timeout: float | None = None
) -> DoneAndNotDone:
    """Async form of ``wait``."""
    unique = _unique(futures)
    await _wait_all_async(unique, timeout, stop_on_failure=False)
    done = {f for f in unique if f._status >= COMPLETED}
    return DoneAndNotDone(done, {f for f in unique if f not in done})


def as_completed_async(
    futures: Iterable[Future[Any]], timeout: float | None = None
) -> AsyncIterator[Future[Any]]:
    """Async form of ``as_completed``: ``async for f in as_completed_async(futures)``."""
    unique = _unique(futures)
    _check_timeout(timeout)
    return _as_completed_async(unique, timeout)


async def _as_completed_async(
    unique: list[Future[Any]], timeout: float | None
) -> AsyncIterator[Future[Any]]:
    yielded = 0
    async with contextlib.aclosing(_async_completions(unique, timeout)) as completions:
        async for f in completions:
            if f is None:
                raise TimeoutError(
                    f"{len(unique) - yielded} of {len(unique)} futures unfinished "
                    f"after {timeout} seconds"
                )
            yielded += 1
            yield f


async def gather_fail_fast(futures: list[Future[Any]], group: MapGroup | None = None) -> list[Any]:
    """Await all futures; raise the first failure as soon as it happens. ``group``: the map
    whose runs ``futures`` are, all of them, each once."""
    unique = _unique(futures) if group is None else list(futures)
    failed = await _wait_all_async(unique, None, stop_on_failure=True, group=group)
    if failed is not None:
        failed._awaited_outcome()
    return all_results(futures)
