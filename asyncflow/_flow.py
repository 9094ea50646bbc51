"""``@flow``: run a function inside a runner so that ``task.submit`` finds it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ._resolve import resolve_futures_async, resolve_futures_to_results
from ._runners import TaskRunner, ThreadPoolTaskRunner
from ._task import Task, is_async_callable, refuse_coroutine

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ("Flow", "flow")


class Flow(Generic[P, R]):
    """A function run inside its own runner session each time it is called.

    Sync flows block until every task they submitted is final; async flows are awaited.
    Futures in the return value are replaced by their results.
    """

    fn: Callable[P, R]
    name: str
    task_runner: TaskRunner | None
    is_async: bool

    def __init__(
        self, fn: Callable[P, R], *, name: str | None = None, task_runner: TaskRunner | None = None
    ) -> None:
        refuse_coroutine(fn, "@flow")
        if not callable(fn):
            raise TypeError(f"@flow needs a callable, not {fn!r}")
        if task_runner is not None and not isinstance(task_runner, TaskRunner):
            raise TypeError(f"task_runner must be a TaskRunner, not {task_runner!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"flow name must be a string, not {name!r}")
        # A flow of a flow is a copy of it (its runner unless given another); a flow of a task
        # runs the task's function, under the task's name.
        if isinstance(fn, Flow):
            name = name or fn.name
            task_runner = task_runner if task_runner is not None else fn.task_runner
            fn = fn.fn
        elif isinstance(fn, Task):
            name = name or fn.name
            fn = fn.fn
        # First: it copies the attributes of ``fn`` (an object's too) onto this flow.
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", type(fn).__name__))
        self.task_runner = task_runner
        self.is_async = is_async_callable(fn)

    def _runner(self) -> TaskRunner:
        # A fresh copy per call: the same flow may run several times at once. The copy
        # reports its events to the subscribers of the runner given to the flow.
        if self.task_runner is None:
            return ThreadPoolTaskRunner()
        runner = self.task_runner.duplicate()
        runner._hub = self.task_runner._hub
        return runner

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.is_async:
            return self._acall(args, kwargs)  # type: ignore[return-value]
        with self._runner():
            result = self.fn(*args, **kwargs)
            return resolve_futures_to_results(result)  # type: ignore[no-any-return]

    async def _acall(self, args: Any, kwargs: Any) -> Any:
        async with self._runner():
            result = await self.fn(*args, **kwargs)  # type: ignore[misc]
            return await resolve_futures_async(result)

    def __repr__(self) -> str:
        return f"Flow({self.name!r})"


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(
    *, name: str | None = None, task_runner: TaskRunner | None = None
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    fn: Any = None, /, *, name: str | None = None, task_runner: TaskRunner | None = None
) -> Any:
    """Make a function a flow: ``@flow`` or ``@flow(task_runner=..., name=...)``."""
    if fn is None:
        return lambda f: Flow(f, name=name, task_runner=task_runner)
    return Flow(fn, name=name, task_runner=task_runner)
