"""The dependency graph as a pure state machine: no loop, no threads, no futures.

The graph keeps its state in its nodes; these tests name nodes by strings and numbers through
``Named``, which hands the graph one node per name and its answers back as names.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from asyncflow._graph import Graph, Node, Outcome

C, F, X = Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED
N = TypeVar("N", bound=Hashable)


class _Named(Node, Generic[N]):
    __slots__ = ("name",)

    def __init__(self, name: N) -> None:
        self.name = name
        self._down = self._more = self._pending = None


class Named(Generic[N]):
    """A ``Graph`` whose nodes are named: the same calls and answers, with names for nodes
    (an answer keeps its containers' types: a tuple stays a tuple, a list a list)."""

    def __init__(self) -> None:
        self.graph: Graph[_Named[N]] = Graph()
        self.nodes: dict[N, _Named[N]] = {}

    def node(self, name: N) -> _Named[N]:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = _Named(name)
        return node

    def __len__(self) -> int:
        return len(self.graph)

    def add(self, name: N, upstream: Sequence[tuple[N, bool]]) -> bool:
        return self.graph.add(self.node(name), [(self.node(up), allow) for up, allow in upstream])

    def is_waiting(self, name: N) -> bool:
        return self.graph.is_waiting(self.node(name))

    def finish(
        self, name: N, outcome: Outcome
    ) -> tuple[Sequence[N], Sequence[tuple[N, N, Outcome]]]:
        return self._names(self.graph.finish(self.node(name), outcome))

    def cancel(self, name: N) -> tuple[Sequence[N], Sequence[tuple[N, N, Outcome]]]:
        return self._names(self.graph.cancel(self.node(name)))

    @staticmethod
    def _names(
        answer: tuple[Sequence[_Named[N]], Sequence[tuple[_Named[N], _Named[N], Outcome]]],
    ) -> tuple[Sequence[N], Sequence[tuple[N, N, Outcome]]]:
        ready, skipped = answer
        names = [node.name for node in ready]
        causes = [(node.name, cause.name, out) for node, cause, out in skipped]
        return (
            names if type(ready) is list else tuple(names),
            causes if type(skipped) is list else tuple(causes),
        )


def _edges(*ups: str, allow: bool = False) -> list[tuple[str, bool]]:
    return [(up, allow) for up in ups]


# -- single behaviours --------------------------------------------------------------------------


def test_node_without_upstream_is_ready_at_once() -> None:
    g: Named[str] = Named()
    assert g.add("a", []) is True
    assert len(g) == 0  # a ready node needs no state
    assert not g.is_waiting("a")
    assert g.finish("a", C) == ((), ())


def test_node_with_upstream_waits() -> None:
    g: Named[str] = Named()
    assert g.add("a", []) is True
    assert g.add("b", _edges("a")) is False
    assert g.is_waiting("b")
    assert len(g) == 2  # "b" waits, "a" is watched
    ready, skipped = g.finish("a", C)
    assert list(ready) == ["b"]
    assert list(skipped) == []
    assert not g.is_waiting("b")
    assert len(g) == 0


def test_diamond() -> None:
    g: Named[str] = Named()
    assert g.add("a", [])
    assert not g.add("b", _edges("a"))
    assert not g.add("c", _edges("a"))
    assert not g.add("d", _edges("b", "c"))
    ready, skipped = g.finish("a", C)
    assert sorted(ready) == ["b", "c"]
    assert list(skipped) == []
    assert g.finish("b", C) == ([], ())  # "d" still waits for "c"
    assert g.is_waiting("d")
    ready, skipped = g.finish("c", C)
    assert list(ready) == ["d"]
    assert list(skipped) == []
    assert g.finish("d", C) == ((), ())
    assert len(g) == 0


def test_ready_only_when_the_last_upstream_finishes() -> None:
    g: Named[str] = Named()
    ups = [f"u{i}" for i in range(5)]
    for up in ups:
        assert g.add(up, [])
    assert not g.add("down", _edges(*ups))
    for up in ups[:-1]:
        ready, skipped = g.finish(up, C)
        assert list(ready) == []
        assert list(skipped) == []
        assert g.is_waiting("down")
    ready, skipped = g.finish(ups[-1], C)
    assert list(ready) == ["down"]
    assert list(skipped) == []


def test_failed_upstream_skips_downstream_and_names_the_cause() -> None:
    g: Named[str] = Named()
    g.add("a", [])
    g.add("b", [])
    g.add("c", _edges("a", "b"))
    ready, skipped = g.finish("a", F)
    assert list(ready) == []
    assert list(skipped) == [("c", "a", F)]
    assert not g.is_waiting("c")
    # The other upstream finishing later changes nothing for the skipped node.
    assert g.finish("b", C) == ([], ())
    assert len(g) == 0


def _check_causes_first(finished: Hashable, skipped: Sequence[tuple[Any, Any, Outcome]]) -> None:
    """Each skipped node's cause is the finished key or a node skipped before it."""
    seen = {finished}
    for node, cause, _ in skipped:
        assert cause in seen, f"{node!r} skipped because of {cause!r}, which is not listed yet"
        seen.add(node)


def test_failure_cascades_to_every_descendant_causes_first() -> None:
    #      a
    #     / \
    #    b   c
    #    |\ / \
    #    | d   e
    #    |  \ /
    #    +---f --- g
    g: Named[str] = Named()
    g.add("a", [])
    g.add("b", _edges("a"))
    g.add("c", _edges("a"))
    g.add("d", _edges("b", "c"))
    g.add("e", _edges("c"))
    g.add("f", _edges("d", "e", "b"))
    g.add("g", _edges("f"))
    g.add("other", [])
    g.add("h", _edges("other"))  # unrelated: untouched by the failure
    ready, skipped = g.finish("a", F)
    assert list(ready) == []
    assert sorted(node for node, _, _ in skipped) == ["b", "c", "d", "e", "f", "g"]
    assert all(outcome is F for _, _, outcome in skipped)
    _check_causes_first("a", skipped)
    parents = {"b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": {"c"}, "f": {"d", "e", "b"}}
    parents["g"] = {"f"}
    for node, cause, _ in skipped:
        assert cause in parents[node]
    assert g.is_waiting("h")
    assert list(g.finish("other", C)[0]) == ["h"]
    assert len(g) == 0


def test_cancelled_upstream_cascades_as_cancelled() -> None:
    g: Named[str] = Named()
    g.add("a", [])
    g.add("b", _edges("a"))
    g.add("c", _edges("b"))
    ready, skipped = g.finish("a", X)
    assert list(ready) == []
    assert list(skipped) == [("b", "a", X), ("c", "b", X)]


def test_allow_failure_edge_runs_after_failed_upstream() -> None:
    g: Named[str] = Named()
    g.add("a", [])
    g.add("b", _edges("a", allow=True))
    ready, skipped = g.finish("a", F)
    assert list(ready) == ["b"]
    assert list(skipped) == []


def test_allow_failure_edge_still_skips_on_cancelled_upstream() -> None:
    g: Named[str] = Named()
    g.add("a", [])
    g.add("b", _edges("a", allow=True))
    ready, skipped = g.finish("a", X)
    assert list(ready) == []
    assert list(skipped) == [("b", "a", X)]


def test_allow_failure_after_skipped_upstream_runs() -> None:
    # "b" is skipped (it ends failed-upstream, a failure), so an allow_failure edge from it lets
    # "c" run; a plain edge from it does not.
    g: Named[str] = Named()
    g.add("a", [])
    g.add("b", _edges("a"))
    g.add("c", _edges("b", allow=True))
    g.add("d", _edges("b"))
    ready, skipped = g.finish("a", F)
    assert list(ready) == ["c"]
    assert list(skipped) == [("b", "a", F), ("d", "b", F)]


def test_duplicate_edges_to_the_same_upstream() -> None:
    def build() -> Named[str]:
        g: Named[str] = Named()
        g.add("a", [])
        assert not g.add("both", [("a", True), ("a", False)])
        assert not g.add("both_rev", [("a", False), ("a", True)])
        assert not g.add("allowed_twice", [("a", True), ("a", True)])
        assert not g.add("plain_twice", [("a", False), ("a", False)])
        return g

    g = build()
    ready, skipped = g.finish("a", C)
    assert sorted(ready) == ["allowed_twice", "both", "both_rev", "plain_twice"]
    assert list(skipped) == []
    assert len(g) == 0

    g = build()
    ready, skipped = g.finish("a", F)
    # One edge that does not allow failure is enough to skip the node.
    assert list(ready) == ["allowed_twice"]
    assert sorted(skipped) == [("both", "a", F), ("both_rev", "a", F), ("plain_twice", "a", F)]
    assert len(g) == 0

    g = build()
    ready, skipped = g.finish("a", X)
    assert list(ready) == []
    assert sorted(node for node, _, _ in skipped) == [
        "allowed_twice",
        "both",
        "both_rev",
        "plain_twice",
    ]
    assert len(g) == 0


def test_cancel_waiting_node() -> None:
    g: Named[str] = Named()
    g.add("a", [])
    g.add("b", _edges("a"))
    g.add("c", _edges("b"))
    g.add("d", _edges("a"))
    ready, skipped = g.cancel("b")
    assert list(ready) == []
    assert list(skipped) == [("c", "b", X)]
    assert not g.is_waiting("b")
    assert not g.is_waiting("c")
    # The upstream of the cancelled node finishing later does not revive it.
    ready, skipped = g.finish("a", C)
    assert list(ready) == ["d"]
    assert list(skipped) == []
    assert len(g) == 0


def test_cancel_running_node() -> None:
    g: Named[str] = Named()
    assert g.add("a", [])  # ready: "running" from the graph's point of view
    g.add("b", _edges("a", allow=True))
    g.add("c", _edges("a"))
    ready, skipped = g.cancel("a")
    assert list(ready) == []
    assert sorted(skipped) == [("b", "a", X), ("c", "a", X)]
    assert len(g) == 0


def test_cancel_node_nothing_waits_for() -> None:
    g: Named[str] = Named()
    assert g.add("a", [])
    assert g.cancel("a") == ((), ())
    assert len(g) == 0


def test_memory_follows_live_graph() -> None:
    g: Named[int] = Named()
    g.add(0, [])
    for i in range(1, 50):
        g.add(i, [(i - 1, False), (0, True)])
    assert len(g) == 98  # 1 .. 49 wait, 0 .. 48 are waited on
    ready = list(g.finish(0, C)[0])
    assert ready == [1]
    running = 1
    while ready:
        (running,) = ready
        ready = list(g.finish(running, C)[0])
        # Nodes running+2 .. 49 wait, running+1 .. 48 are waited on; the last one holds no
        # state once it is ready.
        assert len(g) == 2 * max(0, 48 - running)
    assert running == 49
    assert len(g) == 0


def test_long_chain_no_recursion_error() -> None:
    n = 100_000
    g: Named[int] = Named()
    g.add(0, [])
    for i in range(1, n):
        assert not g.add(i, [(i - 1, False)])
    # A failure at the root skips the whole chain in one call.
    ready, skipped = g.finish(0, F)
    assert list(ready) == []
    assert len(skipped) == n - 1
    assert skipped[0] == (1, 0, F)
    assert skipped[-1] == (n - 1, n - 2, F)
    assert len(g) == 0

    # And a chain that completes step by step.
    g = Named()
    g.add(0, [])
    for i in range(1, n):
        g.add(i, [(i - 1, False)])
    key = 0
    for expected in range(1, n):
        ready, skipped = g.finish(key, C)
        assert not skipped
        (key,) = ready
        assert key == expected
    assert g.finish(key, C) == ((), ())
    assert len(g) == 0


def test_wide_fan_in() -> None:
    n = 10_000
    g: Named[int] = Named()
    for i in range(n):
        assert g.add(i, [])
    assert not g.add(-1, [(i, False) for i in range(n)])
    for i in range(n - 1):
        assert g.finish(i, C) == ([], ())
    ready, skipped = g.finish(n - 1, C)
    assert list(ready) == [-1]
    assert list(skipped) == []
    assert len(g) == 0

    # A fan-out of 10,000 under one failing root, then a fan-in of all of them.
    g = Named()
    g.add(-2, [])
    for i in range(n):
        g.add(i, [(-2, False)])
    g.add(-1, [(i, False) for i in range(n)])
    ready, skipped = g.finish(-2, F)
    assert list(ready) == []
    assert len(skipped) == n + 1
    assert {node for node, _, _ in skipped} == {*range(n), -1}
    _check_causes_first(-2, skipped)
    assert len(g) == 0


# -- property: random DAGs, random outcomes, against a reference model --------------------------


@dataclass
class Model:
    """A reference of what the graph must say, computed from scratch after every step."""

    edges: dict[int, list[tuple[int, bool]]] = field(default_factory=dict)
    # Outcome of every node that reached a final state (ran, was skipped, or was cancelled).
    final: dict[int, Outcome] = field(default_factory=dict)
    waiting: set[int] = field(default_factory=set)  # added, inputs not all available
    running: set[int] = field(default_factory=set)  # ready, not finished
    ends: dict[int, int] = field(default_factory=dict)  # node -> times it was ready or skipped

    def bad(self, node: int, up: int) -> bool:
        """Whether ``up``'s final outcome keeps ``node`` from running."""
        return self._bad_in(self.final, node, up)

    def expected_after(self, outcome: Outcome) -> tuple[set[int], dict[int, Outcome]]:
        """Nodes that must be ready and skipped once the current finish is recorded."""
        final = dict(self.final)
        skipped: dict[int, Outcome] = {}
        changed = True
        while changed:
            changed = False
            for node in self.waiting - skipped.keys():
                ups = {u for u, _ in self.edges[node]}
                if any(u in final and self._bad_in(final, node, u) for u in ups):
                    skipped[node] = outcome
                    final[node] = outcome
                    changed = True
        ready = {
            node
            for node in self.waiting - skipped.keys()
            if all(u in final and not self._bad_in(final, node, u) for u, _ in self.edges[node])
        }
        return ready, skipped

    def _bad_in(self, final: dict[int, Outcome], node: int, up: int) -> bool:
        out = final[up]
        if out is Outcome.CANCELLED:
            return True
        if out is Outcome.FAILED:
            return any(not allow for u, allow in self.edges[node] if u == up)
        return False


def _apply(
    model: Model,
    key: int,
    outcome: Outcome,
    result: tuple[Sequence[int], Sequence[tuple[int, int, Outcome]]],
) -> None:
    """Check one ``finish``/``cancel`` answer against the model, then update the model."""
    ready, skipped = result
    # Every ready or skipped node is reported once in the answer.
    names = list(ready) + [node for node, _, _ in skipped]
    assert len(names) == len(set(names))
    model.final[key] = outcome
    model.waiting.discard(key)
    model.running.discard(key)
    expected_ready, expected_skipped = model.expected_after(outcome)
    assert set(ready) == expected_ready
    assert {node: out for node, _, out in skipped} == expected_skipped
    seen = {key}
    for node, cause, out in skipped:
        # The cause is a bad upstream of the node that is already known to be final.
        assert cause in seen
        assert any(u == cause for u, _ in model.edges[node])
        assert out is outcome
        seen.add(node)
        model.final[node] = out
        model.waiting.discard(node)
        model.ends[node] = model.ends.get(node, 0) + 1
    for node in ready:
        # Never ready before every upstream is final with a usable result.
        assert all(u in model.final and not model.bad(node, u) for u, _ in model.edges[node])
        model.waiting.discard(node)
        model.running.add(node)
        model.ends[node] = model.ends.get(node, 0) + 1


@st.composite
def dags(draw: st.DrawFn) -> list[list[tuple[int, bool]]]:
    n = draw(st.integers(min_value=1, max_value=30))
    nodes: list[list[tuple[int, bool]]] = []
    for i in range(n):
        if i == 0:
            nodes.append([])
            continue
        ups = draw(st.lists(st.integers(min_value=0, max_value=i - 1), max_size=4))
        nodes.append([(u, draw(st.booleans())) for u in ups])  # duplicates allowed on purpose
    return nodes


@settings(max_examples=60, deadline=None)
@given(dag=dags(), data=st.data())
def test_graph_matches_reference_model(
    dag: list[list[tuple[int, bool]]], data: st.DataObject
) -> None:
    g: Named[int] = Named()
    model = Model()
    outcomes = st.sampled_from([C, C, F, X])
    next_node = 0
    while next_node < len(dag) or model.running or model.waiting:
        choices = []
        if next_node < len(dag):
            choices.append("add")
        if model.running:
            choices.append("finish")
        if model.waiting:
            choices.append("cancel")
        if not choices:  # pragma: no cover - the loop condition guarantees one
            break
        action = data.draw(st.sampled_from(choices))
        if action == "add":
            node, next_node = next_node, next_node + 1
            ups = dag[node]
            model.edges[node] = ups
            # As the scheduler does: inputs already final are not graph edges; a bad one means
            # the node never enters the graph.
            if any(u in model.final and model.bad(node, u) for u, _ in ups):
                model.final[node] = next(
                    model.final[u] for u, _ in ups if u in model.final and model.bad(node, u)
                )
                model.ends[node] = 1
                continue
            live = [(u, allow) for u, allow in ups if u not in model.final]
            if g.add(node, live):
                model.running.add(node)
                model.ends[node] = 1
            else:
                assert g.is_waiting(node)
                model.waiting.add(node)
        elif action == "finish":
            key = data.draw(st.sampled_from(sorted(model.running)))
            outcome = data.draw(outcomes)
            if outcome is X and data.draw(st.booleans()):
                result = g.cancel(key)
            else:
                result = g.finish(key, outcome)
            _apply(model, key, outcome, result)
        else:
            key = data.draw(st.sampled_from(sorted(model.waiting)))
            assert g.is_waiting(key)
            result = g.cancel(key)
            model.ends[key] = model.ends.get(key, 0) + 1
            _apply(model, key, X, result)
            assert not g.is_waiting(key)
    # Every node ended exactly once (ready, skipped, or cancelled while waiting) ...
    assert model.ends == dict.fromkeys(range(len(dag)), 1)
    assert set(model.final) == set(range(len(dag)))
    # ... and the graph holds nothing once everything is final.
    assert len(g) == 0
