"""Futures inside parameters are inputs; ``quote``, ``wait_for``, ``allow_failure``; ``map``."""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import dataclasses
import gc
import io
import tempfile
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import BaseModel, ConfigDict

import asyncflow._futures as futures_module
from asyncflow import (
    Future,
    FutureList,
    StateType,
    Task,
    ThreadPoolTaskRunner,
    allow_failure,
    quote,
    task,
    unmapped,
)
from asyncflow.exceptions import (
    MappingLengthMismatch,
    MappingMissingIterable,
    TaskCancelledError,
    UpstreamFailedError,
)

WAIT = 5.0  # seconds: the hang guard of every blocking wait


@pytest.fixture
def runner() -> Iterator[ThreadPoolTaskRunner]:
    with ThreadPoolTaskRunner(max_workers=4) as r:
        yield r
        # A failed assertion must not leave a run behind for the exit to wait on forever.
        r.cancel_all()


# -- bodies ---------------------------------------------------------------------------------


def one() -> int:
    return 1


def two() -> int:
    return 2


async def athree() -> int:
    await asyncio.sleep(0)
    return 3


def ident(x: Any) -> Any:
    return x


async def aident(x: Any) -> Any:
    await asyncio.sleep(0)
    return x


def boom() -> int:
    raise ValueError("boom")


def gated_boom(gate: threading.Event) -> int:
    """Raise once the test opens ``gate`` (every run below it is waiting by then)."""
    if not gate.wait(WAIT):
        raise TimeoutError("gate never opened")
    raise ValueError("boom")


def gated(gate: threading.Event, value: Any) -> Any:
    """Return ``value`` once the test opens ``gate``."""
    if not gate.wait(WAIT):
        raise TimeoutError("gate never opened")
    return value


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def total(xs: list[int]) -> int:
    return sum(xs)


def pair(x: Any, s: Any) -> tuple[Any, Any]:
    return (x, s)


# -- futures anywhere in parameters ---------------------------------------------------------


class Point(NamedTuple):
    x: Any
    y: Any


@dataclasses.dataclass
class Box:
    a: Any
    b: Any = None


@dataclasses.dataclass(frozen=True)
class FrozenBox:
    a: Any
    b: Any = None


@dataclasses.dataclass(slots=True)
class SlotBox:
    a: Any
    b: Any = None


