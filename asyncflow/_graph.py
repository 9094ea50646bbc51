"""The dependency graph as a pure state machine: no loop, no I/O, no futures.

Nodes are ``Node`` objects (the scheduler's futures are nodes): the graph keeps each node's
state in the node's own slots, not in dicts keyed by it. ``add`` says whether a node is ready at
once; ``finish`` takes "this node finished with this outcome" and returns which nodes became
ready and which were skipped (and because of which upstream). A node holds state only while it
waits on an upstream or something waits on it, so memory follows the live graph.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

__all__ = ("Graph", "Node", "Outcome")


class Outcome(enum.IntEnum):
    COMPLETED = 0
    FAILED = 1  # also a crash: what matters to dependents is "no usable result"
    CANCELLED = 2


class Node:
    """What the graph keeps on each node (a subclass sets all three to None when it is made).

    Why in the node and not in dicts keyed by it: a run's state is then one attribute away,
    with no hashing and no dict entries to grow and shrink (the dicts cost W4's graph of
    10,000 runs about 1 µs per run); and a node has no list of its own for its first two
    downstream nodes, so a graph of a million waiting runs has no million lists for every full
    garbage collection to walk.
    """

    __slots__ = ("_down", "_more", "_pending")

    # The first node that waits on this one, or None.
    _down: Any
    # The second, or a list of the second and the others (a node is never a list), or None.
    _more: Any
    # While this node waits: how many edges of it lead to unfinished upstream nodes; else None.
    _pending: int | None


K = TypeVar("K", bound=Node)

_NOTHING: tuple[tuple[()], tuple[()]] = ((), ())


class Graph(Generic[K]):
    """Edges from unfinished upstream nodes to the nodes that wait for them.

    Preconditions, kept by the scheduler: every upstream node passed to ``add`` has been added
    (or is a node the caller will ``finish`` later) and has not finished yet; each node is
    finished at most once; a node belongs to one graph.
    """

    __slots__ = ("_allow", "_waiting", "_watched")

    def __init__(self) -> None:
        self._waiting = 0  # nodes that wait on an upstream
        self._watched = 0  # unfinished nodes something waits on
        # node -> the upstream nodes whose failure it accepts (allow_failure); rare, so apart
        self._allow: dict[K, frozenset[K]] = {}

    def __len__(self) -> int:
        """How many nodes hold state here (waiting nodes and watched upstreams)."""
        return self._waiting + self._watched

    def watches_any(self) -> bool:
        """Whether some node waits on an unfinished one (else ``finish`` has nothing to do)."""
        return self._watched > 0

    def is_waiting(self, key: K) -> bool:
        return key._pending is not None

    def add(self, key: K, upstream: Sequence[tuple[K, bool]]) -> bool:
        """Add ``key`` with edges from ``upstream`` (``(node, allow_failure)`` pairs).

        Returns True when the node is ready at once (no unfinished upstream). An upstream named
        both with and without ``allow_failure`` does not allow failure.
        """
        ups = [up for up, _ in upstream]
        strict = {up for up, allow in upstream if not allow}
        allowed = frozenset(up for up, allow in upstream if allow and up not in strict)
        return self.add_edges(key, ups, allowed)

    def add_edges(self, key: K, upstream: Sequence[K], allowed: frozenset[K] | None = None) -> bool:
        """Fast form of ``add``: ``upstream`` nodes, and those among them that allow failure."""
        if not upstream:
            return True
        for up in upstream:
            if up._down is None:
                up._down = key
                self._watched += 1
            else:
                more = up._more
                if more is None:
                    up._more = key
                elif type(more) is list:
                    more.append(key)
                else:
                    up._more = [more, key]
        if allowed:
            self._allow[key] = allowed
        key._pending = len(upstream)
        self._waiting += 1
        return False

    def _pop_down(self, key: K) -> Sequence[K] | None:
        """The downstream nodes of ``key``, forgotten here; None if there are none."""
        first = key._down
        if first is None:
            return None
        key._down = None
        self._watched -= 1
        more = key._more
        if more is None:
            return (first,)
        key._more = None
        return [first, *more] if type(more) is list else (first, more)

    def finish(
        self, key: K, outcome: Outcome
    ) -> tuple[Sequence[K], Sequence[tuple[K, K, Outcome]]]:
        """Record that ``key`` finished with ``outcome``.

        Returns ``(ready, skipped)``: nodes whose inputs are now all available, and
        ``(node, cause, outcome)`` triples for nodes that will never run because ``cause`` (an
        upstream, itself possibly skipped) failed or was cancelled. A skipped node's cause always
        appears before it (as the finished node or earlier in the list).
        """
        first = key._down  # (_pop_down, inlined)
        if first is None:  # nothing waits on it: the common case, no allocation
            return _NOTHING
        key._down = None
        self._watched -= 1
        more = key._more
        lst: Sequence[K]
        if more is None:
            lst = (first,)
        else:
            key._more = None
            lst = [first, *more] if type(more) is list else (first, more)
        ready: list[K] = []
        skipped: list[tuple[K, K, Outcome]] | tuple[()] = ()  # a list once one is skipped
        allow_map = self._allow
        # The children of skipped nodes still to visit: an explicit stack, not recursion (a
        # 100,000-long chain must not hit the recursion limit), made only once one is skipped.
        stack: list[tuple[K, Outcome, Sequence[K]]] | None = None
        src, out = key, outcome
        while True:
            for child in lst:
                pending = child._pending
                if pending is None:  # skipped or cancelled earlier
                    continue
                if out is Outcome.COMPLETED or (
                    out is Outcome.FAILED and allow_map and src in allow_map.get(child, ())
                ):
                    if pending == 1:
                        child._pending = None
                        self._waiting -= 1
                        if allow_map:
                            allow_map.pop(child, None)
                        ready.append(child)
                    else:
                        child._pending = pending - 1
                else:
                    child._pending = None
                    self._waiting -= 1
                    if allow_map:
                        allow_map.pop(child, None)
                    if not skipped:
                        skipped = []
                    skipped.append((child, src, out))
                    below = self._pop_down(child)
                    if below is not None:
                        if stack is None:
                            stack = []
                        stack.append((child, out, below))
            if not stack:
                return ready, skipped
            src, out, lst = stack.pop()

    def cancel(self, key: K) -> tuple[Sequence[K], Sequence[tuple[K, K, Outcome]]]:
        """Cancel ``key`` (waiting, ready or running): it finishes as CANCELLED."""
        if key._pending is not None:
            key._pending = None
            self._waiting -= 1
        self._allow.pop(key, None)
        return self.finish(key, Outcome.CANCELLED)
