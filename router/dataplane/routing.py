"""Route matching that does not slow down with the number of routes.

Routes match in configuration order: the first whose `path_prefix` starts the path (and whose
`methods`, if any, include the method) takes the request. A linear scan does that in one
`startswith` per route ahead of the match: fine for a handful, 6x the cost of the whole request
at 1,000 routes (bench/proxy.py --only routes). `RouteTable` indexes the prefixes by length: a
request costs one dict lookup per distinct prefix length, whatever the number of routes, and
still finds the first matching route in configuration order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Generic, Protocol, TypeVar

__all__ = ["LINEAR_MAX", "Matchable", "RouteTable"]

LINEAR_MAX: Final = 8  # up to this many routes a plain scan is as cheap as the index


class Matchable(Protocol):
    @property
    def prefix(self) -> str: ...
    @property
    def methods(self) -> frozenset[str] | None: ...


R = TypeVar("R", bound=Matchable)


class RouteTable(Generic[R]):
    """`match(method, path)`: the first route in `routes` taking the request, or None."""

    def __init__(self, routes: Sequence[R]) -> None:
        self.source = routes  # what it was built from: the owner rebuilds when that changes
        self.routes: tuple[R, ...] = tuple(routes)
        self._linear = len(self.routes) <= LINEAR_MAX
        # prefix -> (position, methods, route) in configuration order
        by_prefix: dict[str, list[tuple[int, frozenset[str] | None, R]]] = {}
        for i, r in enumerate(self.routes):
            by_prefix.setdefault(r.prefix, []).append((i, r.methods, r))
        self._by_prefix = by_prefix
        self._lengths: tuple[int, ...] = tuple(sorted({len(p) for p in by_prefix}))

    def match(self, method: str, path: str) -> R | None:
        if self._linear:
            for r in self.routes:
                if path.startswith(r.prefix):
                    methods = r.methods
                    if methods is None or method in methods:
                        return r
            return None
        best: R | None = None
        best_i = len(self.routes)
        n = len(path)
        by_prefix = self._by_prefix
        for length in self._lengths:
            if length > n:
                break
            candidates = by_prefix.get(path[:length])
            if candidates is None:
                continue
            for i, methods, r in candidates:
                if i >= best_i:
                    break
                if methods is None or method in methods:
                    best_i = i
                    best = r
                    break
        return best
