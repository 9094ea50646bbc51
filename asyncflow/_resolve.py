"""Replacing futures inside nested containers by their results or states."""

from __future__ import annotations

from typing import Any

from ._futures import Future
from ._params import find_futures, resolve_value

__all__ = ("resolve_futures_async", "resolve_futures_to_results", "resolve_futures_to_states")


def _futures_in(expr: Any) -> list[Future[Any]]:
    found: list[Future[Any]] = []
    find_futures(expr, found, found)
    return found


def resolve_futures_to_results(expr: Any) -> Any:
    """``expr`` with every future replaced by its result (blocking; a failure raises)."""
    for f in _futures_in(expr):
        f.wait()
    return resolve_value(expr, on_future=lambda f, allow: f.result(raise_on_failure=not allow))


def resolve_futures_to_states(expr: Any) -> Any:
    """``expr`` with every future replaced by its final state (blocking)."""
    for f in _futures_in(expr):
        f.wait()
    return resolve_value(expr, on_future=lambda f, _allow: f.state)


async def resolve_futures_async(expr: Any) -> Any:
    """Async form of ``resolve_futures_to_results``."""
    for f in _futures_in(expr):
        if not f.done():
            try:
                await f
            except Exception:  # raised below, in container order
                pass
    # (As await raises it: a StopIteration cannot leave a coroutine as it is.)
    return resolve_value(expr, on_future=_awaited_result)


def _awaited_result(f: Future[Any], allow: bool) -> Any:
    if allow:
        return f.result(raise_on_failure=False)
    return f._awaited_outcome() if f.done() else f.result()  # (result() says why it waits)
