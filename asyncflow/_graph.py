"""The dependency graph as a pure state machine: no loop, no I/O, no futures.

Keys are opaque hashable objects. ``add`` says whether a node is ready at once; ``finish``
takes "this key finished with this outcome" and returns which nodes became ready and which were
skipped (and because of which upstream). The graph only holds nodes that still wait on an
upstream and the downstream nodes of unfinished keys, so memory follows the live graph.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

__all__ = ("Graph", "Outcome")


class Outcome(enum.IntEnum):
    COMPLETED = 0
    FAILED = 1  # also a crash: what matters to dependents is "no usable result"
    CANCELLED = 2


_NOTHING: tuple[tuple[()], tuple[()]] = ((), ())
_NO_KEY: Any = object()  # (keys are opaque: None may be one)


class Graph(Generic[K]):
    """Edges from unfinished upstream keys to the nodes that wait for them.

    Preconditions, kept by the scheduler: every upstream key passed to ``add`` has been added
    (or is an external key the caller will ``finish`` later) and has not finished yet; each key
    is finished at most once.
    """

    __slots__ = ("_allow", "_down", "_more", "_second", "_waiting")

    def __init__(self) -> None:
        # node -> number of unfinished upstream edges
        self._waiting: dict[K, int] = {}
        # unfinished key -> its downstream nodes (one entry per edge): the first, the second,
        # and a list of the others. Most keys have one or two: they need no list of their own,
        # which in a graph of a million waiting nodes is a million objects fewer for every
        # full garbage collection to walk (and about 80 bytes fewer per key).
        self._down: dict[K, K] = {}
        self._second: dict[K, K] = {}
        self._more: dict[K, list[K]] = {}
        # node -> the upstream keys whose failure it accepts (allow_failure); rare, so kept apart
        self._allow: dict[K, frozenset[K]] = {}

    def __len__(self) -> int:
        """How many keys the graph holds state for (waiting nodes and watched upstreams)."""
        return len(self._waiting.keys() | self._down.keys() | self._allow.keys())

    def _pop_down(self, key: K) -> Sequence[K] | None:
        """The downstream nodes of ``key``, forgotten here; None if there are none."""
        first = self._down.pop(key, _NO_KEY)
        return None if first is _NO_KEY else self._pop_others(key, first)

    def _pop_others(self, key: K, first: K) -> Sequence[K]:
        """``first``, the downstream node of ``key`` popped already, with the others."""
        second = self._second.pop(key, _NO_KEY)
        if second is _NO_KEY:
            return (first,)
        more = self._more.pop(key, None) if self._more else None
        return (first, second) if more is None else [first, second, *more]

    def watches_any(self) -> bool:
        """Whether some node waits on an unfinished key (else ``finish`` has nothing to do)."""
        return bool(self._down)

    def is_waiting(self, key: K) -> bool:
        return key in self._waiting

    def add(self, key: K, upstream: Sequence[tuple[K, bool]]) -> bool:
        """Add ``key`` with edges from ``upstream`` (``(key, allow_failure)`` pairs).

        Returns True when the node is ready at once (no unfinished upstream). An upstream named
        both with and without ``allow_failure`` does not allow failure.
        """
        ups = [up for up, _ in upstream]
        strict = {up for up, allow in upstream if not allow}
        allowed = frozenset(up for up, allow in upstream if allow and up not in strict)
        return self.add_edges(key, ups, allowed)

    def add_edges(self, key: K, upstream: Sequence[K], allowed: frozenset[K] | None = None) -> bool:
        """Fast form of ``add``: ``upstream`` keys, and those among them that allow failure."""
        if not upstream:
            return True
        down = self._down
        second = self._second
        for up in upstream:
            if up not in down:
                down[up] = key
            elif up not in second:
                second[up] = key
            else:
                more = self._more.get(up)
                if more is None:
                    self._more[up] = [key]
                else:
                    more.append(key)
        if allowed:
            self._allow[key] = allowed
        self._waiting[key] = len(upstream)
        return False

    def finish(
        self, key: K, outcome: Outcome
    ) -> tuple[Sequence[K], Sequence[tuple[K, K, Outcome]]]:
        """Record that ``key`` finished with ``outcome``.

        Returns ``(ready, skipped)``: nodes whose inputs are now all available, and
        ``(node, cause, outcome)`` triples for nodes that will never run because ``cause`` (an
        upstream, itself possibly skipped) failed or was cancelled. A skipped node's cause always
        appears before it (as the finished key or earlier in the list).
        """
        first = self._down.pop(key, _NO_KEY)  # (_pop_down's first step, inlined)
        if first is _NO_KEY:  # nothing waits on it: the common case, no allocation
            return _NOTHING
        lst = self._pop_others(key, first)
        ready: list[K] = []
        skipped: list[tuple[K, K, Outcome]] | tuple[()] = ()  # a list once one is skipped
        waiting = self._waiting
        allow_map = self._allow
        # The children of skipped nodes still to visit: an explicit stack, not recursion (a
        # 100,000-long chain must not hit the recursion limit), made only once one is skipped.
        stack: list[tuple[K, Outcome, Sequence[K]]] | None = None
        src, out = key, outcome
        while True:
            for child in lst:
                pending = waiting.get(child)
                if pending is None:  # skipped or cancelled earlier
                    continue
                if out is Outcome.COMPLETED or (
                    out is Outcome.FAILED and allow_map and src in allow_map.get(child, ())
                ):
                    if pending == 1:
                        del waiting[child]
                        if allow_map:
                            allow_map.pop(child, None)
                        ready.append(child)
                    else:
                        waiting[child] = pending - 1
                else:
                    del waiting[child]
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
        self._waiting.pop(key, None)
        self._allow.pop(key, None)
        return self.finish(key, Outcome.CANCELLED)
