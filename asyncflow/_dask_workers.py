"""The Dask backend: each work item (a run, or an attempt of one) becomes one Dask task.

Bodies go to the cluster only when one of its worker threads is free for them (the cluster's
thread count, as its scheduler last told the client), so a body sent is a body running: its
run is Running and its timeout counts from then, and a run cancelled before that never reaches
the cluster. A body sent cannot be stopped (Dask cannot interrupt a worker thread): a run
cancelled or timed out then keeps its slot until its body returns, as a thread body does.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._error_text import error_text
from ._loop import to_its_end
from ._remote import ClusterBackend, carried, run_key
from ._threads import LeftRunning
from .exceptions import TaskCrashedError, WorkerCrashedError

if TYPE_CHECKING:
    from ._dask import DaskTaskRunner
    from ._scheduler import Scheduler

__all__ = ("DaskWorkers",)

logger = logging.getLogger("asyncflow")

_OWNER = "DaskTaskRunner"


class DaskWorkers(ClusterBackend):
    """The backend of ``DaskTaskRunner`` (see the module's docstring)."""

    _to = "the Dask cluster"

    def __init__(self, sched: Scheduler, runner: DaskTaskRunner) -> None:
        super().__init__(sched)
        self._runner = runner
        self._client: Any = None  # a distributed.Client once started (untyped there)
        self._cluster: Any = None
        self._left = LeftRunning()  # bodies sent whose runs ended: waited for at close
        self._adaptive = False
        self._worker = "dask"

    async def start(self) -> None:
        """Connect to the cluster, or start one (once, before any submit). On failure, or if
        cancelled meanwhile, what was opened is closed by ``aclose``."""
        import distributed

        runner = self._runner
        target: Any = runner._address
        if target is None:
            cls = _cluster_class(runner._cluster_class)
            # Kept before it is awaited, so that aclose closes it whatever happens next.
            self._cluster = cls(**runner._cluster_kwargs, asynchronous=True)
            await _started_whole(self._cluster)
            if runner._adapt_kwargs is not None:
                self._cluster.adapt(**runner._adapt_kwargs)
                # It grows for the work its scheduler sees: send it all (see _threads).
                self._adaptive = True
            target = self._cluster
        client_class: Any = distributed.Client
        client = client_class(target, asynchronous=True, **runner._client_kwargs)
        try:
            await client
        except BaseException:
            with contextlib.suppress(Exception):  # (it never connected: nothing to say)
                await client.close()
            raise
        self._client = client
        self._worker = f"dask {client.scheduler.address}"
        scheduler_kwargs = runner._cluster_kwargs.get("scheduler_kwargs") or {}
        if runner._address is None and "allowed_failures" not in scheduler_kwargs:
            # Crash retries are the task's (opt-in), not Dask's three silent ones: a body that
            # kills its worker fails its run at once. Set on the started cluster's scheduler,
            # wherever it runs, before any task (not in Dask's config: that is the whole
            # process's, and another cluster starting meanwhile would share the change).
            try:
                await client.run_on_scheduler(_no_crash_retries())
            except Exception as exc:  # (a scheduler that runs no code it is sent, say)
                logger.warning(
                    "DaskTaskRunner: could not turn Dask's crash retries off on the cluster "
                    "it started (%s): a body that kills its worker may be run again",
                    error_text(exc),
                )

    # -- sending -----------------------------------------------------------------------------
    def _threads(self) -> int:
        """How many bodies may be on the cluster at once: its worker threads, as its scheduler
        last told the client (the client asks every few seconds), at least 1. Unbounded for a
        cluster this runner adapts: Dask grows it for the work its scheduler sees waiting, so
        that work waits there (a body sent may then wait in Dask's queue, counted as Running,
        its timeout too; cancelled there, it still runs, and its result is dropped)."""
        if self._adaptive:
            return len(self._sent) + len(self._queue)
        info = self._client.scheduler_info()
        return max(1, int(info.get("total_threads") or 0))

    def _pump(self) -> None:
        if self._held or self._client is None:
            return
        queue = self._queue
        free = self._threads() - len(self._sent)
        while free > 0:
            self._drop_final()
            if not queue:
                return
            if self._send(queue.popleft()):
                free -= 1

    def _submit_call(self, call: Callable[[], Any], item: Any, task: Any) -> Any:
        return self._client.submit(call, key=run_key(item, task), pure=False)

    def _failure(self, item: Any, task_name: str, exc: Exception) -> tuple[bool, Any, bool]:
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            return False, _worker_died(task_name, exc), True
        if isinstance(exc, FutureCancelledError):  # not by this runner: it never cancels one
            error = TaskCrashedError(
                f"task {task_name!r} crashed: the Dask cluster dropped its run ({exc})"
            )
            error.__cause__ = exc
            return False, error, True
        # The body's own error, raised again here; or marked, what the body raised (a
        # BaseException makes the run Crashed).
        mark = carried(exc)
        return False, exc if mark is None else mark[0], False

    def _ended(self, item: Any) -> None:
        if not self._sent:
            self._left.wake()

    # -- the scheduler's other calls -----------------------------------------------------------
    def interrupt(self, item: Any) -> bool:
        """A body sent to the cluster cannot be stopped (a worker thread, or a coroutine Dask
        runs to its end): it keeps its slot until it returns; its outcome is then dropped."""
        return False

    def abandon(self) -> None:
        self._left.abandon()

    async def aclose(self, abandon: bool = False) -> None:
        # Bodies of runs that were cancelled or timed out may still run: wait for them, as for
        # threads, unless told to abandon them (Ctrl-C).
        await self._left.wait(lambda: self._sent, abandon)
        waits = [wait for _future, wait in self._sent.values()]
        for future, wait in self._sent.values():
            wait.cancel()
            future.release()
        if waits:
            await asyncio.wait(waits)
        self._sent.clear()
        self._queue.clear()  # (every run is final by now: none of these will be sent)
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.close()
        finally:
            await self._close_cluster()

    async def _close_cluster(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is None:
            return
        if self._left.abandoned:
            await _stop_in_process_workers(cluster)
        await cluster.close()


def _no_crash_retries() -> Callable[[Any], None]:
    """What ``Client.run_on_scheduler`` runs on the cluster's scheduler: a local function, so
    Dask sends it by value (the scheduler's process needs no asyncflow)."""

    def no_crash_retries(dask_scheduler: Any) -> None:
        dask_scheduler.allowed_failures = 0

    return no_crash_retries


async def _started_whole(cluster: Any) -> None:
    """Start ``cluster`` to the end, even when cancelled meanwhile (then cancelled after, the
    cancellation taking the place of any error of the start): Dask cannot close a cluster whose
    start was cancelled halfway (its workers go on), and one that started is closed by the
    caller's clean-up."""

    async def start() -> None:
        await cluster

    started, cancelled = await to_its_end(start())
    if cancelled is not None:
        if not started.cancelled():
            started.exception()  # seen to: the cancellation is what the caller gets
        raise cancelled
    started.result()


async def _stop_in_process_workers(cluster: Any) -> None:
    """Ctrl-C: stop the workers that are threads of this process without waiting for a body
    still in one of their threads (it cannot be stopped, and ends with the process: Dask's
    worker threads are daemon threads). A worker process is stopped with its process."""
    import distributed

    workers = getattr(cluster, "workers", {})
    for worker in list(workers.values()):
        if isinstance(worker, distributed.Worker):
            with contextlib.suppress(Exception):
                await worker.close(executor_wait=False, reason="asyncflow-abandon")


def _cluster_class(spec: type[Any] | str | None) -> Any:
    if spec is None:
        import distributed

        return distributed.LocalCluster
    if not isinstance(spec, str):
        return spec
    module, _, name = spec.rpartition(".")
    if not module:
        raise ValueError(f"{_OWNER}: cluster_class {spec!r} is not a dotted name (module.Class)")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{_OWNER}: cannot import cluster_class {spec!r}: {exc}") from exc


def _worker_died(task_name: str, exc: BaseException) -> TaskCrashedError:
    """A ``KilledWorker``: the worker running the body died. With several threads per worker,
    every run the worker was running is blamed (Dask cannot tell which body killed it)."""
    worker = getattr(exc, "last_worker", None)
    pid = getattr(worker, "pid", None)
    address = getattr(worker, "address", None) or "a Dask worker"
    error = WorkerCrashedError(
        f"task {task_name!r} crashed: its Dask worker {address} died while running it",
        pid=pid if isinstance(pid, int) else 0,
        exitcode=None,
        stderr_tail="",
    )
    error.__cause__ = exc
    return error
