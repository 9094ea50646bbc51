"""Task run events: the small immutable records a runner emits to its subscribers.

Each run emits, in order: one ``submitted``; per attempt one ``started`` (an attempt that is
retried is followed by one ``retrying``); and exactly one last event, ``finished`` (state
Completed, Failed or Crashed) or ``cancelled`` (state Cancelled). A run that never started (an
input failed, or it was cancelled while waiting) has no ``started`` event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._error_text import error_text
from ._params import inputs_of
from ._states import StateType

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ("EventHub", "EventKind", "EventStream", "Subscription", "TaskEvent")

logger = logging.getLogger("asyncflow")

EventKind = Literal["submitted", "started", "retrying", "finished", "cancelled"]


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One thing that happened to one task run.

    ``timestamp`` is wall-clock time (``time.time()``) taken when it happened. ``attempt`` counts
    from 1 (0 on ``submitted``, and on the last event of a run that made no attempt: it never
    started, or its result came from the cache). ``upstream`` holds the run ids of the runs
    this one waits on (on ``submitted``). ``state`` and ``error`` (``"TypeName: message"``) are
    set on ``retrying``, ``finished`` and ``cancelled``. ``worker`` names where an attempt runs,
    on ``started``: ``"loop"``, ``"thread <name>"`` or ``"process <pid>"``.
    """

    kind: EventKind
    task_name: str
    run_id: uuid.UUID
    timestamp: float
    attempt: int = 0
    upstream: tuple[uuid.UUID, ...] = ()
    tags: frozenset[str] = frozenset()
    state: StateType | None = None
    state_name: str | None = None
    error: str | None = None
    worker: str | None = None


# -- emitting ----------------------------------------------------------------------------------
# Why records are not built through ``TaskEvent(...)`` here: the ``__init__`` of a frozen
# dataclass sets each of the 11 fields through ``object.__setattr__`` (~1.7 µs a record on the
# benchmark machine); setting the slots through their descriptors makes the same record in about
# half that, and a runner with a subscriber builds three records per run.
_new = object.__new__
(
    _set_kind,
    _set_task_name,
    _set_run_id,
    _set_timestamp,
    _set_attempt,
    _set_upstream,
    _set_tags,
    _set_state,
    _set_state_name,
    _set_error,
    _set_worker,
) = (getattr(TaskEvent, f.name).__set__ for f in fields(TaskEvent))


def _event(  # noqa: PLR0917 - one argument per field, on the emission path
    kind: EventKind,
    task_name: str,
    run_id: uuid.UUID,
    timestamp: float,
    attempt: int,
    upstream: tuple[uuid.UUID, ...],
    tags: frozenset[str],
    state: StateType | None,
    state_name: str | None,
    error: str | None,
    worker: str | None,
) -> TaskEvent:
    """``TaskEvent(...)`` with every field given, in field order, made faster (see above)."""
    event: TaskEvent = _new(TaskEvent)
    _set_kind(event, kind)
    _set_task_name(event, task_name)
    _set_run_id(event, run_id)
    _set_timestamp(event, timestamp)
    _set_attempt(event, attempt)
    _set_upstream(event, upstream)
    _set_tags(event, tags)
    _set_state(event, state)
    _set_state_name(event, state_name)
    _set_error(event, error)
    _set_worker(event, worker)
    return event


# Final status codes of ``_futures`` (COMPLETED..CRASHED) in order; this module sits below it.
_FINAL_TYPES = (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED)
_FINAL_NAMES = ("Completed", "Failed", "Cancelled", "Crashed")
_FIRST_FINAL = 3  # the status code of Completed
_CANCELLED = 5


def _error_text(exc: object) -> str | None:
    if isinstance(exc, BaseException):
        return error_text(exc)
    return None


