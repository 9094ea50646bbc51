"""The Ray backend: each work item (a run, or an attempt of one) becomes one Ray task.

Bodies go to the cluster only when one of its CPUs is free for them, so a body sent is a body
running: its run is Running and its timeout counts from then, and a run cancelled before that
never reaches the cluster. The CPUs are counted for the whole process (``_CPUS``): Ray allows
one connection per process, so the sessions sharing it fill one cluster. Unlike Dask, Ray can
stop a body: a cancel or a timeout kills the worker process running it
(``ray.cancel(force=True)``; a gentler cancel only raises ``KeyboardInterrupt`` in the body,
which a blocking call such as ``time.sleep`` does not see).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._error_text import error_text
from ._futures import cancelled_error
from ._ray_connection import Lease, connect
from ._remote import MARK, ClusterBackend, carried, run_key
from .exceptions import (
    SerializationError,
    TaskCrashedError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from ._ray import RayTaskRunner
    from ._scheduler import Scheduler

__all__ = ("RayWorkers",)

_RECOUNT = 1.0  # seconds: how long the cluster's CPU count is trusted while bodies wait


class _Cpus:
    """The cluster's CPUs that this process's bodies fill, and the sessions waiting for one,
    served in the order they began to wait (a session that just gave one back does not take it
    again before a session that waited)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._counted_at = float("-inf")
        self._held: dict[RayWorkers, int] = {}  # backend -> CPUs its bodies use
        self._waiting: dict[RayWorkers, None] = {}  # in the order they began to wait

    def recount(self) -> None:
        """Ask the cluster how many CPUs it has (nodes may have joined or left)."""
        import ray

        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        with self._lock:
            self._total = max(1, int(resources.get("CPU", 0)))
            self._counted_at = time.monotonic()

    def take(self, backend: RayWorkers) -> bool:
        """One CPU for ``backend``'s next body, if one is free and no session waited longer;
        else it waits in line, and is woken when a CPU is given back. A session that takes one
        while more are free wakes the next in line (several may come back at once); one
        refused while a CPU is free wakes the session ahead of it."""
        if time.monotonic() - self._counted_at > _RECOUNT and self._busy() >= self._total:
            with contextlib.suppress(Exception):  # (Ray gone: the runs sent will say so)
                self.recount()
        with self._lock:
            first = next(iter(self._waiting), backend)
            free = self._busy() < self._total
            taken = free and first is backend
            if taken:
                self._held[backend] = self._held.get(backend, 0) + 1
                self._waiting.pop(backend, None)
                free = self._busy() < self._total
                first = next(iter(self._waiting), backend)
            else:
                self._waiting.setdefault(backend, None)
        if free and first is not backend:
            first.wake()
        return taken

    def _busy(self) -> int:
        return sum(self._held.values())

    def give_back(self, backend: RayWorkers) -> None:
        with self._lock:
            if backend not in self._held:  # (forgotten meanwhile: given back with the rest)
                return
            left = self._held[backend] - 1
            if left:
                self._held[backend] = left
            else:
                del self._held[backend]
            first = next(iter(self._waiting), None)
        if first is not None and first is not backend:
            first.wake()

    def leave_line(self, backend: RayWorkers) -> None:
        """``backend`` has nothing left to send: it waits no more (were it first in line, the
        CPU given back for it would wait for it for ever)."""
        with self._lock:
            if backend not in self._waiting:
                return
            was_first = next(iter(self._waiting)) is backend
            del self._waiting[backend]
            first = next(iter(self._waiting), None)
            free = self._busy() < self._total
        if first is not None and was_first and free:
            first.wake()

    def forget(self, backend: RayWorkers) -> None:
        """``backend`` waits no more, and gives back every CPU it still counts (its session
        ends, even cut short)."""
        with self._lock:
            was_first = next(iter(self._waiting), None) is backend
            self._waiting.pop(backend, None)
            freed = self._held.pop(backend, 0)
            first = next(iter(self._waiting), None)
        if first is not None and (was_first or freed):
            first.wake()


_CPUS = _Cpus()


