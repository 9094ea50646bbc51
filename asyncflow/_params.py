"""Futures inside parameters: finding them at submit (edges), replacing them at run time."""

from __future__ import annotations

import collections
import copy
import types
from collections.abc import Callable, Iterable
from typing import Any

from ._annotations import BaseAnnotation, allow_failure, quote
from ._error_text import error_text
from ._futures import COMPLETED, Future, FutureList, params_of

__all__ = (
    "ATOMIC",
    "IMMUTABLE",
    "TOP_LEVEL",
    "find_futures",
    "inputs_of",
    "resolve_parameters",
    "resolve_value",
    "wait_for_edges",
)

# Types that can never hold a future: checked first so plain values cost one set lookup.
ATOMIC: frozenset[type] = frozenset(
    {int, float, str, bytes, bool, complex, type(None), range, bytearray, types.FunctionType}
)

# Types whose values no call can change: calls may share them (one pickle for a batch's calls).
IMMUTABLE: frozenset[type] = frozenset({int, float, str, bytes, bool, complex, type(None), range})


# The containers searched item by item (with dicts, by key and value).
_SEQUENCES = (list, tuple, set, frozenset, collections.deque)
_CONTAINERS = (*_SEQUENCES, dict)


def _fields(value: Any) -> Iterable[str] | None:
    cls = type(value)
    dc = getattr(cls, "__dataclass_fields__", None)
    if dc is not None and not isinstance(value, type):
        return dc.keys()  # type: ignore[no-any-return]
    pyd = getattr(cls, "__pydantic_fields__", None)
    if pyd is not None and not isinstance(value, type):
        return pyd.keys()  # type: ignore[no-any-return]
    return None


def find_futures(
    value: Any,
    strict: list[Future[Any]],
    allowed: list[Future[Any]],
    allow: bool = False,
    seen: set[int] | None = None,
) -> bool:
    """Append every future inside ``value`` to ``strict``, or to ``allowed`` when it sits
    inside ``allow_failure``. Returns True if ``value`` holds an annotation to unwrap.
    Containers met again (cycles, shared parts) are not walked twice."""
    cls = type(value)
    if cls in ATOMIC:
        return False
    if isinstance(value, Future):
        (allowed if allow else strict).append(value)
        return False
    if isinstance(value, BaseAnnotation):
        if cls is not quote:
            find_futures(value.value, strict, allowed, allow or cls is allow_failure, seen)
        return True
    if isinstance(value, _CONTAINERS):
        items: Iterable[Any] = value.items() if isinstance(value, dict) else value
    else:
        names = _fields(value)
        if names is None:
            return False
        items = [getattr(value, name, None) for name in names]
    if seen is None:
        seen = set()
    elif id(value) in seen:
        return False
    seen.add(id(value))
    annotated = False
    for item in items:
        if type(item) is tuple and isinstance(value, dict):  # a (key, value) pair
            annotated |= find_futures(item[0], strict, allowed, allow, seen)
            annotated |= find_futures(item[1], strict, allowed, allow, seen)
        else:
            annotated |= find_futures(item, strict, allowed, allow, seen)
    return annotated


def checked_wait_for(wait_for: Iterable[Any]) -> list[Any]:
    """A ``wait_for`` given once for many runs (a map's), as a list, checked as a submit's."""
    _check_iterable(wait_for)
    waits = list(wait_for)
    wait_for_edges(waits, [], [])
    return waits


def _check_iterable(wait_for: object) -> None:
    if isinstance(wait_for, (str, bytes)) or not isinstance(wait_for, Iterable):
        raise TypeError(f"wait_for must be a list of futures, not {wait_for!r}")


def wait_for_edges(
    wait_for: Iterable[Any], strict: list[Future[Any]], allowed: list[Future[Any]]
) -> None:
    """Edges from a ``wait_for`` list: futures, or ``allow_failure`` around futures or lists."""
    _check_iterable(wait_for)
    for item in wait_for:
        out = strict
        inner = item
        if isinstance(item, allow_failure):
            out, inner = allowed, item.value
        items = inner if isinstance(inner, (list, tuple, set, frozenset)) else (inner,)
        for f in items:
            if not isinstance(f, Future):
                raise TypeError(f"wait_for must hold asyncflow futures, got {f!r}")
            out.append(f)


def _result_of(future: Future[Any], allow: bool) -> Any:
    # By the time a task runs, every input it waits for is final (the scheduler saw to it).
    if future._status == COMPLETED or allow:
        return future._value
    return future._outcome(True)  # raises the upstream's exception


def resolve_value(
    value: Any,
    allow: bool = False,
    on_future: Callable[[Future[Any], bool], Any] = _result_of,
) -> Any:
    """``value`` with futures replaced by ``on_future(future, allow_failure)`` (by default the
    result of a final one) and annotations unwrapped. A container is rebuilt only when
    something inside it changed; otherwise the very same object is passed on. A container met
    again on its own path (a cycle) is passed on as it is."""
    return _resolve(value, allow, on_future, set())


