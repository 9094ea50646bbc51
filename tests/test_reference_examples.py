"""The reference's ThreadPoolTaskRunner examples, with asyncflow in place of the reference."""

from __future__ import annotations

import threading

import pytest

from asyncflow import ThreadPoolTaskRunner, flow, task
from asyncflow._context import current_runner

TIMEOUT = 5.0


@task
def some_io_bound_task(x: int) -> int:
    # making a query to a database, reading a file, etc.
    return x * 2


def test_thread_pool_task_runner_with_a_flow() -> None:
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=3))  # use at most 3 threads at a time
    def my_io_bound_flow() -> list[int]:
        futures = []
        for i in range(10):
            future = some_io_bound_task.submit(i * 100)
            futures.append(future)

        return [future.result() for future in futures]

    assert my_io_bound_flow() == [i * 200 for i in range(10)]
    # The flow can run again: each call gets its own runner session.
    assert my_io_bound_flow() == [i * 200 for i in range(10)]


def test_the_flow_uses_at_most_max_workers_threads() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    threads: set[int] = set()

    @task
    def counted_io_bound_task(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.get_ident())
        with lock:
            running -= 1
        return x * 2

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
    def my_io_bound_flow() -> list[int]:
        futures = [counted_io_bound_task.submit(i * 100) for i in range(10)]
        return [future.result() for future in futures]

    assert my_io_bound_flow() == [i * 200 for i in range(10)]
    assert 1 <= peak <= 3
    assert 1 <= len(threads) <= 3
    assert threading.get_ident() not in threads


def test_thread_pool_task_runner_as_a_context_manager() -> None:
    # Use the runner directly
    with ThreadPoolTaskRunner(max_workers=2) as runner:
        future1 = runner.submit(some_io_bound_task, {"x": 1})
        future2 = runner.submit(some_io_bound_task, {"x": 2})

        result1 = future1.result()  # 2
        result2 = future2.result()  # 4

    assert result1 == 2
    assert result2 == 4


def test_max_workers_configured_via_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set via environment variable
    monkeypatch.setenv("ASYNCFLOW_THREAD_POOL_MAX_WORKERS", "8")
    seen: list[int] = []

    @flow(task_runner=ThreadPoolTaskRunner())  # Uses 8 workers from setting
    def my_flow() -> None:
        runner = current_runner.get()
        assert isinstance(runner, ThreadPoolTaskRunner)
        seen.append(runner.max_workers)
        assert some_io_bound_task.submit(4).result(timeout=TIMEOUT) == 8

    assert my_flow.task_runner is not None
    assert isinstance(my_flow.task_runner, ThreadPoolTaskRunner)
    assert my_flow.task_runner.max_workers == 8
    assert my_flow() is None
    assert seen == [8]
