"""Worker processes for task bodies (``ProcessPoolTaskRunner``).

Why a pool of our own on ``anyio.open_process`` rather than ``anyio.to_process``: the latter
ignores cancellation by default, drops the worker's stderr and loses remote tracebacks, and
cannot tell which task a dead worker was running. Here each worker runs one task at a time, so
a crash is blamed exactly; every call and reply travels as cloudpickle bytes over the worker's
own pipes; a timeout or cancel kills the worker's process group and a fresh worker replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import io
import itertools
import logging
import marshal
import mmap
import operator
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import cloudpickle
from anyio.abc import Process

from ._echo import Echo, LineSplitter
from ._error_text import error_text, message_of
from ._futures import (
    COMPLETED,
    PENDING,
    RUNNING,
    Future,
    PlainRuns,
    cancelled_error,
    params_of,
    status_of,
)
from ._logging import TASK_RUNS, handle_remote_record
from ._params import IMMUTABLE
from ._watcher import Watcher
from .exceptions import (
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskCrashedError,
    WorkerCrashedError,
    WorkerStartError,
)

if TYPE_CHECKING:
    from ._mapping import MapRows
    from ._scheduler import Scheduler

__all__ = ("ProcessWorkers",)

_HEADER = struct.Struct(">Q")  # (a message may be 4 GiB or more)
# The reply ledger's numbers, in the machine's byte order (its layout: see _process_worker).
_U32 = struct.Struct("=I")
_I64 = struct.Struct("=q")
_AT = 4  # offset of the ledger's u32: the worker's position in a batch
_FIRST = 8  # offset of the ledger's u32: the index in its batch of the first reply held
_BATCH = 12  # offset of the ledger's u32: the number of the batch whose replies are held
_SKIPS = 16  # offset of the ledger's skip marks, one byte per call of a batch
_START = _SKIPS + 1024  # offset of the held replies
_LEDGER_SIZE = 1 << 18  # bytes of replies a worker may hold before it writes them out
_WORKER = str(Path(__file__).with_name("_process_worker.py"))
_TAIL = 4096  # bytes of a worker's stderr kept for error messages
_STDERR_GRACE = 0.5  # seconds a worker's stderr is read for after it exited, if it has not ended
_ECHO_GRACE = 1.0  # seconds the pool's close waits for its workers' stderr to be shown here
_SLOW_START = 30.0  # seconds after which a worker still starting is said to be slow (a warning)
_GRACE = 0.5  # seconds between terminate and kill
_OUR_SIGNALS = (-signal.SIGTERM, -signal.SIGKILL)  # how a worker stopped by kill() ends
_BATCH_MAX = 1024  # items sent to a worker in one message when the queue is deep
_BATCH_MIN = 512  # calls a batch may take at least, if the queue holds them (and they are cheap)
_BATCH_MIN_TIME = 0.0025  # seconds of work that minimum stands for at most (the uneven share)
_BATCH_TIME = 0.01  # seconds of work (by the last call's time) a batch holds at most
_RECHECK = 0.05  # seconds: a cancel marked in a batch checks then that its call is not running
assert _BATCH_MAX <= _START - _SKIPS  # a skip mark for every call of a batch
_BATCH_COST = 0.002  # seconds: calls taking longer are not batched
_RECUT = 4.0  # a map's queued batches are cut again when its calls take this many times longer
_MAX_FAILED_STARTS = 3  # workers in a row dying before their first answer: stop starting more
_START_PAUSE = 5.0  # seconds after the last of those before one more start is tried
# Reply kinds (see _process_worker).
_OK, _LOG, _HELD_KIND = ord("o"), ord("l"), ord("h")  # a result; a log record; held replies
_STARTED = ord("s")  # the body of a lone call with a timeout starts (not a reply)
_PLAIN = ord("p")  # a result of a plain type (None, bool, int, float, complex, str, bytes)
_INT = ord("i")  # an int result held in the ledger, as a signed 8-byte number
_LOADS: dict[int, Callable[[bytes], Any]] = {  # how a result's reply of each kind loads
    _OK: pickle.loads,
    _PLAIN: marshal.loads,
    _INT: lambda data: _I64.unpack(data)[0],
}
_RESULTS = ord("r")  # the results of every call of a batch, as one pickled list
_VALUES = ord("v")  # the same when each is of an immutable plain type: the values themselves
_WHOLE_BATCH = frozenset({_RESULTS, _VALUES})
# A call of a batch: its work item, its task, and its positional and keyword arguments.
_Call = tuple[Any, Any, tuple[Sequence[Any], dict[str, Any]]]


def _dumps(obj: Any) -> bytes:
    """``obj`` pickled for a worker: plainly when that gives what cloudpickle would (several
    times faster for plain data and importable functions), else by cloudpickle. The plain
    pickler gets cloudpickle's reducers for the types it treats its own way (bound methods,
    properties, loggers, dataclass field sentinels...) as a dict, looked up in C: no Python call
    per object, unlike cloudpickle's ``reducer_override``.

    With cloudpickle's reducer table, plain pickle differs from cloudpickle only for what
    cloudpickle sends by value: objects plain pickle refuses (lambdas, closures, dynamic
    classes: the first attempt raises), and those of ``__main__`` or of modules registered to
    pickle by value, which plain pickle would send by a reference the worker cannot resolve.
    Their module names are in the bytes of a by-reference pickle, so a search for them finds
    every such case (a string that merely contains one only costs the slower path). Extension
    codes (``copyreg.add_extension``) would hide a name: with any registered, and without
    cloudpickle's registry to read, cloudpickle always.
    """
    by_value = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    if (
        by_value is None
        or copyreg._extension_registry  # type: ignore[attr-defined]
        or (type(obj) is types.FunctionType and obj.__module__ == "__main__")  # by value
    ):
        return _cloudpickle_dumps(obj)
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _reducers()
    try:
        pickler.dump(obj)
    except BaseException as exc:
        if not _fails_its_run(exc):
            raise
        return _cloudpickle_dumps(obj)
    data = buffer.getvalue()
    if b"__main__" in data or any(name.encode() in data for name in tuple(by_value)):
        return _cloudpickle_dumps(obj)
    return data


def _reducers() -> dict[Any, Any]:
    """cloudpickle's reducer table (its own reducers over ``copyreg``'s) as one plain dict, for
    lookups in C, as the tables are now. Built with dict updates, in C: with big libraries
    imported ``copyreg`` holds hundreds of entries, too many for the ChainMap's own copy, in
    Python, for every message (a few µs a batch this way, against a few µs a call)."""
    table: dict[Any, Any] = {}
    for reducers in reversed(cloudpickle.Pickler.dispatch_table.maps):  # the first map wins
        table.update(reducers)
    return table


def _cloudpickle_dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer).dump(obj)
    return buffer.getvalue()


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # (cloudpickle is untyped)
    """cloudpickle's pickler, but for code objects: see ``_code_keeping_its_file``."""

    def __init__(self, file: io.BytesIO) -> None:
        table = _reducers()
        table[types.CodeType] = _code_keeping_its_file
        # Read by the pickler's own init (which copies it in): set before it runs, on this
        # instance, over the class's table.
        self.dispatch_table = table
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)


_DYNAMIC_CODE = "<dynamic-code>"  # the file cloudpickle gives every code object it sends