def _resolve(
    value: Any, allow: bool, on_future: Callable[[Future[Any], bool], Any], path: set[int]
) -> Any:
    cls = type(value)
    if cls in ATOMIC:
        return value
    if isinstance(value, Future):
        return on_future(value, allow)
    if isinstance(value, BaseAnnotation):
        if cls is quote:
            return value.value
        return _resolve(value.value, allow or cls is allow_failure, on_future, path)
    key = id(value)
    if key in path:
        return value
    path.add(key)
    try:
        return _resolve_container(value, cls, allow, on_future, path)
    finally:
        path.discard(key)


def _resolve_container(
    value: Any,
    cls: type,
    allow: bool,
    on_future: Callable[[Future[Any], bool], Any],
    path: set[int],
) -> Any:
    if isinstance(value, _SEQUENCES):
        items = [_resolve(v, allow, on_future, path) for v in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if cls is list or isinstance(value, FutureList):  # a list of futures becomes results
            return items
        if isinstance(value, collections.deque):
            queue = copy.copy(value)  # keeps its maxlen and its class
            queue.clear()
            queue.extend(items)
            return queue
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            return cls(*items)
        return cls(items)
    if isinstance(value, dict):
        pairs = [
            (_resolve(k, allow, on_future, path), _resolve(v, allow, on_future, path))
            for k, v in value.items()
        ]
        if all(nk is k and nv is v for (nk, nv), (k, v) in zip(pairs, value.items(), strict=True)):
            return value
        out = copy.copy(value)  # keeps the dict subclass (OrderedDict, defaultdict, ...)
        out.clear()
        out.update(pairs)
        return out
    names = _fields(value)
    if names is None:
        return value
    changes = {}
    for name in names:
        old = getattr(value, name, None)
        new = _resolve(old, allow, on_future, path)
        if new is not old:
            changes[name] = new
    if not changes:
        return value
    clone = copy.copy(value)
    for name, new in changes.items():
        object.__setattr__(clone, name, new)  # works for frozen dataclasses too
    return clone


_FEW = 8

# A run's ``_deps`` when its inputs are exactly the futures among its parameter values (no
# container holds one, no annotation, no ``wait_for``): the common case keeps no list of its
# own. A waiting run holds its ``_deps`` until it starts, and in a graph of a million waiting
# runs every such list is one more object for each full garbage collection to walk. Never
# appended to; ``resolve_parameters`` needs no inputs then (it resolves top-level futures as
# they are, and no container held one at submit).
TOP_LEVEL: list[Any] = []


def inputs_of(fut: Future[Any]) -> list[Future[Any]]:
    """The futures a run waits for (its ``_deps`` spelled out); none once it let go of them
    (it started, or was cancelled). Each field is read once: any thread may ask while the loop
    starts or ends the run."""
    deps = fut._deps
    if deps is not TOP_LEVEL:
        return deps or []
    params = params_of(fut)
    return [] if params is None else [value for value in params.values() if type(value) is Future]


def resolve_parameters(
    params: dict[str, Any], inputs: list[Future[Any]], task_name: str
) -> dict[str, Any]:
    """The parameters a run of ``task_name`` gets: its recorded inputs replaced by their results.

    A future that is not one of ``inputs`` (put into a container after submit) is passed on as
    it is: it was never waited for. A container that cannot hold the results (a set, say, and
    a result that is a list) is a ``TypeError`` naming the task and the parameter; what else
    rebuilding a container raises is raised as it is.
    """

    known: Any = None
    out = {}
    for name, value in params.items():
        cls = type(value)
        if cls is Future:  # the common case: a future as is (always one of the inputs)
            out[name] = value._value if value._status == COMPLETED else _result_of(value, False)
        elif cls in ATOMIC:
            out[name] = value
        else:
            if known is None:
                # A list scan is cheapest for a few inputs; a wide fan-in uses a set (O(1)).
                known = inputs if len(inputs) <= _FEW else set(inputs)
            try:
                out[name] = resolve_value(value, False, _known_results(known))
            except TypeError as exc:  # (a set or dict key that cannot take a result)
                raise TypeError(
                    f"task {task_name!r} did not run: its parameter {name!r} could not be "
                    f"rebuilt with the results of the futures in it ({error_text(exc)})"
                ) from exc
    return out


def _known_results(known: Any) -> Callable[[Future[Any], bool], Any]:
    """How ``resolve_value`` treats a future: its result if it is one of the run's inputs."""

    def on_future(f: Future[Any], allow: bool) -> Any:
        return _result_of(f, allow) if f in known else f

    return on_future
