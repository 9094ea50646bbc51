"""Context variables: which task run is executing, and which runner a block or flow opened."""

from __future__ import annotations

import contextvars
import sys
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = ("RunContext", "current_attempt", "current_future", "current_runner", "get_run_context")

# The future of the task run whose body is executing in this context (None outside task bodies).
current_future: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "asyncflow_current_future", default=None
)
# The runner opened by the innermost ``with``/``async with`` block or flow in this context.
current_runner: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "asyncflow_current_runner", default=None
)

# The attempt number (1, 2, ...) of the run whose body executes in this context.
current_attempt: contextvars.ContextVar[int] = contextvars.ContextVar(
    "asyncflow_current_attempt", default=1
)


# The run context of a body running on a cluster worker (a Dask task), set around the body by
# what the runner sent: no future of this process runs there.
remote_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "asyncflow_remote_run", default=None
)


def enter_remote_run(
    name: str, run_id: int, attempt: int, tags: tuple[str, ...], key: str
) -> tuple[contextvars.Token[Any], ...]:
    """On a cluster worker, around a body: its run context (see ``remote_run``), and no run or
    runner of this process (a worker in this very process, an in-process cluster, runs its
    bodies in a copy of the context the cluster was started in, maybe another run's)."""
    context = RunContext(name, uuid.UUID(int=run_id), attempt, frozenset(tags), key)
    return (remote_run.set(context), current_future.set(None), current_runner.set(None))


def leave_remote_run(tokens: tuple[contextvars.Token[Any], ...]) -> None:
    remote, fut, runner = tokens
    current_runner.reset(runner)
    current_future.reset(fut)
    remote_run.reset(remote)


@dataclass(frozen=True)
class RunContext:
    """What a task body can know about its own run."""

    task_name: str
    task_run_id: uuid.UUID
    attempt: int
    tags: frozenset[str]
    task_key: str  # module and qualified name of the task's function


def get_run_context() -> RunContext:
    """The run context of the task body executing here; ``RuntimeError`` outside task bodies."""
    fut = current_future.get()
    if fut is None:
        remote = remote_run.get()
        if remote is not None:  # a body running on a cluster worker
            return remote
        worker = sys.modules.get("__main__")
        call = getattr(worker, "asyncflow_run_context", None)
        if callable(call):  # (in a batch: the context of the call that runs now)
            call = call()
        if call is not None:  # a body running in a process worker
            name, tags, key = worker.asyncflow_run_task  # type: ignore[union-attr]
            run_number, attempt = (call, 1) if type(call) is int else call
            # The same UUID the run's future makes from this number (Future.task_run_id).
            run_id = uuid.UUID(int=run_number, version=4)
            return RunContext(name, run_id, attempt, tags, key)
        raise RuntimeError("get_run_context() is only available inside a task body")
    task = fut._task
    return RunContext(task.name, fut.task_run_id, current_attempt.get(), task.tags, task.key)
