"""Shared fixtures: every anyio test runs on asyncio and uvloop; no test may leak threads or
child processes."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from helpers import Stuck

THREAD_JOIN_DEADLINE = 5.0  # seconds, total, for all threads a test started
CHILD_EXIT_DEADLINE = 5.0  # seconds, total, for all child processes a test started
_PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>


def _adopt_orphans() -> None:
    """Make the test process the reaper of its orphaned descendants (Linux).

    A process started by a worker that has exited is re-parented to this process instead of to
    init: it stays a descendant, so the leak check below still sees it, and once it exits it is
    reaped here at once rather than whenever init gets to it.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_adopt_orphans()


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
def no_thread_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves behind any thread it started.

    Threads started during the test get a shared 5 s deadline to finish; whatever is
    still alive afterwards is reported by name. A module that sets ``FOREIGN_THREADS_KEPT``
    (one sharing a Ray cluster between its tests) leaves out foreign threads (started in C)
    that ran Python code: Ray's driver keeps such threads for as long as it is connected.
    """
    foreign_kept = getattr(request.module, "FOREIGN_THREADS_KEPT", False)
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
    alive = sorted(
        t.name
        for t in new_threads
        if t.is_alive() and not (foreign_kept and isinstance(t, threading._DummyThread))
    )
    if alive:
        pytest.fail(
            f"test left {len(alive)} thread(s) running after {THREAD_JOIN_DEADLINE:g} s: "
            + ", ".join(alive)
        )


@pytest.fixture(autouse=True)
def no_child_process_left_behind() -> Iterator[None]:
    """Fail a test that leaves behind any child process it started (worker processes and
    whatever they started in turn, even once their parent exited: see ``_adopt_orphans``).

    Children started during the test get a shared 5 s deadline to exit; whatever is still
    alive afterwards is reported, then killed so that later tests start clean.
    """
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    yield
    new = [child for child in me.children(recursive=True) if child.pid not in before]
    if not new:
        return
    # A wait on the processes themselves (it also reaps children that already exited).
    _, alive = psutil.wait_procs(new, timeout=CHILD_EXIT_DEADLINE)
    if not alive:
        return
    described = sorted(_describe(child) for child in alive)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:  # noqa: PERF203 - exited meanwhile: nothing to kill
            pass
    psutil.wait_procs(alive, timeout=CHILD_EXIT_DEADLINE)
    pytest.fail(
        f"test left {len(described)} child process(es) running after "
        f"{CHILD_EXIT_DEADLINE:g} s: " + "; ".join(described)
    )


def _describe(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        command = "?"
    return f"pid {process.pid} ({command})"


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    """A stuck thread body, always released before the test ends (so no thread is left)."""
    s = Stuck()
    try:
        yield s
    finally:
        s.release()
