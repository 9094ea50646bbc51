"""One behaviour suite, run against every runner (as CPython's executor tests do): thread and
process pools here, Dask and Ray in ``test_dask_contract.py`` and ``test_ray_contract.py``, which
collect these tests again with a ``runner`` fixture of their own.

Bodies coordinate with the tests through a ``Hub``: a socket on localhost where a body checks in
(its label and pid) and then blocks until the test says the word. It works the same for threads,
coroutines and worker processes, and nothing ever sleeps to let something happen.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import cloudpickle
import pytest

from asyncflow import (
    DaskTaskRunner,
    ProcessPoolTaskRunner,
    TaskRunner,
    ThreadPoolTaskRunner,
    allow_failure,
    get_run_context,
    task,
    unmapped,
    wait,
)
from asyncflow.exceptions import (
    RemoteTraceback,
    TaskCancelledError,
    TaskCrashedError,
    TaskTimeoutError,
    UpstreamFailedError,
)

TIMEOUT = 5.0  # seconds: the longest any single wait in these tests may take

# Bodies of this module travel to worker processes by value: a worker then does not import this
# module (and pytest and asyncflow with it), which keeps a worker's start near 0.1 s.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

_HOST = "127.0.0.1"
Address = int  # the hub's port on 127.0.0.1 (an int: a map passing it is a plain one)


# -- the hub: a gate for bodies in threads, coroutines and processes alike ---------------------
class Hub:
    """The test's end of the gates. A body checks in with ``check_in`` (label, pid and any
    numbers it wants to tell) and waits for the word; ``arrivals`` waits for bodies to check in,
    ``release`` says the word, ``close`` (or leaving the ``with`` block) releases everyone left.
    """

    def __init__(self) -> None:
        self._server = socket.create_server((_HOST, 0))
        self._server.settimeout(TIMEOUT)
        self.address: Address = self._server.getsockname()[1]
        self.numbers: dict[str, list[int]] = {}  # label -> pid, then what the body told
        self._waiting: dict[str, socket.socket] = {}

    def arrivals(self, count: int) -> list[str]:
        """Wait for ``count`` more bodies to check in; their labels, in order of arrival."""
        labels: list[str] = []
        for _ in range(count):
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                raise AssertionError(
                    f"only {len(labels)} of {count} bodies checked in within {TIMEOUT:g} s "
                    f"({labels})"
                ) from None
            conn.settimeout(TIMEOUT)
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(256)
                if not chunk:
                    raise AssertionError(f"a body hung up before checking in (got {line!r})")
                line += chunk
            label, *numbers = line.decode().split()
            self.numbers[label] = [int(n) for n in numbers]
            self._waiting[label] = conn
            labels.append(label)
        return labels

    def pid(self, label: str) -> int:
        return self.numbers[label][0]

    def release(self, *labels: str) -> None:
        """Say the word to these bodies: each goes on."""
        for label in labels:
            with self._waiting.pop(label) as conn:
                conn.sendall(b"g")

    def close(self) -> None:
        """Hang up on every body still waiting (each goes on) and stop listening."""
        for conn in self._waiting.values():
            conn.close()
        self._waiting.clear()
        self._server.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def hub() -> Iterator[Hub]:
    with Hub() as h:
        yield h


# -- task bodies (module level: they must travel to worker processes) -------------------------
class BoomError(ValueError):
    """An exception type of the user's own."""


def check_in(hub: Address, label: str, *numbers: int) -> socket.socket:
    """Body side: tell the hub this body is here (and its pid); the caller then waits."""
    conn = socket.create_connection((_HOST, hub), timeout=TIMEOUT)
    words = [label, str(os.getpid()), *map(str, numbers)]
    conn.sendall(" ".join(words).encode() + b"\n")
    return conn


def gated(hub: Address, label: str, value: int = 0) -> int:
    """Check in, wait for the word (or the hub hanging up), return ``value``."""
    with check_in(hub, label) as conn:
        conn.recv(1)
    return value


async def agated(hub: Address, label: str, value: int = 0) -> int:
    """The coroutine twin of ``gated``."""
    reader, writer = await asyncio.open_connection(_HOST, hub)
    try:
        writer.write(f"{label} {os.getpid()}\n".encode())
        await writer.drain()
        await asyncio.wait_for(reader.read(1), TIMEOUT)
    finally:
        writer.close()
    return value


def gated_write(hub: Address, label: str, path: str, text: str) -> str:
    """Check in, wait for the word, then write ``text`` to ``path``."""
    with check_in(hub, label) as conn:
        conn.recv(1)
    Path(path).write_text(text)
    return text


