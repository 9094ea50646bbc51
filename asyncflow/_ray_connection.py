"""This process's connection to Ray, shared by every ``RayTaskRunner`` session in it.

Ray allows one connection per process (``ray.init``), so sessions share it: the first one
connects (or starts a local cluster), the last one to end disconnects (and stops that
cluster). A connection the user made with ``ray.init`` is used and left open.

Ray is connected from a thread of its own that lives until ``ray.shutdown``: on Linux, Ray
ties the processes it starts to the thread that started them (``PR_SET_PDEATHSIG``), so a
cluster started from a worker thread, or from the thread of a ``with runner:`` session, would
die with that thread, under the other sessions still using it. Not on the event loop's thread
either: importing Ray and starting a cluster take seconds, and other runners may share that
loop. A session that stops waiting for a connection still being made (cancelled, Ctrl-C) leaves
that thread to finish: it disconnects as soon as the connection is made, or ends if it fails.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from typing import Any

__all__ = ("Lease", "connect")

_OWNER = "RayTaskRunner"

_lock = threading.Lock()
_host: _Host | None = None  # the connection this module made, while any session uses it
_closing: _Host | None = None  # the last one, while its shutdown runs


class Lease:
    """One session's use of the connection; ``release`` once, when the session ends."""

    def __init__(self, host: _Host | None) -> None:
        self._host = host  # None: the user's own connection

    def release(self) -> Future[None]:
        """Done once the connection is closed, or at once when others still use it (or it was
        never this module's to close). Then ``join`` waits for its thread's very end."""
        return _release(self._host)

    def join(self) -> None:
        if self._host is not None and self._host.closed.done():
            self._host.join()


class _Host:
    """The thread that connects to Ray and, once nobody uses the connection, disconnects."""

    def __init__(self, address: str | None, kwargs: dict[str, Any], after: _Host | None):
        self.address = address
        self.kwargs = kwargs
        self.users = 1
        self.ready: Future[None] = Future()
        self.closed: Future[None] = Future()
        self._stop = threading.Event()
        self._after = after  # a shutdown still under way: Ray connects once it is over
        self._thread = threading.Thread(target=self._run, name="asyncflow-ray", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def keep(self) -> None:
        """(Under the lock, before it is connected.) Do not stop after all."""
        self._stop.clear()

    def _run(self) -> None:
        try:
            if self._after is not None:
                self._after.closed.result()
            self._connect()
        except BaseException as exc:
            with _lock:
                _forget(self)
            self.ready.set_exception(exc)
            self.closed.set_result(None)
            return
        with _lock:  # (with connect's look at a start given up: see there)
            self.ready.set_result(None)
        self._stop.wait()
        try:
            import ray

            ray.shutdown()
        finally:
            with _lock:
                _forget(self)
            self.closed.set_result(None)  # (the thread's last step: join it to see it end)

    def _connect(self) -> None:
        import ray

        quiet = _NotMainThreadNote()
        worker_logger = logging.getLogger("ray._private.worker")
        worker_logger.addFilter(quiet)
        try:
            ray.init(self.address, **{"logging_level": logging.WARNING, **self.kwargs})
        except BaseException:
            # A start can fail after the local node started (a runtime_env it cannot set up):
            # Ray's state in this process would point at processes that die with this thread.
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise
        finally:
            worker_logger.removeFilter(quiet)

    def join(self) -> None:
        self._thread.join()


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
    if _closing is host:
        _closing = None


def _described(address: str | None, kwargs: Mapping[str, Any]) -> str:
    return f"address={address!r}, init_kwargs={dict(kwargs)!r}"


def connect(address: str | None, init_kwargs: Mapping[str, Any]) -> tuple[Lease, Future[None]]:
    """A lease on the connection, and a future done once it is made (failed if it cannot be)."""
    global _host, _closing
    kwargs = dict(init_kwargs)
    with _lock:
        host = _host
        if host is not None:
            if (host.address, host.kwargs) != (address, kwargs):
                raise RuntimeError(
                    f"{_OWNER}: Ray is connected in this process for another session "
                    f"({_described(host.address, host.kwargs)}); Ray allows one connection per "
                    f"process, so this session ({_described(address, kwargs)}) can start only "
                    "with the same options, or once the sessions using it end"
                )
            host.users += 1
            return Lease(host), _copy(host.ready)
        closing = _closing
        if closing is not None and not closing.ready.done():  # a start given up, still going
            if (closing.address, closing.kwargs) == (address, kwargs):
                # Taken up again: it goes on connecting instead of closing once connected.
                closing.users += 1
                closing.keep()
                _host, _closing = closing, None
                return Lease(closing), _copy(closing.ready)
            raise RuntimeError(
                f"{_OWNER}: a connection to Ray that was given up "
                f"({_described(closing.address, closing.kwargs)}) is still being made, and Ray "
                f"allows one per process: this session ({_described(address, kwargs)}) can "
                "start once it is made or fails (Ray may try a wrong address for minutes), or "
                "with the same options"
            )
        ray = sys.modules.get("ray")  # (not imported: not connected)
        if _closing is None and ray is not None and ray.is_initialized():
            if address is not None or kwargs:
                raise RuntimeError(
                    f"{_OWNER}: Ray is already connected in this process (ray.init), so "
                    "address and init_kwargs cannot apply; give neither to use that connection"
                )
            return Lease(None), _done()
        _host = host = _Host(address, kwargs, _closing)
        return Lease(host), _copy(host.ready)


def _release(host: _Host | None) -> Future[None]:
    global _host, _closing
    if host is not None:
        with _lock:
            host.users -= 1
            if host.users == 0:
                if _host is host:  # (else its start failed: it is forgotten already)
                    _host, _closing = None, host
                host.stop()
                return _copy(host.closed)
    return _done()


def _copy(shared: Future[None]) -> Future[None]:
    """A future of the caller's own with ``shared``'s outcome: awaited through
    ``asyncio.wrap_future``, a cancelled wait cancels the future it waits on, and ``shared`` is
    also other sessions' and the connection thread's."""
    mine: Future[None] = Future()

    def copy(done: Future[None]) -> None:
        with contextlib.suppress(InvalidStateError):  # (the caller stopped waiting)
            if (error := done.exception()) is not None:
                mine.set_exception(error)
            else:
                mine.set_result(None)

    shared.add_done_callback(copy)
    return mine


def _done() -> Future[None]:
    done: Future[None] = Future()
    done.set_result(None)
    return done
