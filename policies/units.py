"""Observations of one arm by unit of analysis, additive across processes and replicas.

On sticky routes the unit is the sticky bucket (all of a user's requests share one of 2^16).
The delta-method variance of a ratio metric needs, per arm, sums over buckets of N_u, S_u,
N_u^2, S_u^2 and S_u N_u. N_u and S_u add up across processes (a user's requests may land on
any of them), their squares do not: so a process never keeps bucket arrays. It records the
buckets it touched since its last flush (`UnitLog`: sparse increments), the store adds them
to per-bucket totals and, in the same atomic step, adds the change of the squares each bucket's
new total implies to six dense sums per group (`UNIT_FIELDS`), which is all a process reads
back. See `unit_increments` (the arithmetic every store applies) and `Store.merge`.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from policies import stats as st
from policies.base import BUCKETS

__all__ = [
    "UNIT_FIELDS",
    "UnitAccumulator",
    "UnitLog",
    "Units",
    "group_increments",
    "unit_increments",
]

# the dense sums of one unit group: sum N_u, sum S_u, sum N_u^2, sum S_u^2, sum S_u N_u, and
# the number of units with N_u > 0
UNIT_FIELDS = 6

# sparse per-bucket increments, what `Store.merge` takes: group name -> rows (bucket, dN, dS)
Units = dict[str, np.ndarray[Any, np.dtype[np.float64]]]


def unit_increments(old_n: float, old_s: float, dn: float, ds: float) -> list[float]:
    """What one bucket going from (old_n, old_s) to (old_n + dn, old_s + ds) adds to its
    group's dense sums (`UNIT_FIELDS`, in order). Exact for whole counts."""
    n, s = old_n + dn, old_s + ds
    units = float(n > 0.0) - float(old_n > 0.0)
    return [dn, ds, n * n - old_n * old_n, s * s - old_s * old_s, s * n - old_s * old_n, units]


