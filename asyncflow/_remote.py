"""What the backends of clusters (Dask's, Ray's) share: the call a cluster runs for one work
item (the body, with its run context, in a wrapper that carries every way a body can end as an
ordinary error), the error for a call that cannot be sent, and ``ClusterBackend``, the queue
and the sending and waiting around them."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._error_text import error_text
from ._futures import COMPLETED, Future, cancelled_error
from .exceptions import SerializationError, TaskCrashedError

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = (
    "MARK",
    "ClusterBackend",
    "carried",
    "context_fields",
    "guarded",
    "run_key",
    "send_error",
    "task_of",
)

# Marks, in the error of a cluster's task, what a body raised that the cluster cannot carry as
# it is: a BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
# CancelledError), or a StopIteration (an asyncio future refuses one, and awaiting the cluster's
# future turns it into "coroutine raised StopIteration"). Raised as a plain RuntimeError, which
# a cluster carries as it carries any error, so the worker (maybe this very loop, with an
# in-process Dask cluster) goes on.
MARK = "asyncflow: carried from the body"


def task_of(item: Any) -> Any:
    return item._task if type(item) is Future else item.fut._task


def run_key(item: Any, task: Any) -> str:
    """A name for the item's call on the cluster: task name, run id, attempt."""
    fut = item if type(item) is Future else item.fut
    attempt = "" if type(item) is Future else f"-{item.number}"
    return f"{task.name}-{fut.task_run_id.hex}{attempt}"


def context_fields(item: Any, task: Any) -> tuple[Any, ...]:
    """What ``get_run_context()`` says in the body, as plain values (the worker may not have
    asyncflow; then the body cannot ask)."""
    fut = item if type(item) is Future else item.fut
    attempt = 1 if type(item) is Future else item.number
    return (task.name, fut.task_run_id.int, attempt, tuple(task.tags), task.key)


def guarded(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    is_async: bool,
    context: tuple[Any, ...],
    *,
    carry_all: bool = False,
) -> Callable[[], Any]:
    """The call sent to the cluster: ``fn(*args, **kwargs)`` with its run context set, and a
    ``BaseException`` that is not an ``Exception`` (Dask lets one through to its worker's loop,
    which with an in-process cluster is this runner's; Ray's worker exits on one) or a
    ``StopIteration`` turned into a marked ``RuntimeError`` carrying it and its traceback's
    text (see ``carried``); with ``carry_all``, every exception of the body, so that one the
    cluster raises around the body (it cannot send the result) is told apart. For a coroutine
    function, the call returns its coroutine.

    A local function: the cluster pickles it by value (cloudpickle), so a worker needs no
    asyncflow; a body that reads its run context has it. No argument is visible to the
    cluster, which would otherwise look inside them (Dask for graphs of its own, Ray for object
    references), and a parameter named like one of the submit call's keywords (``key``,
    ``priority``) stays the body's.
    """
    marker = MARK

    def cut_cycle(link: BaseException) -> None:
        """Dask follows ``__cause__`` to its end, for ever on a cycle (user code can make one,
        and its worker thread then never returns): the link that closes it is cut."""
        seen = {id(link)}
        while (cause := link.__cause__) is not None:
            if id(cause) in seen:
                link.__cause__ = None
                return
            seen.add(id(cause))
            link = cause

    def carry(exc: BaseException) -> RuntimeError:
        import traceback

        cut_cycle(exc)  # (the cluster pickles it with its causes)
        return RuntimeError(marker, exc, "".join(traceback.format_exception(exc)))

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            from asyncflow._context import enter_remote_run, leave_remote_run
        except ImportError:  # no asyncflow on this worker: the body does not use it either
            token = None
        else:
            token = enter_remote_run(*context)
        try:
            yield
        except StopIteration as exc:
            raise carry(exc) from None
        except Exception as exc:
            if carry_all:
                raise carry(exc) from None
            cut_cycle(exc)
            raise
        except BaseException as exc:
            raise carry(exc) from None
        finally:
            if token is not None:
                leave_remote_run(token)

    if is_async:

        async def run_async() -> Any:
            with guard():
                return await fn(*args, **kwargs)

        return run_async

    def run() -> Any:
        with guard():
            return fn(*args, **kwargs)

    return run


def carried(exc: BaseException) -> tuple[Any, ...] | None:
    """The rest of the mark's arguments if ``exc`` is ``guarded``'s mark: what the body raised,
    and its traceback's text (Ray's worker sends them on in a form of its own)."""
    if type(exc) is RuntimeError:
        match exc.args:
            case (str(marker), *rest) if marker == MARK:
                return tuple(rest)
    return None


