"""``@task``: a function plus its options."""

from __future__ import annotations

import datetime
import difflib
import functools
import inspect
import os
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast, overload

from . import _options as opt
from ._callspec import CallSpec
from ._context import current_future, current_runner, remote_run

if TYPE_CHECKING:
    from ._futures import Future, FutureList

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

__all__ = ("Task", "as_task", "is_async_callable", "refuse_coroutine", "task")

_UNSET: Any = object()


def is_async_callable(fn: object) -> bool:
    from ._flow import Flow  # (it imports this module)

    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, (Task, Flow)):
        return bool(getattr(fn, "is_async", False))  # (not there on a mock of one)
    return inspect.iscoroutinefunction(fn) or (
        not inspect.isfunction(fn)
        and not inspect.ismethod(fn)
        and inspect.iscoroutinefunction(_call_of(fn))
    )


def _call_of(fn: object) -> object:
    """What calling ``fn`` calls, found as Python finds it: ``__call__`` on its type (for a
    class, its metaclass's; an instance's own attribute is never called), bound to ``fn``."""
    cls = type(fn)
    call = inspect.getattr_static(cls, "__call__", None)
    get = getattr(type(call), "__get__", None)
    if get is None:
        return call
    try:
        return get(call, fn, cls)
    except Exception:  # type's own __call__ for a non-class, a property that raises...
        return None  # (then calling it fails, or is no coroutine function)


def _default_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None)
    if name is None and isinstance(fn, functools.partial):
        name = getattr(fn.func, "__name__", None)
    return str(name) if name is not None else type(fn).__name__


def _unknown_options(owner: str, unknown: Iterable[str], known: Iterable[str]) -> TypeError:
    """The error for unknown option names, with the known one each may have meant."""
    known = sorted(known)
    hints = []
    for name in sorted(unknown):
        close = " or ".join(map(repr, difflib.get_close_matches(name, known, n=2)))
        hints.append(f"{name!r} (did you mean {close}?)" if close else repr(name))
    return TypeError(
        f"{owner} got unknown option(s) {', '.join(hints)}; the options are {', '.join(known)}"
    )


def _check_options(owner: str, **options: Any) -> dict[str, Any]:
    """Validate and normalise task options; errors name ``owner`` and the option."""
    unknown = options.keys() - _DEFAULTS.keys()
    if unknown:
        raise _unknown_options(owner, unknown, _DEFAULTS)
    o = {**_DEFAULTS, **options}
    jitter = o["retry_jitter"]
    return {
        "retries": opt.check_retries(o["retries"], owner),
        "crash_retries": opt.check_retries(o["crash_retries"], owner, "crash_retries") or 0,
        "retry_delay": opt.check_retry_delay(o["retry_delay"], owner),
        "retry_jitter": (
            None if jitter is None else opt.check_non_negative("retry_jitter", jitter, owner)
        ),
        "retry_on": opt.check_retry_on(o["retry_on"], owner),
        "timeout": opt.check_timeout(o["timeout"], owner),
        "tags": opt.check_tags(o["tags"], owner),
        "cache_key": opt.check_callable("cache_key", o["cache_key"], owner),
        "cache_expiration": opt.check_expiration(o["cache_expiration"], owner),
        "on_completion": opt.check_hooks("on_completion", o["on_completion"], owner),
        "on_failure": opt.check_hooks("on_failure", o["on_failure"], owner),
        "on_cancellation": opt.check_hooks("on_cancellation", o["on_cancellation"], owner),
    }


_DEFAULTS: dict[str, Any] = {
    "retries": None,
    "crash_retries": 0,
    "retry_delay": None,
    "retry_jitter": None,
    "retry_on": None,
    "timeout": None,
    "tags": (),
    "cache_key": None,
    "cache_expiration": None,
    "on_completion": (),
    "on_failure": (),
    "on_cancellation": (),
}


