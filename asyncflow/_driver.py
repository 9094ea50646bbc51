"""The policy driver: retries, timeouts, caching and hooks of one run, on the scheduler's loop.

Plain runs never come here. A driven run is one asyncio task that makes the attempts: a
coroutine body is awaited inside a cancel scope with the run's deadline; a sync body goes to the
backend as an ``Attempt`` work item whose deadline starts when a worker takes it. Waiting
between attempts happens on the loop, never in a worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import anyio

from ._context import RunContext, current_attempt, current_future
from ._futures import (
    CANCELLED,
    COMPLETED,
    CRASHED,
    FAILED,
    PENDING,
    RETRYING,
    RUN_CODE,
    RUNNING,
    Future,
    cancelled_error,
    crashed_error,
    params_of,
)
from ._params import resolve_parameters
from .exceptions import TaskTimeoutError, WorkerCrashedError

if TYPE_CHECKING:
    from ._limits import RunPolicy
    from ._scheduler import Scheduler
    from ._states import State
    from ._task import Task

__all__ = ("Attempt", "drive", "run_hooks")

logger = logging.getLogger("asyncflow")


# Seconds a process worker may take to load a call's function and arguments before its body
# starts (imports included), when the call's timeout is shorter: then the timeout counts from
# the body's start, and a load that hangs is still stopped.
_LOAD_LIMIT = 10.0


class _Carried(Exception):  # noqa: N818 - internal carrier, never escapes
    """Carries out of a worker attempt an exception that the waiter cannot hold as it is."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Crash(_Carried):
    """What says the body never returned: the body's ``BaseException`` (KeyboardInterrupt,
    SystemExit), or the runner's ``TaskCrashedError`` (a dead worker, a SystemExit in a
    process). One the body raised is a plain failure."""


class _Raised(_Carried):
    """A ``StopIteration`` the body raised: an asyncio future refuses it, and it cannot leave a
    coroutine as it is (PEP 479)."""


class Attempt:
    """One attempt of a sync body, as the backend sees it: a work item with its own context."""

    __slots__ = (
        "_ctx",
        "_status",
        "abandoned",
        "deadline",
        "fut",
        "number",
        "params",
        "sched",
        "timeout",
        "waiter",
    )

    def __init__(
        self,
        sched: Scheduler,
        fut: Future[Any],
        params: dict[str, Any],
        number: int,
        timeout: float | None,
    ) -> None:
        self.sched = sched
        self.fut = fut
        self.params = params
        self.number = number
        self.timeout = timeout
        # A copy per attempt: an abandoned attempt may still run in its thread while the next
        # one starts, and a context can be entered by one thread at a time.
        self._ctx: contextvars.Context | None = contextvars.copy_context()
        self._status = PENDING
        self.waiter: asyncio.Future[Any] = sched.loop.create_future()
        self.deadline: asyncio.TimerHandle | None = None
        self.abandoned = False

    def call(self) -> Any:
        """Worker side: run the body (inside ``self._ctx``)."""
        current_attempt.set(self.number)
        task = self.fut._task
        return task.spec.call(task.fn, self.params)

    def started(self, clock: bool = True) -> None:
        """Loop side: a worker took it; the deadline starts now, or (not ``clock``) when the
        worker says the body starts (``start_clock``): until then the worker loads the
        function and the arguments (which may import modules), which may take the timeout or
        ``_LOAD_LIMIT``, whichever is longer (a load that hangs is stopped all the same)."""
        self._status = RUNNING
        fut = self.fut
        if fut._status < COMPLETED:
            fut._status = RUNNING
            fut._timestamp = time.time()
        if clock:
            self.start_clock()
        elif self.timeout is not None:
            limit = max(self.timeout, _LOAD_LIMIT)
            why = f"its worker took more than {limit:g} s to load its function and arguments"
            self.deadline = self.sched.loop.call_later(limit, self._expire, why)

    def start_clock(self) -> None:
        """Loop side: the body starts: so does its deadline."""
        if self.timeout is None or self.waiter.done():
            return
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.sched.loop.call_later(self.timeout, self._expire)

    def _expire(self, why: str | None = None) -> None:
        if self.waiter.done():
            return
        task = self.fut._task
        text = f"timed out after {self.timeout:g} s" if why is None else f"timed out: {why}"
        self.waiter.set_exception(TaskTimeoutError(f"task {task.name!r} {text}"))
        self.abandon(text)

    def abandon(self, why: str) -> None:
        """Loop side: the run stops waiting for this attempt."""
        if self._status == RUNNING and self.sched.backend.interrupt(self):
            self._status = CANCELLED  # stopped for real (its worker process was killed)
            return
        if self._status == RUNNING and not self.abandoned:
            self.abandoned = True
            self.sched.abandoned_threads += 1
            pol = self.fut._policy
            assert pol is not None
            pol.abandoned += 1
            logger.warning(
                "task %r (run %s) %s; its thread keeps running until the body returns "
                "and keeps its worker slot until then",
                self.fut._task.name,
                self.fut.task_run_id,
                why,
            )
        self._status = CANCELLED  # if it is still queued, it never starts

    def deliver(self, ok: bool, value: Any, crashed: bool = False) -> None:
        """Loop side: the body returned (``ok``) or raised ``value``, or (``crashed``) never
        returned, as the runner's ``value`` says."""
        self._status = COMPLETED  # over: a late abandon() has nothing to abandon
        if self.deadline is not None:
            self.deadline.cancel()
        if self.abandoned:
            self.sched.abandoned_threads -= 1
            pol = self.fut._policy
            assert pol is not None
            pol.abandoned -= 1
            if not pol.abandoned and self.fut._status >= COMPLETED and pol.held:
                self.sched._release(pol)  # the run ended while this body still held its limits
        self._ctx = None
        if self.waiter.done():
            return
        if ok:
            self.waiter.set_result(value)
        elif crashed or not isinstance(value, Exception):
            self.waiter.set_exception(_Crash(value))
        elif isinstance(value, StopIteration):
            self.waiter.set_exception(_Raised(value))
        else:
            self.waiter.set_exception(value)


