"""The worker process of ``ProcessPoolTaskRunner``. Run as a script (not imported as part of the
package), so it starts fast: it imports only the standard library, plus cloudpickle when the
first call arrives.

Protocol on the private pipes (stdin: calls in; a dup of the original stdout: replies out;
``print`` in a task goes to stderr). Every message is a 4-byte big-endian length and a body.
In, each body is a pickle:
- first: ``(sys_path, cwd, initializer_bytes, log_level)``; answered ``ready`` once the
  initializer ran;
- then batches of calls of one function: ``(fn_bytes, is_async, (name, tags, key), args_bytes,
  [(run_number, attempt), ...])``, ``args_bytes`` a cloudpickle of the list of ``(args,
  kwargs)``, one per call, and the rest what ``get_run_context()`` says in the body (it makes
  the run's UUID from ``run_number``, as the parent's future does);
- ``"bye"``: exit. End of input without it means the parent died: exit and kill this worker's
  process group.
Out, each body is one kind byte and its data, one reply per call, in order, written as each
call ends (unbuffered, so the replies of the calls before a crash are never lost):
- ``o`` + the pickled result;
- ``l`` + a pickle of a log record's dict of plain values (``get_run_logger()`` in the body,
  at or above ``log_level``), any number before a reply; the parent handles it;
- ``m`` + a pickle of ``(kind, payload)``: ``("ready", None)``, ``("exc", (exception bytes or
  None, type name, message, traceback text))``, ``("ser", (direction, message))``,
  ``("crash", (type name, message, traceback text))`` (the worker then exits), or
  ``("unbatch", message)``: the arguments of a batch of several calls would not load here, none
  of them ran (the parent sends them again one by one, to say which one is at fault).
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from typing import Any, BinaryIO

_HEADER = struct.Struct(">I")


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


def _send(fd: int, kind: bytes, data: bytes) -> None:
    """One reply, written straight to the pipe (no buffer a crash could lose)."""
    view = memoryview(_HEADER.pack(len(data) + 1) + kind + data)
    with _send_lock:
        while view:
            view = view[os.write(fd, view) :]


def _write(fd: int, message: Any) -> None:
    _send(fd, b"m", pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


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
    sys_path, cwd, initializer, asyncflow_log_level = setup
    sys.path[:] = sys_path
    os.chdir(cwd)
    import cloudpickle

    if initializer is not None:
        init, initargs = cloudpickle.loads(initializer)
        init(*initargs)  # if it raises, the worker dies and the parent reports its stderr
    _write(outbox, ("ready", None))
    while True:
        message = _read(inbox)
        if message is None:
            return "eof"
        if message == "bye":
            return "bye"
        payload, is_async, (name, tags, key), blob, contexts = message
        try:
            fn = cloudpickle.loads(payload)
        except Exception as exc:
            for _ in contexts:
                _write(outbox, ("ser", ("function", f"{type(exc).__name__}: {exc}")))
            continue
        try:
            calls = cloudpickle.loads(blob)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            reply = ("ser", ("arguments", text)) if len(contexts) == 1 else ("unbatch", text)
            _write(outbox, reply)
            continue
        for (args, kwargs), (run_number, attempt) in zip(calls, contexts, strict=True):
            asyncflow_run_context = (name, run_number, attempt, tags, key)
            if not _call(fn, args, kwargs, is_async, outbox, cloudpickle):
                return "crash"  # the body raised SystemExit or KeyboardInterrupt
            asyncflow_run_context = None
        del fn, calls


def _call(  # noqa: PLR0917 - a private helper of this script
    fn: Any, args: Any, kwargs: Any, is_async: bool, outbox: int, cloudpickle: Any
) -> bool:
    """Run one call and write its reply; False if this worker must exit."""
    try:
        if is_async:
            import asyncio

            result = asyncio.run(fn(*args, **kwargs))
        else:
            result = fn(*args, **kwargs)
    except Exception as exc:
        _write(outbox, _exception_reply(exc, cloudpickle))
        return True
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: this worker is done
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        _write(outbox, ("crash", (type(exc).__qualname__, str(exc), text)))
        return False
    try:
        # Plain pickle first (fast); it refuses what only cloudpickle can carry (objects of
        # classes made by cloudpickle here, lambdas...), which then goes by value.
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        try:
            data = cloudpickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            _write(outbox, ("ser", ("result", f"{type(exc).__name__}: {exc}")))
            return True
    _send(outbox, b"o", data)
    return True


if __name__ == "__main__":
    main()
