"""RayTaskRunner's connection: a cluster it starts is stopped on exit (every process of it gone:
the conftest's leak check), a start cancelled midway still stops what it started, and a
connection made beforehand with ``ray.init`` is used and left open. Each test starts a cluster
of its own (a few seconds each); ``test_ray.py`` holds the rest of the runner's tests.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import ray.cloudpickle
from helpers import TIMEOUT

from asyncflow import RayTaskRunner

by_value: Any = ray.cloudpickle.register_pickle_by_value  # (untyped)
by_value(sys.modules[__name__])  # (workers cannot import it)

SMALL = {"num_cpus": 1, "include_dashboard": False}


def triple(x: int) -> int:
    return x * 3


def _ray_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "asyncflow-ray"]


def test_a_runner_without_address_starts_a_local_cluster_and_stops_it_on_exit() -> None:
    assert not ray.is_initialized()
    with RayTaskRunner(init_kwargs=SMALL) as runner:
        assert ray.is_initialized()
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        assert resources["CPU"] == 1  # init_kwargs reached ray.init
        assert runner.submit(triple, {"x": 2}).result(timeout=TIMEOUT) == 6
    assert not ray.is_initialized()
    assert _ray_threads() == []


@pytest.mark.anyio
async def test_a_start_cancelled_midway_ends_cancelled_and_what_it_started_is_stopped() -> None:
    runner = RayTaskRunner(init_kwargs=SMALL)
    entering = asyncio.ensure_future(runner.__aenter__())
    await asyncio.sleep(0)  # (one turn: the start has asked Ray to connect, and waits)
    assert _ray_threads() == ["asyncflow-ray"]
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    # Free to enter again: this start waits for the one given up to end (its thread
    # disconnects as soon as it is connected), then connects anew.
    async with runner:
        assert await runner.submit(triple, {"x": 3}) == 9
    assert not ray.is_initialized()
    assert _ray_threads() == []


GIVE_UP = """
import asyncio
from asyncflow import RayTaskRunner

async def main():
    runner = RayTaskRunner(address="127.0.0.1:1")  # (nothing listens there)
    try:
        await asyncio.wait_for(runner.__aenter__(), 0.5)
    except TimeoutError:
        print("gave up")
    try:
        async with RayTaskRunner(init_kwargs={"num_cpus": 1}):
            pass
    except RuntimeError as exc:
        print("refused:", exc)

asyncio.run(main())
"""


def test_a_start_that_never_connects_can_be_given_up_and_other_options_are_refused_at_once() -> (
    None
):
    # Ray tries a wrong address for minutes: the start must not wait for that once cancelled,
    # and a session with other options must say why it cannot start, not wait.
    done = subprocess.run(
        [sys.executable, "-c", GIVE_UP], capture_output=True, text=True, timeout=60, check=False
    )
    printed = done.stdout.splitlines()
    assert printed[0] == "gave up", done.stderr
    assert printed[1].startswith("refused: RayTaskRunner: a connection to Ray that was given up")
    assert "address='127.0.0.1:1'" in printed[1]
    assert done.returncode == 0, done.stderr


def test_a_start_that_fails_leaves_ray_free_for_the_next_one() -> None:
    # This start fails after Ray's local node started: Ray's state in this process must not
    # point at that node's processes (they die with the thread that started them).
    failing = RayTaskRunner(
        init_kwargs={**SMALL, "runtime_env": {"working_dir": "/nonexistent-asyncflow-dir"}}
    )
    with pytest.raises(ValueError, match="nonexistent-asyncflow-dir"), failing:
        pass
    assert not ray.is_initialized()
    with RayTaskRunner(init_kwargs=SMALL) as runner:
        assert runner.submit(triple, {"x": 5}).result(timeout=TIMEOUT) == 15


@pytest.fixture
def own_connection() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)  # ray.init in the main thread sets its own
    ray.init(**SMALL)  # type: ignore[arg-type]
    try:
        yield
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, handler)


@pytest.mark.usefixtures("own_connection")
def test_a_connection_made_with_ray_init_is_used_and_left_open() -> None:
    with RayTaskRunner() as runner:
        assert runner.submit(triple, {"x": 4}).result(timeout=TIMEOUT) == 12
    assert ray.is_initialized()
    assert _ray_threads() == []  # this process's connection was not the runner's to make
    with pytest.raises(RuntimeError, match="already connected"), RayTaskRunner(init_kwargs=SMALL):
        pass