def _retry_delay(task: Task[..., Any], attempt: int, default: float) -> float:
    spec = task.retry_delay
    if spec is None:
        delay = default
    elif callable(spec):
        delay = spec(attempt)
        if (
            not isinstance(delay, (int, float))
            or isinstance(delay, bool)
            or not delay >= 0  # also rejects NaN
        ):
            raise ValueError(
                f"retry_delay of task {task.name!r} returned {delay!r} for retry {attempt}; "
                "it must return a number >= 0"
            )
    elif isinstance(spec, tuple):
        delay = spec[min(attempt - 1, len(spec) - 1)]
    else:
        delay = float(spec)  # type: ignore[arg-type]
    if task.retry_jitter:
        delay *= random.uniform(1.0, 1.0 + task.retry_jitter)
    return float(delay)


def _retryable(task: Task[..., Any], exc: Exception) -> bool:
    rule = task.retry_on
    if rule is None:
        return True
    if isinstance(rule, tuple):
        return isinstance(exc, rule)
    try:
        return bool(rule(exc))
    except Exception:
        logger.exception("retry_on predicate of task %r raised; not retrying", task.name)
        return False


async def _attempt_async(
    task: Task[..., Any], params: dict[str, Any], attempt: int, limit: float | None
) -> Any:
    current_attempt.set(attempt)
    coro = task.spec.call(task.fn, params)
    if limit is None:
        return await coro
    with anyio.CancelScope(deadline=anyio.current_time() + limit):
        return await coro
    # Only reached when the scope swallowed its own cancellation at the deadline.
    raise TaskTimeoutError(f"task {task.name!r} timed out after {limit:g} s")


async def _attempt_sync(
    sched: Scheduler,
    fut: Future[Any],
    params: dict[str, Any],
    attempt: int,
    limit: float | None,
) -> Any:
    item = Attempt(sched, fut, params, attempt, limit)
    pol = fut._policy
    assert pol is not None
    pol.queued = item  # (a cancel skips it at once while no worker has taken it)
    sched.backend.submit(item)
    try:
        return await item.waiter
    except asyncio.CancelledError:
        item.abandon("was cancelled")
        raise
    finally:
        pol.queued = None


_MISS: Any = object()


def _cache_key(fut: Future[Any], params: dict[str, Any]) -> str | None:
    task = fut._task
    assert task.cache_key is not None
    key = task.cache_key(RunContext(task.name, fut.task_run_id, 1, task.tags, task.key), params)
    if key is not None and not isinstance(key, str):
        raise TypeError(
            f"cache_key of task {task.name!r} returned {key!r}; it must return a str or None"
        )
    return key


def _cache_get(sched: Scheduler, task: Task[..., Any], key: str) -> Any:
    try:
        entry = sched.cache_store.get(key)
    except Exception:  # a store that cannot be read is a miss, not a failure
        logger.exception("cache store could not read key %r of task %r", key, task.name)
        return _MISS
    return _MISS if entry is None else entry.value


def _cache_set(sched: Scheduler, task: Task[..., Any], key: str, value: Any) -> None:
    expires = None if task.cache_expiration is None else time.time() + task.cache_expiration
    try:
        sched.cache_store.set(key, value, expires)
    except Exception:
        logger.exception("could not cache the result of task %r", task.name)


async def _take_back_limits(sched: Scheduler, fut: Future[Any], pol: RunPolicy) -> None:
    sched.drop_reclaim(fut)  # the abandoned body goes on without them
    pol.lent = False
    back: asyncio.Future[None] = sched.loop.create_future()

    def resume() -> None:
        if not back.done():
            back.set_result(None)

    pol.resume = resume
    if sched._acquire(fut, pol):
        pol.resume = None
        return
    try:
        await back
    finally:
        pol.resume = None