class Task(Generic[P, R]):
    """A function plus options. Calling it runs the function directly, without a runner."""

    # Set once a run of it waited in its first step (see _starter): its later runs get an
    # asyncio task of their own from the start. A hint for speed, kept on the task itself so
    # that nothing else holds the task (and its function's closure) for it.
    _waits_at_start = False
    __wrapped__: Callable[..., Any]  # (set by functools.update_wrapper: what it wraps)

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int | None = None,
        retry_delay: opt.RetryDelay | None = None,
        retry_jitter: float | None = None,
        retry_on: Any = None,
        timeout: float | datetime.timedelta | None = None,
        tags: Iterable[str] = (),
        cache_key: Callable[..., str | None] | None = None,
        cache_expiration: Any = None,
        on_completion: Any = (),
        on_failure: Any = (),
        on_cancellation: Any = (),
        crash_retries: int = 0,
    ) -> None:
        refuse_coroutine(fn, "@task")
        if not callable(fn):
            raise TypeError(f"@task needs a callable, not {fn!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"task name must be a string, not {name!r}")
        # First: it copies the attributes of ``fn`` (an object's too) onto this task.
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name: str = name or _default_name(fn)
        checked = _check_options(
            f"task {self.name!r}",
            retries=retries,
            crash_retries=crash_retries,
            retry_delay=retry_delay,
            retry_jitter=retry_jitter,
            retry_on=retry_on,
            timeout=timeout,
            tags=tags,
            cache_key=cache_key,
            cache_expiration=cache_expiration,
            on_completion=on_completion,
            on_failure=on_failure,
            on_cancellation=on_cancellation,
        )
        self.retries: int | None = checked["retries"]
        # Runs again after its worker process died: separate from ``retries``, which never
        # apply to a crash (a body that kills every worker it touches must not cause a storm).
        self.crash_retries: int = checked["crash_retries"]
        self.retry_delay: opt.RetryDelay | None = checked["retry_delay"]
        self.retry_jitter: float | None = checked["retry_jitter"]
        self.retry_on: Any = checked["retry_on"]
        self.timeout: float | None = checked["timeout"]
        self.tags: frozenset[str] = checked["tags"]
        self.cache_key: Callable[..., str | None] | None = checked["cache_key"]
        self.cache_expiration: float | None = checked["cache_expiration"]
        self.on_completion: tuple[Callable[..., Any], ...] = checked["on_completion"]
        self.on_failure: tuple[Callable[..., Any], ...] = checked["on_failure"]
        self.on_cancellation: tuple[Callable[..., Any], ...] = checked["on_cancellation"]
        self.is_async = is_async_callable(fn)
        self.spec = CallSpec(fn)
        target = fn.func if isinstance(fn, functools.partial) else fn
        self.key = (
            f"{getattr(target, '__module__', None)}."
            f"{getattr(target, '__qualname__', type(target).__qualname__)}"
        )
        # Whether runs need the policy driver (retries, timeout, cache, hooks); the runner's
        # default retries are added by the scheduler.
        self.driven = bool(
            self.retries
            or self.crash_retries
            or self.timeout is not None
            or self.cache_key is not None
            or self.on_completion
            or self.on_failure
            or self.on_cancellation
        )

    def _options(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "retries": self.retries,
            "crash_retries": self.crash_retries,
            "retry_delay": self.retry_delay,
            "retry_jitter": self.retry_jitter,
            "retry_on": self.retry_on,
            "timeout": self.timeout,
            "tags": self.tags,
            "cache_key": self.cache_key,
            "cache_expiration": self.cache_expiration,
            "on_completion": self.on_completion,
            "on_failure": self.on_failure,
            "on_cancellation": self.on_cancellation,
        }

    def with_options(self, **changes: Any) -> Task[P, R]:
        """A copy of this task with some options changed (validated like the decorator's)."""
        options = self._options()
        unknown = changes.keys() - options.keys()
        if unknown:
            raise _unknown_options("with_options()", unknown, options)
        options.update(changes)
        return Task(self.fn, **options)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    def _runner(self, what: str) -> Any:
        fut = current_future.get()
        if fut is not None:
            return fut._scheduler.runner
        runner = current_runner.get()
        if runner is None and os.environ.get("ASYNCFLOW_PROCESS_WORKER"):
            raise RuntimeError(
                f"{self.name}.{what}() is not available inside a process worker: return the "
                "values and submit from the parent, or call the task directly"
            )
        if runner is None and remote_run.get() is not None:
            raise RuntimeError(
                f"{self.name}.{what}() is not available on a cluster's worker (Dask, Ray): "
                "return the values and submit from the runner's side, or call the task directly"
            )
        if runner is None:
            raise RuntimeError(
                f"{self.name}.{what}() needs a runner: call it inside a @flow, a "
                f"`with runner:` / `async with runner:` block, or a task body; "
                f"or use runner.{what}({self.name}, ...)"
            )
        return runner

    @overload
    def submit(
        self: Task[P, Coroutine[Any, Any, T]],
        *args: Any,
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> Future[T]: ...

    @overload
    def submit(
        self: Task[P, T], *args: Any, wait_for: Iterable[Any] | None = None, **kwargs: Any
    ) -> Future[T]: ...

    def submit(self, *args: Any, wait_for: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """Submit a run of this task to the current runner and return its future at once.

        The future holds what the body returns (for a coroutine function: what it returns
        when awaited)."""
        runner = self._runner("submit")
        parameters = self.spec.bind(self.fn, args, kwargs, self.name)
        return runner.submit(self, parameters, wait_for=wait_for)

    @overload
    def map(
        self: Task[P, Coroutine[Any, Any, T]],
        *args: Any,
        wait_for: Iterable[Any] | None = None,
        max_in_flight: int | None = None,
        **kwargs: Any,
    ) -> FutureList[T]: ...

    @overload
    def map(
        self: Task[P, T],
        *args: Any,
        wait_for: Iterable[Any] | None = None,
        max_in_flight: int | None = None,
        **kwargs: Any,
    ) -> FutureList[T]: ...

    def map(
        self,
        *args: Any,
        wait_for: Iterable[Any] | None = None,
        max_in_flight: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Submit one run per element of the iterable arguments to the current runner.

        ``max_in_flight`` bounds how many of these runs execute at once.
        """
        runner = self._runner("map")
        parameters = self.spec.bind(self.fn, args, kwargs, self.name)
        return runner.map(self, parameters, wait_for=wait_for, max_in_flight=max_in_flight)


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    retries: int | None = None,
    retry_delay: opt.RetryDelay | None = None,
    retry_jitter: float | None = None,
    retry_on: Any = None,
    timeout: float | datetime.timedelta | None = None,
    tags: Iterable[str] = (),
    cache_key: Callable[..., str | None] | None = None,
    cache_expiration: Any = None,
    on_completion: Any = (),
    on_failure: Any = (),
    on_cancellation: Any = (),
    crash_retries: int = 0,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a task: ``@task`` or ``@task(name=..., retries=..., ...)``."""
    if fn is None:
        # Validate now, so a bad option fails at once, even before a function is given.
        name = options.get("name")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"task name must be a string, not {name!r}")
        _check_options(
            f"task {name!r}" if name else "@task(...)",
            **{k: v for k, v in options.items() if k != "name"},
        )
        return lambda f: _made(f, options)
    if options:
        raise TypeError("use @task(...) with keyword options, or plain @task")
    return _made(fn, {})


def _made(fn: Any, options: dict[str, Any]) -> Task[Any, Any]:
    # (Of the type: a mock made with a task's spec passes isinstance, and is wrapped.)
    if issubclass(type(fn), Task):  # a task of a task: a copy, with the options given changed
        return cast("Task[Any, Any]", fn).with_options(**_given(options))
    if isinstance(fn, functools.partial) and issubclass(type(fn.func), Task):
        return _of_partial(fn, options)
    return Task(fn, **options)


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options given, but no name or an empty one: as for a task of a plain function,
    the task's own name stays."""
    return (
        options if options.get("name", True) else {k: v for k, v in options.items() if k != "name"}
    )


def _of_partial(p: functools.partial[Any], options: dict[str, Any]) -> Task[Any, Any]:
    """A task of a partial of a task: that task (its name and options, but those given) with
    the partial's arguments; only its function goes to process workers, as for a task of a
    task. Calling it calls ``p``. Not the task's cache, unless given: a cache key is made of
    the task and the parameters submitted, not the partial's arguments, so partials with
    other arguments would share results."""
    inner: Task[..., Any] = cast("Task[..., Any]", p.func)
    merged = {**inner._options(), "cache_key": None, "cache_expiration": None}
    merged.update(_given(options))
    made: Task[Any, Any] = Task(functools.partial(inner.fn, *p.args, **p.keywords), **merged)
    made.__wrapped__ = p  # (what it wraps: ``as_task`` reuses it for ``p``)
    return made


# Plain callables submitted to a runner are wrapped once and the wrapper is reused while it is
# alive: id(callable) -> weak reference to its Task. Only the Task holds the callable, and only
# futures hold the Task, so nothing here keeps a lambda, a closure or a bound method's object
# alive once its runs are gone.
_wrapped: dict[int, weakref.ref[Task[Any, Any]]] = {}


def _forget(key: int) -> Callable[[weakref.ref[Task[Any, Any]]], None]:
    wrapped = _wrapped  # bound now: module globals may be gone at interpreter exit

    def forget(ref: weakref.ref[Task[Any, Any]]) -> None:
        if wrapped.get(key) is ref:
            del wrapped[key]

    return forget


def as_task(obj: object, caller: str = "submit") -> Task[Any, Any]:
    """The task for ``obj``: a ``Task`` as it is, a plain callable wrapped (and reused).
    ``caller`` names the method in errors."""
    if isinstance(obj, Task):
        return obj
    ref = _wrapped.get(id(obj))
    if ref is not None:
        found = ref()
        if found is not None and found.__wrapped__ is obj:
            return found
    refuse_coroutine(obj, f"{caller}()", f"runner.{caller}(fn, {{'x': 1}})")
    if not callable(obj):
        raise TypeError(f"{caller}() needs a task or a callable, not {obj!r}")
    wrapper = _made(obj, {})
    _wrapped[id(obj)] = weakref.ref(wrapper, _forget(id(obj)))
    return wrapper


def refuse_coroutine(obj: object, where: str, example: str = "") -> None:
    """A coroutine object given where a function is expected (``fn()`` for ``fn``): closed (no
    "coroutine was never awaited" warning) and refused, saying to pass the function."""
    if inspect.iscoroutine(obj):
        obj.close()
        name = obj.__qualname__
        raise TypeError(
            f"{where} got a coroutine object ({name}); pass the function itself"
            + (f" and its parameters, e.g. {example}" if example else f": {name}, not {name}()")
        )
