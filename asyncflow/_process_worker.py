"""The worker process of ``ProcessPoolTaskRunner``. Run as a script (not imported as part of the
package), so it starts fast: it imports only the standard library, plus cloudpickle when the
first call arrives.

Protocol on the private pipes (stdin: calls in; a dup of the original stdout: replies out;
``print`` in a task goes to stderr). Every message is a 4-byte big-endian length and a pickle:
- first message in: ``(sys_path, cwd, initializer_bytes)``; reply ``("ready", None)`` once the
  initializer ran;
- then batches of calls of one function: ``(fn_bytes, is_async, [(args_bytes, context), ...])``,
  each ``args_bytes`` a cloudpickle of ``(args, kwargs)`` and ``context`` the run context the
  body may read; one reply per call, in order, as each ends;
- each reply out: ``(kind, payload)`` with kind ``"ok"`` (cloudpickled result), ``"exc"``
  (cloudpickled exception or None, type name, message, traceback text), ``"ser"`` (direction,
  message) or ``"crash"`` (type name, message, traceback text; the worker then exits).
``"bye"`` means: exit. End of input without it means the parent died: exit and kill this
worker's process group.
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


def _write(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


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
# (task name, run id, attempt, tags, task key).
asyncflow_run_context: tuple[str, str, int, frozenset[str], str] | None = None


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
    global asyncflow_run_context  # read by get_run_context() in the body
    parent = os.getppid()
    os.environ["ASYNCFLOW_PROCESS_WORKER"] = "1"  # task.submit() here says it is not available
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    inbox = sys.stdin.buffer
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a task's print() must not corrupt the replies
    sys.stdout = sys.stderr
    setup = _read(inbox)
    if setup is None:
        return "eof"
    sys_path, cwd, initializer = setup
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
        payload, is_async, calls = message
        try:
            fn = cloudpickle.loads(payload)
        except Exception as exc:
            for _ in calls:
                _write(outbox, ("ser", ("function", f"{type(exc).__name__}: {exc}")))
            continue
        for call, context in calls:
            try:
                args, kwargs = cloudpickle.loads(call)
            except Exception as exc:
                _write(outbox, ("ser", ("arguments", f"{type(exc).__name__}: {exc}")))
                continue
            asyncflow_run_context = context
            if not _call(fn, args, kwargs, is_async, outbox, cloudpickle):
                return "crash"  # the body raised SystemExit or KeyboardInterrupt
            asyncflow_run_context = None
        del fn


def _call(  # noqa: PLR0917 - a private helper of this script
    fn: Any, args: Any, kwargs: Any, is_async: bool, outbox: BinaryIO, cloudpickle: Any
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
        data = cloudpickle.dumps(result)
    except Exception as exc:
        _write(outbox, ("ser", ("result", f"{type(exc).__name__}: {exc}")))
        return True
    _write(outbox, ("ok", data))
    return True


if __name__ == "__main__":
    main()
