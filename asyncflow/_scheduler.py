"""The scheduler: lives on one event loop and is the only code that changes the graph.

Submissions from other threads go through a small inbox and one wake-up of the loop per batch.
Coroutine bodies run as tasks on the loop; sync bodies go to a backend (worker threads now,
processes or clusters later), which reports outcomes back on the loop. A finished run is
forgotten at once: the graph and the live set only hold runs that have not finished.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._context import current_future
from ._futures import (
    CANCELLED,
    COMPLETED,
    CRASHED,
    FAILED,
    RUNNING,
    Future,
    cancelled_error,
    crashed_error,
)
from ._graph import Graph, Outcome
from ._params import resolve_parameters
from .exceptions import UpstreamFailedError

__all__ = ("Backend", "Scheduler")

# Indexed by status code (only final ones are used).
_OUTCOMES = (
    Outcome.COMPLETED,
    Outcome.COMPLETED,
    Outcome.COMPLETED,
    Outcome.COMPLETED,
    Outcome.FAILED,
    Outcome.CANCELLED,
    Outcome.FAILED,
)
assert (COMPLETED, FAILED, CANCELLED, CRASHED) == (3, 4, 5, 6)


class Backend(Protocol):
    """Where sync task bodies run. It knows nothing of graphs or futures' meaning: it calls
    ``scheduler.call_sync(item)`` somewhere and reports ``scheduler.on_outcome(item, ok, value)``
    on the scheduler's loop. Items already done when their turn comes are dropped."""

    def submit(self, item: Future[Any]) -> None: ...

    async def aclose(self) -> None: ...


def call_sync(fut: Future[Any]) -> Any:
    """Run one sync body; called in a worker, inside the run's own context copy."""
    current_future.set(fut)
    task = fut._task
    params = fut._params
    if params is None:  # cancelled before a worker picked it up; the outcome is ignored
        raise cancelled_error(task.name)
    deps = fut._deps
    if deps is not None:
        params = resolve_parameters(params, deps)
    return task.spec.call(task.fn, params)


