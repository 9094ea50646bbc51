"""What worker processes write to their stderr, passed on to this process's ``sys.stderr``.

A child that inherited this process's stderr would write there itself; a process worker's
stderr is a pipe of its pool's instead (its tail goes in crash errors), so the pool passes what
comes through on. From a thread of its own: a stderr nobody reads (a pipe no one drains, a
terminal paused) then stalls that thread, never the loop, whose timeouts and other runs go on.
At most ``_BUDGET`` bytes wait for it; more is dropped, and said so once it writes again.
Through ``sys.stderr`` as it is when the bytes come (a test's capture, a progress display's
redirection see it), and nowhere when there is none (a process started with its stderr closed:
descriptor 2 may be another file by now).
"""

from __future__ import annotations

import codecs
import contextlib
import queue
import signal
import sys
import threading
from typing import Any

__all__ = ("StderrRelay",)

_BUDGET = 1 << 20  # bytes that may wait for a stderr that is not being read


class StderrRelay:
    """One pool's: ``put`` from its loop, a thread of its own writes; ``close`` ends it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, bytes] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the counts below: the loop and the thread
        self._waiting = 0  # bytes put, not written yet
        self._dropped = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    @staticmethod
    def decoder() -> Any:
        """A decoder for one worker's output (a character may come in two reads)."""
        return codecs.getincrementaldecoder("utf-8")("replace")

    def put(self, decoder: Any, data: bytes) -> None:
        """Loop side: ``data`` a worker wrote (``decoder``: that worker's)."""
        if self._closed or sys.stderr is None:
            return
        with self._lock:
            if self._waiting + len(data) > _BUDGET:
                self._dropped += len(data)
                return
            self._waiting += len(data)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="asyncflow-stderr-relay", daemon=True
            )
            self._thread.start()
        self._queue.put((decoder, data))

    def close(self, wait: float) -> None:
        """Loop side, once no worker writes any more: what waits is written (for at most
        ``wait`` seconds: a stderr nobody reads keeps the rest), and the thread ends."""
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(wait)

    def _run(self) -> None:
        if hasattr(signal, "pthread_sigmask"):
            # A stderr whose reader is gone: an error here (EPIPE), not this process killed
            # (a program may have put SIGPIPE back to its default): the signal goes to the
            # thread that wrote, which blocks it.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
        untold = 0  # bytes dropped, not said yet (said at the end of a line, not inside one)
        at_line_start = True
        while (item := self._queue.get()) is not None:
            decoder, data = item
            with self._lock:
                self._waiting -= len(data)
                untold += self._dropped
                self._dropped = 0
            text = decoder.decode(data)
            if text:
                at_line_start = text.endswith("\n")
            if untold and at_line_start:
                text += _dropped(untold)
                untold = 0
            _write(text)
        with self._lock:
            untold += self._dropped
        if untold:
            _write(("" if at_line_start else "\n") + _dropped(untold))


def _dropped(count: int) -> str:
    return (
        f"[asyncflow: {count} bytes process workers wrote to their stderr were dropped: this "
        "process's stderr was not being read]\n"
    )


def _write(text: str) -> None:
    stream = sys.stderr
    if stream is None or not text:
        return
    with contextlib.suppress(OSError, ValueError):  # (closed: nowhere to say it)
        stream.write(text)
        stream.flush()
