"""Starting plain coroutine runs: the first steps of many runs in one asyncio task.

A coroutine run that ends in its first step (it never waits on anything) needs no task of its
own, and an asyncio task is most of what such a run costs: the task, its registration in
asyncio's weak set of tasks, a handle on the loop's ready queue, and a loop turn before its
first step. So a *starter* task runs the first steps of queued runs one after another, each in
its own context, and only a run that waits gets a task of its own.

The catch is ``asyncio.current_task()``: a body sees the starter there during its first step
(anyio's cancel scopes, ``asyncio.timeout`` and task groups record it). A run that waits is
moved to a task of its own only when its step left the starter as it found it: the same
reference counts (strong and weak), and nothing done to it (the starter's own class notes a
done-callback, a name, a cancel or an attribute set on it). Otherwise the starter itself
follows that run to its end, as that run's task, and a new starter takes the queue. A run
that ends in its step having changed the starter ends the starter's batch the same way, so no
later run ever shares a task that a body held on to or changed.

A run moved to a task of its own resumes one loop turn later than it would in a task of its
own from the start: that task takes what the run waits on at its first step. So once a run of
a task waited in its first step, the later runs of that task are given a task of their own
from the start, as before there were starters: runs that wait (on I/O, say) cost what they
did, and runs that never wait cost less. (The first steps of a turn still come in the order
the runs were queued: the runs after such a run in the same turn get a task up front too.)

asyncio offers eager tasks from Python 3.12 on, but they still make a task per run; on 3.11
there is nothing, hence this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from ._futures import COMPLETED

if TYPE_CHECKING:
    from ._futures import Future

__all__ = ("BATCH", "Starts")

# Runs started per loop turn, at most. Not all at once: a started run holds far more memory
# (its coroutine and frame, a task if it waits) than a queued one, and a million submitted in
# one go would all be started, in one loop turn, before the first one ends; in batches, early
# runs end (and are freed) while later ones wait as small records. A started run brings a few
# objects the garbage collector tracks (its coroutines and context; a task, a handle and a
# weak reference if it waits); 100 of them stay under the collector's threshold of 700 new
# objects, so a batch mostly runs and is freed before a young collection sees it. With 1,000
# per turn every batch outlived a few young collections, and the runs of a million-task graph
# were promoted to the oldest generation by the million, each promotion bringing the next
# full collection closer.
BATCH = 100

# Whether a task whose runs waited in their first step gets a task per run from then on (see
# the module's docstring; tests turn it off to send every run through a starter).
_REMEMBER = True

_refs = sys.getrefcount
_weak_refs = weakref.getweakrefcount
# Python 3.11 (a task's context) and reference counts to read (CPython).
_SHARED = sys.version_info >= (3, 11) and hasattr(sys, "getrefcount")


class _Starter(asyncio.Task):  # type: ignore[type-arg]
    """A starter task: it notes whether anything changed it during a step (a body that renames
    it, cancels it, watches it or sets an attribute on it: see the module's docstring)."""

    __slots__ = ("changed",)
    changed: bool

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, "changed", True)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        object.__setattr__(self, "changed", True)
        super().__delattr__(name)

    def set_name(self, value: object) -> None:
        object.__setattr__(self, "changed", True)
        super().set_name(value)

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        object.__setattr__(self, "changed", True)
        super().add_done_callback(fn, context=context)

    def cancel(self, msg: Any = None) -> bool:
        object.__setattr__(self, "changed", True)
        return super().cancel(msg)


class Starts:
    """What a starter takes from its scheduler: the queue, the run's coroutine, the loop."""

    __slots__ = ("loop", "queue", "run", "starter")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        run: Callable[[Future[Any]], Coroutine[Any, Any, None]],
    ) -> None:
        self.loop = loop
        self.run = run
        self.queue: deque[Future[Any]] = deque()  # coroutine runs waiting for their first step
        # The task that takes them, if any (on Python 3.10: the call that makes their tasks).
        self.starter: asyncio.Task[None] | asyncio.Handle | None = None

    def wake(self) -> None:
        """Make a starter for the queue (callers check that there is none)."""
        if not _SHARED:  # pragma: no cover - Python 3.10, or no reference counts
            self.starter = self.loop.call_soon(self._each)
            return
        coro = _starter(self)
        coro.send(None)  # primed (see _start_queued)
        # Its own empty context: every step of a run runs in the run's context instead.
        task = _Starter(coro, loop=self.loop, context=contextvars.Context())  # type: ignore[call-arg]
        object.__setattr__(task, "changed", False)
        self.starter = task

    def _each(self) -> None:  # pragma: no cover - Python 3.10, or no reference counts
        """A task of its own for each of ``BATCH`` queued runs."""
        queue = self.queue
        for _ in range(min(len(queue), BATCH)):
            fut = queue.popleft()
            if fut._status < COMPLETED:  # else: cancelled while it waited here
                ctx = fut._ctx.copy()  # type: ignore[union-attr]  # (None only once final)
                fut._handle = ctx.run(asyncio.Task, self.run(fut), loop=self.loop)
        self.starter = self.loop.call_soon(self._each) if queue else None

    def hand_over(self, task: asyncio.Task[Any] | None) -> None:
        """``task`` no longer takes the queue: a new starter does, if anything is queued."""
        if self.starter is task:
            if self.queue:
                self.wake()
            else:
                self.starter = None