class Scheduler:
    """One runner session's scheduler. Create it on the loop thread it will live on."""

    def __init__(self, runner: Any, backend_factory: Callable[[Scheduler], Backend]) -> None:
        self.runner = runner
        self.loop = asyncio.get_running_loop()
        self.thread_id = threading.get_ident()
        self._graph: Graph[Future[Any]] = Graph()
        self._live: set[Future[Any]] = set()
        self._external: set[Future[Any]] = set()
        self._lock = threading.Lock()  # guards the inbox hand-over from other threads only
        self._inbox: list[Future[Any]] = []
        self._inbox_scheduled = False
        self._accepting = True
        self._idle: asyncio.Event | None = None
        self._backend = backend_factory(self)

    # -- from any thread ---------------------------------------------------------------------
    def submit(self, fut: Future[Any]) -> None:
        if threading.get_ident() == self.thread_id:
            if not self._accepting:
                raise RuntimeError(f"runner {self.runner.name!r} is closed")
            if self._inbox:
                self._drain_inbox()  # keep submission order across threads
            self._register(fut)
            return
        with self._lock:
            if not self._accepting:
                raise RuntimeError(f"runner {self.runner.name!r} is closed")
            self._inbox.append(fut)
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        self._call_soon(self._drain_inbox)

    def request_cancel(self, fut: Future[Any]) -> None:
        if threading.get_ident() == self.thread_id:
            self._cancel(fut)
        else:
            self._call_soon(self._cancel, fut)

    def cancel_all(self) -> None:
        if threading.get_ident() == self.thread_id:
            self._cancel_all()
        else:
            self._call_soon(self._cancel_all)

    def _call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the runner is gone, nothing left to do
            pass

    @property
    def live_count(self) -> int:
        """Runs submitted and not final (including ones still in the inbox)."""
        return len(self._live) + len(self._inbox)

    @property
    def graph_size(self) -> int:
        return len(self._graph)

    # -- on the loop thread ------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        with self._lock:
            self._inbox_scheduled = False
            items = self._inbox
            if not items:
                return
            self._inbox = []
        for fut in items:
            self._register(fut)

    def _register(self, fut: Future[Any]) -> None:
        self._live.add(fut)
        deps = fut._deps
        if deps is not None:
            edges: list[Future[Any]] | None = deps
            for up in deps:
                if up._status >= COMPLETED or up._scheduler is not self:
                    edges = self._edges_slow(fut, deps)
                    break
            if edges is None:  # an input already failed or was cancelled
                return
            if edges and not self._graph.add_edges(fut, edges, fut._allowed):
                return
        self._start(fut)

    def _edges_slow(self, fut: Future[Any], deps: list[Future[Any]]) -> list[Future[Any]] | None:
        """Edges of ``fut`` when some inputs are final or belong to another runner."""
        allowed = fut._allowed or ()
        edges = []
        for up in deps:
            status = up._status
            if status >= COMPLETED:
                if status == COMPLETED or (status != CANCELLED and up in allowed):
                    continue  # its value is there already
                kind = Outcome.CANCELLED if status == CANCELLED else Outcome.FAILED
                self._skip(fut, up, kind)
                self._check_idle()
                return None
            if up._scheduler is not self:
                self._watch_external(up)
            edges.append(up)
        return edges

    def _start(self, fut: Future[Any]) -> None:
        if fut._task.is_async:
            fut._handle = _create_task(self.loop, self._run_async(fut), fut._ctx)
        else:
            self._backend.submit(fut)

    def mark_running(self, fut: Future[Any]) -> None:
        """Backend hook: a worker took this run."""
        fut._status = RUNNING
        fut._timestamp = time.time()

    async def _run_async(self, fut: Future[Any]) -> None:
        fut._status = RUNNING
        fut._timestamp = time.time()
        current_future.set(fut)
        task = fut._task
        try:
            params = fut._params
            if params is None:
                raise asyncio.CancelledError  # noqa: TRY301 - cancelled before it started
            deps = fut._deps
            if deps is not None:
                params = resolve_parameters(params, deps)
            value = await task.spec.call(task.fn, params)
        except asyncio.CancelledError:
            self._finish(fut, CANCELLED, cancelled_error(task.name))
        except Exception as exc:
            self._finish(fut, FAILED, exc)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: the body never returned
            self._finish(fut, CRASHED, crashed_error(task.name, exc))
        else:
            self._finish(fut, COMPLETED, value)

    def on_outcome(self, fut: Future[Any], ok: bool, value: Any) -> None:
        """Backend hook: a sync body returned (``ok``) or raised ``value``."""
        if fut._status >= COMPLETED:  # cancelled while it ran: the outcome is dropped
            fut._release_inputs()
        elif ok:
            self._finish(fut, COMPLETED, value)
        elif isinstance(value, Exception):
            self._finish(fut, FAILED, value)
        else:
            self._finish(fut, CRASHED, crashed_error(fut._task.name, value))

    def _finish(self, fut: Future[Any], status: int, value: Any, name: str | None = None) -> None:
        # Inlined _release_inputs: this runs once per task.
        fut._params = fut._ctx = fut._deps = fut._allowed = fut._handle = None
        if fut._status >= COMPLETED:  # cancelled while its body was still running
            return
        fut._set_final(status, value, name)
        live = self._live
        live.discard(fut)
        ready, skipped = self._graph.finish(fut, _OUTCOMES[status])
        for child, cause, outcome in skipped:
            self._skip(child, cause, outcome)
        for child in ready:
            self._start(child)
        if not live and self._idle is not None:
            self._idle.set()

    def _check_idle(self) -> None:
        if not self._live and self._idle is not None:
            self._idle.set()

    def _after(
        self,
        ready: Sequence[Future[Any]],
        skipped: Sequence[tuple[Future[Any], Future[Any], Outcome]],
    ) -> None:
        for child, cause, outcome in skipped:
            self._skip(child, cause, outcome)
        for child in ready:
            self._start(child)

    def _skip(self, fut: Future[Any], cause: Future[Any], outcome: Outcome) -> None:
        """``fut`` never runs: ``cause``, one of its inputs, failed or was cancelled."""
        name = fut._task.name
        if outcome is Outcome.CANCELLED:
            fut._set_final(
                CANCELLED, cancelled_error(name, f"its upstream {cause._task.name!r} was cancelled")
            )
        else:
            err = UpstreamFailedError(name, cause._task.name)
            err.__cause__ = cause._value
            fut._set_final(FAILED, err, "UpstreamFailed")
        fut._release_inputs()
        self._live.discard(fut)

    def _cancel(self, fut: Future[Any]) -> None:
        if self._inbox:
            self._drain_inbox()
        if fut._status >= COMPLETED or fut not in self._live:
            return
        handle = fut._handle
        running = fut._status == RUNNING
        if handle is not None:
            handle.cancel()
            if running:
                return  # the body sees CancelledError; _run_async records the outcome
        # Waiting, queued, not started, or a thread body that cannot be interrupted (it keeps
        # its worker slot until it returns; its outcome is then ignored, its inputs freed).
        fut._set_final(CANCELLED, cancelled_error(fut._task.name))
        if not running:
            fut._release_inputs()
        self._live.discard(fut)
        self._after(*self._graph.cancel(fut))
        self._check_idle()

    def _cancel_all(self) -> None:
        if self._inbox:
            self._drain_inbox()
        for fut in list(self._live):
            self._cancel(fut)

    def _watch_external(self, up: Future[Any]) -> None:
        """An unfinished input from another runner: finish its graph key when it is final."""
        if up in self._external:
            return
        self._external.add(up)
        up.add_done_callback(self._external_done)

    def _external_done(self, up: Future[Any]) -> None:
        # Runs on the other runner's loop thread (or here): hand over, never touch the graph.
        self._call_soon(self._on_external_final, up)

    def _on_external_final(self, up: Future[Any]) -> None:
        self._external.discard(up)
        self._after(*self._graph.finish(up, _OUTCOMES[up._status]))
        self._check_idle()

    async def wait_idle(self) -> None:
        """Wait until every submitted run is final."""
        while True:
            if self._inbox:
                self._drain_inbox()
            if not self._live:
                return
            self._idle = asyncio.Event()
            try:
                await self._idle.wait()
            finally:
                self._idle = None

    async def aclose(self) -> None:
        """Wait for every run (nested submits included), stop accepting, stop the backend."""
        while True:
            await self.wait_idle()
            with self._lock:
                if not self._inbox:
                    self._accepting = False
                    break
        await self._backend.aclose()


if sys.version_info >= (3, 11):

    def _create_task(loop: asyncio.AbstractEventLoop, coro: Any, ctx: Any) -> asyncio.Task[None]:
        return loop.create_task(coro, context=ctx)

else:  # pragma: no cover - Python 3.10 has no context= argument

    def _create_task(loop: asyncio.AbstractEventLoop, coro: Any, ctx: Any) -> asyncio.Task[None]:
        return ctx.run(loop.create_task, coro)  # type: ignore[no-any-return]
