"""``Future``: the handle a submit returns, awaitable on any loop and blockable from any thread.

Only the scheduler resolves a future, on its own loop thread (``_set_final``). Waiters register
from any thread; one module-wide lock makes "register unless already done" and "mark done and
take the waiters" atomic with respect to each other. It is held for a few attribute writes only.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import numbers
import operator
import secrets
import sys
import threading
import time
import types
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Protocol, TypeVar

from ._context import current_attempt, current_future
from ._error_text import error_text, message_of
from ._graph import Node
from ._states import State, StateType
from .exceptions import (
    AsyncflowError,
    RemoteError,
    RemoteTraceback,
    TaskCancelledError,
    TaskCrashedError,
    UpstreamFailedError,
)

if TYPE_CHECKING:
    import contextvars

    from ._limits import RunPolicy
    from ._mapping import MapRows
    from ._task import Task

R = TypeVar("R")

__all__ = ("Future", "FutureList")

logger = logging.getLogger("asyncflow")

# Run status codes; everything >= COMPLETED is final.
PENDING, RUNNING, RETRYING, COMPLETED, FAILED, CANCELLED, CRASHED = range(7)
_TYPES = (
    StateType.PENDING,
    StateType.RUNNING,
    StateType.RETRYING,
    StateType.COMPLETED,
    StateType.FAILED,
    StateType.CANCELLED,
    StateType.CRASHED,
)
_NAMES = ("Pending", "Running", "Retrying", "Completed", "Failed", "Cancelled", "Crashed")

# Reentrant: a garbage collection can run inside any section it guards (on an allocation
# there) and close an abandoned wait in a reference cycle, whose cleanup takes it again on the
# same thread (``__await__``'s except clause, ``as_completed``'s finally). A plain lock would
# hang that thread for good. A nested cleanup only removes its own waiter or callback. The
# sections that may allocate between reading a future's list and writing it back either found
# None there (nothing a removal could change), or are ``remove_done_callback`` (which may then
# keep a callback the nested one removed: a stale call once the run is final, to a wait that
# is gone, as when its removal comes too late). An RLock costs no more than a Lock here.
_lock = threading.RLock()


# Event loops that run the scheduler of an open session -> how many sessions. A blocking
# wait there for a future that needs one of their runs would never end: it is refused.
_hosts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()
_hosts_lock = threading.Lock()


def host(loop: asyncio.AbstractEventLoop, opened: bool) -> None:
    """A session on ``loop`` ``opened`` (else it closed)."""
    with _hosts_lock:
        sessions = _hosts.get(loop, 0) + (1 if opened else -1)
        if sessions:
            _hosts[loop] = sessions
        else:
            del _hosts[loop]


def refuse_blocking_on_a_host(futures: Sequence[Future[Any]], what: str, advice: str) -> None:
    """Raise if this thread runs the event loop of a runner's open session and one of the
    unfinished ``futures`` needs (through its inputs, theirs...) a run on that loop: that run
    could not go on while this thread waits, and the wait would never end. (A run's body may
    need that loop too, which cannot be known beforehand: such a wait is not refused, as
    refusing every wait there refused many that end.)"""
    needed = needed_here(futures)
    if needed is not None:
        raise RuntimeError(
            f"cannot block on {what} from the event loop of runner "
            f"{needed._scheduler.runner.name!r}: it needs that runner's run of task "
            f"{needed._task.name!r}, which cannot go on while this loop waits: {advice}"
        )


def needed_here(futures: Iterable[Future[Any]]) -> Any:
    """If this thread runs the event loop of a runner's open session: the first run on that
    loop that one of the unfinished ``futures`` needs (itself, or through its inputs); else
    None."""
    loop = hosting_here()
    return None if loop is None else needing(futures, loop)


def hosting_here() -> asyncio.AbstractEventLoop | None:
    """The event loop this thread runs, if it runs a runner's open session; else None."""
    if not _hosts:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if loop in _hosts else None


def needing(futures: Iterable[Future[Any]], loop: asyncio.AbstractEventLoop) -> Any:
    """The first unfinished run, among ``futures`` and the runs they wait for (their inputs,
    theirs...), of a scheduler on ``loop``; None if there is none."""
    return next((f for f, _ in _upstream(futures) if f._scheduler.loop is loop), None)


def check_timeout(timeout: object) -> float | None:
    """``timeout`` (not None) as seconds to wait, None for no limit (infinity); raise unless it
    is a number of seconds, 0 or more."""
    if not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    try:
        seconds = float(timeout)
    except OverflowError:  # (an int too big for a float: no limit)
        return None
    if not seconds >= 0:  # (NaN too)
        raise ValueError(f"timeout must be >= 0, got {timeout}")
    return None if seconds == math.inf else seconds


# Set by a worker-thread pool on its threads: how a blocked ``.result()`` gives its slot back.
blocking_hooks = threading.local()


# Run ids: a random 64-bit prefix per process plus a counter, made a UUID (version 4 layout)
# only when someone asks. The number is there from the start at no cost, and a worker process
# given it makes the same UUID, so a body and its future always agree on the id.
_RUN_ID_BASE = secrets.randbits(64) << 64
_run_numbers = itertools.count(1)
_next_run_number = _run_numbers.__next__


def run_uuid(number: int) -> uuid.UUID:
    """The UUID of a run from its number (idempotent on a UUID's own ``int``)."""
    return uuid.UUID(int=number, version=4)


class _Owner(Protocol):
    """What a future needs from the scheduler that owns it."""

    loop: asyncio.AbstractEventLoop
    thread_id: int
    runner: Any

    def request_cancel(self, future: Future[Any]) -> None: ...

    def call_in_loop(self, fn: Callable[[], Any]) -> Any: ...

    def post(self, fn: Callable[..., object], *args: Any) -> None: ...

    def lend_limits(self, run: Future[Any], attempt: int | None = None) -> bool: ...

    def reclaim_limits(
        self,
        run: Future[Any],
        resume: Callable[[], object],
        attempt: int | None = None,
        force: bool = False,
    ) -> bool: ...


