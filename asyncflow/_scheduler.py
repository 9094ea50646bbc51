"""The scheduler: lives on one event loop and is the only code that changes the graph.

Submissions from other threads go through a small inbox and one wake-up of the loop per batch.
Coroutine bodies run as tasks on the loop; sync bodies go to a backend (worker threads now,
processes or clusters later), which reports outcomes back on the loop. A finished run is
forgotten at once: the graph and the live set only hold runs that have not finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from . import _limits as limits
from ._cache import CacheStore, default_store
from ._context import current_attempt, current_future
from ._driver import drive, run_hooks
from ._events import EventHub
from ._futures import (
    CANCELLED,
    COMPLETED,
    CRASHED,
    FAILED,
    PENDING,
    RETRYING,
    RUN_CODE,
    RUNNING,
    Future,
    cancelled_error,
    complete_all,
    crashed_error,
    host,
    hosting_here,
    needing,
    params_of,
    upstream_error,
)
from ._graph import Graph, Node, Outcome
from ._limits import Limit, RunPolicy
from ._params import TOP_LEVEL, inputs_of, resolve_parameters
from ._room import Room
from ._starter import Starts
from ._states import UPSTREAM_FAILED
from ._stats import RunnerStatistics

T = TypeVar("T")

# The state name of a running coroutine run whose cancel was asked for (its type stays
# Running): it ends Cancelled whatever its body then does.
CANCELLING = "Cancelling"
logger = logging.getLogger("asyncflow")

__all__ = ("Backend", "Scheduler", "SchedulerOptions")

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
_SKIPPED = UPSTREAM_FAILED  # the state name of a run skipped for a failed upstream


class Backend(Protocol):
    """Where sync task bodies run. It knows nothing of graphs or futures' meaning: for each work
    item (a run's future, or an attempt of a driven run) it calls ``call_sync(item)`` inside a
    copy of ``item._ctx`` (the runs of one map share one snapshot) somewhere, and reports
    ``scheduler.on_outcome(item, ok, value)`` on the scheduler's loop. Items whose ``_status``
    is final when their turn comes are dropped (still reported, so their slot is accounted
    for).

    When it hands an item to a worker it calls ``scheduler.mark_running(item, worker)``, naming
    the worker (``"process <pid>"``) if it knows it then (a worker thread that takes a queued
    plain run itself marks it with ``Future._claim`` instead); otherwise, while
    ``scheduler.events`` is not None, it reports ``scheduler.worker_took(item, worker)`` on the
    loop once the worker took it (before that item's outcome)."""

    def submit(self, item: Any) -> None: ...

    def submit_many(self, items: list[Any]) -> None:
        """``submit`` each of ``items``, in order."""
        ...

    async def aclose(self, abandon: bool = False) -> None:
        """Stop the workers; with ``abandon``, do not wait for bodies still running."""
        ...

    def hold(self, on: bool) -> None:
        """While on, start no queued item (every run is being cancelled); when off, go on."""
        ...

    def abandon(self) -> None:
        """Make a pending ``aclose`` stop waiting for running bodies."""
        ...

    def interrupt(self, item: Any) -> bool:
        """Stop a running body now if this backend can (True), or leave it running (False)."""
        ...


@dataclass(frozen=True)
class SchedulerOptions:
    """Runner-wide policies, fixed for a session."""

    default_retries: int = 0
    default_retry_delay: float = 0.0
    max_concurrency: int | None = None
    max_pending: int | None = None
    tag_limits: Mapping[str, int] = field(default_factory=dict)
    cache_store: CacheStore | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    events: EventHub | None = None  # the runner's subscribers


def call_parts(item: Any) -> tuple[Any, dict[str, Any]]:
    """The task and resolved parameters of a work item (for backends that ship calls away)."""
    if type(item) is not Future:
        return item.fut._task, item.params
    params = params_of(item)
    if params is None:  # cancelled before its turn; the outcome is ignored
        raise cancelled_error(item._task.name)
    if item._deps is not None:
        params = resolve_parameters(params, item._deps, item._task.name)
    return item._task, params


def call_sync(fut: Any) -> Any:
    """Run one sync body; called in a worker, inside the item's own context."""
    if type(fut) is not Future:
        return fut.call()  # an attempt of a driven run
    current_future.set(fut)
    task = fut._task
    # Inputs first: a cancel on the loop thread clears the parameters before the inputs (in
    # one statement, left to right), so inputs read as None here mean the parameters are None
    # too. Read the other way round, a cancel in between gave the body its futures unresolved.
    deps = fut._deps
    params = params_of(fut)
    if params is None:  # cancelled before a worker picked it up; the outcome is ignored
        raise cancelled_error(task.name)
    if deps is not None:
        params = resolve_parameters(params, deps, task.name)
    return task.spec.call(task.fn, params)


class _StandIn(Node):
    """Another runner's unfinished future, as an upstream node of this runner's graph (its
    own slots are that runner's)."""

    __slots__ = ()

    def __init__(self) -> None:
        self._down = self._more = self._pending = None


class Scheduler:
    """One runner session's scheduler. Create it on the loop thread it will live on."""

    def __init__(
        self,
        runner: Any,
        backend_factory: Callable[[Scheduler], Backend],
        options: SchedulerOptions | None = None,
    ) -> None:
        opts = options or SchedulerOptions()
        self.default_retries = opts.default_retries
        self.default_retry_delay = opts.default_retry_delay
        self.cache_store = default_store if opts.cache_store is None else opts.cache_store
        self.sleep = opts.sleep
        self._global_limit = (
            None if opts.max_concurrency is None else Limit("max_concurrency", opts.max_concurrency)
        )
        self._tag_limits = {tag: Limit(f"tag {tag!r}", n) for tag, n in opts.tag_limits.items()}
        # Every run needs a policy when a runner-wide one applies.
        self._policy_all = self._global_limit is not None or self.default_retries > 0
        # Some run may need one even if its task has no option (checked at every submit).
        self.any_policy = self._policy_all or bool(self._tag_limits)
        self.retried = 0
        self.abandoned_threads = 0
        self._abandoned: set[Future[Any]] = set()  # cancelled runs whose thread body still runs
        self._submitted = 0
        self._counts = [0] * 7  # final runs, by status code
        self._side: set[asyncio.Task[None]] = set()  # hooks of runs that never started
        self._cancel_pending: set[Future[Any]] = set()
        self.runner = runner
        # Back-pressure (max_pending), None without: the submit paths check only this.
        self.room = None if opts.max_pending is None else Room(opts.max_pending, runner.name)
        self.loop = asyncio.get_running_loop()
        self.thread_id = threading.get_ident()
        self._graph: Graph[Future[Any]] = Graph()
        self._live: set[Future[Any]] = set()
        # Another runner's unfinished input -> its stand-in here (see _watch_external)
        self._external: dict[Future[Any], Future[Any]] = {}
        self._lock = threading.Lock()  # guards the inbox hand-over from other threads only
        self._inbox: list[Future[Any] | list[Future[Any]]] = []
        self._inbox_scheduled = False
        self._accepting = True
        self._idle: asyncio.Event | None = None
        self._starts = Starts(self.loop, self._run_async)  # plain coroutine runs to start
        # The runner's event hub while it has subscribers, else None: every emission point
        # checks only this attribute (the hub switches it from any thread).
        self.events: EventHub | None = None
        self.backend = backend_factory(self)
        if opts.events is not None:
            opts.events.attach(self)
        # Process backends run coroutine bodies too (in the worker, on a loop of its own).
        self.coroutines_in_backend: bool = getattr(self.backend, "runs_coroutines", False)
        self.call_parts = call_parts
        # Last: a scheduler whose making failed is never closed, and would stay registered.
        host(self.loop, opened=True)  # (until aclose ends: see _unhost)
        self._hosted = True

    # -- from any thread ---------------------------------------------------------------------
    def submit(self, fut: Future[Any], inputs: list[Future[Any]] | None = None) -> None:
        """``inputs``: what ``inputs_of(fut)`` says, if the caller has it already (spares the
        loop's thread the second look)."""
        if threading.get_ident() == self.thread_id:
            if not self._accepting:
                raise RuntimeError(f"runner {self.runner.name!r} is closed")
            if self._inbox:
                self._drain_inbox()  # keep submission order across threads
            self._register(fut, inputs)
            return
        with self._lock:
            if not self._accepting:
                raise RuntimeError(f"runner {self.runner.name!r} is closed")
            self._inbox.append(fut)
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        self._call_soon(self._drain_inbox)

    def submit_many(self, futures: list[Future[Any]], plain: bool = False) -> None:
        """Submit runs in order, with one hand-over to the loop from another thread.

        ``plain``: runs of one task with no inputs and no policy, registered together (the
        list is the scheduler's from now on)."""
        if not futures:
            return
        if threading.get_ident() == self.thread_id:
            if not plain:
                for fut in futures:
                    self.submit(fut)
                return
            if not self._accepting:
                raise RuntimeError(f"runner {self.runner.name!r} is closed")
            if self._inbox:
                self._drain_inbox()  # keep submission order across threads
            self._register_plain(futures)
            return
        with self._lock:
            if not self._accepting:
                raise RuntimeError(f"runner {self.runner.name!r} is closed")
            if plain:
                self._inbox.append(futures)  # a list in the inbox: plain runs, in order
            else:
                self._inbox.extend(futures)
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

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Any thread: run ``fn(*args)`` on the loop soon (dropped if the loop is closed)."""
        self._call_soon(fn, *args)

    def _call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the runner is gone, nothing left to do
            logger.debug("runner %r is closed; dropped %r", self.runner.name, fn)

    def stuck(self, counted: int) -> str | None:
        """Any thread, for a submit about to wait for room (``max_pending``): why no place
        could come free while this thread waits, if so. That is when this thread runs another
        runner's loop and each of the ``counted`` unfinished runs needs, through its inputs, a
        run on that loop (a sync flow called from an async flow, its runs taking the async
        flow's futures). Not when some counted run is out of sight (on its way in): it may
        end."""
        loop = hosting_here()
        if loop is None:
            return None
        runs = [run for run in self.live_runs() if run._status < COMPLETED]
        if len(runs) < counted:
            return None
        needed = None
        for run in runs:
            needs = needing((run,), loop)
            if needs is None:  # it can end, and free a place
                return None
            needed = needed or needs
        if needed is None:
            return None
        return (
            f"runner {self.runner.name!r} is full (max_pending) and its runs need the run of "
            f"task {needed._task.name!r} of runner {needed._scheduler.runner.name!r}, on the "
            "event loop this submit would block: it would wait for ever; submit from another "
            "thread, or await the runs that need it first"
        )

    def live_runs(self) -> list[Future[Any]]:
        """Any thread: the runs not final yet, those in the inbox too, as they are now."""
        return list(self._live) + self._inbox_runs()

    @property
    def live_count(self) -> int:
        """Runs submitted and not final (including ones still in the inbox)."""
        return len(self._live) + len(self._inbox_runs())

    def _inbox_runs(self) -> list[Future[Any]]:
        """Runs in the inbox (a list there holds plain runs submitted together)."""
        runs: list[Future[Any]] = []
        for x in list(self._inbox):
            if isinstance(x, list):
                runs.extend(x)
            else:
                runs.append(x)
        return runs

    @property
    def graph_size(self) -> int:
        return len(self._graph)

    def policy_for(self, task: Any, map_limit: Limit | None = None) -> RunPolicy | None:
        """The policy of a new run of ``task`` (None: the plain path). Any thread: it only
        reads configuration fixed for the session."""
        tag_limits = self._tag_limits
        if not (task.driven or self._policy_all or map_limit or (tag_limits and task.tags)):
            return None
        limits: list[Limit] = [] if map_limit is None else [map_limit]
        if tag_limits:
            limits.extend(tag_limits[tag] for tag in sorted(task.tags) if tag in tag_limits)
        if self._global_limit is not None:
            limits.append(self._global_limit)
        retries = task.retries if task.retries is not None else self.default_retries
        driven = task.driven or retries > 0
        if not limits and not driven:
            return None
        return RunPolicy(tuple(limits), driven, retries)

    def call_in_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop thread and return its result (blocking from other threads)."""
        if threading.get_ident() == self.thread_id:
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        while True:
            try:
                return done.result(timeout=0.1)
            except concurrent.futures.TimeoutError:  # noqa: PERF203 - rare, bounded guard
                # A loop that stopped meanwhile (its runner closed) never runs ``run``.
                if self.loop.is_closed() or not self.loop.is_running():
                    raise RuntimeError(f"runner {self.runner.name!r} is closed") from None

    def statistics(self) -> RunnerStatistics:
        """Loop thread only (see ``call_in_loop``)."""
        running = sum(1 for f in self._live if f._status in (RUNNING, RETRYING))
        counts = self._counts
        inbox = len(self._inbox_runs())
        return RunnerStatistics(
            submitted=self._submitted + inbox,
            running=running,
            queued=len(self._live) + inbox - running,
            completed=counts[COMPLETED],
            failed=counts[FAILED] + counts[CRASHED],
            cancelled=counts[CANCELLED],
            retried=self.retried,
            abandoned_threads=self.abandoned_threads,
        )

    # -- on the loop thread ------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        with self._lock:
            self._inbox_scheduled = False
            items = self._inbox
            if not items:
                return
            self._inbox = []
        for fut in items:
            if isinstance(fut, list):
                self._register_plain(fut)
            else:
                self._register(fut)

    def _register_plain(self, futures: list[Future[Any]]) -> None:
        """Register runs of one task that have no inputs and no policy, all at once."""
        if self.events is not None or self._cancel_pending:
            for fut in futures:
                self._register(fut)
            return
        self._live.update(futures)
        self._submitted += len(futures)
        if futures[0]._task.is_async and not self.coroutines_in_backend:
            starts = self._starts
            starts.queue.extend(futures)
            if starts.starter is None:
                starts.wake()
        else:
            self.backend.submit_many(futures)

    def _register(self, fut: Future[Any], inputs: list[Future[Any]] | None = None) -> None:
        if (events := self.events) is not None:
            events.submitted(fut)
        self._live.add(fut)
        self._submitted += 1
        if self._cancel_pending and fut in self._cancel_pending:
            self._cancel_pending.discard(fut)
            self._cancel(fut)
            return
        deps = fut._deps
        if deps is not None:
            if deps is TOP_LEVEL:
                deps = inputs_of(fut) if inputs is None else inputs
            edges: list[Future[Any]] | None = deps
            allowed = fut._allowed
            for up in deps:
                if up._status >= COMPLETED or up._scheduler is not self:
                    edges, allowed = self._edges_slow(fut, deps)
                    break
            if edges is None:  # an input already failed or was cancelled
                return
            if edges and not self._graph.add_edges(fut, edges, allowed):
                return
        self._start(fut)

    def _edges_slow(
        self, fut: Future[Any], deps: list[Future[Any]]
    ) -> tuple[list[Future[Any]] | None, frozenset[Future[Any]] | None]:
        """Edges of ``fut`` when some inputs are final or belong to another runner (whose
        futures are nodes of that runner's graph: here each has a stand-in), and the edges
        among them whose failure it accepts."""
        allowed = fut._allowed or ()
        edges: list[Future[Any]] = []
        stand_ins = False
        for up in deps:
            status = up._status
            if status >= COMPLETED:
                if status == COMPLETED or (status != CANCELLED and up in allowed):
                    continue  # its value is there already
                kind = Outcome.CANCELLED if status == CANCELLED else Outcome.FAILED
                self._skip(fut, up, kind)
                # Something submitted earlier in this batch may already wait on it.
                self._after(*self._graph.finish(fut, kind))
                self._check_idle()
                return None, None
            if up._scheduler is not self:
                edges.append(self._watch_external(up))
                stand_ins = True
            else:
                edges.append(up)
        if stand_ins and allowed:
            external = self._external
            return edges, frozenset(external.get(up, up) for up in allowed)
        return edges, fut._allowed

    def _start(self, fut: Future[Any]) -> None:
        pol = fut._policy
        if pol is None:
            if fut._task.is_async and not self.coroutines_in_backend:
                self._start_soon(fut)
            else:
                self.backend.submit(fut)
        elif not pol.limits or self._acquire(fut, pol):
            self._launch(fut, pol)

    def _launch(self, fut: Future[Any], pol: RunPolicy) -> None:
        ctx = fut._ctx
        assert ctx is not None
        if pol.driven:
            fut._handle = _create_task(self.loop, drive(self, fut, pol), ctx.copy())
        elif fut._task.is_async and not self.coroutines_in_backend:
            fut._handle = _create_task(self.loop, self._run_async(fut), ctx.copy())
        else:
            self.backend.submit(fut)

    def _acquire(self, fut: Future[Any], pol: RunPolicy) -> bool:
        return limits.acquire(fut, pol)

    def _release(self, pol: RunPolicy) -> None:
        limits.release(pol, self._launch)

    def lend_limits(self, run: Future[Any], attempt: int | None = None) -> bool:
        """Loop thread: see ``_limits.lend``."""
        return limits.lend(run, attempt, self._launch)

    def reclaim_limits(
        self,
        run: Future[Any],
        resume: Callable[[], object],
        attempt: int | None = None,
        force: bool = False,
    ) -> bool:
        """Loop thread: see ``_limits.reclaim``."""
        return limits.reclaim(run, resume, attempt, force)

    def drop_reclaim(self, run: Future[Any]) -> None:
        """Loop thread: see ``_limits.drop_reclaim``."""
        limits.drop_reclaim(run)

    def mark_running(self, item: Any, worker: str | None = None, clock: bool = True) -> bool:
        """Backend hook: a worker takes this item (``worker`` names it, if known here).
        Returns whether subscribers were told (a "started" event). Not ``clock``: the
        attempt's deadline starts later, when the backend calls its ``start_clock``."""
        if type(item) is not Future:
            item.started(clock)
        else:
            item._status = RUNNING
            item._timestamp = time.time()
        if worker is not None and (events := self.events) is not None:
            events.took(item, worker)
            return True
        return False

    def worker_took(self, item: Any, worker: str) -> None:
        """Backend hook, while someone listens: ``worker`` took ``item`` (for backends that
        do not know the worker when they hand an item over)."""
        if (events := self.events) is not None:
            events.took(item, worker)

    def _start_soon(self, fut: Future[Any]) -> None:
        """Queue a plain coroutine run: a starter task runs its first step soon, at most
        ``_starter.BATCH`` per loop turn (why in batches, and why that many: see there)."""
        starts = self._starts
        starts.queue.append(fut)
        if starts.starter is None:
            starts.wake()

    async def _run_async(self, fut: Future[Any]) -> None:
        fut._status = RUNNING
        fut._timestamp = time.time()
        if (events := self.events) is not None:
            events.started(fut, 1, "loop")
        current_future.set(fut)
        task = fut._task
        try:
            params = fut._params
            if type(params) is not dict:  # (params_of, inlined for the common case)
                params = params_of(fut)
                if params is None:
                    raise asyncio.CancelledError  # noqa: TRY301 - cancelled before it started
            deps = fut._deps
            if deps is not None:
                params = resolve_parameters(params, deps, task.name)
            spec = task.spec
            value = await (task.fn(**params) if spec.simple else spec.call(task.fn, params))
            status = COMPLETED
        except asyncio.CancelledError:
            status = CANCELLED
        except Exception as exc:
            status, value = FAILED, exc
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: the body never returned
            self._finish(fut, CRASHED, crashed_error(task.name, exc))
            return
        if status == CANCELLED or fut._state_name is CANCELLING:  # (see _cancel)
            self._finish(fut, CANCELLED, cancelled_error(task.name))
        else:
            self._finish(fut, status, value)

    def on_outcome(self, fut: Any, ok: bool, value: Any, crashed: bool = False) -> None:
        """Backend hook: a sync body returned (``ok``) or raised ``value``, or (``crashed``)
        never returned, as the backend's ``TaskCrashedError`` ``value`` says (a body that
        raised one, say re-raising another run's, failed like any other)."""
        if type(fut) is not Future:
            fut.deliver(ok, value, crashed)  # an attempt of a driven run
        elif fut._status >= COMPLETED:  # cancelled while it ran: the outcome is dropped
            fut._release_inputs()
            if fut in self._abandoned:
                self._abandoned.discard(fut)
                self.abandoned_threads -= 1
            pol = fut._policy
            if pol is not None and pol.held:  # its limits were kept until the body returned
                self._release(pol)
        elif ok:
            self._finish(fut, COMPLETED, value)
        elif crashed:
            self._finish(fut, CRASHED, value)
        elif isinstance(value, Exception):
            self._finish(fut, FAILED, value)
        else:
            self._finish(fut, CRASHED, crashed_error(fut._task.name, value))

    def complete_many(self, futures: list[Future[Any]], values: list[Any]) -> None:
        """Backend hook: the bodies of plain runs (no policy) returned ``values``; the same as
        ``on_outcome(fut, True, value)`` for each, in one pass."""
        if self.events is not None:
            for fut, value in zip(futures, values, strict=True):
                self.on_outcome(fut, True, value)
            return
        done = complete_all(futures, values)
        self._counts[COMPLETED] += len(done)
        live = self._live
        live.difference_update(done)
        graph = self._graph
        if graph.watches_any():
            for fut in done:
                ready, skipped = graph.finish(fut, Outcome.COMPLETED)
                if ready or skipped:
                    self._after(ready, skipped)
        self._check_idle()

    def _finish(self, fut: Future[Any], status: int, value: Any, name: str | None = None) -> None:
        # Inlined _release_inputs: this runs once per task.
        fut._params = fut._ctx = fut._deps = fut._allowed = fut._handle = None
        if fut._status >= COMPLETED:  # cancelled while its body was still running
            return
        fut._set_final(status, value, name)
        self._counts[status] += 1
        pol = fut._policy
        if (events := self.events) is not None:
            events.final(fut, pol.attempt if pol is not None and pol.driven else 1)
        live = self._live
        live.discard(fut)
        if pol is not None:
            if pol.resume is not None:
                self.drop_reclaim(fut)
            if pol.held and not pol.abandoned:
                # (A run with an abandoned thread body keeps its limits until it returns.)
                self._release(pol)
        ready, skipped = self._graph.finish(fut, _OUTCOMES[status])
        if skipped:
            ready = self._after_skips(ready, skipped)
        starts = self._starts
        for child in ready:
            if child._policy is None and child._task.is_async and not self.coroutines_in_backend:
                starts.queue.append(child)  # _start_soon, inlined: once per run
                if starts.starter is None:
                    starts.wake()
            else:
                self._start(child)
        if not live and self._idle is not None and not self._side:
            self._idle.set()

    def _check_idle(self) -> None:
        if not self._live and not self._side and self._idle is not None:
            self._idle.set()

    def _hooks_later(self, fut: Future[Any], ctx: contextvars.Context | None) -> None:
        """Hooks of a run that ended without starting (its future is already final), in a copy
        of ``ctx``, the run's own context (taken before it let go of it), as for a run that
        started: not in the context this happens in (an upstream's, in a skip cascade)."""
        task = fut._task
        if not (task.on_failure or task.on_cancellation):
            return
        hooks_ctx = contextvars.Context() if ctx is None else ctx.copy()
        hooks_ctx.run(_as_run, fut)
        side = _create_task(self.loop, run_hooks(task, fut, fut.state), hooks_ctx)
        self._side.add(side)
        side.add_done_callback(self._side_done)

    def _side_done(self, side: asyncio.Task[None]) -> None:
        self._side.discard(side)
        self._check_idle()

    def _after(
        self,
        ready: Sequence[Future[Any]],
        skipped: Sequence[tuple[Future[Any], Future[Any], Outcome]],
    ) -> None:
        for child in self._after_skips(ready, skipped) if skipped else ready:
            self._start(child)

    def _after_skips(
        self,
        ready: Sequence[Future[Any]],
        skipped: Sequence[tuple[Future[Any], Future[Any], Outcome]],
    ) -> list[Future[Any]]:
        """Skip ``skipped``; then the runs of ``ready`` still to start: not one with an input it
        accepts failing (``allow_failure``) that a done-callback of a run skipped here cancelled
        meanwhile (it is cancelled too, as if that input had been cancelled first)."""
        for child, cause, outcome in skipped:
            self._skip(child, cause, outcome)
        return [child for child in ready if not self._input_cancelled(child)]

    def _input_cancelled(self, fut: Future[Any]) -> bool:
        for up in fut._allowed or ():
            if up._status == CANCELLED:
                self._skip(fut, up, Outcome.CANCELLED)
                self._after(*self._graph.finish(fut, Outcome.CANCELLED))  # and what waits on it
                return True
        return False

    def _skip(self, fut: Future[Any], cause: Future[Any], outcome: Outcome) -> None:
        """``fut`` never runs: ``cause``, one of its inputs, failed or was cancelled."""
        if fut._status >= COMPLETED:
            # Cancelled meanwhile, by a done-callback of a run skipped just before it (the
            # callbacks of a final future run as it becomes final): it stays so.
            return
        # (A cause skipped for a failure, then cancelled that way: its runs below are
        # cancelled too, as if it had been cancelled before the failure.)
        cancelled = outcome is Outcome.CANCELLED or cause._status == CANCELLED
        err = upstream_error(fut._task.name, cause, cancelled)
        if cancelled:
            fut._set_final(CANCELLED, err)
        else:
            # (Made here, never raised: nothing of it is walked, see _set_final. Its cause's
            # frames were cleared when that run ended. Frames someone's .result() or await hung
            # on that shared object since are left alone: clearing them could finalize a
            # coroutine suspended among them, and rewriting its traceback would change what
            # that caller, or a run that raised it again, shows.)
            fut._set_final(FAILED, err, _SKIPPED, fresh=True)
        self._counts[fut._status] += 1
        if (events := self.events) is not None:
            events.final(fut, 0)
        ctx = fut._ctx
        fut._release_inputs()
        self._live.discard(fut)
        if fut._task.driven:
            self._hooks_later(fut, ctx)

    def _cancel(self, fut: Future[Any]) -> None:
        if self._inbox:
            self._drain_inbox()
        if fut._status >= COMPLETED:
            return
        if fut not in self._live:
            # Taken from the inbox but not registered yet (a callback cancels it while a
            # batch is being registered): cancel it when its turn comes.
            self._cancel_pending.add(fut)
            return
        ctx = fut._ctx  # (for its hooks, if it never started)
        handle = fut._handle
        pol = fut._policy
        if pol is not None and pol.started:
            assert handle is not None
            if not pol.finishing:  # once attempts are over, hooks run to the end
                pol.cancelling = True  # whatever the body raises now, the run is not retried
                handle.cancel()  # the driver stops its attempt and records the outcome
                queued = pol.queued
                if queued is not None and queued._status == PENDING:
                    # Still queued: never handed out, even before the driver sees the cancel.
                    queued._status = CANCELLED
            return
        # Under the futures' lock: a worker thread may be claiming this queued run right now.
        running = fut._withdraw()
        if handle is not None:
            handle.cancel()
            if running:
                # The body sees CancelledError; _run_async records the outcome: Cancelled,
                # whatever the body then does (returns a value, raises another error).
                fut._state_name = CANCELLING
                return
        # Waiting, queued, not started, or a thread body that cannot be interrupted (it keeps
        # its worker slot until it returns; its outcome is then ignored, its inputs freed).
        fut._set_final(CANCELLED, cancelled_error(fut._task.name))
        self._counts[CANCELLED] += 1
        if (events := self.events) is not None:
            events.final(fut, 1 if running else 0)
        if running:
            if not self.backend.interrupt(fut):  # a thread: it cannot be stopped, only left
                self._abandoned.add(fut)
                self.abandoned_threads += 1
                logger.info(
                    "task %r (run %s) was cancelled after a worker thread took it; its body, "
                    "if it started, keeps running in that thread until it returns",
                    fut._task.name,
                    fut.task_run_id,
                )
        else:
            fut._release_inputs()
        self._live.discard(fut)
        if pol is not None:
            if pol.resume is not None:
                self.drop_reclaim(fut)
            if pol.held and not running:  # a running body keeps its limits
                self._release(pol)
        self._after(*self._graph.cancel(fut))
        if fut._task.driven:
            self._hooks_later(fut, ctx)
        self._check_idle()

    def _cancel_all(self) -> None:
        if self._inbox:
            self._drain_inbox()
        # Nothing queued may start while the runs are cancelled one by one (a worker thread
        # whose body returns meanwhile would go on to a queued run not cancelled yet).
        backend = self.backend
        backend.hold(True)
        try:
            for fut in list(self._live):
                self._cancel(fut)
        finally:
            backend.hold(False)

    def _watch_external(self, up: Future[Any]) -> Future[Any]:
        """An unfinished input from another runner: its stand-in in this graph, finished when
        ``up`` is final."""
        node = self._external.get(up)
        if node is None:
            # (Typed as a future: the graph's nodes are this runner's futures, and a stand-in
            # is only ever an upstream, never handed back as a node that is ready or skipped.)
            node = self._external[up] = cast("Future[Any]", _StandIn())
            up.add_done_callback(self._external_done)
        return node

    def _external_done(self, up: Future[Any]) -> None:
        # Runs on the other runner's loop thread (or here): hand over, never touch the graph.
        self._call_soon(self._on_external_final, up)

    def _on_external_final(self, up: Future[Any]) -> None:
        node = self._external.pop(up, None)
        if node is None:  # (closed meanwhile: nothing here waits for it)
            return
        ready, skipped = self._graph.finish(node, _OUTCOMES[up._status])
        # A run skipped because of ``up`` names ``up`` as its cause, not the stand-in.
        self._after(
            ready, [(run, up if cause is node else cause, out) for run, cause, out in skipped]
        )
        self._check_idle()

    async def wait_idle(self) -> None:
        """Wait until every submitted run is final."""
        while True:
            if self._inbox:
                self._drain_inbox()
            if not self._live and not self._side:
                return
            self._idle = asyncio.Event()
            try:
                await self._idle.wait()
            finally:
                self._idle = None

    async def aclose(self, abandon: bool = False) -> None:
        """Wait for every run (nested submits included), stop accepting, stop the backend.

        With ``abandon`` (Ctrl-C, cancellation), thread bodies still running are not waited
        for, and hooks still running are cancelled.
        """
        if abandon:
            self._abandon()
        while True:
            await self.wait_idle()
            with self._lock:
                if not self._inbox:
                    self._accepting = False
                    break
        self.refuse_waiting()
        # Stop listening to other runners' futures: nothing here waits for them any more.
        for up in self._external:
            up.remove_done_callback(self._external_done)
        self._external.clear()
        try:
            await self.backend.aclose(abandon)
        finally:
            self._unhost()

    def _unhost(self) -> None:
        """The session no longer runs on its loop (see ``_futures.host``); once."""
        if self._hosted:
            self._hosted = False
            host(self.loop, opened=False)

    def refuse_waiting(self) -> None:
        """Any thread: the session is leaving; submits waiting for room (``max_pending``) are
        refused, and from now on only the runs' own submits go in."""
        if self.room is not None:
            self.room.close()

    def abandon(self) -> None:
        """Any thread: make a pending ``aclose`` stop waiting for running thread bodies and
        for hooks still running."""
        self._call_soon(self._abandon)

    def _abandon(self) -> None:
        for side in self._side:
            side.cancel()
        for fut in self._live:
            pol = fut._policy
            if pol is not None and pol.finishing and fut._handle is not None:
                fut._handle.cancel()
        self.backend.abandon()


def _as_run(fut: Future[Any]) -> None:
    """(Inside a context:) make it the context of ``fut``'s run, at its first attempt."""
    current_future.set(fut)
    current_attempt.set(1)


# Tasks are built directly, not through ``loop.create_task``: a loop's task factory may start
# tasks eagerly (``asyncio.eager_task_factory``), which would run a body inside ``_finish`` of
# its upstream and recurse along a chain.
if sys.version_info >= (3, 11):

    def _create_task(loop: asyncio.AbstractEventLoop, coro: Any, ctx: Any) -> asyncio.Task[None]:
        return asyncio.Task(coro, loop=loop, context=ctx)

else:  # pragma: no cover - Python 3.10 has no context= argument

    def _create_task(loop: asyncio.AbstractEventLoop, coro: Any, ctx: Any) -> asyncio.Task[None]:
        return ctx.run(asyncio.Task, coro, loop=loop)  # type: ignore[no-any-return]


RUN_CODE.add(Scheduler._run_async.__code__)