class RayWorkers(ClusterBackend):
    """The backend of ``RayTaskRunner`` (see the module's docstring)."""

    _to = "the Ray cluster"
    _carry_all = True  # (see _caller)

    def __init__(self, sched: Scheduler, runner: RayTaskRunner) -> None:
        super().__init__(sched)
        self._runner = runner
        self._lease: Lease | None = None
        self._ready = False  # the connection is made
        self._remote: Any = None  # the one Ray remote function every body goes through
        self._stopped: set[Any] = set()  # items whose worker this backend had killed
        self._look_again: asyncio.TimerHandle | None = None
        self._letting_go = threading.Lock()
        self._worker = "ray"

    async def start(self) -> None:
        """Connect to Ray (once, before any submit). The lease is kept before the connection is
        awaited, so that ``aclose`` releases it whatever happens next. A cancel stops the wait
        at once (a wrong address makes Ray try for minutes): the connection's own thread
        then disconnects once it is made."""
        runner = self._runner
        self._lease, ready = connect(runner._address, runner._init_kwargs)
        await asyncio.wrap_future(ready)
        self._ready = True
        import ray  # (imported by now, by the connection's thread)

        self._remote = ray.remote(_caller())
        _CPUS.recount()
        self._worker = f"ray {ray.get_runtime_context().gcs_address}"

    # -- sending -----------------------------------------------------------------------------
    def wake(self) -> None:
        """(Any thread.) A CPU was given back: look again."""
        with contextlib.suppress(RuntimeError):  # (this session's loop is closed)
            self._sched.loop.call_soon_threadsafe(self._pump)

    def _pump(self) -> None:
        if self._held or self._remote is None:
            return
        queue = self._queue
        while True:
            self._drop_final()
            if not queue:
                _CPUS.leave_line(self)
                return
            if not _CPUS.take(self):
                # Woken when one is given back; look again meanwhile for nodes that joined.
                if self._look_again is None:
                    self._look_again = self._sched.loop.call_later(_RECOUNT, self._again)
                return
            if not self._send(queue.popleft()):
                _CPUS.give_back(self)

    def _again(self) -> None:
        self._look_again = None
        self._pump()

    def _submit_call(self, call: Callable[[], Any], item: Any, task: Any) -> Any:
        options = {"num_cpus": 1, "max_retries": 0, "retry_exceptions": False}
        return self._remote.options(name=run_key(item, task), **options).remote(call, task.is_async)

    def _send_failure(
        self, task: Any, args: Sequence[Any], kwargs: dict[str, Any], exc: Exception
    ) -> tuple[Exception, bool]:
        from ray import exceptions as ray_errors

        if isinstance(exc, ray_errors.RayError):  # Ray is gone
            error = TaskCrashedError(
                f"task {task.name!r} crashed: Ray did not take it ({error_text(exc)})"
            )
            error.__cause__ = exc
            return error, True
        return super()._send_failure(task, args, kwargs, exc)

    def _failure(self, item: Any, task_name: str, exc: Exception) -> tuple[bool, Any, bool]:
        return _failure(task_name, exc, item in self._stopped)

    def _ended(self, item: Any) -> None:
        self._stopped.discard(item)
        _CPUS.give_back(self)

    # -- the scheduler's other calls -----------------------------------------------------------
    def interrupt(self, item: Any) -> bool:
        """Stop ``item``'s body now: Ray kills its worker process. True: it will not run on."""
        if item in self._sent:
            import ray

            self._stopped.add(item)
            ray.cancel(self._sent[item][0], force=True)
        return True  # (else queued here: it is dropped when its turn comes)

    def abandon(self) -> None:
        """Nothing to abandon: a body this backend stops is stopped for real."""

    async def aclose(self, abandon: bool = False) -> None:
        try:
            if self._look_again is not None:
                self._look_again.cancel()
            # Every run is final by now; bodies still sent are ones just stopped: their
            # outcomes are on their way. Waited for, so that no worker this session killed is
            # left running.
            waits = [wait for _ref, wait in self._sent.values()]
            if waits and not abandon:
                await asyncio.wait(waits)
            for ref, wait in self._sent.values():
                wait.cancel()  # (its bookkeeping is done as it ends)
                if abandon:
                    import ray

                    with contextlib.suppress(Exception):  # (Ray gone: nothing runs there)
                        ray.cancel(ref, force=True)
            if waits:
                await asyncio.wait(waits)
        except BaseException:
            self.detach()  # (what it holds is given back all the same)
            raise
        self._queue.clear()  # (every run is final by now: none of these will be sent)
        self._remote = None
        lease = self._let_go()
        if lease is not None:
            closed = lease.release()
            if self._ready or not abandon:  # (else a start given up: its thread ends alone)
                await asyncio.wrap_future(closed)
                lease.join()

    def detach(self) -> None:
        """(Any thread, once the loop no longer runs.) Give back what this session still holds
        when its close was cut short (a second Ctrl-C stops the loop under it): else its CPUs
        stay counted and its lease keeps the connection, and later sessions wait for ever."""
        lease = self._let_go()
        if lease is not None:
            lease.release()

    def _let_go(self) -> Lease | None:
        """Its CPUs and its place in line given back; its lease, to release (once: a close cut
        short may still run on the loop's thread while ``detach`` runs on another)."""
        with self._letting_go:
            self._sent.clear()
            _CPUS.forget(self)
            lease, self._lease = self._lease, None
        return lease


