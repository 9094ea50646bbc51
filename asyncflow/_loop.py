"""The background event-loop thread that ``with runner:`` uses in sync code; awaiting work to its
end through cancellations."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ("LoopThread", "new_event_loop", "to_its_end")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop: uvloop when ``kind`` is "uvloop", or "auto" and uvloop is installed and can
    run here (see ``closed_standard_descriptor``)."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError(
                    "ASYNCFLOW_EVENT_LOOP=uvloop but uvloop is not installed"
                ) from None
        else:
            closed = closed_standard_descriptor()
            if closed is None:
                return uvloop.new_event_loop()
            if kind == "uvloop":
                raise RuntimeError(
                    f"ASYNCFLOW_EVENT_LOOP=uvloop but this process's descriptor {closed} is "
                    "closed: libuv aborts the process when one of its own descriptors is "
                    "numbered 0, 1 or 2 (use ASYNCFLOW_EVENT_LOOP=auto or asyncio)"
                )
    return asyncio.new_event_loop()


def closed_standard_descriptor() -> int | None:
    """The first of descriptors 0, 1 and 2 that is closed, if any (a process started with
    ``<&-`` or ``>&-``). The next descriptor opened takes that number; libuv asserts that none
    of its own has one of those numbers and aborts the process as it closes its loop."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # noqa: PERF203 - three descriptors, once per loop made
            return fd
    return None


class LoopThread:
    """One thread running one event loop until ``stop()``, which joins it and closes the loop."""

    def __init__(self, kind: str, name: str) -> None:
        self.loop = new_event_loop(kind)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # the loop already stopped and closed
            pass
        self._thread.join()


async def to_its_end(work: Awaitable[T]) -> tuple[asyncio.Future[T], BaseException | None]:
    """Await ``work`` to its end even if the awaiting task is cancelled meanwhile (``work`` is
    not): its future, done, and the last cancellation of the awaiting task, if any (for the
    caller to raise, or not, once the work is over)."""
    done = asyncio.ensure_future(work)
    cancelled: BaseException | None = None
    while not done.done():
        try:
            await asyncio.wait([done])  # (a cancel of this task leaves the work going)
        except asyncio.CancelledError as exc:  # noqa: PERF203 - only when cancelled
            cancelled = exc
    return done, cancelled
