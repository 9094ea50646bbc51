"""Wrappers that change how a parameter is treated: ``unmapped``, ``allow_failure``, ``quote``."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ("BaseAnnotation", "allow_failure", "quote", "unmapped")


class BaseAnnotation(Generic[T]):
    """A transparent box around a parameter value."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unwrap(self) -> T:
        return self.value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value

    def __hash__(self) -> int:
        return hash((type(self), id(self.value)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class unmapped(BaseAnnotation[T]):  # noqa: N801 - public name from the reference API
    """Pass the value whole to every child of a ``map`` instead of iterating over it."""

    __slots__ = ()

    def __getitem__(self, _index: object) -> T:
        return self.value


class allow_failure(BaseAnnotation[T]):  # noqa: N801 - public name from the reference API
    """Run the downstream task even if this upstream failed or crashed.

    The upstream's exception object is passed as the value. Cancellation still cascades.
    """

    __slots__ = ()


class quote(BaseAnnotation[T]):  # noqa: N801 - public name from the reference API
    """Pass the value untouched: futures inside it are not searched or resolved."""

    __slots__ = ()
