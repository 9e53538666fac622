"""Additive learning state, merged across processes and replicas: increments out, totals in.

The statistics bandits, contextual bandits and A/B tests learn from are sums (decision and
reward counts, reward sums and squares, LinUCB's A and b, regret cells). A process shares them
by adding what it learned since its last flush to the totals in the shared store, in one atomic
step, and then adopting the merged totals; so decisions and rewards of every process add up
exactly, and losing a process loses at most its un-flushed increments, never a half update.

An object takes part by exposing its additive state as a flat dict of named float arrays
(`Additive`); `Merger` does the bookkeeping, so a new statistic plugs in by adding a name,
without any change to the stores. Pure: no I/O, no `router` imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

__all__ = ["Additive", "Arrays", "Merger", "add", "diff", "nonzero"]

Arrays = dict[str, np.ndarray[Any, np.dtype[np.float64]]]


class Additive(Protocol):
    """What a learning object exposes to be merged across processes.

    `additive()` returns its current totals, one flat float array per name (names encode what
    the numbers are and their layout, e.g. ``"bandit.v1/armA"``); `load_additive(totals)` sets
    its state to `totals`, which holds every name `additive()` returned (other names are ignored).
    Adding the arrays of two objects must give the statistics of both runs combined.
    """

    def additive(self) -> Arrays: ...

    def load_additive(
        self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]
    ) -> None: ...


def diff(a: Mapping[str, np.ndarray[Any, Any]], b: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
    """a - b per name (a name missing on one side counts as zeros); all-zero names left out."""
    out: Arrays = {}
    for name, x in a.items():
        y = b.get(name)
        d = np.asarray(x, dtype=float) - (0.0 if y is None or len(y) != len(x) else y)
        if np.any(d != 0.0):
            out[name] = d
    for name, y in b.items():
        if name not in a and np.any(y != 0.0):
            out[name] = -np.asarray(y, dtype=float)
    return out


def add(*parts: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
    """The per-name sum of `parts` (a name missing from a part counts as zeros)."""
    out: Arrays = {}
    for part in parts:
        for name, x in part.items():
            y = out.get(name)
            out[name] = np.array(x, dtype=float) if y is None or len(y) != len(x) else y + x
    return out


def nonzero(d: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
    return {k: np.asarray(v, dtype=float) for k, v in d.items() if np.any(np.asarray(v) != 0.0)}


class Merger:
    """Tracks which part of an object's state the shared totals already hold.

    The object's state is always ``base + local + provisional``: `base` the totals last loaded
    from the store, `local` what this process learned since and has not flushed, `provisional`
    the effect of rewards this process applied for immediate visibility although someone else
    (whoever folds the durable feedback log) adds them to the totals.

    A flush is `take()` -> store adds the increments atomically and returns the totals ->
    `load(totals, taken, drop)`. Updates that happen while the store call is in flight are
    kept on top of the new totals; a failed flush needs no undo (the next `take()` includes it).
    One flush at a time: a second `take()` before the first `load()` would count twice.
    """

    def __init__(self, get: Callable[[], Arrays], put: Callable[[Arrays], None]) -> None:
        self._get = get
        self._put = put
        self.base: Arrays = {}
        self.provisional: dict[str, Arrays] = {}

    def provisionally(self, key: str, apply: Callable[[], None]) -> None:
        """Run `apply` (an update of the object) and remember its effect under `key` as
        provisional: it is not flushed, and `load(..., drop=[key])` removes it again."""
        before = self._get()
        apply()
        d = diff(self._get(), before)
        old = self.provisional.get(key)
        self.provisional[key] = d if old is None else add(old, d)

    def take(self) -> tuple[Arrays, tuple[Arrays, Arrays]]:
        """(increments to add to the store, what `load` needs to know about this moment)."""
        cur = self._get()
        prov = add(*self.provisional.values())
        return diff(diff(cur, self.base), prov), (cur, prov)

    def load(
        self,
        totals: Mapping[str, np.ndarray[Any, Any]],
        taken: tuple[Arrays, Arrays],
        drop: Iterable[str] = (),
    ) -> None:
        """Adopt the merged `totals` (which include the increments of `taken`); provisional
        effects listed in `drop` are now part of the totals and stop being added locally."""
        cur0, prov0 = taken
        cur = self._get()
        prov_now = add(*self.provisional.values())
        for key in drop:
            self.provisional.pop(key, None)
        prov_kept = add(*self.provisional.values())
        since = diff(diff(cur, prov_now), diff(cur0, prov0))  # learned while the store worked
        # names the object has, at their shapes, plus names only the totals have (an object
        # with open-ended names, such as regret cells per context label, picks those up)
        full = {n: _pad(x, cur.get(n)) for n, x in totals.items() if _fits(x, cur.get(n))}
        new = add({n: np.zeros(len(x)) for n, x in cur.items()}, full, since, prov_kept)
        self._put(new)
        self.base = {n: full[n] if n in full else np.zeros(len(x)) for n, x in self._get().items()}


def _fits(x: Any, like: np.ndarray[Any, Any] | None) -> bool:
    # stores keep only non-zero cells, so a total may come back shorter (trailing zeros)
    return like is None or len(x) <= len(like)


def _pad(x: Any, like: np.ndarray[Any, Any] | None) -> np.ndarray[Any, np.dtype[np.float64]]:
    arr: np.ndarray[Any, np.dtype[np.float64]] = np.asarray(x, dtype=float)
    if like is None or len(arr) == len(like):
        return arr
    return np.concatenate((arr, np.zeros(len(like) - len(arr))))
