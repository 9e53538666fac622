"""Static weights with sticky, monotone bucket assignment (SPEC §5).

Every request falls into one of `BUCKETS` buckets (a hash of its sticky key, or a random one).
Each bucket belongs to the arm with the lowest weighted-rendezvous score `-ln(u[arm][b]) / w[arm]`,
where `u[arm]` is a fixed pseudo-random sequence derived from the arm's name. This gives:

- a realised split within sampling error of the weights (each bucket goes to arm `a` with
  probability exactly `w_a / sum(w)`);
- monotonicity for any number of arms: raising one arm's weight lowers only that arm's scores,
  so buckets can only move *to* it, never between other arms or back;
- stability across restarts and replicas: the layout depends only on arm names and weights.

Contiguous ranges (what SPEC §5 first described) have the same two-arm behaviour but break
monotonicity with three or more arms, so the layout is rendezvous-based.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from policies.base import BUCKETS, ArmStats, Context, Decision

_RANDOM_BATCH = 4096


@lru_cache(maxsize=256)
def _arm_log_uniforms(arm: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """`-ln(u)` for every bucket, from a generator seeded by the arm's name (stable everywhere)."""
    seed = int.from_bytes(hashlib.blake2b(arm.encode(), digest_size=8).digest(), "big")
    u = np.random.default_rng(seed).random(BUCKETS)
    u = np.maximum(u, np.finfo(np.float64).tiny)
    out: np.ndarray[Any, np.dtype[np.float64]] = -np.log(u)
    out.setflags(write=False)
    return out


def bucket_owners(weights: Mapping[str, float]) -> np.ndarray[Any, np.dtype[np.intp]]:
    """Index (into `list(weights)`) of the arm owning each bucket for these weights."""
    arms = list(weights)
    scores = np.empty((len(arms), BUCKETS))
    for i, arm in enumerate(arms):
        w = float(weights[arm])
        scores[i] = _arm_log_uniforms(arm) / w if w > 0 else np.inf
    owners: np.ndarray[Any, np.dtype[np.intp]] = np.argmin(scores, axis=0)
    return owners


def sticky_bucket(key: str | bytes) -> int:
    """The bucket of a sticky key; the same on every replica and across restarts."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % BUCKETS


class WeightedPolicy:
    """Fixed relative weights over arms; sticky keys keep their arm while weights allow it."""

    def __init__(
        self, weights: Mapping[str, float], rng: np.random.Generator | None = None
    ) -> None:
        self._rng = rng if rng is not None else np.random.default_rng()
        self._random: list[int] = []
        self.arms: tuple[str, ...] = ()
        self._weights: dict[str, float] = {}
        self._table: list[Decision] = []
        self._counts: dict[str, ArmStats] = {}
        self.set_weights(weights)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the weights (relative, non-negative, not all zero)."""
        total = float(sum(weights.values()))
        if not weights or total <= 0 or any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be non-negative and not all zero, got {dict(weights)}")
        arms = tuple(weights)
        decisions = [Decision(a, float(weights[a]) / total) for a in arms]
        owners = bucket_owners(weights)
        table = [decisions[i] for i in owners.tolist()]
        # one assignment so a concurrent choose() sees either the old or the new table
        self.arms, self._weights, self._table = arms, {a: float(weights[a]) for a in arms}, table
        for a in arms:
            self._counts.setdefault(a, ArmStats())

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def shares(self) -> dict[str, float]:
        total = sum(self._weights.values())
        return {a: w / total for a, w in self._weights.items()}

    def choose(self, context: Context) -> Decision:
        bucket = context.bucket
        if bucket is None:
            if not self._random:
                self._random = self._rng.integers(0, BUCKETS, _RANDOM_BATCH).tolist()
            bucket = self._random.pop()
        d = self._table[bucket]
        self._counts[d.arm].decisions += 1
        return d

    def update(self, arm: str, reward: float, context: Context) -> None:
        s = self._counts.get(arm)
        if s is not None:
            s.rewards += 1
            s.reward_sum += reward
            s.reward_sq_sum += reward * reward

    def stats(self) -> Mapping[str, ArmStats]:
        return self._counts
