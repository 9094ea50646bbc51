"""The Ray backend: each work item (a run, or an attempt of one) becomes one Ray task.

Bodies go to the cluster only when one of its CPUs is free for them (the cluster's CPU count,
read again at most once a second while bodies wait), so a body sent is a body running: its
run is Running and its timeout counts from then, and a run cancelled before that never
reaches the cluster. Unlike Dask, Ray can stop a body: a cancel or a timeout kills the worker
process running it (``ray.cancel(force=True)``; a gentler cancel only raises
``KeyboardInterrupt`` in the body, which a blocking call such as ``time.sleep`` does not see).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._error_text import error_text
from ._futures import COMPLETED, cancelled_error
from ._loop import to_its_end
from ._ray_connection import Lease, connect
from ._remote import carried, context_fields, guarded, run_key, send_error, task_of
from .exceptions import RemoteTraceback, TaskCrashedError, WorkerCrashedError

if TYPE_CHECKING:
    from ._ray import RayTaskRunner
    from ._scheduler import Scheduler

__all__ = ("RayWorkers",)

_RECOUNT = 1.0  # seconds: how long the cluster's CPU count is trusted while bodies wait


class RayWorkers:
    """The backend of ``RayTaskRunner`` (see the module's docstring)."""

    runs_coroutines = True  # coroutine bodies go to the cluster too

    def __init__(self, sched: Scheduler, runner: RayTaskRunner) -> None:
        self._sched = sched
        self._runner = runner
        self._lease: Lease | None = None
        self._remote: Any = None  # the one Ray remote function every body goes through
        self._queue: deque[Any] = deque()  # items waiting for a free CPU
        # item -> its Ray object reference and the asyncio task awaiting it
        self._sent: dict[Any, tuple[Any, asyncio.Task[None]]] = {}
        self._stopped: set[Any] = set()  # items whose worker this backend had killed
        self._held = False
        self._cpus = 1
        self._counted_at = float("-inf")
        self._worker = "ray"

    async def start(self) -> None:
        """Connect to Ray (once, before any submit). A connection made is kept before it is
        awaited, so that ``aclose`` releases it whatever happens next; it is awaited to its
        end even if cancelled meanwhile (the cancellation then raised after)."""
        import ray

        runner = self._runner
        self._lease, ready = connect(runner._address, runner._init_kwargs)
        made, cancelled = await to_its_end(asyncio.wrap_future(ready))
        if cancelled is not None:
            if not made.cancelled():
                made.exception()  # seen to: the cancellation is what the caller gets
            raise cancelled
        made.result()
        self._remote = ray.remote(_caller())
        self._recount()
        self._worker = f"ray {ray.get_runtime_context().gcs_address}"

    # -- sending -----------------------------------------------------------------------------
    def submit(self, item: Any) -> None:
        self._queue.append(item)
        self._pump()

    def submit_many(self, items: list[Any]) -> None:
        self._queue.extend(items)
        self._pump()

    def _recount(self) -> None:
        import ray

        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        self._cpus = max(1, int(resources.get("CPU", 0)))
        self._counted_at = self._sched.loop.time()

    def _pump(self) -> None:
        if self._held or self._remote is None:
            return
        queue, sent = self._queue, self._sent
        if (
            queue
            and len(sent) >= self._cpus
            and self._sched.loop.time() - self._counted_at > _RECOUNT
        ):
            self._recount()  # nodes may have joined or left
        free = self._cpus - len(sent)
        while free > 0 and queue:
            item = queue.popleft()
            if item._status >= COMPLETED:  # cancelled while it waited here: never sent
                self._report_soon(item, False, cancelled_error(task_of(item).name))
            elif self._send(item):
                free -= 1

    def _send(self, item: Any) -> bool:
        sched = self._sched
        try:
            task, params = sched.call_parts(item)
            args, kwargs = task.spec.split(params)
        except BaseException as exc:  # its inputs could not be resolved
            self._report_soon(item, False, exc)
            return False
        call = guarded(task.fn, args, kwargs, task.is_async, context_fields(item, task))
        try:
            ref = self._remote.options(
                name=run_key(item, task), num_cpus=1, max_retries=0, retry_exceptions=False
            ).remote(call, task.is_async)
        except Exception as exc:  # it cannot be pickled, or Ray is gone
            self._report_soon(item, False, send_error(task, args, kwargs, exc, "the Ray cluster"))
            return False
        sched.mark_running(item, self._worker)
        self._sent[item] = (ref, sched.loop.create_task(self._wait(item, task.name, ref)))
        return True

    def _report_soon(self, item: Any, ok: bool, value: Any) -> None:
        self._sched.loop.call_soon(self._sched.on_outcome, item, ok, value)

    async def _wait(self, item: Any, task_name: str, ref: Any) -> None:
        crashed = False
        try:
            value = await ref
            ok = True
        except asyncio.CancelledError:  # only this backend cancels this task (see aclose)
            return
        except Exception as exc:
            ok, value, crashed = _failure(task_name, exc, item in self._stopped)
        self._sent.pop(item, None)
        self._stopped.discard(item)
        self._sched.on_outcome(item, ok, value, crashed)
        self._pump()

    # -- the scheduler's other calls -----------------------------------------------------------
    def interrupt(self, item: Any) -> bool:
        """Stop ``item``'s body now: Ray kills its worker process. True: it will not run on."""
        if item in self._sent:
            import ray

            self._stopped.add(item)
            ray.cancel(self._sent[item][0], force=True)
        return True  # (else queued here: it is dropped when its turn comes)

    def hold(self, on: bool) -> None:
        self._held = on
        if not on:
            self._pump()

    def abandon(self) -> None:
        """Nothing to abandon: a body this backend stops is stopped for real."""

    async def aclose(self, abandon: bool = False) -> None:
        # Every run is final by now; bodies still sent are ones just stopped: their outcomes
        # are on their way. Waited for, so that no worker this session killed is left running.
        waits = [wait for _ref, wait in self._sent.values()]
        if waits and not abandon:
            await asyncio.wait(waits)
        for ref, wait in self._sent.values():
            wait.cancel()
            if not abandon:
                continue
            import ray

            ray.cancel(ref, force=True)
        if waits:
            await asyncio.wait(waits)
        self._sent.clear()
        self._queue.clear()  # (every run is final by now: none of these will be sent)
        lease, self._lease = self._lease, None
        self._remote = None
        if lease is not None:
            await asyncio.wrap_future(lease.release())


def _caller() -> Callable[[Callable[[], Any], bool], Any]:
    """The Ray remote function every body goes through: a local function, so Ray sends it by
    value (a worker needs no asyncflow). A coroutine body runs on a loop of its own: Ray runs
    no coroutine function as a task."""

    def call(run: Callable[[], Any], is_async: bool) -> Any:
        if is_async:
            import asyncio

            return asyncio.run(run())
        return run()

    return call


def _failure(task_name: str, exc: Exception, stopped: bool) -> tuple[bool, Any, bool]:
    """A Ray task's error as the run's outcome: (ok, value, crashed)."""
    from ray import exceptions as ray_errors

    if isinstance(exc, ray_errors.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        if not isinstance(cause, ray_errors.RayError):  # the body's own error, or its mark
            inner = carried(cause)
            if inner is not None:
                return False, inner, False
            # Its traceback there, as Ray wrote it, is its cause (as for worker processes; the
            # cause it had there did not travel). Past the class's own __setattr__: a frozen
            # dataclass's refuses every attribute.
            object.__setattr__(cause, "__cause__", RemoteTraceback(str(exc)))
            return False, cause, False
        exc = cause  # Ray's, on the worker: its call could not be loaded there, say
    if stopped:  # (killed by interrupt: the run is final already, this is not seen)
        return False, cancelled_error(task_name), False
    if isinstance(exc, ray_errors.WorkerCrashedError):
        error: TaskCrashedError = WorkerCrashedError(
            f"task {task_name!r} crashed: its Ray worker died while running it ({exc})",
            pid=0,
            exitcode=None,
            stderr_tail="",
        )
    elif isinstance(exc, ray_errors.TaskCancelledError):
        error = TaskCrashedError(f"task {task_name!r} crashed: the Ray cluster cancelled it")
    else:
        error = TaskCrashedError(
            f"task {task_name!r} crashed: Ray could not run it ({error_text(exc)})"
        )
    error.__cause__ = exc
    return False, error, True