def read_text(path: str) -> str:
    return Path(path).read_text()


def touch(path: str, x: object = None) -> str:
    """Leave a mark that this body ran."""
    Path(path).write_text(repr(x))
    return path


def double(x: int) -> int:
    return x * 2


async def adouble(x: int) -> int:
    await asyncio.sleep(0)  # a real coroutine: it yields to its loop once
    return x * 2


def add(x: int, y: int) -> int:
    return x + y


def total(xs: list[int], extra: dict[str, int]) -> int:
    return sum(xs) + sum(extra.values())


def raise_boom(message: str) -> int:
    raise BoomError(message)


async def araise_boom(message: str) -> int:
    await asyncio.sleep(0)
    raise BoomError(message)


def raise_key_error(key: str) -> int:
    return {"present": 1}[key]


def describe(x: object) -> str:
    return f"{type(x).__name__}: {x}"


@task(retries=3, retry_delay=[1.0, 2.0])
def flaky(succeed_on: int) -> str:
    """Fails (a ``BoomError`` naming the attempt) until attempt ``succeed_on``."""
    attempt = get_run_context().attempt
    if attempt < succeed_on:
        raise BoomError(f"attempt {attempt} failed")
    return f"done on attempt {attempt}"


def own_run_id(x: int) -> tuple[int, str]:
    return x, str(get_run_context().task_run_id)


# -- the runners under test --------------------------------------------------------------------
RUNNERS: dict[str, Callable[[], TaskRunner]] = {
    "thread": lambda: ThreadPoolTaskRunner(max_workers=2),
    "process": lambda: ProcessPoolTaskRunner(max_workers=2),
}


@pytest.fixture(params=sorted(RUNNERS))
def runner(request: pytest.FixtureRequest) -> TaskRunner:
    """A fresh, unstarted runner with two workers."""
    return RUNNERS[request.param]()


