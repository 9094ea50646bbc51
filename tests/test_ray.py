"""RayTaskRunner: bodies on a Ray cluster, the graph and the policies here.

One local cluster (two CPUs) serves the whole module (``ray_cluster``). Bodies check in with the
contract suite's ``Hub`` (a socket), so nothing sleeps to let something happen.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import psutil
import pytest
import ray
import test_contract
from ray_cluster import (  # noqa: F401 - the module's fixtures
    INIT,
    by_value,
    descendants,
    no_child_process_left_behind,
    shared_cluster,
)
from test_contract import TIMEOUT, Hub, adouble, agated, double, gated

import asyncflow._ray_workers as ray_workers
from asyncflow import RayTaskRunner, allow_failure, get_run_context, task
from asyncflow.exceptions import (
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskCancelledError,
    TaskCrashedError,
    TaskTimeoutError,
    UpstreamFailedError,
    WorkerCrashedError,
)

by_value(sys.modules[__name__])
FOREIGN_THREADS_KEPT = True  # (see conftest: Ray's driver keeps its own)
by_value(test_contract)


def runner(**kwargs: Any) -> RayTaskRunner:
    return RayTaskRunner(init_kwargs=INIT, **kwargs)


@pytest.fixture
def hub() -> Iterator[Hub]:
    with Hub() as h:
        yield h


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def describe(x: object) -> str:
    return type(x).__name__


def context_and_pid() -> tuple[str, int, frozenset[str], int]:
    ctx = get_run_context()
    return ctx.task_name, ctx.attempt, ctx.tags, os.getpid()


@task(retries=2, tags=["ray"])
def flaky() -> int:
    attempt = get_run_context().attempt
    if attempt < 3:
        raise OSError(f"attempt {attempt}")
    return attempt


def leave(how: str) -> int:
    """Raise SystemExit or KeyboardInterrupt naming this worker's pid, or kill the worker."""
    if how == "exit":
        raise SystemExit(os.getpid())
    if how == "interrupt":
        raise KeyboardInterrupt(os.getpid())
    os._exit(7)


def block() -> None:
    """Never returns (unless its worker is killed)."""
    threading.Event().wait()


def pid() -> int:
    return os.getpid()


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def test_a_graph_of_sync_and_coroutine_bodies_runs_on_the_cluster() -> None:
    with runner() as r:
        a = r.submit(double, {"x": 1})
        b = r.submit(adouble, {"x": a})
        bad = r.submit(fail, {"x": b})
        skipped = r.submit(double, {"x": bad})
        accepted = r.submit(describe, {"x": allow_failure(bad)})
        mapped = r.map(double, {"x": [b, 5, 6]})
    assert b.result() == 4
    with pytest.raises(ValueError, match="bad 4"):
        bad.result()
    error = bad.exception()
    assert error is not None
    remote = error.__cause__  # its traceback on the worker
    assert isinstance(remote, RemoteTraceback)
    assert 'raise ValueError(f"bad {x}")' in remote.text
    assert isinstance(skipped.exception(), UpstreamFailedError)
    assert accepted.result() == "ValueError"
    assert mapped.result() == [8, 10, 12]


def test_bodies_run_in_ray_workers_and_know_their_run() -> None:
    with runner():
        named = task(name="ctx", tags=["a", "b"])(context_and_pid).submit()
        retried = flaky.submit()
    name, attempt, tags, worker = named.result()
    assert (name, attempt, tags) == ("ctx", 1, frozenset({"a", "b"}))
    assert worker != os.getpid()
    assert retried.result() == 3  # Ray's own retries are off: the task's two apply


def test_a_body_runs_only_when_a_cpu_is_free_and_a_cancelled_queued_one_never_runs(
    hub: Hub, tmp_path: Path
) -> None:
    mark = tmp_path / "ran"
    with runner() as r:
        first = r.submit(gated, {"hub": hub.address, "label": "a", "value": 1})
        second = r.submit(agated, {"hub": hub.address, "label": "b", "value": 2})
        assert sorted(hub.arrivals(2)) == ["a", "b"]  # both CPUs are taken
        queued = r.submit(touch, {"path": str(mark)})
        r.statistics()  # (taken on the loop: the submit before it is in)
        assert queued.state.is_pending()  # waits here, not in Ray's queue
        queued.cancel()
        hub.release("a", "b")
    assert (first.result(), second.result()) == (1, 2)
    with pytest.raises(TaskCancelledError):
        queued.exception()
    assert not mark.exists()


