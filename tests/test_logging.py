"""Task run loggers and the ``asyncflow`` log level: records say which run logged them, from
coroutine, thread and process bodies alike."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import TIMEOUT

from asyncflow import ProcessPoolTaskRunner, ThreadPoolTaskRunner, get_run_logger
from asyncflow import _logging as flow_logging
from asyncflow.exceptions import SettingsError


@pytest.fixture(autouse=True)
def asyncflow_logger_restored() -> Iterator[None]:
    """Runners set the ``asyncflow`` logger's level: put it back as it was after each test."""
    flow_logger = logging.getLogger("asyncflow")
    level, applied = flow_logger.level, flow_logging._applied
    yield
    flow_logger.setLevel(level)
    flow_logging._applied = applied


def report(n: int) -> int:
    logger = get_run_logger()
    logger.debug("not shown at INFO")
    logger.info("working on %d", n, extra={"item": n})
    return os.getpid()


async def areport(n: int) -> int:
    return report(n)


def broken() -> None:
    table: dict[str, int] = {}
    try:
        table["missing"]
    except KeyError:
        get_run_logger().exception("lookup failed")


def run_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "asyncflow.task_runs"]


def check_record(record: logging.LogRecord, fut: Any, n: int) -> None:
    run_id = str(fut.task_run_id)
    assert record.levelno == logging.INFO
    assert record.getMessage() == f"[{fut.task_name} {run_id[-8:]}] working on {n}"
    assert record.task_name == fut.task_name  # type: ignore[attr-defined]
    assert record.task_run_id == run_id  # type: ignore[attr-defined]
    assert record.item == n  # type: ignore[attr-defined]


@pytest.mark.anyio
@pytest.mark.parametrize("body", [report, areport], ids=["thread", "coro"])
async def test_a_task_run_logger_names_its_run_in_thread_and_coroutine_bodies(
    body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncflow")
    async with ThreadPoolTaskRunner(max_workers=2) as runner:
        futures = [runner.submit(body, {"n": n}) for n in range(3)]
        for f in futures:
            assert await f == os.getpid()
    records = run_records(caplog)
    assert len(records) == 3  # the DEBUG ones are below the level
    by_run = {r.task_run_id: r for r in records}  # type: ignore[attr-defined]
    for n, f in enumerate(futures):
        check_record(by_run[str(f.task_run_id)], f, n)


@pytest.mark.parametrize("body", [report, areport], ids=["sync", "coro"])
def test_records_of_process_bodies_reach_the_parents_handlers(
    body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncflow")
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        futures = [runner.submit(body, {"n": n}) for n in range(2)]
        pids = [f.result(timeout=TIMEOUT) for f in futures]
    records = run_records(caplog)
    assert len(records) == 2  # the DEBUG ones were not even sent
    for n, (f, record) in enumerate(zip(futures, records, strict=True)):
        check_record(record, f, n)
        assert record.process == pids[n] != os.getpid()  # logged in the worker


def test_a_process_body_logs_its_exception_with_the_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asyncflow")
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        runner.submit(broken).result(timeout=TIMEOUT)
    (record,) = run_records(caplog)
    assert record.levelno == logging.ERROR
    assert record.getMessage().endswith("lookup failed")
    assert record.exc_text is not None
    assert "KeyError: 'missing'" in record.exc_text
    assert "Traceback" in caplog.text


def test_process_records_below_the_parents_level_are_not_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncflow")
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        runner.submit(report, {"n": 1}).result(timeout=TIMEOUT)
    assert run_records(caplog) == []


def test_get_run_logger_outside_a_task_body_says_what_to_use() -> None:
    with pytest.raises(RuntimeError, match=r"only available inside a task body.*getLogger"):
        get_run_logger()


# -- the level from the settings ---------------------------------------------------------------
def test_a_runner_gives_the_asyncflow_logger_the_level_of_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow_logger = logging.getLogger("asyncflow")
    flow_logger.setLevel(logging.NOTSET)
    monkeypatch.setenv("ASYNCFLOW_LOG_LEVEL", "debug")
    with ThreadPoolTaskRunner(max_workers=1):
        pass
    assert flow_logger.level == logging.DEBUG
    monkeypatch.setenv("ASYNCFLOW_LOG_LEVEL", "ERROR")
    with ThreadPoolTaskRunner(max_workers=1):
        pass
    assert flow_logger.level == logging.ERROR  # a level it set itself follows the settings


def test_a_level_the_application_set_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    flow_logger = logging.getLogger("asyncflow")
    flow_logger.setLevel(logging.CRITICAL)
    monkeypatch.setenv("ASYNCFLOW_LOG_LEVEL", "DEBUG")
    with ThreadPoolTaskRunner(max_workers=1):
        pass
    assert flow_logger.level == logging.CRITICAL


def test_an_invalid_log_level_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCFLOW_LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError, match="ASYNCFLOW_LOG_LEVEL='LOUD'"):
        ThreadPoolTaskRunner(max_workers=1)


SCRIPT = """
import logging, sys
from asyncflow import ThreadPoolTaskRunner, get_run_logger, task

if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.WARNING, format="app: %(message)s")

@task
def hello() -> None:
    get_run_logger().info("hello from a run")

with ThreadPoolTaskRunner(max_workers=1) as runner:
    runner.submit(hello).result()
"""


@pytest.mark.parametrize("how", ["bare", "configured"])
def test_task_run_records_show_once_whether_or_not_the_application_configured_logging(
    how: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ASYNCFLOW_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, how],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**env, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "hello from a run" in line]
    assert len(lines) == 1, done.stderr
    if how == "configured":
        assert lines[0].startswith("app: [hello ")  # the application's handler, not one of ours
    else:
        assert " INFO asyncflow.task_runs: [hello " in lines[0]  # the stderr handler added


def test_records_of_batched_process_calls_each_name_their_own_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asyncflow")
    with ProcessPoolTaskRunner(max_workers=1) as runner:
        futures = runner.map(report, {"n": range(40)})  # cheap calls: sent in batches
        futures.result(timeout=TIMEOUT)
    records = run_records(caplog)
    assert len(records) == 40
    by_run = {r.task_run_id: r for r in records}  # type: ignore[attr-defined]
    for n, f in enumerate(futures):
        check_record(by_run[str(f.task_run_id)], f, n)
