"""One local Ray cluster (two CPUs) for a test module: ``shared_cluster`` holds a lease on this
process's Ray connection, so every ``RayTaskRunner(init_kwargs=INIT)`` in the module shares it
instead of starting its own (a start takes seconds).

The cluster's processes are that fixture's: Ray starts and stops workers as it likes (and again
after a body's worker is killed), so a module using it also takes ``no_child_process_left_behind``
from here, which leaves them out of each test's leak check, and the fixture checks at its end
that every one of them is gone. Ray pickles with its own cloudpickle: ``by_value`` makes a
module's bodies travel by value, since Ray's workers cannot import the tests' modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import ray
import ray.cloudpickle
from helpers import TIMEOUT

from asyncflow._ray_connection import connect

INIT = {"num_cpus": 2, "include_dashboard": False}

by_value: Any = ray.cloudpickle.register_pickle_by_value  # (untyped)


def descendants() -> list[psutil.Process]:
    children: list[psutil.Process] = psutil.Process().children(recursive=True)
    return children


@pytest.fixture(scope="module", autouse=True)
def shared_cluster() -> Iterator[None]:
    before = {p.pid for p in descendants()}
    lease, ready = connect(None, INIT)
    try:
        ready.result(timeout=60)
        yield
    finally:
        lease.release().result(timeout=60)
    left = [p for p in descendants() if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=TIMEOUT)
    for p in alive:
        p.kill()
    assert not alive, f"the Ray cluster left processes running: {alive}"
    assert not ray.is_initialized()


@pytest.fixture
def no_child_process_left_behind() -> None:
    """(The conftest's check, left out: the cluster's processes are ``shared_cluster``'s.)"""
