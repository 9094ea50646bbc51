"""``DaskTaskRunner``: task bodies run on a Dask cluster (``distributed``), one Dask task each.

The scheduler, the graph and the policies stay here, on the runner's loop; only bodies go to the
cluster, through an asynchronous ``distributed.Client`` on that same loop (``_dask_workers``).
``distributed`` is imported when a session starts, never by ``import asyncflow``.
"""

from __future__ import annotations

import ipaddress
import socket
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ._cache import CacheStore
from ._cluster_options import checked_address, checked_kwargs, frozen_kwargs
from ._runners import TaskRunner
from ._scheduler import Backend, Scheduler
from ._settings import get_settings

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

    A body is sent to the cluster when one of its worker threads is free for it (as the
    cluster last told, at least one): it is Running, and its timeout counts, from then; a run
    cancelled before that never reaches the cluster. A cluster started with ``adapt_kwargs``
    is sent every body at once instead, so that it grows for them (those waiting in Dask's
    queue count as Running). A body sent cannot be stopped: a run cancelled or timed out keeps
    its worker thread until its body returns (leaving the block waits for it; Ctrl-C does not).
    Ctrl-C while a cluster starts lets the start finish, then closes the cluster. Bodies,
    arguments and results travel as Dask sends them (pickle, else cloudpickle); every result
    comes back here. In a body, ``get_run_context()`` works (with asyncflow installed on the
    workers) and submitting does not. A body that raises ``SystemExit``,
    ``KeyboardInterrupt`` or ``CancelledError`` crashes its run, not its worker. A worker that
    dies fails the runs it was running with ``WorkerCrashedError`` (a cluster the runner
    started does not run them again elsewhere: retries are the task's); losing the cluster
    fails the runs under way with ``TaskCrashedError`` saying so.
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
        max_pending: int | None = None,
    ) -> None:
        if address is not None and (
            cluster_class is not None or cluster_kwargs is not None or adapt_kwargs is not None
        ):
            raise ValueError(
                f"{_OWNER}: give either address (an existing cluster) or cluster_class, "
                "cluster_kwargs and adapt_kwargs (a cluster it starts), not both"
            )
        if (given := checked_address(_OWNER, address)) is not None:
            _warn_if_plain_tcp_off_host(given)
        if cluster_class is not None and not (
            isinstance(cluster_class, str) or callable(cluster_class)
        ):
            raise TypeError(
                f"{_OWNER}: cluster_class must be a class or its dotted name, not {cluster_class!r}"
            )
        self._address = address
        self._cluster_class = cluster_class
        self._cluster_kwargs = checked_kwargs(_OWNER, "cluster_kwargs", cluster_kwargs)
        self._adapt_kwargs = (
            None if adapt_kwargs is None else checked_kwargs(_OWNER, "adapt_kwargs", adapt_kwargs)
        )
        self._client_kwargs = checked_kwargs(_OWNER, "client_kwargs", client_kwargs)
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
            frozen_kwargs(self._cluster_kwargs),
            None if self._adapt_kwargs is None else frozen_kwargs(self._adapt_kwargs),
            frozen_kwargs(self._client_kwargs),
            *self._policy_config(),
        )

    def _make_backend(self, scheduler: Scheduler) -> Backend:
        from ._dask_workers import DaskWorkers

        return DaskWorkers(scheduler, self)


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