class Lending:
    """What a thread blocked on other futures lends while it waits: its worker slot, and the
    concurrency limits its run holds (a parent waiting for its child must not keep the slot
    the child needs). Waiting for them, limits are taken back first, then the slot: the order
    runs start in (taken back at once, the slot is asked for first, under the lock of what the
    thread's waits lent: see ``_LentState``).

    Waits of one thread may overlap (awaits and a ``.result()`` in a loop a sync body runs,
    for its own run or for a run of a runner inside that loop): the thread's slot is lent by
    the first and taken back by the last of them; a run's limits, by the first and the last
    of the waits for that run (see ``_LentState``). A wait may also end on another thread
    (an await left pending, finalized by the garbage collector there): it counts against the
    thread that lent, and takes back without blocking."""

    __slots__ = ("_attempt", "_generation", "_hooks", "_run", "_state", "_thread")

    def __init__(self) -> None:
        self._hooks = getattr(blocking_hooks, "slot", None)
        run = current_future.get()
        pol = None if run is None else run._policy
        self._thread = threading.get_ident()
        # Not the limits of a run whose scheduler runs on this very thread (a runner in a
        # loop a sync body runs): its own awaits lend those, and a take back that blocked
        # here would wait for this thread.
        self._run = (
            run
            if pol is not None and pol.limits and run._scheduler.thread_id != self._thread
            else None
        )
        self._attempt = current_attempt.get()
        self._state: _LentState = _lent.state
        self._generation = -1

    def lend(self) -> Lending:
        state = self._state
        with state.lock:
            self._generation = state.generation
            run = self._run
            if run is not None:
                waits = state.runs.get(run)
                if waits is None:
                    state.runs[run] = [1, self]
                    run._scheduler.post(run._scheduler.lend_limits, run, self._attempt)
                else:
                    waits[0] += 1
            if self._hooks is not None:
                state.slot_waits += 1
                if state.slot_waits == 1:
                    state.slot_lent_by = self
                    self._hooks.release()
        return self

    def give_back(self, waited_to_the_end: bool, wait: bool = True) -> None:
        """``wait`` False: never wait for the loop (see ``_take_back``)."""
        state = self._state
        here = threading.get_ident() == self._thread
        # Under the state's lock: a wait ending on another thread and the body's own end
        # (take_back_lent) must not both take back what was lent.
        with state.lock:
            if self._generation != state.generation:
                return  # its body ended meanwhile, and took back what was lent
            # Counted off first: a pending await of the same body that a collection finalizes
            # in here (on this thread: the lock is reentrant) then finds the count as it is.
            # ``busy`` until the slot is asked back: the body, which looks without this lock
            # when it returns, then waits for it rather than report its end first.
            busy, state.busy = state.busy, True  # (restored: a nested give_back here too)
            try:
                limits = False
                run = self._run
                if run is not None and (waits := state.runs.get(run)) is not None:
                    waits[0] -= 1
                    if not waits[0]:
                        del state.runs[run]
                        limits = True
                slot = False
                hooks = self._hooks
                if hooks is not None and state.slot_waits:
                    state.slot_waits -= 1
                    if not state.slot_waits:
                        state.slot_lent_by = None
                        if waited_to_the_end and here:
                            slot = True  # taken back below, waiting for a free slot
                        else:  # at once: the pool runs one over its size until the body returns
                            hooks.reacquire(wait=False, thread=self._thread)
            finally:
                state.busy = busy
        self._take_back(waited_to_the_end and here, limits=limits, slot=slot, wait=wait)

    def _take_back(
        self, waited_to_the_end: bool, *, limits: bool, slot: bool, wait: bool = True
    ) -> None:
        """``waited_to_the_end`` False: at once (a timed wait that timed out keeps its
        timeout; a wait ending on another thread must not block it), so the pool may run one
        body over its size, or over a limit, for a moment. ``wait`` False: not even until the
        loop has counted the limits back (a wait closed by a garbage collection, which may run
        while this thread holds a lock the loop needs first): they are counted back a moment
        later, or not at all if the run has ended by then (its end frees them)."""
        run = self._run
        if limits and run is not None:
            back = threading.Event()
            sched = run._scheduler
            sched.post(sched.reclaim_limits, run, back.set, self._attempt, not waited_to_the_end)
            if wait and threading.get_ident() == self._thread:
                # (Its runner's loop may have closed meanwhile: nothing would answer then.)
                while not back.wait(_CLOSED_CHECK) and not sched.loop.is_closed():
                    pass
        if slot and self._hooks is not None:
            self._hooks.reacquire(wait=waited_to_the_end, thread=self._thread)


_CLOSED_CHECK = 0.1  # seconds between looks at whether a runner's loop closed under a wait


class _LentState:
    """What one worker thread's waits under way have lent: its slot (``slot_waits`` of them,
    ``slot_lent_by`` the one that lent it), and each run's limits (``runs``: the run -> the
    waits for it, and the one that lent them); and the number of the body whose waits they
    are (``generation``: a wait of a body that has ended gives back nothing)."""

    __slots__ = ("busy", "generation", "lock", "runs", "slot_lent_by", "slot_waits")

    def __init__(self) -> None:
        # Taken by the waits of the thread's body, by a wait of it that ends on another
        # thread, and by the body's end (take_back_lent); never held while blocking. Reentrant:
        # a collection run by an allocation in there may finalize a pending await of the same
        # body, on this thread, whose end gives back too.
        self.lock = threading.RLock()
        self.busy = False  # a wait ending on another thread is taking the slot back
        self.slot_waits = 0
        self.slot_lent_by: Lending | None = None
        self.runs: dict[Future[Any], list[Any]] = {}
        self.generation = 0