def _mark(
    sched: Scheduler, fut: Future[Any], status: int, attempt: int, exc: Exception | None = None
) -> None:
    """The run's attempt starts on the loop (RUNNING), or failed and is retried (RETRYING)."""
    fut._status = status
    fut._timestamp = time.time()
    if (events := sched.events) is not None:
        if exc is None:
            events.started(fut, attempt, "loop")
        else:
            events.retrying(fut, attempt, exc)


async def _attempts(
    sched: Scheduler, fut: Future[Any], pol: RunPolicy
) -> tuple[int, Any, str | None]:
    task = fut._task
    params = params_of(fut)
    if params is None:
        raise asyncio.CancelledError
    if fut._deps is not None:
        params = resolve_parameters(params, fut._deps, task.name)
    key = None
    if task.cache_key is not None:
        try:
            key = _cache_key(fut, params)
        except Exception as exc:
            return FAILED, exc, None
        if key is not None:
            hit = _cache_get(sched, task, key)
            if hit is not _MISS:
                return COMPLETED, hit, "Cached"
    attempt = crashes = 0
    while True:
        attempt += 1
        pol.attempt = attempt
        if pol.limits and (pol.lent or pol.held < len(pol.limits)):
            # The last attempt's body was abandoned while it had lent the limits: this attempt
            # takes them back (waiting its turn) before it starts.
            await _take_back_limits(sched, fut, pol)
        try:
            if task.is_async and not sched.coroutines_in_backend:
                _mark(sched, fut, RUNNING, attempt)
                value = await _attempt_async(task, params, attempt, task.timeout)
            else:
                value = await _attempt_sync(sched, fut, params, attempt, task.timeout)
        except asyncio.CancelledError:
            raise
        except BaseException as raised:
            error = raised.exc if isinstance(raised, _Carried) else raised
            if not isinstance(error, Exception):
                # The body's own SystemExit, KeyboardInterrupt (in a worker or a coroutine).
                return CRASHED, crashed_error(task.name, error), None
            crash = isinstance(raised, _Crash)  # the runner says the body never returned
            if pol.cancelling:  # raised while handling a cancel: cancelled, never retried
                return CANCELLED, cancelled_error(task.name), None
            if crash:  # the runner's: only a dead worker is retried, within its own bound
                crashes += 1
                if not isinstance(error, WorkerCrashedError) or crashes > task.crash_retries:
                    return CRASHED, error, None
            elif attempt - crashes > pol.retries or not _retryable(task, error):
                return FAILED, error, None
            try:
                delay = _retry_delay(task, attempt, sched.default_retry_delay)
            except Exception as bad:
                bad.__cause__ = error
                return FAILED, bad, None
            sched.retried += 1
            _mark(sched, fut, RETRYING, attempt, error)
            await sched.sleep(delay)
            continue
        if pol.cancelling:  # the body handled its cancel and returned: cancelled all the same
            return CANCELLED, cancelled_error(task.name), None
        if key is not None:
            _cache_set(sched, task, key, value)
        return COMPLETED, value, None


async def drive(sched: Scheduler, fut: Future[Any], pol: RunPolicy) -> None:
    """Make the attempts of one run, run its hooks, then finish it."""
    pol.started = True
    current_future.set(fut)
    task = fut._task
    try:
        status, value, name = await _attempts(sched, fut, pol)
    except asyncio.CancelledError:
        status, value, name = CANCELLED, cancelled_error(task.name), None
    except Exception as exc:  # from a cache_key, retry_on or retry_delay callable: the run ends
        status, value, name = FAILED, exc, None
    except BaseException as exc:  # SystemExit, KeyboardInterrupt from those: the run ends
        status, value, name = CRASHED, crashed_error(task.name, exc), None
    pol.finishing = True
    try:
        if task.on_completion or task.on_failure or task.on_cancellation:
            await run_hooks(task, fut, fut.final_state(status, value, name))
    finally:
        sched._finish(fut, status, value, name)


async def run_hooks(task: Task[..., Any], fut: Future[Any], state: State[Any]) -> None:
    """Call the hooks for a final ``state``; one that raises is logged, the others still run."""
    if state.is_completed():
        hooks = task.on_completion
    elif state.is_cancelled():
        hooks = task.on_cancellation
    else:
        hooks = task.on_failure
    for hook in hooks:
        try:
            result = hook(task, fut, state)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:  # noqa: PERF203 - each hook is isolated from the others
            raise  # the runner is leaving in a hurry (Ctrl-C): stop running hooks
        except BaseException:
            logger.exception("hook %r of task %r (run %s) raised", hook, task.name, fut.task_run_id)


RUN_CODE.update(f.__code__ for f in (_attempt_async, _attempt_sync, _attempts, drive))
