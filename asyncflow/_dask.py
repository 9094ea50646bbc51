"""``DaskTaskRunner``: task bodies run on a Dask cluster (``distributed``), one Dask task each.

The scheduler, the graph and the policies stay here, on the runner's loop; only bodies go to the
cluster, through an asynchronous ``distributed.Client`` on that same loop. ``distributed`` is
imported when a session starts, never by ``import asyncflow``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import ipaddress
import socket
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ._cache import CacheStore
from ._error_text import error_text
from ._futures import cancelled_error
from ._runners import TaskRunner
from ._scheduler import Backend, Scheduler
from ._settings import get_settings
from .exceptions import SerializationError, TaskCrashedError

__all__ = ("DaskTaskRunner",)

_OWNER = "DaskTaskRunner"


class DaskTaskRunner(TaskRunner):
    """Task bodies (sync and coroutine) run on a Dask cluster; the graph stays here.

    With ``address`` (``"tcp://host:8786"``, ``"tls://..."``), it connects to that cluster and
    leaves it running on exit. Without, it starts ``cluster_class(**cluster_kwargs)`` (default:
    ``distributed.LocalCluster``; a class or its dotted name), adapts it with
    ``adapt_kwargs`` if given, and closes it on exit. ``client_kwargs`` go to
    ``distributed.Client`` (``security=`` for TLS). A plain ``tcp://`` address of another host
    gives a warning: Dask's TCP is neither authenticated nor encrypted.

    Bodies and arguments travel as Dask sends them (pickle, else cloudpickle); every result
    comes back here. A run is Running from when it is sent to the cluster, and its timeout
    counts from then. Cancelling a run, or its timeout, releases its Dask task: one not started
    never starts; Dask cannot stop a body already running in a worker thread, which goes on
    there and whose result is dropped. A worker that dies while running a body fails that run
    with ``WorkerCrashedError`` (a cluster the runner started does not retry it on another
    worker: retries are the task's); losing the cluster fails the runs under way with
    ``TaskCrashedError`` saying so.
    """

    def __init__(
        self,
        address: str | None = None,
        cluster_class: type[Any] | str | None = None,
        cluster_kwargs: Mapping[str, Any] | None = None,
        adapt_kwargs: Mapping[str, Any] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        *,
        max_concurrency: int | None = None,
        tag_limits: Mapping[str, int] | None = None,
        cache_store: CacheStore | None = None,
    ) -> None:
        if address is not None and (
            cluster_class is not None or cluster_kwargs is not None or adapt_kwargs is not None
        ):
            raise ValueError(
                f"{_OWNER}: give either address (an existing cluster) or cluster_class, "
                "cluster_kwargs and adapt_kwargs (a cluster it starts), not both"
            )
        if address is not None:
            if not isinstance(address, str) or not address:
                raise TypeError(f"{_OWNER}: address must be a non-empty str, not {address!r}")
            _warn_if_plain_tcp_off_host(address)
        if cluster_class is not None and not (
            isinstance(cluster_class, str) or callable(cluster_class)
        ):
            raise TypeError(
                f"{_OWNER}: cluster_class must be a class or its dotted name, not {cluster_class!r}"
            )
        self._address = address
        self._cluster_class = cluster_class
        self._cluster_kwargs = _kwargs("cluster_kwargs", cluster_kwargs)
        self._adapt_kwargs = None if adapt_kwargs is None else _kwargs("adapt_kwargs", adapt_kwargs)
        self._client_kwargs = _kwargs("client_kwargs", client_kwargs)
        super().__init__(
            get_settings(),
            max_concurrency=max_concurrency,
            tag_limits=tag_limits,
            cache_store=cache_store,
        )

    @property
    def address(self) -> str | None:
        return self._address

    def duplicate(self) -> DaskTaskRunner:
        return type(self)(
            address=self._address,
            cluster_class=self._cluster_class,
            cluster_kwargs=self._cluster_kwargs if self._address is None else None,
            adapt_kwargs=self._adapt_kwargs,
            client_kwargs=self._client_kwargs,
            **self._policy_kwargs(),
        )

    def _config(self) -> tuple[Any, ...]:
        return (
            self._address,
            self._cluster_class,
            _frozen(self._cluster_kwargs),
            None if self._adapt_kwargs is None else _frozen(self._adapt_kwargs),
            _frozen(self._client_kwargs),
            *self._policy_config(),
        )

    def _make_backend(self, scheduler: Scheduler) -> Backend:
        return DaskWorkers(scheduler, self)


def _kwargs(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{_OWNER}: {name} must be a dict of keyword arguments, not {value!r}")
    return dict(value)


def _frozen(kwargs: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


def _warn_if_plain_tcp_off_host(address: str) -> None:
    """Dask's ``tcp://`` is neither authenticated nor encrypted: say so for another host."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or _is_this_host(parts.hostname or ""):
        return
    warnings.warn(
        f"{_OWNER}: {address!r} is a plain tcp:// address of another host: Dask's TCP is "
        "neither authenticated nor encrypted, so anyone who can reach it can run code on the "
        "cluster and read what it sends; use tls:// with client_kwargs={'security': ...}",
        UserWarning,
        stacklevel=3,
    )


def _is_this_host(host: str) -> bool:
    if host in {"localhost", socket.gethostname()}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DaskWorkers:
    """The backend: each work item becomes one Dask task, awaited by one asyncio task here."""

    runs_coroutines = True  # coroutine bodies go to the cluster too

    def __init__(self, sched: Scheduler, runner: DaskTaskRunner) -> None:
        self._sched = sched
        self._runner = runner
        self._client: Any = None  # a distributed.Client once started (untyped there)
        self._cluster: Any = None
        # item -> its Dask future, the asyncio task awaiting it, its task's name
        self._waits: dict[Any, tuple[Any, asyncio.Task[None], str]] = {}
        self._worker = "dask"

    async def start(self) -> None:
        """Connect to the cluster, or start one (called once, before any submit)."""
        import distributed

        runner = self._runner
        target: Any = runner._address
        if target is None:
            cls = _cluster_class(runner._cluster_class)
            # Crash retries are the task's (opt-in), not Dask's three silent ones: a body that
            # kills its worker fails its run at once.
            with _dask_config({"distributed.scheduler.allowed-failures": 0}):
                self._cluster = await cls(**runner._cluster_kwargs, asynchronous=True)
            if runner._adapt_kwargs is not None:
                self._cluster.adapt(**runner._adapt_kwargs)
            target = self._cluster
        try:
            client_class: Any = distributed.Client
            self._client = await client_class(target, asynchronous=True, **runner._client_kwargs)
        except BaseException:
            await self._close_cluster()
            raise
        self._worker = f"dask {self._client.scheduler.address}"

    def submit(self, item: Any) -> None:
        client = self._client
        assert client is not None, "submit before start"
        sched = self._sched
        try:
            task, params = sched.call_parts(item)
            args, kwargs = task.spec.split(params)
            call = functools.partial(task.fn, *args, **kwargs)
        except BaseException as exc:  # cancelled before its turn, or its inputs failed
            sched.loop.call_soon(sched.on_outcome, item, False, exc)
            return
        try:
            future = client.submit(call, key=f"{task.name}-{uuid.uuid4().hex}", pure=False)
        except Exception as exc:  # it cannot be pickled, or the client is closed
            error = _send_error(task, args, kwargs, exc)
            sched.loop.call_soon(sched.on_outcome, item, False, error)
            return
        sched.mark_running(item, self._worker)
        wait = sched.loop.create_task(self._wait(item, task.name, future))
        self._waits[item] = (future, wait, task.name)

    def submit_many(self, items: list[Any]) -> None:
        for item in items:
            self.submit(item)

    async def _wait(self, item: Any, task_name: str, future: Any) -> None:
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        crashed = False
        try:
            value = await future
            ok = True
        except KilledWorker as exc:
            ok, crashed = False, True
            value = _worker_died(task_name, exc)
        except FutureCancelledError as exc:  # not by this runner: see interrupt
            ok, crashed = False, True
            value = TaskCrashedError(
                f"task {task_name!r} crashed: the Dask cluster dropped its run ({exc})"
            )
            value.__cause__ = exc
        except asyncio.CancelledError:  # interrupted (see there)
            return
        except BaseException as exc:  # the body's own error, raised again here
            ok, value = False, exc
        self._waits.pop(item, None)
        self._sched.on_outcome(item, ok, value, crashed)

    def interrupt(self, item: Any) -> bool:
        """Let the item's Dask task go: it never starts if it has not; a body already running
        in a worker thread goes on there (Dask cannot stop it) and its result is dropped.

        Released, not cancelled: a release travels on the client's ordered stream with the
        submit before it, where a cancel request (a call of its own) could reach the cluster's
        scheduler before the task it is about, and miss it."""
        entry = self._waits.pop(item, None)
        if entry is None:
            return False
        future, wait, name = entry
        future.release()
        wait.cancel()  # (maybe before it started: the outcome is reported here)
        sched = self._sched
        sched.loop.call_soon(sched.on_outcome, item, False, cancelled_error(name))
        return True

    def hold(self, on: bool) -> None:
        """Nothing is queued here (the cluster queues): nothing to hold."""

    def abandon(self) -> None:
        """``aclose`` never waits for bodies on the cluster: nothing to stop waiting for."""

    async def aclose(self, abandon: bool = False) -> None:
        # Every run is final by now; what is left are waits of runs let go (see interrupt).
        waits = [wait for _future, wait, _name in self._waits.values()]
        for wait in waits:
            wait.cancel()
        if waits:
            await asyncio.wait(waits)
        self._waits.clear()
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        await self._close_cluster()

    async def _close_cluster(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await cluster.close()


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


def _dask_config(values: dict[str, Any]) -> Any:
    import dask

    return dask.config.set(values)


def _send_error(
    task: Any, args: Sequence[Any], kwargs: dict[str, Any], exc: Exception
) -> Exception:
    """What failed a submit: the function or the argument that cannot be pickled, by name (Dask
    only says which graph it could not send), else the client's own error."""
    import cloudpickle

    from ._processes import _argument_error

    try:
        cloudpickle.dumps(task.fn)
    except Exception as cause:
        error = SerializationError(
            f"task {task.name!r}: the task's function cannot be sent to the Dask cluster "
            f"({error_text(cause)})",
            "arguments",
        )
        error.__cause__ = cause
        return error
    error = _argument_error(task, args, kwargs, exc, to="the Dask cluster")
    return exc if error.__cause__ is exc else error


def _worker_died(task_name: str, exc: BaseException) -> TaskCrashedError:
    from .exceptions import WorkerCrashedError

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