class _Lent(threading.local):
    def __init__(self) -> None:
        self.state = _LentState()


_lent = _Lent()


def take_back_lent() -> None:
    """A worker thread, once its body has returned: what a wait of the body left lent (an
    await left pending in a loop of its own) is taken back now, before the body's end is
    reported; those waits, should they end later, give back nothing."""
    state = _lent.state
    if state.slot_waits or state.runs or state.busy:  # (looked at again under the lock)
        with state.lock:  # see Lending.give_back
            # The generation first: a wait of this body finalized in here gives back nothing.
            state.generation += 1
            slot_lent_by, state.slot_lent_by = state.slot_lent_by, None
            state.slot_waits = 0
            runs, state.runs = state.runs, {}
            if slot_lent_by is not None and slot_lent_by._hooks is not None:
                slot_lent_by._hooks.reacquire(wait=False, thread=slot_lent_by._thread)
        for _, lent_by in runs.values():
            lent_by._take_back(waited_to_the_end=False, limits=True, slot=False)


class LoopLending:
    """What an await on a loop lends while it waits (``start``), and takes back before the
    awaiting code goes on (``take_back``, ``ended``), or at once when the wait was interrupted
    or timed out (``interrupted``):

    - a coroutine body of a runner waiting on that runner's own loop lends its run's limits (a
      parent awaiting its children must not keep the slot they need), taken back waiting in
      the limits' queues;
    - a sync body's worker thread running a loop of its own (``asyncio.run`` in the body)
      lends its slot and its run's limits, as ``.result()`` does (see ``Lending``)."""

    __slots__ = ("_attempt", "_lending", "_loop", "_run")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, run: Future[Any] | None, attempt: int | None
    ) -> None:
        self._loop = loop
        self._run = run
        self._attempt = attempt
        self._lending = (
            Lending().lend() if getattr(blocking_hooks, "slot", None) is not None else None
        )

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop) -> LoopLending | None:
        """What an await on ``loop`` starting now lends; None if nothing (the common case)."""
        run = current_future.get()
        attempt = current_attempt.get()
        lent = (
            run is not None
            and run._policy is not None
            and run._scheduler.loop is loop
            and run._scheduler.lend_limits(run, attempt)
        )
        if not lent and getattr(blocking_hooks, "slot", None) is None:
            return None
        return cls(loop, run if lent else None, attempt)

    def interrupted(self, wait: bool = True) -> None:
        """``wait`` False: the await was closed (a garbage collection may be closing it, on
        any allocation, here while this thread holds a lock): nothing may wait for the loop."""
        lending, self._lending = self._lending, None
        if lending is not None:
            lending.give_back(waited_to_the_end=False, wait=wait)
        run, self._run = self._run, None
        if run is not None:
            run._scheduler.reclaim_limits(run, _nothing, self._attempt, True)

    def take_back(self) -> asyncio.Future[None] | None:
        """Take back what was lent; a future to wait for if the limits must queue."""
        lending, self._lending = self._lending, None
        if lending is not None:
            lending.give_back(waited_to_the_end=True)
        run, self._run = self._run, None
        if run is None:
            return None
        back = self._loop.create_future()
        if run._scheduler.reclaim_limits(run, lambda: _wake(back), self._attempt):
            return None
        return back

    async def ended(self) -> None:
        back = self.take_back()
        if back is not None:
            await back


