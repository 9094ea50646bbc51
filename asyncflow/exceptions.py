"""Exceptions raised by asyncflow. Every error names what was wrong."""

from __future__ import annotations

import concurrent.futures
from typing import Any

__all__ = (
    "AsyncflowError",
    "MappingLengthMismatch",
    "MappingMissingIterable",
    "RemoteError",
    "RemoteTraceback",
    "RunnerFullError",
    "SerializationError",
    "SettingsError",
    "TaskCancelledError",
    "TaskCrashedError",
    "TaskTimeoutError",
    "UpstreamFailedError",
    "WorkerCrashedError",
    "WorkerStartError",
)


def _state(exc: BaseException) -> dict[str, Any]:
    """What an exception carries besides its arguments (its notes, attributes set on it), kept
    when it is pickled, as ``BaseException.__reduce__`` keeps it: an exception that travels to a
    worker process and back keeps the notes naming the task that raised it."""
    return dict(exc.__dict__)


class AsyncflowError(Exception):
    """Base class of every error asyncflow raises on its own behalf."""


class UpstreamFailedError(AsyncflowError):
    """A task did not run because one of its inputs failed.

    The upstream's exception is chained as ``__cause__``, so the root cause is never lost.
    """

    def __init__(self, task_name: str, upstream_name: str, how: str = "failed") -> None:
        # ``how``: "failed" (it raised, or did not run itself) or "crashed" (its body never
        # returned: its worker died, or it raised SystemExit or KeyboardInterrupt).
        super().__init__(
            f"task {task_name!r} did not run: its upstream task {upstream_name!r} {how}"
        )
        self.task_name = task_name
        self.upstream_name = upstream_name
        self.how = how

    def __reduce__(
        self,
    ) -> tuple[type[UpstreamFailedError], tuple[str, str, str], dict[str, Any]]:
        return (type(self), (self.task_name, self.upstream_name, self.how), _state(self))


class TaskCancelledError(AsyncflowError, concurrent.futures.CancelledError):
    """The task was cancelled before it finished (``future.cancel()``, or an upstream was)."""


class TaskCrashedError(AsyncflowError):
    """The task body never returned normally: it raised ``KeyboardInterrupt``/``SystemExit``
    or its worker died. The original exception, when there is one, is the ``__cause__``."""


class TaskTimeoutError(AsyncflowError, TimeoutError):
    """The task did not finish before its timeout."""


class MappingMissingIterable(AsyncflowError, ValueError):  # noqa: N818 - reference API name
    """``map`` was called without any iterable parameter."""


class MappingLengthMismatch(AsyncflowError, ValueError):  # noqa: N818 - reference API name
    """``map`` was called with iterable parameters of different lengths."""


class RunnerFullError(AsyncflowError, RuntimeError):
    """A submit from the runner's own event loop found it holding ``max_pending`` unfinished
    runs (it cannot wait there: ``await runner.wait_for_room()`` first)."""


class SettingsError(AsyncflowError, ValueError):
    """An ``ASYNCFLOW_*`` environment variable holds an invalid value."""


class WorkerCrashedError(TaskCrashedError):
    """The worker process running the task died (it exited, or was killed by a signal).

    ``pid``, ``exitcode`` (negative: the signal number) and ``stderr_tail`` (the last lines
    the worker wrote to stderr) say what happened.
    """

    def __init__(self, message: str, pid: int, exitcode: int | None, stderr_tail: str) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.stderr_tail = stderr_tail

    def __reduce__(
        self,
    ) -> tuple[type[WorkerCrashedError], tuple[str, int, int | None, str], dict[str, Any]]:
        return (type(self), (str(self), self.pid, self.exitcode, self.stderr_tail), _state(self))


class SerializationError(AsyncflowError):
    """A task's callable, arguments or result could not be serialized to or from a worker
    process. ``direction`` is ``"arguments"`` or ``"result"``."""

    def __init__(self, message: str, direction: str) -> None:
        super().__init__(message)
        self.direction = direction

    def __reduce__(self) -> tuple[type[SerializationError], tuple[str, str], dict[str, Any]]:
        return (type(self), (str(self), self.direction), _state(self))


class RemoteTraceback(Exception):  # noqa: N818 - names what it holds, as in concurrent.futures
    """The traceback of an exception raised in a worker process, as text (the ``__cause__`` of
    the exception re-raised here)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class RemoteError(AsyncflowError):
    """An exception raised in a worker process that could not be sent back as itself (it does
    not pickle or unpickle): its type name and message, with the remote traceback as cause."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str], dict[str, Any]]:
        return (type(self), (self.type_name, self.remote_message), _state(self))


class WorkerStartError(WorkerCrashedError):
    """A worker process could not start (an initializer that raised, an import that failed).
    After a few such starts in a row, runs fail with it at once instead of starting workers
    forever, until a pause has passed: then another start is tried."""