async def _starter(starts: Starts) -> None:
    """The coroutine of a starter task. (Python 3.12's tasks take native coroutines only: this
    one awaits the generator that does the work.)"""
    await _start_queued(starts)


@types.coroutine
def _start_queued(starts: Starts) -> Generator[Any, Any, None]:
    """Run the first steps of up to ``BATCH`` queued runs (see the module's docstring).

    Primed by its maker, it waits at its first ``yield`` for its task's first step: a cancel
    that comes before that step (a loop's shutdown cancels every task) lands in this frame, and
    the queue goes to a new starter instead of waiting for ever."""
    try:
        yield
    except asyncio.CancelledError:
        starts.hand_over(asyncio.current_task())  # (the task that was cancelled)
        raise
    me = asyncio.current_task()
    assert isinstance(me, _Starter)
    try:
        yield from _steps(starts, me)
    finally:  # (also when something failed: the queue goes on)
        starts.hand_over(me)


def _steps(starts: Starts, me: _Starter) -> Generator[Any, Any, None]:
    queue = starts.queue
    run = starts.run
    loop = starts.loop
    remember = _REMEMBER
    up_front = False  # from the first run in this turn whose task's runs waited on
    refs = _refs(me)  # (counted once every local name for it is bound)
    weak = _weak_refs(me)
    for _ in range(BATCH):
        if not queue:
            return
        fut = queue.popleft()
        if fut._status >= COMPLETED:  # cancelled while it waited here
            continue
        # A task of its own at once: a run that will wait, as its task's runs did, and any run
        # after one in this turn (first steps keep the order the runs were queued in).
        up_front = up_front or (remember and fut._task._waits_at_start)
        ctx: contextvars.Context = fut._ctx  # type: ignore[assignment]  # (None only once final)
        if fut._group is not None:  # the runs of a map share one snapshot: each starts in a copy
            ctx = ctx.copy()  # (a submit's run has a snapshot of its own, taken at submit)
        coro = run(fut)
        if up_front:
            fut._handle = asyncio.Task(coro, loop=loop, context=ctx)  # type: ignore[call-arg]
            continue
        fut._handle = me  # a cancel during the step: the run ends Cancelled (see _cancel)
        try:
            step = ctx.run(coro.send, None)
        except StopIteration:  # it ended (its _finish let go of the handle)
            if me.changed or _refs(me) != refs or _weak_refs(me) != weak:
                return  # kept or changed by the body: nobody else's task from now on
            continue
        if remember:
            fut._task._waits_at_start = True
        if me.changed or _refs(me) != refs + 1 or _weak_refs(me) != weak:  # (+1: its handle)
            # The body held on to this task, or changed it: it stays the run's to its end.
            starts.hand_over(me)
            follow = _follow(coro, ctx, step)
            del coro, ctx, step, fut  # (nothing of this run or an earlier one kept meanwhile)
            yield from follow
            return
        # What it waits on is marked as awaited until a task takes it, and no other coroutine
        # may await it meanwhile: the mark is taken off here, and put back by the run's own
        # task just before it takes it.
        marked = getattr(step, "_asyncio_future_blocking", False)  # (asyncio.isfuture's test)
        if marked:
            step._asyncio_future_blocking = False
        fut._handle = _own_task(coro, step, marked, loop, ctx)


