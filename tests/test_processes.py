"""Process workers under faults: one test per process row of the fault matrix, and the rest of
what ``ProcessPoolTaskRunner`` promises (initializer, worker bound, output of bodies, no orphans).

Bodies tell the tests their pid (and the pids of what they start) through the ``Hub`` of the
contract suite; nothing here sleeps to let something happen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import copyreg
import dataclasses
import functools
import gc
import io
import json
import logging
import marshal
import operator
import os
import pickle
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import anyio
import cloudpickle
import psutil
import pytest
from test_contract import TIMEOUT, Address, Hub, check_in, double, gated

import asyncflow
import asyncflow._driver as driver_module
import asyncflow._watcher as watcher_module
from asyncflow import ProcessPoolTaskRunner, StateType, ThreadPoolTaskRunner, task, unmapped
from asyncflow._echo import LineSplitter
from asyncflow._futures import CANCELLED, Future, MapGroup, plain_runs
from asyncflow._mapping import expand
from asyncflow._processes import ProcessWorkers, _items_of, _MapCalls
from asyncflow._task import Task, as_task
from asyncflow.exceptions import (
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskCancelledError,
    TaskCrashedError,
    TaskTimeoutError,
    UpstreamFailedError,
    WorkerCrashedError,
    WorkerStartError,
)

# Bodies of this module travel to worker processes by value (see the contract suite).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ORPHAN_DEADLINE = 2.0  # seconds: workers and their children must be gone this soon (row 28)
INIT_FLAG = "ASYNCFLOW_TEST_INITIALIZED"


@pytest.fixture
def hub() -> Iterator[Hub]:
    with Hub() as h:
        yield h


# -- helpers -----------------------------------------------------------------------------------
def worker_pids() -> set[int]:
    """Pids of the live worker processes of this process."""
    found = set()
    for child in psutil.Process().children():
        try:
            if any("_process_worker" in part for part in child.cmdline()):
                found.add(child.pid)
        except psutil.Error:  # noqa: PERF203 - exited meanwhile (or a zombie): not live
            continue
    return found


def kill_quietly(*processes: psutil.Process) -> None:
    """Clean-up after a failed check: nothing may outlive the test."""
    for process in processes:
        try:
            process.kill()
        except psutil.Error:  # noqa: PERF203 - already gone, as it should be
            pass


def still_running_after(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until these processes have exited, for at most ``timeout`` seconds (a wait on their
    pidfds); the ones still running then. An exited process counts as gone even before its
    parent reaps it."""
    poller = select.poll()
    watched: dict[int, psutil.Process] = {}
    try:
        for process in processes:
            try:
                fd = os.pidfd_open(process.pid)
            except ProcessLookupError:  # exited and reaped already
                continue
            watched[fd] = process
            poller.register(fd, select.POLLIN)
        pending = set(watched)
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for fd, _ in poller.poll(remaining * 1000):
                poller.unregister(fd)
                pending.discard(fd)
        return [watched[fd] for fd in pending]
    finally:
        for fd in watched:
            os.close(fd)


def read_line(process: subprocess.Popen[bytes], what: str) -> str:
    """The next line the script writes to its stdout, saying ``what`` (at most ``TIMEOUT``
    seconds away)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], TIMEOUT)
        assert ready, f"the script did not say {what} within {TIMEOUT:g} s (got {line!r})"
        chunk = os.read(fd, 1)
        assert chunk, f"the script closed its stdout before it said {what} (got {line!r})"
        line += chunk
    return line.decode().strip()


def script_env() -> dict[str, str]:
    """The environment for a script that imports this checkout of asyncflow."""
    root = str(Path(asyncflow.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


def run_script(path: Path, text: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as the script ``path`` with this checkout of asyncflow; its output."""
    path.write_text(text)
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=timeout,
        check=False,
    )


# -- task bodies (module level: they travel to the workers) ------------------------------------
class TwoArgsError(Exception):
    """Pickles, but cannot be unpickled: its ``args`` do not match its ``__init__``."""

    def __init__(self, pid: int, detail: str) -> None:
        super().__init__(f"raised in pid {pid}: {detail}")


class WrappedError(LookupError):
    pass


def _refuse_to_load() -> None:
    raise RuntimeError("this object refuses to load")


class LoadFails:
    """Pickles anywhere; loading it anywhere raises."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_to_load, ())


def triple(x: int) -> int:
    return 3 * x


def pid() -> int:
    return os.getpid()


async def apid() -> int:
    await asyncio.sleep(0)
    return os.getpid()


async def araise_wrapped(message: str) -> None:
    await asyncio.sleep(0)
    raise WrappedError(message)


def take(x: int, payload: object) -> int:
    return os.getpid()


def give_lock() -> threading.Lock:
    return threading.Lock()


def give_load_fails() -> LoadFails:
    return LoadFails()


def raise_two_args() -> None:
    raise TwoArgsError(os.getpid(), "the second argument")


def raise_chained() -> None:
    try:
        int("not a number")
    except ValueError as exc:
        raise WrappedError("could not read the number") from exc


def exit_now(code: int, note: str) -> None:
    print(note, file=sys.stderr)
    os._exit(code)


def gated_exit(hub: Address, label: str, code: int) -> None:
    with check_in(hub, label) as conn:
        conn.recv(1)
    os._exit(code)


def die_by(sig: int, note: str) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left in the working directory
    sys.stderr.write(note + "\n")
    sys.stderr.flush()
    os.kill(os.getpid(), sig)


def leave(kind: str) -> None:
    if kind == "SystemExit":
        raise SystemExit(f"leaving pid {os.getpid()}")
    raise KeyboardInterrupt(f"interrupted pid {os.getpid()}")


def spawn_child_and_wait(hub: Address, label: str, stubborn: bool) -> int:
    """Start a child process that lives until killed, tell the hub both pids, then wait for the
    word. ``stubborn``: this worker and the child ignore SIGTERM (only SIGKILL stops them)."""
    code = "import signal; signal.pause()"
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()"
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with check_in(hub, label, child.pid) as conn:
        conn.recv(1)
    return child.pid


def leave_child_behind() -> int:
    """Start a child process that lives until killed, and return (leaving it running)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.pause()"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return child.pid


def chatty(text: str) -> str:
    """Writes to stdout every way a body might: none of it may reach the replies."""
    print(text)
    print(text, file=sys.__stdout__, flush=True)
    sys.stdout.write(text + "\n")
    os.write(1, struct.pack(">I", 5) + b"12345")  # looks like the start of a reply
    subprocess.run([sys.executable, "-c", f"print({text!r})"], check=True)
    return text.upper()


def note_start(path: str, flag: str) -> None:
    """An initializer: record this worker's pid, leave a mark its tasks can see."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.environ[INIT_FLAG] = flag


def refuse_to_start(path: str) -> None:
    """An initializer that records the attempt, then fails."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    raise RuntimeError("no database here")


def pid_and_flag(i: int) -> tuple[int, str | None]:
    return os.getpid(), os.environ.get(INIT_FLAG)


def submit_inside() -> None:
    import asyncflow

    asyncflow.task(double).submit(1)


# -- row 1: a crash fails only its own run; the pool heals --------------------------------------
def test_a_crash_fails_only_its_own_run_while_20_others_run_or_wait(hub: Hub) -> None:
    with ProcessPoolTaskRunner(max_workers=2) as runner, hub:
        crasher = runner.submit(gated_exit, {"hub": hub.address, "label": "crasher", "code": 1})
        neighbour = runner.submit(gated, {"hub": hub.address, "label": "neighbour", "value": -1})
        hub.arrivals(2)
        waiting = runner.map(double, {"x": range(19)})
        stats = runner.statistics()
        assert (stats.running, stats.queued) == (2, 19)
        hub.release("crasher")
        err = crasher.exception(TIMEOUT)
        assert isinstance(err, WorkerCrashedError)
        assert crasher.state.is_crashed()
        assert err.pid == hub.pid("crasher")
        assert err.exitcode == 1
        message = str(err)
        assert (
            f"task 'gated_exit': its worker process (pid {err.pid}) exited with code 1" in message
        )
        assert neighbour.running()  # it ran beside the crash, untouched
        hub.release("neighbour")
        assert neighbour.result(TIMEOUT) == -1
        assert waiting.result(TIMEOUT) == [2 * i for i in range(19)]
        workers = worker_pids()
        assert len(workers) == 2  # back to N workers
        assert hub.pid("neighbour") in workers
        assert err.pid not in workers
    stats = runner.statistics()
    assert (stats.completed, stats.failed) == (20, 1)


def test_bodies_that_crash_their_workers_do_not_stop_the_pool_starting_workers() -> None:
    # Each crash happens in a fresh worker's first body: blame the body, not the start.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        crashes = [
            runner.submit(exit_now, {"code": 5, "note": f"crash number {i}"}) for i in range(4)
        ]
        after = runner.submit(pid)
        crashed = set()
        for i, fut in enumerate(crashes):
            err = fut.exception(TIMEOUT)
            assert isinstance(err, WorkerCrashedError), err
            assert err.exitcode == 5
            assert f"crash number {i}" in err.stderr_tail
            crashed.add(err.pid)
        assert len(crashed) == 4  # a fresh worker for each
        assert after.result(TIMEOUT) not in crashed


# -- row 3 and row 18: crash retries are opt-in, bounded, and separate from retries --------------
def exit_until(marker_dir: str, succeed_on: int) -> int:
    """Kills its worker on each attempt before ``succeed_on``; counts attempts in files."""
    attempt = asyncflow.get_run_context().attempt
    Path(marker_dir, f"attempt-{attempt}").write_text(str(os.getpid()))
    if attempt < succeed_on:
        os._exit(3)
    return attempt


def test_retries_never_apply_to_a_crashed_worker(tmp_path: Path) -> None:
    crashy = task(retries=5)(exit_until)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        fut = runner.submit(crashy, {"marker_dir": str(tmp_path), "succeed_on": 99})
        assert isinstance(fut.exception(TIMEOUT), WorkerCrashedError)
    assert fut.state.is_crashed()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attempt-1"]  # ran once: no storm


def test_crash_retries_run_again_after_a_worker_died_up_to_their_bound(tmp_path: Path) -> None:
    recovers = task(crash_retries=2)(exit_until)
    gives_up = task(crash_retries=2, retries=4)(exit_until)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        first = tmp_path / "first"
        first.mkdir()
        ok = runner.submit(recovers, {"marker_dir": str(first), "succeed_on": 3})
        assert ok.result(TIMEOUT) == 3  # two crashes, then the third attempt succeeds
        second = tmp_path / "second"
        second.mkdir()
        bad = runner.submit(gives_up, {"marker_dir": str(second), "succeed_on": 99})
        err = bad.exception(TIMEOUT)
    assert isinstance(err, WorkerCrashedError)
    assert bad.state.is_crashed()
    pids = {p.read_text() for p in second.iterdir()}
    assert len(pids) == 3  # one attempt and two crash retries, each on a fresh worker
    assert runner.statistics().retried == 4


def test_crash_retries_must_be_a_non_negative_int() -> None:
    with pytest.raises(ValueError, match="crash_retries must be >= 0"):
        task(crash_retries=-1)
    with pytest.raises(TypeError, match="crash_retries must be an int"):
        task(crash_retries="2")  # type: ignore[call-overload]


# -- row 2: killed by a signal -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sig", "out_of_memory_hint"),
    [(signal.SIGKILL, True), (signal.SIGSEGV, False)],
    ids=["SIGKILL", "SIGSEGV"],
)
def test_a_worker_killed_by_a_signal_is_named_with_its_stderr_tail(
    sig: signal.Signals, out_of_memory_hint: bool
) -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        fut = runner.submit(die_by, {"sig": int(sig), "note": "last words before the signal"})
        err = fut.exception(TIMEOUT)
        assert isinstance(err, WorkerCrashedError)
        assert fut.state.is_crashed()
        assert err.exitcode == -sig
        message = str(err)
        expected = f"task 'die_by': its worker process (pid {err.pid}) was killed by {sig.name}"
        assert expected in message
        assert ("possibly out of memory" in message) is out_of_memory_hint
        assert "last words before the signal" in err.stderr_tail
        assert "last words before the signal" in message
        assert runner.submit(pid).result(TIMEOUT) != err.pid  # a fresh worker took over


# -- rows 4, 6, 7: serialization in either direction -------------------------------------------
def test_an_argument_that_cannot_be_pickled_fails_the_run_before_any_worker_starts() -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    with ProcessPoolTaskRunner(max_workers=1) as runner:
        bad_argument = runner.submit(take, {"x": 1, "payload": threading.Lock()})
        bad_function = runner.submit(uses_lock)
        err = bad_argument.exception(TIMEOUT)
        assert isinstance(err, SerializationError)
        assert err.direction == "arguments"
        assert "task 'take'" in str(err)
        assert "parameter 'payload'" in str(err)
        assert bad_argument.state.is_failed()
        err = bad_function.exception(TIMEOUT)
        assert isinstance(err, SerializationError)
        assert err.direction == "arguments"
        assert "the task's function" in str(err)
        assert worker_pids() == set()  # no worker was started for either
        assert runner.submit(double, {"x": 2}).result(TIMEOUT) == 4


def test_a_future_in_an_object_that_is_not_searched_fails_saying_why() -> None:
    # Only the containers of the contract are searched for inputs; a future elsewhere would be
    # sent as it is, and a future does not pickle: the error says so, and where to put it.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        up = runner.submit(double, {"x": 2})
        holder = types.SimpleNamespace(up=up)
        err = runner.submit(take, {"x": 1, "payload": holder}).exception(TIMEOUT)
        assert isinstance(err, SerializationError)
        assert "parameter 'payload'" in str(err)
        assert "a future of task 'double' cannot be pickled" in str(err)
        assert "deques, dataclasses or pydantic models" in str(err)
        inside = runner.submit(identity, {"x": collections.deque([up], maxlen=3)})
        got = inside.result(TIMEOUT)  # a deque is searched: its future is an input
        assert (got, got.maxlen) == (collections.deque([4]), 3)


def test_an_argument_that_cannot_be_loaded_in_the_worker_fails_the_run_naming_it() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(pid).result(TIMEOUT)
        fut = runner.submit(take, {"x": 1, "payload": LoadFails()})
        err = fut.exception(TIMEOUT)
        assert isinstance(err, SerializationError)
        assert err.direction == "arguments"
        assert "task 'take'" in str(err)
        assert "this object refuses to load" in str(err)
        assert runner.submit(pid).result(TIMEOUT) == before  # the same worker serves on
        assert "payload" in str(err)  # which argument could not be loaded


def _map_where_run_5_does_not_load(
    runner: ProcessPoolTaskRunner, between: Callable[[], object] = lambda: None
) -> list[Any]:
    """Many quick calls of one task queued at once (they may travel in batches), after a
    first map that shows the task is quick (then ``between()``); run 5's argument does not
    load in the worker. Returns the futures, all final."""
    assert runner.map(take, {"x": range(4), "payload": unmapped(None)}).result(TIMEOUT)
    between()
    payloads: list[object] = [None] * 12
    payloads[5] = LoadFails()
    futures = runner.map(take, {"x": range(12), "payload": payloads})
    futures.wait(TIMEOUT)
    return futures


@pytest.mark.usefixtures("batches")
def test_an_argument_that_cannot_be_loaded_fails_only_its_own_run_among_many() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        futures = _map_where_run_5_does_not_load(runner)
    failed = [i for i, f in enumerate(futures) if f.exception() is not None]
    assert failed == [5], f"runs {failed} failed; only run 5 has an argument that cannot load"
    assert isinstance(futures[5].exception(), SerializationError)


def test_a_result_that_cannot_be_pickled_fails_the_run_and_the_worker_serves_on() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(pid).result(TIMEOUT)
        fut = runner.submit(give_lock)
        err = fut.exception(TIMEOUT)
        assert isinstance(err, SerializationError)
        assert err.direction == "result"
        assert "task 'give_lock'" in str(err)
        assert "lock" in str(err)
        assert fut.state.is_failed()
        assert runner.submit(pid).result(TIMEOUT) == before


def test_a_result_that_cannot_be_loaded_here_fails_the_run_and_the_worker_serves_on() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(pid).result(TIMEOUT)
        fut = runner.submit(give_load_fails)
        err = fut.exception(TIMEOUT)
        assert isinstance(err, SerializationError)
        assert err.direction == "result"
        assert "task 'give_load_fails'" in str(err)
        assert "this object refuses to load" in str(err)
        assert runner.submit(pid).result(TIMEOUT) == before


def bytes_marshal_has_no_memory_for() -> bytes:
    """A plain result whose marshalling runs out of memory (once), as a huge one may."""
    real = marshal.dumps

    def out_of_memory(value: object, *args: Any) -> bytes:
        marshal.dumps = real
        raise MemoryError

    marshal.dumps = out_of_memory
    return b"plain bytes"


def test_a_plain_result_that_runs_out_of_memory_to_marshal_goes_by_pickle() -> None:
    # (A MemoryError there killed the worker: the run Crashed, and the worker was replaced.)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(pid).result(TIMEOUT)
        assert runner.submit(bytes_marshal_has_no_memory_for).result(TIMEOUT) == b"plain bytes"
        assert runner.submit(pid).result(TIMEOUT) == before


