"""The worker process of ``ProcessPoolTaskRunner``. Run as a script (not imported as part of the
package), so it starts fast: it imports only the standard library, plus cloudpickle when the
first call arrives.

Its arguments: the descriptor number of the reply ledger (below), or "-"; and the descriptor
number of the parent's own stdout, or "-" (a body's ``print`` goes there, as it would in a
child of ``concurrent.futures``; without one, to stderr). Every other descriptor it inherited
past stderr it closes first (see ``_close_inherited``). Its stderr is a pipe the parent reads:
the parent shows it on its own stderr and keeps its last lines for a crash error.

Protocol on the private pipes (the original stdin: calls in; the original stdout: replies out;
both moved to descriptors of their own, with stdin then reading ``/dev/null`` and descriptor 1
then the parent's stdout). Every message is an 8-byte big-endian length and a body.
In, each body is a pickle:
- first: ``(sys_path, cwd, initializer_bytes, log_level, ledger_fd)``; answered ``ready``
  once the initializer ran (``ledger_fd``: None when the parent has no ledger to share);
- then batches of calls of one function: ``(fn_bytes, is_async, (name, tags, key), args_bytes,
  [(run_number, attempt), ...], batch_number, notify)``: ``args_bytes`` a cloudpickle of the
  list of ``(args, kwargs)``, one per call (or ``kwargs`` alone when there are no ``args``),
  or a list of one such pickle per call (when calls could share a mutable argument: each then
  loads its own copy), or a 1-tuple holding a pickle of the list of each call's positional
  arguments, a tuple (a sync function's map whose parameters are its leading ones, in
  order); the list (or a range) what ``get_run_context()`` says in the body (it makes the
  run's UUID from ``run_number``, as the parent's future does; the run number alone for a
  first attempt); ``batch_number`` None for replies written as each call ends, else the number
  under which they are held; ``notify`` True for a lone call with a timeout, whose worker then
  writes an ``s`` (with no data, not a reply) just before its body starts (the parent's clock
  starts then, not while the function loads, which may import modules);
- ``"bye"``: exit. End of input without it means the parent died: exit and kill this worker's
  process group.
Out, each body is one kind byte and its data, one reply per call, in order. A call sent alone
has its reply written to the pipe as it ends. A batch sent with a batch number has its replies
held in a buffer the parent shares (the reply ledger: a file in memory, its descriptor given in
the setup) and written to the pipe together when the batch ends, when the buffer is full or
every ``_FLUSH_AFTER`` seconds while the batch runs (by a thread, so a long call does not
keep the replies before it): for a batch of quick calls, one write and one wake-up of the
parent per batch, not per call. When every reply of a batch is a result and none went out
before its end, they go as one list of the pickled results (each pickled when its body
returned), or, when every result is of an immutable plain type (``None``, ``bool``, ``int``,
``float``, ``complex``, ``str``, ``bytes``: then nothing can have changed since), as one
pickle of the list of the results themselves; else as the held replies themselves.
A reply is in the pipe or in the ledger from the moment its call ended, so when a worker dies
the parent still gets every reply before the call that killed it. The ledger holds, as 4-byte
numbers (in the machine's byte order: both ends run on it): the count of the bytes in use
(written after each reply held), the position of the worker in a batch of several (0: no call
started; ``2 * i + 1``: call i runs, written before its skip mark is read; ``2 * i + 2``: its
body returned), the index in its batch of the first reply held, and the batch's number; then
1024 skip marks (the parent sets mark i to cancel call i before it starts: it is answered
``skipped`` instead of run), then the held replies, each a 4-byte length, the kind byte and the
data. While the worker lives, the parent reads its position and sets skip marks (a cancel); it
reads the held replies only after the worker died, and ignores those of another batch and those
it already got from the pipe. Body kinds:
- ``o`` + the pickled result;
- ``p`` + the result when it is of a type of ``_PLAIN_VALUES``, by ``marshal`` (several times
  cheaper than pickle for these; both ends run the same interpreter);
- ``i`` + an ``int`` result that fits in 8 bytes, as a signed 8-byte number (machine order),
  held in the ledger (a record of a fixed size, written in one step);
- ``h`` + replies held in the ledger, as they were there (in order: the parent takes them as
  the replies of the next calls of the batch);
- ``r`` + a pickle of the list of the pickled results of every call of the batch;
- ``v`` + a pickle of the list of the results of every call of the batch (each of a type of
  ``_PLAIN_VALUES``);
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

import marshal
import mmap
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from typing import Any, BinaryIO

_HEADER = struct.Struct(">Q")  # (a message may be 4 GiB or more)
_U32 = struct.Struct("=I")  # the ledger's numbers
_RECORD = struct.Struct("=IB")  # a reply held in the ledger: its size (from the kind on), kind
_INT_RECORD = struct.Struct("=IBq")  # the same, with an ``int`` result (kind ``i``)
_INT_SIZE = _INT_RECORD.size - _U32.size  # its size from the kind on
_INT = ord("i")
_I64_MIN, _I64_END = -(1 << 63), 1 << 63  # (such an int is at least the one, below the other)
_OK = ord("o")  # the kind of a result's reply (pickled)
_PLAIN = ord("p")  # the kind of a result's reply of a type of _PLAIN_VALUES (marshalled)
_RESULT_KINDS = frozenset({b"o", b"p"})
_AT = 4  # offset of the ledger's u32: the index in its batch of the call starting or running
_FIRST = 8  # offset of the ledger's u32: the index in its batch of the first reply held
_BATCH = 12  # offset of the ledger's u32: the number of the batch whose replies are held
_SKIPS = 16  # offset of the ledger's skip marks: byte i set, call i of the batch is cancelled
_START = _SKIPS + 1024  # offset of the held replies (a batch has at most 1024 calls)
# Results of these (exact) types go back as they are, in one list, at the end of a batch
# (immutable: what is pickled then is what the body returned).
_PLAIN_VALUES = frozenset({type(None), bool, int, float, complex, str, bytes})
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
    batch sent with a number (see the module's docstring). A thread of its own writes the held
    replies not yet out every ``_FLUSH_AFTER`` seconds while a batch runs, so a long call does
    not keep the replies before it.

    Only this thread appends to the ledger, without a lock: a reply is written, then the count
    of bytes in use (in the ledger, and in ``used`` once the batch loop gives it back). The
    flusher sends up to the count it reads in the ledger. The lock keeps the flusher and the
    rare moves of this thread that send held replies (the end of a batch, a full ledger) or
    change the results kept for the end of a batch (``to_pickles``) apart."""

    def __init__(self, fd: int, ledger_fd: int | None) -> None:
        self.fd = fd
        self.ledger: mmap.mmap | None = None
        self.size = 0  # of the ledger
        self.batch: int | None = None  # the number of the batch whose replies are held
        self.index = 0  # the index in its batch of the next reply
        self.used = _START  # ledger bytes in use, up to the end of the last reply held
        self.sent = _START  # where the held replies not out yet start
        # While every reply of the batch is a result held in the ledger and none went out
        # (else both None), the results, to go out in one message at its end (see stop):
        # ``values``, the results themselves while each is of a type of _PLAIN_VALUES, or
        # once one is not (``values`` None), ``results``, their pickles.
        self.results: list[bytes] | None = None
        self.values: list[Any] | None = None
        self.lock = threading.Lock()
        self.due = threading.Condition(self.lock)
        # The ledger's numbers as an array (index _AT // 4: the position in a batch) and its
        # skip marks, for the batch loop: a store or a load there costs a fraction of a
        # struct call on the map.
        self.numbers: memoryview | None = None
        self.skips: memoryview | None = None
        if ledger_fd is not None:
            self.ledger = mmap.mmap(ledger_fd, 0)
            self.size = len(self.ledger)
            os.close(ledger_fd)
            self.numbers = memoryview(self.ledger)[:_SKIPS].cast("I")
            self.skips = memoryview(self.ledger)[_SKIPS:_START]
            threading.Thread(target=self._flush_when_due, daemon=True).start()

    def start(self, batch: int | None) -> None:
        ledger = self.ledger
        self.index = 0
        if batch is None or ledger is None:
            self.batch = self.results = self.values = None
            return
        with self.lock:
            self.results = []
            self.values = []
            self.used = self.sent = _START
            _U32.pack_into(ledger, 0, _START)  # the last batch's replies are gone
            _U32.pack_into(ledger, _FIRST, 0)
            _U32.pack_into(ledger, _BATCH, batch)
            self.batch = batch
            self.due.notify()  # the flusher's clock starts

    def result_by_value(self, value: Any, cloudpickle: Any) -> None:
        """The reply of a result that plain pickle refused (plain pickle goes first: it is
        fast; it refuses what only cloudpickle can carry, objects of classes made by
        cloudpickle here, lambdas...): by cloudpickle, or why it cannot go."""
        try:
            data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # (a __reduce__ may raise anything, SystemExit included)
            _write(self, ("ser", ("result", _error_text(exc))))
            return
        self.to_pickles()  # (not of a plain type: plain pickle would have taken it)
        results = self.results
        if results is not None:
            results.append(data)
        self.send(b"o", data)

    def to_pickles(self) -> None:
        """A result not of a plain type came: the results so far go as pickles."""
        with self.lock:  # (the flusher may end both lists meanwhile)
            values = self.values
            if values is not None and self.results is not None:
                self.results = [pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL) for v in values]
            self.values = None

    def send(self, kind: bytes, data: bytes) -> None:
        # (_batch holds an int result in the ledger itself, as this does: a change here goes
        # there.)
        ledger = self.ledger
        if self.batch is None or ledger is None:
            _send(self.fd, kind, data)
            return
        index = self.index
        self.index = index + 1
        if kind not in _RESULT_KINDS:
            self.results = self.values = None
        start = self.used
        end = start + 5 + len(data)
        if end > self.size:
            with self.lock:
                self._flush()  # the ledger starts again, from this reply
                _U32.pack_into(ledger, 0, _START)
                _U32.pack_into(ledger, _FIRST, index)  # before the count makes it count
                self.used = self.sent = start = _START
                end = start + 5 + len(data)
                if end > self.size:  # too big to hold: straight to the pipe
                    self.results = self.values = None
                    _send(self.fd, kind, data)
                    _U32.pack_into(ledger, _FIRST, index + 1)
                    return
        _RECORD.pack_into(ledger, start, len(data) + 1, kind[0])
        ledger[start + 5 : end] = data
        _U32.pack_into(ledger, 0, end)  # last: only whole replies count
        self.used = end

    def _flush(self) -> None:
        """Write the held replies not out yet to the pipe (one message). Under the lock."""
        ledger = self.ledger
        if ledger is None or self.batch is None:
            return
        # The count in the ledger, not ``used``: the batch loop keeps that to itself while
        # its results are ints (see _batch); it may append after it meanwhile.
        used: int = _U32.unpack_from(ledger, 0)[0]
        if used == self.sent:
            return
        # Some replies go out before the end: so do the rest (and no result is kept here).
        self.results = self.values = None
        with memoryview(ledger) as view:
            _send(self.fd, b"h", view[self.sent : used])
        self.sent = used

    def _flush_when_due(self) -> None:
        """The flusher: while a batch runs, sends what is held every ``_FLUSH_AFTER``."""
        with self.lock:
            while True:
                if self.batch is None:
                    self.due.wait()
                    continue
                batch = self.batch
                self.due.wait(_FLUSH_AFTER)
                if self.batch == batch:  # (else it ended, and its replies went out)
                    try:
                        self._flush()
                    except OSError:  # the pipe is gone, and so is the parent: stop here
                        return

    def stop(self, whole: bool = True) -> None:
        """The batch ended (``whole``: every call of it was answered; else this worker is
        about to die): its replies go out. When every one is a result held here and none
        went out yet, they go as one pickle of the list of their pickles (``r``: the parent
        loads it in one go, in C, and each result on its own, as it was when its body
        returned), or of the list of the results themselves when each is of a type of
        ``_PLAIN_VALUES`` (``v``: one load in the parent, the cheapest)."""
        with self.lock:
            # (Each list is None once a reply of this batch went out or was not a result.)
            kept = self.values if self.values is not None else self.results
            if whole and self.batch is not None and kept is not None and len(kept) == self.index:
                kind = b"v" if kept is self.values else b"r"
                _send(self.fd, kind, pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL))
                self.sent = self.used
            else:
                self._flush()
            self.batch = self.results = self.values = None


