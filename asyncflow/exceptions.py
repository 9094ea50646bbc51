"""Exceptions raised by asyncflow. Every error names what was wrong."""

from __future__ import annotations

import concurrent.futures

__all__ = (
    "AsyncflowError",
    "MappingLengthMismatch",
    "MappingMissingIterable",
    "SettingsError",
    "TaskCancelledError",
    "TaskCrashedError",
    "TaskTimeoutError",
    "UpstreamFailedError",
)


class AsyncflowError(Exception):
    """Base class of every error asyncflow raises on its own behalf."""


class UpstreamFailedError(AsyncflowError):
    """A task did not run because one of its inputs failed.

    The upstream's exception is chained as ``__cause__``, so the root cause is never lost.
    """

    def __init__(self, task_name: str, upstream_name: str) -> None:
        super().__init__(
            f"task {task_name!r} did not run: its upstream task {upstream_name!r} failed"
        )
        self.task_name = task_name
        self.upstream_name = upstream_name

    def __reduce__(self) -> tuple[type[UpstreamFailedError], tuple[str, str]]:
        return (type(self), (self.task_name, self.upstream_name))


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


class SettingsError(AsyncflowError, ValueError):
    """An ``ASYNCFLOW_*`` environment variable holds an invalid value."""