def _nothing() -> None:
    pass


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Future(Node, Generic[R]):
    """The result of one task run, to come.

    ``await future`` works on any asyncio loop. ``future.result()`` blocks the calling thread and
    works from any thread except the scheduler's own loop thread, where it raises at once (await
    the future there instead). Users get futures from ``submit``/``map``; they do not build them.
    """

    __slots__ = (
        "__weakref__",
        "_allowed",
        "_callbacks",
        "_ctx",
        "_deps",
        "_event",
        "_group",
        "_handle",
        "_id",
        "_params",
        "_policy",
        "_scheduler",
        "_state_name",
        "_status",
        "_task",
        "_tb",
        "_timestamp",
        "_value",
        "_waiters",
    )

    def __init__(  # noqa: PLR0917 - private, on the hot path: positional is cheapest
        self,
        scheduler: _Owner,
        task: Task[..., R],
        params: dict[str, Any],
        deps: list[Future[Any]] | None,
        allowed: frozenset[Future[Any]] | None,
        ctx: contextvars.Context,
        policy: RunPolicy | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._task = task
        # (A plain map's run holds its index in its map's rows instead: see params_of.)
        self._params: dict[str, Any] | int | None = params
        # Inputs (one entry per occurrence), and those whose failure the run accepts.
        self._deps = deps
        self._allowed = allowed
        self._ctx: contextvars.Context | None = ctx
        self._status = PENDING
        self._value: Any = None
        self._tb: Any = None  # traceback of a failure, as it was when the run ended
        self._state_name: str | None = None
        self._timestamp = time.time()
        self._callbacks: list[Callable[[Future[R]], object]] | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._event: threading.Event | None = None
        self._handle: Any = None
        self._group: MapGroup | None = None  # set by map: the runs of one map, counted
        self._id: int | uuid.UUID = _RUN_ID_BASE | _next_run_number()
        self._policy = policy  # None on the plain path: no limits, retries, timeout, cache, hooks
        self._down = self._more = self._pending = None  # its state in the graph: none yet

    # -- read-only views -------------------------------------------------------------------
    @property
    def task_run_id(self) -> uuid.UUID:
        """A unique id for this run (made on first use: it costs nothing until asked for)."""
        run_id = self._id
        if type(run_id) is int:
            run_id = self._id = run_uuid(run_id)
        assert isinstance(run_id, uuid.UUID)
        return run_id

    @property
    def task_name(self) -> str:
        return self._task.name

    @property
    def state(self) -> State[R]:
        status = self._status
        data = self._value if status >= COMPLETED else None
        return self.final_state(status, data, self._state_name, self._timestamp)

    def final_state(
        self, status: int, data: Any, name: str | None = None, timestamp: float | None = None
    ) -> State[R]:
        """The state record for ``status`` (used for hooks before the run is final)."""
        message = ""
        if status >= FAILED and isinstance(data, BaseException):
            message = error_text(data)
        return State(
            _TYPES[status],
            name or _NAMES[status],
            time.time() if timestamp is None else timestamp,
            message,
            data,
        )

    def done(self) -> bool:
        return self._status >= COMPLETED

    def __repr__(self) -> str:
        return f"<Future {self._task.name!r} {_NAMES[self._status]}>"

    # A future stands for its run: a copy is the future itself (a copy of the parameters of a
    # task keeps its inputs), and it does not pickle (a process worker gets results, not runs).
    def __copy__(self) -> Future[R]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Future[R]:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"a future of task {self._task.name!r} cannot be pickled: it stands for a run of "
            "this process. Passed in a task's parameters (at the top level, or inside lists, "
            "tuples, sets, dicts, deques, dataclasses or pydantic models), it is replaced by "
            "its result."
        )

    # -- waiting ---------------------------------------------------------------------------
    def _check_not_self(self) -> None:
        refuse_waiting_on_itself((self,))

    def _wait_blocking(self, timeout: float | None) -> bool:
        """Block until final or ``timeout`` seconds (checked already: see ``check_timeout``)
        passed; return whether it is final."""
        if self._status >= COMPLETED:
            return True
        self._check_not_self()
        if threading.get_ident() == self._scheduler.thread_id:
            raise RuntimeError(
                f"cannot block on the unfinished future of task {self._task.name!r} from the "
                "runner's own event loop thread (it would deadlock): use `await future` instead"
            )
        refuse_blocking_on_a_host(
            (self,),
            f"the unfinished future of task {self._task.name!r}",
            "use `await future` instead",
        )
        with _lock:
            if self._status >= COMPLETED:
                return True
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        if getattr(blocking_hooks, "slot", None) is None and current_future.get() is None:
            return event.wait(timeout)
        # A task body gives back what it holds while it blocks (see Lending), so a bounded
        # pool or a concurrency limit cannot deadlock on tasks that wait for other tasks.
        done = False
        lending = Lending().lend()
        try:
            done = event.wait(timeout)
        finally:
            lending.give_back(done or timeout is None)
        return done

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is final or ``timeout`` seconds passed; never raises on timeout."""
        self._wait_blocking(None if timeout is None else check_timeout(timeout))

    def _outcome(self, raise_on_failure: bool) -> R:
        status = self._status
        if status == COMPLETED:
            return self._value  # type: ignore[no-any-return]
        exc = self._value
        if raise_on_failure:
            # Raise from the traceback saved when the run ended, so raising the same object
            # again and again does not grow its traceback (nor keep every caller's frames).
            raise exc.with_traceback(self._tb)
        return exc  # type: ignore[no-any-return]

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The run's result, blocking until it is final.

        Raises the task's exception (or returns it with ``raise_on_failure=False``); raises
        ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        seconds = None if timeout is None else check_timeout(timeout)
        if self._status < COMPLETED and not self._wait_blocking(seconds):
            raise TimeoutError(f"task {self._task.name!r} did not finish within {timeout} seconds")
        return self._outcome(raise_on_failure)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The run's exception (None if it completed), blocking until it is final.

        A cancelled run's raises ``TaskCancelledError``, as ``concurrent.futures`` and asyncio
        futures raise their ``CancelledError`` here.
        """
        seconds = None if timeout is None else check_timeout(timeout)
        if self._status < COMPLETED and not self._wait_blocking(seconds):
            raise TimeoutError(f"task {self._task.name!r} did not finish within {timeout} seconds")
        status = self._status
        if status == CANCELLED:
            self._outcome(True)  # raises
        return None if status == COMPLETED else self._value

    def __await__(self) -> Generator[Any, None, R]:
        if self._status < COMPLETED:
            self._check_not_self()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return (yield from self._await_trio().__await__())
            waiter = loop.create_future()
            with _lock:
                if self._status < COMPLETED:
                    if self._waiters is None:
                        self._waiters = [waiter]
                    else:
                        self._waiters.append(waiter)
                else:
                    waiter.set_result(None)
            # A run waiting for another lends what it holds meanwhile (see LoopLending).
            lent = LoopLending.start(loop)
            try:
                yield from waiter
            except BaseException as exc:
                with _lock:
                    if self._waiters is not None and waiter in self._waiters:
                        self._waiters.remove(waiter)
                if lent is not None:  # interrupted (cancelled, timed out): back at once
                    lent.interrupted(wait=not isinstance(exc, GeneratorExit))
                raise
            if lent is not None:
                back = lent.take_back()
                if back is not None:
                    yield from back
        return self._awaited_outcome()

    def _awaited_outcome(self) -> R:
        """The outcome for ``await``: a StopIteration cannot leave an await (PEP 479 would
        make it a bare "generator raised StopIteration"): it comes as the cause of an error
        that names the task."""
        try:
            return self._outcome(True)
        except StopIteration as exc:
            raise RuntimeError(
                f"task {self._task.name!r} raised StopIteration, which cannot leave an await "
                "(PEP 479): it is this error's __cause__"
            ) from exc

    async def _await_trio(self) -> R:
        trio = sys.modules.get("trio")
        token = None
        if trio is not None:
            try:
                token = trio.lowlevel.current_trio_token()
            except RuntimeError:
                token = None
        if trio is None or token is None:
            raise RuntimeError(
                f"awaiting the future of task {self._task.name!r} needs a running event loop "
                "(asyncio, uvloop or trio); from sync code use future.result()"
            )
        event = trio.Event()

        def wake(_: Future[R]) -> None:
            try:
                token.run_sync_soon(event.set)
            except trio.RunFinishedError:  # that trio run is over: nobody is waiting
                pass

        self.add_done_callback(wake)
        try:
            await event.wait()
        finally:
            self.remove_done_callback(wake)
        return self._awaited_outcome()

    def add_done_callback(self, fn: Callable[[Future[R]], object]) -> None:
        """Call ``fn(future)`` when the run is final (at once, here, if it already is).

        Callbacks run on the scheduler's loop thread; one that raises is logged with the task
        and never breaks waiting or the other callbacks.
        """
        with _lock:
            if self._status < COMPLETED:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        self._run_callback(fn)

    def remove_done_callback(self, fn: Callable[[Future[R]], object]) -> int:
        """Remove every registration of ``fn``; return how many were removed."""
        with _lock:
            callbacks = self._callbacks
            if not callbacks:
                return 0
            kept = [cb for cb in callbacks if cb != fn]
            self._callbacks = kept or None
            return len(callbacks) - len(kept)

    def _run_callback(self, fn: Callable[[Future[R]], object]) -> None:
        try:
            fn(self)  # (called at once by the one who adds it: as part of what it runs)
        except BaseException:  # even SystemExit: it must not kill the scheduler's loop
            self._callback_failed(fn)

    def _callback_failed(self, fn: Callable[[Future[R]], object]) -> None:
        logger.exception(
            "done-callback %r of task %r (run %s) raised", fn, self._task.name, self.task_run_id
        )

    def cancel(self) -> bool:
        """Cancel the run; its unstarted dependents end Cancelled too.

        Returns False if the run was already final, or its hooks already run (its attempts
        are over: it ends as they did). Otherwise a run that had not started, or a plain thread
        body (abandoned: it keeps running), is Cancelled when this returns; a running
        coroutine, or a run with retries, a timeout, a cache key or hooks, is cancelled and
        ends as soon as it has handled the cancellation (``await`` the future, or call
        ``wait()``, to wait for that). From another thread this waits for the scheduler's loop
        to take the request (a short hand-over).
        """
        if self._status >= COMPLETED:
            return False
        try:
            taken: bool = self._scheduler.call_in_loop(self._cancel_on_loop)
        except RuntimeError:  # the runner's loop is closed: the run ended with it
            return self._status == CANCELLED
        return taken

    def _cancel_on_loop(self) -> bool:
        """Loop thread: cancel this run, if that is still possible (see ``cancel``)."""
        pol = self._policy
        if self._status >= COMPLETED or (pol is not None and pol.finishing):
            return False  # (its hooks run: it ends as its attempts did)
        self._scheduler.request_cancel(self)
        # (Registering the runs submitted before it may have ended it first: a failed input.)
        return self._status == CANCELLED or self._status < COMPLETED

    def cancelled(self) -> bool:
        return self._status == CANCELLED

    def running(self) -> bool:
        """Whether the body is running now (Retrying between attempts counts as running)."""
        return self._status in (RUNNING, RETRYING)

    # -- a worker thread taking a queued run itself (see ThreadWorkers) -----------------------
    def _claim(self) -> bool:
        """Worker thread: mark this queued run Running, to start its body now; False if it was
        cancelled (or is being cancelled: see ``_withdraw``) first."""
        with _lock:
            if self._ctx is None or self._status >= COMPLETED:
                return False
            self._status = RUNNING
            self._timestamp = time.time()
        return True

    def _withdraw(self) -> bool:
        """Producer, cancelling: whether the run is Running; if not, no worker may claim it
        from now on (its context goes, as it would once it is Cancelled)."""
        with _lock:
            if self._status == RUNNING:
                return True
            self._ctx = None
        return False

    # -- producer side: only the scheduler calls these, on its loop thread --------------------
    def _release_inputs(self) -> None:
        """Producer only: drop what the run needed to start (its body is not running)."""
        self._params = self._ctx = self._deps = self._allowed = self._handle = None

    def _set_final(
        self, status: int, value: Any, state_name: str | None = None, fresh: bool = False
    ) -> None:
        """Producer only: make the run final and wake everyone waiting for it. ``fresh``: the
        exception ``value`` was made here, never raised, and its cause is another run's, whose
        frames were cleared when that run ended (down a chain of N runs, walking the whole
        chain of causes again at each would take N * N / 2 steps)."""
        if isinstance(value, BaseException):
            if not fresh:
                _clear_frames(value, getattr(self._task.fn, "__code__", None))
            self._tb = value.__traceback__
            if status == FAILED:
                _name_the_task(value, self._task.name)
        with _lock:
            # The value first, the status last: readers check the status without the lock.
            self._value = value
            self._state_name = state_name
            self._timestamp = time.time()
            self._status = status
            event = self._event
            waiters = self._waiters
            callbacks = self._callbacks
            self._waiters = self._callbacks = None
        if event is not None or waiters is not None or callbacks is not None:
            self._wake(event, waiters, callbacks)
        if self._group is not None:
            self._group.ended(1, None if status == COMPLETED else self)

    def _wake(
        self,
        event: threading.Event | None,
        waiters: list[asyncio.Future[None]] | None,
        callbacks: list[Callable[[Future[R]], object]] | None,
    ) -> None:
        """Producer only, once final: wake those who waited and run the done-callbacks."""
        if event is not None:
            event.set()
        if waiters is not None:
            own = self._scheduler.loop
            for waiter in waiters:
                loop = waiter.get_loop()
                if loop is own:
                    _wake(waiter)
                else:
                    try:
                        loop.call_soon_threadsafe(_wake, waiter)
                    except RuntimeError:  # that loop is closed: nobody is waiting any more
                        pass
        if callbacks is not None:
            # Not as part of the run that happens to end this one (a coroutine run ends inside
            # its own task): a callback's submits are not that run's nested ones.
            token = current_future.set(None) if current_future.get() is not None else None
            try:
                for fn in callbacks:
                    try:
                        fn(self)
                    except BaseException:  # noqa: PERF203 - even SystemExit: the loop goes on
                        self._callback_failed(fn)
            finally:
                if token is not None:
                    current_future.reset(token)


