"""Task runners: a scheduler plus one backend, used as ``with`` or ``async with`` blocks."""

from __future__ import annotations

import abc
import asyncio
import contextvars
import dataclasses
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from ._cache import CacheStore
from ._context import current_future, current_runner
from ._events import EventHub, EventStream, Subscription, TaskEvent
from ._futures import (
    Future,
    FutureList,
    MapGroup,
    add_done_callback_to_all,
    plain_runs,
)
from ._limits import Limit, check_limit
from ._logging import apply_log_level
from ._loop import LoopThread, to_its_end
from ._mapping import expand
from ._options import check_timeout
from ._params import (
    ATOMIC,
    IMMUTABLE,
    TOP_LEVEL,
    checked_wait_for,
    find_futures,
    wait_for_edges,
)
from ._scheduler import Backend, Scheduler, SchedulerOptions
from ._settings import Settings, get_settings
from ._stats import RunnerStatistics
from ._task import Task, as_task
from ._threads import ThreadWorkers

__all__ = ("ProcessPoolTaskRunner", "TaskRunner", "ThreadPoolTaskRunner", "wait_for_room")

Self = TypeVar("Self", bound="TaskRunner")


_NO_FUTURES: list[Any] = []  # never appended to: a run's inputs that allow failure, if none


class TaskRunner(abc.ABC):
    """Runs submitted tasks concurrently, in dependency order, and hands back futures.

    Use it as ``async with runner:`` in coroutine code (it runs on the caller's loop) or
    ``with runner:`` in sync code (it starts one background loop thread). Leaving the block
    waits for every submitted task; leaving it because of an exception cancels what has not
    finished, then re-raises. A runner can be entered again after it exited.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        max_concurrency: int | None = None,
        tag_limits: Mapping[str, int] | None = None,
        cache_store: CacheStore | None = None,
        max_pending: int | None = None,
    ) -> None:
        settings = settings or get_settings()
        owner = type(self).__name__
        self._event_loop = settings.event_loop
        self._max_concurrency = (
            None
            if max_concurrency is None
            else check_limit("max_concurrency", max_concurrency, owner)
        )
        self._max_pending = (
            None if max_pending is None else check_limit("max_pending", max_pending, owner)
        )
        if tag_limits is not None and not isinstance(tag_limits, Mapping):
            raise TypeError(f"{owner}: tag_limits must be a dict of tag -> limit")
        self._tag_limits = {
            _check_tag(tag, owner): check_limit(f"tag_limits[{tag!r}]", n, owner)
            for tag, n in (tag_limits or {}).items()
        }
        if cache_store is not None and not isinstance(cache_store, CacheStore):
            raise TypeError(f"{owner}: cache_store must be a CacheStore, not {cache_store!r}")
        self._cache_store = cache_store
        self._options = SchedulerOptions(
            default_retries=settings.default_retries,
            default_retry_delay=settings.default_retry_delay,
            max_concurrency=self._max_concurrency,
            max_pending=self._max_pending,
            tag_limits=self._tag_limits,
            cache_store=cache_store,
        )
        # Awaited between retry attempts; tests may replace it to avoid real waiting.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._hub = EventHub()
        self._log_level = settings.log_level
        self._last_stats = RunnerStatistics()
        self._claim_lock = threading.Lock()
        self._claimed = False
        self._scheduler: Scheduler | None = None
        self._loop_thread: LoopThread | None = None
        self._token: contextvars.Token[Any] | None = None

    def _policy_config(self) -> tuple[Any, ...]:
        return (
            self._max_concurrency,
            tuple(sorted(self._tag_limits.items())),
            self._cache_store,
            self._max_pending,
        )

    def _policy_kwargs(self) -> dict[str, Any]:
        return {
            "max_concurrency": self._max_concurrency,
            "tag_limits": dict(self._tag_limits),
            "cache_store": self._cache_store,
            "max_pending": self._max_pending,
        }

    def statistics(self) -> RunnerStatistics:
        """Counts of the current session (or of the last one, after exit)."""
        sched = self._scheduler
        if sched is None:
            return self._last_stats
        return sched.call_in_loop(sched.statistics)

    # -- events ----------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[TaskEvent], object]) -> Subscription:
        """Call ``callback(event)`` with each ``TaskEvent`` of this runner's runs.

        It is called on the scheduler's loop thread and must be quick and must not block. It
        applies from now on: to the current session and to later ones (a run already under way
        shows up from its next event). One that raises is logged once and the runs go on.
        Returns a ``Subscription``: ``close()`` it (or use it as a ``with`` block) to stop.
        """
        return self._hub.subscribe(callback)

    def events(self, max_buffer: int = 1000) -> EventStream:
        """An async iterator of this runner's events: ``async with runner.events() as s:``
        then ``async for event in s``.

        It ends when the runner session ends (opened before the runner started: its next
        session ends) or when the block is left. Nothing blocks the scheduler: events wait in
        a buffer of ``max_buffer``; when the consumer falls that far behind, new events are
        dropped and counted in ``stream.dropped``.
        """
        return EventStream(self._hub, max_buffer)

    @property
    def name(self) -> str:
        """The lower-case class name without "taskrunner" (e.g. ``"threadpool"``)."""
        return type(self).__name__.lower().replace("taskrunner", "")

    @abc.abstractmethod
    def duplicate(self: Self) -> Self:
        """A new, unstarted runner with the same configuration."""

    @abc.abstractmethod
    def _config(self) -> tuple[Any, ...]:
        """The configuration that ``==`` compares."""

    @abc.abstractmethod
    def _make_backend(self, scheduler: Scheduler) -> Backend:
        """The backend that runs sync bodies for one session of this runner."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._config() == other._config()

    def __hash__(self) -> int:
        return hash((type(self), self._hashed_config()))

    def _hashed_config(self) -> tuple[Any, ...]:
        """What ``hash`` reads of the configuration: all of it, but what may be unhashable."""
        return self._config()

    def _shown_config(self) -> tuple[Any, ...]:
        """What ``repr`` shows of the configuration: all of it, but what may be secret."""
        return self._config()

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._shown_config()}"

    # -- submitting ----------------------------------------------------------------------------
    def _require_started(self) -> Scheduler:
        sched = self._scheduler
        if sched is None:
            raise RuntimeError(
                f"runner {self.name!r} is not started: use it as `with runner:` or "
                "`async with runner:` before submitting"
            )
        return sched

    def submit(
        self,
        task: Any,
        parameters: Mapping[str, Any] | None = None,
        wait_for: Iterable[Any] | None = None,
        dependencies: Mapping[str, Iterable[Any]] | None = None,
    ) -> Future[Any]:
        """Submit one run of ``task`` with ``parameters`` (a dict of parameter name -> value);
        never blocks, but with ``max_pending`` (see ``wait_for_room``).

        Futures anywhere in ``parameters`` are inputs: the run starts when they are done and
        gets their results. ``wait_for`` futures are waited for without passing data;
        ``dependencies`` (parameter name -> futures) are ordering edges like ``wait_for``.
        """
        sched = self._scheduler
        if sched is None:
            sched = self._require_started()  # raises
        t = task if type(task) is Task else as_task(task)
        if type(parameters) is dict:  # _future, inlined for the common case: once per run
            params = parameters.copy()
            spec = t.spec  # (check, inlined for the common case: every parameter named)
            if spec.varpos is not None or params.keys() != spec.names:
                spec.check(params, t.name)
            fut, inputs = self._make(sched, t, params, wait_for, dependencies, None)
        else:
            fut, inputs = self._future(sched, t, parameters, wait_for, dependencies, None)
        if sched.room is None:
            sched.submit(fut, inputs)
        else:
            self._counted(sched, [fut], lambda: sched.submit(fut, inputs))
        return fut

    def _counted(
        self,
        sched: Scheduler,
        runs: list[Future[Any]],
        submit: Callable[[], object],
        group: MapGroup | None = None,
    ) -> None:
        """``submit()`` new ``runs`` (of a map: its ``group``), counted by the session's
        back-pressure (``max_pending``): from outside this runner's runs, once it holds fewer
        unfinished runs than that."""
        room = sched.room
        assert room is not None
        if not runs:
            submit()
            return
        room.enter(len(runs), _nested(sched), threading.get_ident() == sched.thread_id, sched.stuck)
        try:
            # Told of their ends (never, if the submit fails): a map's, through its group.
            if group is None or group.watch(lambda _left: room.freed) is None:
                add_done_callback_to_all(runs, room.freed)
            submit()
        except BaseException:
            room.free(len(runs))
            raise

    async def wait_for_room(self) -> None:
        """Wait until the session holds fewer than ``max_pending`` unfinished runs (at once
        without ``max_pending``, or inside one of this runner's runs).

        A submit from the runner's own event loop cannot wait: when the runner is full it
        raises ``RunnerFullError``. Await this before it instead; a submit right after this
        returns (no ``await`` in between) goes in. Submits from other threads wait by
        themselves, and submits from inside the runner's own runs never wait.
        """
        sched = self._require_started()
        if sched.room is not None and not _nested(sched):
            await sched.room.wait()

    def _future(  # noqa: PLR0917 - private, per run
        self,
        sched: Scheduler,
        t: Task[..., Any],
        parameters: Mapping[str, Any] | None,
        wait_for: Iterable[Any] | None,
        dependencies: Mapping[str, Iterable[Any]] | None,
        map_limit: Limit | None,
    ) -> tuple[Future[Any], list[Future[Any]]]:
        """A new run of ``t``, checked and ready to hand to the scheduler, and its inputs."""
        if type(parameters) is dict:
            params = parameters.copy()
        elif parameters is None:
            params = {}
        elif isinstance(parameters, Mapping):
            params = dict(parameters)
        else:
            raise TypeError(
                f"parameters of task {t.name!r} must be a dict of name -> value, "
                f"not {type(parameters).__name__}"
            )
        t.spec.check(params, t.name)
        return self._make(sched, t, params, wait_for, dependencies, map_limit)

    def _make(  # noqa: PLR0917 - private, per run
        self,
        sched: Scheduler,
        t: Task[..., Any],
        params: dict[str, Any],
        wait_for: Iterable[Any] | None,
        dependencies: Mapping[str, Iterable[Any]] | None,
        map_limit: Limit | None,
    ) -> tuple[Future[Any], list[Future[Any]]]:
        """A new run of ``t`` with ``params`` (its own dict, already checked), and its inputs
        (what ``inputs_of`` would find again: the scheduler registers it with them)."""
        strict: list[Future[Any]] = []
        allowed: list[Future[Any]] = _NO_FUTURES  # replaced by a list of its own when needed
        annotated = False
        for value in params.values():
            cls = type(value)
            if cls is Future:  # the common cases first: a future as is, or a plain value
                strict.append(value)
            elif cls not in ATOMIC:
                if allowed is _NO_FUTURES:
                    allowed = []
                annotated |= find_futures(value, strict, allowed)
        if allowed is _NO_FUTURES and (wait_for is not None or dependencies is not None):
            allowed = []
        if wait_for is not None:
            wait_for_edges(wait_for, strict, allowed)
        if dependencies is not None:
            if not isinstance(dependencies, Mapping):
                raise TypeError(f"dependencies must be a dict, not {dependencies!r}")
            for items in dependencies.values():
                wait_for_edges([f for f in items if isinstance(f, Future)], strict, allowed)
        allow_only = None
        if allowed:
            # An input named both plainly and inside allow_failure does not allow failure.
            allow_only = frozenset(allowed).difference(strict) or None
            strict += allowed
        # An empty input list still means "resolve the parameters": annotations to unwrap.
        if not strict:
            deps = strict if annotated else None
        elif allowed is _NO_FUTURES and not annotated:
            deps = TOP_LEVEL  # only futures as parameter values: no list of its own
        else:
            deps = strict
        policy = (
            sched.policy_for(t, map_limit)
            if t.driven or sched.any_policy or map_limit is not None
            else None
        )
        fut = Future(sched, t, params, deps, allow_only, contextvars.copy_context(), policy)
        return fut, strict

    def map(
        self,
        task: Any,
        parameters: Mapping[str, Any],
        wait_for: Iterable[Any] | None = None,
        max_in_flight: int | None = None,
    ) -> FutureList[Any]:
        """Submit one run per element of the iterable parameters (``unmapped`` ones go whole).

        ``max_in_flight`` bounds how many of these runs execute at once; the others wait in a
        queue holding no thread or asyncio task. With the runner's ``max_pending``, the map goes
        in whole once there is room for one run (see ``wait_for_room``).
        """
        sched = self._require_started()
        limit = (
            None
            if max_in_flight is None
            else Limit("max_in_flight", check_limit("max_in_flight", max_in_flight, "map"))
        )
        t = as_task(task, "map")
        if not isinstance(parameters, Mapping):
            raise TypeError(
                f"parameters of task {t.name!r} must be a dict of name -> value, "
                f"not {type(parameters).__name__}"
            )
        waits = None if wait_for is None else checked_wait_for(wait_for)
        rows, types = expand(t.name, dict(parameters))
        spec = t.spec
        if len(rows) and spec.varpos is None:
            # The children differ only in their values: one check holds for all of them.
            spec.check(rows.row(0), t.name)
        elif not len(rows):  # no child: the names are checked all the same
            spec.check({**rows.static, **dict.fromkeys(rows.names, ())}, t.name)
        else:
            for p in rows.rows():
                spec.check(p, t.name)
        plain = types <= ATOMIC and waits is None and limit is None
        plain = plain and not (t.driven or sched.any_policy)
        runs: list[Future[Any]]
        if plain:
            # No value can hold a future, and there is no policy: no inputs to look for.
            ctx = contextvars.copy_context()  # one snapshot (each run copies it as it starts)
            group = MapGroup(len(rows))  # counts them as they end, for whole-list waits
            runs = plain_runs(sched, t, rows, ctx, group, shareable=types <= IMMUTABLE)
        else:
            make = self._make
            runs = [make(sched, t, p, waits, None, limit)[0] for p in rows.rows()]
            group = MapGroup(len(runs))
            for run in runs:
                run._group = group
        if sched.room is None:
            sched.submit_many(runs, plain=plain)  # one hand-over to the loop for the whole map
        else:
            self._counted(sched, runs, lambda: sched.submit_many(runs, plain=plain), group)
        futures = FutureList(runs)
        futures._group = group
        return futures

    def cancel_all(self) -> None:
        """Cancel every run of this session that has not finished.

        As with ``Future.cancel``: runs that had not started, and plain thread bodies
        (abandoned: they keep running), are Cancelled when this returns; the others end as soon
        as they have handled the cancellation. From another thread this waits for the
        scheduler's loop to take the request (a short hand-over).
        """
        sched = self._scheduler
        if sched is None:
            return
        try:
            sched.call_in_loop(sched.cancel_all)
        except RuntimeError:  # the session closed meanwhile: its runs ended with it
            pass

    # -- async context -------------------------------------------------------------------------
    def _check_not_started(self) -> None:
        # Check and claim in one step: two threads entering at once must not both succeed.
        with self._claim_lock:
            if self._claimed:
                raise RuntimeError(f"runner {self.name!r} is already started")
            self._claimed = True

    async def _astart(self) -> None:
        self._last_stats = RunnerStatistics()
        apply_log_level(self._log_level)
        options = dataclasses.replace(self._options, sleep=self._sleep, events=self._hub)
        sched = Scheduler(self, self._make_backend, options)
        start = getattr(sched.backend, "start", None)  # a backend that connects first (Dask)
        if start is not None:
            try:
                await start()
            except BaseException:
                try:
                    await _despite_cancellation(sched.aclose(abandon=True))
                finally:
                    self._hub.detach(sched)
                raise
        self._scheduler = sched

    def _keep_stats(self, sched: Scheduler) -> None:
        self._last_stats = sched.statistics()

    async def __aenter__(self: Self) -> Self:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"`async with` runner {self.name!r} needs a running asyncio event loop (asyncio "
                "or uvloop); under other loops use `with runner:` (its futures can be awaited "
                "from trio too)"
            ) from None
        self._check_not_started()
        try:
            await self._astart()
        except BaseException:
            self._claimed = False
            raise
        self._token = current_runner.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sched = self._scheduler
        assert sched is not None
        urgent = exc_type is not None and issubclass(
            exc_type, (KeyboardInterrupt, asyncio.CancelledError)
        )
        try:
            if exc_type is not None:
                sched.refuse_waiting()
                sched.cancel_all()
            try:
                await sched.aclose(abandon=urgent)
            except BaseException:
                # Cancelled (or interrupted) while waiting: cancel the rest, do not wait for
                # thread bodies that cannot be interrupted, and still clean up even if
                # cancelled again meanwhile.
                sched.cancel_all()
                sched.backend.abandon()
                await _despite_cancellation(sched.aclose(abandon=True))
                raise
        finally:
            self._keep_stats(sched)
            self._hub.detach(sched)
            self._scheduler = None
            self._reset_token()
            self._claimed = False

    def _reset_token(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            try:
                current_runner.reset(token)
            except ValueError:  # exited in another context than entered: nothing to restore
                pass

    # -- sync context --------------------------------------------------------------------------
    def __enter__(self: Self) -> Self:
        self._check_not_started()
        try:
            loop_thread = LoopThread(self._event_loop, name=f"asyncflow-loop-{self.name}")
        except BaseException:
            self._claimed = False
            raise
        tasks: list[asyncio.Task[Any]] = []

        async def start() -> None:
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]  # (in a task)
            await self._astart()

        starting = loop_thread.run(start())
        try:
            starting.result()
        except BaseException:
            try:
                # Interrupted (Ctrl-C) while it starts: stop the start, and let it close what it
                # opened (a cluster) first; or close what started meanwhile after all.
                starting.cancel()
                # Until its clean-up is done: one Ctrl-C more is held off (leaving then would
                # orphan a cluster's workers), a second one leaves without waiting for it.
                for held_off in (True, False):
                    try:
                        if tasks:
                            loop_thread.run(_settled(tasks)).result()
                        break
                    except KeyboardInterrupt:
                        if not held_off:
                            raise
                sched, self._scheduler = self._scheduler, None
                if sched is not None:
                    self._hub.detach(sched)
                    loop_thread.run(sched.aclose(abandon=True)).result()
            finally:
                self._claimed = False  # (first: a Ctrl-C more may cut the stop short)
                loop_thread.stop()
            raise
        self._loop_thread = loop_thread
        self._token = current_runner.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sched = self._scheduler
        loop_thread = self._loop_thread
        assert sched is not None
        assert loop_thread is not None
        # Ctrl-C: cancel everything and leave at once; thread bodies that cannot be interrupted
        # are abandoned (daemon threads: they end with the process).
        urgent = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        try:
            if exc_type is not None:
                sched.refuse_waiting()
                sched.cancel_all()
            closing = loop_thread.run(sched.aclose(abandon=urgent))
            try:
                closing.result()
            except BaseException:  # e.g. Ctrl-C while waiting: cancel what is left, finish closing
                sched.cancel_all()
                sched.abandon()
                closing.result()
                raise
            finally:
                self._keep_stats_from(loop_thread, sched)
        finally:
            self._hub.detach(sched)
            self._loop_thread = None
            self._scheduler = None
            self._reset_token()
            try:
                loop_thread.stop()
            finally:
                self._claimed = False
                # What a backend shares with other sessions (Ray's CPUs and connection), given
                # back even when a second Ctrl-C cut its close short.
                detach = getattr(sched.backend, "detach", None)
                if detach is not None:
                    detach()

    def _keep_stats_from(self, loop_thread: LoopThread, sched: Scheduler) -> None:
        try:
            loop_thread.run(_call(self._keep_stats, sched)).result()
        except RuntimeError:  # the loop is gone: keep what was last seen
            pass


