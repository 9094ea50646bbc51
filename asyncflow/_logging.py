"""Logging: the level of the ``asyncflow`` loggers, and task run loggers that say which run logs.

Records of a body running in a worker process travel back to the parent on the worker's reply
pipe (as ``("log", record dict)``) and are handled there by the logger of the same name, so they
reach the application's handlers like records of thread and coroutine bodies.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

from ._context import current_future, get_run_context

__all__ = ("TASK_RUNS", "apply_log_level", "get_run_logger", "handle_remote_record")

TASK_RUNS = "asyncflow.task_runs"
_PLAIN = (str, int, float, bool, type(None))

_lock = threading.Lock()
_applied: int | None = None  # the level the settings last gave the asyncflow logger
_stderr: logging.Handler | None = None  # added only while logging is not configured at all


def apply_log_level(level: str) -> None:
    """When a runner starts: give the ``asyncflow`` logger the level of the settings, unless
    the application gave it another one. When the application configured no logging at all
    (no handler on the root or ``asyncflow`` logger), add one stderr handler so task run
    records show; it is removed again once the application configures logging."""
    global _applied, _stderr
    value = logging.getLevelName(level)
    assert isinstance(value, int), level  # validated by the settings
    flow_logger = logging.getLogger("asyncflow")
    with _lock:
        if flow_logger.level in (logging.NOTSET, _applied):
            flow_logger.setLevel(value)
            _applied = value
        ours = _stderr is not None and _stderr in flow_logger.handlers
        configured = bool(logging.getLogger().handlers) or any(
            h is not _stderr for h in flow_logger.handlers
        )
        if configured and ours:
            flow_logger.removeHandler(_stderr)  # type: ignore[arg-type]
        elif not configured and not ours:
            if _stderr is None:
                _stderr = logging.StreamHandler()
                _stderr.setFormatter(
                    logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
                )
            flow_logger.addHandler(_stderr)


class TaskRunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The ``asyncflow.task_runs`` logger seen from one run: each record carries ``task_name``
    and ``task_run_id`` (as attributes) and its message starts with ``[task_name run-id]``."""

    def __init__(self, task_name: str, task_run_id: str) -> None:
        super().__init__(
            logging.getLogger(TASK_RUNS), {"task_name": task_name, "task_run_id": task_run_id}
        )
        self._prefix = f"[{task_name} {task_run_id[-8:]}] "  # as _runlog.short_id

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return f"{self._prefix}{msg}", kwargs


def get_run_logger() -> logging.LoggerAdapter[logging.Logger]:
    """A logger for the task body executing here, under ``asyncflow.task_runs``.

    Works in coroutine, thread and process bodies (records of a process body are handled in
    the parent). Outside a task body it raises ``RuntimeError``: use
    ``logging.getLogger("asyncflow")`` there.
    """
    try:
        ctx = get_run_context()
    except RuntimeError:
        raise RuntimeError(
            "get_run_logger() is only available inside a task body; outside one, use "
            'logging.getLogger("asyncflow")'
        ) from None
    if current_future.get() is None:  # in a worker process: records go back to the parent
        _ship_from_worker()
    return TaskRunLogger(ctx.task_name, str(ctx.task_run_id))


# -- worker process side --------------------------------------------------------------------------
class _ShipHandler(logging.Handler):
    """In a worker process: send each record, as a dict of plain values, to the parent."""

    def __init__(self, ship: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._ship = ship

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = dict(record.__dict__)
            data["msg"] = record.getMessage()
            data["args"] = None
            if record.exc_info:
                data["exc_text"] = logging.Formatter().formatException(record.exc_info)
            data["exc_info"] = None
            # Only plain values travel: anything else (an extra object) goes as its repr.
            for key, value in data.items():
                if not isinstance(value, _PLAIN):
                    data[key] = repr(value)
            self._ship(data)
        except Exception:
            self.handleError(record)


def _ship_from_worker() -> None:
    """Once per worker process: ship ``asyncflow`` records to the parent."""
    main = sys.modules.get("__main__")
    ship = getattr(main, "asyncflow_ship_log", None)
    if ship is None:
        return
    flow_logger = logging.getLogger("asyncflow")
    with _lock:
        if any(isinstance(h, _ShipHandler) for h in flow_logger.handlers):
            return
        flow_logger.addHandler(_ShipHandler(ship))
        # The parent's level of task run records when its session started.
        flow_logger.setLevel(getattr(main, "asyncflow_log_level", logging.INFO))
        flow_logger.propagate = False  # handled in the parent, not printed here too


# -- parent side ---------------------------------------------------------------------------------
def handle_remote_record(data: dict[str, Any]) -> None:
    """A record from a worker process: handle it here as if it was logged here."""
    record = logging.makeLogRecord(data)
    target = logging.getLogger(record.name)
    if target.isEnabledFor(record.levelno):
        target.handle(record)