status_of = operator.attrgetter("_status")  # a future's state, for scans in C
_value_of = operator.attrgetter("_value")


def all_results(futures: Sequence[Future[Any]], raise_on_failure: bool = True) -> list[Any]:
    """The result of each future, all final, in order; the first failure raises (or, without
    ``raise_on_failure``, stands in the list as its exception)."""
    if set(map(status_of, futures)) == {COMPLETED}:  # the common case, in C
        return list(map(_value_of, futures))
    return [f._outcome(raise_on_failure) for f in futures]


class PlainRuns(list["Future[Any]"]):
    """The runs of a map with no inputs and no policy (``plain_runs`` makes them), with what a
    backend may send them with without reading each run again: their parameters (``rows``,
    by column), their run ids (consecutive), and whether every value is of a type no call can
    change (``shareable``)."""

    __slots__ = ("ids", "rows", "shareable")

    rows: MapRows
    ids: range
    shareable: bool


def run_ids(n: int) -> range:
    """The ids of ``n`` new runs, consecutive: their numbers are taken in one call in C, so
    no other thread takes one in between."""
    last = deque(itertools.islice(_run_numbers, n), maxlen=1)
    if not last:
        return range(0)
    end = _RUN_ID_BASE | (last[0] + 1)
    return range(end - n, end)


