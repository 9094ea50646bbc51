"""Bad input: every mistake gets a clear message, and nothing else in the runner is affected."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from asyncflow import (
    Future,
    FutureList,
    Task,
    ThreadPoolTaskRunner,
    allow_failure,
    as_completed,
    get_settings,
    task,
    unmapped,
    wait,
)
from asyncflow.exceptions import (
    MappingLengthMismatch,
    MappingMissingIterable,
    SettingsError,
    TaskCancelledError,
    UpstreamFailedError,
)

TIMEOUT = 5.0


# -- task bodies -------------------------------------------------------------------------------
def double(x: int) -> int:
    return x * 2


def add(x: int, y: int) -> int:
    return x + y


def collect(*args: int, x: int) -> tuple[tuple[int, ...], int]:
    return args, x


def hold(started: Callable[[], object], gate: threading.Event, value: int = 0) -> int:
    started()
    if not gate.wait(TIMEOUT):
        raise TimeoutError("the gate never opened")
    return value


@task
def increment(x: int) -> int:
    return x + 1


class BusyRunner:
    """A started runner with one run in flight (a bystander) that a bad call must not disturb."""

    def __init__(self, runner: ThreadPoolTaskRunner) -> None:
        self.runner = runner
        self._gate = threading.Event()
        started = threading.Event()
        self.bystander: Future[int] = runner.submit(
            hold, {"started": started.set, "gate": self._gate, "value": 7}
        )
        assert started.wait(TIMEOUT)

    def _live_runs(self) -> int:
        """Unfinished runs, counted on the loop thread by a probe run (not counting itself)."""
        sched = self.runner._scheduler
        assert sched is not None

        async def count() -> int:
            return sched.live_count - 1

        live: int = self.runner.submit(count).result(timeout=TIMEOUT)
        return live

    def check_unaffected(self) -> None:
        """The bystander is still running and finishes normally; a normal submit still works."""
        assert not self.bystander.done()
        assert self._live_runs() == 1  # nothing half-submitted was left behind
        self._gate.set()
        assert self.bystander.result(timeout=TIMEOUT) == 7
        assert self.runner.submit(double, {"x": 21}).result(timeout=TIMEOUT) == 42
        assert self.runner.map(add, {"x": [1, 2], "y": unmapped(10)}).result(TIMEOUT) == [11, 12]


@pytest.fixture
def busy() -> Iterator[BusyRunner]:
    with ThreadPoolTaskRunner(max_workers=2) as runner:
        s = BusyRunner(runner)
        try:
            yield s
        finally:
            s._gate.set()


# -- submit -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [42, "double", None, [double]], ids=repr)
def test_submit_of_a_non_callable_names_it(busy: BusyRunner, bad: object) -> None:
    with pytest.raises(TypeError, match="needs a task or a callable") as info:
        busy.runner.submit(bad, {})
    assert repr(bad) in str(info.value)
    busy.check_unaffected()


def test_parameter_with_an_unknown_name(busy: BusyRunner) -> None:
    with pytest.raises(
        TypeError, match=r"task 'double' got unexpected parameter\(s\) 'y'; its parameters: 'x'$"
    ):
        busy.runner.submit(double, {"x": 1, "y": 2})
    busy.check_unaffected()


def test_missing_required_parameter(busy: BusyRunner) -> None:
    with pytest.raises(TypeError, match=r"task 'add' is missing required parameter\(s\) 'y'"):
        busy.runner.submit(add, {"x": 1})
    with pytest.raises(TypeError, match=r"task 'add' is missing required parameter\(s\) 'x', 'y'"):
        busy.runner.submit(add)
    busy.check_unaffected()


def test_task_submit_with_arguments_that_do_not_bind(busy: BusyRunner) -> None:
    with pytest.raises(TypeError, match=r"task 'increment'.*too many positional arguments"):
        increment.submit(1, 2)
    with pytest.raises(TypeError, match=r"task 'increment' got unexpected parameter\(s\) 'z'"):
        increment.submit(z=1)
    with pytest.raises(TypeError, match=r"task 'increment' is missing required parameter"):
        increment.submit()
    busy.check_unaffected()


@pytest.mark.parametrize("bad", [[1, 2], (("x", 1),), "x=1"], ids=repr)
def test_parameters_not_a_dict(busy: BusyRunner, bad: Any) -> None:
    with pytest.raises(TypeError, match="parameters of task 'double' must be a dict"):
        busy.runner.submit(double, bad)
    with pytest.raises(TypeError, match="parameters of task 'double' must be a dict"):
        busy.runner.map(double, bad)
    busy.check_unaffected()


def test_wait_for_holding_a_non_future(busy: BusyRunner) -> None:
    good = busy.runner.submit(double, {"x": 1})
    with pytest.raises(TypeError, match="wait_for must hold asyncflow futures, got 42"):
        busy.runner.submit(double, {"x": 1}, wait_for=[good, 42])
    with pytest.raises(TypeError, match="wait_for must be a list of futures"):
        busy.runner.submit(double, {"x": 1}, wait_for=good)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wait_for must hold asyncflow futures"):
        increment.submit(1, wait_for=["not a future"])
    with pytest.raises(TypeError, match="dependencies must be a dict"):
        busy.runner.submit(double, {"x": 1}, dependencies=[good])  # type: ignore[arg-type]
    # A map's wait_for is checked the same way, and so it is when the map has no runs.
    for rows in ([1, 2], []):
        with pytest.raises(TypeError, match="wait_for must be a list of futures, not <Future"):
            busy.runner.map(double, {"x": rows}, wait_for=good)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="wait_for must be a list of futures, not 5"):
            busy.runner.map(double, {"x": rows}, wait_for=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="wait_for must hold asyncflow futures, got 42"):
            busy.runner.map(double, {"x": rows}, wait_for=iter([good, 42]))
    assert good.result(timeout=TIMEOUT) == 2
    busy.check_unaffected()


def test_waiting_on_non_futures(busy: BusyRunner) -> None:
    with pytest.raises(TypeError, match="expected asyncflow futures, got 3"):
        wait([busy.bystander, 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="expected asyncflow futures"):
        as_completed([1])  # type: ignore[list-item]
    busy.check_unaffected()


# -- timeouts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("timeout", "error", "message"),
    [
        (-1, ValueError, r"timeout must be >= 0, got -1"),
        (-0.1, ValueError, r"timeout must be >= 0, got -0\.1"),
        (float("nan"), ValueError, r"timeout must be >= 0, got nan"),
        ("1", TypeError, r"timeout must be a number of seconds or None, not '1'"),
    ],
)
def test_bad_timeouts_of_waits(
    busy: BusyRunner, timeout: Any, error: type[Exception], message: str
) -> None:
    f = busy.bystander
    calls: dict[str, Callable[[], object]] = {
        "result": lambda: f.result(timeout=timeout),
        "exception": lambda: f.exception(timeout=timeout),
        "wait": lambda: f.wait(timeout=timeout),
        "wait()": lambda: wait([f], timeout=timeout),
        "as_completed()": lambda: as_completed([f], timeout=timeout),
        "FutureList.result": lambda: FutureList([f]).result(timeout=timeout),
        "FutureList.wait": lambda: FutureList([f]).wait(timeout=timeout),
    }
    for call in calls.values():
        with pytest.raises(error, match=message):
            call()
    busy.check_unaffected()


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ASYNCFLOW_THREAD_POOL_MAX_WORKERS", "abc"),
        ("ASYNCFLOW_THREAD_POOL_MAX_WORKERS", "0"),
        ("ASYNCFLOW_THREAD_POOL_MAX_WORKERS", "-3"),
        ("ASYNCFLOW_EVENT_LOOP", "bogus"),
        ("ASYNCFLOW_CACHE_DIR", ""),  # (not the current directory)
        ("ASYNCFLOW_CACHE_DIR", "  "),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, busy: BusyRunner, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable) as info:
        ThreadPoolTaskRunner()
    assert repr(value) in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(SettingsError, match=variable):
        get_settings()
    # A runner that is already running is not affected by the environment changing.
    busy.check_unaffected()
    monkeypatch.delenv(variable)
    with ThreadPoolTaskRunner() as runner:
        assert runner.submit(double, {"x": 2}).result(timeout=TIMEOUT) == 4


def test_max_workers_zero_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_workers must be >= 1, got 0"):
        ThreadPoolTaskRunner(max_workers=0)
    with pytest.raises(ValueError, match="max_workers must be >= 1, got -2"):
        ThreadPoolTaskRunner(max_workers=-2)


@pytest.mark.parametrize("bad", ["3", 2.0, True], ids=repr)
def test_max_workers_of_the_wrong_type_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="max_workers must be an int") as info:
        ThreadPoolTaskRunner(max_workers=bad)
    assert repr(bad) in str(info.value)


# -- task options -------------------------------------------------------------------------------
def _body(x: int) -> int:
    return x


_BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"retries": -1}, ValueError, "retries must be >= 0"),
    ({"retries": 1.5}, TypeError, "retries must be an int"),
    ({"retry_delay": -1}, ValueError, "retry_delay must be >= 0"),
    ({"retry_delay": [1, -2]}, ValueError, "retry_delay must be >= 0"),
    ({"retry_delay": [1, "soon"]}, TypeError, "retry_delay must be a number"),
    ({"retry_delay": []}, ValueError, "retry_delay list must not be empty"),
    ({"retry_jitter": -0.5}, ValueError, "retry_jitter must be >= 0"),
    ({"retry_on": 42}, TypeError, "retry_on must be exception types or a predicate"),
    ({"retry_on": "ValueError"}, TypeError, "retry_on must be exception types or a predicate"),
    ({"retry_on": [ValueError, int]}, TypeError, "retry_on must be exception types"),
    ({"timeout": 0}, ValueError, "timeout must be > 0"),
    ({"timeout": -1}, ValueError, "timeout must be > 0, got -1"),
    ({"timeout": float("nan")}, ValueError, "timeout must be a real number, got NaN"),
    ({"retry_delay": float("nan")}, ValueError, "retry_delay must be a real number, got NaN"),
    ({"timeout": "1s"}, TypeError, "timeout must be a number"),
    ({"tags": [1]}, TypeError, "every tag must be a string"),
    ({"tags": "etl"}, TypeError, "tags must be an iterable of strings"),
    ({"on_completion": [42]}, TypeError, "on_completion must hold callables"),
    ({"on_failure": 3}, TypeError, "on_failure must be a callable or a list"),
    ({"cache_key": "key"}, TypeError, "cache_key must be callable"),
    ({"cache_expiration": -5}, ValueError, "cache_expiration must be >= 0"),
]


@pytest.mark.parametrize(("options", "error", "message"), _BAD_OPTIONS, ids=repr)
def test_invalid_task_options_raise_at_decoration(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=rf"@task\(\.\.\.\): {message}"):
        task(**options)(_body)
    with pytest.raises(error, match=f"task 'named': {message}"):
        task(name="named", **options)(_body)
    with pytest.raises(error, match=message):
        Task(_body, **options)
    with pytest.raises(error, match=message):
        task(_body).with_options(**options)


def _not_rejected(options: dict[str, Any], error: type[Exception], message: str) -> bool:
    """Whether ``task(**options)`` fails to reject the options at once with ``message``."""
    try:
        task(**options)
    except error as exc:
        return message not in str(exc)
    return True


def test_invalid_task_options_fail_before_a_function_is_given() -> None:
    # `task(...)` promises to validate its options at once, even before it decorates anything.
    accepted = [
        options
        for options, error, message in _BAD_OPTIONS
        if _not_rejected(options, error, message)
    ]
    assert accepted == []


def test_unknown_task_option() -> None:
    with pytest.raises(TypeError, match="bogus"):
        task(bogus=1)(_body)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"with_options\(\) got unknown option\(s\) 'bogus';"):
        task(_body).with_options(bogus=1)
    # A near miss is named with what it may have meant, and the options are listed.
    with pytest.raises(TypeError, match=r"'retry' \(did you mean 'retry_on' or 'retries'\?\)"):
        task(retry=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"'timout' \(did you mean 'timeout'\?\); the options"):
        task(_body).with_options(timout=3)
    with pytest.raises(TypeError, match="use @task"):
        task(_body, retries=1)  # type: ignore[call-overload]


def test_with_options_validates_and_leaves_the_original_alone(busy: BusyRunner) -> None:
    original = task(retries=2)(double)
    with pytest.raises(ValueError, match="retries must be >= 0"):
        original.with_options(retries=-1)
    assert original.retries == 2
    renamed = original.with_options(name="twice")
    assert renamed.name == "twice"
    assert original.name == "double"
    assert busy.runner.submit(renamed, {"x": 3}).result(timeout=TIMEOUT) == 6
    busy.check_unaffected()


def test_task_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="@task needs a callable, not 42"):
        task(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="task name must be a string"):
        task(name=3)(_body)  # type: ignore[call-overload]


# -- map ----------------------------------------------------------------------------------------
def test_map_with_nothing_iterable(busy: BusyRunner) -> None:
    with pytest.raises(MappingMissingIterable, match="task 'add'") as info:
        busy.runner.map(add, {"x": 1, "y": "text"})
    assert "unmapped" in str(info.value)
    with pytest.raises(MappingMissingIterable, match="task 'add'"):
        busy.runner.map(add, {"x": unmapped([1, 2]), "y": 3})
    with pytest.raises(MappingMissingIterable, match="task 'increment'"):
        increment.map(5)
    five = busy.runner.submit(add, {"x": 2, "y": 3})
    assert five.result(TIMEOUT) == 5
    with pytest.raises(
        MappingMissingIterable,
        match=r"the future given for 'x' \(task 'add'\) resolved to 5, which map does not",
    ):
        busy.runner.map(add, {"x": five, "y": 1})
    busy.check_unaffected()


def _a_list() -> list[str]:
    return ["a", "b"]


def _size(keys: Any) -> int:
    raise AssertionError("the body ran")


async def _asize(keys: Any) -> int:
    raise AssertionError("the body ran")


@pytest.mark.parametrize(
    "body",
    [task(_size), task(_asize), task(retries=1)(_size), task(timeout=5)(_asize)],
    ids=["thread", "coroutine", "thread with a policy", "coroutine with a policy"],
)
def test_an_input_in_a_set_whose_result_cannot_be_hashed_names_task_and_parameter(
    busy: BusyRunner, body: Task[..., int]
) -> None:
    key = busy.runner.submit(_a_list)
    for keys in ({key}, {key: 1}):
        run = busy.runner.submit(body, {"keys": keys})
        error = run.exception(timeout=TIMEOUT)
        assert isinstance(error, TypeError)
        assert str(error) == (
            f"task {body.name!r} did not run: its parameter 'keys' could not be rebuilt with the "
            "results of the futures in it (TypeError: unhashable type: 'list')"
        )
        assert isinstance(error.__cause__, TypeError)
    busy.check_unaffected()


class _Positives(tuple[Any, ...]):
    """A tuple whose every value, but a future, must be positive."""

    def __new__(cls, items: Iterable[Any]) -> _Positives:
        values = tuple(items)
        for n in values:
            if not isinstance(n, Future) and n <= 0:
                raise ValueError(f"values must be positive, not {n}")
        return super().__new__(cls, values)


def _minus_one() -> int:
    return -1


def test_what_else_rebuilding_an_input_s_container_raises_is_raised_as_it_is(
    busy: BusyRunner,
) -> None:
    run = busy.runner.submit(_size, {"keys": _Positives([busy.runner.submit(_minus_one)])})
    error = run.exception(timeout=TIMEOUT)
    assert type(error) is ValueError
    assert str(error) == "values must be positive, not -1"
    busy.check_unaffected()


def _no_items() -> list[int]:
    raise ValueError("bad input file")


def _exits() -> list[int]:
    raise SystemExit(3)


async def _waits_for_ever() -> list[int]:
    await asyncio.Event().wait()
    raise AssertionError("not cancelled")


def test_map_over_a_future_that_failed_names_the_task_and_its_upstream(busy: BusyRunner) -> None:
    # As a submit's run with that future as an input: UpstreamFailedError, the cause chained.
    items = busy.runner.submit(_no_items)
    for given in (items, allow_failure(items)):
        with pytest.raises(
            UpstreamFailedError,
            match="task 'add' did not run: its upstream task '_no_items' failed",
        ) as info:
            busy.runner.map(add, {"x": given, "y": unmapped(1)})
        assert isinstance(info.value.__cause__, ValueError)
        assert info.value.__cause__ is items.exception()
    # Over a run skipped for that failure: the cause is the first failure, not the skip's.
    skipped = busy.runner.submit(add, {"x": items, "y": 1})
    skipped.wait(TIMEOUT)
    with pytest.raises(UpstreamFailedError, match="its upstream task 'add' failed") as info:
        busy.runner.map(add, {"x": skipped, "y": unmapped(1)})
    assert info.value.__cause__ is items.exception()
    crashed = busy.runner.submit(_exits)
    with pytest.raises(UpstreamFailedError, match="its upstream task '_exits' crashed"):
        busy.runner.map(add, {"x": crashed, "y": unmapped(1)})
    cancelled = busy.runner.submit(_waits_for_ever)
    cancelled.cancel()
    cancelled.wait(TIMEOUT)
    with pytest.raises(
        TaskCancelledError,
        match=r"task 'add' was cancelled \(its upstream '_waits_for_ever' was cancelled\)",
    ):
        busy.runner.map(add, {"x": cancelled, "y": unmapped(1)})
    busy.check_unaffected()


def test_map_with_different_lengths_lists_each_length(busy: BusyRunner) -> None:
    with pytest.raises(MappingLengthMismatch) as info:
        busy.runner.map(add, {"x": [1, 2, 3], "y": [1, 2]})
    message = str(info.value)
    assert "task 'add'" in message
    assert "'x': 3" in message
    assert "'y': 2" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(MappingLengthMismatch, match=r"'x': 1.*'y': 4"):
        busy.runner.map(add, {"x": (1,), "y": range(4)})
    busy.check_unaffected()


def test_map_over_an_endless_iterator_beside_a_list_is_a_length_mismatch(
    busy: BusyRunner,
) -> None:
    # Iterators without a length are taken after the others, as far as the longest and one
    # more: an endless one cannot run for ever, a longer one is told apart.
    with pytest.raises(MappingLengthMismatch, match=r"'x': 3, 'y': more than 3\)"):
        busy.runner.map(add, {"x": [1, 2, 3], "y": itertools.count()})
    longer = iter(range(10))
    with pytest.raises(MappingLengthMismatch, match=r"'x': more than 2, 'y': 2\)"):
        busy.runner.map(add, {"x": longer, "y": [1, 2]})
    assert next(longer) == 3  # no further than that
    shorter = (i for i in range(1))
    with pytest.raises(MappingLengthMismatch, match=r"'x': 2, 'y': 1\)"):
        busy.runner.map(add, {"x": [1, 2], "y": shorter})
    with pytest.raises(MappingLengthMismatch, match=r"'x': 2, 'y': more than 2\)"):
        busy.runner.map(add, {"x": (i for i in range(2)), "y": itertools.count()})
    # With no length anywhere, they are read side by side: the endless one first too.
    endless = itertools.count()
    with pytest.raises(MappingLengthMismatch, match=r"'x': more than 2, 'y': 2\)"):
        busy.runner.map(add, {"x": endless, "y": iter([1, 2])})
    assert next(endless) == 3  # no further than that
    with pytest.raises(MappingLengthMismatch, match=r"'x': 2, 'y': more than 3, 'z': 3\)"):
        busy.runner.map(task(collect), {"x": iter([1, 2]), "y": iter(range(5)), "z": [1, 2, 3]})
    # As long as the others, they map as lists do (allow_failure around one too).
    mapped = busy.runner.map(
        add, {"x": (i for i in range(3)), "y": allow_failure(iter([10, 20, 30]))}
    )
    assert mapped.result(timeout=TIMEOUT) == [10, 21, 32]
    assert busy.runner.map(add, {"x": iter([1, 2]), "y": [3, 4]}).result(TIMEOUT) == [4, 6]
    together = busy.runner.map(add, {"x": iter([1, 2]), "y": (i * 10 for i in range(1, 3))})
    assert together.result(TIMEOUT) == [11, 22]
    busy.check_unaffected()


@pytest.mark.parametrize("rows", [[1, 2], []], ids=["two runs", "no run"])
def test_map_with_parameters_that_do_not_bind(busy: BusyRunner, rows: list[int]) -> None:
    with pytest.raises(TypeError, match=r"task 'add' is missing required parameter\(s\) 'y'"):
        busy.runner.map(add, {"x": rows})
    with pytest.raises(TypeError, match=r"task 'add' got unexpected parameter\(s\) 'yy'"):
        busy.runner.map(add, {"x": rows, "yy": rows})
    with pytest.raises(TypeError, match=r"task 'add' got unexpected parameter\(s\) 'z'"):
        busy.runner.map(add, {"x": rows, "y": unmapped(1), "z": 3})
    with pytest.raises(TypeError, match=r"parameter 'args' collects \*args and must be a list"):
        busy.runner.map(task(collect), {"args": unmapped(5), "x": rows})
    assert busy.runner.map(task(collect), {"args": unmapped((1,)), "x": rows}).result(
        timeout=TIMEOUT
    ) == [((1,), x) for x in rows]
    busy.check_unaffected()


def test_map_of_length_zero_is_an_empty_future_list(busy: BusyRunner) -> None:
    empty = busy.runner.map(add, {"x": [], "y": []})
    assert isinstance(empty, FutureList)
    assert empty == []
    assert empty.result(timeout=TIMEOUT) == []
    busy.check_unaffected()


# -- no runner ----------------------------------------------------------------------------------
def test_task_submit_outside_any_runner_says_so() -> None:
    with pytest.raises(RuntimeError, match=r"increment\.submit\(\) needs a runner"):
        increment.submit(1)
    with pytest.raises(RuntimeError, match=r"increment\.map\(\) needs a runner"):
        increment.map([1, 2])
    with ThreadPoolTaskRunner() as runner:
        assert increment.submit(1).result(timeout=TIMEOUT) == 2
    assert runner._scheduler is None
    # After the block, there is no runner again.
    with pytest.raises(RuntimeError, match="needs a runner"):
        increment.submit(1)
    assert increment(1) == 2  # calling the task runs the function directly
