"""Showing what worker processes write to their stderr on this process's ``sys.stderr``.

Written by a thread of its own, never by the scheduler's loop: a stderr nobody reads (a paused
pager, a full pipe) would otherwise stop every run. What waits for that thread is bounded; past
the bound, output is dropped, and a line says how much once writing works again.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import sys
import threading
from collections import deque

__all__ = ("Echo", "LineSplitter")

_LONGEST = 4096  # characters of one line shown before the rest of it comes
_BACKLOG = 1 << 20  # characters waiting to be written, at most


class LineSplitter:
    """One worker's stderr bytes as whole lines of text, each ended by a newline or a carriage
    return (a character split between two reads, or a line between two workers' writes, is
    never cut), a very long line in pieces."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._rest = ""

    def feed(self, data: bytes, end: bool = False) -> str:
        """The whole lines ``data`` completes; at the ``end``, everything left."""
        text = self._rest + self._decoder.decode(data, final=end)
        # (A carriage return ends a line too: a progress bar redraws its line with one.)
        cut = max(text.rfind("\n"), text.rfind("\r")) + 1
        if end or len(text) - cut > _LONGEST:  # (an unfinished line that long goes as it is)
            cut = len(text)
        self._rest = text[cut:]
        return text[:cut]


class Echo:
    """Writes text to ``sys.stderr`` (as it is when writing) from a daemon thread that runs
    while there is text to write. ``drained`` waits, for a while, until it is all written."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._texts: deque[str] = deque()
        self._size = 0  # characters in _texts
        self._dropped = 0  # characters dropped since the last note of it
        self._writing = False  # a thread writes (it ends once nothing is left)
        self._done: list[asyncio.Future[None]] = []  # drained() calls waiting for it to end

    def show(self, text: str) -> None:
        """Any thread, never blocks: ``text`` is written soon (or dropped, past the bound)."""
        if not text:
            return
        with self._cond:
            if self._size + len(text) > _BACKLOG:
                self._dropped += len(text)
                return
            self._texts.append(text)
            self._size += len(text)
            self._start_writing()

    def _start_writing(self) -> None:
        # (Under the lock.)
        if self._writing or not self._texts:
            return
        thread = threading.Thread(target=self._write, name="asyncflow-worker-stderr", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # (no thread to be had now: tried again at the next show, or drain)
            return
        self._writing = True

    async def drained(self, timeout: float) -> None:
        """Wait until everything shown so far is written, for at most ``timeout`` seconds (a
        stderr that blocks for longer is left to its daemon thread)."""
        with self._cond:
            self._start_writing()
            if not self._writing:
                return
            done = asyncio.get_running_loop().create_future()
            self._done.append(done)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done, timeout)

    def _write(self) -> None:
        while True:
            with self._cond:
                if not self._texts:
                    self._writing = False
                    done, self._done = self._done, []
                    break
                text = "".join(self._texts)
                self._texts.clear()
                self._size = 0
                dropped, self._dropped = self._dropped, 0
            if dropped:
                text += (
                    f"[asyncflow: {dropped} characters that workers wrote to stderr were "
                    "dropped: this process's stderr was not being read]\n"
                )
            stream = sys.stderr
            if stream is not None:
                with contextlib.suppress(Exception):  # (closed, or gone: nowhere to show it)
                    stream.write(text)
                    stream.flush()
        for future in done:
            with contextlib.suppress(RuntimeError):  # (its loop is closed: no one waits)
                future.get_loop().call_soon_threadsafe(_set_done, future)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