def plain_runs(
    scheduler: _Owner,
    task: Task[..., Any],
    rows: MapRows,
    ctx: contextvars.Context,
    group: MapGroup,
    *,
    shareable: bool = False,
) -> PlainRuns:
    """The runs of a map with no inputs and no policy, one per child of ``rows``, all in
    ``group`` (which keeps ``rows``): what ``Future(scheduler, task, params, None, None,
    ctx)`` makes, with the fields set here directly (no ``__init__`` call per run: a big map
    makes thousands at once), but for the parameters: each run holds its index in ``rows``
    (``params_of`` makes its dict when asked for; no dict per run for the garbage collector
    to count meanwhile). A test checks that both make the same."""
    if len(rows):  # (a map of no runs never ends: it would keep its values passed whole)
        group.rows = rows
    ids = run_ids(len(rows))
    runs = PlainRuns()
    append = runs.append
    new = object.__new__
    now = time.time()
    for index, run_id in enumerate(ids):
        fut = new(Future)
        fut._scheduler = scheduler
        fut._task = task
        fut._params = index
        fut._deps = fut._allowed = fut._policy = None
        fut._ctx = ctx
        fut._status = PENDING
        fut._value = fut._tb = fut._state_name = None
        fut._timestamp = now
        fut._callbacks = fut._waiters = fut._event = fut._handle = None
        fut._group = group
        fut._id = run_id
        fut._down = fut._more = fut._pending = None
        append(fut)
    runs.rows = rows
    runs.ids = ids
    runs.shareable = shareable
    return runs


def params_of(fut: Future[Any]) -> dict[str, Any] | None:
    """A run's parameters, None once it let go of them (it ended); a plain map's run holds
    its index in its map's rows (see ``plain_runs``): its dict is made here, each time. (Its
    map lets go of the rows once every run of it ended, when none needs them: a run read as
    unfinished just before its end may find them gone, and is then one that ended.)"""
    params = fut._params
    if type(params) is int:
        group = fut._group
        rows = None if group is None else group.rows
        return None if rows is None else rows.row(params)
    return params  # type: ignore[return-value]


class CountingCallback:
    """A done-callback shared by many futures that can also be told of many Completed ones
    at once (``complete_all`` does so: one call per batch, not one per future)."""

    __slots__ = ()

    def __call__(self, f: Future[Any]) -> None:
        raise NotImplementedError

    def completed(self, count: int) -> None:
        raise NotImplementedError


class MapGroup:
    """The runs of one ``map``, counted as they end: a wait on the whole list watches this one
    object instead of putting a callback on each run (``FutureList`` knows its group)."""

    __slots__ = ("_failed", "_left", "_lock", "_watchers", "rows", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        # Their parameters, when they hold their index there, until every run ended.
        self.rows: MapRows | None = None
        self._left = size  # runs not final yet
        self._lock = threading.Lock()
        self._watchers: list[CountingCallback] = []
        # The first run to end other than Completed (not kept alive by the group: a run the
        # user keeps holds its group).
        self._failed: weakref.ref[Future[Any]] | None = None

    def ended(self, count: int, failed: Future[Any] | None) -> None:
        """Producer side: ``count`` runs ended, Completed (``failed`` None) or not."""
        with self._lock:
            self._left -= count
            if not self._left:
                # Every run is final: the map's parameters go (a run kept by someone keeps its
                # value, not the values of its whole map).
                self.rows = None
            if failed is not None and self._failed is None:
                self._failed = weakref.ref(failed)
            for watcher in self._watchers:
                if failed is None:
                    watcher.completed(count)
                else:
                    watcher(failed)

    def watch(self, make: Callable[[int], CountingCallback]) -> CountingCallback | None:
        """A watcher made by ``make(runs not final yet)``, told of each end from now on;
        None if every run is final already."""
        with self._lock:
            if not self._left:
                return None
            watcher = make(self._left)
            self._watchers.append(watcher)
            return watcher

    @property
    def failed(self) -> Future[Any] | None:
        return None if self._failed is None else self._failed()

    @property
    def untouched(self) -> bool:
        """No run has ended yet."""
        return self._left == self.size

    @property
    def all_completed(self) -> bool:
        """Every run ended Completed (each one's status and value are set by then)."""
        return not self._left and self._failed is None

    def unwatch(self, watcher: CountingCallback) -> None:
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)