def _own_task(
    coro: Coroutine[Any, Any, None],
    step: Any,
    marked: bool,
    loop: asyncio.AbstractEventLoop,
    ctx: contextvars.Context,
) -> asyncio.Task[None]:
    """The task of its own that a run gets at its first wait, in the run's context."""
    rest: Any = _resume(coro, step, marked)
    if _NATIVE_ONLY:
        rest = _rest(rest)
    rest.send(None)  # primed (see _resume)
    return asyncio.Task(rest, loop=loop, context=ctx)  # type: ignore[call-arg]


async def _rest(resume: Awaitable[None]) -> None:
    """(Where tasks take native coroutines only, from Python 3.12 on: this one awaits the
    generator that does the work, and keeps nothing else.)"""
    await resume


@types.coroutine
def _probe() -> Generator[None, None, None]:
    yield


_probed = _probe()
# Whether tasks refuse generator-based coroutines (Python 3.12 on): a task that makes them
# costs a coroutine more and a level more at every step of the run.
_NATIVE_ONLY = not asyncio.iscoroutine(_probed)
_probed.close()


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], step: Any, marked: bool) -> Generator[Any, Any, None]:
    """The rest of a run that waited in its first step, in a task of its own (whose context is
    the run's): wait for what it waits on, then hand the coroutine to the task. ``marked``:
    ``step`` was marked as awaited (see ``_steps``).

    Primed by its maker, it waits at its first ``yield`` for the task's first step, so that a
    cancel that comes before that step still reaches the run: as a task cancelled while it
    waits, it cancels what the run waits on and waits for that to end (a task may take a while
    to), and the run then sees it cancelled. An exception thrown in reaches the coroutine
    outside of any ``except`` block here (else it would be the context of the run's next
    error)."""
    thrown: BaseException | None = None
    try:
        yield
    except GeneratorExit:
        coro.close()
        raise
    except BaseException as exc:  # the task was cancelled before its first step
        thrown = exc
    if thrown is not None:
        if not (marked and _of_this_loop(step) and step.cancel(*thrown.args[:1])):
            # Nothing of this loop to cancel (done already, a bare yield): it sees it now.
            step = _thrown(coro, thrown)
            thrown = None
            if step is _ENDED:
                return
            marked = False  # (a new wait, marked by the run itself)
    elif step is None or (marked and step.done() and _of_this_loop(step)):
        # Nothing to wait for: a bare yield asks for a later loop turn (this is one), and what
        # it awaited ended meanwhile (a task would take it, only to wake a turn later).
        step = None
        yield from coro
        return
    if marked:
        step._asyncio_future_blocking = True
    while True:
        try:
            yield step
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task: a cancel, a bad yield
            thrown = exc
        else:
            step = None  # (what it waited on is the run's alone now, as with a task)
            yield from coro
            return
        step = None
        step = _thrown(coro, thrown)
        thrown = None
        if step is _ENDED:
            return


def _thrown(coro: Coroutine[Any, Any, None], exc: BaseException) -> Any:
    """What ``coro`` waits on next once ``exc`` is thrown into it; ``_ENDED`` if it ended."""
    _unseen(exc, _resume.__code__)
    try:
        return coro.throw(exc)
    except StopIteration:
        return _ENDED


def _unseen(exc: BaseException, code: types.CodeType) -> None:
    """Take the frame that caught ``exc`` to throw it on (``code``'s) off its traceback: a
    task throws into a coroutine without one of its own there."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is code:
        exc.__traceback__ = tb.tb_next


def _of_this_loop(fut: Any) -> bool:
    """Whether the future ``fut`` belongs to the running loop (a task refuses another's)."""
    get_loop = getattr(fut, "get_loop", None)
    return get_loop is not None and get_loop() is asyncio.get_running_loop()


_ENDED = object()


def _follow(
    coro: Coroutine[Any, Any, None], ctx: contextvars.Context, step: Any
) -> Generator[Any, Any, None]:
    """The rest of a run that waited in its first step, in the starter that made that step
    (whose own context is not the run's: each step runs in ``ctx``). An exception thrown in
    reaches the coroutine outside of any ``except`` block here (see ``_resume``)."""
    send = coro.send
    throw = coro.throw
    thrown: BaseException | None = None
    while True:
        try:
            value = yield step
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task: a cancel, a bad yield
            thrown = exc
        step = None  # (what it waited on is the run's alone now, as with a task)
        if thrown is not None:
            _unseen(thrown, _follow.__code__)
        try:
            step = ctx.run(send, value) if thrown is None else ctx.run(throw, thrown)
        except StopIteration:
            return
        finally:
            thrown = None
