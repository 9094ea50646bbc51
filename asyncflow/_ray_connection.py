"""This process's connection to Ray, shared by every ``RayTaskRunner`` session in it.

Ray allows one connection per process (``ray.init``), so sessions share it: the first one
connects (or starts a local cluster), the last one to end disconnects (and stops that
cluster). A connection the user made with ``ray.init`` is used and left open.

Ray is connected from a thread of its own that lives until ``ray.shutdown``: on Linux, Ray
ties the processes it starts to the thread that started them (``PR_SET_PDEATHSIG``), so a
cluster started from a worker thread, or from the thread of a ``with runner:`` session, would
die with that thread, under the other sessions still using it. Not on the event loop's thread
either: a start takes seconds, and other runners may share that loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

__all__ = ("Lease", "connect")

_OWNER = "RayTaskRunner"

_lock = threading.Lock()
_host: _Host | None = None  # the connection this module made, while any session uses it
_closing: Future[None] | None = None  # the last one's shutdown, while it runs


class Lease:
    """One session's use of the connection; ``release`` once, when the session ends."""

    def __init__(self, host: _Host | None) -> None:
        self._host = host  # None: the user's own connection

    def release(self) -> Future[None]:
        """Done when the connection is closed, or at once when others still use it."""
        return _release(self._host)


class _Host:
    """The thread that connects to Ray and, once nobody uses the connection, disconnects."""

    def __init__(self, config: tuple[Any, ...], address: str | None, kwargs: dict[str, Any]):
        self.config = config
        self.users = 1
        self.ready: Future[None] = Future()
        self.closed: Future[None] = Future()
        self._stop = threading.Event()
        self._address = address
        self._kwargs = kwargs
        self._after = _closing  # a shutdown still under way: Ray connects once it is over
        self._thread = threading.Thread(target=self._run, name="asyncflow-ray", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import ray

        if self._after is not None:
            self._after.result()
        quiet = _NotMainThreadNote()
        worker_logger = logging.getLogger("ray._private.worker")
        worker_logger.addFilter(quiet)
        try:
            ray.init(self._address, **self._kwargs)
        except BaseException as exc:
            with _lock:
                _forget(self)
            self.ready.set_exception(exc)
            self.closed.set_result(None)
            return
        finally:
            worker_logger.removeFilter(quiet)
        self.ready.set_result(None)
        self._stop.wait()
        try:
            ray.shutdown()
        finally:
            with _lock:
                _forget(self)
            self.closed.set_result(None)


class _NotMainThreadNote(logging.Filter):
    """Drops Ray's note that it set no SIGTERM handler: this module connects from a thread of
    its own on purpose (see the module's docstring), and leaves the process's signals alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _forget(host: _Host) -> None:
    """(Under the lock.) ``host`` no longer connects anyone."""
    global _host, _closing
    if _host is host:
        _host = None
    if _closing is host.closed:
        _closing = None


def connect(address: str | None, init_kwargs: Mapping[str, Any]) -> tuple[Lease, Future[None]]:
    """A lease on the connection, and a future done once it is made (failed if it cannot be)."""
    global _host
    import ray

    config = (address, tuple(sorted((k, repr(v)) for k, v in init_kwargs.items())))
    with _lock:
        host = _host
        if host is not None:
            if host.config != config:
                raise RuntimeError(
                    f"{_OWNER}: Ray is connected in this process by another session "
                    f"(address={host.config[0]!r}, init_kwargs {dict(host.config[1])}); "
                    "Ray allows one connection per process, so this session (address="
                    f"{address!r}, init_kwargs {dict(config[1])}) can start only once those "
                    "sessions end, or with the same options"
                )
            host.users += 1
            return Lease(host), host.ready
        if _closing is None and ray.is_initialized():
            if address is not None or init_kwargs:
                raise RuntimeError(
                    f"{_OWNER}: Ray is already connected in this process (ray.init), so "
                    "address and init_kwargs cannot apply; give neither to use that connection"
                )
            return Lease(None), _done()
        _host = host = _Host(config, address, {"logging_level": logging.WARNING, **init_kwargs})
        return Lease(host), host.ready


def _release(host: _Host | None) -> Future[None]:
    global _host, _closing
    if host is not None:
        with _lock:
            host.users -= 1
            if host.users == 0:
                if _host is host:  # (else its start failed: it is forgotten already)
                    _host, _closing = None, host.closed
                host.stop()
                return host.closed
    return _done()


def _done() -> Future[None]:
    done: Future[None] = Future()
    done.set_result(None)
    return done
