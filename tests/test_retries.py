"""Retries: how many attempts, the waits between them, which failures are retried, run context."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from asyncflow import (
    RunContext,
    ThreadPoolTaskRunner,
    exponential_backoff,
    get_run_context,
    task,
)
from asyncflow.exceptions import TaskCancelledError, TaskCrashedError

TIMEOUT = 5.0  # seconds: the longest any single wait in these tests may take


# -- helpers -----------------------------------------------------------------------------------
class FakeSleep:
    """Stands in for the runner's wait between attempts: records each delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class GatedSleep:
    """A wait between attempts that lasts until the test opens it (asyncio, the caller's loop)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.sleeping = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.sleeping.set()
        await self.gate.wait()


class EndlessSleep:
    """A wait between attempts that never ends; ``sleeping`` is set when one starts."""

    def __init__(self) -> None:
        self.sleeping = threading.Event()

    async def __call__(self, delay: float) -> None:
        self.sleeping.set()
        await asyncio.Event().wait()


def runner_with(sleep: Callable[[float], Any], **kwargs: Any) -> ThreadPoolTaskRunner:
    runner = ThreadPoolTaskRunner(**kwargs)
    runner._sleep = sleep  # replaced before the runner starts: no real waiting between attempts
    return runner


# -- task bodies -------------------------------------------------------------------------------
def raise_in_turn(log: list[int], errors: list[BaseException]) -> str:
    """Attempt n raises ``errors[n - 1]``; once the errors run out, it returns."""
    attempt = get_run_context().attempt
    log.append(attempt)
    if attempt <= len(errors):
        raise errors[attempt - 1]
    return f"done on attempt {attempt}"


async def araise_in_turn(log: list[int], errors: list[BaseException]) -> str:
    attempt = get_run_context().attempt
    log.append(attempt)
    await asyncio.sleep(0)
    if attempt <= len(errors):
        raise errors[attempt - 1]
    return f"done on attempt {attempt}"


def double(x: int) -> int:
    return x * 2


def context() -> RunContext:
    return get_run_context()


async def acontext() -> RunContext:
    return get_run_context()


BODIES = pytest.mark.parametrize("body", [raise_in_turn, araise_in_turn], ids=["thread", "coro"])


def failures(n: int) -> list[BaseException]:
    return [ValueError(f"failure {i}") for i in range(1, n + 1)]


# -- how many attempts -------------------------------------------------------------------------
@BODIES
def test_a_failing_run_is_retried_until_it_succeeds(body: Callable[..., Any]) -> None:
    sleep = FakeSleep()
    log: list[int] = []
    with runner_with(sleep) as runner:
        f = runner.submit(task(retries=3)(body), {"log": log, "errors": failures(2)})
        assert f.result(timeout=TIMEOUT) == "done on attempt 3"
        stats = runner.statistics()
    assert log == [1, 2, 3]
    assert f.state.is_completed()
    assert len(sleep.delays) == 2  # one wait before each retry
    assert stats.retried == 2
    assert stats.completed == 1
    assert stats.failed == 0


@BODIES
def test_when_retries_are_exhausted_the_run_fails_with_the_last_error(
    body: Callable[..., Any],
) -> None:
    sleep = FakeSleep()
    log: list[int] = []
    with runner_with(sleep) as runner:
        f = runner.submit(task(retries=2)(body), {"log": log, "errors": failures(5)})
        with pytest.raises(ValueError, match="failure 3"):
            f.result(timeout=TIMEOUT)
    assert log == [1, 2, 3]
    assert f.state.is_failed()
    assert runner.statistics().retried == 2
    assert runner.statistics().failed == 1


@pytest.mark.parametrize("retries", [None, 0], ids=["unset", "zero"])
@BODIES
def test_without_retries_a_run_has_one_attempt(
    body: Callable[..., Any], retries: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASYNCFLOW_DEFAULT_RETRIES", raising=False)
    sleep = FakeSleep()
    log: list[int] = []
    with runner_with(sleep) as runner:
        f = runner.submit(task(retries=retries)(body), {"log": log, "errors": failures(1)})
        with pytest.raises(ValueError, match="failure 1"):
            f.result(timeout=TIMEOUT)
    assert log == [1]
    assert sleep.delays == []
    assert runner.statistics().retried == 0


# -- the waits between attempts ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("retry_delay", "expected"),
    [
        (2.5, [2.5, 2.5, 2.5, 2.5]),
        (0, [0.0, 0.0, 0.0, 0.0]),
        ([1, 2], [1.0, 2.0, 2.0, 2.0]),  # the last value repeats
        ((3,), [3.0, 3.0, 3.0, 3.0]),
        (lambda retry: retry * 10, [10.0, 20.0, 30.0, 40.0]),  # called with the retry number
        (exponential_backoff(1, max_delay=5), [1.0, 2.0, 4.0, 5.0]),
        (exponential_backoff(0.5), [0.5, 1.0, 2.0, 4.0]),
    ],
    ids=["number", "zero", "list", "tuple", "callable", "backoff-capped", "backoff"],
)
@BODIES
def test_retry_delay_sets_each_wait(
    body: Callable[..., Any], retry_delay: Any, expected: list[float]
) -> None:
    sleep = FakeSleep()
    log: list[int] = []
    with runner_with(sleep) as runner:
        t = task(retries=4, retry_delay=retry_delay)(body)
        assert runner.submit(t, {"log": log, "errors": failures(4)}).result(TIMEOUT)
    assert sleep.delays == expected
    assert log == [1, 2, 3, 4, 5]


def test_exponential_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    assert [exponential_backoff(1)(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]
    assert [exponential_backoff(0.25, max_delay=1)(n) for n in range(1, 6)] == [
        0.25,
        0.5,
        1,
        1,
        1,
    ]


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((-1,), ValueError, "base must be >= 0"),
        (("1",), TypeError, "base must be a number"),
        ((1, -2), ValueError, "max_delay must be >= 0"),
        ((1, math.nan), ValueError, "max_delay must be a real number, got NaN"),
    ],
    ids=repr,
)
def test_exponential_backoff_rejects_bad_values(
    args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"exponential_backoff: {message}"):
        exponential_backoff(*args)


def test_jitter_multiplies_each_wait_by_a_factor_between_1_and_1_plus_jitter() -> None:
    sleep = FakeSleep()
    log: list[int] = []
    with runner_with(sleep) as runner:
        t = task(retries=8, retry_delay=2, retry_jitter=0.5)(raise_in_turn)
        assert runner.submit(t, {"log": log, "errors": failures(8)}).result(TIMEOUT)
    assert len(sleep.delays) == 8
    assert all(2.0 <= d <= 3.0 for d in sleep.delays), sleep.delays
    assert len(set(sleep.delays)) > 1  # random factors, not the plain delay every time


@pytest.mark.parametrize("bad", [-1, "soon", math.nan, True], ids=repr)
def test_a_retry_delay_callable_returning_a_bad_value_fails_the_run(bad: Any) -> None:
    sleep = FakeSleep()
    log: list[int] = []
    with runner_with(sleep) as runner:
        t = task(retries=3, retry_delay=lambda _n: bad, name="flaky")(raise_in_turn)
        f = runner.submit(t, {"log": log, "errors": failures(3)})
        err = f.exception(timeout=TIMEOUT)
    assert isinstance(err, ValueError)
    assert "retry_delay of task 'flaky'" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert str(err.__cause__) == "failure 1"  # the body's own failure is kept
    assert log == [1]
    assert sleep.delays == []


def test_the_default_wait_is_a_real_sleep_on_the_loop() -> None:
    log: list[int] = []
    with ThreadPoolTaskRunner() as runner:
        t = task(retries=2, retry_delay=0.01)(raise_in_turn)
        assert runner.submit(t, {"log": log, "errors": failures(2)}).result(TIMEOUT) == (
            "done on attempt 3"
        )
    assert log == [1, 2, 3]


@pytest.mark.anyio
async def test_between_attempts_the_run_is_retrying_and_holds_no_worker() -> None:
    sleep = GatedSleep()
    log: list[int] = []
    runner = runner_with(sleep, max_workers=1)
    async with runner:
        f = runner.submit(
            task(retries=1, retry_delay=7)(raise_in_turn), {"log": log, "errors": failures(1)}
        )
        with anyio.fail_after(TIMEOUT):
            await sleep.sleeping.wait()
        assert f.state.is_retrying()
        assert f.state.name == "Retrying"
        assert not f.done()
        stats = runner.statistics()
        assert stats.retried == 1
        # The only worker is free while the run waits: another sync body runs meanwhile.
        with anyio.fail_after(TIMEOUT):
            assert await runner.submit(double, {"x": 21}) == 42
        assert not f.done()
        sleep.gate.set()
        with anyio.fail_after(TIMEOUT):
            assert await f == "done on attempt 2"
    assert sleep.delays == [7.0]
    assert log == [1, 2]


# -- which failures are retried ----------------------------------------------------------------
@pytest.mark.parametrize(
    "retry_on",
    [ConnectionError, [ConnectionError, TimeoutError], (OSError,)],
    ids=["one-type", "list", "base-class"],
)
@BODIES
def test_retry_on_exception_types(body: Callable[..., Any], retry_on: Any) -> None:
    sleep = FakeSleep()
    log: list[int] = []
    errors: list[BaseException] = [ConnectionError("flaky network"), KeyError("bad input")]
    with runner_with(sleep) as runner:
        f = runner.submit(task(retries=5, retry_on=retry_on)(body), {"log": log, "errors": errors})
        with pytest.raises(KeyError, match="bad input"):
            f.result(timeout=TIMEOUT)
    assert log == [1, 2]  # the KeyError was not retried although retries were left
    assert len(sleep.delays) == 1


@BODIES
def test_retry_on_predicate(body: Callable[..., Any]) -> None:
    sleep = FakeSleep()
    log: list[int] = []
    seen: list[BaseException] = []
    errors: list[BaseException] = [ValueError("transient 1"), ValueError("transient 2")]
    errors.append(ValueError("fatal"))

    def transient(exc: BaseException) -> bool:
        seen.append(exc)
        return "transient" in str(exc)

    with runner_with(sleep) as runner:
        f = runner.submit(task(retries=5, retry_on=transient)(body), {"log": log, "errors": errors})
        with pytest.raises(ValueError, match="fatal"):
            f.result(timeout=TIMEOUT)
    assert log == [1, 2, 3]
    assert seen == errors  # the predicate saw each failure itself


def test_a_raising_retry_on_predicate_is_logged_and_the_run_is_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    log: list[int] = []
    with runner_with(FakeSleep()) as runner:
        t = task(retries=3, retry_on=broken, name="guarded")(raise_in_turn)
        f = runner.submit(t, {"log": log, "errors": failures(1)})
        with (
            caplog.at_level(logging.ERROR, logger="asyncflow"),
            pytest.raises(ValueError, match="failure 1"),
        ):
            f.result(timeout=TIMEOUT)
    assert log == [1]
    records = [r for r in caplog.records if r.name == "asyncflow" and "guarded" in r.getMessage()]
    assert records, caplog.text
    assert "retry_on" in records[0].getMessage()


@pytest.mark.parametrize("crash", [SystemExit, KeyboardInterrupt], ids=lambda c: c.__name__)
def test_a_thread_body_that_crashes_is_not_retried(crash: type[BaseException]) -> None:
    log: list[int] = []
    with runner_with(FakeSleep()) as runner:
        f = runner.submit(task(retries=3)(raise_in_turn), {"log": log, "errors": [crash()]})
        f.wait(TIMEOUT)
    assert f.state.is_crashed()
    err = f.exception()
    assert isinstance(err, TaskCrashedError)
    assert isinstance(err.__cause__, crash)
    assert log == [1]
    assert runner.statistics().retried == 0


@pytest.mark.anyio
async def test_a_coroutine_body_that_crashes_is_not_retried() -> None:
    log: list[int] = []
    runner = runner_with(FakeSleep())
    async with runner:
        f = runner.submit(task(retries=3)(araise_in_turn), {"log": log, "errors": [SystemExit(3)]})
        with anyio.fail_after(TIMEOUT), pytest.raises(TaskCrashedError, match="SystemExit"):
            await f
    assert f.state.is_crashed()
    assert log == [1]
    assert runner.statistics().retried == 0


# -- cancellation is never retried --------------------------------------------------------------
async def wait_forever(log: list[int], started: threading.Event) -> None:
    log.append(get_run_context().attempt)
    started.set()
    await asyncio.Event().wait()


def test_a_run_cancelled_during_an_attempt_is_not_retried() -> None:
    log: list[int] = []
    started = threading.Event()
    sleep = FakeSleep()
    with runner_with(sleep) as runner:
        f = runner.submit(task(retries=3)(wait_forever), {"log": log, "started": started})
        assert started.wait(TIMEOUT)
        assert f.cancel() is True
        with pytest.raises(TaskCancelledError):
            f.result(timeout=TIMEOUT)
    assert f.state.is_cancelled()
    assert log == [1]
    assert sleep.delays == []
    assert runner.statistics().retried == 0
    assert runner.statistics().cancelled == 1


@BODIES
def test_a_run_cancelled_while_waiting_to_retry_is_not_retried(body: Callable[..., Any]) -> None:
    log: list[int] = []
    sleep = EndlessSleep()
    with runner_with(sleep) as runner:
        f = runner.submit(task(retries=3)(body), {"log": log, "errors": failures(3)})
        assert sleep.sleeping.wait(TIMEOUT)
        assert f.state.is_retrying()
        assert f.cancel() is True
        with pytest.raises(TaskCancelledError):
            f.result(timeout=TIMEOUT)
    assert f.state.is_cancelled()
    assert log == [1]


# -- runner defaults from the environment ------------------------------------------------------
def test_runner_default_retries_and_delay_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNCFLOW_DEFAULT_RETRIES", "2")
    monkeypatch.setenv("ASYNCFLOW_DEFAULT_RETRY_DELAY", "0.25")
    sleep = FakeSleep()
    runner = runner_with(sleep)
    monkeypatch.delenv("ASYNCFLOW_DEFAULT_RETRIES")  # read when the runner was made
    monkeypatch.delenv("ASYNCFLOW_DEFAULT_RETRY_DELAY")
    logs: dict[str, list[int]] = {k: [] for k in ("plain", "aplain", "unset", "zero", "own")}
    with runner:
        plain = runner.submit(raise_in_turn, {"log": logs["plain"], "errors": failures(2)})
        aplain = runner.submit(araise_in_turn, {"log": logs["aplain"], "errors": failures(2)})
        unset = runner.submit(
            task(name="unset")(raise_in_turn), {"log": logs["unset"], "errors": failures(5)}
        )
        zero = runner.submit(
            task(retries=0)(raise_in_turn), {"log": logs["zero"], "errors": failures(1)}
        )
        assert plain.result(TIMEOUT) == aplain.result(TIMEOUT) == "done on attempt 3"
        with pytest.raises(ValueError, match="failure 3"):
            unset.result(TIMEOUT)
        with pytest.raises(ValueError, match="failure 1"):
            zero.result(TIMEOUT)
        assert sleep.delays == [0.25] * 6  # plain, aplain and unset waited twice each
        own = runner.submit(
            task(retries=1, retry_delay=3)(raise_in_turn),
            {"log": logs["own"], "errors": failures(1)},
        )
        assert own.result(TIMEOUT) == "done on attempt 2"
    assert logs == {
        "plain": [1, 2, 3],
        "aplain": [1, 2, 3],
        "unset": [1, 2, 3],
        "zero": [1],  # an explicit retries=0 opts out of the default
        "own": [1, 2],
    }
    assert sleep.delays[-1] == 3.0  # a task's own delay wins over the default
    # A runner made without those variables does not retry.
    log: list[int] = []
    with runner_with(FakeSleep()) as other, pytest.raises(ValueError, match="failure 1"):
        other.submit(raise_in_turn, {"log": log, "errors": failures(1)}).result(TIMEOUT)
    assert log == [1]


def test_default_delay_applies_to_a_task_with_retries_but_no_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ASYNCFLOW_DEFAULT_RETRIES", raising=False)
    monkeypatch.setenv("ASYNCFLOW_DEFAULT_RETRY_DELAY", "1.5")
    sleep = FakeSleep()
    log: list[int] = []
    with runner_with(sleep) as runner:
        t = task(retries=2)(raise_in_turn)
        assert runner.submit(t, {"log": log, "errors": failures(2)}).result(TIMEOUT)
    assert sleep.delays == [1.5, 1.5]


# -- what a body knows about its run -----------------------------------------------------------
@pytest.mark.parametrize("body", [context, acontext], ids=["thread", "coro"])
@pytest.mark.parametrize("options", [{}, {"retries": 1}], ids=["plain", "driven"])
def test_run_context_inside_a_body(body: Callable[..., Any], options: dict[str, Any]) -> None:
    t = task(name="probe", tags=["etl", "db"], **options)(body)
    with ThreadPoolTaskRunner() as runner:
        f = runner.submit(t)
        ctx = f.result(timeout=TIMEOUT)
        other = runner.submit(t).result(timeout=TIMEOUT)
    assert isinstance(ctx, RunContext)
    assert ctx.task_name == "probe"
    assert ctx.task_run_id == f.task_run_id
    assert other.task_run_id != ctx.task_run_id
    assert ctx.attempt == 1
    assert ctx.tags == frozenset({"etl", "db"})
    assert ctx.task_key == f"{body.__module__}.{body.__qualname__}"


def test_run_context_outside_a_task_body_raises() -> None:
    with pytest.raises(RuntimeError, match="only available inside a task body"):
        get_run_context()
    with ThreadPoolTaskRunner(), pytest.raises(RuntimeError, match="inside a task body"):
        get_run_context()