def complete_all(futures: Sequence[Future[Any]], values: Sequence[Any]) -> list[Future[Any]]:
    """Producer only: ``_set_final(COMPLETED, value)`` for each future and its value, with
    the lock taken once for all of them; their inputs are let go. Returns those made final
    (one final already, cancelled while its body ran, is left as it is)."""
    now = time.time()
    done = []
    woken = []
    counted: dict[CountingCallback, int] = {}
    groups: dict[MapGroup, int] = {}
    group = None
    in_group = 0  # runs of ``group`` in a row
    with _lock:
        for fut, value in zip(futures, values, strict=True):
            fut._params = fut._ctx = fut._deps = fut._allowed = fut._handle = None
            if fut._status >= COMPLETED:
                continue
            fut._value = value
            fut._timestamp = now
            fut._status = COMPLETED  # last, as in _set_final
            done.append(fut)
            if fut._group is group:
                in_group += 1
            else:
                if group is not None:
                    groups[group] = groups.get(group, 0) + in_group
                group = fut._group
                in_group = 1
            waiters = fut._waiters
            callbacks = fut._callbacks
            event = fut._event
            if event is not None or waiters is not None or callbacks is not None:
                fut._waiters = fut._callbacks = None
                if event is None and waiters is None and callbacks and len(callbacks) == 1:
                    fn: object = callbacks[0]
                    if isinstance(fn, CountingCallback):
                        counted[fn] = counted.get(fn, 0) + 1
                        continue
                woken.append((fut, event, waiters, callbacks))
        if group is not None:
            groups[group] = groups.get(group, 0) + in_group
    for fut, event, waiters, callbacks in woken:
        fut._wake(event, waiters, callbacks)
    for group, count in groups.items():
        group.ended(count, None)
    for fn, count in counted.items():
        try:
            fn.completed(count)
        except BaseException:  # noqa: PERF203 - even SystemExit: the loop must go on
            logger.exception("a done-callback of %d futures raised", count)
    return done


_NOTE_ON_TASK = "raised by task "  # (and "also raised by task ...")


def _name_the_task(exc: BaseException, task_name: str) -> None:
    """A failure a task's body raised says which task raised it: a note in its traceback
    (asyncflow's own errors name the task in their message already)."""
    if isinstance(exc, AsyncflowError) and not isinstance(exc, RemoteError):
        return
    if sys.version_info >= (3, 11):  # (notes came with Python 3.11)
        try:
            notes = getattr(exc, "__notes__", None)
            ours = [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []
            name = repr(task_name)
            # The same exception may end runs of several tasks (one re-raised it, or both
            # awaited one failed call): the first is said to have raised it, the others too.
            if not any(n.startswith(_NOTE_ON_TASK) for n in ours):
                exc.add_note(f"{_NOTE_ON_TASK}{name}")
            elif not any(n.endswith(f"{_NOTE_ON_TASK}{name}") for n in ours):
                exc.add_note(f"also {_NOTE_ON_TASK}{name}")
        except Exception:  # one that takes no new attribute (a frozen dataclass)
            pass


def refuse_waiting_on_itself(futures: Sequence[Future[Any]]) -> None:
    """A run's body may not wait for its own future, nor for a run that waits (through its
    inputs, theirs...) for its result: that run cannot start before this one ends, so either
    wait would never end."""
    me = current_future.get()
    if me is None:
        return
    if me in futures:
        raise ValueError(
            f"task {me._task.name!r} is waiting for its own future: that would deadlock"
        )
    dependent = _waiting_for(futures, me)
    if dependent is not None:
        raise ValueError(
            f"task {me._task.name!r} is waiting for a run of task {dependent._task.name!r} "
            f"that waits for its own result: that would deadlock"
        )


def _waiting_for(futures: Sequence[Future[Any]], run: Future[Any]) -> Future[Any] | None:
    """The first of ``futures`` that waits (through its inputs, theirs...) for ``run``, or
    None."""
    return next((origin for f, origin in _upstream(futures) if f is run and f is not origin), None)


def _upstream(futures: Iterable[Future[Any]]) -> Iterator[tuple[Future[Any], Future[Any]]]:
    """Each unfinished run among ``futures`` and the runs they wait for (their inputs,
    theirs...), with the one of ``futures`` it was reached from. Only runs still waiting for
    their inputs are walked further, each once for them all (from any thread: see
    ``inputs_of``)."""
    from ._params import inputs_of

    todo = [(f, f) for f in futures if f._status < COMPLETED]
    seen = {id(f) for f, _ in todo}
    while todo:
        f, origin = todo.pop()
        yield f, origin
        if f._status == PENDING:
            for up in inputs_of(f):
                if up._status < COMPLETED and id(up) not in seen:
                    seen.add(id(up))
                    todo.append((up, origin))


# Code of the coroutines that run a body (added by the modules that define them): their frames
# in the traceback of a run's own exception are finished when the run ends, and may be cleared.
RUN_CODE: set[types.CodeType] = set()
_SUSPENDABLE = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)


