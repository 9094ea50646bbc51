"""The worker process of ``ProcessPoolTaskRunner``. Run as a script (not imported as part of the
package), so it starts fast: it imports only the standard library, plus cloudpickle when the
first call arrives.

Protocol on the private pipes (stdin: calls in; a dup of the original stdout: replies out;
``print`` in a task goes to stderr). Every message is a 4-byte big-endian length and a body.
In, each body is a pickle:
- first: ``(sys_path, cwd, initializer_bytes, log_level, ledger_fd)``; answered ``ready``
  once the initializer ran (``ledger_fd``: None when the parent has no ledger to share);
- then batches of calls of one function: ``(fn_bytes, is_async, (name, tags, key), args_bytes,
  [(run_number, attempt), ...], batch_number)``, ``args_bytes`` a cloudpickle of the list of
  ``(args, kwargs)``, one per call, the list what ``get_run_context()`` says in the body (it
  makes the run's UUID from ``run_number``, as the parent's future does), and ``batch_number``
  None for replies written as each call ends, else the number under which they are held;
- ``"bye"``: exit. End of input without it means the parent died: exit and kill this worker's
  process group.
Out, each body is one kind byte and its data, one reply per call, in order. A call sent alone
has its reply written to the pipe as it ends. A batch sent with a batch number has its replies
held in a buffer the parent shares (the reply ledger: a file in memory, its descriptor given in
the setup) and written to the pipe together when the batch ends, when the buffer is full or
``_FLUSH_AFTER`` seconds after the first one was held (by a thread, so a long call does not
keep the replies before it): one write and one wake-up of the parent per batch, not per call.
When every reply of a batch is a result, they go as one pickle of the list of them (the
parent loads them in one go); else as the held replies themselves.
A reply is in the pipe or in the ledger from the moment its call ended, so when a worker dies
the parent still gets every reply before the call that killed it. The ledger holds, as 4-byte
numbers: the count of the bytes in use (written after each reply held), the position of the
worker in a batch of several (0: no call started; ``2 * i + 1``: call i runs, written before
its skip mark is read; ``2 * i + 2``: its body returned), the index in its batch of the first
reply held, and the batch's number; then 256 skip marks (the parent sets mark i to cancel call
i before it starts: it is answered ``skipped`` instead of run), then the held replies, each a
4-byte length, the kind byte and the data. The parent reads the ledger only after the worker
died (or when the list of results does not load), and ignores replies of another batch and
those it already got from the pipe. Body kinds:
- ``o`` + the pickled result;
- ``h`` + the index in its batch of the first reply held (4 bytes) and the replies held in
  the ledger, as they were there;
- ``r`` + a pickle of the list of the results of every call of the batch (they also stay in
  the ledger until the next batch);
- ``l`` + a pickle of a log record's dict of plain values (``get_run_logger()`` in the body,
  at or above ``log_level``), any number before a reply; the parent handles it;
- ``m`` + a pickle of ``(kind, payload)``: ``("ready", None)``, ``("exc", (exception bytes or
  None, type name, message, traceback text))``, ``("ser", (direction, message))``,
  ``("crash", (type name, message, traceback text))`` (the worker then exits),
  ``("skipped", None)`` (a call cancelled before it started), or
  ``("unbatch", message)``: the arguments of a batch of several calls would not load here, none
  of them ran (the parent sends them again one by one, to say which one is at fault).
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, BinaryIO

_HEADER = struct.Struct(">I")
_U32 = struct.Struct("<I")  # the ledger's numbers
_AT = 4  # offset of the ledger's u32: the index in its batch of the call starting or running
_FIRST = 8  # offset of the ledger's u32: the index in its batch of the first reply held
_BATCH = 12  # offset of the ledger's u32: the number of the batch whose replies are held
_SKIPS = 16  # offset of the ledger's skip marks: byte i set, call i of the batch is cancelled
_START = _SKIPS + 256  # offset of the held replies (a batch has at most 256 calls)
_FLUSH_AFTER = 0.02  # seconds a reply may wait in the ledger before the pipe gets it


def _read(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # our own pipe from the parent, nothing else


_send_lock = threading.Lock()  # a body's own threads may log while a reply is written


def _send(fd: int, kind: bytes, data: bytes | memoryview) -> None:
    """One reply, written straight to the pipe."""
    view = memoryview(_HEADER.pack(len(data) + 1) + kind + data)
    with _send_lock:
        while view:
            view = view[os.write(fd, view) :]


class _Replies:
    """Where the replies of calls go: straight to the pipe, or held in the ledger during a
    batch sent with a number (see the module's docstring). A thread of its own writes held
    replies out once the first has waited ``_FLUSH_AFTER`` seconds, even while a long call
    runs."""

    def __init__(self, fd: int, ledger_fd: int | None) -> None:
        self.fd = fd
        self.ledger: mmap.mmap | None = None
        self.batch: int | None = None  # the number of the batch whose replies are held
        self.index = 0  # the index in its batch of the next reply
        self.held = 0  # replies held and not written out
        self.used = _START  # ledger bytes in use, up to the end of the last reply held
        # The results of the batch, while every reply so far is a result held in the ledger
        # (None once one is not): at its end they go out as one pickle.
        self.results: list[Any] | None = None
        self.since = 0.0  # when the first reply held now was held
        self.lock = threading.Lock()  # the ledger's state: this thread and the flusher
        self.due = threading.Condition(self.lock)
        self.armed = False  # the flusher waits for a deadline (else for a first held reply)
        self.running = -1  # the index of the call of a batch of several whose body runs
        if ledger_fd is not None:
            self.ledger = mmap.mmap(ledger_fd, 0)
            os.close(ledger_fd)
            threading.Thread(target=self._flush_when_due, daemon=True).start()

    def start(self, batch: int | None) -> None:
        ledger = self.ledger
        self.index = 0
        if batch is None or ledger is None:
            self.batch = self.results = None
            return
        with self.lock:
            self.batch = batch
            self.results = []
            self.held = 0
            self.used = _START
            _U32.pack_into(ledger, 0, _START)  # the last batch's replies are gone
            _U32.pack_into(ledger, _FIRST, 0)
            _U32.pack_into(ledger, _BATCH, batch)

    def result(self, value: Any, cloudpickle: Any) -> None:
        """The reply of a call whose body returned ``value``."""
        try:
            # Plain pickle first (fast); it refuses what only cloudpickle can carry (objects
            # of classes made by cloudpickle here, lambdas...), which then goes by value.
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            try:
                data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                _write(self, ("ser", ("result", f"{type(exc).__name__}: {exc}")))
                return
            self.results = None  # not for plain pickle: the results cannot go as one
        if self.results is not None:
            self.results.append(value)
        self.send(b"o", data)

    def send(self, kind: bytes, data: bytes) -> None:
        ledger = self.ledger
        if self.batch is None or ledger is None:
            _send(self.fd, kind, data)
            return
        with self.lock:
            index = self.index
            self.index = index + 1
            if kind != b"o":
                self.results = None
            end = self.used + 5 + len(data)
            if end > len(ledger):
                self._flush()
                end = self.used + 5 + len(data)
                if end > len(ledger):  # too big to hold: straight to the pipe
                    self.results = None
                    _send(self.fd, kind, data)
                    return
            start = self.used
            if not self.held:
                _U32.pack_into(ledger, _FIRST, index)
            _U32.pack_into(ledger, start, len(data) + 1)
            ledger[start + 4] = kind[0]
            ledger[start + 5 : end] = data
            _U32.pack_into(ledger, 0, end)  # last: only whole replies count
            self.used = end
            self.held += 1
            if self.held == 1:
                self.since = time.monotonic()
                if not self.armed:
                    self.armed = True
                    self.due.notify()

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        """Write the held replies to the pipe (one message), then empty the ledger."""
        ledger = self.ledger
        if not self.held or ledger is None:
            return
        self.results = None  # some replies go out before the end: so do the rest
        with memoryview(ledger) as view:
            _send(self.fd, b"h", view[_FIRST : _FIRST + 4].tobytes() + view[_START : self.used])
        _U32.pack_into(ledger, 0, _START)  # (replies the pipe got are not taken twice)
        self.used = _START
        self.held = 0

    def _flush_when_due(self) -> None:
        """The flusher: wakes at most once per ``_FLUSH_AFTER`` while replies are held."""
        with self.lock:
            while True:
                if not self.armed:
                    self.due.wait()
                elif not self.held:
                    self.armed = False  # idle until a reply is held again
                else:
                    left = self.since + _FLUSH_AFTER - time.monotonic()
                    if left > 0:
                        self.due.wait(left)
                    else:
                        try:
                            self._flush()
                        except OSError:  # the pipe is gone, and so is the parent: stop here
                            return

    def starting(self, index: int) -> bool:
        """Call ``index`` of this batch starts, unless the parent cancelled it before (False).
        Its position (``2 * index + 1``: running) is written first, then its mark read (the
        parent does the reverse, and checks again a little later)."""
        ledger = self.ledger
        if ledger is None:
            return True
        self.running = index
        _U32.pack_into(ledger, _AT, 2 * index + 1)
        return ledger[_SKIPS + index] == 0

    def returned(self) -> None:
        """The body of the call running returned (or raised): ``2 * index + 2``."""
        if self.ledger is not None and self.running >= 0:
            _U32.pack_into(self.ledger, _AT, 2 * self.running + 2)
            self.running = -1

    def stop(self) -> None:
        """The batch ended: its replies go out. When every one is a result held here, they
        go as one pickle of the list of them (``r``), and stay in the ledger until the next
        batch (the parent reads them there if it cannot load the list)."""
        with self.lock:
            results = self.results
            if results is not None and self.held and self.held == self.index:
                try:
                    data = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # (each went alone): they go as held
                    self._flush()
                else:
                    _send(self.fd, b"r", data)
                    self.held = 0  # out: the flusher has nothing to do
            else:
                self._flush()
            self.batch = self.results = None


def _write(replies: _Replies, message: Any) -> None:
    replies.send(b"m", pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _watch_parent(parent: int) -> None:
    """If the parent dies (even by SIGKILL), take this worker and its children down with it."""
    stop = threading.Event()
    while not stop.wait(0.25):
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)


def _exception_reply(exc: BaseException, cloudpickle: Any) -> tuple[str, Any]:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    try:
        data = cloudpickle.dumps(exc)
        pickle.loads(data)  # it must also load back, or the parent gets the text
    except Exception:
        data = None
    return ("exc", (data, type(exc).__qualname__, str(exc), text))


# The run context of the call in progress, read by asyncflow.get_run_context() in the body:
# (task name, run number, attempt, tags, task key).
asyncflow_run_context: tuple[str, int, int, frozenset[str], str] | None = None
# Read by asyncflow's task run loggers here: the parent's level, and how records go back.
asyncflow_log_level = 20
_outbox = -1


def asyncflow_ship_log(record: dict[str, Any]) -> None:
    """Send a log record (a dict of plain values) to the parent, which handles it."""
    if _outbox >= 0:
        _send(_outbox, b"l", pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))


def main() -> None:
    parent = os.getppid()
    ending = "error"
    try:
        ending = _serve()
    except BaseException:
        traceback.print_exc()  # before any exit below: the parent shows it in its error
        sys.stderr.flush()
        raise
    finally:
        if ending == "eof" or os.getppid() != parent:
            # Our input ended without a goodbye: the parent died. Whatever this worker started
            # goes with it, as its session is its process group. (After a goodbye, the parent
            # does this itself once this worker has exited.)
            os.killpg(0, signal.SIGKILL)


def _serve() -> str:
    """Serve calls; say how it ended: "bye" (the parent closed us), "eof" or "crash"."""
    global asyncflow_run_context, asyncflow_log_level, _outbox  # read by asyncflow in the body
    parent = os.getppid()
    os.environ["ASYNCFLOW_PROCESS_WORKER"] = "1"  # task.submit() here says it is not available
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    inbox = sys.stdin.buffer
    outbox = _outbox = os.dup(1)
    os.dup2(2, 1)  # a task's print() must not corrupt the replies
    sys.stdout = sys.stderr
    setup = _read(inbox)
    if setup is None:
        return "eof"
    sys_path, cwd, initializer, asyncflow_log_level, ledger_fd = setup
    replies = _Replies(outbox, ledger_fd)
    sys.path[:] = sys_path
    os.chdir(cwd)
    import cloudpickle

    if initializer is not None:
        init, initargs = cloudpickle.loads(initializer)
        init(*initargs)  # if it raises, the worker dies and the parent reports its stderr
    _write(replies, ("ready", None))
    while True:
        message = _read(inbox)
        if message is None:
            return "eof"
        if message == "bye":
            return "bye"
        payload, is_async, (name, tags, key), blob, contexts, batch = message
        replies.start(batch)
        try:
            if not _batch(payload, is_async, (name, tags, key), blob, contexts, replies):
                return "crash"  # a body raised SystemExit or KeyboardInterrupt
        finally:
            replies.stop()  # every reply is in the pipe before this worker reads on or exits
            asyncflow_run_context = None


def _batch(  # noqa: PLR0917 - a private helper of this script
    payload: bytes,
    is_async: bool,
    ident: tuple[str, frozenset[str], str],
    blob: bytes,
    contexts: list[tuple[int, int]],
    replies: _Replies,
) -> bool:
    """Run the calls of one message and send their replies; False if this worker must exit."""
    global asyncflow_run_context  # read by asyncflow in the body
    import cloudpickle

    name, tags, key = ident
    try:
        fn = cloudpickle.loads(payload)
    except Exception as exc:
        for _ in contexts:
            _write(replies, ("ser", ("function", f"{type(exc).__name__}: {exc}")))
        return True
    try:
        calls = cloudpickle.loads(blob)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        reply = ("ser", ("arguments", text)) if len(contexts) == 1 else ("unbatch", text)
        _write(replies, reply)
        return True
    several = len(contexts) > 1
    for index, ((args, kwargs), (run_number, attempt)) in enumerate(
        zip(calls, contexts, strict=True)
    ):
        if several and not replies.starting(index):
            _write(replies, ("skipped", None))
            continue
        asyncflow_run_context = (name, run_number, attempt, tags, key)
        if not _call(fn, args, kwargs, is_async, replies, cloudpickle):
            return False
    return True


def _call(  # noqa: PLR0917 - a private helper of this script
    fn: Any, args: Any, kwargs: Any, is_async: bool, replies: _Replies, cloudpickle: Any
) -> bool:
    """Run one call and write its reply; False if this worker must exit."""
    try:
        if is_async:
            import asyncio

            result = asyncio.run(fn(*args, **kwargs))
        else:
            result = fn(*args, **kwargs)
    except Exception as exc:
        replies.returned()
        _write(replies, _exception_reply(exc, cloudpickle))
        return True
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: this worker is done
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        _write(replies, ("crash", (type(exc).__qualname__, str(exc), text)))
        return False
    replies.returned()
    replies.result(result, cloudpickle)
    return True


if __name__ == "__main__":
    main()
