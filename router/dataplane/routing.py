"""Route matching that does not slow down with the number of routes.

Routes match in configuration order: the first whose path match takes the path (and whose
`methods`, if any, include the method) takes the request. A `path_prefix` matches whole
segments: `/v1/m` takes `/v1/m`, `/v1/m/x` and `/v1/m:predict` (TF Serving's verbs), not
`/v1/mx`; a prefix ending in `/` or `:` takes everything after it. `path_exact` takes one path and
`path_regex` the paths it matches whole. A linear scan does that in one
`startswith` per route ahead of the match: fine for a handful, 6x the cost of the whole request
at 1,000 routes (bench/proxy.py --only routes). `RouteTable` indexes the prefixes by length: a
request costs one dict lookup per distinct prefix length, whatever the number of routes, and
still finds the first matching route in configuration order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Generic, Protocol, TypeVar

__all__ = ["LINEAR_MAX", "Matchable", "RouteTable"]

LINEAR_MAX: Final = 8  # up to this many routes a plain scan is as cheap as the index


class Matchable(Protocol):
    @property
    def prefix(self) -> str: ...  # the path_prefix, or the path_exact
    @property
    def methods(self) -> frozenset[str] | None: ...
    @property
    def open_end(self) -> bool: ...  # a prefix ending in "/" or ":": no segment check after it
    @property
    def exact(self) -> bool: ...
    @property
    def regex(self) -> re.Pattern[str] | None: ...


def takes(r: Matchable, path: str) -> bool:
    """Whether route `r`'s path match takes `path` (methods aside)."""
    rx = r.regex
    if rx is not None:
        return rx.fullmatch(path) is not None
    p = r.prefix
    if r.exact:
        return path == p
    if not path.startswith(p):
        return False
    n = len(p)
    return r.open_end or len(path) == n or path[n] in "/:"


R = TypeVar("R", bound=Matchable)


class RouteTable(Generic[R]):
    """`match(method, path)`: the first route in `routes` taking the request, or None."""

    def __init__(self, routes: Sequence[R]) -> None:
        self.source = routes  # what it was built from: the owner rebuilds when that changes
        self.routes: tuple[R, ...] = tuple(routes)
        self._linear = len(self.routes) <= LINEAR_MAX
        # prefix -> (position, methods, route) in configuration order; exact paths and regexes
        # apart (a regex cannot be indexed: they are tried in order, ahead of the best match)
        by_prefix: dict[str, list[tuple[int, frozenset[str] | None, R]]] = {}
        by_path: dict[str, list[tuple[int, frozenset[str] | None, R]]] = {}
        regexes: list[tuple[int, frozenset[str] | None, R]] = []
        for i, r in enumerate(self.routes):
            if r.regex is not None:
                regexes.append((i, r.methods, r))
            elif r.exact:
                by_path.setdefault(r.prefix, []).append((i, r.methods, r))
            else:
                by_prefix.setdefault(r.prefix, []).append((i, r.methods, r))
        self._by_prefix = by_prefix
        self._by_path = by_path
        self._regexes = regexes
        self._lengths: tuple[int, ...] = tuple(sorted({len(p) for p in by_prefix}))

    def match(self, method: str, path: str) -> R | None:
        if self._linear:
            for r in self.routes:
                if takes(r, path):
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
            if length < n and path[length] not in "/:" and path[length - 1] not in "/:":
                continue  # the prefix ends inside a segment of the path
            for i, methods, r in candidates:
                if i >= best_i:
                    break
                if methods is None or method in methods:
                    best_i = i
                    best = r
                    break
        exact = self._by_path.get(path)
        if exact is not None:
            for i, methods, r in exact:
                if i >= best_i:
                    break
                if methods is None or method in methods:
                    best_i = i
                    best = r
                    break
        for i, methods, r in self._regexes:
            if i >= best_i:
                break
            if (methods is None or method in methods) and takes(r, path):
                return r
        return best
