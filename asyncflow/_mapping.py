"""How ``map`` turns one parameters dict into one parameters dict per child run."""

from __future__ import annotations

import codecs
import io
import itertools
import reprlib
import tempfile
from collections.abc import Iterable, Iterator, Sized
from typing import Any

from ._annotations import allow_failure, quote, unmapped
from ._futures import CANCELLED, COMPLETED, Future, upstream_error
from .exceptions import MappingLengthMismatch, MappingMissingIterable

__all__ = ("MapRows", "expand")

_STATIC = (str, bytes, bytearray, io.IOBase, unmapped, quote)


class _Unsized:
    """The elements of an iterable without a length (a generator, ``itertools.count()``), read
    after the others: as many as the longest of those and one more; or, when none has a
    length, side by side with the other such iterables (as ``zip`` reads them) until one ends
    and each of the others gave one more. So an endless one never runs on (unless all are),
    and a longer one is told apart."""

    __slots__ = ("items",)

    def __init__(self, items: Iterator[Any]) -> None:
        self.items = items


_END: Any = object()


def _side_by_side(iterators: list[Iterator[Any]]) -> list[list[Any]]:
    if len(iterators) == 1:  # the common case: read whole
        return [list(iterators[0])]
    columns: list[list[Any]] = [[] for _ in iterators]
    steps = [(it, column.append) for it, column in zip(iterators, columns, strict=True)]
    ended = False
    while not ended:
        for it, append in steps:
            value = next(it, _END)
            if value is _END:
                ended = True
            else:
                append(value)
    return columns


def _as_sequence(task_name: str, value: Any) -> list[Any] | _Unsized | None:
    """The elements to map over for one parameter, or None when it is passed whole."""
    if isinstance(value, _STATIC):
        return None
    if isinstance(value, allow_failure):
        inner = _as_sequence(task_name, value.value)
        if isinstance(inner, _Unsized):
            return _Unsized(map(allow_failure, inner.items))
        return None if inner is None else [allow_failure(v) for v in inner]
    if isinstance(value, Future):
        # A future whose result is a list: mapping needs its length, so wait for it. On the
        # scheduler's loop thread an unfinished one raises (await it first) instead of hanging.
        return _as_sequence(task_name, _result_to_map(task_name, value))
    if isinstance(value, dict):
        return list(value.keys())
    if isinstance(value, Iterable) and not _file_like(value):
        if not isinstance(value, Sized):
            return _Unsized(iter(value))
        return list(value)
    return None


def _result_to_map(task_name: str, future: Future[Any]) -> Any:
    """The result of ``future``, or what a run of ``task_name`` with it as an input gets when
    it failed or was cancelled (so the error names the map's task and the upstream)."""
    try:
        return future.result()
    except BaseException as exc:
        status = future._status
        if status < COMPLETED or exc is not future._value:  # (not final: a refused wait, say)
            raise
        err = upstream_error(task_name, future, status == CANCELLED)
        raise err from err.__cause__


# File objects that are not an ``io.IOBase``: passed whole, as a file is, not split in lines.
# Named, not guessed from a ``read`` or ``write`` method: a collection may have one and still be
# meant to be mapped over.
_OTHER_FILES = (
    tempfile._TemporaryFileWrapper,  # (what NamedTemporaryFile returns)
    codecs.StreamReader,
    codecs.StreamWriter,
    codecs.StreamReaderWriter,
)


def _file_like(value: object) -> bool:
    return isinstance(value, _OTHER_FILES)


class MapRows:
    """The parameters of a map's children, kept by column: the values passed to every child
    (``static``) and one list of values per mapped parameter (``names``, ``columns``). A
    child's dict is made when asked for: a plain map's runs hold their index here instead of
    a dict each (see ``Future._params``)."""

    __slots__ = ("columns", "names", "static")

    def __init__(self, static: dict[str, Any], names: tuple[str, ...], columns: list[list[Any]]):
        self.static = static
        self.names = names
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def keys(self) -> tuple[str, ...]:
        """The parameter names of every child's dict, in its order."""
        return (*self.static, *self.names)

    def row(self, index: int) -> dict[str, Any]:
        """The parameters dict of child ``index``."""
        names = self.names
        if len(names) == 1 and not self.static:  # the common case
            return {names[0]: self.columns[0][index]}
        mapped = zip(names, self.columns, strict=True)
        return {**self.static, **{name: column[index] for name, column in mapped}}

    def rows(self, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        """The parameters dicts of children ``start`` to ``end``, in order."""
        static = self.static
        if len(self.names) == 1:  # the common case, built without a dict per child to merge
            name = self.names[0]
            column = self.columns[0][start:end]
            if not static:
                return [{name: value} for value in column]
            return [{**static, name: value} for value in column]
        names = self.names
        rows = zip(*(column[start:end] for column in self.columns), strict=True)
        return [{**static, **dict(zip(names, values, strict=True))} for values in rows]


def expand(task_name: str, parameters: dict[str, Any]) -> tuple[MapRows, set[type]]:
    """The parameters of each child, in order (``unmapped``/static values go to every
    child), by column, and the types of all their values (gathered per parameter, in C)."""
    sequences: dict[str, list[Any] | _Unsized] = {}
    static: dict[str, Any] = {}
    for name, value in parameters.items():
        seq = _as_sequence(task_name, value)
        if seq is None:
            static[name] = value.value if isinstance(value, unmapped) else value
        else:
            sequences[name] = seq
    if not sequences:
        resolved = "".join(
            f"; the future given for {name!r} (task {value.task_name!r}) resolved to "
            f"{reprlib.repr(value.result())}, which map does not iterate over"
            for name, value in parameters.items()
            if isinstance(value, Future)
        )
        raise MappingMissingIterable(
            f"map of task {task_name!r} got no iterable parameter to map over "
            f"(parameters: {sorted(parameters) or 'none'}){resolved}; wrap values meant for "
            "every child in unmapped(...)"
        )
    columns = _columns(task_name, sequences)
    types = set(map(type, static.values()))
    for column in columns:
        types.update(map(type, column))
    return MapRows(static, tuple(sequences), columns), types


def _columns(task_name: str, sequences: dict[str, list[Any] | _Unsized]) -> list[list[Any]]:
    """The mapped parameters' elements, checked to be as many for each."""
    known = [len(seq) for seq in sequences.values() if isinstance(seq, list)]
    unsized = [seq.items for seq in sequences.values() if isinstance(seq, _Unsized)]
    if known:
        most = max(known)
        taken = [list(itertools.islice(items, most + 1)) for items in unsized]
    else:
        taken = _side_by_side(unsized)
        most = min(map(len, taken))
    read = iter(taken)
    columns = [seq if isinstance(seq, list) else next(read) for seq in sequences.values()]
    lengths = [f"more than {most}" if len(c) > most else str(len(c)) for c in columns]
    if len(set(lengths)) > 1:
        detail = ", ".join(f"{name!r}: {n}" for name, n in zip(sequences, lengths, strict=True))
        raise MappingLengthMismatch(
            f"map of task {task_name!r} got iterables of different lengths ({detail})"
        )
    return columns