def _nested(sched: Scheduler) -> bool:
    """Whether the caller is one of the runs of ``sched`` (its body, or a hook of it)."""
    parent = current_future.get()
    return parent is not None and parent._scheduler is sched


async def wait_for_room() -> None:
    """``await runner.wait_for_room()`` for the runner ``task.submit()`` would use here (in an
    async ``@flow``, its own copy of the flow's runner)."""
    if current_future.get() is not None:  # a run's body or hook: its submits never wait
        return
    runner = current_runner.get()
    if runner is None:
        raise RuntimeError(
            "wait_for_room() needs a runner: call it inside an async @flow, an "
            "`async with runner:` block or a task body"
        )
    await runner.wait_for_room()


async def _call(fn: Callable[..., None], *args: Any) -> None:
    fn(*args)


async def _settled(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for ``tasks`` to end, however they end (their errors are seen to, here)."""
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()


async def _despite_cancellation(coro: Awaitable[None]) -> None:
    """Await ``coro`` to its end even if the awaiting task is cancelled (again) meanwhile: the
    caller re-raises its own cancellation once clean-up is done."""
    done, _cancelled = await to_its_end(coro)
    done.result()


def _check_tag(tag: object, owner: str) -> str:
    if not isinstance(tag, str):
        raise TypeError(f"{owner}: tag_limits keys must be tag strings, got {tag!r}")
    return tag


def _check_worker_env(
    value: Mapping[str, str] | Iterable[str] | None, owner: str
) -> dict[str, str] | tuple[str, ...] | None:
    """``worker_env``: None (workers inherit this process's environment), a mapping (exactly
    those variables), or variable names (an allow-list: only those are passed on)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        env = dict(value)
        for k, v in env.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"{owner}: worker_env must map str to str, got {k!r}: {v!r}")
        return env
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(
            f"{owner}: worker_env must be a dict of variables or a list of names, not {value!r}"
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{owner}: worker_env names must be strings, got {name!r}")
    return names


def _default_thread_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


def check_max_workers(value: object, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: max_workers must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: max_workers must be >= 1, got {value}")
    return value


class ThreadPoolTaskRunner(TaskRunner):
    """Coroutine bodies run on the loop; sync bodies on at most ``max_workers`` threads.

    ``max_workers`` defaults to ``ASYNCFLOW_THREAD_POOL_MAX_WORKERS``, else
    ``min(32, cpu_count + 4)``. Tasks start only when their inputs are ready, and a body
    blocked on another future gives its thread slot back, so a bounded pool cannot deadlock.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        max_concurrency: int | None = None,
        tag_limits: Mapping[str, int] | None = None,
        cache_store: CacheStore | None = None,
        max_pending: int | None = None,
    ) -> None:
        settings = get_settings()
        if max_workers is None:
            max_workers = settings.thread_pool_max_workers or _default_thread_workers()
        self._max_workers = check_max_workers(max_workers, "ThreadPoolTaskRunner")
        super().__init__(
            settings,
            max_concurrency=max_concurrency,
            tag_limits=tag_limits,
            cache_store=cache_store,
            max_pending=max_pending,
        )

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def duplicate(self) -> ThreadPoolTaskRunner:
        return type(self)(max_workers=self._max_workers, **self._policy_kwargs())

    def _config(self) -> tuple[Any, ...]:
        return (self._max_workers, *self._policy_config())

    def _make_backend(self, scheduler: Scheduler) -> Backend:
        return ThreadWorkers(scheduler, self._max_workers, self.name)


class ProcessPoolTaskRunner(TaskRunner):
    """Task bodies (sync and coroutine) run in at most ``max_workers`` worker processes.

    ``max_workers`` defaults to ``ASYNCFLOW_PROCESS_POOL_MAX_WORKERS``, else the CPU count.
    Functions, arguments, results and exceptions travel as cloudpickle bytes, so lambdas,
    closures and functions defined in ``__main__`` work. Each worker runs one body at a time:
    a worker that dies fails only the run it was running (``WorkerCrashedError``) and is
    replaced; a timeout or cancel kills the worker (and its children) and replaces it. Cheap
    calls without a policy may go to a worker in batches: cancelling one of those that has not
    started marks it to be skipped, and the worker serves on. A body's ``print`` goes to this
    process's stdout; what it writes to stderr shows on this process's stderr, whole lines at a
    time, and its last lines are in a crash error.
    ``initializer(*initargs)`` runs once in each worker before its first task. A worker exits
    after ``max_tasks_per_worker`` calls, or after ``idle_timeout`` seconds without work; a
    new one starts when needed. ``worker_env``: None (workers inherit this environment), a
    dict (exactly those variables) or a list of names (only those are passed on).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        worker_env: Mapping[str, str] | Iterable[str] | None = None,
        *,
        idle_timeout: float | None = None,
        max_concurrency: int | None = None,
        tag_limits: Mapping[str, int] | None = None,
        cache_store: CacheStore | None = None,
        max_pending: int | None = None,
    ) -> None:
        settings = get_settings()
        owner = "ProcessPoolTaskRunner"
        if max_workers is None:
            max_workers = settings.process_pool_max_workers or os.cpu_count() or 1
        self._max_tasks_per_worker = (
            None
            if max_tasks_per_worker is None
            else check_limit("max_tasks_per_worker", max_tasks_per_worker, owner)
        )
        self._worker_env_spec = _check_worker_env(worker_env, owner)
        self._idle_timeout = check_timeout(idle_timeout, owner, "idle_timeout")
        self._max_workers = check_max_workers(max_workers, owner)
        if initializer is not None and not callable(initializer):
            raise TypeError(
                f"ProcessPoolTaskRunner: initializer must be callable, not {initializer!r}"
            )
        if not isinstance(initargs, tuple):
            raise TypeError(f"ProcessPoolTaskRunner: initargs must be a tuple, not {initargs!r}")
        self._initializer = initializer
        self._initargs = initargs
        super().__init__(
            settings,
            max_concurrency=max_concurrency,
            tag_limits=tag_limits,
            cache_store=cache_store,
            max_pending=max_pending,
        )

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def duplicate(self) -> ProcessPoolTaskRunner:
        return type(self)(
            max_workers=self._max_workers,
            initializer=self._initializer,
            initargs=self._initargs,
            max_tasks_per_worker=self._max_tasks_per_worker,
            worker_env=self._worker_env_spec,
            idle_timeout=self._idle_timeout,
            **self._policy_kwargs(),
        )

    def _config(self) -> tuple[Any, ...]:
        spec = self._worker_env_spec
        # A dict is the workers' whole environment; names, variables passed on from this one
        # (each once; none at all is an empty environment, as an empty dict is).
        env = (
            None
            if spec is None
            else ("dict", tuple(sorted(spec.items())))
            if isinstance(spec, dict)
            else ("names", tuple(sorted(set(spec))))
            if spec
            else ("dict", ())
        )
        return (
            self._max_workers,
            self._initializer,
            self._initargs,
            self._max_tasks_per_worker,
            env,
            self._idle_timeout,
            *self._policy_config(),
        )

    def _hashed_config(self) -> tuple[Any, ...]:
        # Not the initializer and its arguments: they may be unhashable (a list, say).
        return self._config()[3:]

    def _shown_config(self) -> tuple[Any, ...]:
        # The names of the workers' variables, not their values (a password, say).
        config = self._config()
        env = config[4]
        if env is not None and env[0] == "dict":
            env = ("dict", tuple(name for name, _ in env[1]))
        return (*config[:4], env, *config[5:])

    def _make_backend(self, scheduler: Scheduler) -> Backend:
        from ._processes import ProcessWorkers

        return ProcessWorkers(
            scheduler,
            self._max_workers,
            self._initializer,
            self._initargs,
            max_tasks_per_worker=self._max_tasks_per_worker,
            worker_env=self._worker_env_for_session(),
            idle_timeout=self._idle_timeout,
        )

    def _worker_env_for_session(self) -> dict[str, str] | None:
        """The environment of new workers: all of this process's (None), the given mapping, or
        only the allowed names, read when the session starts."""
        spec = self._worker_env_spec
        if spec is None:
            return None
        if isinstance(spec, dict):
            return dict(spec)
        return {name: os.environ[name] for name in spec if name in os.environ}