class EventHub:
    """The subscribers of one runner, and the sessions (schedulers) that emit to them.

    A scheduler emits through ``scheduler.events``, which is this hub while someone listens and
    None otherwise: with no subscriber an emission point costs one attribute check and builds
    no record. Subscribers change from any thread; events are built and delivered on the
    scheduler's loop thread.
    """

    def __init__(self) -> None:
        # Guards changes of the lists below, not emission. Reentrant: a garbage collection can
        # run inside a section it guards (on an allocation there) and close an abandoned
        # ``with runner.subscribe(...)`` or ``runner.events()`` in a reference cycle, whose
        # cleanup changes them again on the same thread (see ``_change``).
        self._lock = threading.RLock()
        self._callbacks: tuple[Callable[[TaskEvent], object], ...] = ()
        self._failed: set[int] = set()  # ids of subscribers that raised: logged once each
        self._schedulers: list[Any] = []
        self._streams: list[EventStream] = []

    # -- subscribers (any thread) ----------------------------------------------------------------
    def subscribe(self, callback: Callable[[TaskEvent], object]) -> Subscription:
        if not callable(callback):
            raise TypeError(f"subscribe() needs a callable taking a TaskEvent, not {callback!r}")
        self._change(lambda old: (*old, callback))
        return Subscription(self, callback)

    def unsubscribe(self, callback: Callable[[TaskEvent], object]) -> None:
        def without(old: tuple[Callable[[TaskEvent], object], ...]) -> tuple[Any, ...]:
            kept = list(old)
            if callback in kept:
                kept.remove(callback)
            return tuple(kept)

        self._change(without)
        self._failed.discard(id(callback))

    def _change(self, change: Callable[[tuple[Any, ...]], tuple[Any, ...]]) -> None:
        """The subscribers become ``change(subscribers)``: made before the lock is taken, and
        stored only if they are still what it was made from. A change made in between (by a
        collection on this thread, or by another thread) is never undone: this one is made
        again from it."""
        while True:
            old = self._callbacks
            new = change(old)
            with self._lock:
                if self._callbacks is old:
                    self._callbacks = new
                    self._switch()
                    return

    def _switch(self) -> None:
        """Point every attached scheduler at this hub while it has subscribers (lock held)."""
        for sched in self._schedulers:
            sched.events = self if self._callbacks else None

    def attach(self, scheduler: Any) -> None:
        """A session of the runner starts: it emits to the subscribers from now on."""
        with self._lock:
            self._schedulers.append(scheduler)
            scheduler.events = self if self._callbacks else None

    def detach(self, scheduler: Any) -> None:
        """A session ended: it emits no more, and event streams opened for it end."""
        with self._lock:
            if scheduler in self._schedulers:
                self._schedulers.remove(scheduler)
            scheduler.events = None
            streams, self._streams = self._streams, []
        for stream in streams:
            stream.end()

    def add_stream(self, stream: EventStream) -> None:
        with self._lock:
            self._streams.append(stream)

    def drop_stream(self, stream: EventStream) -> None:
        with self._lock:
            if stream in self._streams:
                self._streams.remove(stream)

    # -- emitting (the scheduler's loop thread) ---------------------------------------------------
    def emit(self, event: TaskEvent) -> None:
        for callback in self._callbacks:
            try:
                callback(event)
            # Each subscriber is isolated from the others; even SystemExit must not kill the
            # scheduler's loop (as for done-callbacks).
            except BaseException:  # noqa: PERF203
                if id(callback) not in self._failed:
                    self._failed.add(id(callback))
                    logger.exception(
                        "event subscriber %r raised (on a %r event of task %r); its later "
                        "errors are not logged",
                        callback,
                        event.kind,
                        event.task_name,
                    )

    def submitted(self, fut: Any) -> None:
        upstream: tuple[uuid.UUID, ...] = ()
        if fut._deps is not None:
            upstream = tuple(dict.fromkeys(up.task_run_id for up in inputs_of(fut)))
        task = fut._task
        self.emit(
            _event(
                "submitted",
                task.name,
                fut.task_run_id,
                fut._timestamp,
                0,
                upstream,
                task.tags,
                None,
                None,
                None,
                None,
            )
        )

    def started(self, fut: Any, attempt: int, worker: str) -> None:
        if fut._status >= _FIRST_FINAL:  # cancelled before the worker reported it took it
            return
        task = fut._task
        self.emit(
            _event(
                "started",
                task.name,
                fut.task_run_id,
                time.time(),
                attempt,
                (),
                task.tags,
                None,
                None,
                None,
                worker,
            )
        )

    def took(self, item: Any, worker: str) -> None:
        """A worker took ``item``: a run's future, or an ``Attempt`` of a driven run."""
        fut = getattr(item, "fut", None)
        if fut is None:
            self.started(item, 1, worker)
        elif item._status < _FIRST_FINAL:  # an attempt not given up on meanwhile
            self.started(fut, item.number, worker)

    def retrying(self, fut: Any, attempt: int, exc: BaseException) -> None:
        task = fut._task
        self.emit(
            _event(
                "retrying",
                task.name,
                fut.task_run_id,
                time.time(),
                attempt,
                (),
                task.tags,
                StateType.RETRYING,
                "Retrying",
                _error_text(exc),
                None,
            )
        )

    def final(self, fut: Any, attempt: int) -> None:
        """``fut`` just became final; ``attempt`` is the number of attempts it made."""
        status = fut._status
        task = fut._task
        index = status - _FIRST_FINAL
        self.emit(
            _event(
                "cancelled" if status == _CANCELLED else "finished",
                task.name,
                fut.task_run_id,
                fut._timestamp,
                attempt,
                (),
                task.tags,
                _FINAL_TYPES[index],
                fut._state_name or _FINAL_NAMES[index],
                None if index == 0 else _error_text(fut._value),
                None,
            )
        )


