"""Random task graphs through the real runner agree with a plain sequential evaluation."""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncflow
from asyncflow import Future, StateType, Task, ThreadPoolTaskRunner, allow_failure
from asyncflow._scheduler import Scheduler
from asyncflow.exceptions import UpstreamFailedError

WAIT = 30.0  # seconds: a hang guard only, never reached when things work

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class BoomError(Exception):
    """The root failure of one node."""

    def __init__(self, node: int) -> None:
        super().__init__(f"node {node} failed")
        self.node = node


@dataclass(frozen=True)
class Node:
    inputs: tuple[tuple[int, bool], ...]  # (earlier node, edge allows failure)
    fails: bool
    is_async: bool


def _decode(i: int, word: int) -> Node:
    """One node from one 64-bit draw (cheap to generate for 200 nodes, and it shrinks well:
    zero is a sync node with no inputs that does not fail).

    Bits 0-2: number of inputs (0-4); bit 3: async; bits 4-7: fails when 15 (about one node
    in sixteen); then per input 12 bits for which earlier node (repeats allowed) and 2 bits,
    about one edge in four wrapped in ``allow_failure``.
    """
    # Mix the bits: generated integers favour extremes (all ones), which would make every
    # node fail. Zero still maps to zero.
    word = (word * 0x9E3779B97F4A7C15) & (2**64 - 1)
    count = (word & 0b111) % 5 if i else 0
    is_async = bool(word >> 3 & 1)
    fails = (word >> 4 & 0b1111) == 0b1111
    inputs = []
    for k in range(count):
        chunk = word >> (8 + 14 * k)
        inputs.append(((chunk & 0xFFF) % i, (chunk >> 12 & 0b11) == 0b11))
    return Node(inputs=tuple(inputs), fails=fails, is_async=is_async)


@st.composite
def dags(draw: st.DrawFn) -> list[Node]:
    """Up to 200 nodes; each takes a few earlier nodes as inputs."""
    n = draw(st.integers(min_value=1, max_value=200))
    words = draw(st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=n, max_size=n))
    return [_decode(i, w) for i, w in enumerate(words)]