def failed_runs(futures: list[Any]) -> list[int]:
    """The numbers (from 1) of the runs of a map from 1 that did not complete."""
    return [i for i, f in enumerate(futures, start=1) if not f.state.is_completed()]


class DividesByZeroWhenLoaded:
    """Pickles with plain pickle anywhere (as a call of ``operator.truediv``), which raises
    when it is loaded."""

    def __reduce__(self) -> tuple[Any, tuple[int, int]]:
        return (operator.truediv, (1, 0))


def load_fails_at(i: int, stop: int) -> object:
    return DividesByZeroWhenLoaded() if i == stop else i


@pytest.mark.usefixtures("batches")
def test_a_result_of_a_batch_that_cannot_be_loaded_here_fails_only_its_own_run() -> None:
    # The results of a batch come in one message; when one of them does not load, each is
    # taken on its own, so only the run at fault fails.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(load_fails_at, {"i": 0, "stop": -1}).result(TIMEOUT) == 0
        # A first map warms the worker up (a batch slower than 20 ms goes out in parts).
        assert runner.map(load_fails_at, {"i": range(60), "stop": unmapped(-1)}).result(TIMEOUT)
        futures = runner.map(load_fails_at, {"i": range(1, 60), "stop": unmapped(30)})
        futures.wait(TIMEOUT)
        failed = failed_runs(futures)
        assert failed == [30], f"runs {failed} failed; only run 30's result does not load"
        err = futures[29].exception()
        assert isinstance(err, SerializationError)
        assert err.direction == "result"
        assert "division by zero" in str(err)
        assert [f.result() for f in futures[30:]] == list(range(31, 60))
        assert runner.submit(load_fails_at, {"i": 7, "stop": -1}).result(TIMEOUT) == 7


# -- row 5: an exception that cannot be unpickled -----------------------------------------------
def test_an_exception_that_cannot_be_loaded_arrives_as_a_remote_error(hub: Hub) -> None:
    with ProcessPoolTaskRunner(max_workers=2) as runner, hub:
        neighbour = runner.submit(gated, {"hub": hub.address, "label": "neighbour", "value": 5})
        hub.arrivals(1)
        bad = runner.submit(raise_two_args)
        err = bad.exception(TIMEOUT)
        assert isinstance(err, RemoteError)
        assert err.type_name == "TwoArgsError"
        assert "the second argument" in err.remote_message
        assert str(err).startswith("TwoArgsError: raised in pid ")
        assert bad.state.is_failed()
        cause = err.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "in raise_two_args" in cause.text
        assert "TwoArgsError: raised in pid" in cause.text
        hub.release("neighbour")
        assert neighbour.result(TIMEOUT) == 5  # nothing else is affected
        match = re.search(r"pid (\d+)", err.remote_message)
        assert match is not None
        workers = worker_pids()
        assert workers == {int(match.group(1)), hub.pid("neighbour")}  # no worker was lost
        assert runner.submit(pid).result(TIMEOUT) in workers


# -- row 8: lambdas, closures, local functions --------------------------------------------------
def test_lambdas_closures_and_local_functions_run_in_workers() -> None:
    factor = 7

    def scale(x: int) -> int:
        return x * factor

    class Local:
        def __init__(self, value: int) -> None:
            self.value = value

    def make_local(value: int) -> Local:
        return Local(value)

    with ProcessPoolTaskRunner(max_workers=2) as runner:
        assert runner.submit(lambda x: x + 1, {"x": 41}).result(TIMEOUT) == 42
        assert runner.submit(scale, {"x": 6}).result(TIMEOUT) == 42
        assert runner.map(lambda x, y: x * y, {"x": [1, 2], "y": [3, 4]}).result(TIMEOUT) == [3, 8]
        partial = functools.partial(lambda x, y: x - y, 50)
        assert runner.submit(partial, {"y": 8}).result(TIMEOUT) == 42
        local = runner.submit(make_local, {"value": 3}).result(TIMEOUT)
        assert type(local) is Local
        assert local.value == 3


MAIN_SCRIPT = """
import os
import pickle

from asyncflow import ProcessPoolTaskRunner


class MainError(Exception):
    pass


def plus_one(x):
    return x + 1


def fail(message):
    raise MainError(message)


if __name__ == "__main__":
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        print(runner.submit(plus_one, {"x": 41}).result())
        print(runner.submit(os.getpid).result() != os.getpid())
        try:
            runner.submit(fail, {"message": "raised in a worker"}).result()
        except MainError as exc:
            print("caught", type(exc).__name__, exc)
"""


def test_functions_and_exceptions_defined_in_main_travel_to_workers(tmp_path: Path) -> None:
    done = run_script(tmp_path / "main_script.py", MAIN_SCRIPT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "42",
        "True",
        "caught MainError raised in a worker",
    ]


# -- row 9: the original type, with the remote traceback in __cause__ ---------------------------
def test_the_original_type_is_raised_with_the_remote_traceback_as_its_cause() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        with pytest.raises(json.JSONDecodeError) as caught:
            runner.submit(json.loads, {"s": "{not json"}).result(TIMEOUT)
        cause = caught.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert cause.text.startswith("Traceback (most recent call last):")
        assert f"json{os.sep}decoder.py" in cause.text
        assert "json.decoder.JSONDecodeError: Expecting property name" in cause.text
        assert cause.text in str(cause)

        with pytest.raises(WrappedError, match="could not read the number") as wrapped:
            runner.submit(raise_chained).result(TIMEOUT)
        assert isinstance(wrapped.value.__cause__, RemoteTraceback)
        text = wrapped.value.__cause__.text
        assert "ValueError: invalid literal for int() with base 10: 'not a number'" in text
        assert "The above exception was the direct cause of the following exception" in text
        assert "in raise_chained" in text

        with pytest.raises(WrappedError, match="from a coroutine") as from_coroutine:
            runner.submit(araise_wrapped, {"message": "from a coroutine"}).result(TIMEOUT)
        assert isinstance(from_coroutine.value.__cause__, RemoteTraceback)
        assert "in araise_wrapped" in from_coroutine.value.__cause__.text


