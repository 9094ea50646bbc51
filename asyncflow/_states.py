"""Task run states: explicit constants, immutable records."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

R = TypeVar("R")

__all__ = ("FINAL_TYPES", "UPSTREAM_FAILED", "State", "StateType")


class StateType(str, enum.Enum):
    """The kind of a state. ``Retrying`` sits between two attempts of the same run."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"

    def __repr__(self) -> str:
        return f"StateType.{self.name}"


FINAL_TYPES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)


UPSTREAM_FAILED = "UpstreamFailed"
"""The name of the Failed state of a run that did not run because an input failed."""


@dataclass(frozen=True, eq=False)
class State(Generic[R]):
    """One state of a task run.

    ``data`` holds the result of a Completed state, or the exception of a Failed, Crashed or
    Cancelled one. ``name`` refines the type: ``"UpstreamFailed"`` is the Failed state of a task
    that did not run because an input failed.
    """

    type: StateType
    name: str
    timestamp: float
    message: str = ""
    data: Any = None

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_retrying(self) -> bool:
        return self.type is StateType.RETRYING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_final(self) -> bool:
        return self.type in FINAL_TYPES

    def result(self, raise_on_failure: bool = True) -> Any:
        """The result of a Completed state; for a failed one, raise (or return) its exception.

        Raises ``ValueError`` for a state that is not final (it has no result yet).
        """
        if self.type is StateType.COMPLETED:
            return self.data
        if not self.is_final():
            raise ValueError(f"a {self.name} state has no result yet")
        if raise_on_failure:
            raise self.data
        return self.data

    def __repr__(self) -> str:
        extra = f", message={self.message!r}" if self.message else ""
        return f"{self.name}(type={self.type!r}{extra})"