def _code_keeping_its_file(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object (a function sent by value: one of a script's,
    a lambda, a closure), with the file it was defined in kept: a body's remote traceback then
    names its file, and shows its lines where the worker can read that file."""
    make, args = cloudpickle.Pickler.dispatch_table[types.CodeType](code)
    # (Strings alone are compared: ``python -bb`` makes a comparison with bytes an error.)
    at = next((i for i, arg in enumerate(args) if type(arg) is str and arg == _DYNAMIC_CODE), None)
    if at is None:  # (another version of cloudpickle: as it is)
        return make, args
    return make, (*args[:at], code.co_filename, *args[at + 1 :])


def _fails_its_run(exc: BaseException) -> bool:
    """Whether ``exc``, raised here while a value was pickled or loaded (by the value's own
    code: a ``__reduce__`` may raise anything, ``sys.exit`` and ``BaseException`` subclasses
    included), only fails that value's run. Not a ``KeyboardInterrupt`` on the main thread:
    there it may be the user's Ctrl-C, and it goes on (a loop on another thread gets none)."""
    return not (
        isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread()
    )


_task_of = operator.attrgetter("_task")
_policy_of = operator.attrgetter("_policy")
_params_of = operator.attrgetter("_params")
_deps_of = operator.attrgetter("_deps")
_id_of = operator.attrgetter("_id")
_item_of = operator.itemgetter(0)  # of a call: (item, task, (args, kwargs))
_kwargs_of = operator.itemgetter(1)  # of a call's (args, kwargs)
_split_of = operator.itemgetter(2)  # of a call


def _cost_key(task: Any) -> Any:
    """What the time of a task's calls is remembered by: its function, when a plain one (a
    plain callable's task is made again once no run holds it, and a map after a first call
    must find the time that call took), else the task."""
    fn = task.fn
    return fn if type(fn) is types.FunctionType else task


def _plain_unfinished(item: Any) -> bool:
    return type(item) is Future and item._policy is None and item._status < COMPLETED


def _plain(item: Any) -> bool:
    """A run with no policy (no timeout, retries, limits...): safe to send in a batch."""
    return getattr(item, "_policy", True) is None


class _MapBatch(list[Future[Any]]):
    """A batch of a map's runs made when the map was submitted (see ``_prepared``): the
    runs, with their run numbers and where their parameters are (the map's rows, from
    ``start`` on), and the time a call was taken to take then."""

    __slots__ = ("cost", "ids", "rows", "shareable", "start")

    def __init__(self, runs: PlainRuns, start: int, size: int, cost: float) -> None:
        super().__init__(runs[start : start + size])
        self.rows = runs.rows
        self.start = start
        self.ids = runs.ids[start : start + size]
        self.shareable = runs.shareable
        self.cost = cost


class _MapCalls:
    """The calls of a batch made at submit, as a deque of ``(item, task, ((), params))`` holds
    them (``popleft``, ``appendleft`` of the call just taken, ``clear``, ``len``, indexing,
    iteration), each call made only when read: the common path (the whole batch answered at
    once) reads none of them (``items``), and the batch keeps no object per call for the
    garbage collector to walk while it runs."""

    __slots__ = ("_first", "_rows", "_runs", "_start", "_task")

    def __init__(self, runs: list[Any], rows: MapRows, first: int, task: Any) -> None:
        self._runs = runs
        self._rows = rows  # (the map's: run i of this batch is its child ``first + i``)
        self._first = first
        self._task = task
        self._start = 0

    def _call(self, index: int) -> _Call:
        return (self._runs[index], self._task, ((), self._rows.row(self._first + index)))

    def items(self) -> list[Any]:
        """The items of the calls left, in order."""
        return self._runs[self._start :]

    def __len__(self) -> int:
        return len(self._runs) - self._start

    def __getitem__(self, index: int) -> _Call:
        size = len(self)
        if not -size <= index < size:
            raise IndexError("index out of range")
        return self._call(self._start + index % size)

    def __iter__(self) -> Iterator[_Call]:
        return map(self._call, range(self._start, len(self._runs)))

    def __reversed__(self) -> Iterator[_Call]:
        return map(self._call, reversed(range(self._start, len(self._runs))))

    def popleft(self) -> _Call:
        if self._start >= len(self._runs):
            raise IndexError("pop from an empty batch")
        self._start += 1
        return self._call(self._start - 1)

    def appendleft(self, call: _Call) -> None:
        """Put back the call ``popleft`` took last (the only one that may come back)."""
        if self._start == 0 or call[0] is not self._runs[self._start - 1]:
            raise ValueError("only the call taken last can be put back")
        self._start -= 1

    def clear(self) -> None:
        self._start = len(self._runs)


_Calls = deque[_Call] | _MapCalls


def _items_of(calls: _Calls) -> list[Any]:
    """The items of ``calls``, in order."""
    return calls.items() if type(calls) is _MapCalls else list(map(_item_of, calls))


class _Died(Exception):  # noqa: N818 - internal signal, never escapes
    def __init__(self, blamed: bool = False) -> None:
        super().__init__()
        self.blamed = blamed  # the call that took the worker down was already reported


def _ledger() -> tuple[int, mmap.mmap] | None:
    """A file in memory that a worker holds the replies of a batch in (its descriptor, to pass
    to the worker, and this side's map of it), or None if the system cannot make one."""
    try:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("asyncflow-replies", os.MFD_CLOEXEC)
        else:  # pragma: no cover - systems without memfd: an unlinked temporary file
            with tempfile.TemporaryFile() as file:
                fd = os.dup(file.fileno())
        try:
            os.ftruncate(fd, _LEDGER_SIZE)
            return fd, mmap.mmap(fd, _LEDGER_SIZE)
        except BaseException:
            os.close(fd)
            raise
    except OSError:  # pragma: no cover - replies then go one by one
        return None


def _position(ledger: mmap.mmap) -> int:
    """The worker's position in its batch of several, by its ledger (0: no call started;
    ``2 * i + 1``: call i runs; ``2 * i + 2``: its body returned)."""
    at: int = _U32.unpack_from(ledger, _AT)[0]
    return at


def _held_replies(data: Any, start: int, end: int) -> list[bytes]:
    """The replies held in ``data[start:end]`` (as in the ledger), each its kind and data."""
    replies: list[bytes] = []
    while start < end:
        (size,) = _U32.unpack_from(data, start)
        start += 4
        replies.append(bytes(data[start : start + size]))
        start += size
    return replies


class _Worker:
    """One worker process and its pipes; runs one call at a time."""

    def __init__(
        self,
        process: Process,
        loop: asyncio.AbstractEventLoop,
        ledger: mmap.mmap | None = None,
        echo: Echo | None = None,
    ) -> None:
        self.process = process
        self._echo = echo  # shows its stderr (see _show)
        self._lines = LineSplitter()
        # Its pool's loop: a cancel may stop it between two turns of a loop run by hand, when
        # no loop is running.
        self.loop = loop
        self.watcher: Watcher | None = None  # ends its group if this process dies
        self.ledger = ledger  # where it holds the replies of a numbered batch
        self.batches = 0  # numbered batches sent to it
        self.holding = -1  # the number of the batch it runs now, if numbered
        self.batch_size = 0  # the calls of the batch it was sent last
        self.unanswered: _Calls | None = None  # the calls of its batch not answered yet
        self.runs: list[Any] = []  # the runs of its batch of several, in order
        # The same, run -> index: made when a cancel first looks for one (most batches never).
        self.positions: dict[Any, int] | None = None
        # Without a ledger: runs of its batch cancelled while replies before them were still
        # on their way; the worker is stopped when one of them is the first unanswered.
        self.stop_at: set[Any] = set()
        self.skipped = 0  # calls it was told to skip (cancelled before they started)
        self.pid = process.pid
        self.label = f"process {self.pid}"  # names it in events
        self._buffer = bytearray()
        self.stderr = bytearray()
        self.killed = False
        self.reaped = False  # exited, and whatever it left in its process group killed
        self.calls = 0  # calls answered
        self.drain: asyncio.Task[None] | None = None  # reads its stderr
        self.stderr_fd = -1  # the read end of its stderr pipe, until its drain task takes it
        self.idle_since = 0.0
        self.announced: Any = None  # the last run it was sent that subscribers saw start

    async def drain_stderr(self, lingering: set[int]) -> None:
        """Read its stderr (the read end ``stderr_fd`` of the pipe, this task's to close) until
        it ends; once the worker has exited, end its group (see ``reap``) at once, even while
        it is idle and nothing else looks at it.

        A process it started in a session of its own (a daemon) may keep the pipe open for as
        long as it lives, and must not hold the runner's exit: ``_STDERR_GRACE`` seconds after
        the worker exited, the task ends all the same, and the pipe is left in ``lingering``,
        read on (its output still shown) until it ends or the pool closes it (the daemon's writes
        then fail, as when this process exits). (The pipe is this pool's own, not the loop's
        subprocess pipe: the exit did not end a wait for the process through that one.)"""
        fd, self.stderr_fd = self.stderr_fd, -1  # (this task's from now on)
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self.stderr += data
                del self.stderr[:-_TAIL]
                self._show(data)
                return
            self._show(b"", end=True)
            loop.remove_reader(fd)
            if fd in lingering:  # (the task is over)
                lingering.discard(fd)
                os.close(fd)
            elif not ended.done():
                ended.set_result(None)

        os.set_blocking(fd, False)
        loop.add_reader(fd, readable)
        try:
            await self.process.wait()
            await asyncio.wait({ended}, timeout=_STDERR_GRACE)  # (what it wrote last)
        except BaseException:
            # The loop is being torn down (an error escaped it; or it was closed, and this
            # task dropped): the worker goes now, with its group and its watcher, which
            # nothing will stop later.
            if not ended.done():
                with contextlib.suppress(Exception):  # (a closed loop has no readers left)
                    loop.remove_reader(fd)
            os.close(fd)
            self._stop_now()
            raise
        if ended.done():
            os.close(fd)
        else:
            lingering.add(fd)
        await self._end_group()

    def _show(self, data: bytes, end: bool = False) -> None:
        """Show what it wrote to its stderr on this process's stderr, whole lines at a time
        (lines of workers writing at once do not mix), the rest once it ``end``s."""
        if self._echo is not None:
            self._echo.show(self._lines.feed(data, end))

    def _stop_now(self) -> None:
        """Kill its group and stop its watcher, at once (the loop is being torn down)."""
        watcher = self._kill_group()
        if watcher is not None:
            watcher.stop_now()

    def __del__(self) -> None:
        # A stderr task that never ran, dropped with a loop closed at once (no done-callback
        # runs then): its pipe is closed here, at the last.
        fd = getattr(self, "stderr_fd", -1)  # (one made without __init__ has none)
        if fd >= 0:
            self.stderr_fd = -1
            with contextlib.suppress(OSError):
                os.close(fd)

    def drain_ended(self, task: asyncio.Task[None]) -> None:
        """Its stderr task ended: if it never ran (cancelled at once, the loop being torn
        down), what it would have closed and stopped is, now."""
        if self.stderr_fd >= 0:
            os.close(self.stderr_fd)
            self.stderr_fd = -1
            self._stop_now()

    async def _end_group(self) -> None:
        """The worker has exited: kill whatever it left in its process group, and stop its
        watcher, before its number can become another process's (the loop reaped it)."""
        watcher = self._kill_group()
        if watcher is not None:
            await watcher.stop()

    def _kill_group(self) -> Watcher | None:
        """Kill the worker's process group (once); the watcher, to stop, if not stopped yet."""
        if not self.reaped:
            self.reaped = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        watcher, self.watcher = self.watcher, None
        return watcher

    async def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send(_HEADER.pack(len(data)) + data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise _Died from exc

    async def receive(self) -> list[bytes]:
        """The replies that have arrived (at least one): each a kind byte and its data."""
        stdout = self.process.stdout
        assert stdout is not None
        buffer = self._buffer
        frames: list[bytes] = []
        while True:
            start = 0
            end = len(buffer)
            while end - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer, start)
                if end - start < _HEADER.size + size:
                    break
                start += _HEADER.size
                if buffer[start] == _HELD_KIND:
                    frames += _held_replies(buffer, start + 1, start + size)
                else:
                    frames.append(bytes(buffer[start : start + size]))
                start += size
            if start:
                del buffer[:start]
            if frames:
                return frames
            try:
                buffer += await stdout.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise _Died from None

    def take(self, calls: _Calls, may_hold: bool) -> int | None:
        """The worker is sent the batch ``calls``: for a batch of several, its calls are
        listed, and the ledger's numbers and skip marks cleared (without a ledger, the calls to
        stop at); if it ``may_hold`` the replies
        (no one watches each call start), the batch's number."""
        self.holding = -1
        self.batch_size = len(calls)
        if len(calls) <= 1:
            return None
        self.unanswered = calls
        self.runs = _items_of(calls)
        self.positions = None
        if self.ledger is None:
            self.stop_at = set()
            return None
        self.ledger[_AT : _SKIPS + len(calls)] = bytes(_SKIPS - _AT + len(calls))
        if not may_hold:
            return None
        self.batches += 1
        self.holding = self.batches
        return self.holding

    def index_of(self, item: Any) -> int | None:
        """The index of ``item``'s call in the batch of several calls this worker runs."""
        calls = self.unanswered
        if calls is None:
            return None
        positions = self.positions
        if positions is None:
            positions = self.positions = dict(zip(self.runs, range(len(self.runs)), strict=True))
        index = positions.get(item)
        if index is None or index < self.batch_size - len(calls):
            return None  # not in it, or answered
        return index

    def held(self, answered: int) -> list[bytes]:
        """After it died: the replies of its batch it held and did not write out, from the
        ``answered``-th on (those before came through the pipe)."""
        ledger = self.ledger
        if ledger is None or self.holding < 0:
            return []
        used, _, first, batch = struct.unpack_from("=4I", ledger, 0)
        if batch != self.holding or first > answered:
            return []
        return _held_replies(ledger, _START, min(used, len(ledger)))[answered - first :]

    def alive(self) -> bool:
        """Whether the process is still running, checked now: an exited worker is seen even
        before the loop has reaped it (``WNOWAIT`` leaves the reaping to the loop)."""
        if self.process.returncode is not None:
            return False
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # reaped already
            return False

    def kill(self) -> None:
        """Stop the worker and every process it started (its whole process group)."""
        self.killed = True
        if self.reaped:  # that was done when it was reaped; its number may be another's now
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self.loop.call_later(_GRACE, self._kill_hard)

    def _kill_hard(self) -> None:
        if self.reaped:  # its group is gone already, and its number may be another's by now
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def reap(self) -> None:
        """After the worker exited: end whatever it left behind in its process group, let its
        ledger go, and read the rest of its stderr (for the error message)."""
        await self._end_group()
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
        if self.drain is not None:
            with anyio.move_on_after(1):
                await asyncio.shield(self.drain)

    async def close(self) -> None:
        assert self.process.stdin is not None
        try:
            await self.send("bye")
            await self.process.stdin.aclose()
        except _Died:
            pass
        try:
            await self.process.stdin.aclose()
        except (anyio.BrokenResourceError, OSError):
            pass
        with anyio.move_on_after(2):
            await self.process.wait()
        if self.process.returncode is None:
            self.kill()
            await self.process.wait()
        await self.reap()

    def crash_error(self, task_name: str) -> WorkerCrashedError:
        code = self.process.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name}"
            if -code == signal.SIGKILL and not self.killed:
                how += " (possibly out of memory)"
        else:
            how = f"exited with code {code}"
        tail = self.stderr.decode(errors="replace").strip()
        message = f"task {task_name!r}: its worker process (pid {self.pid}) {how}"
        if tail:
            message += "; last lines of its stderr:\n" + "\n".join(tail.splitlines()[-15:])
        return WorkerCrashedError(message, self.pid, code, tail)