def test_sessions_at_once_fill_the_cluster_together(hub: Hub) -> None:
    # Both sessions share the process's connection, so they count the same two CPUs.
    with runner() as one, runner() as two:
        held = one.map(gated, {"hub": hub.address, "label": ["a", "b"]})
        assert sorted(hub.arrivals(2)) == ["a", "b"]  # both CPUs are taken
        waiting = two.submit(double, {"x": 4})
        two.statistics()  # (taken on the loop: the submit before it is in)
        assert waiting.state.is_pending()  # not sent: no CPU is free
        hub.release("a")
        assert waiting.result(timeout=TIMEOUT) == 8  # the CPU given back is the other's
        hub.release("b")
    assert held.result() == [0, 0]


def test_a_cpu_given_back_goes_to_the_session_that_waited_longest(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (No second look at the cluster's size meanwhile: only the hand-over wakes a session.)
    monkeypatch.setattr(ray_workers, "_RECOUNT", 3600.0)
    with runner() as one, runner() as two:
        first = one.map(gated, {"hub": hub.address, "label": ["a0", "a1", "a2", "a3"]})
        assert sorted(hub.arrivals(2)) == ["a0", "a1"]  # a2 and a3 wait for a CPU
        one.statistics()  # (taken on the loop: the map is in, and waits)
        other = two.submit(gated, {"hub": hub.address, "label": "b0"})
        two.statistics()
        hub.release("a0")
        assert hub.arrivals(1) == ["a2"]  # the first session waited first
        hub.release("a1")
        assert hub.arrivals(1) == ["b0"]  # then the second, before the first's next body
        hub.release("a2", "b0")
        assert hub.arrivals(1) == ["a3"]
        hub.release("a3")
    assert first.result() == [0, 0, 0, 0]
    assert other.result() == 0


class FakeSession:
    """Stands in for a session's backend in ``_Cpus``: records that it was woken."""

    def __init__(self, name: str, woken: list[str]) -> None:
        self.name, self._woken = name, woken

    def wake(self) -> None:
        self._woken.append(self.name)


def test_the_cpu_line_hands_a_cpu_to_the_next_session_when_the_first_leaves_it() -> None:
    cpus: Any = ray_workers._Cpus()
    cpus._total, cpus._counted_at = 1, float("inf")  # one CPU, never counted again
    woken: list[str] = []
    a, b, c = (FakeSession(name, woken) for name in "abc")
    assert cpus.take(a)
    assert not cpus.take(b)
    assert not cpus.take(c)  # in line: b, then c
    cpus.give_back(a)
    assert woken == ["b"]
    assert not cpus.take(a)  # b waited longer: a goes to the end of the line (and wakes b)
    assert woken == ["b", "b"]
    cpus.leave_line(b)  # b's queue emptied meanwhile: the CPU is c's
    assert woken == ["b", "b", "c"]
    assert cpus.take(c)
    cpus.forget(c)  # (its session ended, cut short): its CPU is free again, for a
    assert woken == ["b", "b", "c", "a"]
    cpus.give_back(c)  # (a body of c's ending late: its CPU was given back with the rest)
    assert woken == ["b", "b", "c", "a"]
    assert cpus.take(a)


def test_cpus_given_back_together_reach_every_session_in_line() -> None:
    cpus: Any = ray_workers._Cpus()
    cpus._total, cpus._counted_at = 2, float("inf")
    woken: list[str] = []
    x, a, b = (FakeSession(name, woken) for name in "xab")
    assert cpus.take(x)
    assert cpus.take(x)
    assert not cpus.take(a)
    assert not cpus.take(b)  # in line: a, then b
    cpus.forget(x)  # two CPUs free at once
    assert woken == ["a"]
    assert cpus.take(a)  # one more is free: a wakes the next in line
    assert woken == ["a", "b"]
    assert cpus.take(b)
    # A session refused while a CPU is free (another is ahead of it) wakes the one ahead: were
    # that one's wake-up lost, the CPU would wait for it for ever.
    assert not cpus.take(x)  # in line: x
    cpus.give_back(a)
    assert woken == ["a", "b", "x"]
    assert not cpus.take(a)  # x is ahead: a is refused, and x is woken again
    assert woken == ["a", "b", "x", "x"]
    assert cpus.take(x)


def test_a_cancel_kills_the_worker_running_the_body(hub: Hub) -> None:
    with runner() as r:
        stuck = r.submit(gated, {"hub": hub.address, "label": "stuck"})
        hub.arrivals(1)
        worker = psutil.Process(hub.pid("stuck"))
        stuck.cancel()
        worker.wait(TIMEOUT)  # (raises TimeoutExpired if the body still runs)
        after = r.submit(double, {"x": 21})
    with pytest.raises(TaskCancelledError):
        stuck.exception()
    assert after.result() == 42


def test_a_timed_out_body_is_stopped_and_gives_its_cpu_back(hub: Hub) -> None:
    with runner() as r:
        slow = task(timeout=0.2)(block).submit()
        assert isinstance(slow.exception(timeout=TIMEOUT), TaskTimeoutError)
        # Both CPUs are free again: two bodies run at once.
        both = r.map(gated, {"hub": hub.address, "label": ["x", "y"]})
        assert sorted(hub.arrivals(2)) == ["x", "y"]
        hub.release("x", "y")
    assert both.result() == [0, 0]


@pytest.mark.parametrize("how", ["exit", "interrupt"])
def test_a_body_that_raises_systemexit_or_keyboardinterrupt_crashes_its_run_not_its_worker(
    how: str,
) -> None:
    with runner() as r:
        left = r.submit(leave, {"how": how})
        after = r.submit(double, {"x": 2}, wait_for=[allow_failure(left)])
        error = left.exception()
        assert type(error) is TaskCrashedError
        raised = error.__cause__
        assert isinstance(raised, SystemExit if how == "exit" else KeyboardInterrupt)
        assert left.state.is_crashed()
        assert psutil.Process(raised.args[0]).is_running()  # its worker lives on
    assert after.result() == 4


def test_a_worker_that_dies_fails_its_run_with_worker_crashed_and_others_go_on() -> None:
    with runner() as r:
        dead = r.submit(leave, {"how": "die"})
        fine = r.submit(double, {"x": 4})
    assert isinstance(dead.exception(), WorkerCrashedError)
    assert "Ray worker died" in str(dead.exception())
    assert dead.state.is_crashed()
    assert fine.result() == 8


def test_an_argument_ray_cannot_pickle_is_named() -> None:
    with runner() as r:
        bad = r.submit(describe, {"x": threading.Lock()})
    error = bad.exception()
    assert isinstance(error, SerializationError)
    assert "parameter 'x'" in str(error)
    assert "the Ray cluster" in str(error)


def test_a_body_the_workers_cannot_load_fails_its_run_saying_why() -> None:
    # helpers.double travels by reference, and Ray's workers cannot import the tests' modules.
    with runner() as r:
        lost = r.submit(helpers.double, {"x": 1})
    error = lost.exception()
    assert isinstance(error, SerializationError)
    assert error.direction == "arguments"
    assert "cannot be loaded on the Ray worker" in str(error)
    assert "No module named 'helpers'" in str(error)
    assert lost.state.is_failed()


class TwoArgsError(Exception):
    """Pickles, and does not load back (its __init__ wants two arguments)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def raise_two_args() -> None:
    raise TwoArgsError(1, 2)


def give_lock() -> threading.Lock:
    return threading.Lock()


def raise_ray_error() -> None:
    raise ray.exceptions.GetTimeoutError("the body's own get timed out")


def submit_inside() -> None:
    double_task.submit(1)


double_task = task(double)


class LoadsOnlyThereError(Exception):
    """Pickles anywhere, and does not load in the process ``pid`` (the tests'): there, loading
    it raises ``refusal`` (an Exception, or a KeyboardInterrupt)."""

    def __init__(self, pid: int, refusal: str) -> None:
        super().__init__(pid, refusal)
        self.pid, self.refusal = pid, refusal

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_elsewhere, (self.pid, self.refusal))


def _load_elsewhere(pid: int, refusal: str) -> LoadsOnlyThereError:
    if os.getpid() == pid:
        raise (
            KeyboardInterrupt("loading it here")
            if refusal == "interrupt"
            else ValueError("it does not load here")
        )
    return LoadsOnlyThereError(pid, refusal)


def give_loads_only_there(pid: int) -> LoadsOnlyThereError:
    return LoadsOnlyThereError(pid, "value")


def raise_loads_only_there(pid: int) -> None:
    raise LoadsOnlyThereError(pid, "interrupt")


def test_what_does_not_load_here_fails_its_run_saying_so() -> None:
    with runner() as r:
        result = r.submit(give_loads_only_there, {"pid": os.getpid()})
        raised = r.submit(raise_loads_only_there, {"pid": os.getpid()})
        after = r.submit(double, {"x": 5}, wait_for=[allow_failure(result), allow_failure(raised)])
    error = result.exception()
    assert isinstance(error, SerializationError)
    assert error.direction == "result"
    assert "its result cannot be loaded here" in str(error)
    assert result.state.is_failed()
    # Loading the error raised KeyboardInterrupt here: what it was is still said, and the
    # session went on.
    remote = raised.exception()
    assert isinstance(remote, RemoteError)
    assert remote.type_name == "LoadsOnlyThereError"
    assert raised.state.is_failed()
    assert after.result() == 10


def test_what_a_body_raises_or_returns_that_does_not_travel_fails_its_run_saying_what() -> None:
    with runner() as r:
        odd = r.submit(raise_two_args)
        lock = r.submit(give_lock)
        own = r.submit(raise_ray_error)
        nested = r.submit(submit_inside)
    odd_error = odd.exception()
    assert isinstance(odd_error, RemoteError)  # as from a worker process
    assert (odd_error.type_name, odd_error.remote_message) == ("TwoArgsError", "1-2")
    assert isinstance(odd_error.__cause__, RemoteTraceback)
    assert "raise TwoArgsError(1, 2)" in odd_error.__cause__.text
    assert odd.state.is_failed()
    lock_error = lock.exception()
    assert isinstance(lock_error, SerializationError)
    assert lock_error.direction == "result"
    assert "cannot pickle" in str(lock_error)
    # A Ray error the body raised itself is the body's error, not Ray's failure.
    assert type(own.exception()) is ray.exceptions.GetTimeoutError
    assert own.state.is_failed()
    with pytest.raises(RuntimeError, match=r"not available on a cluster's worker \(Dask, Ray\)"):
        nested.result()


def test_sessions_at_once_share_the_connection_and_other_options_are_refused() -> None:
    with runner() as one, runner() as two:
        assert one.submit(double, {"x": 1}).result() + two.submit(double, {"x": 2}).result() == 6
        other = RayTaskRunner(init_kwargs={"num_cpus": 1})
        with pytest.raises(RuntimeError, match="one connection per process"), other:
            pass
    assert ray.is_initialized()  # (still the module's)
    with runner() as again:  # the refused one left nothing behind
        assert again.submit(double, {"x": 3}).result() == 6


@pytest.mark.anyio
async def test_async_with_awaits_results_from_the_cluster() -> None:
    async with runner() as r:
        a = r.submit(adouble, {"x": 3})
        b = r.submit(double, {"x": a})
        assert await b == 12


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"address": ""}, TypeError, "address must be a non-empty str"),
        ({"address": 6379}, TypeError, "address must be a non-empty str"),
        ({"init_kwargs": ["num_cpus"]}, TypeError, "init_kwargs must be a dict"),
        ({"init_kwargs": {1: 2}}, TypeError, "init_kwargs must be a dict"),
        ({"init_kwargs": {"address": "auto"}}, ValueError, "address="),
    ],
)
def test_bad_options_are_refused_naming_them(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RayTaskRunner(**kwargs)