class Subscription:
    """What ``runner.subscribe`` returns: ``close()`` (or leaving a ``with`` block) unsubscribes."""

    __slots__ = ("_callback", "_hub")

    def __init__(self, hub: EventHub, callback: Callable[[TaskEvent], object]) -> None:
        self._hub: EventHub | None = hub
        self._callback = callback

    def close(self) -> None:
        """Stop delivering events to the callback (idempotent)."""
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.unsubscribe(self._callback)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._hub is None else "open"
        return f"<Subscription {self._callback!r} {state}>"


class EventStream:
    """An async iterator of a runner's events: ``async with runner.events() as stream:``.

    Events wait in a buffer of ``max_buffer`` records. Nothing ever blocks the scheduler: when
    the consumer is slow and the buffer is full, new events are dropped and counted in
    ``dropped``. The iteration ends when the runner session it listens to ends (for a stream
    opened before the runner started: its next session), or when the block is left.
    """

    def __init__(self, hub: EventHub, max_buffer: int) -> None:
        if not isinstance(max_buffer, int) or isinstance(max_buffer, bool) or max_buffer < 1:
            raise ValueError(f"events(): max_buffer must be an int >= 1, got {max_buffer!r}")
        self._hub = hub
        self._max_buffer = max_buffer
        self._send: MemoryObjectSendStream[TaskEvent] | None = None
        self._receive: MemoryObjectReceiveStream[TaskEvent] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._subscription: Subscription | None = None
        self.dropped = 0  # events lost because the buffer was full

    async def __aenter__(self) -> EventStream:
        if self._receive is not None:
            raise RuntimeError("an event stream can be entered once")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._send, self._receive = anyio.create_memory_object_stream[TaskEvent](self._max_buffer)
        self._hub.add_stream(self)
        self._subscription = self._hub.subscribe(self._deliver)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._unsubscribe()
        if self._send is not None:
            self._send.close()
        if self._receive is not None:
            self._receive.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TaskEvent:
        if self._receive is None:
            raise RuntimeError("use the event stream as `async with runner.events() as stream:`")
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    def _unsubscribe(self) -> None:
        sub, self._subscription = self._subscription, None
        if sub is not None:
            sub.close()
        self._hub.drop_stream(self)

    def _deliver(self, event: TaskEvent) -> None:
        """Scheduler's loop thread: hand the event to the consumer's loop."""
        if threading.get_ident() == self._thread:
            self._put(event)
            return
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._put, event)
        except RuntimeError:  # the consumer's loop is closed: nobody reads any more
            self.dropped += 1

    def _put(self, event: TaskEvent) -> None:
        send = self._send
        if send is None:
            return
        try:
            send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the consumer left

    def end(self) -> None:
        """The session ended (any thread): the iteration ends once the buffer is read."""
        self._unsubscribe()
        if self._loop is None:
            return
        if threading.get_ident() == self._thread:
            self._close_send()
            return
        try:
            self._loop.call_soon_threadsafe(self._close_send)
        except RuntimeError:  # the consumer's loop is closed
            pass

    def _close_send(self) -> None:
        if self._send is not None:
            self._send.close()