def group_increments(
    old_n: np.ndarray[Any, np.dtype[np.float64]],
    old_s: np.ndarray[Any, np.dtype[np.float64]],
    dn: np.ndarray[Any, np.dtype[np.float64]],
    ds: np.ndarray[Any, np.dtype[np.float64]],
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """`unit_increments` summed over distinct buckets (arrays aligned by bucket)."""
    n, s = old_n + dn, old_s + ds
    return np.array(
        [
            dn.sum(),
            ds.sum(),
            (n * n - old_n * old_n).sum(),
            (s * s - old_s * old_s).sum(),
            (s * n - old_s * old_n).sum(),
            float(np.count_nonzero(n > 0.0)) - float(np.count_nonzero(old_n > 0.0)),
        ]
    )


class UnitLog:
    """Per-bucket increments of one policy.

    Standalone (a notebook, `simulate`): it keeps the per-bucket totals itself, sparse, and
    the dense sums with them. `shared` (a router, which merges them through its store): it only
    records the increments not yet flushed (`take`), and the dense sums come from the store.
    `paused` stops recording: effects that reach the shared totals some other way (a reward
    in the feedback log, folded by whichever process wins the fold) must not be flushed too.
    """

    __slots__ = ("cells", "dense", "paused", "pending", "shared")

    def __init__(self) -> None:
        # per group: bucket -> dN and bucket -> dS (plain floats: cheap to add, to collect)
        self.pending: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
        self.paused = False
        self.shared = False
        self.cells: dict[tuple[str, int], tuple[float, float]] = {}
        self.dense: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}

    def sums(
        self, group: str, merged: np.ndarray[Any, np.dtype[np.float64]]
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The dense sums of `group`: `merged` (from the store) when shared, else our own."""
        if self.shared:
            return merged
        return self.dense.get(group, merged)

    def add(self, group: str, bucket: int, dn: float, ds: float) -> None:
        if self.paused:
            return
        if not self.shared:
            n0, s0 = self.cells.get((group, bucket), (0.0, 0.0))
            self.cells[(group, bucket)] = (n0 + dn, s0 + ds)
            d = self.dense.get(group)
            if d is None:
                d = self.dense[group] = np.zeros(UNIT_FIELDS)
            d += unit_increments(n0, s0, dn, ds)
            return
        cells = self.pending.get(group)
        if cells is None:
            cells = self.pending[group] = ({}, {})
        n, x = cells
        n[bucket] = n.get(bucket, 0.0) + dn
        x[bucket] = x.get(bucket, 0.0) + ds

    def take(self) -> Units:
        """The increments recorded since the last `take`, as rows (bucket, dN, dS)."""
        out: Units = {}
        for g, (n, x) in self.pending.items():
            if n:
                rows = np.empty((len(n), 3))
                rows[:, 0] = np.fromiter(n.keys(), dtype=float, count=len(n))
                rows[:, 1] = np.fromiter(n.values(), dtype=float, count=len(n))
                rows[:, 2] = np.fromiter(x.values(), dtype=float, count=len(n))
                out[g] = rows
        self.pending = {}
        return out

    def give_back(self, units: Units) -> None:
        """Undo a `take` whose flush failed (what was recorded since is kept too)."""
        paused, self.paused = self.paused, False
        try:
            for g, rows in units.items():
                for b, dn, ds in rows.tolist():
                    self.add(g, int(b), dn, ds)
        finally:
            self.paused = paused


class UnitAccumulator:
    """Observations of one arm (or guardrail of an arm), named `name` in the shared sums.

    `loose`: n, sum and sum of squares of observations without a bucket (per request; all of
    them on a non-sticky route), additive. `units`: the merged dense sums over buckets
    (`UNIT_FIELDS`), set from the store's totals only; new bucketed observations go to `log`.
    `all`: every observation this process applied (exact centred moments: the per-request view
    of a non-sticky route while this process has seen all of them; else the merged `loose`).
    """

    __slots__ = ("_last", "all", "group", "log", "loose", "name", "trial_value", "units")

    def __init__(self, name: str = "", log: UnitLog | None = None) -> None:
        self.name = name
        self.group = name + ".u"  # its unit group in the store
        self.log = log
        self.all = st.Welford()
        self.loose = np.zeros(3)
        self.units = np.zeros(UNIT_FIELDS)
        self._last = 0.0  # value of the latest trial (missing_reward corrections replace it)
        self.trial_value: float | None = None  # the value every trial starts with, if fixed

    def add(self, x: float, bucket: int | None) -> None:
        self._last = x
        self.all.add(x)
        if bucket is None:
            self.loose += (1.0, x, x * x)
        elif self.log is not None:
            self.log.add(self.group, bucket, 1.0, x)

    def correct(self, delta: float, bucket: int | None) -> None:
        """A trial's value turns out to be `delta` higher (a reward after `missing_reward`
        counted the decision)."""
        old = self._last if self.trial_value is None else self.trial_value
        _replace(self.all, old, old + delta)
        if bucket is None:
            self.loose += (0.0, delta, (old + delta) ** 2 - old * old)
        elif self.log is not None:
            self.log.add(self.group, bucket, 0.0, delta)

    def sample(self, by_unit: bool) -> st.Sample:
        if not by_unit:
            if self.log is None or not self.log.shared or self.all.n == self.loose[0]:
                # this process saw every observation: its exact centred moments
                return st.Sample.per_request(self.all.moments())
            # several processes: the merged sums (declared reward ranges keep them precise)
            return st.Sample.per_request(st.Moments.from_sums(*(float(x) for x in self.loose)))
        merged = self.units if self.log is None else self.log.sums(self.group, self.units)
        n, s, nn, ss, sn, units = (float(x) for x in merged)
        loose = st.Sample.per_request(st.Moments.from_sums(*(float(x) for x in self.loose)))
        if n <= 0:
            return loose
        out = st.Sample.from_sums(n, s, ss, sn, nn, units)
        return out.merge(loose) if self.loose[0] > 0 else out

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        return {self.name + ".l": self.loose.copy(), self.group: self.units.copy()}

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        self.loose = np.array(totals[self.name + ".l"], dtype=float)
        self.units = np.array(totals[self.group], dtype=float)

    def state(self) -> dict[str, Any]:
        return {"all": self.all.to_json()}

    def restore(self, d: Mapping[str, Any]) -> None:
        """Local moments from a document (the merged sums live in the store)."""
        if "all" in d:
            self.all = st.Welford.from_json(d["all"])


def legacy_rows(
    n_text: object, s_text: object | None = None
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Rows (bucket, N, S) of the non-empty buckets of bucket arrays as documents before merged
    per-user sums stored them (zlib'd uint32 or float64, base64, "u4:"/"f8:" prefixed)."""
    n = _legacy_array(n_text)
    s = np.zeros(len(n)) if s_text is None else _legacy_array(s_text)
    idx = np.flatnonzero((n != 0.0) | (s != 0.0))
    return np.column_stack((idx.astype(float), n[idx], s[idx]))


def _legacy_array(text: object) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not isinstance(text, str):
        raise ValueError("bucket array: expected a string")
    kind, _, body = text.partition(":")
    dtype = {"u4": np.uint32, "f8": np.float64}.get(kind)
    if dtype is None:
        raise ValueError(f"bucket array: unknown encoding {kind!r}")
    x = np.frombuffer(zlib.decompress(base64.b64decode(body)), dtype=dtype).astype(np.float64)
    if x.size != BUCKETS or not bool(np.isfinite(x).all()):
        raise ValueError(f"bucket array: {x.size} values (expected {BUCKETS}) or not finite")
    return x


def legacy_sums(welford: object) -> np.ndarray[Any, np.dtype[np.float64]]:
    """n, sum, sum of squares of running moments as documents stored them ([n, mean, m2])."""
    w = st.Welford.from_json(welford)
    return np.array([float(w.n), w.n * w.mean, w.m2 + w.n * w.mean * w.mean])


def _replace(w: st.Welford, old: float, new: float) -> None:
    """Replace one observation `old` by `new` in running moments."""
    if w.n <= 0:
        return
    if w.n == 1:
        w.mean, w.m2 = new, 0.0
        return
    # remove old
    n = w.n - 1
    mean = (w.mean * w.n - old) / n
    m2 = w.m2 - (old - w.mean) * (old - mean)
    w.n, w.mean, w.m2 = n, mean, max(0.0, m2)
    w.add(new)