class Model(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    a: Any
    b: list[Any]


class FrozenModel(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    a: Any
    b: Any


class MyList(list[Any]):
    pass


Builder = Callable[[Future[Any], Future[Any]], tuple[Any, Any]]

CONTAINERS: dict[str, Builder] = {
    "list": lambda f, g: ([f, [g, 5]], [1, [2, 5]]),
    "list-subclass": lambda f, g: (MyList([f, g]), MyList([1, 2])),
    "tuple": lambda f, g: ((f, (g,), "s"), (1, (2,), "s")),
    "namedtuple": lambda f, g: (Point(f, g), Point(1, 2)),
    "set": lambda f, g: ({f, g, 7}, {1, 2, 7}),
    "frozenset": lambda f, g: (frozenset({f, g}), frozenset({1, 2})),
    "deque": lambda f, g: (collections.deque([f, g], maxlen=3), collections.deque([1, 2])),
    "dict-values": lambda f, g: ({"a": f, "b": [g]}, {"a": 1, "b": [2]}),
    "dict-keys": lambda f, g: ({f: "one", g: "two"}, {1: "one", 2: "two"}),
    "ordereddict": lambda f, g: (
        collections.OrderedDict([(f, g)]),
        collections.OrderedDict([(1, 2)]),
    ),
    "dataclass": lambda f, g: (Box(f, [g]), Box(1, [2])),
    "frozen-dataclass": lambda f, g: (FrozenBox(f, g), FrozenBox(1, 2)),
    "slots-dataclass": lambda f, g: (SlotBox(f, g), SlotBox(1, 2)),
    "pydantic": lambda f, g: (Model(a=f, b=[g, 3]), Model(a=1, b=[2, 3])),
    "frozen-pydantic": lambda f, g: (FrozenModel(a=f, b=(g,)), FrozenModel(a=1, b=(2,))),
    "nested": lambda f, g: (
        {"k": [Box(a=(f,), b={g: FrozenBox(f)})]},
        {"k": [Box(a=(1,), b={2: FrozenBox(1)})]},
    ),
}


def _check_inputs_done(x: Any, ups: list[Future[Any]]) -> Any:
    # The upstreams come quoted: the body sees the futures themselves and checks they are final.
    for f in ups:
        assert isinstance(f, Future)
        assert f.done(), f"started before its input {f!r} finished"
    return x


async def _acheck_inputs_done(x: Any, ups: list[Future[Any]]) -> Any:
    return _check_inputs_done(x, ups)


@pytest.mark.parametrize("body", [_check_inputs_done, _acheck_inputs_done], ids=["sync", "async"])
@pytest.mark.parametrize("kind", list(CONTAINERS))
def test_futures_in_containers_are_inputs(
    runner: ThreadPoolTaskRunner, kind: str, body: Callable[..., Any]
) -> None:
    gate = threading.Event()
    f = runner.submit(gated, {"gate": gate, "value": 1})
    g = runner.submit(gated, {"gate": gate, "value": 2})
    value, expected = CONTAINERS[kind](f, g)
    down = runner.submit(body, {"x": value, "ups": quote([f, g])})
    assert not down.done()
    gate.set()
    got = down.result(timeout=WAIT)
    assert got == expected
    assert type(got) is type(expected)


def test_a_deque_keeps_its_length_limit(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(one, {})
    queue = collections.deque([f, 2], maxlen=3)
    got = runner.submit(ident, {"x": queue}).result(timeout=WAIT)
    assert (got, got.maxlen) == (collections.deque([1, 2]), 3)
    assert queue[0] is f  # the caller's deque is left as it was


def test_callers_containers_are_not_changed(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(one, {})
    items = [f, {"k": f}]
    box = Box(f, items)
    assert runner.submit(ident, {"x": box}).result(timeout=WAIT) == Box(1, [1, {"k": 1}])
    assert box.a is f
    assert box.b is items
    assert items[0] is f
    assert items[1] == {"k": f}


def test_future_list_parameter_arrives_as_a_list_of_results(
    runner: ThreadPoolTaskRunner,
) -> None:
    fl = runner.map(square, {"x": [1, 2, 3]})
    got = runner.submit(ident, {"x": fl}).result(timeout=WAIT)
    assert got == [1, 4, 9]
    # Results, not futures: a FutureList around plain values would break its own methods.
    assert type(got) is list


def test_fan_in_of_ten_thousand_inputs(runner: ThreadPoolTaskRunner) -> None:
    ups = [runner.submit(aident, {"x": i}) for i in range(10_000)]
    assert runner.submit(total, {"xs": ups}).result(timeout=30) == sum(range(10_000))


def test_same_future_twice_is_fine(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(athree, {})
    assert runner.submit(add, {"x": f, "y": f}).result(timeout=WAIT) == 6


# -- quote ------------------------------------------------------------------------------------


def test_quoted_future_arrives_as_the_future(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(one, {})
    got = runner.submit(ident, {"x": quote(f)}).result(timeout=WAIT)
    assert got is f


def test_quote_is_not_searched_and_adds_no_edge(runner: ThreadPoolTaskRunner) -> None:
    gate = threading.Event()
    up = runner.submit(gated, {"gate": gate, "value": "up"})
    payload = [up, {"k": up}]

    def release(x: list[Any]) -> bool:
        # Runs while ``up`` is still blocked: quote made no edge to it.
        assert x is payload
        assert x[0] is up
        was_done: bool = up.done()
        gate.set()
        return was_done

    down = runner.submit(release, {"x": quote(payload)})
    assert down.result(timeout=WAIT) is False
    assert up.result(timeout=WAIT) == "up"


def test_quote_of_failed_future_does_not_fail_downstream(runner: ThreadPoolTaskRunner) -> None:
    bad = runner.submit(boom, {})
    bad.wait(WAIT)
    got = runner.submit(ident, {"x": quote([bad])}).result(timeout=WAIT)
    assert got == [bad]


# -- wait_for -------------------------------------------------------------------------------


def test_wait_for_orders_without_passing_data(runner: ThreadPoolTaskRunner) -> None:
    gate = threading.Event()
    order: list[str] = []

    def first() -> str:
        assert gate.wait(WAIT)
        order.append("first")
        return "data"

    up = runner.submit(first, {})

    def second() -> bool:  # takes no parameter: wait_for passes no data
        order.append("second")
        return up.done()

    down = runner.submit(second, {}, wait_for=[up])
    assert not down.done()
    gate.set()
    assert down.result(timeout=WAIT) is True
    assert order == ["first", "second"]


def test_task_submit_wait_for(runner: ThreadPoolTaskRunner) -> None:
    gate = threading.Event()
    up = runner.submit(gated, {"gate": gate, "value": 1})
    checker = task(_check_inputs_done)
    down = checker.submit("x", quote([up]), wait_for=[up])
    gate.set()
    assert down.result(timeout=WAIT) == "x"


def test_failed_wait_for_fails_downstream(runner: ThreadPoolTaskRunner) -> None:
    bad = runner.submit(Task(boom, name="bad"), {})
    down = runner.submit(Task(one, name="down"), {}, wait_for=[bad])
    exc = down.exception(timeout=WAIT)
    assert isinstance(exc, UpstreamFailedError)
    assert exc.upstream_name == "bad"
    assert isinstance(exc.__cause__, ValueError)
    assert down.state.name == "UpstreamFailed"


def test_allow_failure_in_wait_for(runner: ThreadPoolTaskRunner) -> None:
    bad = runner.submit(boom, {})
    ok = runner.submit(two, {})
    assert runner.submit(one, {}, wait_for=[allow_failure(bad), ok]).result(timeout=WAIT) == 1
    # Around a list of futures inside wait_for.
    wrapped = runner.submit(one, {}, wait_for=[allow_failure([bad, ok])])
    assert wrapped.result(timeout=WAIT) == 1
    # allow_failure around one upstream does not cover another.
    other = runner.submit(Task(boom, name="other"), {})
    down = runner.submit(one, {}, wait_for=[allow_failure(bad), other])
    exc = down.exception(timeout=WAIT)
    assert isinstance(exc, UpstreamFailedError)
    assert exc.upstream_name == "other"


# -- allow_failure on data ------------------------------------------------------------------


def test_allow_failure_passes_the_exception_object(runner: ThreadPoolTaskRunner) -> None:
    bad = runner.submit(boom, {})
    ok = runner.submit(one, {})
    got = runner.submit(ident, {"x": allow_failure(bad)}).result(timeout=WAIT)
    assert got is bad.exception()
    assert isinstance(got, ValueError)
    # Around a list of futures, and nested containers.
    got = runner.submit(aident, {"x": allow_failure([ok, bad])}).result(timeout=WAIT)
    assert got[0] == 1
    assert got[1] is bad.exception()
    got = runner.submit(ident, {"x": allow_failure({"k": Box(bad)})}).result(timeout=WAIT)
    assert got["k"].a is bad.exception()


def test_allow_failure_still_needs_completed_when_not_wrapped(
    runner: ThreadPoolTaskRunner,
) -> None:
    bad = runner.submit(boom, {})
    down = runner.submit(ident, {"x": [allow_failure(bad), bad]})
    assert isinstance(down.exception(timeout=WAIT), UpstreamFailedError)


# -- failed and cancelled upstreams ---------------------------------------------------------


def test_failed_upstream_chain_keeps_the_root_cause(runner: ThreadPoolTaskRunner) -> None:
    root = runner.submit(Task(boom, name="root"), {})
    middle = runner.submit(Task(ident, name="middle"), {"x": [root]})
    leaf = runner.submit(Task(aident, name="leaf"), {"x": {"k": middle}})
    with pytest.raises(UpstreamFailedError) as info:
        leaf.result(timeout=WAIT)
    exc = info.value
    assert exc.task_name == "leaf"
    assert exc.upstream_name == "middle"
    assert "'leaf'" in str(exc)
    assert "'middle'" in str(exc)
    assert leaf.state.type is StateType.FAILED
    assert leaf.state.name == "UpstreamFailed"
    mid_exc = middle.exception()
    assert isinstance(mid_exc, UpstreamFailedError)
    assert mid_exc.upstream_name == "root"
    assert mid_exc.__cause__ is root.exception()
    assert exc.__cause__ is root.exception()  # the first failure, not the middle's own error
    assert isinstance(mid_exc.__cause__, ValueError)
    assert str(mid_exc.__cause__) == "boom"


def test_a_failure_down_a_long_chain_clears_each_exception_once(
    runner: ThreadPoolTaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Row 33: work per task is O(1). Each run down the chain ends with an error whose cause is
    # the root's: the frames of the chain are cleared once, not again at every link.
    cleared: list[object] = []
    monkeypatch.setattr(futures_module, "_clear_traceback_frame", cleared.append)
    gate = threading.Event()
    root = runner.submit(Task(gated_boom, name="root"), {"gate": gate})
    last = root
    for _ in range(2_000):
        last = runner.submit(ident, {"x": last})
    gate.set()
    with pytest.raises(UpstreamFailedError):
        last.result(timeout=WAIT)
    assert 0 < len(cleared) < 20  # the frames of the root's traceback, when it ended


def test_a_skip_leaves_the_traceback_of_an_upstream_error_being_handled_alone(
    runner: ThreadPoolTaskRunner,
) -> None:
    # One exception object is the upstream's, its dependents' cause, and what .result() raised
    # here: a dependent skipped while it is handled does not change what it shows.
    up = runner.submit(boom, {})
    try:
        up.result(timeout=WAIT)
    except ValueError:
        before = traceback.format_exc()
        down = runner.submit(ident, {"x": up})
        assert isinstance(down.exception(WAIT), UpstreamFailedError)
        assert traceback.format_exc() == before
    assert "up.result(timeout=WAIT)" in before


def test_upstream_failed_after_submit(runner: ThreadPoolTaskRunner) -> None:
    gate = threading.Event()

    def late_boom() -> int:
        assert gate.wait(WAIT)
        raise KeyError("late")

    up = runner.submit(Task(late_boom, name="late"), {})
    calls: list[int] = []

    def down_body(x: int) -> None:
        calls.append(x)

    down = runner.submit(down_body, {"x": up})
    gate.set()
    exc = down.exception(timeout=WAIT)
    assert isinstance(exc, UpstreamFailedError)
    assert exc.upstream_name == "late"
    assert exc.__cause__ is up.exception()
    assert calls == []


def test_cancelled_upstream_cancels_downstream(runner: ThreadPoolTaskRunner) -> None:
    started = threading.Event()
    calls: list[Any] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    def record(x: Any = None) -> None:
        calls.append(x)

    up = runner.submit(Task(forever, name="forever"), {})
    down = runner.submit(record, {"x": [up]})
    allowed = runner.submit(record, {"x": allow_failure(up)})
    gated_down = runner.submit(record, {}, wait_for=[allow_failure(up)])
    grand = runner.submit(record, {"x": down})
    assert started.wait(WAIT)
    assert up.cancel()
    for f in (up, down, allowed, gated_down, grand):
        f.wait(WAIT)
        assert f.state.type is StateType.CANCELLED, f
        with pytest.raises(TaskCancelledError):
            f.exception()
    with pytest.raises(TaskCancelledError, match="forever"):
        down.exception()
    assert calls == []


def test_cancelled_waiting_upstream_cancels_downstream(runner: ThreadPoolTaskRunner) -> None:
    gate = threading.Event()
    first = runner.submit(gated, {"gate": gate, "value": 1})
    middle = runner.submit(ident, {"x": first})
    leaf = runner.submit(ident, {"x": middle})
    assert middle.cancel()
    leaf.wait(WAIT)
    assert middle.state.is_cancelled()
    assert leaf.state.is_cancelled()
    gate.set()
    assert first.result(timeout=WAIT) == 1


# -- map --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["open", "named temporary", "codecs reader", "string io"])
def test_map_passes_a_file_object_whole(
    runner: ThreadPoolTaskRunner, tmp_path: Path, kind: str
) -> None:
    # File objects count as static values, whatever their class: not split into lines.
    path = tmp_path / "lines.txt"
    path.write_text("l1\nl2\nl3\n")
    with contextlib.ExitStack() as stack:
        if kind == "open":
            file: Any = stack.enter_context(path.open())
        elif kind == "named temporary":
            file = stack.enter_context(tempfile.NamedTemporaryFile("w+"))
            file.write("l1\nl2\nl3\n")
            file.seek(0)
        elif kind == "codecs reader":
            file = codecs.getreader("utf-8")(io.BytesIO(b"l1\nl2\nl3\n"))
        else:
            file = io.StringIO("l1\nl2\nl3\n")
        got = runner.map(pair, {"x": [1, 2], "s": file}).result(timeout=WAIT)
    assert [x for x, _ in got] == [1, 2]
    assert all(s is file for _, s in got)


class _Batch(list[str]):
    """A list with a ``write`` method: still a collection to map over, not a file."""

    def write(self, path: str) -> None:
        raise AssertionError("not called")


def test_map_maps_a_collection_that_has_a_write_method(runner: ThreadPoolTaskRunner) -> None:
    got = runner.map(pair, {"x": [1, 2], "s": _Batch(["a", "b"])}).result(timeout=WAIT)
    assert got == [(1, "a"), (2, "b")]


def test_map_element_wise_in_order(runner: ThreadPoolTaskRunner) -> None:
    fl = runner.map(add, {"x": [1, 2, 3], "y": (10, 20, 30)})
    assert isinstance(fl, FutureList)
    assert len(fl) == 3
    assert fl.result(timeout=WAIT) == [11, 22, 33]


def test_map_str_and_bytes_are_static(runner: ThreadPoolTaskRunner) -> None:
    assert runner.map(pair, {"x": [1, 2], "s": "ab"}).result(timeout=WAIT) == [
        (1, "ab"),
        (2, "ab"),
    ]
    assert runner.map(pair, {"x": [1, 2], "s": b"ab"}).result(timeout=WAIT) == [
        (1, b"ab"),
        (2, b"ab"),
    ]
    with pytest.raises(MappingMissingIterable):
        runner.map(pair, {"x": "abc", "s": b"xyz"})


def test_map_dict_maps_over_keys(runner: ThreadPoolTaskRunner) -> None:
    fl = runner.map(ident, {"x": {"a": 1, "b": 2, "c": 3}})
    assert fl.result(timeout=WAIT) == ["a", "b", "c"]


def test_map_consumes_generators(runner: ThreadPoolTaskRunner) -> None:
    gen = (i * i for i in range(4))
    assert runner.map(ident, {"x": gen}).result(timeout=WAIT) == [0, 1, 4, 9]
    assert next(gen, None) is None


def test_map_unmapped_goes_whole(runner: ThreadPoolTaskRunner) -> None:
    fl = runner.map(pair, {"x": [1, 2], "s": unmapped([7, 8, 9])})
    assert fl.result(timeout=WAIT) == [(1, [7, 8, 9]), (2, [7, 8, 9])]


def test_map_unmapped_future_is_one_input_for_every_child(
    runner: ThreadPoolTaskRunner,
) -> None:
    gate = threading.Event()
    f = runner.submit(gated, {"gate": gate, "value": 100})
    fl = runner.map(add, {"x": [1, 2], "y": unmapped(f)})
    assert not any(child.done() for child in fl)
    gate.set()
    assert fl.result(timeout=WAIT) == [101, 102]


def test_map_positional_only_and_kwargs(runner: ThreadPoolTaskRunner) -> None:
    assert task(posonly).map([5, 6], [1, 2]).result(timeout=WAIT) == [4, 4]
    assert runner.map(posonly, {"x": [5, 6], "y": unmapped(1)}).result(timeout=WAIT) == [4, 5]
    assert runner.map(kwonly, {"p": [1, 2], "q": unmapped("q")}).result(timeout=WAIT) == [
        {"p": 1, "q": "q"},
        {"p": 2, "q": "q"},
    ]


def test_map_length_mismatch_lists_lengths(runner: ThreadPoolTaskRunner) -> None:
    with pytest.raises(MappingLengthMismatch) as info:
        runner.map(add, {"x": [1, 2], "y": [1, 2, 3]})
    assert "'x': 2" in str(info.value)
    assert "'y': 3" in str(info.value)


def with_default(x: int, ys: tuple[int, ...] = (1, 2, 3)) -> tuple[int, tuple[int, ...]]:
    return (x, ys)


def test_map_never_maps_defaults(runner: ThreadPoolTaskRunner) -> None:
    expected = [(1, (1, 2, 3)), (2, (1, 2, 3))]
    assert runner.map(with_default, {"x": [1, 2]}).result(timeout=WAIT) == expected
    assert task(with_default).map([1, 2]).result(timeout=WAIT) == expected
    assert task(with_default).map(x=[1, 2]).result(timeout=WAIT) == expected


def test_map_over_future_list_has_per_child_edges(runner: ThreadPoolTaskRunner) -> None:
    gates = [threading.Event(), threading.Event()]

    def slow(i: int, gates: list[threading.Event]) -> int:
        assert gates[i].wait(WAIT)
        return i + 1

    ups = runner.map(slow, {"i": [0, 1], "gates": unmapped(gates)})
    downs = runner.map(square, {"x": ups})
    assert len(downs) == 2
    gates[0].set()
    # The first child needs only the first upstream: it finishes while the second is blocked.
    assert downs[0].result(timeout=WAIT) == 1
    assert not ups[1].done()
    assert not downs[1].done()
    gates[1].set()
    assert downs.result(timeout=WAIT) == [1, 4]


def test_map_over_future_list_with_allow_failure(runner: ThreadPoolTaskRunner) -> None:
    ups = FutureList([runner.submit(one, {}), runner.submit(boom, {})])
    got = runner.map(ident, {"x": allow_failure(ups)}).result(timeout=WAIT)
    assert got[0] == 1
    assert got[1] is ups[1].exception()
    plain = runner.map(ident, {"x": ups})
    assert plain[0].result(timeout=WAIT) == 1
    assert isinstance(plain[1].exception(timeout=WAIT), UpstreamFailedError)


def test_map_over_finished_future_of_a_list(runner: ThreadPoolTaskRunner) -> None:
    lst = runner.submit(ident, {"x": [1, 2, 3]})
    lst.wait(WAIT)
    assert runner.map(square, {"x": lst}).result(timeout=WAIT) == [1, 4, 9]


def test_map_waits_for_future_of_a_list_from_a_worker_thread() -> None:
    # One worker: the mapping body holds the only slot, so the list cannot be computed until
    # that body blocks inside map() (and lends its slot back while it waits).
    holder: dict[str, Future[Any]] = {}
    have_list = threading.Event()
    square_task = task(square)

    def mapper() -> tuple[bool, list[int]]:
        assert have_list.wait(WAIT)
        lst = holder["lst"]
        was_done = lst.done()
        children = square_task.map(lst)
        return was_done, children.result(timeout=WAIT)

    with ThreadPoolTaskRunner(max_workers=1) as runner:
        m = runner.submit(mapper, {})
        holder["lst"] = runner.submit(ident, {"x": [1, 2, 3]})
        have_list.set()
        assert m.result(timeout=WAIT) == (False, [1, 4, 9])


@pytest.mark.anyio
async def test_map_over_unfinished_future_from_loop_thread_raises() -> None:
    release = asyncio.Event()

    async def make_list() -> list[int]:
        await release.wait()
        return [1, 2, 3]

    async with ThreadPoolTaskRunner(max_workers=2) as runner:
        lst = runner.submit(make_list, {})
        with pytest.raises(RuntimeError, match="await"):
            runner.map(square, {"x": lst})
        release.set()
        assert await lst == [1, 2, 3]
        # Once finished, it maps on the loop thread too.
        assert await runner.map(square, {"x": lst}) == [1, 4, 9]
        # A FutureList needs no waiting: per-child edges.
        ups = runner.map(aident, {"x": [1, 2]})
        assert await runner.map(square, {"x": ups}) == [1, 4]


def test_map_length_zero(runner: ThreadPoolTaskRunner) -> None:
    fl = runner.map(square, {"x": []})
    assert isinstance(fl, FutureList)
    assert len(fl) == 0
    assert fl.result(timeout=WAIT) == []
    empty = runner.submit(ident, {"x": []})
    empty.wait(WAIT)
    assert len(runner.map(square, {"x": empty})) == 0
    assert len(runner.map(pair, {"x": [], "s": unmapped([1])})) == 0


# -- signatures -----------------------------------------------------------------------------


def everything(a: Any, /, b: Any, *args: Any, c: Any = 1, **kw: Any) -> tuple[Any, ...]:
    return (a, b, args, c, kw)


async def aeverything(a: Any, /, b: Any, *args: Any, c: Any = 1, **kw: Any) -> tuple[Any, ...]:
    await asyncio.sleep(0)
    return (a, b, args, c, kw)


def posonly(x: int, y: int, /) -> int:
    return x - y


def posonly_kw(a: Any, /, **kw: Any) -> tuple[Any, dict[str, Any]]:
    return (a, kw)


def varargs(*args: Any) -> tuple[Any, ...]:
    return args


def varargs_kw(*args: Any, **kw: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (args, kw)


def kwonly(**kw: Any) -> dict[str, Any]:
    return kw


@pytest.mark.parametrize("fn", [everything, aeverything], ids=["sync", "async"])
def test_star_args_kwargs_and_positional_only(
    runner: ThreadPoolTaskRunner, fn: Callable[..., Any]
) -> None:
    f1 = runner.submit(one, {})
    f2 = runner.submit(two, {})
    expected = (1, 2, (3, 4), 5, {"d": 6})
    by_dict = runner.submit(fn, {"a": 1, "b": 2, "args": [3, 4], "c": 5, "d": 6})
    assert by_dict.result(timeout=WAIT) == expected
    with_futures = runner.submit(fn, {"a": f1, "b": f2, "args": (3, 4), "c": 5, "d": 6})
    assert with_futures.result(timeout=WAIT) == expected
    t = task(fn)
    assert t.submit(1, 2, 3, 4, c=5, d=6).result(timeout=WAIT) == expected
    assert t.submit(f1, f2, 3, 4, c=5, d=6).result(timeout=WAIT) == expected
    assert t.submit(1, 2, f1, d=[f2]).result(timeout=WAIT) == (1, 2, (1,), 1, {"d": [2]})
    assert t.submit(1, 2).result(timeout=WAIT) == (1, 2, (), 1, {})


def test_positional_only(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(one, {})
    assert runner.submit(posonly, {"x": 5, "y": 3}).result(timeout=WAIT) == 2
    assert runner.submit(posonly, {"x": 5, "y": f}).result(timeout=WAIT) == 4
    assert task(posonly).submit(5, 3).result(timeout=WAIT) == 2
    assert task(posonly).submit(f, 3).result(timeout=WAIT) == -2


@pytest.mark.parametrize(
    ("fn", "args", "kwargs"),
    [
        (posonly_kw, (1,), {"a": 2}),
        (varargs_kw, (1,), {"args": 2}),
    ],
    ids=["positional-only-name", "varargs-name"],
)
def test_kwargs_key_named_like_another_parameter(
    runner: ThreadPoolTaskRunner,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    # Python lets **kwargs hold a key named like a positional-only or *args parameter; a
    # parameters dict has one slot per name, so submit refuses clearly instead of silently
    # passing the wrong value, and nothing runs.
    t = task(fn)
    t(*args, **kwargs)  # a direct call is fine
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=rf"keyword argument '{name}' for \*\*kwargs"):
        t.submit(*args, **kwargs)
    assert runner.statistics().submitted == 0


def test_varargs_and_kwargs_only(runner: ThreadPoolTaskRunner) -> None:
    f = runner.submit(one, {})
    assert runner.submit(varargs, {"args": (f, 2)}).result(timeout=WAIT) == (1, 2)
    assert task(varargs).submit(f, 2, [f]).result(timeout=WAIT) == (1, 2, [1])
    assert task(varargs).submit().result(timeout=WAIT) == ()
    assert runner.submit(kwonly, {"p": 1, "q": f}).result(timeout=WAIT) == {"p": 1, "q": 1}
    assert task(kwonly).submit(p=1, q=f).result(timeout=WAIT) == {"p": 1, "q": 1}


def test_submitted_plain_callable_is_not_kept_alive(runner: ThreadPoolTaskRunner) -> None:
    # Closures submitted in a loop must not pile up (with all they capture) once their runs
    # are over and the caller dropped them.
    def make() -> Callable[[int], int]:
        def double(x: int) -> int:
            return 2 * x

        return double

    fn = make()
    ref = weakref.ref(fn)
    assert runner.submit(fn, {"x": 2}).result(timeout=WAIT) == 4
    del fn
    gc.collect()
    assert ref() is None
