"""Property: whatever the order of submits, cancels, gate openings and a final cancel_all, the
thread pool keeps its promises: never more bodies at once than ``max_workers``, first in first
out with one worker, every run final, and the body of a run whose cancel found it not running
never starts (a plain run whose body did start was Running when cancelled: the runner says so,
by run id, in the "keeps running" log record of an abandoned thread)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncflow import Future, ThreadPoolTaskRunner, task

WAIT = 30.0  # seconds: a hang guard only, never reached when things work

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(["gated", "open", "retried"])),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("open"), st.integers(0, 30)),
    ),
    min_size=1,
    max_size=30,
)


class _Abandoned(logging.Handler):
    """The run ids that the runner says were cancelled after a worker thread took them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.run_ids: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if "worker thread took it" in record.getMessage() and isinstance(record.args, tuple):
            self.run_ids.add(str(record.args[1]))


class _Bodies:
    """Task bodies that count how many run at once and in which order they start; body ``i``
    waits for gate ``i``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.started: list[int] = []
        self.gates: list[threading.Event] = []

    def body(self, i: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(i)
        try:
            if not self.gates[i].wait(WAIT):
                raise TimeoutError("a gate never opened")
        finally:
            with self.lock:
                self.running -= 1
        return i

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()


@contextlib.contextmanager
def _listening() -> Iterator[_Abandoned]:
    handler = _Abandoned()
    logger = logging.getLogger("asyncflow")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _play(
    bodies: _Bodies, max_workers: int, ops: list[tuple[str, Any]], cancel_all: bool
) -> tuple[list[Future[int]], list[str]]:
    """Run ``ops`` in one runner; the runs, and the kind of each."""
    retried = task(retries=1, name="body")(bodies.body)
    futures: list[Future[int]] = []
    kinds: list[str] = []
    with ThreadPoolTaskRunner(max_workers=max_workers) as runner:
        for kind, arg in ops:
            if kind == "submit":
                bodies.gates.append(threading.Event())
                if arg == "open":
                    bodies.gates[-1].set()
                fn = retried if arg == "retried" else bodies.body
                kinds.append(arg)
                futures.append(runner.submit(fn, {"i": len(futures)}))
            elif futures:
                i = arg % len(futures)
                if kind == "cancel":
                    futures[i].cancel()
                else:
                    bodies.gates[i].set()
        if cancel_all:
            runner.cancel_all()
        bodies.open_all()
    return futures, kinds


@PROPERTY_SETTINGS
@given(max_workers=st.integers(1, 3), ops=_OPS, cancel_all=st.booleans())
def test_thread_pool_bound_order_and_cancels_hold_in_any_order(
    max_workers: int, ops: list[tuple[str, Any]], cancel_all: bool
) -> None:
    bodies = _Bodies()
    with _listening() as abandoned:
        try:
            futures, kinds = _play(bodies, max_workers, ops, cancel_all)
        finally:
            bodies.open_all()

    assert bodies.peak <= max_workers
    assert all(f.done() for f in futures)
    started = bodies.started
    ran = set(started)
    assert len(ran) == len(started), "a body ran twice"
    for i, f in enumerate(futures):
        if f.cancelled():
            # A plain run's body that started: its cancel found it running, and said so. (A
            # run with retries is Running until its driver ends it, its body may have returned
            # by then: no thread is abandoned, nothing is said.)
            if i in ran and kinds[i] != "retried":
                assert str(f.task_run_id) in abandoned.run_ids, f"run {i} started after its cancel"
        else:
            assert f.result() == i
    if max_workers == 1:
        # (A run with retries queues its attempt a few loop turns after its submit: only the
        # plain runs keep their order against each other.)
        plain = [i for i in started if kinds[i] != "retried"]
        assert plain == sorted(plain), "one worker takes runs first in, first out"
