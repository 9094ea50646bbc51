"""How ``map`` turns one parameters dict into one parameters dict per child run."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from ._annotations import allow_failure, quote, unmapped
from ._futures import Future
from .exceptions import MappingLengthMismatch, MappingMissingIterable

__all__ = ("expand",)

_STATIC = (str, bytes, bytearray, io.IOBase, unmapped, quote)


def _as_sequence(name: str, value: Any) -> list[Any] | None:
    """The elements to map over for one parameter, or None when it is passed whole."""
    if isinstance(value, _STATIC):
        return None
    if isinstance(value, allow_failure):
        inner = _as_sequence(name, value.value)
        return None if inner is None else [allow_failure(v) for v in inner]
    if isinstance(value, Future):
        # A future whose result is a list: mapping needs its length, so wait for it. On the
        # scheduler's loop thread an unfinished one raises (await it first) instead of hanging.
        value = value.result()
        return _as_sequence(name, value)
    if isinstance(value, dict):
        return list(value.keys())
    if isinstance(value, Iterable):
        return list(value)  # consumes generators, once
    return None


def expand(task_name: str, parameters: dict[str, Any]) -> tuple[list[dict[str, Any]], set[type]]:
    """One parameters dict per child, in order (``unmapped``/static values go to every
    child), and the types of all their values (gathered per parameter, in C)."""
    sequences: dict[str, list[Any]] = {}
    static: dict[str, Any] = {}
    for name, value in parameters.items():
        seq = _as_sequence(name, value)
        if seq is None:
            static[name] = value.value if isinstance(value, unmapped) else value
        else:
            sequences[name] = seq
    if not sequences:
        raise MappingMissingIterable(
            f"map of task {task_name!r} got no iterable parameter to map over "
            f"(parameters: {sorted(parameters) or 'none'}); wrap values meant for every "
            "child in unmapped(...)"
        )
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name!r}: {n}" for name, n in lengths.items())
        raise MappingLengthMismatch(
            f"map of task {task_name!r} got iterables of different lengths ({detail})"
        )
    types = set(map(type, static.values()))
    for seq in sequences.values():
        types.update(map(type, seq))
    if len(sequences) == 1:  # the common case, built without a dict per child to merge
        ((name, seq),) = sequences.items()
        if not static:
            return [{name: value} for value in seq], types
        return [{**static, name: value} for value in seq], types
    names = list(sequences)
    rows = zip(*sequences.values(), strict=True)
    return [{**static, **dict(zip(names, values, strict=True))} for values in rows], types