class Recorder:
    """What the bodies saw, recorded from worker threads and the loop alike."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self.calls: dict[int, int] = {}
        self.started: dict[int, int] = {}
        self.finished: dict[int, int] = {}
        self.args: dict[int, list[Any]] = {}

    def begin(self, node: int, inputs: list[Any]) -> None:
        with self._lock:
            self.calls[node] = self.calls.get(node, 0) + 1
            self.started[node] = next(self._seq)
            self.args[node] = list(inputs)

    def end(self, node: int) -> None:
        with self._lock:
            self.finished[node] = next(self._seq)


def _compute(node: int, inputs: list[Any]) -> int:
    return node + sum(v if isinstance(v, int) else 1_000 for v in inputs)


def sync_body(rec: Recorder, node: int, fails: bool, inputs: list[Any]) -> int:
    rec.begin(node, inputs)
    try:
        if fails:
            raise BoomError(node)
        return _compute(node, inputs)
    finally:
        rec.end(node)


async def async_body(rec: Recorder, node: int, fails: bool, inputs: list[Any]) -> int:
    rec.begin(node, inputs)
    await asyncio.sleep(0)  # yield once: let other runs interleave
    try:
        if fails:
            raise BoomError(node)
        return _compute(node, inputs)
    finally:
        rec.end(node)


@dataclass(frozen=True)
class Expected:
    kind: str  # "value", "raise" or "upstream"
    value: int = 0
    bad_inputs: frozenset[int] = frozenset()


def evaluate(dag: list[Node]) -> list[Expected]:
    """The same graph, evaluated one node after the other."""
    out: list[Expected] = []
    for i, node in enumerate(dag):
        bad = frozenset(j for j, allow in node.inputs if out[j].kind != "value" and not allow)
        if bad:
            out.append(Expected("upstream", bad_inputs=bad))
        elif node.fails:
            out.append(Expected("raise"))
        else:
            values = [out[j].value if out[j].kind == "value" else "exc" for j, _ in node.inputs]
            out.append(Expected("value", _compute(i, values)))
    return out


def submit_all(runner: ThreadPoolTaskRunner, dag: list[Node], rec: Recorder) -> list[Future[Any]]:
    futures: list[Future[Any]] = []
    for i, node in enumerate(dag):
        t: Task[..., Any] = (
            Task(async_body, name=f"n{i}") if node.is_async else Task(sync_body, name=f"n{i}")
        )
        inputs = [allow_failure(futures[j]) if allow else futures[j] for j, allow in node.inputs]
        params = {"rec": rec, "node": i, "fails": node.fails, "inputs": inputs}
        futures.append(runner.submit(t, params))
    return futures


def _ancestors(dag: list[Node], i: int) -> set[int]:
    seen: set[int] = set()
    stack = [j for j, _ in dag[i].inputs]
    while stack:
        j = stack.pop()
        if j not in seen:
            seen.add(j)
            stack.extend(u for u, _ in dag[j].inputs)
    return seen


def check(dag: list[Node], futures: list[Future[Any]], rec: Recorder) -> None:
    expected = evaluate(dag)
    for i, (node, exp, fut) in enumerate(zip(dag, expected, futures, strict=True)):
        state = fut.state
        assert state.is_final()
        if exp.kind == "upstream":
            # Skipped: the body never ran.
            assert i not in rec.calls
            assert state.type is StateType.FAILED
            assert state.name == "UpstreamFailed"
            exc = fut.exception()
            assert isinstance(exc, UpstreamFailedError)
            assert exc.task_name == f"n{i}"
            named = {j for j in exp.bad_inputs if exc.upstream_name == f"n{j}"}
            assert len(named) == 1, (exc.upstream_name, exp.bad_inputs)
            (j,) = named
            # Its cause is the first failure: the upstream's own error, or that one's cause
            # when the upstream was skipped too (causes never nest down a chain).
            upstream = futures[j].exception()
            first = upstream.__cause__ if isinstance(upstream, UpstreamFailedError) else upstream
            assert exc.__cause__ is first
            root = exc.__cause__
            assert isinstance(root, BoomError)
            assert root.node in _ancestors(dag, i)
            assert expected[root.node].kind == "raise"
            continue
        # It ran, exactly once, after every input that ran had finished.
        assert rec.calls.get(i) == 1
        for j, _ in node.inputs:
            if j in rec.finished:
                assert rec.finished[j] < rec.started[i]
        for (j, allow), got in zip(node.inputs, rec.args[i], strict=True):
            if expected[j].kind == "value":
                assert got == expected[j].value
            else:
                assert allow
                assert got is futures[j].exception()
        if exp.kind == "raise":
            assert state.type is StateType.FAILED
            assert state.name == "Failed"
            exc = fut.exception()
            assert isinstance(exc, BoomError)
            assert exc.node == i
        else:
            assert state.is_completed()
            assert fut.result() == exp.value
    assert set(rec.calls) == {i for i, e in enumerate(expected) if e.kind != "upstream"}


async def _sizes(sched: Scheduler) -> tuple[int, int]:
    return sched.graph_size, sched.live_count


@PROPERTY_SETTINGS
@given(dag=dags())
def test_random_dag_sync_runner(dag: list[Node]) -> None:
    rec = Recorder()
    runner = ThreadPoolTaskRunner(max_workers=3)
    with runner:
        sched = runner._scheduler
        assert sched is not None
        futures = submit_all(runner, dag, rec)
        _, not_done = asyncflow.wait(futures, timeout=WAIT)
        assert not not_done
        # Read the scheduler on its own loop: whatever finished the last run is over by then.
        graph_size, live = asyncio.run_coroutine_threadsafe(_sizes(sched), sched.loop).result(5)
        assert graph_size == 0
        assert live == 0
    assert runner._scheduler is None
    assert sched.graph_size == 0
    assert sched.live_count == 0
    check(dag, futures, rec)


@pytest.mark.anyio
@PROPERTY_SETTINGS
@given(dag=dags())
async def test_random_dag_async_runner(dag: list[Node]) -> None:
    rec = Recorder()
    runner = ThreadPoolTaskRunner(max_workers=3)
    async with runner:
        sched = runner._scheduler
        assert sched is not None
        futures = submit_all(runner, dag, rec)
        _, not_done = await asyncflow.wait_async(futures, timeout=WAIT)
        assert not not_done
        assert sched.graph_size == 0
        assert sched.live_count == 0
    assert sched.graph_size == 0
    assert sched.live_count == 0
    check(dag, futures, rec)
