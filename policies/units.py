"""Observations of one arm by unit of analysis: running moments, and per sticky bucket counts
and sums (all of a user's requests share a bucket), in bounded memory (2 x 2^16 doubles)."""

from __future__ import annotations

import base64
import zlib
from array import array
from collections.abc import Mapping
from typing import Any

import numpy as np

from policies import stats as st
from policies.base import BUCKETS

__all__ = ["UnitAccumulator", "pack", "unpack", "zeros"]


def zeros() -> array[float]:
    return array("d", bytes(8 * BUCKETS))


def pack(a: array[float]) -> str:
    """Compact text for a bucket array: counts (whole numbers) as uint32, else float64, zlib'd.

    Snapshots are written every tick, so this stays a few milliseconds per array.
    """
    x = np.frombuffer(a, dtype=np.float64)
    if bool(np.all((x >= 0) & (x < 2**32) & (x == np.floor(x)))):
        return "u4:" + base64.b64encode(zlib.compress(x.astype(np.uint32).tobytes(), 1)).decode()
    return "f8:" + base64.b64encode(zlib.compress(x.tobytes(), 1)).decode()


def unpack(text: object) -> array[float]:
    if not isinstance(text, str):
        raise ValueError("bucket array: expected a string")
    kind, _, body = text.partition(":")
    dtype = {"u4": np.uint32, "f8": np.float64}.get(kind)
    if dtype is None:
        raise ValueError(f"bucket array: unknown encoding {kind!r}")
    raw = zlib.decompress(base64.b64decode(body))
    x = np.frombuffer(raw, dtype=dtype)
    if x.size != BUCKETS:
        raise ValueError(f"bucket array: {x.size} values, expected {BUCKETS}")
    y = x.astype(np.float64)
    if not bool(np.isfinite(y).all()):
        raise ValueError("bucket array: non-finite value")
    out = array("d")
    out.frombytes(y.tobytes())
    return out


class UnitAccumulator:
    """Observations of one arm, by unit: running moments, plus per-bucket counts and sums on
    sticky routes (2 x 2^16 doubles, allocated on the first bucketed observation)."""

    __slots__ = ("_last", "all", "loose", "n_b", "s_b")

    def __init__(self) -> None:
        self.all = st.Welford()  # every observation (per-request view, exact moments)
        self.loose = st.Welford()  # observations with no bucket (sticky key missing)
        self.n_b: array[float] | None = None
        self.s_b: array[float] | None = None
        self._last = 0.0  # value of the latest trial (missing_reward corrections replace it)

    def add(self, x: float, bucket: int | None) -> None:
        self._last = x
        self.all.add(x)
        if bucket is None:
            self.loose.add(x)
            return
        if self.n_b is None or self.s_b is None:
            self.n_b, self.s_b = zeros(), zeros()
        self.n_b[bucket] += 1.0
        self.s_b[bucket] += x

    def correct(self, delta: float, bucket: int | None) -> None:
        """The latest trial's value turns out to be `delta` higher (a reward after
        `missing_reward` counted the decision)."""
        old = self._last
        for w in (self.all, self.loose) if bucket is None else (self.all,):
            _replace(w, old, old + delta)
        if bucket is not None and self.s_b is not None:
            self.s_b[bucket] += delta

    def sample(self, by_unit: bool) -> st.Sample:
        if not by_unit or self.n_b is None or self.s_b is None:
            return st.Sample.per_request(self.all.moments())
        n = np.frombuffer(self.n_b, dtype=np.float64)
        s = np.frombuffer(self.s_b, dtype=np.float64)
        out = st.Sample.from_units(n, s)
        if self.loose.n:
            out = out.merge(st.Sample.per_request(self.loose.moments()))
        return out

    def state(self) -> dict[str, Any]:
        d: dict[str, Any] = {"all": self.all.to_json(), "loose": self.loose.to_json()}
        if self.n_b is not None and self.s_b is not None:
            d["n_b"] = pack(self.n_b)
            d["s_b"] = pack(self.s_b)
        return d

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> UnitAccumulator:
        out = cls()
        out.all = st.Welford.from_json(d["all"])
        out.loose = st.Welford.from_json(d.get("loose", [0, 0.0, 0.0]))
        if "n_b" in d:
            out.n_b, out.s_b = unpack(d["n_b"]), unpack(d["s_b"])
        return out


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
