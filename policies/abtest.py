"""A/B tests: a fixed, sticky split plus the statistics that decide a winner.

The first arm of the split is the control. Frequentist methods (z_test, welch_t, msprt) test
every other arm against the control with a Bonferroni-corrected level alpha/(K-1); the test is
decided once some arm differs significantly and every arm has `min_samples` rewards. The winner
is the arm with the highest mean among the control and the arms that differ significantly from
it. `bayesian` decides when one arm's probability to be best reaches 1 - alpha. A decision is
final: later data never un-decides a test (that would be peeking in reverse).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from policies import stats as st
from policies.base import BUCKETS, ArmStats, Context, Decision

__all__ = ["METHODS", "ABTestPolicy"]

METHODS = ("z_test", "welch_t", "msprt", "bayesian")


class ABTestPolicy:
    """Fixed split over experiment arms with sticky buckets, per-arm stats and a test result."""

    def __init__(
        self,
        split: Mapping[str, float],
        *,
        rng: np.random.Generator,
        reward_type: str = "binary",
        method: str = "msprt",
        alpha: float = 0.05,
        min_samples: int = 1000,
        tau2: float | None = None,
        conclude: str = "none",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown test method {method!r}; one of {METHODS}")
        if len(split) < 2:
            raise ValueError("an A/B test needs at least two arms")
        total = float(sum(split.values()))
        if total <= 0 or any(w < 0 for w in split.values()):
            raise ValueError("split weights must be >= 0 and not all zero")
        self.reward_type = reward_type
        self.method = method
        self.alpha = alpha
        self.min_samples = min_samples
        self.tau2 = tau2
        self.conclude = conclude
        self._np = rng
        self._rnd = random.Random(int(rng.integers(0, 2**63)))
        self.arms: tuple[str, ...] = ()
        self.weights: dict[str, float] = {}
        self._bounds: list[int] = []
        self._cum: list[float] = []
        self._stats: dict[str, ArmStats] = {}
        self._msprt_p: dict[str, float] = {}
        self.winner: str | None = None
        self._split(split)

    def _split(self, split: Mapping[str, float]) -> None:
        """Lay out the buckets for `split` (arm -> weight); kept arms keep their statistics."""
        total = float(sum(split.values()))
        self.arms = tuple(split)
        self.weights = {a: float(w) / total for a, w in split.items()}
        # contiguous bucket ranges, in split order: arm j owns [bounds[j-1], bounds[j])
        acc = 0.0
        self._bounds = []
        for a in self.arms:
            acc += self.weights[a]
            self._bounds.append(round(acc * BUCKETS))
        self._bounds[-1] = BUCKETS
        self._cum = [b / BUCKETS for b in self._bounds]
        self._stats = {a: self._stats.get(a) or ArmStats() for a in self.arms}
        self._msprt_p = {a: self._msprt_p.get(a, 1.0) for a in self.arms[1:]}
        if self.winner not in self._stats:
            self.winner = None

    def set_arms(self, arms: Sequence[str]) -> None:
        """Change the arm set: kept arms keep their weight and statistics, a new arm gets the
        mean weight of the kept ones; the first arm is the control. A winner that is gone is
        forgotten, and so are the mSPRT p-values when the control changes (they compare
        against it)."""
        if len(arms) < 2:
            raise ValueError("an A/B test needs at least two arms")
        kept = [self.weights[a] for a in arms if a in self.weights]
        fresh = sum(kept) / len(kept) if sum(kept) > 0.0 else 1.0
        if self.arms and arms[0] != self.arms[0]:
            self._msprt_p = {}
        self._split({a: self.weights.get(a, fresh) for a in arms})

    @property
    def phase(self) -> str:
        return (
            "concluded" if self.winner is not None and self.conclude == "route_winner" else "active"
        )

    def choose(self, context: Context) -> Decision:
        w = self.winner
        if w is not None and self.conclude == "route_winner":
            self._stats[w].decisions += 1
            return Decision(w, 1.0)
        if context.bucket is not None:
            j = bisect.bisect_right(self._bounds, context.bucket)
        else:
            j = bisect.bisect_right(self._cum, self._rnd.random())
        j = min(j, len(self.arms) - 1)
        arm = self.arms[j]
        self._stats[arm].decisions += 1
        return Decision(arm, self.weights[arm])

    def update(
        self, arm: str, reward: float, context: Context | None = None, trial: bool = True
    ) -> None:
        """Fold in one reward; `trial=False` credits a trial already counted (missing_reward)."""
        s = self._stats[arm]
        if trial:
            s.rewards += 1
        s.reward_sum += reward
        s.reward_sq_sum += reward * reward

    def stats(self) -> Mapping[str, ArmStats]:
        return self._stats

    def shares(self) -> dict[str, float]:
        if self.winner is not None and self.conclude == "route_winner":
            return {a: 1.0 if a == self.winner else 0.0 for a in self.arms}
        return dict(self.weights)

    # ---- the test ------------------------------------------------------------------------------

    def _moments(self, a: str) -> st.Moments:
        s = self._stats[a]
        return st.Moments(s.rewards, s.reward_sum, s.reward_sq_sum)

    def _pair_p(self, c: st.Moments, t: st.Moments) -> float:
        """p-value of control vs treatment under the configured frequentist method."""
        if self.method == "z_test" and self.reward_type == "binary":
            return st.two_proportion_z(c.s, c.n, t.s, t.n)[1]
        if self.method in ("z_test", "welch_t"):
            return st.welch_t(c, t)[1]
        return 1.0

    def _msprt_look(self, c: st.Moments, t: st.Moments, arm: str) -> float:
        if c.n < 2 or t.n < 2:
            return self._msprt_p[arm]
        if self.reward_type == "binary":
            vc = c.mean * (1.0 - c.mean)
            vt = t.mean * (1.0 - t.mean)
        else:
            vc, vt = c.var, t.var
        v = vc / c.n + vt / t.n
        pooled = (vc * c.n + vt * t.n) / (c.n + t.n)
        # default mixing variance: effects of about a tenth of a standard deviation
        tau2 = self.tau2 if self.tau2 is not None else 0.01 * pooled
        p = st.msprt_p_value(self._msprt_p[arm], t.mean - c.mean, v, tau2)
        self._msprt_p[arm] = p
        return p

    def result(self) -> dict[str, Any]:
        """Look at the data once (an mSPRT look) and return the test result for status."""
        m = {a: self._moments(a) for a in self.arms}
        decisions = [float(self._stats[a].decisions) for a in self.arms]
        srm_p, srm_flag = st.srm_test(decisions, [self.weights[a] for a in self.arms])
        enough = all(m[a].n >= self.min_samples for a in self.arms)
        out: dict[str, Any] = {"method": self.method, "alpha": self.alpha, "control": self.arms[0]}
        if self.method == "bayesian":
            if self.reward_type == "binary":
                pb, loss = st.bayes_binary(
                    [m[a].s for a in self.arms], [m[a].n for a in self.arms], self._np
                )
            else:
                pb, loss = st.bayes_normal([m[a] for a in self.arms], self._np)
            out["prob_best"] = dict(zip(self.arms, pb, strict=True))
            out["expected_loss"] = dict(zip(self.arms, loss, strict=True))
            j = max(range(len(pb)), key=pb.__getitem__)
            if self.winner is None and enough and pb[j] >= 1.0 - self.alpha:
                self.winner = self.arms[j]
        else:
            control = self.arms[0]
            level = self.alpha / (len(self.arms) - 1)
            pvals: dict[str, float] = {}
            for a in self.arms[1:]:
                if self.method == "msprt":
                    pvals[a] = self._msprt_look(m[control], m[a], a)
                else:
                    pvals[a] = self._pair_p(m[control], m[a])
            out["p_value"] = pvals
            significant = [a for a, p in pvals.items() if p < level]
            if self.winner is None and enough and significant:
                candidates = [control, *significant]
                self.winner = max(candidates, key=lambda a: m[a].mean)
        out["means"] = {a: (m[a].mean if m[a].n else None) for a in self.arms}
        out["winner"] = self.winner
        out["decided"] = self.winner is not None
        out["min_samples"] = self.min_samples
        out["srm"] = {"p_value": srm_p, "flagged": srm_flag}
        return out

    # ---- persistence ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "arms": {a: s.to_json() for a, s in self._stats.items()},
            "msprt_p": dict(self._msprt_p),
            "winner": self.winner,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        for a, d in state.get("arms", {}).items():
            if a in self._stats:
                self._stats[a] = ArmStats.from_json(d)
        for a, p in state.get("msprt_p", {}).items():
            if a in self._msprt_p and isinstance(p, int | float) and math.isfinite(p):
                self._msprt_p[a] = float(p)
        w = state.get("winner")
        self.winner = w if w in self._stats else None