def _clear_frames(exc: BaseException, body: types.CodeType | None = None) -> None:
    """Free the locals held by the frames of ``exc`` and of its causes and contexts; line
    numbers stay for the report (a stored exception must not pin a body's data).

    A generator's or coroutine's frame is left alone, unless it is in the traceback of ``exc``
    itself and runs the body (code ``body``) or the run (``RUN_CODE``): the run has ended, so
    those have too. Any other may be suspended right now (one that awaited another run and
    caught its error, now part of this chain), and clearing it would finalize it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            code = frame.f_code
            if not code.co_flags & _SUSPENDABLE or (
                e is exc and (code is body or code in RUN_CODE)
            ):
                _clear_traceback_frame(frame)
            tb = tb.tb_next
        todo.append(e.__cause__)
        todo.append(e.__context__)


def _clear_traceback_frame(frame: types.FrameType) -> None:
    try:
        frame.clear()
    except RuntimeError:  # still running (the scheduler's own frames up the stack)
        pass


def crashed_error(task_name: str, exc: BaseException) -> TaskCrashedError:
    err = TaskCrashedError(
        f"task {task_name!r} crashed: its body raised {type(exc).__name__}"
        + (f": {text}" if (text := message_of(exc)) else "")
    )
    err.__cause__ = exc
    return err


def cancelled_error(task_name: str, why: str = "") -> TaskCancelledError:
    return TaskCancelledError(f"task {task_name!r} was cancelled" + (f" ({why})" if why else ""))


# Causes followed at most to find a skipped run's first failure: those asyncflow makes are one
# step from it (or two, raised again); user code may make longer chains, or a cycle.
_CAUSE_STEPS = 8


def upstream_error(task_name: str, cause: Future[Any], cancelled: bool) -> BaseException:
    """What a run of ``task_name`` ends with when it never runs because its input ``cause``
    failed, crashed or (``cancelled``) was cancelled: ``TaskCancelledError``, or an
    ``UpstreamFailedError`` whose cause is the first failure: not an upstream's
    ``UpstreamFailedError`` (made for its skip, or raised again by its body). Down a long chain,
    causes would nest as deep as the chain, and printing the last one (Python's traceback walks
    every cause) would run out of stack."""
    upstream = cause._task.name
    if cancelled:
        return cancelled_error(task_name, f"its upstream {upstream!r} was cancelled")
    err = UpstreamFailedError(
        task_name, upstream, "crashed" if cause._status == CRASHED else "failed"
    )
    root = cause._value
    for _ in range(_CAUSE_STEPS):
        if type(root) is not UpstreamFailedError or not _chained(root.__cause__):
            break
        root = root.__cause__
    err.__cause__ = root
    return err


def _chained(cause: BaseException | None) -> bool:
    """Whether an UpstreamFailedError's ``cause`` is the failure it tells of: not when there is
    none, or when it is the remote traceback of one that came back from a worker process (the
    failure itself stayed there)."""
    return cause is not None and not isinstance(cause, RemoteTraceback)


def add_done_callback_to_all(futures: Sequence[Future[Any]], fn: Callable[[Any], object]) -> None:
    """``fn`` as a done-callback of every future, taking the callbacks' lock once per slice of
    them, not once per future (a wait on a big map registers one per run); the slices keep
    other threads from waiting long for the lock. Those already final get their call at once."""
    final = []
    for start in range(0, len(futures), _LOCKED_SLICE):
        with _lock:
            for f in futures[start : start + _LOCKED_SLICE]:
                if f._status < COMPLETED:
                    callbacks = f._callbacks
                    if callbacks is None:
                        f._callbacks = [fn]
                    else:
                        callbacks.append(fn)
                else:
                    final.append(f)
    for f in final:
        f._run_callback(fn)


_LOCKED_SLICE = 1024


class FutureList(list[Future[R]]):
    """A list of futures (what ``map`` returns), with whole-list waiting."""

    # Set by map: its runs, counted as they end. While this list holds just them (no method
    # that changes the list was called), a wait on it watches the group.
    _group: MapGroup | None = None

    # Any change lets go of the group (a wait then looks at each future).
    def _changing(self) -> None:
        self._group = None

    def __setitem__(self, index: Any, value: Any) -> None:
        self._changing()
        super().__setitem__(index, value)

    def __delitem__(self, index: Any) -> None:
        self._changing()
        super().__delitem__(index)

    def __iadd__(self, other: Any) -> FutureList[R]:  # type: ignore[override,misc]
        self._changing()
        return super().__iadd__(other)

    def __imul__(self, n: Any) -> FutureList[R]:  # type: ignore[misc]
        self._changing()
        return super().__imul__(n)

    def append(self, value: Any) -> None:
        self._changing()
        super().append(value)

    def extend(self, values: Any) -> None:
        self._changing()
        super().extend(values)

    def insert(self, index: Any, value: Any) -> None:
        self._changing()
        super().insert(index, value)

    def pop(self, index: Any = -1) -> Future[R]:
        self._changing()
        return super().pop(index)

    def remove(self, value: Any) -> None:
        self._changing()
        super().remove(value)

    def clear(self) -> None:
        self._changing()
        super().clear()

    def __getstate__(self) -> dict[str, Any]:
        # The group is this process's own (it holds a lock): a copy or a pickle goes without.
        return {k: v for k, v in self.__dict__.items() if k != "_group"}

    def wait(self, timeout: float | None = None) -> None:
        """Block until every future is final or ``timeout`` passed; never raises on timeout."""
        from ._waiting import wait, wait_all_or_first_failure

        group = self._group
        if group is None:
            wait(self, timeout=timeout)
        else:
            wait_all_or_first_failure(self, timeout, False, group)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """All results in order. Fails fast on the first failure; ``timeout`` covers the call."""
        from ._waiting import wait_all_or_first_failure

        group = self._group
        failed = wait_all_or_first_failure(self, timeout, raise_on_failure, group)
        if failed is not None:
            failed._outcome(True)  # raises the first failure seen, even if others still run
        if group is not None and group.all_completed:  # (no pass over the runs to know it)
            return list(map(_value_of, self))
        if min(map(status_of, self), default=COMPLETED) < COMPLETED:  # (in C)
            unfinished = sum(1 for f in self if not f.done())
            raise TimeoutError(
                f"{unfinished} of {len(self)} futures did not finish within {timeout} seconds"
            )
        return all_results(self, raise_on_failure)

    def __await__(self) -> Generator[Any, None, list[R]]:
        return self._gather().__await__()

    async def _gather(self) -> list[R]:
        from ._waiting import gather_fail_fast

        return await gather_fail_fast(self, self._group)
