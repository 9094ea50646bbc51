"""Shared fixtures: every anyio test runs on asyncio and uvloop; no test may leak threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Stuck

THREAD_JOIN_DEADLINE = 5.0  # seconds, total, for all threads a test started


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Run each ``@pytest.mark.anyio`` test on plain asyncio and on uvloop."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test that leaves behind any thread it started.

    Threads started during the test get a shared 5 s deadline to finish; whatever is
    still alive afterwards is reported by name.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_JOIN_DEADLINE
    new_threads = [t for t in threading.enumerate() if t not in before]
    for thread in new_threads:
        if isinstance(thread, threading._DummyThread):
            continue  # foreign (C-level) threads cannot be joined; still reported if alive
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        thread.join(timeout=remaining)
    alive = sorted(t.name for t in new_threads if t.is_alive())
    if alive:
        pytest.fail(
            f"test left {len(alive)} thread(s) running after {THREAD_JOIN_DEADLINE:g} s: "
            + ", ".join(alive)
        )


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    """A stuck thread body, always released before the test ends (so no thread is left)."""
    s = Stuck()
    try:
        yield s
    finally:
        s.release()