def send_error(
    task: Any, args: Sequence[Any], kwargs: dict[str, Any], exc: Exception, to: str
) -> Exception:
    """What failed a submit: the function or the argument that cannot be pickled, by name (a
    cluster's own message names only the call), else the cluster's own error."""
    import cloudpickle

    from ._processes import _argument_error

    try:
        cloudpickle.dumps(task.fn)
    except Exception as cause:
        error = SerializationError(
            f"task {task.name!r}: the task's function cannot be sent to {to} ({error_text(cause)})",
            "arguments",
        )
        error.__cause__ = cause
        return error
    error = _argument_error(task, args, kwargs, exc, to=to)
    return exc if error.__cause__ is exc else error


class ClusterBackend:
    """What the backends of clusters (Dask's, Ray's) share: work items wait in a queue here
    until the cluster has room for them (``_pump``, each backend's own); each is then sent as
    one call (``_submit_call``) of its body wrapped by ``guarded``, and an asyncio task awaits
    its outcome there (``_wait``), which ``_failure`` reads when it is an error."""

    runs_coroutines = True  # coroutine bodies go to the cluster too
    _to = "the cluster"  # in messages: where a call could not be sent
    _carry_all = False  # guarded's carry_all

    def __init__(self, sched: Scheduler) -> None:
        self._sched = sched
        self._queue: deque[Any] = deque()  # items waiting for room on the cluster
        # item -> its handle on the cluster, and the asyncio task awaiting its outcome
        self._sent: dict[Any, tuple[Any, asyncio.Task[None]]] = {}
        self._held = False
        self._worker = "cluster"  # how ``mark_running`` names where a body runs

    def submit(self, item: Any) -> None:
        self._queue.append(item)
        self._pump()

    def submit_many(self, items: list[Any]) -> None:
        self._queue.extend(items)
        self._pump()

    def hold(self, on: bool) -> None:
        self._held = on
        if not on:
            self._pump()

    def _pump(self) -> None:
        """Send what the cluster has room for (each backend knows how much that is)."""
        raise NotImplementedError

    def _drop_final(self) -> None:
        """Report the items at the queue's head cancelled while they waited here: never sent."""
        queue = self._queue
        while queue and queue[0]._status >= COMPLETED:
            item = queue.popleft()
            self._report_soon(item, False, cancelled_error(task_of(item).name))

    def _send(self, item: Any) -> bool:
        """Send ``item``'s call; False if it could not be (its outcome is then reported)."""
        sched = self._sched
        try:
            task, params = sched.call_parts(item)
            args, kwargs = task.spec.split(params)
        except BaseException as exc:  # its inputs could not be resolved
            self._report_soon(item, False, exc)
            return False
        context = context_fields(item, task)
        call = guarded(task.fn, args, kwargs, task.is_async, context, carry_all=self._carry_all)
        try:
            handle = self._submit_call(call, item, task)
        except Exception as exc:  # it cannot be pickled, or the cluster is gone
            self._report_soon(item, False, *self._send_failure(task, args, kwargs, exc))
            return False
        sched.mark_running(item, self._worker)
        self._sent[item] = (handle, sched.loop.create_task(self._wait(item, task.name, handle)))
        return True

    def _submit_call(self, call: Callable[[], Any], item: Any, task: Any) -> Any:
        """Hand ``call`` to the cluster; its handle there, awaitable for the outcome."""
        raise NotImplementedError

    def _send_failure(
        self, task: Any, args: Sequence[Any], kwargs: dict[str, Any], exc: Exception
    ) -> tuple[Exception, bool]:
        """Why a call could not be sent, and whether that crashed its run."""
        return send_error(task, args, kwargs, exc, self._to), False

    def _report_soon(self, item: Any, ok: bool, value: Any, crashed: bool = False) -> None:
        self._sched.loop.call_soon(self._sched.on_outcome, item, ok, value, crashed)

    async def _wait(self, item: Any, task_name: str, handle: Any) -> None:
        crashed = False
        try:
            try:
                value = await handle
                ok = True
            except Exception as exc:
                ok, value, crashed = self._failure(item, task_name, exc)
        except asyncio.CancelledError:  # only the backend cancels this task (at its close)
            return
        except BaseException as exc:  # reading the outcome raised (an error that loads badly)
            from ._processes import _fails_its_run

            if not _fails_its_run(exc):  # (the user's Ctrl-C, on the main thread)
                raise
            ok, crashed = False, True
            value = TaskCrashedError(
                f"task {task_name!r} crashed: its outcome could not be read ({error_text(exc)})"
            )
            value.__cause__ = exc
        finally:  # (however it ends: the item's room on the cluster is given back)
            if self._sent.pop(item, None) is not None:
                self._ended(item)
        self._sched.on_outcome(item, ok, value, crashed)
        self._pump()

    def _failure(self, item: Any, task_name: str, exc: Exception) -> tuple[bool, Any, bool]:
        """The run's outcome for the error its call ended with: (ok, value, crashed)."""
        raise NotImplementedError

    def _ended(self, item: Any) -> None:
        """``item``'s call is over (before its outcome is reported)."""