class FakeSleep:
    """Stands in for the runner's wait between attempts: records each delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def root_cause(exc: BaseException) -> BaseException:
    """Follow the chain of ``UpstreamFailedError`` causes to the failure that started it."""
    while isinstance(exc, UpstreamFailedError):
        assert exc.__cause__ is not None
        exc = exc.__cause__
    return exc


# -- submit, map, results ----------------------------------------------------------------------
@pytest.mark.parametrize("body", [double, adouble], ids=["sync", "async"])
def test_submit_returns_the_result(runner: TaskRunner, body: Callable[[int], Any]) -> None:
    with runner:
        plain = runner.submit(body, {"x": 21})
        as_task = runner.submit(task(body), {"x": 5})
        assert plain.result(TIMEOUT) == 42
        assert as_task.result(TIMEOUT) == 10
        assert plain.state.is_completed()
        assert plain.done()
        assert plain.exception() is None


def test_map_runs_one_child_per_element_in_order_with_unmapped_values_whole(
    runner: TaskRunner,
) -> None:
    with runner:
        sums = runner.map(add, {"x": [1, 2, 3, 4], "y": unmapped(10)})
        totals = runner.map(total, {"xs": [[1, 2], [3]], "extra": unmapped({"a": 100})})
        doubled = runner.map(adouble, {"x": range(5)})
        assert sums.result(TIMEOUT) == [11, 12, 13, 14]
        assert totals.result(TIMEOUT) == [103, 103]
        assert doubled.result(TIMEOUT) == [0, 2, 4, 6, 8]


def test_map_over_nothing_returns_an_empty_list(runner: TaskRunner) -> None:
    with runner:
        assert runner.map(double, {"x": []}).result(TIMEOUT) == []


# -- futures as inputs -------------------------------------------------------------------------
def test_futures_in_parameters_are_replaced_by_their_results(runner: TaskRunner) -> None:
    with runner:
        a = runner.submit(double, {"x": 1})
        b = runner.submit(adouble, {"x": a})
        c = runner.submit(add, {"x": a, "y": b})
        d = runner.submit(total, {"xs": [a, b, c, 1000], "extra": {"c": c}})
        mapped = runner.map(add, {"x": [a, b, c], "y": unmapped(d)})
        assert (a.result(TIMEOUT), b.result(TIMEOUT), c.result(TIMEOUT)) == (2, 4, 6)
        assert d.result(TIMEOUT) == 2 + 4 + 6 + 1000 + 6
        assert mapped.result(TIMEOUT) == [1020, 1022, 1024]


def test_wait_for_holds_a_run_until_its_upstream_is_done(
    runner: TaskRunner, hub: Hub, tmp_path: Path
) -> None:
    note = tmp_path / "note"
    with runner:
        first = runner.submit(
            gated_write,
            {"hub": hub.address, "label": "first", "path": str(note), "text": "from first"},
        )
        hub.arrivals(1)
        second = runner.submit(read_text, {"path": str(note)}, wait_for=[first])
        # Submitted after ``second`` and free to run on the idle worker: once it is done,
        # ``second`` would have run too, had wait_for not held it back.
        later = runner.submit(double, {"x": 3})
        assert later.result(TIMEOUT) == 6
        assert second.state.is_pending()
        assert not note.exists()
        hub.release("first")
        assert second.result(TIMEOUT) == "from first"


# -- failures ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "parameters", "error", "match"),
    [
        (raise_boom, {"message": "bang"}, BoomError, "bang"),
        (araise_boom, {"message": "async bang"}, BoomError, "async bang"),
        (raise_key_error, {"key": "missing"}, KeyError, "missing"),
    ],
    ids=["own-type", "async-body", "builtin-type"],
)
def test_a_failure_is_raised_again_with_its_own_type(
    runner: TaskRunner,
    body: Callable[..., Any],
    parameters: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    with runner:
        fut = runner.submit(body, parameters)
        with pytest.raises(error, match=match) as caught:
            fut.result(TIMEOUT)
        assert type(caught.value) is error
        assert type(fut.exception()) is error
        if sys.version_info >= (3, 11):  # its traceback names the task that raised it
            assert getattr(caught.value, "__notes__", None) == [f"raised by task {fut.task_name!r}"]
        assert fut.state.is_failed()
        assert type(fut.result(raise_on_failure=False)) is error


def fetch_fails() -> None:
    raise ValueError("no data")


def reraise(error: BaseException) -> None:
    raise error


def test_a_failure_raised_again_downstream_keeps_naming_the_task_that_raised_it(
    runner: TaskRunner,
) -> None:
    # The same exception ends the run that re-raised it (the very object with threads, a copy
    # with processes): its first note still names the task where it was raised; then the
    # other one, once.
    with runner:
        up = runner.submit(fetch_fails, {})
        down = runner.submit(reraise, {"error": allow_failure(up)})
        down.wait(TIMEOUT)
    assert isinstance(down.exception(), ValueError)
    if sys.version_info >= (3, 11):
        assert getattr(down.exception(), "__notes__", None) == [
            "raised by task 'fetch_fails'",
            "also raised by task 'reraise'",
        ]
        assert getattr(up.exception(), "__notes__", [None])[0] == "raised by task 'fetch_fails'"


SHARED_FAILURE = LookupError("one failure object")


def raise_shared() -> None:
    raise SHARED_FAILURE


def test_one_exception_object_raised_by_two_tasks_names_each(runner: TaskRunner) -> None:
    # With threads both runs end with the very same object: its notes name both tasks.
    with runner:
        futures = [runner.submit(task(name=name)(raise_shared), {}) for name in ("first", "second")]
        wait(futures, timeout=TIMEOUT)
    if sys.version_info >= (3, 11):
        for fut in futures:
            notes = getattr(fut.exception(), "__notes__", [])
            assert any(n.endswith(f"raised by task {fut.task_name!r}") for n in notes), notes


def test_an_upstream_failure_skips_dependents_with_the_root_cause_chained(
    runner: TaskRunner, tmp_path: Path
) -> None:
    mark = tmp_path / "ran"
    with runner:
        root = runner.submit(raise_boom, {"message": "root cause"})
        child = runner.submit(double, {"x": root})
        grandchild = runner.submit(touch, {"path": str(mark), "x": child})
        with pytest.raises(UpstreamFailedError, match="'raise_boom' failed") as caught:
            child.result(TIMEOUT)
        grandchild.wait(TIMEOUT)
    cause = caught.value.__cause__
    assert isinstance(cause, BoomError)
    assert str(cause) == "root cause"
    err = grandchild.exception()
    assert isinstance(err, UpstreamFailedError)
    assert err.task_name == "touch"
    assert err.upstream_name == "double"
    assert isinstance(root_cause(err), BoomError)
    assert child.state.is_failed()
    assert grandchild.state.is_failed()
    assert not mark.exists()  # a dependent of a failure never runs


def test_the_first_failure_of_a_long_chain_is_the_cause_of_every_error_below(
    runner: TaskRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each error's cause is the first failure, not its upstream's own error: a chain's causes
    # do not nest as deep as the chain (printing the last error walks every cause).
    with runner:
        fut = runner.submit(raise_boom, {"message": "root cause"})
        for _ in range(1_000):
            fut = runner.submit(double, {"x": fut})
        fut.wait(TIMEOUT)
    err = fut.exception()
    assert isinstance(err, UpstreamFailedError)
    assert err.upstream_name == "double"
    assert isinstance(err.__cause__, BoomError)
    sys.__excepthook__(type(err), err, err.__traceback__)  # as an uncaught error is printed
    assert "BoomError: root cause" in capsys.readouterr().err


def test_an_upstream_failed_error_a_body_raised_again_has_the_first_failure_as_cause(
    runner: TaskRunner,
) -> None:
    # A body raises a skipped run's error (handed in through allow_failure): its dependents'
    # cause is still the first failure, and one that came back from a worker process (its only
    # cause there, its remote traceback) is the cause as it is (processes, Ray).
    with runner:
        root = runner.submit(raise_boom, {"message": "root cause"})
        skipped = runner.submit(double, {"x": root})
        raised = runner.submit(reraise, {"error": allow_failure(skipped)})
        below = runner.submit(double, {"x": raised})
        below.wait(TIMEOUT)
    err = below.exception()
    assert isinstance(err, UpstreamFailedError)
    assert err.upstream_name == "reraise"
    again = raised.exception()
    assert isinstance(again, UpstreamFailedError)
    if isinstance(runner, ThreadPoolTaskRunner):
        assert err.__cause__ is root.exception()
    elif isinstance(runner, DaskTaskRunner):  # Dask sends an error back with its causes: copies
        assert type(err.__cause__) is BoomError
        assert str(err.__cause__) == "root cause"
    else:  # it came back from a worker process
        assert err.__cause__ is again
        assert isinstance(again.__cause__, RemoteTraceback)


def test_causes_stay_shallow_down_a_chain_of_skips_and_bodies_raising_them_again(
    runner: TaskRunner,
) -> None:
    with runner:
        fut = runner.submit(raise_boom, {"message": "root cause"})
        for _ in range(200):
            skipped = runner.submit(double, {"x": fut})
            fut = runner.submit(reraise, {"error": allow_failure(skipped)})
        fut.wait(TIMEOUT * 4)
    depth = 0
    err: BaseException | None = fut.exception()
    while err is not None:
        depth += 1
        err = err.__cause__
    assert depth <= 3


def exit_now() -> int:
    raise SystemExit(3)


def test_a_dependent_of_a_crashed_upstream_says_it_crashed(runner: TaskRunner) -> None:
    # The body never returned (SystemExit: a crash, whichever runner ran it); its dependents
    # say so, and theirs say their own upstream failed (it did not run).
    with runner:
        root = runner.submit(exit_now)
        child = runner.submit(double, {"x": root})
        grandchild = runner.submit(double, {"x": child})
        grandchild.wait(TIMEOUT)
    assert root.state.is_crashed()
    err = child.exception()
    assert isinstance(err, UpstreamFailedError)
    assert str(err) == "task 'double' did not run: its upstream task 'exit_now' crashed"
    assert err.how == "crashed"
    below = grandchild.exception()
    assert isinstance(below, UpstreamFailedError)
    assert str(below) == "task 'double' did not run: its upstream task 'double' failed"


def test_allow_failure_passes_the_exception_in_as_a_value(runner: TaskRunner) -> None:
    with runner:
        bad = runner.submit(raise_boom, {"message": "tolerated"})
        good = runner.submit(double, {"x": 4})
        seen = runner.submit(describe, {"x": allow_failure(bad)})
        both = runner.submit(describe, {"x": [allow_failure(bad), good]})
        assert seen.result(TIMEOUT) == "BoomError: tolerated"
        assert both.result(TIMEOUT) == "list: [BoomError('tolerated'), 8]"


def test_wait_for_a_failed_upstream_fails_the_run_without_running_it(
    runner: TaskRunner, tmp_path: Path
) -> None:
    mark = tmp_path / "ran"
    with runner:
        bad = runner.submit(raise_boom, {"message": "no"})
        after = runner.submit(touch, {"path": str(mark)}, wait_for=[bad])
        with pytest.raises(UpstreamFailedError) as caught:
            after.result(TIMEOUT)
    assert isinstance(caught.value.__cause__, BoomError)
    assert not mark.exists()


# -- with and async with -----------------------------------------------------------------------
def test_leaving_the_with_block_waits_for_every_run(runner: TaskRunner) -> None:
    with runner:
        futures = [runner.submit(adouble if i % 2 else double, {"x": i}) for i in range(8)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [2 * i for i in range(8)]
    assert runner.statistics().completed == 8


@pytest.mark.anyio
async def test_async_with_runs_sync_and_async_bodies_and_futures_can_be_awaited(
    runner: TaskRunner,
) -> None:
    async with runner:
        a = runner.submit(double, {"x": 5})
        b = runner.submit(adouble, {"x": a})
        many = runner.map(add, {"x": [1, 2], "y": unmapped(b)})
        assert await a == 10
        assert await b == 20
        assert await many == [21, 22]
        bad = runner.submit(araise_boom, {"message": "awaited"})
        with pytest.raises(BoomError, match="awaited"):
            await bad
        late = runner.submit(adouble, {"x": 50})
    assert late.result() == 100  # leaving the block waited for it
    stats = runner.statistics()
    assert (stats.completed, stats.failed) == (5, 1)


def test_a_runner_can_be_entered_again_after_it_exited(runner: TaskRunner) -> None:
    with runner:
        assert runner.submit(double, {"x": 1}).result(TIMEOUT) == 2
    with runner:
        assert runner.submit(adouble, {"x": 2}).result(TIMEOUT) == 4
    assert runner.statistics().completed == 1  # counts of the last session


# -- retries, timeouts, cancellation -----------------------------------------------------------
def test_retries_run_again_until_the_body_succeeds(runner: TaskRunner) -> None:
    sleep = FakeSleep()
    runner._sleep = sleep  # replaced before the runner starts: no real waiting between attempts
    with runner:
        assert runner.submit(flaky, {"succeed_on": 3}).result(TIMEOUT) == "done on attempt 3"
        assert runner.statistics().retried == 2
        exhausted = runner.submit(flaky, {"succeed_on": 10})
        with pytest.raises(BoomError, match="attempt 4 failed"):
            exhausted.result(TIMEOUT)
    assert sleep.delays == [1.0, 2.0, 1.0, 2.0, 2.0]  # the last listed delay repeats
    assert runner.statistics().retried == 5


def first_of(items: list[int]) -> int:
    return next(iter(items))  # StopIteration when there is none


def crashed_run_result() -> int:
    # A body that raises the TaskCrashedError of another run (as .result() on it would): it
    # returned by raising, so it failed; its own body did not crash.
    raise TaskCrashedError("task 'child' crashed: its body raised SystemExit: 1")


@pytest.mark.parametrize(
    "options", [{"retries": 1}, {"timeout": TIMEOUT}, {}], ids=["retries", "timeout", "plain"]
)
def test_a_body_raising_stop_iteration_fails_with_it(
    runner: TaskRunner, options: dict[str, Any]
) -> None:
    # (An asyncio future refuses a StopIteration, and one cannot leave a coroutine as it is.)
    runner._sleep = FakeSleep()
    with runner:
        fut = runner.submit(task(**options)(first_of), {"items": []})
        assert isinstance(fut.exception(TIMEOUT), StopIteration)
        assert fut.state.is_failed()
        assert runner.submit(first_of, {"items": [7]}).result(TIMEOUT) == 7
    assert runner.statistics().retried == options.get("retries", 0)


@pytest.mark.parametrize("options", [{"retries": 2}, {}], ids=["retries", "plain"])
def test_a_body_raising_a_task_crashed_error_failed_and_is_retried(
    runner: TaskRunner, options: dict[str, Any]
) -> None:
    runner._sleep = FakeSleep()
    with runner:
        fut = runner.submit(task(**options)(crashed_run_result))
        assert isinstance(fut.exception(TIMEOUT), TaskCrashedError)
        assert fut.state.is_failed(), fut.state
    assert runner.statistics().retried == options.get("retries", 0)


@pytest.mark.parametrize("body", [gated, agated], ids=["sync", "async"])
def test_a_run_past_its_timeout_fails_with_task_timeout_error(
    runner: TaskRunner, hub: Hub, body: Callable[..., Any]
) -> None:
    slow = task(timeout=0.3)(body)
    with runner, hub:
        # Both workers busy at once, then idle: the timed body starts at once on a warm one.
        warm = [runner.submit(body, {"hub": hub.address, "label": f"warm{i}"}) for i in (0, 1)]
        hub.release(*hub.arrivals(2))
        assert [f.result(TIMEOUT) for f in warm] == [0, 0]
        fut = runner.submit(slow, {"hub": hub.address, "label": "slow", "value": 1})
        hub.arrivals(1)  # the body runs, and never gets the word
        with pytest.raises(TaskTimeoutError, match=rf"'{body.__name__}' timed out after 0.3 s"):
            fut.result(TIMEOUT)
        assert fut.state.is_failed()
        # The runner goes on with other work.
        assert runner.submit(double, {"x": 4}).result(TIMEOUT) == 8
        quick = runner.submit(task(timeout=TIMEOUT)(double), {"x": 5})
        assert quick.result(TIMEOUT) == 10


def test_cancel_a_queued_run_it_never_starts_and_its_dependents_end_cancelled(
    runner: TaskRunner, hub: Hub, tmp_path: Path
) -> None:
    mark = tmp_path / "ran"
    with runner, hub:
        held = [
            runner.submit(gated, {"hub": hub.address, "label": f"held{i}", "value": i})
            for i in range(2)
        ]
        hub.arrivals(2)  # both workers are busy: what comes next waits in the queue
        queued = runner.submit(touch, {"path": str(mark)})
        dependent = runner.submit(double, {"x": queued})
        assert queued.cancel()
        assert queued.cancelled()
        assert queued.state.is_cancelled()
        assert not queued.cancel()  # already final
        with pytest.raises(TaskCancelledError, match="'touch' was cancelled"):
            queued.result(TIMEOUT)
        dependent.wait(TIMEOUT)
        assert dependent.state.is_cancelled()
        hub.release("held0", "held1")
        assert [f.result(TIMEOUT) for f in held] == [0, 1]
    assert not mark.exists()
    stats = runner.statistics()
    assert (stats.completed, stats.cancelled) == (2, 2)


# -- run context -------------------------------------------------------------------------------
def test_the_run_id_a_body_sees_is_its_futures_run_id(runner: TaskRunner) -> None:
    with runner:
        early = runner.submit(own_run_id, {"x": -1})
        asked_before = str(early.task_run_id)  # the id may be made before the body runs
        assert early.result(TIMEOUT) == (-1, asked_before)
        # Many quick runs of one task (a process runner sends them in batches); the id is made
        # where it is first asked for, and the run keeps the one its body saw.
        futures = runner.map(own_run_id, {"x": range(200)})
        results = futures.result(TIMEOUT)
    assert [x for x, _ in results] == list(range(200))
    assert [seen for _, seen in results] == [str(f.task_run_id) for f in futures]
    assert len({seen for _, seen in results}) == 200


# -- statistics --------------------------------------------------------------------------------
def test_statistics_count_each_kind_of_ending(runner: TaskRunner, hub: Hub) -> None:
    with runner, hub:
        assert runner.submit(double, {"x": 1}).result(TIMEOUT) == 2
        bad = runner.submit(raise_boom, {"message": "counted"})
        skipped = runner.submit(double, {"x": bad})
        skipped.wait(TIMEOUT)
        held = runner.submit(gated, {"hub": hub.address, "label": "held", "value": 7})
        hub.arrivals(1)
        waiting = runner.submit(double, {"x": held})
        stats = runner.statistics()
        assert (stats.submitted, stats.running, stats.queued) == (5, 1, 1)
        assert (stats.completed, stats.failed, stats.cancelled) == (1, 2, 0)
        assert waiting.cancel()
        hub.release("held")
        assert held.result(TIMEOUT) == 7
    stats = runner.statistics()
    assert (stats.submitted, stats.running, stats.queued) == (5, 0, 0)
    assert (stats.completed, stats.failed, stats.cancelled, stats.retried) == (2, 2, 1, 0)


def raise_in_a_cycle() -> None:
    first = UpstreamFailedError("a", "b", "failed")
    second = UpstreamFailedError("c", "d", "failed")
    first.__cause__ = second
    second.__cause__ = first  # (user code can make a cycle of causes)
    raise first


def test_a_cycle_of_causes_a_body_raised_does_not_hang_its_dependents(runner: TaskRunner) -> None:
    with runner:
        up = runner.submit(raise_in_a_cycle)
        down = runner.submit(double, {"x": up})
        err = down.exception(TIMEOUT)
    assert isinstance(err, UpstreamFailedError)
    assert err.upstream_name == "raise_in_a_cycle"
    assert isinstance(err.__cause__, UpstreamFailedError)
