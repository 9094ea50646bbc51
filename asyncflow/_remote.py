"""The call a cluster runs for one work item (Dask's or Ray's): the body, with its run context,
in a wrapper that carries every way a body can end as an ordinary error; and the error for a
call that cannot be sent."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._error_text import error_text
from ._futures import Future
from .exceptions import SerializationError

__all__ = ("MARK", "carried", "context_fields", "guarded", "run_key", "send_error", "task_of")

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
