"""Futures inside parameters: finding them at submit (edges), replacing them at run time."""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Iterable
from typing import Any

from ._annotations import BaseAnnotation, allow_failure, quote
from ._futures import COMPLETED, Future

__all__ = ("find_futures", "resolve_parameters", "resolve_value", "wait_for_edges")

# Types that can never hold a future: checked first so plain values cost one set lookup.
_ATOMIC: frozenset[type] = frozenset(
    {int, float, str, bytes, bool, complex, type(None), range, bytearray, types.FunctionType}
)


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
    value: Any, strict: list[Future[Any]], allowed: list[Future[Any]], allow: bool = False
) -> bool:
    """Append every future inside ``value`` to ``strict``, or to ``allowed`` when it sits
    inside ``allow_failure``. Returns True if ``value`` holds an annotation to unwrap."""
    cls = type(value)
    if cls in _ATOMIC:
        return False
    if isinstance(value, Future):
        (allowed if allow else strict).append(value)
        return False
    if isinstance(value, BaseAnnotation):
        if cls is not quote:
            find_futures(value.value, strict, allowed, allow or cls is allow_failure)
        return True
    annotated = False
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            annotated |= find_futures(item, strict, allowed, allow)
    elif isinstance(value, dict):
        for key, item in value.items():
            annotated |= find_futures(key, strict, allowed, allow)
            annotated |= find_futures(item, strict, allowed, allow)
    else:
        names = _fields(value)
        if names is not None:
            for name in names:
                annotated |= find_futures(getattr(value, name, None), strict, allowed, allow)
    return annotated


def wait_for_edges(
    wait_for: Iterable[Any], strict: list[Future[Any]], allowed: list[Future[Any]]
) -> None:
    """Edges from a ``wait_for`` list: futures, or ``allow_failure`` around futures or lists."""
    if isinstance(wait_for, (str, bytes)) or not isinstance(wait_for, Iterable):
        raise TypeError(f"wait_for must be a list of futures, not {wait_for!r}")
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
    something inside it changed; otherwise the very same object is passed on."""
    cls = type(value)
    if cls in _ATOMIC:
        return value
    if isinstance(value, Future):
        return on_future(value, allow)
    if isinstance(value, BaseAnnotation):
        if cls is quote:
            return value.value
        return resolve_value(value.value, allow or cls is allow_failure, on_future)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [resolve_value(v, allow, on_future) for v in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if cls is list:
            return items
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            return cls(*items)
        return cls(items)
    if isinstance(value, dict):
        pairs = [
            (resolve_value(k, allow, on_future), resolve_value(v, allow, on_future))
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
        new = resolve_value(old, allow, on_future)
        if new is not old:
            changes[name] = new
    if not changes:
        return value
    clone = copy.copy(value)
    for name, new in changes.items():
        object.__setattr__(clone, name, new)  # works for frozen dataclasses too
    return clone


_FEW = 8


def resolve_parameters(params: dict[str, Any], inputs: list[Future[Any]]) -> dict[str, Any]:
    """The parameters a run's body gets: its recorded inputs replaced by their results.

    A future that is not one of ``inputs`` (put into a container after submit) is passed on as
    it is: it was never waited for.
    """

    # A list scan is cheapest for a few inputs; a wide fan-in uses a set to stay O(1).
    known: Any = inputs if len(inputs) <= _FEW else set(inputs)

    def on_future(f: Future[Any], allow: bool) -> Any:
        return _result_of(f, allow) if f in known else f

    return {k: resolve_value(v, False, on_future) for k, v in params.items()}
