"""``RayTaskRunner``: task bodies run on a Ray cluster, one Ray task each.

The scheduler, the graph and the policies stay here, on the runner's loop; only bodies go to
the cluster (``_ray_workers``), through this process's connection to Ray
(``_ray_connection``). ``ray`` is imported when a session starts, never by ``import asyncflow``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._cache import CacheStore
from ._cluster_options import checked_address, checked_kwargs, frozen_kwargs
from ._runners import TaskRunner
from ._scheduler import Backend, Scheduler
from ._settings import get_settings

__all__ = ("RayTaskRunner",)

_OWNER = "RayTaskRunner"


class RayTaskRunner(TaskRunner):
    """Task bodies (sync and coroutine) run on a Ray cluster; the graph stays here.

    With ``address`` (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``), it connects to that
    cluster and leaves it running on exit. Without, it starts a local cluster
    (``ray.init(**init_kwargs)``: ``num_cpus=``, ``object_store_memory=``, ...) and stops it on
    exit; ``init_kwargs`` go to ``ray.init`` with an address too. Ray allows one connection per
    process: sessions at once share it (they must then be given the same options), the last one
    to end closes it, and a connection made beforehand with ``ray.init`` is used (then give
    neither option) and left open.

    A body is sent to the cluster when one of its CPUs is free for it, counting the bodies of
    every session of this process (as the cluster last told, at least one): it is Running, and
    its timeout counts, from then; a run cancelled before that never reaches the cluster (an
    autoscaling cluster therefore does not grow for them). A body sent is stopped for real by a
    cancel or a timeout: Ray kills the worker process running it (``ray.cancel(force=True)``),
    and starts another. Coroutine bodies run on a loop of their own in the worker
    (``asyncio.run``). Bodies, arguments and results travel as Ray sends them (cloudpickle);
    every result comes back here. In a body, ``get_run_context()`` works (with asyncflow
    installed on the workers) and submitting does not. Ray's retries are off
    (``max_retries=0``): retries are the task's. What a body raises comes back with its
    traceback on the worker as cause (a ``RemoteError`` if it does not load here); one that
    raises ``SystemExit``, ``KeyboardInterrupt`` or ``CancelledError`` crashes its run, not its
    worker; a worker that dies fails its run with ``WorkerCrashedError``; a call the worker
    cannot load, or a result it cannot send back, fails with ``SerializationError``; any other
    failure of Ray's crashes the run with ``TaskCrashedError`` saying what Ray said. A start
    that is cancelled (Ctrl-C) returns at once, even while Ray still tries to connect.
    """

    def __init__(
        self,
        address: str | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        *,
        max_concurrency: int | None = None,
        tag_limits: Mapping[str, int] | None = None,
        cache_store: CacheStore | None = None,
        max_pending: int | None = None,
    ) -> None:
        self._address = checked_address(_OWNER, address)
        self._init_kwargs = checked_kwargs(_OWNER, "init_kwargs", init_kwargs)
        if "address" in self._init_kwargs:
            raise ValueError(f"{_OWNER}: give the address as address=, not in init_kwargs")
        super().__init__(
            get_settings(),
            max_concurrency=max_concurrency,
            tag_limits=tag_limits,
            cache_store=cache_store,
            max_pending=max_pending,
        )

    @property
    def address(self) -> str | None:
        return self._address

    def duplicate(self) -> RayTaskRunner:
        return type(self)(
            address=self._address, init_kwargs=self._init_kwargs, **self._policy_kwargs()
        )

    def _config(self) -> tuple[Any, ...]:
        return (
            self._address,
            frozen_kwargs(self._init_kwargs),
            *self._policy_config(),
        )

    def _make_backend(self, scheduler: Scheduler) -> Backend:
        from ._ray_workers import RayWorkers

        return RayWorkers(scheduler, self)