def _own_stdout() -> int | None:
    """A copy of this process's stdout descriptor (1) for a worker (its bodies print there),
    as a child of ``concurrent.futures`` inherits it; None if this process was started without
    one (descriptor 1 is then whatever file was opened first, which a body must not write to)."""
    if sys.__stdout__ is None:
        return None
    try:
        return os.dup(1)
    except OSError:
        return None


def _fd_argument(fd: int | None) -> str:
    return "-" if fd is None else str(fd)


def _slow_start(task_name: str, pid: int) -> None:
    """A worker still not ready after ``_SLOW_START`` seconds: its runs wait for it, and
    nothing else would say why."""
    logging.getLogger("asyncflow").warning(
        "a worker process (pid %d, started for task %r) is still starting after %g s: its "
        "initializer may hang, and runs that need a worker wait for it",
        pid,
        task_name,
        _SLOW_START,
    )


def _named(args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Each argument of a call with its name in an error message."""
    parts = [(f"argument {i}", a) for i, a in enumerate(args)]
    return parts + [(f"parameter {k!r}", v) for k, v in kwargs.items()]


def _argument_error(
    task: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    cause: BaseException,
    to: str = "a worker process",
) -> SerializationError:
    """The error for a call whose arguments cannot be pickled, naming the first culprit."""
    label = "its arguments"
    for part, value in _named(args, kwargs):
        try:
            cloudpickle.dumps(value)
        except BaseException as exc:  # noqa: PERF203 - the error path: find the culprit
            if not _fails_its_run(exc):
                raise
            label, cause = part, exc
            break
    error = SerializationError(
        f"task {task.name!r}: {label} cannot be sent to {to} ({error_text(cause)})",
        "arguments",
    )
    error.__cause__ = cause
    return error


def _unloadable(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """Which argument does not load back after pickling (to name it in an error)."""
    for label, value in _named(args, kwargs):
        try:
            cloudpickle.loads(cloudpickle.dumps(value))
        except BaseException as exc:  # noqa: PERF203 - the error path
            if not _fails_its_run(exc):
                raise
            return label
    return "an argument"


def _unloaded_result(task_name: str, exc: BaseException) -> SerializationError:
    return SerializationError(
        f"task {task_name!r}: its result cannot be loaded here ({message_of(exc)})", "result"
    )


def _loaded_error(data: bytes | None, type_name: str, message: str, text: str) -> BaseException:
    """An exception a body raised in a worker (a process, a Ray worker), sent back pickled with
    its type's name, its message and its traceback's text: loaded here; else a ``RemoteError``
    saying what it was. Its cause is its traceback there (the cause it had there did not
    travel)."""
    remote: BaseException | None = None
    if data is not None:
        try:
            loaded = cloudpickle.loads(data)
        except BaseException as exc:
            if not _fails_its_run(exc):
                raise
            loaded = None
        if isinstance(loaded, BaseException):
            remote = loaded
    if remote is None:
        remote = RemoteError(type_name, message)
    # (Past the class's own __setattr__: a frozen dataclass's refuses every attribute.)
    object.__setattr__(remote, "__cause__", RemoteTraceback(text))
    return remote


def _decode(
    task_name: str, reply: tuple[str, Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """A reply other than a plain result: an exception, a pickling failure or a crash."""
    kind, payload = reply
    if kind == "exc":
        return False, _loaded_error(*payload)
    if kind == "ser":
        direction, message = payload
        if direction == "result":
            text = f"its result cannot be sent back from the worker process ({message})"
        elif direction == "arguments":
            text = f"{_unloadable(args, kwargs)} cannot be loaded in the worker ({message})"
        else:
            text = f"its function cannot be loaded in the worker ({message})"
            direction = "arguments"
        return False, SerializationError(f"task {task_name!r}: {text}", direction)
    if kind == "skipped":  # cancelled before it started: the outcome is dropped
        return False, cancelled_error(task_name)
    type_name, message, text = payload  # "crash": SystemExit / KeyboardInterrupt in the body
    crash = TaskCrashedError(f"task {task_name!r} crashed: its body raised {type_name}: {message}")
    crash.__cause__ = RemoteTraceback(text)
    return False, crash


class ProcessWorkers:
    """At most ``max_workers`` worker processes, each running one body at a time."""

    runs_coroutines = True  # coroutine bodies run in the worker too (on a loop of their own)

    def __init__(
        self,
        scheduler: Scheduler,
        max_workers: int,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_worker: int | None = None,
        worker_env: dict[str, str] | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self._sched = scheduler
        self._idle_timeout = idle_timeout
        self._max = max_workers
        self._max_tasks = max_tasks_per_worker
        self._env = worker_env
        self._failed_starts = 0  # workers in a row that could not start
        self._last_start_error = ""
        self._last_failed_start = 0.0  # (time.monotonic) when the last of them died
        self._trying: asyncio.Future[None] | None = None  # a start tried after them, if under way
        try:
            init = None if initializer is None else cloudpickle.dumps((initializer, initargs))
        except Exception as exc:
            raise SerializationError(
                f"ProcessPoolTaskRunner: the initializer or its initargs cannot be sent to a "
                f"worker process ({error_text(exc)})",
                "arguments",
            ) from exc
        log_level = logging.getLogger(TASK_RUNS).getEffectiveLevel()
        self._setup = (list(sys.path), os.getcwd(), init, log_level)
        self._ready: deque[Any] = deque()
        self._idle: list[_Worker] = []
        # Calls sent alone -> their worker (None while it starts); see _worker_of for the rest.
        self._busy: dict[Any, _Worker | None] = {}
        self._active = 0  # workers busy (or being started) with a batch
        self._pump_due = False  # a _pump is scheduled for this loop turn
        # Seconds the last call of each task took (by its function: see _cost_key): cheap ones
        # are sent in batches.
        self._cost: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        # Tasks (by _cost_key) whose batch's arguments failed to load: not batched again.
        self._unbatchable: weakref.WeakSet[Any] = weakref.WeakSet()
        # Runs reported started (to event subscribers) whose batch then never ran: not again.
        self._announced: weakref.WeakSet[Any] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()  # batches run, workers reaped or closed
        self._drains: set[asyncio.Task[None]] = set()  # one per worker: reads its stderr
        self._echo = Echo()  # shows the workers' stderr here
        self._lingering: set[int] = set()  # stderr pipes a worker's daemon holds (drain_stderr)
        self._workers: set[_Worker] = set()
        self._starting: set[_Worker] = set()  # started, not ready yet (their initializer runs)
        self._closing = False

    # -- the backend contract ------------------------------------------------------------------
    def submit(self, item: Any) -> None:
        self._ready.append(item)
        if self._active < self._max and not self._pump_due:
            self._pump_soon()

    def submit_many(self, items: list[Any]) -> None:
        cut = False  # (a whole map cut into batches already)
        if type(items) is PlainRuns and len(items) > 1:
            items = self._prepared(items)
            cut = bool(items) and type(items[0]) is _MapBatch
        self._ready.extend(items)
        if cut and self._sched.loop.is_running():
            # Its batches go out now, a loop turn sooner. (Not from the loop's thread while it
            # is not running: nothing could start.)
            self._pump()
        elif self._active < self._max and not self._pump_due:
            self._pump_soon()

    def _prepared(self, runs: PlainRuns) -> list[Any]:
        """The runs of a map, in batches made now when its task's calls go in batches and
        take their parameters by keyword: each goes out as it is, its calls' arguments and
        run numbers taken from the map (not read from each run again, nor checked: a map's
        runs are all alike). Else the runs, one by one."""
        task = runs[0]._task
        if not task.spec.simple:
            return runs
        size = self._batch_size(task, -(-len(runs) // self._max))
        if size <= 1:
            return runs
        cost = self._cost[_cost_key(task)]
        return [_MapBatch(runs, start, size, cost) for start in range(0, len(runs), size)]

    def _recheck(self, batch: _MapBatch) -> None:
        """A batch made at submit was answered: if its calls took much longer than its
        task's calls were taken to take then, the batches of that task still queued were cut
        too big (idle workers would wait for the one running a long batch); their runs go
        back to the queue one by one, batched by their time now (see ``_take_batch``)."""
        task = batch[0]._task
        if self._cost.get(_cost_key(task), 0.0) <= _RECUT * batch.cost:
            return
        ready = self._ready
        items: list[Any] = []
        for item in ready:
            if type(item) is _MapBatch and item[0]._task is task:
                items += item
            else:
                items.append(item)
        ready.clear()
        ready.extend(items)

    def _pump_soon(self) -> None:
        # Later in this loop turn, once: the items submitted with this one (a whole map) are
        # queued by then, so the first batches are as big as the rest.
        self._pump_due = True
        self._sched.loop.call_soon(self._pump)

    def interrupt(self, item: Any) -> bool:
        """Stop ``item``'s body now by killing its worker. True: it will not run on.

        In a batch of several calls, the worker says in its ledger where it is: a call whose
        body returned is left alone (its reply is dropped), one not started is marked to be
        skipped (and the worker serves on); only the call whose body runs is stopped. Without
        a ledger there are no marks: the worker is stopped when the call is the first one
        unanswered (at once, or once the replies before it are in; see ``_take_replies``), which
        may stop the call after it if the worker moved on meanwhile (that one is queued again
        and runs twice)."""
        if item in self._busy:  # sent alone
            worker = self._busy[item]
        else:
            worker = self._worker_of(item)
            if worker is None:
                return True  # queued (it will be dropped when its turn comes), or answered
        if worker is None or worker.process.returncode is not None:
            return True  # its worker is starting (it is left out of the message), or is dead
        ledger = worker.ledger
        if worker.unanswered is not None:  # a batch of several
            index = worker.index_of(item)
            if index is None:
                return True  # answered already
            if ledger is None:  # (no ledger on this system) only the first unanswered runs
                if index != worker.batch_size - len(worker.unanswered):
                    # Unless the replies before it are still on their way: the worker is
                    # stopped once they are in and it is the first unanswered (_take_replies).
                    worker.stop_at.add(item)
                    return True
            elif not self._runs(ledger, index, mark=True):
                # Skipped when the worker gets there, or returned already. Look again soon:
                # the worker may have read the mark before it was set.
                self._sched.loop.call_later(_RECHECK, self._interrupt_if_running, worker, item)
                return True
        if not worker.killed:
            worker.kill()
        return True

    def _worker_of(self, item: Any) -> _Worker | None:
        """The worker running the batch of several calls that ``item`` is in, unanswered.
        (Such calls are not in ``_busy``: one entry per call costs a map more than the
        search costs a cancel.)"""
        return next((w for w in self._workers if w.index_of(item) is not None), None)

    @staticmethod
    def _runs(ledger: mmap.mmap, index: int, mark: bool = False) -> bool:
        """Whether the body of call ``index`` of the batch runs now (by the worker's position
        in the ledger); with ``mark``, a call not started yet is first marked to be skipped."""
        at = _position(ledger)
        if at == 2 * index + 1:
            return True
        if not mark or at > 2 * index:
            return False  # (returned already)
        ledger[_SKIPS + index] = 1
        at = _position(ledger)  # read again: it may have reached it meanwhile
        return at == 2 * index + 1

    def _interrupt_if_running(self, worker: _Worker, item: Any) -> None:
        if worker.killed or worker.ledger is None or worker.process.returncode is not None:
            return
        index = worker.index_of(item)
        if index is not None and self._runs(worker.ledger, index):
            worker.kill()

    def hold(self, on: bool) -> None:
        """Nothing to do: only the loop hands out queued calls here (no worker takes one)."""

    def abandon(self) -> None:
        for worker in list(self._workers):
            worker.kill()

    async def aclose(self, abandon: bool = False) -> None:
        if abandon:
            self.abandon()
        # Every run is final by now: a worker still starting serves none, and its initializer
        # may never end (then nothing else would end this wait).
        self._closing = True  # (a worker being spawned now is stopped as it starts)
        for worker in list(self._starting):
            worker.kill()
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        idle, self._idle = self._idle, []
        for worker in idle:
            await worker.close()
            self._workers.discard(worker)
        if self._drains:  # each ends when its worker has exited
            await asyncio.wait(set(self._drains))
        await self._echo.drained(_ECHO_GRACE)
        loop = asyncio.get_running_loop()
        for fd in self._lingering:  # (stderr pipes that daemons of its workers hold)
            loop.remove_reader(fd)
            os.close(fd)
        self._lingering.clear()

    # -- loop side -----------------------------------------------------------------------------
    def _pump(self) -> None:
        self._pump_due = False
        # Each worker's share of the queue as it is now: workers free together split it evenly
        # (a 2,000-call map on 2 idle workers goes as 1,000 + 1,000, not 1,000 + 500 + 500 with
        # a round trip more); a worker back for more later takes a share of what is left.
        share = -(-len(self._ready) // self._max)
        while self._ready and self._active < self._max:
            batch = self._take_batch(share)
            if not batch:
                return
            self._active += 1
            if len(batch) == 1:  # (the calls of a batch of several: see interrupt)
                self._busy[batch[0]] = None
            self._in_background(self._run(batch))

    def _take_batch(self, share: int) -> list[Any]:
        """The next items for one worker: one, or, when the queue is deep, a run of plain ones
        (no policy) of one task, sent in one message with the function pickled once: about
        ``share`` of them (bounded by their work)."""
        ready = self._ready
        while ready:
            first = ready.popleft()
            if type(first) is _MapBatch:
                return first  # made when its map was submitted (see _prepared)
            if first._status < COMPLETED:  # else: cancelled while it waited for a worker
                break
        else:
            return []
        batch = [first]
        if not _plain(first):
            return batch
        task = first._task
        size = self._batch_size(task, share)
        if size <= 1:
            return batch
        if len(ready) >= size - 1:
            # The common case, checked in C: the next calls are plain runs of this task (a map).
            head = list(itertools.islice(ready, size - 1))
            if (
                set(map(type, head)) == {Future}
                and set(map(_task_of, head)) == {task}
                and set(map(_policy_of, head)) == {None}
                and max(map(status_of, head)) < COMPLETED
            ):
                popleft = ready.popleft
                for _ in head:
                    popleft()
                batch += head
                return batch
        append = batch.append
        while len(batch) < size and ready:
            item = ready[0]
            if type(item) is not Future or item._policy is not None or item._task is not task:
                break
            ready.popleft()
            if item._status < COMPLETED:
                append(item)
        return batch

    def _batch_size(self, task: Any, share: int) -> int:
        """How many plain calls of ``task`` one batch takes, each worker's ``share`` of the
        queue given: 1 if its calls go one by one."""
        key = _cost_key(task)
        if self._max_tasks is not None or key in self._unbatchable:
            return 1
        cost = self._cost.get(key)
        if cost is None or cost > _BATCH_COST:
            # Unknown or slow bodies go one by one: batching long calls would leave workers idle.
            return 1
        # As many as keep every worker busy, up to about _BATCH_TIME of work: one message and
        # one reply per batch, so bigger batches cost less per call.
        per_call = max(cost, 1e-6)
        return min(
            _BATCH_MAX,
            max(share, min(_BATCH_MIN, int(_BATCH_MIN_TIME / per_call))),
            int(_BATCH_TIME / per_call),
        )

    async def _spawn(self, task_name: str) -> _Worker:
        """A new worker, set up and ready (its initializer ran), or ``WorkerStartError``.

        After ``_MAX_FAILED_STARTS`` workers in a row failed to start, runs fail at once
        instead of starting workers forever; once ``_START_PAUSE`` has passed since the last,
        one more start is tried (the cause, such as a full disk, may have passed), and the
        runs that need a worker meanwhile wait for it."""
        while self._trying is not None:
            await asyncio.shield(self._trying)
        if self._failed_starts < _MAX_FAILED_STARTS:
            return await self._start(task_name)
        paused = _START_PAUSE - (time.monotonic() - self._last_failed_start)
        if paused > 0:
            raise WorkerStartError(
                f"task {task_name!r}: worker processes keep failing to start "
                f"({self._failed_starts} in a row; another start is tried in {paused:.1f} s); "
                f"the last one said:\n{self._last_start_error}",
                0,
                None,
                self._last_start_error,
            )
        self._trying = asyncio.get_running_loop().create_future()
        try:
            return await self._start(task_name)
        finally:
            trying, self._trying = self._trying, None
            with contextlib.suppress(RuntimeError):  # (its loop closed under it: no one waits)
                trying.set_result(None)

    async def _start(self, task_name: str) -> _Worker:
        """A new worker (see ``_spawn``)."""
        ledger = _ledger()
        fd = None if ledger is None else ledger[0]
        out = _own_stdout()
        errors = None
        try:
            errors = os.pipe()  # its stderr (see _Worker.drain_stderr)
            process = await anyio.open_process(
                # (The descriptors the worker keeps of those it inherits: the ledger's, and
                # this process's stdout, where its bodies print.)
                [sys.executable, "-u", _WORKER, _fd_argument(fd), _fd_argument(out)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors[1],
                start_new_session=True,  # its own process group: killed as a whole
                env=self._env,
                pass_fds=tuple(n for n in (fd, out) if n is not None),
            )
        except BaseException as exc:
            if ledger is not None:
                ledger[1].close()
            if errors is not None:
                os.close(errors[0])
            if not isinstance(exc, OSError):
                raise
            # (Not counted among the failed starts: no process started, so none can storm,
            # and the cause, such as too many open files, may pass.)
            raise WorkerStartError(
                f"task {task_name!r}: could not start a worker process ({error_text(exc)})",
                0,
                None,
                "",
            ) from exc
        finally:
            if fd is not None:
                os.close(fd)  # the worker has its own; the map here keeps the file
            if out is not None:
                os.close(out)
            if errors is not None:
                os.close(errors[1])  # (the worker has its own)
        worker = _Worker(
            process, asyncio.get_running_loop(), None if ledger is None else ledger[1], self._echo
        )
        self._workers.add(worker)
        self._read_stderr(worker, errors[0])
        self._starting.add(worker)
        if self._closing:  # every run is final: it serves none (see aclose)
            worker.kill()
        slow = worker.loop.call_later(_SLOW_START, _slow_start, task_name, worker.pid)
        try:
            worker.watcher = Watcher.start(worker.pid)
            await worker.send((*self._setup, fd))
            ready = await worker.receive()
        except _Died:
            await worker.process.wait()
            await worker.reap()
            self._workers.discard(worker)
            self._failed_starts += 1
            self._last_failed_start = time.monotonic()
            tail = worker.stderr.decode(errors="replace").strip()
            self._last_start_error = "\n".join(tail.splitlines()[-15:])
            raise WorkerStartError(
                f"task {task_name!r}: its worker process (pid {worker.pid}) could not start "
                f"(exit code {worker.process.returncode}); its stderr:\n{self._last_start_error}",
                worker.pid,
                worker.process.returncode,
                tail,
            ) from None
        finally:
            slow.cancel()
            self._starting.discard(worker)
        assert ready == [b"m" + pickle.dumps(("ready", None), protocol=pickle.HIGHEST_PROTOCOL)]
        self._failed_starts = 0
        return worker

    def _read_stderr(self, worker: _Worker, fd: int) -> None:
        """Read the worker's stderr (the pipe's end ``fd``) in a task of its own until it
        ends (see ``_Worker.drain_stderr``)."""
        worker.stderr_fd = fd
        drain = worker.drain = worker.loop.create_task(worker.drain_stderr(self._lingering))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)
        drain.add_done_callback(worker.drain_ended)

    async def _run(self, batch: list[Any]) -> None:
        worker = None
        alone = None  # the call, if it went alone (then listed in _busy)
        calls: _Calls = deque()
        packed_yet = False
        handed_back = False  # (the worker went back before the last replies were handled)
        try:
            # (An argument that cannot be sent fails its run here: no worker is started.)
            message, packed = self._packed(batch)
            calls = packed if type(packed) is _MapCalls else deque(packed)
            packed_yet = True
            if not calls:
                return
            worker = self._idle_worker()
            if worker is None:
                worker = await self._spawn(calls[0][1].name)
                if any(call[0]._status >= COMPLETED for call in calls):
                    # Cancelled while the worker started: it must not run. Pack the rest again.
                    message, packed = self._pack(list(calls))
                    calls = deque(packed)
                    if not calls:
                        return
            notify = self._mark_running(worker, calls)
            if len(calls) == 1:  # (a batch of several may be down to one by now)
                alone = calls[0][0]
            await worker.send((*message, worker.take(calls, self._sched.events is None), notify))
            last = await self._replies(worker, calls, batch)
            if last is not None:
                answered_by, worker, handed_back = worker, None, True
                await self._hand_back_then_answer(answered_by, last, calls)
            elif self._max_tasks is not None and worker.calls >= self._max_tasks:
                retired, worker = worker, None  # a fresh one takes its place on demand
                self._workers.discard(retired)
                self._retire(retired)
        except _Died as died:
            await self._buried(worker, calls, died.blamed)
            worker = None
        except Exception as exc:
            # A worker that could not start, a fault here before the batch was packed (then
            # every run of it fails: none is left waiting), or one after (its unanswered runs).
            crashed = isinstance(exc, TaskCrashedError)  # (the pool's own: WorkerStartError)
            for item in map(_item_of, calls) if packed_yet else batch:
                self._report(item, False, exc, crashed)
        finally:
            if len(batch) == 1:
                self._busy.pop(batch[0], None)
            if alone is not None:
                self._busy.pop(alone, None)
            if worker is not None and worker.killed:  # a cancel came after its last reply
                self._put_to_rest(worker)
                worker = None
            if worker is not None:
                self._hand_back(worker)
            elif not handed_back:
                self._active -= 1
                self._pump()

    async def _hand_back_then_answer(
        self, worker: _Worker, frames: list[bytes], calls: _Calls
    ) -> None:
        """The results of a whole batch are in: the worker's next batch goes out before they
        are handled (so it works while this loop does), then they end their runs."""
        queued = bool(self._ready)
        self._hand_back(worker)
        if queued:
            await asyncio.sleep(0)  # (the next batch's task runs first: it was scheduled first)
        try:
            self._answer(worker, calls[0][1], frames, calls)
        except _Died:  # (results in one message never come with a crash: this is a fault)
            # The worker is another batch's now: _run fails the runs left, it buries no one.
            raise RuntimeError("a batch's results said that its worker died") from None

    def _hand_back(self, worker: _Worker) -> None:
        """The worker's batch is over: it is idle, and takes the next one if any is queued."""
        worker.unanswered = None
        worker.runs = []
        worker.positions = None
        worker.stop_at = set()
        self._idle.append(worker)
        if self._idle_timeout is not None:
            worker.idle_since = time.monotonic()
            asyncio.get_running_loop().call_later(
                self._idle_timeout, self._retire_if_idle, worker, worker.idle_since
            )
        self._active -= 1
        self._pump()

    def _calls(self, batch: list[Any]) -> list[_Call]:
        """Each item of ``batch`` with its task and the arguments of its call. One cancelled
        meanwhile is reported (and dropped) here, when its parameters are gone (cancelling a
        queued run lets go of them: the batch takes the slow path), else by ``_pack``."""
        first = batch[0]
        if type(first) is Future and len(batch) > 1:
            # The common case, in C: a batch of plain runs of one task (checked by
            # _take_batch), none with inputs (then their parameters are their arguments).
            each = list(map(_params_of, batch))
            if type(each[0]) is int:  # a map's runs: each holds its index in the map's rows
                each = list(map(params_of, batch))
            deps = list(map(_deps_of, batch))
            if set(map(type, each)) == {dict} and deps.count(None) == len(deps):
                task = first._task
                spec = task.spec
                parts = zip(itertools.repeat(()), each) if spec.simple else map(spec.split, each)
                return list(zip(batch, itertools.repeat(task), parts))
        calls: list[_Call] = []
        append = calls.append
        call_parts = self._sched.call_parts
        split = first._task.spec.split if type(first) is Future else None
        for item in batch:
            if split is not None and item._deps is None and (params := params_of(item)) is not None:
                # The common case: a plain run (a batch holds runs of one task).
                append((item, item._task, split(params)))
                continue
            try:
                task, params = call_parts(item)
                append((item, task, task.spec.split(params)))
            except Exception as exc:  # cancelled meanwhile: dropped
                self._report(item, False, exc)
        return calls

    def _mark_running(self, worker: _Worker, calls: _Calls) -> bool:
        """The calls of a batch go to ``worker``: they are running from now on.

        The worker runs a batch one call after another: each call after the first is reported
        started (to event subscribers) when the reply of the call before it arrives. A timeout
        counts from the body's start, not from the spawn, nor while the worker loads the
        function (that may import modules): an attempt with one (always alone: a batch of
        several holds plain runs only) starts its clock when the worker says its body starts.
        Returns whether the worker must say so.
        """
        mark_running = self._sched.mark_running
        label: str | None = worker.label
        now = time.time()
        items = _items_of(calls)
        if len(items) == 1:
            self._busy[items[0]] = worker
        for item in items:
            if type(item) is Future and label is None:
                item._status = RUNNING  # mark_running's work, inlined for the rest of a batch
                item._timestamp = now
            else:
                if label is not None and item in self._announced:
                    self._announced.discard(item)  # told when its batch went out, unrun
                    label = None
                timed = getattr(item, "timeout", None) is not None
                if mark_running(item, label, not timed):
                    worker.announced = item
                if timed:
                    return True
                label = None
        return False

    def _idle_worker(self) -> _Worker | None:
        """An idle worker that is still alive (one that died while idle, by the OOM killer or a
        signal, is put to rest: the next call must not be blamed for its death)."""
        while self._idle:
            worker = self._idle.pop()
            if worker.alive():
                return worker
            self._put_to_rest(worker)
        return None

    def _put_to_rest(self, worker: _Worker) -> None:
        """A dead or stopped worker leaves the pool; it is reaped in the background."""
        self._workers.discard(worker)
        self._in_background(worker.reap())

    async def _replies(
        self, worker: _Worker, calls: _Calls, batch: list[Any]
    ) -> list[bytes] | None:
        """``_take_replies``; then, for a batch made at submit, ``_recheck``."""
        last = await self._take_replies(worker, calls)
        if type(batch) is _MapBatch:
            self._recheck(batch)
        return last

    async def _take_replies(self, worker: _Worker, calls: _Calls) -> list[bytes] | None:
        """Take the replies of a batch as they come, in order (``calls``: those still to
        answer); each ends its run. The time per call is remembered (cheap tasks are
        batched). Returns the replies not handled yet when they are the results of the whole
        batch in one message (``r`` or ``v``) and the worker may take its next batch before they are
        handled (then ``_run`` hands it back first), else None (all handled)."""
        task = calls[0][1]
        key = _cost_key(task)
        clock = time.perf_counter()
        while calls:
            skipped = worker.skipped
            frames = await worker.receive()
            if frames[-1][0] in _WHOLE_BATCH and self._max_tasks is None and not worker.killed:
                # (An ``r`` or ``v`` message answers every call of the batch at once, all
                # results. The cost is the round trip, without the handling of these results.)
                worker.calls += len(calls)
                self._cost[key] = (time.perf_counter() - clock) / len(calls)
                return frames
            answered = self._answer(worker, task, frames, calls)
            if worker.stop_at and calls and calls[0][0] in worker.stop_at and not worker.killed:
                worker.kill()  # a run cancelled before the parent knew it was under way
            ran = answered - (worker.skipped - skipped)  # (a skipped call costs nothing)
            now = time.perf_counter()
            if ran:
                worker.calls += ran
                self._cost[key] = (now - clock) / ran  # round trip included
            clock = now
        return None

    def _answer(self, worker: _Worker, task: Any, frames: list[bytes], calls: _Calls) -> int:
        """End the runs of ``calls`` that ``frames`` answer, in order; return how many."""
        sched = self._sched
        answered = 0
        # Plain runs whose bodies returned, ended together (before any other outcome).
        items: list[Any] = []
        values: list[Any] = []
        for frame in frames:
            kind = frame[0]
            if kind == _LOG:
                handle_remote_record(pickle.loads(frame[1:]))  # our own worker's pipe
                continue
            if kind == _STARTED:  # the body of the (lone, timed) call starts now
                if calls:
                    calls[0][0].start_clock()
                continue
            if kind in _WHOLE_BATCH:  # the results of the whole batch
                loaded = pickle.loads(frame[1:])  # our own pipe from our own worker
                n = len(loaded)
                if n != len(calls):  # (the worker sends it only when all are answered here)
                    raise RuntimeError(f"{n} results came for a batch of {len(calls)} calls")
                results = _batch_results(kind, loaded)
                if results is None:  # one does not load here: each says so, or its result
                    if items:
                        sched.complete_many(items, values)
                        items, values = [], []
                    blobs = [b"o" + b for b in loaded]
                    answered += self._answer(worker, task, blobs, calls)
                    continue
                # A batch of several holds plain runs only: they end together (those
                # cancelled meanwhile are left as they are).
                items += _items_of(calls)
                values += results
                calls.clear()
                answered += n
                continue
            call = calls.popleft()
            answered += 1
            loads = _LOADS.get(kind)
            if loads is not None and _plain_unfinished(call[0]) and sched.events is None:
                try:
                    values.append(loads(frame[1:]))  # our own pipe from our own worker
                except BaseException as exc:  # _reply loads it again and says why it fails
                    if not _fails_its_run(exc):
                        raise
                else:
                    items.append(call[0])
                    continue
            if items:
                sched.complete_many(items, values)
                items, values = [], []
            if not self._reply(worker, task, call, frame, calls):
                return answered - 1
        if items:
            sched.complete_many(items, values)
        return answered

    def _reply(self, worker: _Worker, task: Any, call: Any, frame: bytes, calls: _Calls) -> bool:
        """End the run of ``call`` as ``frame`` says; False: the batch never ran, and its calls
        are queued again (``calls`` is empty then)."""
        item = call[0]
        loads = _LOADS.get(frame[0])
        if loads is not None:
            try:
                ok, value = True, loads(frame[1:])  # our own pipe from our own worker
            except BaseException as exc:
                if not _fails_its_run(exc):
                    raise
                ok, value = False, _unloaded_result(task.name, exc)
            self._report(item, ok, value)
            if calls and self._sched.events is not None:
                self._sched.worker_took(calls[0][0], worker.label)
            return True
        reply = pickle.loads(frame[1:])  # our own pipe from our own worker
        if reply[0] == "unbatch":  # none of the batch ran; resend them one by one
            self._unbatchable.add(_cost_key(task))
            if worker.announced is item:  # subscribers were told it started
                self._announced.add(item)
            calls.appendleft(call)
            self._requeue(calls)
            return False
        ok, value = _decode(task.name, reply, *call[2])
        self._report(item, ok, value, reply[0] == "crash")
        if reply[0] == "skipped":
            worker.skipped += 1
        elif reply[0] == "crash":
            raise _Died(blamed=True)  # the worker exits after a SystemExit in the body
        if calls:
            self._sched.worker_took(calls[0][0], worker.label)
        return True

    async def _buried(self, worker: _Worker | None, calls: _Calls, blamed: bool) -> None:
        """The worker died: blame the call it was running (unless that call already told us
        why); the rest of its batch never started and goes back to the front of the queue.
        Replies it held and did not write out end their runs first."""
        if worker is None:
            return
        await worker.process.wait()
        held = worker.held(worker.batch_size - len(calls)) if calls and not blamed else []
        # (By its position in the ledger: no call of its batch of several started.)
        unstarted = (
            worker.batch_size > 1 and worker.ledger is not None and not _position(worker.ledger)
        )
        await worker.reap()
        self._workers.discard(worker)
        if held:
            try:
                self._answer(worker, calls[0][1], held, calls)
            except _Died as died:
                blamed = died.blamed
        if calls and not blamed and unstarted:
            # It died before it ran any (perhaps loading the arguments killed it): no one is
            # blamed, and the task's calls go one by one from now on, so a call that kills its
            # worker again takes only its own run down.
            self._unbatchable.add(_cost_key(calls[0][1]))
            if worker.announced is calls[0][0]:  # subscribers were told it started
                self._announced.add(calls[0][0])
        elif calls and not blamed:
            item, task, _ = calls[0]
            stopped_here = worker.killed and worker.process.returncode in _OUR_SIGNALS
            if not (stopped_here and worker.batch_size > 1 and _plain_unfinished(item)):
                calls.popleft()
                self._report(item, False, worker.crash_error(task.name), True)
            # Else the worker was stopped here to end another run of its batch (a cancel):
            # the run it was running did nothing wrong and goes back to the queue with the rest.
        self._requeue(calls)

    def _requeue(self, calls: _Calls) -> None:
        """Calls that never ran go back to the front of the queue, in order, as not started."""
        for item, *_ in reversed(calls):
            self._busy.pop(item, None)
            if type(item) is Future and item._status == RUNNING:
                item._status = PENDING
            self._ready.appendleft(item)
        calls.clear()

    def _pack(self, calls: list[Any]) -> tuple[Any, list[Any]]:
        """One message for a batch of calls of one task: its function pickled once, each call's
        arguments on their own. A call whose arguments cannot be pickled fails, naming the
        argument; the others are sent."""
        if not calls:
            return None, calls
        items = list(map(_item_of, calls))
        plain = set(map(type, items)) == {Future}
        if not plain or max(map(status_of, items)) >= COMPLETED:
            calls = [c for c in calls if c[0]._status < COMPLETED]  # not cancelled meanwhile
            if not calls:
                return None, calls
            items = list(map(_item_of, calls))
        task = calls[0][1]
        try:
            fn = _dumps(task.fn)
        except BaseException as exc:
            if not _fails_its_run(exc):
                raise
            error = SerializationError(
                f"task {task.name!r}: the task's function cannot be sent to a worker process "
                f"({error_text(exc)})",
                "arguments",
            )
            for call in calls:
                self._report(call[0], False, error)
            return None, []
        try:
            blob = _pickled_arguments(_arguments(calls, task.spec.simple))
        except BaseException as exc:
            if not _fails_its_run(exc):
                raise
            calls, blob = self._pack_one_by_one(task, calls)
            if not calls:
                return None, calls
            items = list(map(_item_of, calls))
        # A first attempt's context is its run number alone (see _process_worker).
        contexts: list[Any] = list(map(_id_of, items)) if plain else []
        if not plain or set(map(type, contexts)) != {int}:
            contexts = [
                item._id if type(item) is Future and type(item._id) is int else _context_of(item)
                for item in items
            ]
        return (fn, task.is_async, (task.name, task.tags, task.key), blob, contexts), calls

    def _packed(self, batch: list[Any]) -> tuple[Any, list[Any] | _MapCalls]:
        """The message of ``batch`` and its calls (see ``_pack``)."""
        if type(batch) is _MapBatch:
            return self._pack_map_batch(batch)
        return self._pack(self._calls(batch))

    def _pack_map_batch(self, batch: _MapBatch) -> tuple[Any, list[Any] | _MapCalls]:
        """What ``_pack(self._calls(batch))`` gives, from the arguments and run numbers the
        batch was made with (one was cancelled meanwhile, or they cannot be pickled
        together: ``_pack`` then)."""
        task = batch[0]._task
        # One was cancelled while queued? (Not while no run of the map has ended.)
        group = batch[0]._group
        if (group is None or not group.untouched) and max(map(status_of, batch)) >= COMPLETED:
            return self._pack(self._calls(batch))
        rows, start = batch.rows, batch.start
        end = start + len(batch)
        calls = _MapCalls(batch, rows, start, task)
        try:
            fn = _dumps(task.fn)
            if not batch.shareable:
                args: Any = _pickled_arguments(rows.rows(start, end))
            elif (by_position := _by_position(task, rows, start, end)) is not None:
                args = by_position
            else:
                # Values of immutable plain types only: one plain pickle, as
                # _pickled_arguments makes it (and nothing there refers to a module).
                args = pickle.dumps(rows.rows(start, end), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:
            if not _fails_its_run(exc):
                raise
            return self._pack(list(calls))  # (which says which call or the function is at fault)
        return (fn, task.is_async, (task.name, task.tags, task.key), args, batch.ids), calls

    def _pack_one_by_one(
        self, task: Any, calls: list[Any]
    ) -> tuple[list[Any], bytes | list[bytes]]:
        """Some arguments cannot be pickled: fail those calls, naming the argument."""
        good = []
        for call in calls:
            item, _, (args, kwargs) = call
            try:
                cloudpickle.dumps((args, kwargs))
            except BaseException as exc:
                if not _fails_its_run(exc):
                    raise
                self._report(item, False, _argument_error(task, args, kwargs, exc))
            else:
                good.append(call)
        return good, _pickled_arguments(_arguments(good, task.spec.simple))

    def _report(self, item: Any, ok: bool, value: Any, crashed: bool = False) -> None:
        self._busy.pop(item, None)
        self._sched.on_outcome(item, ok, value, crashed)

    def _retire_if_idle(self, worker: _Worker, since: float) -> None:
        """A worker idle for ``idle_timeout`` seconds exits (a new one starts when needed)."""
        if worker.idle_since == since and worker in self._idle:
            self._idle.remove(worker)
            self._workers.discard(worker)
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        self._in_background(worker.close())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of this pool's (kept until it ends; awaited on close)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _batch_results(kind: int, loaded: list[Any]) -> list[Any] | None:
    """The results in the message of a whole batch: the values themselves, or their pickles
    loaded (each on its own, in C); None if one does not load here."""
    if kind == _VALUES:
        return loaded
    try:
        return list(map(pickle.loads, loaded))  # our own pipe from our own worker
    except BaseException as exc:
        if not _fails_its_run(exc):
            raise
        return None


def _by_position(task: Any, rows: MapRows, start: int, end: int) -> tuple[bytes, ...] | None:
    """What a worker is sent of the calls of children ``start`` to ``end`` of a sync task's
    map when they go by position (a call by position is cheaper in the worker, and so is the
    load): when their parameters are its leading ones, in order, the pickle of the tuples of
    their positional arguments, in a 1-tuple; or, with one parameter, the pickle of their only
    arguments, in a 2-tuple (each call takes one); else None."""
    names = rows.keys()
    if task.is_async or names != task.spec.leading[: len(names)]:
        return None
    protocol = pickle.HIGHEST_PROTOCOL
    if len(names) == 1:
        return (pickle.dumps(rows.columns[0][start:end], protocol), b"1")
    # (The values passed whole come first in a child's dict, then the mapped ones.)
    parts: list[Iterable[Any]] = [itertools.repeat(v, end - start) for v in rows.static.values()]
    parts += (column[start:end] for column in rows.columns)
    return (pickle.dumps(list(zip(*parts, strict=True)), protocol),)


def _pickled_arguments(arguments: list[Any]) -> bytes | list[bytes]:
    """What a worker is sent of the arguments of a batch's calls (``_arguments``): one pickle of
    them all, or, when calls could share a value that a call may change (a pickle keeps a
    shared value shared), one pickle per call, so each call gets its own copy, as a call sent
    alone does."""
    if len(arguments) <= 1 or (
        set(map(type, arguments)) == {dict}
        and set(map(type, itertools.chain.from_iterable(map(dict.values, arguments)))) <= IMMUTABLE
    ):
        return _dumps(arguments)
    return list(map(_dumps, arguments))


def _arguments(calls: list[Any], keywords_only: bool) -> list[Any]:
    """What a worker is sent of each call: its keyword arguments alone when it has no
    positional ones (the common case: smaller and faster to pickle), else ``(args, kwargs)``.
    ``keywords_only``: the task takes its parameters by keyword (none has positional ones)."""
    if keywords_only:
        return list(map(_kwargs_of, map(_split_of, calls)))  # in C
    return [kwargs if not args else (args, kwargs) for _, _, (args, kwargs) in calls]


def _context_of(item: Any) -> tuple[int, int]:
    """The run number (the worker makes the run's UUID from it) and the attempt that
    ``get_run_context()`` says inside the body."""
    fut = getattr(item, "fut", item)
    run_id = fut._id
    return (run_id if type(run_id) is int else run_id.int, getattr(item, "number", 1))