def _write(replies: _Replies, message: Any) -> None:
    replies.send(b"m", pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _watch_parent(parent: int) -> None:
    """If the parent dies (even by SIGKILL), take this worker and its children down with it."""
    stop = threading.Event()
    while not stop.wait(0.25):
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)


def _message_of(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder if that raises (as asyncflow's _error_text: this script
    imports nothing of asyncflow)."""
    try:
        return str(exc)
    except BaseException:  # (SystemExit included: it must not end this worker)
        return "<exception str() failed>"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_message_of(exc)}"


def _traceback_text(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # (its __str__ may raise anything, SystemExit included)
        return f"{type(exc).__qualname__}: <its traceback could not be formatted>"


def _exception_reply(exc: BaseException, cloudpickle: Any) -> tuple[str, Any]:
    text = _traceback_text(exc)
    try:
        data = cloudpickle.dumps(exc.with_traceback(None))
        pickle.loads(data)  # it must also load back, or the parent gets the text
    except BaseException:  # (loading it may raise anything, SystemExit included)
        data = None
    return ("exc", (data, type(exc).__qualname__, _message_of(exc), text))


# The run context of the call in progress, read by asyncflow.get_run_context() in the body:
# its run number alone (a first attempt) or (run number, attempt) (in a batch with a ledger, a
# _ContextAt, called, gives it), and, set once per batch, (task name, tags, task key) of the
# task of the batch.
asyncflow_run_context: int | tuple[int, int] | _ContextAt | None = None
asyncflow_run_task: tuple[str, frozenset[str], str] | None = None
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
    except BaseException as exc:
        traceback.print_exc()  # before any exit below: the parent shows it in its error
        sys.stderr.flush()
        if isinstance(exc, KeyboardInterrupt):
            raise
        # Not raised on: Python would print it once more (a SystemExit's message too).
        code = exc.code if isinstance(exc, SystemExit) else 1
        raise SystemExit(code if code is None or isinstance(code, int) else 1) from None
    finally:
        if ending == "eof" or os.getppid() != parent:
            # Our input ended without a goodbye: the parent died. Whatever this worker started
            # goes with it, as its session is its process group. (After a goodbye, the parent
            # does this itself once this worker has exited.)
            os.killpg(0, signal.SIGKILL)


_STDERR = 2


def _fd_argument(index: int) -> int:
    """The descriptor number given as argument ``index``, or -1 ("-", or none given)."""
    return int(sys.argv[index]) if len(sys.argv) > index and sys.argv[index] != "-" else -1


def _close_inherited() -> None:
    """Close every descriptor this worker inherited but its pipes (0 to 2), the reply ledger
    and the parent's stdout (its arguments). The parent's loop may be uvloop, whose spawn
    (libuv's) closes none: one the parent left inheritable (or was started with, such as a
    build tool's jobserver pipe) would stay open here as long as the worker lives, and a
    pipe's other end would never see it end."""
    kept = {_fd_argument(1), _fd_argument(2)} - {-1}
    try:
        open_now = [int(name) for name in os.listdir("/dev/fd")]  # (Linux: /proc/self/fd)
    except OSError:  # no such listing: every number up to the limit
        start = _STDERR + 1
        for fd in sorted(kept):
            os.closerange(start, fd)
            start = fd + 1
        os.closerange(start, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in open_now:
        if fd > _STDERR and fd not in kept:
            try:
                os.close(fd)
            except OSError:  # (the listing's own descriptor, closed already)
                pass


def _serve() -> str:
    """Serve calls; say how it ended: "bye" (the parent closed us), "eof" or "crash"."""
    global asyncflow_run_context, asyncflow_log_level, _outbox  # read by asyncflow in the body
    _close_inherited()
    parent = os.getppid()
    os.environ["ASYNCFLOW_PROCESS_WORKER"] = "1"  # task.submit() here says it is not available
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    os.register_at_fork(before=_note_run_context, after_in_child=_keep_run_context)
    # The pipes move to descriptors of their own (not inherited by what a body starts): a
    # body reading its stdin reads nothing, and a print() goes to the parent's stdout (else to
    # stderr), never in the replies.
    inbox = os.fdopen(os.dup(0), "rb")
    outbox = _outbox = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    stdout = _fd_argument(2)
    if stdout >= 0:
        os.dup2(stdout, 1)
        os.close(stdout)
    else:
        os.dup2(2, 1)
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
        payload, is_async, (name, tags, key), blob, contexts, batch, notify = message
        replies.start(batch)
        ran = False  # (True once every call was answered; else its replies go as held)
        try:
            ident = (name, tags, key)
            if not _batch(payload, is_async, ident, blob, contexts, replies, notify):
                return "crash"  # a body raised SystemExit or KeyboardInterrupt
            ran = True
        finally:
            replies.stop(ran)  # every reply is in the pipe before this worker reads on or exits
            asyncflow_run_context = None


class _ContextAt:
    """The run context of the call of a batch that runs now (``get_run_context()`` in the body
    calls it): the one at the worker's position in the ledger, which the batch loop sets
    anyway, so that no name is set per call."""

    __slots__ = ("contexts", "numbers")

    contexts: list[int | tuple[int, int]]
    numbers: memoryview

    def __init__(self, contexts: list[int | tuple[int, int]], numbers: Any) -> None:
        self.contexts = contexts
        self.numbers = numbers

    def __call__(self) -> int | tuple[int, int]:
        # Call i runs at position 2 * i + 1, and its body has returned at 2 * i + 2 (0: the
        # first has not started yet).
        return self.contexts[max(self.numbers[_AT // 4] - 1, 0) // 2]


_forked_context: int | tuple[int, int] | None = None  # (see _keep_run_context)


def _note_run_context() -> None:
    """Just before a body forks: the run context it is forked in, for the child."""
    global _forked_context
    call = asyncflow_run_context
    _forked_context = call() if isinstance(call, _ContextAt) else call


def _keep_run_context() -> None:
    """In a process a body forks: the run context stays the one it was forked in (the
    worker's position in the ledger, which a batch's context is read at, moves on, maybe
    before this child runs at all)."""
    global asyncflow_run_context
    asyncflow_run_context = _forked_context


def _load(
    payload: bytes,
    blob: bytes | list[bytes] | tuple[bytes, ...],
    count: int,
    replies: _Replies,
    cloudpickle: Any,
) -> tuple[Any, list[Any]] | None:
    """The function and the calls of a message; None if they do not load (then answered)."""
    try:
        fn = cloudpickle.loads(payload)
    except BaseException as exc:  # (a __reduce__ may raise anything, SystemExit included)
        for _ in range(count):
            _write(replies, ("ser", ("function", _error_text(exc))))
        return None
    try:
        # One pickle of them all (in a tuple: of their positional arguments, or in a 2-tuple
        # of their only ones), or one per call when calls could share a mutable argument
        # (then each gets its own copy, as a call sent alone does).
        if type(blob) is list:
            calls: list[Any] = list(map(cloudpickle.loads, blob))
        else:
            calls = cloudpickle.loads(blob[0] if type(blob) is tuple else blob)
    except BaseException as exc:  # (a __reduce__ may raise anything, SystemExit included)
        text = _error_text(exc)
        reply = ("ser", ("arguments", text)) if count == 1 else ("unbatch", text)
        _write(replies, reply)
        return None
    return fn, calls


def _batch(  # noqa: PLR0915, PLR0917 - a private helper; its loop runs once per call, inlined
    payload: bytes,
    is_async: bool,
    ident: tuple[str, frozenset[str], str],
    blob: bytes | list[bytes] | tuple[bytes, ...],
    contexts: list[int | tuple[int, int]],
    replies: _Replies,
    notify: bool = False,
) -> bool:
    """Run the calls of one message and send their replies; False if this worker must exit.
    ``notify``: say when the body of its (lone) call starts (its timeout counts from then)."""
    global asyncflow_run_context, asyncflow_run_task  # read by asyncflow in the body
    import cloudpickle

    asyncflow_run_task = ident
    loaded = _load(payload, blob, len(contexts), replies, cloudpickle)
    if loaded is None:
        return True  # each call was answered why it cannot run
    fn, calls = loaded
    # In a batch of several, the worker's position goes in the ledger (see the module's
    # docstring): "call i runs" before its skip mark is read, "its body returned" after.
    ledger = replies.ledger if len(contexts) > 1 else None
    numbers = replies.numbers
    skips = replies.skips
    at = _AT // 4  # (the index of the position in ``numbers``)
    int_record = _INT_RECORD.pack_into
    int_record_size = _INT_RECORD.size
    # The ledger when it holds the replies (a batch of several sent with a number), and its
    # size: set for the whole batch.
    held = ledger if ledger is not None and replies.batch is not None else None
    size = replies.size
    if len(calls) != len(contexts):
        raise ValueError(f"{len(calls)} calls came with {len(contexts)} run contexts")
    if ledger is not None:  # the body's run context, by the worker's position in the ledger
        asyncflow_run_context = _ContextAt(contexts, numbers)
    # A call is its keyword arguments alone, or (args, kwargs), or, sent so, the tuple of its
    # positional arguments, or its only one; a sync function called with either alone (the
    # common case) is called so, with no more checks per call.
    by_position = type(blob) is tuple
    only_argument = by_position and len(blob) > 1
    kwargs_only = not is_async and not by_position and set(map(type, calls)) == {dict}
    # Kept here while results are ints held in the ledger (the common case of a batch of
    # quick calls), and given back to ``replies`` before anything else uses them: the bytes of
    # the ledger in use (the flusher reads them from the ledger itself), the replies so far,
    # and the results kept for the batch's last message.
    used, answered, values = replies.used, replies.index, replies.values
    for index, call in enumerate(calls):
        if ledger is not None:
            numbers[at] = 2 * index + 1  # type: ignore[index]
            if skips[index]:  # type: ignore[index]
                replies.used, replies.index = used, answered
                _write(replies, ("skipped", None))
                used, answered, values = replies.used, replies.index, replies.values
                continue
        else:
            asyncflow_run_context = contexts[index]
        if notify:
            _send(replies.fd, b"s", b"")
        try:
            if only_argument:
                value = fn(call)
            elif kwargs_only:
                value = fn(**call)
            elif by_position:
                value = fn(*call)
            else:
                args, kwargs = ((), call) if type(call) is dict else call
                if is_async:
                    import asyncio

                    value = asyncio.run(fn(*args, **kwargs))
                else:
                    value = fn(*args, **kwargs)
        except Exception as exc:
            if ledger is not None:
                numbers[at] = 2 * index + 2  # type: ignore[index]
            replies.used, replies.index = used, answered
            _write(replies, _exception_reply(exc, cloudpickle))
            used, answered, values = replies.used, replies.index, replies.values
            continue
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: this worker is done
            text = _traceback_text(exc)
            replies.used, replies.index = used, answered
            _write(replies, ("crash", (type(exc).__qualname__, _message_of(exc), text)))
            return False
        if ledger is not None:
            numbers[at] = 2 * index + 2  # type: ignore[index]
        # An int result held in the ledger: one record of a fixed size, no marshal.
        if (
            type(value) is int
            and held is not None
            and _I64_MIN <= value < _I64_END
            and values is not None
            and (end := used + int_record_size) <= size
        ):
            int_record(held, used, _INT_SIZE, _INT, value)
            values.append(value)
            numbers[0] = used = end  # type: ignore[index]
            answered += 1
            continue
        replies.used, replies.index = used, answered
        _reply(replies, value, cloudpickle)
        used, answered, values = replies.used, replies.index, replies.values
    replies.used, replies.index = used, answered
    return True


def _reply(replies: _Replies, value: Any, cloudpickle: Any) -> None:
    """The reply of a call that returned ``value``, when not an int held as such (see
    ``_batch``): by marshal (a plain value) or plain pickle, kept for the batch's last message
    unless it cannot be one."""
    data = b""
    if type(value) in _PLAIN_VALUES:
        try:
            data = marshal.dumps(value)
        except (ValueError, MemoryError):  # (a str or bytes of 2 GiB or more: pickle tries)
            pass
    if data:
        kind = b"p"
        values = replies.values
        if values is not None:
            values.append(value)
        elif (results := replies.results) is not None:
            results.append(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    else:
        try:  # plain pickle, and the end of replies.result_by_value: once per call
            kind, data = b"o", pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except BaseException:  # (a __reduce__ may raise anything, SystemExit included)
            replies.result_by_value(value, cloudpickle)  # (by cloudpickle, or why it cannot)
            return
        if replies.values is not None:
            replies.to_pickles()
        if (results := replies.results) is not None:
            results.append(data)
    replies.send(kind, data)


if __name__ == "__main__":
    main()