def _caller() -> Callable[[Callable[[], Any], bool], Any]:
    """The Ray remote function every body goes through: a local function, so Ray sends it by
    value (a worker needs no asyncflow). A coroutine body runs on a loop of its own: Ray runs no
    coroutine function as a task. What the body raised (``guarded``'s mark) goes back pickled
    here, with its type's name, its message and its traceback's text, so that one that does
    not load in this process still says what it was."""
    marker = MARK

    def call(run: Callable[[], Any], is_async: bool) -> Any:
        import asyncio

        try:
            return asyncio.run(run()) if is_async else run()
        except RuntimeError as exc:
            if len(exc.args) != 3 or exc.args[0] != marker:  # noqa: PLR2004
                raise
            raised, text = exc.args[1], exc.args[2]
        from ray import cloudpickle

        pickler: Any = cloudpickle  # (untyped)
        try:
            data: bytes | None = pickler.dumps(raised)
        except Exception:
            data = None
        try:
            message = str(raised)
        except Exception:
            message = "(its message could not be read)"
        raise RuntimeError(marker, data, type(raised).__qualname__, message, text)

    return call


def _failure(task_name: str, exc: Exception, stopped: bool) -> tuple[bool, Any, bool]:
    """A Ray task's error as the run's outcome: (ok, value, crashed)."""
    from ray import exceptions as ray_errors

    from ._processes import _loaded_error

    if isinstance(exc, ray_errors.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        mark = carried(cause)
        if mark is not None:  # what the body raised
            return (False, _loaded_error(*mark), False)
        if isinstance(cause, ray_errors.RaySystemError):
            error: Exception = SerializationError(
                f"task {task_name!r}: its call cannot be loaded on the Ray worker "
                f"({error_text(cause)})",
                "arguments",
            )
        elif isinstance(cause, ray_errors.RayError):
            error = TaskCrashedError(
                f"task {task_name!r} crashed: Ray could not run it ({error_text(cause)})"
            )
            error.__cause__ = exc
            return False, error, True
        else:  # raised on the worker, around the body: storing its result
            error = SerializationError(
                f"task {task_name!r}: its result cannot be sent back from the Ray worker "
                f"({error_text(cause)})",
                "result",
            )
        error.__cause__ = exc
        return False, error, False
    if stopped:  # (killed by interrupt: the run is final already, this is not seen)
        return False, cancelled_error(task_name), False
    if isinstance(exc, ray_errors.RaySystemError):  # the result, sent back, does not load here
        error = SerializationError(
            f"task {task_name!r}: its result cannot be loaded here ({error_text(exc)})", "result"
        )
        error.__cause__ = exc
        return False, error, False
    if isinstance(exc, ray_errors.WorkerCrashedError):
        error = WorkerCrashedError(
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
