"""The options the runners of clusters (Dask's, Ray's) share: an address, and dicts of keyword
arguments for the cluster's own calls, checked, and frozen for a runner's equality."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ("checked_address", "checked_kwargs", "frozen_kwargs")


def checked_address(owner: str, address: object) -> str | None:
    if address is not None and (not isinstance(address, str) or not address):
        raise TypeError(f"{owner}: address must be a non-empty str, not {address!r}")
    return address


def checked_kwargs(owner: str, name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``value`` (empty for None), a dict of keyword arguments."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{owner}: {name} must be a dict of keyword arguments, not {value!r}")
    return dict(value)


def frozen_kwargs(kwargs: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
