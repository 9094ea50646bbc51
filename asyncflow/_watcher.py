"""A process that ends a worker's process group when this process dies (``Watcher``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator

import anyio

__all__ = ("Watcher",)

_STOP_WAIT = 2.0  # seconds a killed watcher may take to exit before it is left to subprocess

# The writing ends of the live watchers' pipes. A child forked from this process (without an
# exec: multiprocessing's fork start method, say) would hold them too, and a watcher's read
# would not end when this process dies while that child lives: the child closes them at once.
_hangups: set[int] = set()
# Held while a pipe is made and its writing end put in ``_hangups`` (making it lets go of the
# interpreter lock), and by a fork meanwhile: a fork by another thread never sees a writing end
# not yet there. Reentrant: a fork on the thread that holds it (a signal handler's, run in
# between) goes on rather than wait for itself.
_forking = threading.RLock()


def _before_fork() -> None:
    _forking.acquire()  # (looked up now: a child's is a lock of its own, see below)


def _after_fork_in_parent() -> None:
    _forking.release()


def _after_fork_in_child() -> None:
    global _forking
    _forking = threading.RLock()  # (the parent's is held, by the thread that forked)
    for fd in _hangups:
        with contextlib.suppress(OSError):
            os.close(fd)
    _hangups.clear()  # (the child's copies of the watchers then close nothing: see _kill)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Signals to this thread wait until the block ends: a signal handler run in between (a
    Python one runs between two steps of this thread) that forks would give a child that keeps
    a writing end not yet in ``_hangups``."""
    block = getattr(signal, "pthread_sigmask", None)
    if block is None:  # pragma: no cover - not POSIX
        yield
        return
    before = block(signal.SIG_BLOCK, signal.valid_signals())
    try:
        yield
    finally:
        block(signal.SIG_SETMASK, before)


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


class Watcher:
    """Kills a worker's process group when this process dies, even by SIGKILL, and even while
    a body holds the GIL in one long C call (then no thread of the worker runs, and its own
    watching of its parent cannot act).

    A shell (``read``, then ``kill -KILL -<group>``) whose stdin is a pipe that only this
    process holds the writing end of, and never writes to: its ``read`` ends when this process
    is gone. It is a child of this process, not of the worker: the worker's bodies never see it
    among their children, and it is reaped here (no zombie where this process is PID 1 or a
    subreaper). It runs in a session of its own (a Ctrl-C in the terminal does not reach it).
    Started by ``subprocess`` (vfork: the cost does not grow with this process's size, as a
    fork by the event loop's own spawn does), not through the loop, and reaped here. It must be
    stopped as soon as its worker has exited: from then on the group's number may become
    another process's."""

    __slots__ = ("_hangup", "_process")

    def __init__(self, process: subprocess.Popen[bytes], hangup: int) -> None:
        self._process = process
        self._hangup = hangup

    @classmethod
    def start(cls, group: int) -> Watcher | None:
        """A watcher of process group ``group``, or None (no shell, no process or descriptor
        to spare): then the worker's own watching is all there is."""
        with _forking, _signals_held():  # (see _forking and _signals_held)
            try:
                read_end, write_end = os.pipe()
            except OSError:
                return None
            # Known at once: a fork by another thread while the shell starts (Popen lets go
            # of the interpreter lock) closes it in the child too.
            _hangups.add(write_end)
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", f"read -r line; kill -KILL -{group}"],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException as exc:
            _hangups.discard(write_end)
            os.close(write_end)
            if not isinstance(exc, Exception):
                raise
            return None
        finally:
            os.close(read_end)
        return cls(process, write_end)

    async def stop(self) -> None:
        """Kill the watcher and reap it, without blocking the loop while it exits."""
        self._kill()
        with anyio.move_on_after(_STOP_WAIT):
            await _exited(self._process)

    def stop_now(self) -> None:
        """The same, blocking (when the loop is being torn down and nothing can be awaited)."""
        self._kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(_STOP_WAIT)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # (gone already)
            self._process.kill()
        if self._hangup in _hangups:  # (not in a forked child: closed there already)
            _hangups.discard(self._hangup)
            os.close(self._hangup)
        self._hangup = -1


async def _exited(process: subprocess.Popen[bytes]) -> None:
    """Wait until ``process`` has exited, and reap it. On Linux a pidfd says when, through the
    loop; elsewhere a blocking wait (short: it was killed)."""
    if process.poll() is not None:
        return
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        process.wait()
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    process.wait()
