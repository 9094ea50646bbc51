"""Context variables: which task run is executing, and which runner a block or flow opened."""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ("current_future", "current_runner")

# The future of the task run whose body is executing in this context (None outside task bodies).
current_future: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "asyncflow_current_future", default=None
)
# The runner opened by the innermost ``with``/``async with`` block or flow in this context.
current_runner: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "asyncflow_current_runner", default=None
)