@pytest.mark.parametrize(
    "error",
    [
        UpstreamFailedError("below", "above", "crashed"),
        WorkerCrashedError("its worker died", 1234, -9, "the tail"),
        WorkerStartError("it could not start", 1234, 1, "the tail"),
        SerializationError("the result cannot be sent", "result"),
        RemoteError("Odd", "cannot travel as itself"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_asyncflow_errors_keep_their_notes_and_attributes_when_they_travel(
    error: Exception,
) -> None:
    # One that a body gets (allow_failure) and raises again travels to a worker and back: the
    # note naming the task that raised it first must come back with it.
    vars(error)["__notes__"] = ["raised by task 'first'"]  # (what add_note does, from 3.11)
    error.extra = "kept"  # type: ignore[attr-defined]
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(error))
        assert type(back) is type(error)
        assert str(back) == str(error)
        assert vars(back)["__notes__"] == ["raised by task 'first'"]
        assert vars(back) == vars(error)


# -- row 10: SystemExit and KeyboardInterrupt in a body -----------------------------------------
@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_system_exit_or_keyboard_interrupt_in_a_body_crashes_the_run_and_replaces_the_worker(
    kind: str,
) -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(pid).result(TIMEOUT)
        fut = runner.submit(leave, {"kind": kind})
        err = fut.exception(TIMEOUT)
        assert isinstance(err, TaskCrashedError)
        assert fut.state.is_crashed()
        assert f"task 'leave' crashed: its body raised {kind}" in str(err)
        assert str(before) in str(err)
        assert isinstance(err.__cause__, RemoteTraceback)
        assert kind in err.__cause__.text
        after = runner.submit(pid).result(TIMEOUT)
        assert after != before  # a fresh worker
    assert not psutil.pid_exists(before)


# -- row 12: a worker that cannot start --------------------------------------------------------
def test_a_worker_that_cannot_start_fails_runs_with_its_stderr_and_starts_stop(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    starts = tmp_path / "starts"
    runner = ProcessPoolTaskRunner(
        max_workers=1, initializer=refuse_to_start, initargs=(str(starts),)
    )
    with runner:
        futures = [runner.submit(double, {"x": i}) for i in range(8)]
        errors = [f.exception(TIMEOUT) for f in futures]
    first = errors[0]
    assert isinstance(first, WorkerCrashedError)
    assert "task 'double'" in str(first)
    assert "RuntimeError: no database here" in first.stderr_tail
    for err in errors:
        assert isinstance(err, TaskCrashedError)
        assert "no database here" in str(err)
    assert all(f.state.is_crashed() for f in futures)
    # Queued runs fail fast after a few failed starts instead of starting workers forever.
    attempts = len(starts.read_text().split())
    assert attempts < len(futures)
    # Each failed start's traceback is shown here once (Python does not print it again).
    assert capfd.readouterr().err.count("RuntimeError: no database here") == attempts


def refuse_while(down: str, starts: str) -> None:
    """An initializer that records the attempt, then fails while the file ``down`` exists."""
    with open(starts, "a") as f:
        f.write(f"{os.getpid()}\n")
    if os.path.exists(down):
        raise RuntimeError("the database is down")


def refusing_pool(tmp_path: Path, max_workers: int) -> tuple[ProcessPoolTaskRunner, Path, Path]:
    """A runner whose workers' initializer fails while the file ``down`` (made here) exists,
    each attempt recorded in the file ``starts``; and both files."""
    down, starts = tmp_path / "down", tmp_path / "starts"
    down.touch()
    runner = ProcessPoolTaskRunner(
        max_workers=max_workers, initializer=refuse_while, initargs=(str(down), str(starts))
    )
    return runner, down, starts


def test_a_pool_whose_workers_kept_failing_to_start_tries_again_after_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, down, starts = refusing_pool(tmp_path, 1)
    with runner:
        for _ in range(3):  # three failed starts in a row
            err = runner.submit(double, {"x": 1}).exception(TIMEOUT)
            assert isinstance(err, WorkerStartError)
            assert "the database is down" in err.stderr_tail
        paused = runner.submit(double, {"x": 1}).exception(TIMEOUT)
        assert isinstance(paused, WorkerStartError)
        assert "keep failing to start (3 in a row;" in str(paused)
        assert "another start is tried" in str(paused)
        assert len(starts.read_text().split()) == 3  # no worker was started for it
        down.unlink()  # the cause passed
        monkeypatch.setattr(asyncflow._processes, "_START_PAUSE", 0.0)  # (and the pause)
        assert runner.submit(double, {"x": 2}).result(TIMEOUT) == 4
        assert runner.submit(double, {"x": 3}).result(TIMEOUT) == 6


def test_runs_that_need_a_worker_while_the_start_after_the_pause_is_tried_wait_for_it(
    tmp_path: Path,
) -> None:
    runner, down, _ = refusing_pool(tmp_path, 2)
    with runner:
        for _ in range(3):
            assert isinstance(runner.submit(double, {"x": 1}).exception(TIMEOUT), WorkerStartError)
        down.unlink()
        workers: Any = runner._scheduler.backend  # type: ignore[union-attr]

        async def pause_over() -> None:  # (on its loop: as if the pause had passed)
            workers._last_failed_start -= asyncflow._processes._START_PAUSE

        runner._loop_thread.run(pause_over()).result(TIMEOUT)  # type: ignore[union-attr]
        # Two runs need a worker at once: one start is tried, the other run waits for it,
        # then starts its own.
        assert runner.map(double, {"x": [1, 2]}).result(TIMEOUT) == [2, 4]


def start_logging_daemon(go: str, out: str) -> int:
    """A body that starts a daemon (a session of its own, the worker's stderr kept) that logs
    a line once told to, then says so in a file."""
    daemon = subprocess.Popen(
        ["/bin/sh", "-c", f'read go < {go}; echo "a log line" >&2; echo logged > {out}'],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    return daemon.pid


def test_a_daemon_keeps_its_stderr_while_the_runner_lives_after_its_worker_is_gone(
    tmp_path: Path,
) -> None:
    go, out = tmp_path / "go", tmp_path / "out"
    os.mkfifo(go)
    with ProcessPoolTaskRunner(max_workers=1, max_tasks_per_worker=1) as runner:
        daemon = psutil.Process(
            runner.submit(start_logging_daemon, {"go": str(go), "out": str(out)}).result(TIMEOUT)
        )
        assert runner.submit(pid).result(TIMEOUT) != daemon.ppid()  # (a fresh worker)
        workers: Any = runner._scheduler.backend  # type: ignore[union-attr]

        async def drains_over() -> None:  # (both workers were retired: their stderr tasks end)
            while workers._drains:
                await asyncio.wait(set(workers._drains))

        runner._loop_thread.run(drains_over()).result(TIMEOUT)  # type: ignore[union-attr]
        go.write_text("go\n")  # the daemon logs to the stderr it kept, then writes its file
        daemon.wait(TIMEOUT)
    assert out.read_text() == "logged\n"  # (a closed pipe would have killed it: SIGPIPE)


class NeverExits:
    """Stands for a worker process that does not exit (for its stderr task alone)."""

    pid = 2**22 + 12345  # (no such process group: killing it fails quietly)
    returncode = None

    async def wait(self) -> None:
        await asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("how", ["cancelled-at-once", "loop-closed"])
def test_a_worker_s_stderr_task_torn_down_with_its_loop_closes_its_pipe(how: str) -> None:
    read_end, write_end = os.pipe()
    loop = asyncio.new_event_loop()
    worker = asyncflow._processes._Worker(NeverExits(), loop)  # type: ignore[arg-type]
    worker.stderr_fd = read_end
    try:
        task = loop.create_task(worker.drain_stderr(set()))
        task.add_done_callback(worker.drain_ended)
        if how == "cancelled-at-once":  # (before its first step)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
            loop.run_until_complete(asyncio.sleep(0))  # (its done-callbacks)
        else:  # its first step ran; the loop is closed under it, and the task dropped
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
            del task
            gc.collect()
    finally:
        loop.close()
        os.close(write_end)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(read_end)


def start_daemon() -> int:
    """A body that starts a process of its own session, which keeps the worker's stderr."""
    daemon = subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.pause()"],  # (until it is killed)
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    return daemon.pid


def test_a_daemon_that_keeps_a_worker_s_stderr_does_not_hold_the_runner_s_exit() -> None:
    fired = threading.Event()

    def end_daemon() -> None:  # (if the exit waited for the daemon: it ends it, and the exit)
        fired.set()
        os.kill(daemon, signal.SIGKILL)

    with ProcessPoolTaskRunner(max_workers=1) as runner:
        daemon = runner.submit(start_daemon).result(TIMEOUT)
        stop = threading.Timer(TIMEOUT, end_daemon)
        stop.start()
    stop.cancel()
    stop.join()
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon, signal.SIGKILL)
    assert not fired.is_set(), "the runner's exit waited for the daemon"


# -- row 16: timeouts and cancellation kill the worker's process group --------------------------
@pytest.mark.parametrize("stubborn", [False, True], ids=["terminated", "killed"])
def test_a_timeout_kills_the_worker_and_its_children_and_a_fresh_worker_takes_over(
    hub: Hub, stubborn: bool
) -> None:
    slow = task(timeout=0.5)(spawn_child_and_wait)
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        runner.submit(pid).result(TIMEOUT)  # a warm worker: the body starts at once
        fut = runner.submit(slow, {"hub": hub.address, "label": "slow", "stubborn": stubborn})
        hub.arrivals(1)
        worker, child_pid = hub.numbers["slow"]
        child = psutil.Process(child_pid)
        try:
            with pytest.raises(
                TaskTimeoutError, match=re.escape("'spawn_child_and_wait' timed out after 0.5 s")
            ):
                fut.result(TIMEOUT)
            assert fut.state.is_failed()
            assert not still_running_after([child], ORPHAN_DEADLINE), (
                "the body's child process outlived the timeout"
            )
            assert runner.submit(pid).result(TIMEOUT) != worker
        finally:
            kill_quietly(child)
    assert not psutil.pid_exists(worker)


def test_cancelling_a_running_body_kills_its_worker_and_children(hub: Hub) -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        fut = runner.submit(
            spawn_child_and_wait, {"hub": hub.address, "label": "running", "stubborn": False}
        )
        dependent = runner.submit(double, {"x": fut})
        hub.arrivals(1)
        worker, child_pid = hub.numbers["running"]
        child = psutil.Process(child_pid)
        try:
            assert fut.cancel()
            assert fut.cancelled()
            with pytest.raises(TaskCancelledError):
                fut.result(TIMEOUT)
            dependent.wait(TIMEOUT)
            assert dependent.state.is_cancelled()
            assert not still_running_after([child], ORPHAN_DEADLINE), (
                "the body's child process outlived the cancel"
            )
            assert runner.submit(pid).result(TIMEOUT) != worker
        finally:
            kill_quietly(child)
    assert not psutil.pid_exists(worker)


def test_a_timeout_counts_from_the_body_start_not_from_the_worker_start(hub: Hub) -> None:
    # The initializer holds every new worker at the hub until the test says the word.
    runner = ProcessPoolTaskRunner(
        max_workers=1, initializer=gated, initargs=(hub.address, "starting")
    )
    quick = task(timeout=0.3)(double)
    with runner, hub:
        fut = runner.submit(quick, {"x": 21})
        hub.arrivals(1)
        fut.wait(0.6)  # twice the timeout: a deadline running during the start would fire
        assert not fut.done(), f"timed out while its worker was starting: {fut.exception()!r}"
        hub.release("starting")
        assert fut.result(TIMEOUT) == 42


class LoadsAtTheWord:
    """A task function whose loading in the worker waits for the hub's word (as one whose
    module takes long to import would)."""

    def __init__(self, hub: Address) -> None:
        self.hub = hub

    def __call__(self, x: int) -> int:
        return 2 * x

    def __reduce__(self) -> tuple[Any, tuple[Address]]:
        return (loaded_at_the_word, (self.hub,))


def loaded_at_the_word(hub: Address) -> LoadsAtTheWord:
    gated(hub, "loading")
    return LoadsAtTheWord(hub)


def test_a_timeout_does_not_count_while_the_worker_loads_the_function(hub: Hub) -> None:
    # Loading a task's function may import modules (one using asyncflow's run context imports
    # asyncflow): that is not the body's time.
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        assert runner.submit(double, {"x": 1}).result(TIMEOUT) == 2  # a warm worker
        fut = runner.submit(task(timeout=0.3)(LoadsAtTheWord(hub.address)), {"x": 21})
        hub.arrivals(1)  # the worker loads the function, and waits for the word
        fut.wait(0.6)  # twice the timeout: a deadline running meanwhile would fire
        assert not fut.done(), f"timed out while its function loaded: {fut.exception()!r}"
        hub.release("loading")
        assert fut.result(TIMEOUT) == 42


class ExitsWhenLoadedInTheWorker:
    """A task function whose loading in a worker raises SystemExit."""

    def __call__(self, x: int) -> int:
        return x

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (exit_if_in_a_worker, ())


def exit_if_in_a_worker() -> ExitsWhenLoadedInTheWorker:
    if os.environ.get("ASYNCFLOW_PROCESS_WORKER") == "1":
        raise SystemExit(3)
    return ExitsWhenLoadedInTheWorker()


def test_a_function_that_raises_system_exit_as_the_worker_loads_it_fails_its_runs() -> None:
    # (A serialization failure, not a crash: the worker serves on, and no restart storm.)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(pid).result(TIMEOUT)
        err = runner.submit(ExitsWhenLoadedInTheWorker(), {"x": 1}).exception(TIMEOUT)
        assert isinstance(err, SerializationError), err
        assert "its function cannot be loaded in the worker (SystemExit: 3)" in str(err)
        assert runner.submit(pid).result(TIMEOUT) == before  # the same worker


def test_a_function_or_arguments_loading_past_the_limit_time_out(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The timeout counts from the body's start; a load that hangs is stopped all the same,
    # once it took the longer of the timeout and the load limit.
    monkeypatch.setattr(driver_module, "_LOAD_LIMIT", 0.5)
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        fut = runner.submit(task(timeout=0.2)(LoadsAtTheWord(hub.address)), {"x": 21})
        hub.arrivals(1)  # the worker loads the function, and never gets the word
        err = fut.exception(TIMEOUT)
        assert isinstance(err, TaskTimeoutError)
        assert "took more than 0.5 s to load its function and arguments" in str(err)
        assert runner.submit(double, {"x": 2}).result(TIMEOUT) == 4  # a fresh worker


# -- row 28: the parent is killed --------------------------------------------------------------
PARENT_SCRIPT = """
import itertools
import os
import pickle
import socket
import subprocess
import sys

from asyncflow import ProcessPoolTaskRunner


def start_child_and_check_in(hub, label):
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.pause()"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = socket.create_connection(hub, timeout=30)
    conn.sendall(f"{label} {os.getpid()} {child.pid}\\n".encode())
    return conn


def busy(hub, label):
    with start_child_and_check_in(hub, label) as conn:
        conn.recv(1)
    return label


def held(hub, label):
    start_child_and_check_in(hub, label).close()
    # One C call that never lets go of the GIL: no other thread of this worker runs meanwhile.
    return sum(itertools.repeat(1, 10**15))


if __name__ == "__main__":
    hub = (sys.argv[1], int(sys.argv[2]))
    with ProcessPoolTaskRunner(max_workers=4) as runner:
        runs = [runner.submit(busy, {"hub": hub, "label": f"busy{i}"}) for i in range(3)]
        runs.append(runner.submit(held, {"hub": hub, "label": "held"}))
        print(runs[0].result(), flush=True)  # its worker is idle from now on (its child runs on)
        for run in runs[1:]:
            run.result()
"""


def test_a_parent_killed_by_sigkill_takes_its_idle_and_busy_workers_and_their_children_along(
    hub: Hub, tmp_path: Path
) -> None:
    # Busy: waiting on a socket, or in a C call that holds the GIL (then no thread of the
    # worker's own can notice that the parent is gone).
    script = tmp_path / "parent_script.py"
    script.write_text(PARENT_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script), "127.0.0.1", str(hub.address)],
        stdout=subprocess.PIPE,
        env=script_env(),
    )
    left: list[psutil.Process] = []
    roles: dict[int, str] = {}
    try:
        for label in hub.arrivals(4):
            worker, child = hub.numbers[label]
            which = {"busy0": "an idle", "held": "a GIL-holding"}.get(label, "a busy")
            roles[worker] = f"{which} worker (pid {worker})"
            roles[child] = f"the child of {which} worker (pid {child})"
            left += [psutil.Process(worker), psutil.Process(child)]
        hub.release("busy0")
        assert read_line(parent, "that busy0 returned") == "busy0"
        parent.kill()
        assert parent.wait(TIMEOUT) == -signal.SIGKILL
        alive = [roles[p.pid] for p in still_running_after(left, ORPHAN_DEADLINE)]
        assert not alive, f"{ORPHAN_DEADLINE:g} s after the parent died, still running: {alive}"
    finally:
        kill_quietly(*left)
        parent.kill()
        parent.wait(TIMEOUT)
        assert parent.stdout is not None
        parent.stdout.close()


# -- row 30: a clean exit leaves nothing behind ------------------------------------------------
def test_leaving_the_runner_leaves_no_worker_process() -> None:
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with ProcessPoolTaskRunner(max_workers=2) as runner:
        assert runner.map(double, {"x": range(6)}).result(TIMEOUT) == [0, 2, 4, 6, 8, 10]
        assert worker_pids()
    assert worker_pids() == set()  # the runner waited for its workers to exit
    after = {child.pid for child in psutil.Process().children(recursive=True)}
    assert after <= before


def any_child() -> str:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return "none"
    return "some"


def test_a_body_sees_no_process_of_the_runners_and_a_crash_leaves_no_zombie() -> None:
    # Each worker has a watcher (it ends the worker's group if this process dies, see row 28):
    # a child of this process, reaped with its worker; the worker's bodies never see it.
    before = {child.pid for child in psutil.Process().children()}
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(any_child).result(TIMEOUT) == "none"
        crash = runner.submit(exit_now, {"code": 3, "note": "gone"})
        assert isinstance(crash.exception(TIMEOUT), WorkerCrashedError)
        assert runner.submit(any_child).result(TIMEOUT) == "none"
    left = [
        (child.pid, child.name(), child.status())
        for child in psutil.Process().children()
        if child.pid not in before
    ]
    assert left == []  # (a zombie too: none is left for this process to reap)


def test_a_process_a_body_left_behind_ends_with_its_worker_when_the_runner_exits() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        child = psutil.Process(runner.submit(leave_child_behind).result(TIMEOUT))
        assert child.is_running()
    try:
        assert not still_running_after([child], ORPHAN_DEADLINE), (
            f"{ORPHAN_DEADLINE:g} s after the runner exited, a process its worker started runs on"
        )
    finally:
        kill_quietly(child)


def test_an_idle_worker_killed_from_outside_has_its_group_ended_at_once() -> None:
    # Before its number can become another process's, with no use of the pool meanwhile: what
    # it left in its group is killed, and its watcher (row 28), which would kill the group of
    # that number if this process died, stops.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        child = psutil.Process(runner.submit(leave_child_behind).result(TIMEOUT))
        worker = child.ppid()
        watchers = [
            p for p in psutil.Process().children() if p.cmdline()[-1].endswith(f"-KILL -{worker}")
        ]
        assert len(watchers) == 1, psutil.Process().children()
        try:
            os.kill(worker, signal.SIGKILL)  # as the OOM killer would, while it is idle
            left = [p.pid for p in still_running_after([child, *watchers], ORPHAN_DEADLINE)]
            assert not left, f"{ORPHAN_DEADLINE:g} s after the idle worker died: {left} run on"
        finally:
            kill_quietly(child)


def _same_pipe(fd: int, pipe: os.stat_result) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (pipe.st_dev, pipe.st_ino)


def _child_holds(write_end: int, pipe: os.stat_result) -> bytes:
    """Fork now; the child says whether descriptor ``write_end`` is still the end of ``pipe``
    there: b"held" or b"none"."""
    answer, tell = os.pipe()
    child = os.fork()
    if child == 0:  # (only system calls here, then out)
        os.write(tell, b"held" if _same_pipe(write_end, pipe) else b"none")
        os._exit(0)
    os.close(tell)
    try:
        return os.read(answer, 4)
    finally:
        os.close(answer)
        os.waitpid(child, 0)


def _watch_a_group(
    popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    meanwhile: Callable[[], object] = lambda: None,
) -> None:
    """Start a watcher for a process group of its own (a ``sleep``), then stop both."""
    group = popen(["sleep", "60"], start_new_session=True)
    try:
        watcher = watcher_module.Watcher.start(group.pid)
        meanwhile()
        assert watcher is not None
        watcher.stop_now()
    finally:
        group.kill()
        group.wait()


def test_a_child_forked_from_the_parent_holds_no_watcher_pipe() -> None:
    # A watcher's read ends when every holder of its pipe's writing end is gone. A child forked
    # without an exec (multiprocessing's fork start method) would hold it too: the watcher
    # would not act when this process dies while that child lives.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(pid).result(TIMEOUT) > 0
        backend = runner._scheduler.backend  # type: ignore[union-attr]
        assert isinstance(backend, ProcessWorkers)
        (worker,) = backend._workers
        assert worker.watcher is not None
        hangup = worker.watcher._hangup
        pipe = os.fstat(hangup)
        assert _child_holds(hangup, pipe) == b"none"
        assert os.fstat(hangup).st_ino == pipe.st_ino  # (this process keeps its own)


def test_a_child_forked_while_a_watcher_starts_holds_no_watcher_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Starting the watcher's shell lets go of the interpreter lock: another thread may fork
    # meanwhile. That child must not keep the pipe's writing end either.
    held: list[bytes] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        read_end = kwargs["stdin"]
        pipe = os.fstat(read_end)
        (write_end,) = [
            fd for fd in map(int, os.listdir("/dev/fd")) if fd != read_end and _same_pipe(fd, pipe)
        ]
        held.append(_child_holds(write_end, pipe))  # (as another thread's fork would, now)
        return real(*args, **kwargs)

    proxy = types.SimpleNamespace(
        Popen=popen, DEVNULL=subprocess.DEVNULL, TimeoutExpired=subprocess.TimeoutExpired
    )
    monkeypatch.setattr(watcher_module, "subprocess", proxy)
    _watch_a_group(real)
    assert held == [b"none"]


class _AskedLock:
    """Stands in for a lock, around it: ``asked`` is set when the thread named ``by`` asks
    for it."""

    def __init__(self, real: Any, by: str) -> None:
        self.real = real
        self.by = by
        self.asked = threading.Event()

    def acquire(self) -> bool:
        if threading.current_thread().name == self.by:
            self.asked.set()
        return bool(self.real.acquire())

    def release(self) -> None:
        self.real.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_fork_while_a_watcher_pipe_is_made_waits_until_its_end_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Making the pipe lets go of the interpreter lock: another thread may fork then, before
    # the writing end is among those a forked child closes. Such a fork waits for it.
    real_pipe = os.pipe
    lock = _AskedLock(watcher_module._forking, "forker")
    monkeypatch.setattr(watcher_module, "_forking", lock)
    made: list[tuple[int, os.stat_result]] = []
    held: list[bytes] = []

    def fork() -> None:  # another thread of the program (multiprocessing's fork, say)
        held.append(_child_holds(*made[0]))

    forker = threading.Thread(target=fork, name="forker")

    def pipe() -> tuple[int, int]:
        ends = real_pipe()
        made.append((ends[1], os.fstat(ends[1])))
        forker.start()  # it forks now, while this writing end is not yet known
        assert lock.asked.wait(TIMEOUT)  # its fork waits for the lock this thread holds
        return ends

    monkeypatch.setattr(watcher_module, "os", types.SimpleNamespace(pipe=pipe, close=os.close))
    _watch_a_group(meanwhile=lambda: forker.join(TIMEOUT))
    assert held == [b"none"]


@pytest.mark.parametrize("failing", ["pipe", "Popen"])
def test_a_watcher_that_cannot_start_leaves_the_worker_to_watch_alone(
    monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise OSError(24, "Too many open files")

    # (Only the watcher's module sees the failure: the worker's own spawn goes on.)
    if failing == "pipe":
        monkeypatch.setattr(
            watcher_module, "os", types.SimpleNamespace(pipe=refuse, close=os.close)
        )
    else:
        proxy = types.SimpleNamespace(Popen=refuse, DEVNULL=subprocess.DEVNULL)
        monkeypatch.setattr(watcher_module, "subprocess", proxy)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.map(double, {"x": range(3)}).result(TIMEOUT) == [0, 2, 4]
        assert not [p for p in psutil.Process().children() if p.name() == "sh"]


TEARDOWN_SCRIPT = """
import asyncio
import os

import psutil

from asyncflow import ProcessPoolTaskRunner


def interrupt():
    if os.environ.get("ASYNCFLOW_PROCESS_WORKER") != "1":
        raise KeyboardInterrupt("raised while the parent loads a result")
    return Interrupting()


class Interrupting:
    def __reduce__(self):
        return (interrupt, ())


def give(i):
    return Interrupting() if i == 1500 else i


async def main():
    async with ProcessPoolTaskRunner(max_workers=2) as runner:
        await runner.map(give, {"i": [-1, -2]})  # both workers start, and calls are cheap
        await runner.map(give, {"i": range(2000)})  # (sent in batches)


try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted", flush=True)
_, alive = psutil.wait_procs(psutil.Process().children(), timeout=5)
print(sorted(p.name() for p in alive), flush=True)
"""


def test_a_loop_torn_down_under_a_runner_leaves_no_worker_and_no_watcher(tmp_path: Path) -> None:
    # A KeyboardInterrupt on the main thread goes on (it may be the user's Ctrl-C): here one
    # comes out of loading a result, escapes the loop, and asyncio.run tears it down. The
    # tasks that would end the worker and its watcher are cancelled: they end them at once.
    done = run_script(tmp_path / "teardown.py", TEARDOWN_SCRIPT, timeout=60)
    assert done.stdout.splitlines() == ["interrupted", "[]"], done.stdout + done.stderr


LEAVER_SCRIPT = """
import subprocess
import sys

from asyncflow import ProcessPoolTaskRunner


def leave_child():
    # The child inherits the worker's stdout and stderr, as subprocesses do by default.
    return subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"]).pid


if __name__ == "__main__":
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        print(runner.submit(leave_child).result(), flush=True)
    print("exited", flush=True)
"""


def test_a_process_left_behind_holding_the_workers_stderr_neither_blocks_exit_nor_survives(
    tmp_path: Path,
) -> None:
    script = tmp_path / "leaver_script.py"
    script.write_text(LEAVER_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, env=script_env()
    )
    left: list[psutil.Process] = []
    try:
        left.append(psutil.Process(int(read_line(parent, "the pid of the child"))))
        assert read_line(parent, "that the runner exited") == "exited"
        assert parent.wait(TIMEOUT) == 0
        assert not still_running_after(left, ORPHAN_DEADLINE), (
            f"{ORPHAN_DEADLINE:g} s after the runner exited, a process its worker started runs on"
        )
    finally:
        kill_quietly(*left)
        parent.kill()
        parent.wait(TIMEOUT)
        assert parent.stdout is not None
        parent.stdout.close()


# -- the rest of the promise -------------------------------------------------------------------
def test_the_initializer_runs_once_in_each_worker_before_its_tasks(
    hub: Hub, tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    runner = ProcessPoolTaskRunner(
        max_workers=2, initializer=note_start, initargs=(str(starts), "ready")
    )
    with runner, hub:
        both = [
            runner.submit(gated, {"hub": hub.address, "label": f"w{i}", "value": i}) for i in (0, 1)
        ]
        hub.release(*hub.arrivals(2))  # both bodies at once: two workers
        assert [f.result(TIMEOUT) for f in both] == [0, 1]
        seen = runner.map(pid_and_flag, {"i": range(6)}).result(TIMEOUT)
    started = [int(line) for line in starts.read_text().split()]
    assert sorted(started) == sorted({hub.pid("w0"), hub.pid("w1")})  # once per worker
    assert {p for p, _ in seen} <= set(started)
    assert [flag for _, flag in seen] == ["ready"] * 6


def test_max_workers_bounds_the_bodies_running_at_once(hub: Hub) -> None:
    with ProcessPoolTaskRunner(max_workers=2) as runner, hub:
        futures = [
            runner.submit(gated, {"hub": hub.address, "label": f"b{i}", "value": i})
            for i in range(5)
        ]
        running = hub.arrivals(2)
        for _ in range(3):
            stats = runner.statistics()
            assert stats.running == 2
            assert len(worker_pids()) == 2
            hub.release(running.pop(0))
            running += hub.arrivals(1)  # a finished body's worker takes the next one
        assert runner.statistics().queued == 0
        hub.release(*running)
        assert [f.result(TIMEOUT) for f in futures] == [0, 1, 2, 3, 4]
        assert len(worker_pids()) == 2


def test_coroutine_bodies_run_in_the_worker_on_a_loop_of_their_own() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        worker = runner.submit(apid).result(TIMEOUT)
        assert worker != os.getpid()
        assert worker in worker_pids()
        assert runner.submit(apid).result(TIMEOUT) == worker  # the worker runs on


def test_a_body_writing_to_stdout_does_not_disturb_the_replies(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(chatty, {"text": "hello"}).result(TIMEOUT) == "HELLO"
        assert runner.submit(chatty, {"text": "again"}).result(TIMEOUT) == "AGAIN"
        err = runner.submit(exit_now, {"code": 3, "note": "last words"}).exception(TIMEOUT)
    assert isinstance(err, WorkerCrashedError)
    assert "last words" in err.stderr_tail  # what a body writes to stderr, for the crash
    out = capfd.readouterr().out
    for text in ("hello", "again"):  # print, sys.__stdout__, sys.stdout, a child process
        assert out.count(f"{text}\n") == 4, out


def speak(n: int) -> int:
    print(f"said {n}")
    sys.stderr.write(f"half of line {n}, ")  # a line in two writes, shown whole
    sys.stderr.flush()
    sys.stderr.write("and the rest\n")
    return n


def trail(text: str) -> None:
    sys.stderr.write(text)  # no end of line: shown once its worker has ended


def test_a_body_s_output_shows_here_its_stdout_on_stdout_its_stderr_on_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with ProcessPoolTaskRunner(max_workers=2) as runner:
        assert runner.map(speak, {"n": range(6)}).result(TIMEOUT) == list(range(6))
        runner.submit(exit_now, {"code": 4, "note": "going"}).exception(TIMEOUT)
    out, err = capfd.readouterr()
    assert sorted(line for line in out.splitlines() if line.startswith("said")) == [
        f"said {n}" for n in range(6)
    ]
    lines = err.splitlines()
    for n in range(6):
        assert f"half of line {n}, and the rest" in lines, err  # (not mixed with another's)
    assert "going" in lines
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        runner.submit(trail, {"text": "unended"}).result(TIMEOUT)
    assert capfd.readouterr().err == "unended"


class BlockedStderr(io.StringIO):
    """A stderr nobody reads: a write waits until ``unblock()``."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        if not self.gate.wait(TIMEOUT):
            raise TimeoutError("never unblocked")
        return super().write(text)


def say(text: str) -> int:
    print(text, file=sys.stderr)
    return len(text)


def test_a_stderr_nobody_reads_does_not_stop_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = BlockedStderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(say, {"text": "first"}).result(TIMEOUT) == 5
        assert stderr.entered.wait(TIMEOUT)  # showing it waits for the stderr ...
        futures = [runner.submit(say, {"text": f"more {i}"}) for i in range(3)]
        assert [f.result(TIMEOUT) for f in futures] == [6, 6, 6]  # ... the runs do not
        stderr.gate.set()
    assert stderr.getvalue().splitlines() == ["first", "more 0", "more 1", "more 2"]


def test_a_long_line_is_shown_in_pieces_without_cutting_a_character() -> None:
    lines = LineSplitter()
    assert lines.feed(b"caf\xc3") == ""  # half of a character, and no end of line yet
    assert lines.feed(b"\xa9 ok\nnext") == "caf\u00e9 ok\n"
    assert lines.feed(b"", end=True) == "next"
    long = ("\u00e9" * 3000).encode()  # 6000 bytes, 3000 characters
    shown = lines.feed(long[:4097]) + lines.feed(long[4097:]) + lines.feed(b"\n", end=True)
    assert shown == "\u00e9" * 3000 + "\n"
    assert "\ufffd" not in shown
    # Much at once: the whole lines go, a short unfinished one waits for its end (another
    # worker's line shown meanwhile does not land in the middle of it).
    busy = ("x" * 99 + "\n") * 60 + "progress: 5"
    assert lines.feed(busy.encode()) == ("x" * 99 + "\n") * 60
    assert lines.feed(b"0%\n") == "progress: 50%\n"
    # A progress bar redraws its line: each redraw is shown as it comes.
    assert lines.feed(b"[##  ] 40%\r[### ] 6") == "[##  ] 40%\r"
    assert lines.feed(b"0%\r") == "[### ] 60%\r"


def print_here(text: str) -> str:
    print(text)
    return text


def test_a_parent_started_without_stdout_keeps_bodies_out_of_its_descriptor_1(
    tmp_path: Path,
) -> None:
    # Descriptor 1 is then the first file it opened; a body's print must not land there.
    taken = tmp_path / "taken"
    script = (
        "import sys\n"
        f"taken = open({str(taken)!r}, 'w')\n"
        "assert taken.fileno() == 1, taken.fileno()\n"
        "from asyncflow import ProcessPoolTaskRunner\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_processes import print_here\n"
        "with ProcessPoolTaskRunner(max_workers=1) as runner:\n"
        "    runner.submit(print_here, {'text': 'from the body'}).result(30)\n"
        "taken.close()\n"
    )
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -c "$1" >&-', sys.executable, script],
        capture_output=False,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert taken.read_text() == ""
    assert "from the body" in done.stderr  # (shown with the worker's stderr instead)


def exit_with_a_message() -> None:
    sys.exit("no configuration found")


def test_a_worker_start_that_exits_says_why_once() -> None:
    with ProcessPoolTaskRunner(max_workers=1, initializer=exit_with_a_message) as runner:
        err = runner.submit(double, {"x": 1}).exception(TIMEOUT)
    assert isinstance(err, WorkerCrashedError)
    assert err.stderr_tail.count("no configuration found") == 1
    assert err.exitcode == 1


def test_submitting_from_inside_a_worker_is_a_clear_error() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        fut = runner.submit(submit_inside)
        with pytest.raises(RuntimeError, match="not available inside a process worker"):
            fut.result(TIMEOUT)


def test_an_initializer_that_cannot_be_sent_fails_at_entry_naming_it() -> None:
    runner = ProcessPoolTaskRunner(max_workers=1, initializer=print, initargs=(threading.Lock(),))
    with pytest.raises(SerializationError, match="initializer or its initargs"), runner:
        pass  # pragma: no cover - entering fails
    # The runner is not left half-started: it can be entered again once fixed.
    with pytest.raises(SerializationError):
        runner.__enter__()


def test_an_idle_worker_exits_after_its_idle_timeout_and_work_goes_on() -> None:
    with ProcessPoolTaskRunner(max_workers=1, idle_timeout=0.2) as runner:
        first = runner.submit(pid).result(TIMEOUT)
        # The idle worker exits on its own: wait on the process itself, not on a clock. (A
        # pidfd becomes readable when it exits, and does not reap it: the runner does that.)
        try:
            fd = os.pidfd_open(first)
        except ProcessLookupError:  # already gone and reaped
            pass
        else:
            try:
                readable, _, _ = select.select([fd], [], [], TIMEOUT)
                assert readable, "the idle worker did not exit"
            finally:
                os.close(fd)
        second = runner.submit(pid).result(TIMEOUT)  # nothing queued is lost: a new worker
        assert second != first


# -- row 11: leaky workers are retired without losing queued work ------------------------------
def test_a_worker_is_replaced_after_max_tasks_per_worker_calls_and_no_run_is_lost() -> None:
    with ProcessPoolTaskRunner(max_workers=1, max_tasks_per_worker=2) as runner:
        pids = runner.map(pid_and_flag, {"i": range(7)}).result(TIMEOUT)
    served: dict[int, int] = {}
    for worker, _ in pids:
        served[worker] = served.get(worker, 0) + 1
    assert len(pids) == 7  # every queued run ran
    assert max(served.values()) <= 2
    assert len(served) == 4  # 2 + 2 + 2 + 1 calls, each group on a fresh worker


def test_max_tasks_per_worker_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="max_tasks_per_worker"):
        ProcessPoolTaskRunner(max_tasks_per_worker=0)
    with pytest.raises(TypeError, match="max_tasks_per_worker"):
        ProcessPoolTaskRunner(max_tasks_per_worker="3")  # type: ignore[arg-type]


# -- row 39: secrets in the environment need not reach workers ----------------------------------
def environment(*names: str) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def test_worker_env_as_an_allow_list_passes_only_the_names_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNCFLOW_TEST_SECRET", "hunter2")
    monkeypatch.setenv("ASYNCFLOW_TEST_PUBLIC", "visible")
    with ProcessPoolTaskRunner(max_workers=1, worker_env=["ASYNCFLOW_TEST_PUBLIC"]) as runner:
        seen = runner.submit(
            environment, {"names": ["ASYNCFLOW_TEST_SECRET", "ASYNCFLOW_TEST_PUBLIC"]}
        ).result(TIMEOUT)
    assert seen == {"ASYNCFLOW_TEST_SECRET": None, "ASYNCFLOW_TEST_PUBLIC": "visible"}


def test_worker_env_as_a_dict_is_exactly_the_workers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNCFLOW_TEST_SECRET", "hunter2")
    with ProcessPoolTaskRunner(max_workers=1, worker_env={"ONLY_THIS": "1"}) as runner:
        seen = runner.submit(environment, {"names": ["ASYNCFLOW_TEST_SECRET", "ONLY_THIS"]}).result(
            TIMEOUT
        )
    assert seen == {"ASYNCFLOW_TEST_SECRET": None, "ONLY_THIS": "1"}


def test_a_task_of_a_task_sends_only_its_function_to_the_workers() -> None:
    # (Its hooks, which run here, may hold what cannot be pickled: a lock, say.)
    lock = threading.Lock()
    seen: list[bool] = []

    def hook(t: Any, f: Any, state: Any) -> None:
        with lock:
            seen.append(state.is_completed())

    outer = task(task(name="inner", on_completion=[hook])(triple))
    assert outer.fn is triple
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(outer, {"x": 2}).result(TIMEOUT) == 6
    assert seen == [True]


def test_messages_between_parent_and_workers_may_be_4_gib_or_more() -> None:
    # Each message on the pipes is prefixed by its length; in 4 bytes, a map of big blobs sent
    # as one batch (or one argument or result) of 4 GiB or more failed with a bare struct.error.
    import asyncflow._process_worker as worker_module

    size = 2**32 + 5
    headers = (asyncflow._processes._HEADER, worker_module._HEADER)
    assert headers[0].format == headers[1].format
    for header in headers:
        assert header.unpack(header.pack(size)) == (size,)


def test_runners_with_other_worker_envs_differ_and_repr_shows_no_values() -> None:
    prod = ProcessPoolTaskRunner(max_workers=1, worker_env={"DB_URL": "postgres://prod"})
    test = ProcessPoolTaskRunner(max_workers=1, worker_env={"DB_URL": "postgres://test"})
    names = ProcessPoolTaskRunner(max_workers=1, worker_env=["DB_URL"])
    assert prod != test
    assert prod != names
    assert test != names
    assert prod == prod.duplicate()
    assert hash(prod) == hash(prod.duplicate())
    assert names == ProcessPoolTaskRunner(max_workers=1, worker_env=("DB_URL", "DB_URL"))
    # (No names passed on is an empty environment, as an empty dict is.)
    assert ProcessPoolTaskRunner(worker_env=[]) == ProcessPoolTaskRunner(worker_env={})
    assert "('dict', ('DB_URL',))" in repr(prod)
    assert "postgres" not in repr(prod)
    assert "('names', ('DB_URL',))" in repr(names)


def test_a_runner_with_unhashable_initargs_can_be_hashed() -> None:
    runner = ProcessPoolTaskRunner(max_workers=1, initializer=print, initargs=([1, 2],))
    assert hash(runner) == hash(runner.duplicate())
    assert runner == runner.duplicate()
    assert runner != ProcessPoolTaskRunner(max_workers=1, initializer=print, initargs=([1],))
    assert runner in {runner.duplicate()}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("PATH", "worker_env must be a dict of variables or a list of names"),
        ({"A": 1}, "worker_env must map str to str"),
        ([1], "worker_env names must be strings"),
    ],
)
def test_a_bad_worker_env_is_refused_naming_it(bad: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        ProcessPoolTaskRunner(worker_env=bad)


@pytest.fixture(params=["prepared", "queued"])
def batches(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Quick calls go in batches whatever this machine's timing: the time of a task's last call
    (which decides) always counts as cheap, and a batch may take a whole queue. Each test runs
    twice: a map's batches made as it is submitted, and taken from the queue of its runs."""
    monkeypatch.setattr(asyncflow._processes, "_BATCH_COST", 1.0)
    monkeypatch.setattr(asyncflow._processes, "_BATCH_TIME", 1000.0)
    if request.param == "queued":
        monkeypatch.setattr(ProcessWorkers, "_prepared", lambda self, runs: runs)


# -- a batch, a worker's death and a cancel: only the run at fault is touched --------------------
def exit_at(i: int, stop: int) -> int:
    if i == stop:
        raise SystemExit(3)
    return i


@pytest.mark.usefixtures("batches")
def test_a_system_exit_in_a_batch_crashes_only_its_own_run() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(exit_at, {"i": 0, "stop": -1}).result(TIMEOUT) == 0  # cheap: batched
        futures = runner.map(exit_at, {"i": range(1, 300), "stop": unmapped(100)})
        futures.wait(TIMEOUT)
    failed = failed_runs(futures)
    assert failed == [100], f"runs {failed} failed; only run 100 raised SystemExit"
    err = futures[99].exception()
    assert isinstance(err, TaskCrashedError)
    assert not isinstance(err, WorkerCrashedError)  # its own SystemExit, not a dead worker


def exit_hard_at(i: int, stop: int) -> int:
    if i == stop:
        os._exit(7)
    return i


def count_batch_replies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The replies of each batch whose worker held them (a list that fills as batches end)."""
    held: list[int] = []
    send = asyncflow._processes._Worker.send

    async def counting_send(self: Any, message: Any) -> None:
        if isinstance(message, tuple) and len(message) == 7 and message[5] is not None:
            held.append(len(message[4]))
        await send(self, message)

    monkeypatch.setattr(asyncflow._processes._Worker, "send", counting_send)
    return held


@pytest.mark.usefixtures("batches")
def test_a_worker_dying_in_a_batch_blames_only_the_run_that_killed_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The batch's earlier replies were held by the worker, not yet written to the pipe: they
    # still end their runs, and the run after them is the one blamed.
    held = count_batch_replies(monkeypatch)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(exit_hard_at, {"i": 0, "stop": -1}).result(TIMEOUT) == 0
        futures = runner.map(exit_hard_at, {"i": range(1, 300), "stop": unmapped(150)})
        futures.wait(TIMEOUT)
    assert held, "no batch was sent for its worker to hold the replies"
    failed = failed_runs(futures)
    assert failed == [150], f"runs {failed} failed; only run 150 killed its worker"
    err = futures[149].exception()
    assert isinstance(err, WorkerCrashedError)
    assert err.exitcode == 7
    assert [f.result() for f in futures[150:]] == list(range(151, 300))


def big(i: int) -> str:
    return str(i) * 50_000


@pytest.mark.usefixtures("batches")
def test_replies_too_big_to_hold_arrive_whole_and_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    held = count_batch_replies(monkeypatch)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(big, {"i": 0}).result(TIMEOUT) == big(0)
        results = runner.map(big, {"i": range(1, 200)}).result(TIMEOUT)
    assert held
    assert results == [str(i) * 50_000 for i in range(1, 200)]


def total(values: list[int]) -> int:
    return sum(values)


@contextlib.contextmanager
def only_worker_held(runner: ProcessPoolTaskRunner, hub: Hub) -> Iterator[None]:
    """The only worker runs a gated call: what is submitted in the block waits in the queue
    until the block ends (then the gated call returns)."""
    blocker = runner.submit(gated, {"hub": hub.address, "label": "blocker"})
    hub.arrivals(1)
    yield
    hub.release("blocker")
    assert blocker.result(TIMEOUT) == 0


@pytest.mark.usefixtures("batches")
def test_runs_waiting_on_a_batched_map_start_with_its_results(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = count_batch_replies(monkeypatch)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(double, {"x": 1}).result(TIMEOUT) == 2  # cheap: batched from now
        with only_worker_held(runner, hub):
            mapped = runner.map(double, {"x": range(300)})
            each = [runner.submit(double, {"x": f}) for f in mapped[::7]]
            whole = runner.submit(total, {"values": list(mapped)})
        assert [f.result(TIMEOUT) for f in each] == [4 * x for x in range(0, 300, 7)]
        assert whole.result(TIMEOUT) == 2 * sum(range(300))
    assert held, "the map did not go out in batches whose replies the worker held"
    stats = runner.statistics()
    assert (stats.submitted, stats.completed) == (2 + 300 + len(each) + 1, stats.submitted)


def spread(a: int, /, *rest: int, k: int) -> tuple[int, tuple[int, ...], int]:
    return a, rest, k


@pytest.mark.usefixtures("batches")
def test_a_batched_map_passes_positional_only_and_star_args_as_such(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = count_batch_replies(monkeypatch)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(spread, {"a": 0, "rest": [], "k": 0}).result(TIMEOUT) == (0, (), 0)
        with only_worker_held(runner, hub):
            rest = [[i, -i] for i in range(50)]
            mapped = runner.map(spread, {"a": range(50), "rest": rest, "k": 7})
        assert mapped.result(TIMEOUT) == [(i, (i, -i), 7) for i in range(50)]
    assert held, "the map did not go out in batches"


@pytest.mark.usefixtures("batches")
def test_a_fault_before_a_batch_goes_out_fails_its_runs_instead_of_losing_them(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, batch: list[Any]) -> tuple[Any, list[Any]]:
        raise RuntimeError("no calls today")

    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(double, {"x": 1}).result(TIMEOUT) == 2  # cheap: batched from now
        with only_worker_held(runner, hub):
            mapped = runner.map(double, {"x": range(20)})
            monkeypatch.setattr(ProcessWorkers, "_packed", broken)
        mapped.wait(TIMEOUT)
        for run in mapped:  # (a run left waiting raises TimeoutError here)
            with pytest.raises(RuntimeError, match="no calls today"):
                run.result(0)
        monkeypatch.undo()
        assert runner.map(double, {"x": range(20)}).result(TIMEOUT) == [2 * x for x in range(20)]


def gated_at(i: int, hub: Address, stop: int) -> int:
    if i == stop:
        gated(hub, f"run{i}-in-{os.getpid()}")
    return i


def map_gated_at_run_10(runner: ProcessPoolTaskRunner, hub: Hub) -> Any:
    """``gated_at`` mapped over runs 1 to 99, in batches (a first call shows the task is
    cheap); run 10 waits for the word."""
    assert runner.submit(gated_at, {"i": 0, "hub": hub.address, "stop": -1}).result(TIMEOUT) == 0
    return runner.map(
        gated_at, {"i": range(1, 100), "hub": unmapped(hub.address), "stop": unmapped(10)}
    )


def gated_at_noting(i: int, hub: Address, stop: int, path: str) -> tuple[int, int]:
    with Path(path).open("a") as notes:
        notes.write(f"{i}\n")
    return gated_at(i, hub, stop), os.getpid()


@pytest.mark.usefixtures("batches")
def test_cancelling_a_run_of_a_batch_that_has_not_started_skips_it(
    hub: Hub, tmp_path: Path
) -> None:
    # Run 30 waits in the batch its worker is running (run 10 is under way): cancelling it
    # marks it to be skipped. The worker is not stopped, and no other run is touched.
    notes = tmp_path / "ran"
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        params = {"hub": hub.address, "stop": -1, "path": str(notes)}
        assert runner.submit(gated_at_noting, {"i": 0, **params}).result(TIMEOUT)[0] == 0
        futures = runner.map(
            gated_at_noting,
            {
                "i": range(1, 100),
                **{k: unmapped(v) for k, v in params.items()},
                "stop": unmapped(10),
            },
        )
        (label,) = hub.arrivals(1)  # run 10 is running, in a batch with runs after it
        assert futures[29].cancel()  # run 30: in the same batch, not started
        hub.release(label)
        futures.wait(TIMEOUT)
    assert futures[29].cancelled()
    others = [f.result() for f in futures[:29] + futures[30:]]
    assert [i for i, _ in others] == [i for i in range(1, 100) if i != 30]
    assert len({pid for _, pid in others}) == 1, "the worker was stopped and replaced"
    ran = [int(line) for line in notes.read_text().split()]
    assert sorted(ran) == [i for i in range(100) if i != 30]  # each of the others once
    assert runner.statistics().failed == 0


def noting_gated_at_any(i: int, hub: Address, stops: tuple[int, ...], path: str) -> tuple[int, int]:
    with Path(path).open("a") as notes:
        notes.write(f"{i}\n")
    if i in stops:
        gated(hub, f"run{i}-in-{os.getpid()}")
    return i, os.getpid()


@pytest.mark.usefixtures("batches")
def test_without_a_ledger_a_cancelled_run_of_a_batch_stops_its_worker_when_it_gets_there(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No ledger, so no skip marks: run 30, cancelled while run 10 runs, stops the worker once
    # it is the first run unanswered. (Run 30 waits at a gate: the worker cannot go past it.)
    monkeypatch.setattr(asyncflow._processes, "_ledger", lambda: None)
    notes = tmp_path / "ran"
    noted = task(noting_gated_at_any)  # (kept: the cost the runner learns is the task's)
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        params = {"hub": hub.address, "path": str(notes)}
        assert runner.submit(noted, {"i": 0, "stops": (), **params}).result(TIMEOUT)[0] == 0
        futures = runner.map(
            noted,
            {
                "i": range(1, 100),
                **{k: unmapped(v) for k, v in params.items()},
                "stops": unmapped((10, 30)),
            },
        )
        (label,) = hub.arrivals(1)  # run 10 is running, in a batch with runs after it
        assert futures[29].cancel()  # run 30: in the same batch, not started
        hub.release(label)
        futures.wait(TIMEOUT)
        assert all(f.done() for f in futures), "run 30 was not stopped: the batch is stuck"
    assert futures[29].cancelled()
    others = [f.result() for f in futures[:29] + futures[30:]]
    assert [i for i, _ in others] == [i for i in range(1, 100) if i != 30]
    assert others[28][1] != others[29][1], "run 31 did not go to a fresh worker"
    ran = [int(line) for line in notes.read_text().split()]
    assert ran.count(30) <= 1  # (the worker may be stopped just before it begins run 30)
    assert sorted(i for i in ran if i != 30) == [i for i in range(100) if i != 30]  # once each
    assert runner.statistics().failed == 0


@pytest.mark.usefixtures("batches")
def test_a_worker_stopped_for_another_run_of_its_batch_requeues_the_run_it_ran(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker may move on between the parent's look at the ledger and its kill: then the
    # call it was running did nothing wrong. Forced here by a cancel that always kills.
    def always_kill(self: ProcessWorkers, item: Any) -> bool:
        worker = self._worker_of(item)
        if worker is not None:
            worker.kill()
        return True

    monkeypatch.setattr(ProcessWorkers, "interrupt", always_kill)
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        futures = map_gated_at_run_10(runner, hub)
        (first,) = hub.arrivals(1)  # run 10 is running, in a batch with runs after it
        assert futures[29].cancel()  # run 30: its worker is stopped (while it runs run 10)
        (again,) = hub.arrivals(1)  # run 10 once more, on a fresh worker: not blamed
        assert first.startswith("run10-in-")
        assert again.startswith("run10-in-")
        assert again != first
        hub.release(again)
        futures.wait(TIMEOUT)
    assert futures[29].cancelled()
    others = futures[:29] + futures[30:]
    assert [f.result() for f in others] == [i for i in range(1, 100) if i != 30]
    assert runner.statistics().failed == 0


class SlowToSend:
    """A result whose pickling, in the worker after its body returned, waits for the word."""

    def __init__(self, i: int, hub: Address, gate: bool) -> None:
        self.i, self.hub, self.gate = i, hub, gate

    def __reduce__(self) -> tuple[Any, ...]:
        if self.gate:
            gated(self.hub, f"sending{self.i}")
        return (int, (self.i,))


def slow_to_send_at(i: int, hub: Address, stop: int) -> tuple[SlowToSend, int]:
    return SlowToSend(i, hub, i == stop), os.getpid()


@pytest.mark.usefixtures("batches")
def test_cancelling_a_run_of_a_batch_whose_body_returned_leaves_its_worker_alone(
    hub: Hub,
) -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        params = {"hub": hub.address, "stop": -1}
        assert runner.submit(slow_to_send_at, {"i": 0, **params}).result(TIMEOUT)[0] == 0
        futures = runner.map(
            slow_to_send_at,
            {"i": range(1, 100), "hub": unmapped(hub.address), "stop": unmapped(10)},
        )
        (label,) = hub.arrivals(1)  # run 10's body returned; its result is being sent
        assert futures[9].cancel()
        hub.release(label)
        futures.wait(TIMEOUT)
    assert futures[9].cancelled()
    others = [f.result() for f in futures[:9] + futures[10:]]
    assert [i for i, _ in others] == [i for i in range(1, 100) if i != 10]
    assert len({pid for _, pid in others}) == 1, "the worker was stopped and replaced"


def killed_at(i: int, hub: Address, stop: int, path: str) -> int:
    with Path(path).open("a") as notes:
        notes.write(f"{i}\n")
    if i == stop:
        gated(hub, f"dying{i}")
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    return i


@pytest.mark.usefixtures("batches")
def test_a_cancel_while_a_dead_worker_is_put_to_rest_does_not_clear_its_blame(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The worker died of a SIGKILL it was not sent by the runner; a cancel of another run of
    # its batch arrives while the runner reaps it. The run that died is still blamed, once.
    notes = tmp_path / "ran"
    cancels: list[Any] = []
    reap = asyncflow._processes._Worker.reap

    async def reap_then_cancel(self: Any) -> None:
        await reap(self)
        while cancels:
            cancels.pop().cancel()

    monkeypatch.setattr(asyncflow._processes._Worker, "reap", reap_then_cancel)
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        params = {"hub": hub.address, "path": str(notes)}
        assert runner.submit(killed_at, {"i": 0, "stop": -1, **params}).result(TIMEOUT) == 0
        static = {k: unmapped(v) for k, v in params.items()}
        futures = runner.map(killed_at, {"i": range(1, 100), "stop": unmapped(10), **static})
        (label,) = hub.arrivals(1)  # run 10 is about to die
        cancels.append(futures[29])
        hub.release(label)
        futures.wait(TIMEOUT)
    assert not cancels, "the worker was not reaped"
    assert isinstance(futures[9].exception(), WorkerCrashedError)
    assert futures[29].cancelled()
    assert [int(line) for line in notes.read_text().split()].count(10) == 1


@pytest.mark.usefixtures("batches")
@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "no-ledger"])
def test_cancelling_the_run_a_batch_is_running_stops_only_that_run(
    hub: Hub, ledger: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not ledger:  # a system that cannot make one: the worker is stopped all the same
        monkeypatch.setattr(asyncflow._processes, "_ledger", lambda: None)
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        futures = map_gated_at_run_10(runner, hub)
        hub.arrivals(1)  # run 10 is running, in a batch with runs after it
        assert futures[9].cancel()  # its worker is stopped; the rest of the batch goes on
        futures.wait(TIMEOUT)
        assert all(f.done() for f in futures), "run 10 was not stopped: the batch is stuck"
    assert futures[9].cancelled()
    others = futures[:9] + futures[10:]
    assert [f.result() for f in others] == [i for i in range(1, 100) if i != 10]
    assert runner.statistics().failed == 0


@pytest.mark.usefixtures("batches")
def test_without_a_ledger_a_cancel_ahead_of_the_replies_before_it_still_stops_its_run(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent has not read the replies of runs 1 to 9 yet when run 10, running, is
    # cancelled: it stops the worker once they are in.
    monkeypatch.setattr(asyncflow._processes, "_ledger", lambda: None)
    let_go, armed = threading.Event(), threading.Event()
    receive = asyncflow._processes._Worker.receive

    async def late(self: Any) -> list[bytes]:
        frames = await receive(self)
        if armed.is_set():
            await asyncio.get_running_loop().run_in_executor(None, let_go.wait, TIMEOUT)
        return frames

    monkeypatch.setattr(asyncflow._processes._Worker, "receive", late)
    gated_task = task(gated_at)  # (kept: the cost the runner learns is the task's)
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        params = {"hub": hub.address, "stop": -1}
        assert runner.submit(gated_task, {"i": 0, **params}).result(TIMEOUT) == 0
        armed.set()
        futures = runner.map(
            gated_task, {"i": range(1, 100), "hub": unmapped(hub.address), "stop": unmapped(10)}
        )
        hub.arrivals(1)  # run 10 is running; no reply of the batch was taken in yet
        assert not any(f.done() for f in futures)
        assert futures[9].cancel()
        let_go.set()
        futures.wait(TIMEOUT)
        assert all(f.done() for f in futures), "run 10 was not stopped: the batch is stuck"
    assert futures[9].cancelled()
    others = futures[:9] + futures[10:]
    assert [f.result() for f in others] == [i for i in range(1, 100) if i != 10]


def deaf_then_exiting(i: int, hub: Address, path: str) -> int:
    with Path(path).open("a") as notes:
        notes.write(f"{i}\n")
    if i == 10:  # its worker will ignore the signal that stops it; it waits at a gate
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        gated(hub, f"run{i}")
    elif i == 11:  # it exits on its own before the runner's SIGKILL (after a grace) comes
        os._exit(3)
    return i


@pytest.mark.usefixtures("batches")
def test_a_worker_that_exits_on_its_own_after_it_was_signalled_blames_its_run(
    hub: Hub, tmp_path: Path
) -> None:
    # Run 10 is cancelled while it runs: its worker is sent SIGTERM, which it ignores. The
    # worker moves on to run 11, which exits with code 3, so the worker did not end by the
    # runner's signal: run 11 is blamed (not queued again), and the rest runs elsewhere.
    notes = tmp_path / "ran"
    deaf = task(deaf_then_exiting)  # (kept: the cost the runner learns is the task's)
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        params = {"hub": hub.address, "path": str(notes)}
        assert runner.submit(deaf, {"i": 0, **params}).result(TIMEOUT) == 0
        futures = runner.map(
            deaf, {"i": range(1, 100), **{k: unmapped(v) for k, v in params.items()}}
        )
        (label,) = hub.arrivals(1)  # run 10 is running, SIGTERM blocked
        assert futures[9].cancel()  # its worker is signalled
        hub.release(label)
        futures.wait(TIMEOUT)
    assert futures[9].cancelled()
    error = futures[10].exception()
    assert isinstance(error, WorkerCrashedError)
    assert error.exitcode == 3
    assert [f.result() for f in futures[11:]] == list(range(12, 100))
    ran = [int(line) for line in notes.read_text().split()]
    assert sorted(ran) == list(range(100))  # run 11 once: blamed, not queued again


_RETURNED: list[int] = []  # (in the worker process)


def growing(i: int) -> list[int]:
    _RETURNED.append(i)
    return _RETURNED


@pytest.mark.usefixtures("batches")
def test_each_result_of_a_batch_is_its_value_when_its_body_returned() -> None:
    # Every body returns the same list, which later calls of the batch change: each run
    # still gets the list as it was when its own body returned, as an object of its own.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(growing, {"i": -1}).result(TIMEOUT)[-1] == -1
        results = runner.map(growing, {"i": range(20)}).result(TIMEOUT)
    assert [r[-1] for r in results] == list(range(20))
    assert len({id(r) for r in results}) == 20


def plain_value(i: int) -> Any:
    return [None, True, i, i / 2, 1j * i, str(i), bytes([i % 256])][i % 7]


def value_or_tuple(i: int) -> Any:
    return (i,) if i == 5 else i


def value_or_lambda(i: int) -> Any:
    return (lambda: 5) if i == 5 else i  # (only cloudpickle carries a lambda)


EDGE_VALUES = [
    -0.0,
    float("inf"),
    2**100,
    -(2**70),
    2**63 - 1,  # the ints of 8 bytes, held in the ledger as such ("i"), and just past them
    -(2**63),
    2**63,
    -(2**63) - 1,
    -5,
    "\udc80 é",
    b"\x00\xff",
    True,
    1j,
    None,
]


def edge_value(i: int) -> Any:
    return EDGE_VALUES[i % len(EDGE_VALUES)]


def test_plain_results_come_back_exact_alone_in_a_batch_and_after_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A result of a plain type goes by marshal ("p"): -0.0 keeps its sign, a bool stays a
    # bool, a lone surrogate survives, whether the call went alone, in a batch, or in a
    # batch whose worker then died (its held replies are read from the ledger).
    monkeypatch.setattr(asyncflow._processes, "_BATCH_COST", 1.0)
    monkeypatch.setattr(asyncflow._processes, "_BATCH_TIME", 1000.0)
    n = len(EDGE_VALUES)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        alone = [runner.submit(edge_value, {"i": i}).result(TIMEOUT) for i in range(n)]
        batched = runner.map(edge_value, {"i": range(3 * n)}).result(TIMEOUT)
        crashed = runner.map(edge_then_exit, {"i": range(2 * n), "stop": unmapped(2 * n - 1)})
        crashed.wait(TIMEOUT)
    assert failed_runs(crashed) == [2 * n]  # (numbered from 1)
    held = [f.result() for f in crashed[:-1]]
    for got in (
        alone,
        batched[:n],
        batched[n : 2 * n],
        batched[2 * n :],
        held[:n],
        [*held[n:], None],
    ):
        assert [type(v) for v in got] == [type(v) for v in EDGE_VALUES]
        assert [repr(v) for v in got] == [repr(v) for v in EDGE_VALUES]  # (-0.0, not 0.0)


def edge_then_exit(i: int, stop: int) -> Any:
    if i == stop:
        os._exit(7)
    return edge_value(i)


@pytest.mark.usefixtures("batches")
def test_a_batch_of_plain_results_comes_back_as_one_list_of_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Results of immutable plain types come back as the values themselves, in one message
    # ("v"); one result of another type (a tuple, or a lambda only cloudpickle carries) makes
    # the batch send their pickles ("r").
    kinds: list[str] = []
    receive = asyncflow._processes._Worker.receive

    async def noted(self: Any) -> list[bytes]:
        frames = await receive(self)
        kinds.extend(chr(frame[0]) for frame in frames)
        return frames

    def kinds_of_map(runner: ProcessPoolTaskRunner, fn: Any, expected: str) -> list[Any]:
        # A batch whose replies are sent before it ends (the worker's flusher, every 20 ms,
        # on a slow machine) sends neither: then the map goes again, a few times at most.
        for _ in range(5):
            kinds.clear()
            results = runner.map(fn, {"i": range(30)}).result(TIMEOUT)
            if expected in kinds:
                break
        assert expected in kinds, kinds
        assert ({"v", "r"} - {expected}).isdisjoint(kinds), kinds
        return results

    monkeypatch.setattr(asyncflow._processes._Worker, "receive", noted)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(plain_value, {"i": 0}).result(TIMEOUT) is None  # cheap: batched
        plain = kinds_of_map(runner, plain_value, "v")
        with_tuple = kinds_of_map(runner, value_or_tuple, "r")
        with_lambda = kinds_of_map(runner, value_or_lambda, "r")
    assert plain == [plain_value(i) for i in range(30)]
    assert [type(v) for v in plain[:7]] == [type(None), bool, int, float, complex, str, bytes]
    assert with_tuple == [(5,) if i == 5 else i for i in range(30)]
    assert with_lambda[5]() == 5
    assert with_lambda[:5] + with_lambda[6:] == [i for i in range(30) if i != 5]


def test_a_map_from_the_loop_s_own_thread_while_it_is_not_running_runs_once_it_runs() -> None:
    # Entered from a loop driven by hand: a map made between two turns of it (its batches cut
    # at submit, its calls known to be cheap) is queued, and runs in the next turns.
    loop = asyncio.new_event_loop()
    runner = ProcessPoolTaskRunner(max_workers=2)

    async def results(futures: asyncflow.FutureList[int]) -> list[int]:
        async def awaited() -> list[int]:
            return await futures

        return await asyncio.wait_for(awaited(), TIMEOUT)

    try:
        loop.run_until_complete(runner.__aenter__())
        first = loop.run_until_complete(results(runner.map(double, {"x": range(3)})))
        assert first == [0, 2, 4]  # (and the call is known to be cheap from now on)
        futures = runner.map(double, {"x": range(2000)})
        assert loop.run_until_complete(results(futures)) == [2 * x for x in range(2000)]
    finally:
        loop.run_until_complete(asyncio.wait_for(runner.__aexit__(None, None, None), TIMEOUT))
        loop.close()


def first_waits(x: int, hub: Address) -> int:
    return gated(hub, "first", x) if x == 0 else x


def test_a_cancel_between_two_turns_of_a_hand_driven_loop_skips_a_call_of_a_batch(hub: Hub) -> None:
    # Its call is marked to be skipped, and the look again soon is set on the pool's loop
    # (none runs at the moment of the cancel): the rest of the batch completes, and the
    # runner closes.
    loop = asyncio.new_event_loop()
    runner = ProcessPoolTaskRunner(max_workers=1)

    async def results(futures: asyncflow.FutureList[int]) -> list[Any]:
        await asyncflow.wait_async(futures, TIMEOUT)
        return [f.state.type for f in futures]

    try:
        loop.run_until_complete(runner.__aenter__())
        warm = runner.map(first_waits, {"x": [1, 2], "hub": unmapped(hub.address)})
        assert loop.run_until_complete(results(warm)) == [StateType.COMPLETED] * 2
        futures = runner.map(first_waits, {"x": range(10), "hub": unmapped(hub.address)})
        loop.run_until_complete(asyncio.to_thread(hub.arrivals, 1))  # its batch runs, at 0
        assert futures[8].cancel()  # (the loop is not running now)
        hub.release("first")
        states = loop.run_until_complete(results(futures))
        assert states == [StateType.COMPLETED] * 8 + [StateType.CANCELLED, StateType.COMPLETED]
        assert [f.result() for f in futures[:8]] == list(range(8))
    finally:
        loop.run_until_complete(asyncio.wait_for(runner.__aexit__(None, None, None), TIMEOUT))
        loop.close()


def size(value: str) -> int:
    return len(value)


@pytest.mark.parametrize("runner_class", [ThreadPoolTaskRunner, ProcessPoolTaskRunner])
def test_a_map_lets_go_of_its_arguments_once_its_runs_ended(runner_class: Any) -> None:
    # Its runs hold their index into the map's parameters: once every run ended, a future
    # kept (the list, or one run of it) keeps none of the map's arguments alive.
    values = [str(i) * 1000 for i in range(300)]
    before = list(map(sys.getrefcount, values))
    with runner_class(max_workers=2) as runner:
        assert runner.map(size, {"value": values[:2]}).result(TIMEOUT) == [1000, 1000]
        futures = runner.map(size, {"value": values})
        assert futures.result(TIMEOUT) == [len(v) for v in values]
        kept = futures[0]
        gc.collect()
        assert list(map(sys.getrefcount, values)) == before
        del futures
        gc.collect()
        assert list(map(sys.getrefcount, values)) == before
        assert kept.result() == 1000
        # (A map of no runs never ends: it keeps nothing either.)
        whole = "w" * 1000
        alone = sys.getrefcount(whole)
        empty = runner.map(pair, {"x": [], "y": unmapped(whole)})
        assert empty.result(TIMEOUT) == []
        assert sys.getrefcount(whole) == alone


def int_or_gated(i: int, hub: Address) -> int:
    return gated(hub, "last", i) if i == 20 else i


@pytest.mark.usefixtures("batches")
def test_int_results_held_by_a_batch_reach_the_parent_while_a_later_call_runs(
    hub: Hub,
) -> None:
    # The worker's flusher sends the replies held in the ledger every 20 ms: the ints the
    # batch loop keeps count of by itself come through too, before the batch ends.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(int_or_gated, {"i": 0, "hub": hub.address}).result(TIMEOUT) == 0
        futures = runner.map(int_or_gated, {"i": range(21), "hub": unmapped(hub.address)})
        hub.arrivals(1)  # the last call runs, and waits
        assert [f.result(TIMEOUT) for f in futures[:20]] == list(range(20))
        assert not futures[20].done()
        hub.release("last")
        assert futures[20].result(TIMEOUT) == 20


@asyncflow.task(name="whoami", tags={"etl", "nightly"})
def whoami(i: int) -> tuple[int, str, str, frozenset[str], str, int]:
    ctx = asyncflow.get_run_context()
    return i, ctx.task_name, str(ctx.task_run_id), ctx.tags, ctx.task_key, ctx.attempt


@asyncflow.task(name="whoami_too")
def whoami_too(i: int) -> tuple[int, str, str, frozenset[str], str, int]:
    return whoami.fn(i)


@pytest.mark.usefixtures("batches")
def test_a_body_in_a_worker_sees_its_own_run_context_alone_and_in_a_batch() -> None:
    # One worker runs batches of two tasks in turn: each body sees its own task and run.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        alone = runner.submit(whoami, {"i": -1})
        alone.result(TIMEOUT)
        runner.submit(whoami_too, {"i": -1}).result(TIMEOUT)
        batched = runner.map(whoami, {"i": range(40)})  # (cheap: batched)
        batched.wait(TIMEOUT)
        other = runner.map(whoami_too, {"i": range(40)})
        other.wait(TIMEOUT)
        again = runner.map(whoami, {"i": range(40)})
        again.wait(TIMEOUT)
    key = f"{whoami.fn.__module__}.{whoami.fn.__qualname__}"
    for i, fut in [(-1, alone), *enumerate(batched), *enumerate(again)]:
        assert fut.result() == (i, "whoami", str(fut.task_run_id), {"etl", "nightly"}, key, 1)
    key_too = f"{whoami_too.fn.__module__}.{whoami_too.fn.__qualname__}"
    for i, fut in enumerate(other):
        assert fut.result() == (i, "whoami_too", str(fut.task_run_id), set(), key_too, 1)


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words for it")


def fails_unprintably_at(i: int, stop: int) -> int:
    if i == stop:
        raise UnprintableError
    return i


@pytest.mark.usefixtures("batches")
def test_an_exception_that_cannot_be_printed_fails_only_its_own_run_of_a_batch() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(fails_unprintably_at, {"i": 0, "stop": -1}).result(TIMEOUT) == 0
        futures = runner.map(fails_unprintably_at, {"i": range(30), "stop": unmapped(5)})
        futures.wait(TIMEOUT)
    assert failed_runs(futures) == [6]  # (numbered from 1)
    assert isinstance(futures[5].exception(), UnprintableError)
    assert futures[5].state.message == "UnprintableError: <exception str() failed>"
    assert [f.result() for f in futures if f is not futures[5]] == [i for i in range(30) if i != 5]


def _refuse_to_load_unprintably() -> None:
    raise UnprintableError


class LoadFailsUnprintably:
    """Pickles anywhere; loading it raises an exception that cannot be printed."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_to_load_unprintably, ())


def give_load_fails_unprintably() -> LoadFailsUnprintably:
    return LoadFailsUnprintably()


class UnprintableExit(SystemExit):
    def __str__(self) -> str:
        raise RuntimeError("no words for it")


def exit_unprintably() -> None:
    raise UnprintableExit


@pytest.mark.parametrize("make", [ThreadPoolTaskRunner, ProcessPoolTaskRunner])
def test_failures_that_cannot_be_printed_end_their_runs_with_subscribers_watching(
    make: Callable[..., Any],
) -> None:
    # An exception whose __str__ raises: the run fails with it, its events and state say
    # "<exception str() failed>", the runs after it complete, and nothing hangs.
    events: list[Any] = []
    with make(max_workers=1) as runner:
        runner.subscribe(events.append)
        futures = runner.map(fails_unprintably_at, {"i": range(6), "stop": unmapped(2)})
        futures.wait(TIMEOUT)
    assert failed_runs(futures) == [3]
    assert isinstance(futures[2].exception(), UnprintableError)
    assert [f.result() for f in futures if f is not futures[2]] == [0, 1, 3, 4, 5]
    errors = [e.error for e in events if e.error is not None]
    assert errors == ["UnprintableError: <exception str() failed>"]


class ExitsWhenPrintedInTheParentError(Exception):
    def __str__(self) -> str:
        raise SystemExit(4)


def fails_exiting_when_printed_at(i: int, stop: int) -> int:
    if i == stop:
        raise ExitsWhenPrintedInTheParentError
    return i


def test_an_exception_whose_str_raises_system_exit_is_described_all_the_same() -> None:
    # Its state and events describe it (the loop, where events are made, must not end).
    events: list[Any] = []
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        runner.subscribe(events.append)
        futures = runner.map(fails_exiting_when_printed_at, {"i": range(5), "stop": 2})
        futures.wait(TIMEOUT)
    assert failed_runs(futures) == [3]
    text = "ExitsWhenPrintedInTheParentError: <exception str() failed>"
    assert futures[2].state.message == text
    assert [e.error for e in events if e.error is not None] == [text]


def test_a_result_whose_load_fails_unprintably_fails_its_run_and_the_worker_serves_on() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        err = runner.submit(give_load_fails_unprintably).exception(TIMEOUT)
        assert isinstance(err, SerializationError)
        assert "its result cannot be loaded here (<exception str() failed>)" in str(err)
        assert runner.submit(double, {"x": 2}).result(TIMEOUT) == 4


def test_a_body_that_exits_unprintably_crashes_its_run_with_a_clear_error() -> None:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        err = runner.submit(exit_unprintably).exception(TIMEOUT)
    assert isinstance(err, TaskCrashedError)
    assert str(err) == (
        "task 'exit_unprintably' crashed: its body raised UnprintableExit: <exception str() failed>"
    )


def refuse_to_marshal_huge() -> None:
    """A worker initializer: marshal refuses str values starting "HUGE", as it refuses a str
    or bytes of 2 GiB or more."""
    import marshal

    dumps = marshal.dumps

    def refusing(value: Any, *args: Any) -> bytes:
        if isinstance(value, str) and value.startswith("HUGE"):
            raise ValueError("unmarshallable object")
        return dumps(value, *args)

    marshal.dumps = refusing


def huge_or_not(i: int) -> Any:
    return f"HUGE {i}" if i % 7 == 3 else i


@pytest.mark.usefixtures("batches")
def test_a_plain_result_marshal_refuses_goes_by_pickle() -> None:
    with ProcessPoolTaskRunner(max_workers=1, initializer=refuse_to_marshal_huge) as runner:
        assert runner.submit(huge_or_not, {"i": 3}).result(TIMEOUT) == "HUGE 3"  # (alone)
        results = runner.map(huge_or_not, {"i": range(50)}).result(TIMEOUT)
    assert results == [huge_or_not(i) for i in range(50)]


def break_exception_replies() -> None:
    """A worker initializer: an exception in a body now makes the worker's own code raise."""

    def broken(exc: BaseException, cloudpickle: Any) -> Any:
        raise RuntimeError("the worker broke while it answered")

    sys.modules["__main__"]._exception_reply = broken  # type: ignore[attr-defined]


@pytest.mark.usefixtures("batches")
def test_a_worker_that_breaks_in_a_batch_fails_only_the_run_it_was_answering() -> None:
    # The worker's own code raises while it answers run 6 of a batch whose runs before it
    # returned plain values: those keep their results, run 6 is blamed, the rest run again.
    with ProcessPoolTaskRunner(max_workers=1, initializer=break_exception_replies) as runner:
        assert runner.submit(fails_unprintably_at, {"i": 0, "stop": -1}).result(TIMEOUT) == 0
        futures = runner.map(fails_unprintably_at, {"i": range(30), "stop": unmapped(5)})
        futures.wait(TIMEOUT)
    assert failed_runs(futures) == [6]
    assert isinstance(futures[5].exception(), WorkerCrashedError)
    assert "the worker broke while it answered" in str(futures[5].exception())
    assert [f.result() for f in futures if f is not futures[5]] == [i for i in range(30) if i != 5]


@pytest.mark.usefixtures("batches")
def test_a_batch_down_to_one_call_leaves_no_trace_behind() -> None:
    # Runs whose arguments cannot be sent fail before their batch goes out; the one left
    # goes alone, and once it is answered nothing of it is kept.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        locks: list[object] = [threading.Lock() for _ in range(10)]
        # Run 0 goes first, alone (it shows the task is quick); the rest go as one batch.
        futures = runner.map(double, {"x": [1, *locks, 5, *locks]})
        futures.wait(TIMEOUT)
        assert [futures[0].result(), futures[11].result()] == [2, 10]
        assert all(isinstance(f.exception(), SerializationError) for f in futures[1:11])
        assert runner._scheduler is not None
        backend = runner._scheduler.backend
        assert isinstance(backend, ProcessWorkers)
        assert backend._busy == {}


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        (1e-6, 512),  # quick calls: at least 512, though an eighth of the queue is 75
        (2.5e-5, 100),  # at most about 2.5 ms of work for that minimum
        (1e-3, 10),  # and about 10 ms of work in any batch
    ],
)
def test_a_batch_takes_a_share_of_the_queue_bounded_by_its_work(cost: float, expected: int) -> None:
    owner: Any = object()
    t = as_task(double)
    rows, _ = expand("double", {"x": range(600)})
    runs = plain_runs(owner, t, rows, contextvars.copy_context(), MapGroup(600))
    workers = ProcessWorkers.__new__(ProcessWorkers)  # only what _take_batch reads
    workers._ready = collections.deque(runs)
    workers._max = 8
    workers._max_tasks = None
    workers._unbatchable = weakref.WeakSet()
    workers._cost = weakref.WeakKeyDictionary({t.fn: cost})
    batch = workers._take_batch(-(-600 // 8))
    assert batch == runs[:expected]
    assert list(workers._ready) == runs[expected:]


def pump_only(t: Any, cost: float | None) -> tuple[ProcessWorkers, list[list[Any]]]:
    """A pool of 2 workers with only what ``submit_many``, ``_pump`` and ``_take_batch`` read,
    calls of ``t`` known to take ``cost`` seconds; the batches ``_pump`` sends out are listed
    instead of run (and ``submit_many`` leaves the pumping to the test, unless it cut a map
    into batches: they go out at once)."""
    workers = ProcessWorkers.__new__(ProcessWorkers)
    workers._ready = collections.deque()
    workers._max, workers._active, workers._max_tasks = 2, 0, None
    workers._busy = {}
    workers._pump_due = True
    workers._sched = types.SimpleNamespace(loop=types.SimpleNamespace(is_running=lambda: True))  # type: ignore[assignment]
    workers._unbatchable = weakref.WeakSet()
    workers._cost = weakref.WeakKeyDictionary({} if cost is None else {t.fn: cost})
    sent: list[list[Any]] = []

    def started(work: Any) -> None:
        sent.append(work.cr_frame.f_locals["batch"])
        work.close()

    workers._in_background = started  # type: ignore[method-assign]
    return workers, sent


def cheap_map(size: int) -> tuple[Task[..., Any], list[Future[Any]]]:
    owner: Any = object()
    t = as_task(double)
    rows, _ = expand("double", {"x": range(size)})
    ctx = contextvars.copy_context()
    return t, plain_runs(owner, t, rows, ctx, MapGroup(size), shareable=True)


def test_workers_free_together_split_the_queue_evenly() -> None:
    # A map of 2,000 quick calls on 2 idle workers: 1,000 each, not 1,000 then 500 (the second
    # worker would then need a round trip more for the rest).
    t, runs = cheap_map(2000)
    workers, sent = pump_only(t, 1e-6)
    workers._ready.extend(runs)
    workers._pump()
    assert list(map(len, sent)) == [1000, 1000]
    assert not workers._ready


def test_a_map_of_calls_known_to_be_cheap_is_batched_as_it_is_submitted() -> None:
    # Each batch goes out as it was made: its calls' arguments and run numbers listed once,
    # from the map, not read from each run again.
    t, runs = cheap_map(2000)
    workers, sent = pump_only(t, 1e-6)
    workers.submit_many(runs)  # (both workers are free: its two batches go out at once)
    assert not workers._ready
    assert [list(batch) for batch in sent] == [runs[:1000], runs[1000:]]
    message, calls = workers._packed(sent[1])
    _, is_async, (name, _, _), args, contexts = message
    assert (is_async, name) == (False, "double")
    # (x is double's first and only parameter: each call takes its only argument)
    by_position, _ = args
    assert pickle.loads(by_position) == list(range(1000, 2000))
    assert contexts == range(int(runs[1000]._id), int(runs[-1]._id) + 1)  # (consecutive)
    assert list(calls) == [(run, t, ((), {"x": i})) for i, run in enumerate(runs[1000:], 1000)]
    # A run cancelled while its batch waited is left out of the message.
    runs[999]._status = CANCELLED  # (the last run of the first batch)
    message, calls = workers._packed(sent[0])
    assert len(pickle.loads(message[3][0])) == 1000  # (not seen: no run of the map ended)
    group = runs[999]._group
    assert group is not None
    group.ended(1, runs[999])  # (as a cancel does)
    message, calls = workers._packed(sent[0])
    assert pickle.loads(message[3]) == [{"x": i} for i in range(999)]
    assert [call[0] for call in calls] == runs[:999]
    # Calls whose time is not known yet are queued one by one (the first goes alone).
    unknown, _ = pump_only(t, None)
    unknown.submit_many(runs)
    assert list(unknown._ready) == runs


def test_the_calls_of_a_map_batch_read_as_a_deque_of_its_calls_would() -> None:
    # A batch made at submit keeps no tuple per call (the garbage collector would walk them
    # while it runs): each call is made when read, as the deque of calls it stands for has it.
    t, runs = cheap_map(5)
    calls = _MapCalls(runs, expand("double", {"x": range(5)})[0], 0, t)
    same: deque[Any] = deque((run, t, ((), {"x": i})) for i, run in enumerate(runs))
    assert list(calls) == list(same)
    assert list(reversed(calls)) == list(reversed(same))
    assert (calls[0], calls[-1], len(calls)) == (same[0], same[-1], 5)
    with pytest.raises(IndexError):
        calls[5]
    assert calls.popleft() == same.popleft()
    second = calls.popleft()
    assert second == same.popleft()
    with pytest.raises(ValueError, match="taken last"):
        calls.appendleft((runs[0], t, ((), {"x": 0})))
    calls.appendleft(second)
    same.appendleft(second)
    assert list(calls) == list(same)
    assert calls.items() == runs[1:]  # (the items of the calls left, without their tuples)
    assert _items_of(same) == runs[1:]
    calls.clear()
    assert (len(calls), list(calls), bool(calls)) == (0, [], False)
    with pytest.raises(IndexError):
        calls.popleft()


def test_queued_map_batches_are_cut_again_when_its_calls_turn_out_slower() -> None:
    t, runs = cheap_map(3000)
    workers, _ = pump_only(t, 1e-6)
    workers._active = 2  # (both workers busy: the batches are queued)
    workers.submit_many(runs)
    first = workers._ready.popleft()  # (it goes out; its replies say how long calls take)
    assert list(map(len, workers._ready)) == [1024, 952]
    workers._cost[t.fn] = 2e-6  # twice as long: the batches are left as they are
    workers._recheck(first)
    assert list(map(len, workers._ready)) == [1024, 952]
    workers._cost[t.fn] = 1e-5  # ten times as long: the runs go back one by one
    workers._recheck(first)
    assert list(workers._ready) == runs[1024:]


def test_the_time_of_a_plain_function_s_calls_outlives_its_task() -> None:
    # A plain function's task is made again once no run holds it (a map after a first call,
    # its future dropped): the time of that call is the function's, and still known.
    workers, _ = pump_only(as_task(double), 1e-6)
    assert workers._batch_size(Task(double), 1000) == 1000
    assert workers._batch_size(Task(functools.partial(double)), 1000) == 1  # (not known)
    workers._unbatchable.add(double)  # (a batch's arguments failed to load: so is that)
    assert workers._batch_size(Task(double), 1000) == 1


def test_runs_under_limits_give_their_slots_back_in_process_workers() -> None:
    # A run with a limit completes through the same replies as a plain one: its slot must be
    # given back, or the runs after it would wait forever.
    with ProcessPoolTaskRunner(max_workers=2, max_concurrency=1) as runner:
        assert [runner.submit(double, {"x": x}).result(TIMEOUT) for x in range(4)] == [0, 2, 4, 6]
    with ProcessPoolTaskRunner(max_workers=2) as runner:
        assert runner.map(double, {"x": range(6)}, max_in_flight=1).result(TIMEOUT) == [
            0,
            2,
            4,
            6,
            8,
            10,
        ]


@pytest.mark.usefixtures("batches")
def test_replies_held_in_a_batch_arrive_while_a_later_call_of_it_runs_on(hub: Hub) -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner, hub:
        futures = map_gated_at_run_10(runner, hub)
        (label,) = hub.arrivals(1)  # run 10 runs on and on, in a batch with runs 1 to 9
        assert [f.result(TIMEOUT) for f in futures[:9]] == list(range(1, 10))
        assert futures[9].running()
        hub.release(label)
        assert futures.result(TIMEOUT) == list(range(1, 100))


def test_a_worker_killed_while_idle_is_replaced_and_no_run_is_blamed() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        first = runner.submit(pid).result(TIMEOUT)
        idle = psutil.Process(first)
        os.kill(first, signal.SIGKILL)  # as the OOM killer would, while the worker is idle
        assert not still_running_after([idle], TIMEOUT)  # it exited (reaped or not)
        second = runner.submit(pid)
        assert second.result(TIMEOUT) != first  # ran on a fresh worker; nothing was blamed
    assert runner.statistics().failed == 0


def gate_init(hub: Address, label: str) -> None:
    with check_in(hub, label) as conn:
        conn.recv(1)


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def test_a_run_cancelled_while_its_worker_starts_never_runs(hub: Hub, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    runner = ProcessPoolTaskRunner(
        max_workers=1, initializer=gate_init, initargs=(hub.address, "init")
    )
    with runner:
        fut = runner.submit(touch, {"path": str(marker)})
        hub.arrivals(1)  # its worker is starting: the initializer waits for the word
        assert fut.cancel()
        hub.release("init")
        assert runner.submit(pid).result(TIMEOUT) > 0  # the same worker serves on
    assert fut.cancelled()
    assert not marker.exists()


_METHODS = """
class Base:
    def step(self, x):
        return ("base", x)

class Child(Base):
    def step(self, x):
        return ("child", x)

    def base_step(self):
        return super().step  # Base.step, bound to a Child

    def __private(self, x):
        return ("private", x)

    def private_step(self):
        return self.__private  # a name-mangled method

def free(self, x):
    return ("free", x)
"""


@contextlib.contextmanager
def _methods_module() -> Iterator[Any]:
    """A module of ``_METHODS``, importable while the block runs (not pickled by value)."""
    name = "asyncflow_test_methods_module"
    methods = types.ModuleType(name)
    exec(_METHODS, methods.__dict__)
    sys.modules[name] = methods
    try:
        yield methods
    finally:
        del sys.modules[name]


def test_reducers_registered_replaced_or_removed_count_from_the_next_payload() -> None:
    from asyncflow._processes import _dumps

    with _methods_module() as methods:
        copyreg.pickle(methods.Base, lambda _: (str, ("reduced",)))
        try:
            assert pickle.loads(_dumps(methods.Base())) == "reduced"
            copyreg.pickle(methods.Base, lambda _: (str, ("again",)))  # the same table size
            assert pickle.loads(_dumps(methods.Base())) == "again"
        finally:
            del copyreg.dispatch_table[methods.Base]
        copyreg.pickle(methods.Child, lambda _: (str, ("child",)))  # one out, one in
        try:
            assert type(pickle.loads(_dumps(methods.Base()))).__name__ == "Base"
            assert pickle.loads(_dumps(methods.Child())) == "child"
        finally:
            del copyreg.dispatch_table[methods.Child]


def test_payloads_go_by_plain_pickle_only_when_cloudpickle_would_send_the_same() -> None:
    from asyncflow._processes import _dumps

    # Bound methods of an importable module (not one pickled by value, as this one is): plain
    # pickle alone would look them up by name on the instance (the wrong method for super(),
    # none at all for a mangled or attached one); cloudpickle's way must hold.
    with _methods_module() as methods:
        child = methods.Child()
        assert pickle.loads(_dumps(child.base_step()))(1) == ("base", 1)
        assert pickle.loads(_dumps(child.private_step()))(2) == ("private", 2)
        assert pickle.loads(_dumps(types.MethodType(methods.free, child)))(3) == ("free", 3)

    plain = [([1, "two"], {"x": 3.0}), (Path("p"), None)]
    assert _dumps(plain) == pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
    assert cloudpickle.loads(_dumps(lambda: 7))() == 7  # plain pickle refuses: cloudpickle

    # A module registered to pickle by value: plain pickle would send a reference the worker
    # cannot resolve, so its objects must go by value.
    name = "asyncflow_test_by_value_module"
    module = types.ModuleType(name)
    exec("class Point:\n    def __init__(self, x):\n        self.x = x\n", module.__dict__)
    sys.modules[name] = module
    try:
        cloudpickle.register_pickle_by_value(module)
        try:
            data = _dumps([module.Point(5)])
        finally:
            cloudpickle.unregister_pickle_by_value(module)
    finally:
        del sys.modules[name]
    (point,) = pickle.loads(data)  # loads where the module does not exist: it went by value
    assert point.x == 5

    # The same for objects of __main__ (here: a class that claims to live there).
    class Local:
        pass

    Local.__module__ = "__main__"
    Local.__qualname__ = "Local"
    sys.modules["__main__"].Local = Local  # type: ignore[attr-defined]
    try:
        assert b"__main__" in pickle.dumps(Local())  # plain pickle: by reference
        data = _dumps(Local())
    finally:
        del sys.modules["__main__"].Local
    assert type(pickle.loads(data)).__name__ == "Local"  # by value: no __main__.Local needed


@pytest.mark.usefixtures("batches")
def test_runs_resent_one_by_one_after_a_batch_failed_to_load_start_once_each() -> None:
    # A batch whose arguments do not load in the worker never ran: its runs go again one by
    # one, and each says "started" once, when it really starts.
    events: list[Any] = []
    runner = ProcessPoolTaskRunner(max_workers=1)
    with runner.subscribe(events.append), runner:
        futures = _map_where_run_5_does_not_load(runner, events.clear)
    started: dict[Any, int] = {}
    for event in events:
        if event.kind == "started":
            started[event.run_id] = started.get(event.run_id, 0) + 1
    assert started == {f.task_run_id: 1 for f in futures}  # run 5 too: it failed in a worker
    assert [i for i, f in enumerate(futures) if f.exception() is not None] == [5]


@pytest.mark.usefixtures("batches")
def test_a_subscriber_that_joins_while_a_batch_is_out_sees_each_run_start_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The batch goes out with no one listening; then someone subscribes; the batch does not
    # load in the worker and its runs go again one by one: each is reported started once.
    events: list[Any] = []
    runner = ProcessPoolTaskRunner(max_workers=1)
    mark_running = ProcessWorkers._mark_running
    armed = threading.Event()

    def subscribe_once_the_batch_is_out(self: Any, worker: Any, calls: Any) -> None:
        mark_running(self, worker, calls)
        if armed.is_set() and len(calls) > 1:
            armed.clear()
            runner.subscribe(events.append)

    monkeypatch.setattr(ProcessWorkers, "_mark_running", subscribe_once_the_batch_is_out)
    with runner:
        _map_where_run_5_does_not_load(runner, armed.set)
    assert not armed.is_set()  # a batch went out, and the subscriber joined then
    seen: dict[Any, int] = {}  # run -> its "started" events, for the runs the subscriber saw
    for event in events:
        seen[event.run_id] = seen.get(event.run_id, 0) + (event.kind == "started")
    # (A run sent on its own before that batch may have ended before anyone listened.)
    assert len(seen) >= 10
    assert set(seen.values()) == {1}


# -- what bodies and their values may do to a worker -------------------------------------------
@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    code: int


class RefusesCauseError(Exception):
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "__cause__":
            raise AttributeError("no cause here")
        super().__setattr__(name, value)


def raise_at(i: int, stop: int, kind: str) -> int:
    if i == stop:
        raise FrozenError(i) if kind == "frozen" else RefusesCauseError(i)
    return i


@pytest.mark.usefixtures("batches")
@pytest.mark.parametrize("kind", ["frozen", "refuses-cause"])
def test_an_exception_that_refuses_new_attributes_fails_only_its_own_run(kind: str) -> None:
    # A frozen dataclass refuses every attribute, its traceback's too: the worker must not
    # die sending it back. (It cannot be loaded either, as its state is set by setattr: it
    # comes as a RemoteError.) One that refuses a cause comes as itself, with the remote
    # traceback tied to it all the same.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        alone = runner.submit(raise_at, {"i": 0, "stop": 0, "kind": kind})
        futures = runner.map(raise_at, {"i": range(1, 100), "stop": 50, "kind": kind})
        futures.wait(TIMEOUT)
        alone.wait(TIMEOUT)
        stats = runner.statistics()
    for fut, code in [(alone, 0), (futures[49], 50)]:
        err = fut.exception()
        if kind == "frozen":
            assert isinstance(err, RemoteError)
            assert str(err) == f"FrozenError: {code}"
        else:
            assert type(err) is RefusesCauseError
            assert err.args == (code,)
        assert isinstance(err.__cause__, RemoteTraceback)
    assert failed_runs(futures) == [50]
    assert all(f.state.is_completed() or f.state.is_failed() for f in [alone, *futures])
    assert (stats.completed, stats.failed) == (98, 2)


def read_stdin() -> str:
    return input()


def start_a_stdin_reader() -> int:
    # A child that reads its stdin (inherited from the body) until it ends.
    reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"])
    return reader.wait(TIMEOUT)


def test_a_body_and_what_it_starts_read_no_call_from_their_stdin() -> None:
    # The worker's stdin was its pipe of calls: a body reading it would hang, and a child
    # reading it would take the next calls.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        with pytest.raises(EOFError):
            runner.submit(read_stdin, {}).result(TIMEOUT)
        assert runner.submit(start_a_stdin_reader, {}).result(TIMEOUT) == 0
        assert runner.map(double, {"x": range(5)}).result(TIMEOUT) == [0, 2, 4, 6, 8]


class KillsWorkerWhenLoaded:
    """An argument whose loading ends the worker process at once (as a segfault would)."""

    def __init__(self, value: int, kills: bool) -> None:
        self.value, self.kills = value, kills

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (os._exit, (3,)) if self.kills else (int, (self.value,))


def identity(x: Any) -> Any:
    return x


@pytest.mark.usefixtures("batches")
def test_an_argument_that_kills_its_worker_as_it_loads_fails_only_its_own_run() -> None:
    # None of the batch started when the worker died loading it: no one is blamed, the calls
    # go again one by one, and only the run of that argument fails.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(identity, {"x": 0}).result(TIMEOUT) == 0  # (quick: batched)
        values = [KillsWorkerWhenLoaded(i, kills=i == 30) for i in range(60)]
        futures = runner.map(identity, {"x": values})
        futures.wait(TIMEOUT)
    assert failed_runs(futures) == [31]
    assert isinstance(futures[30].exception(), WorkerCrashedError)
    assert [f.result() for f in futures if f is not futures[30]] == [
        i for i in range(60) if i != 30
    ]


def take_mode(item: int, options: dict[str, str]) -> str:
    return options.pop("mode", "taken by an earlier call")


@pytest.mark.usefixtures("batches")
def test_calls_of_a_batch_each_get_their_own_copy_of_a_shared_argument() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(take_mode, {"item": 0, "options": {"mode": "strict"}}).result(TIMEOUT)
        modes = runner.map(take_mode, {"item": range(200), "options": unmapped({"mode": "s"})})
        assert modes.result(TIMEOUT) == ["s"] * 200


def pair(x: int, y: int, *, z: int = 0) -> tuple[int, int, int]:
    return x, y, z


@pytest.mark.usefixtures("batches")
def test_a_map_batch_passes_each_parameter_to_its_own_name() -> None:
    # By position when the parameters of its calls are the leading ones in order, else by
    # name: each value gets to its own parameter either way.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(pair, {"x": 0, "y": 0}).result(TIMEOUT) == (0, 0, 0)
        maps = [
            runner.map(pair, {"x": range(50), "y": range(50, 100)}),
            runner.map(pair, {"y": range(50), "x": range(50, 100)}),
            runner.map(pair, {"x": unmapped(7), "y": range(50)}),
            runner.map(pair, {"y": unmapped(7), "x": range(50)}),
            runner.map(pair, {"x": range(50), "y": unmapped(1), "z": unmapped(2)}),
        ]
        results = [m.result(TIMEOUT) for m in maps]
    assert results == [
        [(i, 50 + i, 0) for i in range(50)],
        [(50 + i, i, 0) for i in range(50)],
        [(7, i, 0) for i in range(50)],
        [(i, 7, 0) for i in range(50)],
        [(i, 1, 2) for i in range(50)],
    ]


def by_name_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator whose wrapper takes keyword arguments alone (its signature is fn's)."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        return fn(**kwargs)

    return wrapper


def memo_by_name(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator whose wrapper remembers results by the keyword arguments of the call."""
    memo: dict[Any, Any] = {}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = tuple(sorted(kwargs.items()))
        if key not in memo:
            memo[key] = fn(*args, **kwargs)
        return memo[key]

    return wrapper


@by_name_only
def add_ten(x: int, y: int = 10) -> int:
    return x + y


@memo_by_name
def square(x: int) -> int:
    return x * x


@pytest.mark.usefixtures("batches")
@pytest.mark.parametrize("fn", [add_ten, square], ids=["by-name-only", "memo-by-name"])
def test_a_map_batch_calls_a_decorated_function_as_its_wrapper_takes_them(
    fn: Callable[..., Any],
) -> None:
    # Its signature is the wrapped function's; the wrapper takes keyword arguments.
    expected = [fn.__wrapped__(x=i) for i in range(40)]  # type: ignore[attr-defined]
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.map(fn, {"x": range(40)}).result(TIMEOUT) == expected  # (learns its time)
        assert runner.map(fn, {"x": range(40)}).result(TIMEOUT) == expected  # (in batches)


def fork_a_reporter(x: int, go: str, out: str) -> str:
    """Run 0's body forks a helper that says its run context once the whole map is done."""
    if x == 0 and os.fork() == 0:
        try:
            Path(go).read_text()
            Path(out).write_text(str(asyncflow.get_run_context().task_run_id))
        finally:
            os._exit(0)
    return str(asyncflow.get_run_context().task_run_id)


@pytest.mark.usefixtures("batches")
def test_a_process_a_body_of_a_batch_forks_keeps_the_run_context_it_was_forked_in(
    tmp_path: Path,
) -> None:
    go, out = tmp_path / "go", tmp_path / "out"
    os.mkfifo(go)
    os.mkfifo(out)
    params = {"go": str(go), "out": str(out)}
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        runner.submit(fork_a_reporter, {"x": 1, **params}).result(TIMEOUT)
        mapped = runner.map(
            fork_a_reporter, {"x": range(5), **{k: unmapped(v) for k, v in params.items()}}
        )
        ids = mapped.result(TIMEOUT)
        go.write_text("go")  # (the whole batch is done)
        seen = out.read_text()
    assert seen == ids[0]


def take_first_byte(item: int, buffer: bytearray) -> int:
    first = buffer[0]
    buffer[0] = 0
    return first


@pytest.mark.usefixtures("batches")
def test_calls_of_a_map_batch_each_get_their_own_copy_of_a_mutable_plain_value() -> None:
    # A bytearray can hold no future (the map is a plain one), but a call may change it.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(take_first_byte, {"item": 0, "buffer": bytearray(b"\x07")}).result(
            TIMEOUT
        )
        firsts = runner.map(
            take_first_byte, {"item": range(200), "buffer": unmapped(bytearray(b"\x07"))}
        )
        assert firsts.result(TIMEOUT) == [7] * 200


def add_call(x: int, f: Callable[[], int]) -> int:
    return x + f()


def one() -> int:
    return 1


@pytest.mark.usefixtures("batches")
def test_an_argument_of_a_map_batch_that_cannot_be_pickled_fails_only_its_own_run() -> None:
    lock = threading.Lock()

    def locked() -> int:
        with lock:
            return 1

    with ProcessPoolTaskRunner(max_workers=1) as runner:
        assert runner.submit(add_call, {"x": 0, "f": one}).result(TIMEOUT) == 1
        calls = runner.map(add_call, {"x": range(6), "f": [one, one, locked, one, one, one]})
        calls.wait(TIMEOUT)
    err = calls[2].exception()
    assert isinstance(err, SerializationError)
    assert "parameter 'f'" in str(err)
    assert [f.result() for f in calls if f is not calls[2]] == [1, 2, 4, 5, 6]


@pytest.mark.usefixtures("batches")
def test_a_run_cancelled_while_its_map_batch_waits_for_a_worker_never_runs(
    hub: Hub, tmp_path: Path
) -> None:
    notes = tmp_path / "ran"
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        params = {"hub": hub.address, "stop": -1, "path": str(notes)}
        assert runner.submit(gated_at_noting, {"i": 0, **params}).result(TIMEOUT)[0] == 0
        with only_worker_held(runner, hub):
            futures = runner.map(
                gated_at_noting, {"i": range(1, 50), **{k: unmapped(v) for k, v in params.items()}}
            )
            assert futures[9].cancel()  # run 10, in a batch waiting for the worker
        futures.wait(TIMEOUT)
    assert futures[9].cancelled()
    assert [f.result()[0] for f in futures if f is not futures[9]] == [
        i for i in range(1, 50) if i != 10
    ]
    ran = [int(line) for line in notes.read_text().split()]
    assert sorted(ran) == [i for i in range(50) if i != 10]  # each of the others once


def test_a_worker_that_cannot_be_started_fails_its_runs_naming_the_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_process(*args: Any, **kwargs: Any) -> Any:
        raise OSError(24, "Too many open files")

    spawn = anyio.open_process
    monkeypatch.setattr(anyio, "open_process", no_process)
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        for _ in range(4):  # (more than the failed starts after which a pool gives up)
            fut = runner.submit(double, {"x": 1})
            with pytest.raises(WorkerStartError, match="task 'double': could not start a work"):
                fut.result(TIMEOUT)
            assert "Too many open files" in str(fut.exception())
        # No process started, so none failed: once processes can be made again, they are.
        monkeypatch.setattr(anyio, "open_process", spawn)
        assert runner.submit(double, {"x": 2}).result(TIMEOUT) == 4


class Abort(BaseException):
    """Neither an Exception nor SystemExit or KeyboardInterrupt."""


RAISED = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt, "Abort": Abort}


def raise_kind(kind: str) -> NoReturn:
    raise RAISED[kind](5)


class RaisesWhenLoaded:
    """A result that raises ``kind`` when the parent loads it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (raise_kind, (self.kind,))


class RaisesWhenPickled(RaisesWhenLoaded):
    """An argument that raises ``kind`` when the parent pickles it."""

    def __reduce__(self) -> NoReturn:
        raise_kind(self.kind)


def raises_when_loaded_at(i: int, stop: int, kind: str) -> Any:
    return RaisesWhenLoaded(kind) if i == stop else i


# (The runner's loop runs on a thread of its own here: a KeyboardInterrupt there is no Ctrl-C.)
@pytest.mark.parametrize("kind", sorted(RAISED))
@pytest.mark.usefixtures("batches")
def test_a_result_that_raises_anything_as_it_loads_fails_only_its_own_run(kind: str) -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        alone = runner.submit(raises_when_loaded_at, {"i": 0, "stop": 0, "kind": kind})
        with pytest.raises(SerializationError, match="its result cannot be loaded here"):
            alone.result(TIMEOUT)
        futures = runner.map(raises_when_loaded_at, {"i": range(1, 50), "stop": 20, "kind": kind})
        futures.wait(TIMEOUT)
        assert runner.submit(double, {"x": 4}).result(TIMEOUT) == 8  # the runner goes on
    assert failed_runs(futures) == [20]
    assert isinstance(futures[19].exception(), SerializationError)


@pytest.mark.parametrize("kind", sorted(RAISED))
def test_an_argument_that_raises_anything_as_it_is_pickled_fails_only_its_own_run(
    kind: str,
) -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        bad = runner.submit(identity, {"x": RaisesWhenPickled(kind)})
        good = runner.submit(identity, {"x": 1})
        err = bad.exception(TIMEOUT)
        assert isinstance(err, SerializationError)
        assert "parameter 'x' cannot be sent to a worker process" in str(err)
        assert good.result(TIMEOUT) == 1
        mapped = runner.map(identity, {"x": [1, RaisesWhenPickled(kind), 3]})
        mapped.wait(TIMEOUT)
        assert failed_runs(mapped) == [2]
        assert runner.submit(double, {"x": 4}).result(TIMEOUT) == 8  # the runner goes on


def check_in_then_hang(hub: Address, label: str) -> None:
    with check_in(hub, label):
        pass
    threading.Event().wait()


@pytest.mark.parametrize("started", [True, False], ids=["in-its-initializer", "being-spawned"])
def test_a_session_ends_though_a_worker_never_finished_starting(hub: Hub, started: bool) -> None:
    # Its initializer waits forever; the one run waiting for it is cancelled: leaving the
    # block stops that worker instead of waiting for it, whether its initializer runs by then
    # or it is still being spawned.
    runner = ProcessPoolTaskRunner(
        max_workers=1, initializer=check_in_then_hang, initargs=(hub.address, "starting")
    )
    futures = []

    def leave_with_an_error() -> None:
        with runner:
            futures.append(runner.submit(double, {"x": 1}))
            if started:
                hub.arrivals(1)  # the worker's initializer runs (and will not return)
            assert futures[0].cancel()
            raise ValueError("give up")

    with hub, pytest.raises(ValueError, match="give up"):
        leave_with_an_error()
    assert futures[0].cancelled()


def test_a_worker_reaped_already_is_not_killed_again_by_its_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its process group was killed when it was reaped; the kill that was due after a grace
    # must not send a signal by a number that another process group may have by then.
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: signalled.append((pgid, sig)))
    worker = asyncflow._processes._Worker.__new__(asyncflow._processes._Worker)
    worker.pid, worker.reaped = 4321, True
    worker._kill_hard()
    assert signalled == []
    worker.reaped = False
    worker._kill_hard()
    assert signalled == [(4321, signal.SIGKILL)]


class ExitsWhenLoadedError(Exception):
    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (sys.exit, (5,))


def raise_exits_when_loaded() -> None:
    raise ExitsWhenLoadedError("bad")


def test_an_exception_that_raises_system_exit_as_it_loads_comes_as_a_remote_error() -> None:
    # The worker checks that an exception loads back before it sends it: that check must not
    # end the worker.
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(pid, {}).result(TIMEOUT)
        err = runner.submit(raise_exits_when_loaded, {}).exception(TIMEOUT)
        assert isinstance(err, RemoteError)
        assert str(err) == "ExitsWhenLoadedError: bad"
        assert isinstance(err.__cause__, RemoteTraceback)
        assert runner.submit(pid, {}).result(TIMEOUT) == before  # the same worker serves on


@pytest.mark.usefixtures("batches")
def test_a_batch_whose_worker_died_before_any_call_started_announces_each_start_once() -> None:
    events: list[tuple[str, str, int]] = []
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        runner.subscribe(lambda e: events.append((e.kind, str(e.run_id), e.attempt)))
        assert runner.submit(identity, {"x": 0}).result(TIMEOUT) == 0
        values = [KillsWorkerWhenLoaded(i, kills=i == 30) for i in range(60)]
        futures = runner.map(identity, {"x": values})
        futures.wait(TIMEOUT)
    assert failed_runs(futures) == [31]
    starts = collections.Counter(e for e in events if e[0] == "started")
    assert starts, "no start was announced"
    assert max(starts.values()) == 1, [e for e, n in starts.items() if n > 1]


class ExitsWhenPrintedError(Exception):
    def __str__(self) -> str:
        raise SystemExit(4)


def raise_exits_when_printed() -> None:
    raise ExitsWhenPrintedError


class ExitsWhenPickled:
    def __reduce__(self) -> Any:
        raise SystemExit(6)


def return_exits_when_pickled() -> Any:
    return ExitsWhenPickled()


def test_what_raises_system_exit_as_the_worker_describes_or_sends_it_fails_only_its_run() -> None:
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        before = runner.submit(pid, {}).result(TIMEOUT)
        err = runner.submit(raise_exits_when_printed, {}).exception(TIMEOUT)
        assert isinstance(err, ExitsWhenPrintedError)
        assert isinstance(err.__cause__, RemoteTraceback)
        with pytest.raises(SerializationError, match="its result cannot be sent back"):
            runner.submit(return_exits_when_pickled, {}).result(TIMEOUT)
        assert runner.submit(pid, {}).result(TIMEOUT) == before  # the same worker serves on


def _pipe_in_worker(fd: int) -> tuple[int, int] | None:
    """What descriptor ``fd`` is in this worker (device, inode), or None if it is closed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_worker_keeps_no_descriptor_the_parent_left_inheritable(
    monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    # uvloop's spawn (libuv's) closes no descriptors: one the parent made inheritable (or was
    # started with, such as a build tool's jobserver pipe) would stay open in every worker for
    # its whole life, and the other end would never see the pipe end.
    monkeypatch.setenv("ASYNCFLOW_EVENT_LOOP", loop)
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(write_end, True)
        here = os.fstat(write_end)
        with ProcessPoolTaskRunner(1) as runner:
            assert type(runner._scheduler.loop).__module__.startswith(loop)  # type: ignore[union-attr]
            there = runner.submit(_pipe_in_worker, {"fd": write_end}).result(timeout=TIMEOUT)
            assert there != (here.st_dev, here.st_ino)
            os.close(write_end)
            write_end = -1
            # Every writer is gone (the worker holds none): the read end sees the pipe end.
            assert select.select([read_end], [], [], TIMEOUT)[0] == [read_end]
            assert os.read(read_end, 1) == b""
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)


def test_a_remote_traceback_names_the_file_of_a_body_sent_by_value() -> None:
    # A body sent by value (a script's function, a lambda, a closure) is named in its remote
    # traceback by its file and line, with the line's text, as one sent by reference is.
    def fails(x: int) -> int:
        raise KeyError(f"no {x}")  # the line the traceback shows

    with ProcessPoolTaskRunner(1) as runner:
        err = runner.submit(fails, {"x": 3}).exception(TIMEOUT)
    assert isinstance(err, KeyError)
    text = str(err.__cause__)
    assert f'File "{__file__}", line ' in text, text
    assert 'raise KeyError(f"no {x}")  # the line the traceback shows' in text


def test_a_body_sent_by_value_goes_under_python_bb(tmp_path: Path) -> None:
    # ``python -bb`` makes a comparison of bytes with a string an error: sending a function
    # by value must make none.
    script = tmp_path / "bb.py"
    script.write_text(
        "from asyncflow import ProcessPoolTaskRunner\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolTaskRunner(1) as runner:\n"
        "        print(runner.submit(lambda: 2).result(30))\n"
    )
    done = subprocess.run(
        [sys.executable, "-bb", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=script_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2\n"


def test_a_fork_on_the_thread_making_a_watcher_pipe_goes_on(tmp_path: Path) -> None:
    # A signal handler may fork on the thread that holds the watchers' fork lock: that fork
    # must not wait for itself.
    script = tmp_path / "fork_in_lock.py"
    script.write_text(
        "import os\n"
        "import asyncflow._watcher as watcher\n"
        "with watcher._forking:\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        os._exit(0)\n"
        "os.waitpid(child, 0)\n"
        "print('forked')\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env=script_env(),
        check=False,
    )
    assert done.stdout == "forked\n", done.stderr


class _Noticed(logging.Handler):
    """A log handler that keeps each record's message and sets ``seen`` for each."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.seen.set()


def test_a_worker_slow_to_start_is_said_to_be(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    # An initializer that hangs leaves the runs waiting for its worker: a warning says why.
    monkeypatch.setattr(asyncflow._processes, "_SLOW_START", 0.05)
    noticed = _Noticed()
    logger = logging.getLogger("asyncflow")
    logger.addHandler(noticed)
    try:
        runner = ProcessPoolTaskRunner(
            max_workers=1, initializer=gated, initargs=(hub.address, "starting")
        )
        with runner, hub:
            fut = runner.submit(double, {"x": 21})
            assert hub.arrivals(1) == ["starting"]
            assert noticed.seen.wait(TIMEOUT)  # (the worker is held at the hub meanwhile)
            hub.release("starting")
            assert fut.result(TIMEOUT) == 42
    finally:
        logger.removeHandler(noticed)
    (message,) = [m for m in noticed.messages if "still starting" in m]
    assert "started for task 'double') is still starting after 0.05 s" in message
    assert "its initializer may hang" in message


def test_a_signal_handler_forking_while_a_watcher_pipe_is_made_gives_no_pipe_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Python signal handler runs between two steps of the main thread: one that forks right
    # after the pipe is made, before its writing end is known, would give it to the child.
    real_pipe = os.pipe
    made: list[tuple[int, os.stat_result]] = []
    held: list[bytes] = []

    def fork_and_look(signum: int, frame: object) -> None:
        held.append(_child_holds(*made[0]))

    def pipe() -> tuple[int, int]:
        ends = real_pipe()
        made.append((ends[1], os.fstat(ends[1])))
        signal.raise_signal(signal.SIGUSR1)  # its handler runs at the next step it can
        return ends

    previous = signal.signal(signal.SIGUSR1, fork_and_look)
    try:
        monkeypatch.setattr(watcher_module, "os", types.SimpleNamespace(pipe=pipe, close=os.close))
        _watch_a_group()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert held == [b"none"]
