"""Validation of task options, done once at decoration time so bad values fail early."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

__all__ = (
    "RetryDelay",
    "check_hooks",
    "check_retries",
    "check_timeout",
    "exponential_backoff",
)

RetryDelay: TypeAlias = "float | Sequence[float] | Callable[[int], float]"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_non_negative(name: str, value: object, owner: str, positive: bool = False) -> float:
    """``value`` as a float of at least 0 (above 0 with ``positive``)."""
    if not _is_number(value):
        raise TypeError(f"{owner}: {name} must be a number, not {value!r}")
    if math.isnan(value):  # type: ignore[arg-type]
        raise ValueError(f"{owner}: {name} must be a real number, got NaN")
    if positive and value <= 0:  # type: ignore[operator]
        raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")
    if value < 0:  # type: ignore[operator]
        raise ValueError(f"{owner}: {name} must be >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_retries(value: object, owner: str, name: str = "retries") -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int, not {value!r}")
    if value < 0:
        raise ValueError(f"{owner}: {name} must be >= 0, got {value}")
    return value


def check_retry_delay(value: object, owner: str) -> RetryDelay | None:
    if value is None or callable(value):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{owner}: retry_delay list must not be empty")
        return tuple(check_non_negative("retry_delay", v, owner) for v in value)
    return check_non_negative("retry_delay", value, owner)


def check_retry_on(value: object, owner: str) -> Any:
    if value is None:
        return None
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, (tuple, list)) and value:
        for v in value:
            if not (isinstance(v, type) and issubclass(v, BaseException)):
                raise TypeError(
                    f"{owner}: retry_on must be exception types or a predicate; {v!r} is neither"
                )
        return tuple(value)
    if callable(value):
        return value
    raise TypeError(f"{owner}: retry_on must be exception types or a predicate, not {value!r}")


def check_timeout(value: object, owner: str, name: str = "timeout") -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    return check_non_negative(name, value, owner, positive=True)


def check_expiration(value: object, owner: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    return check_non_negative("cache_expiration", value, owner)


def check_tags(value: object, owner: str) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{owner}: tags must be an iterable of strings, not {value!r}")
    tags = frozenset(value)
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"{owner}: every tag must be a string, got {tag!r}")
    return tags


def check_hooks(name: str, value: object, owner: str) -> tuple[Callable[..., Any], ...]:
    if value is None:
        return ()
    hooks = (value,) if callable(value) else value
    if not isinstance(hooks, Iterable):
        raise TypeError(f"{owner}: {name} must be a callable or a list of callables")
    result = tuple(hooks)
    for hook in result:
        if not callable(hook):
            raise TypeError(f"{owner}: {name} must hold callables, got {hook!r}")
    return result


def check_callable(name: str, value: object, owner: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{owner}: {name} must be callable, not {value!r}")
    return value


def exponential_backoff(base: float, max_delay: float | None = None) -> Callable[[int], float]:
    """A retry delay of ``base``, ``2*base``, ``4*base``, ... seconds (capped at ``max_delay``).

    The returned callable takes the retry number, starting at 1.
    """
    base = check_non_negative("base", base, "exponential_backoff")
    cap = (
        None
        if max_delay is None
        else check_non_negative("max_delay", max_delay, "exponential_backoff")
    )

    def delay(retry: int) -> float:
        value = base * 2.0 ** max(retry - 1, 0)
        return value if cap is None else min(value, cap)

    return delay
