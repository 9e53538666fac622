"""A/B tests: a fixed, sticky split plus the statistics that decide a winner.

The first arm of the split is the control. The unit of analysis is the unit of randomisation:
on sticky routes a user (all of a user's requests fall in one of the 2^16 sticky buckets, so
the statistics are per-bucket aggregates with delta-method variances), elsewhere a request.

Frequentist methods test every other arm against the control; with more than two arms the
p-values are Holm-corrected over those comparisons plus the one between the two leading
treatments. `msprt` is always valid (look any time): it divides by the variance under the null
(pooled), and its confidence sequence is the set of differences the same test would not reject.
The test is decided once some arm differs significantly and every arm has `min_samples`
rewards; the winner is the best mean among the control and the arms that beat it, never an
arm that failed a guardrail. `bayesian` decides when one arm's probability to be best reaches
1 - alpha. A decision is final: later data never un-decides a test.
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
from policies.guardrails import GuardrailSet, GuardrailSpec
from policies.units import (
    UNIT_FIELDS,
    UnitAccumulator,
    UnitLog,
    Units,
    legacy_rows,
    legacy_sums,
)

__all__ = ["METHODS", "ABTestPolicy"]

METHODS = ("z_test", "welch_t", "msprt", "bayesian")


class _Period:
    """A stretch of time with one split in force, and the decisions made under it.

    Its decision counts and per-bucket decision sums (per arm: N, N^2 over the arm's buckets,
    see `policies.units`) are merged across processes under `name`; the running maximum of the
    sequential SRM test is each process's own (recomputed from the merged totals every look)."""

    __slots__ = (
        "bounds",
        "bucketed",
        "decisions",
        "groups",
        "label",
        "max_log_bf",
        "name",
        "weights",
    )

    def __init__(
        self, label: str, weights: Mapping[str, float], bounds: Sequence[int] = (), index: int = 0
    ) -> None:
        self.name = f"abp.v1/{index}"
        self.label = label
        self.weights = dict(weights)
        self.bounds = list(bounds)  # the bucket layout in force (arm order of `weights`)
        self.max_log_bf = 0.0  # running maximum of the sequential SRM test's log Bayes factor
        self.decisions = dict.fromkeys(weights, 0)
        # merged dense sums of decisions per sticky bucket, per arm (UNIT_FIELDS each)
        self.bucketed = {a: np.zeros(UNIT_FIELDS) for a in weights}
        self.groups = {a: self.group(a) for a in weights}  # built once, not per request

    def group(self, arm: str) -> str:
        return f"{self.name}/{arm}.u"

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        out = {self.name: np.array([float(self.decisions[a]) for a in self.weights])}
        for a in self.weights:
            out[self.group(a)] = self.bucketed[a].copy()
        return out

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        d = totals[self.name]
        for i, a in enumerate(self.weights):
            self.decisions[a] = round(float(d[i])) if i < len(d) else 0
            self.bucketed[a] = np.array(totals[self.group(a)], dtype=float)

    def state(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "label": self.label,
            "weights": self.weights,
            "decisions": self.decisions,
            "bounds": self.bounds,
            "max_log_bf": self.max_log_bf,
        }
        return d

    @classmethod
    def from_state(cls, d: Mapping[str, Any], arms: Sequence[str], index: int) -> _Period:
        """The period's layout and running maximum (its counts come from the merged sums)."""
        weights = {a: float(w) for a, w in d["weights"].items() if a in arms}
        p = cls(str(d["label"]), weights, [int(b) for b in d.get("bounds", [])], index)
        m = d.get("max_log_bf", 0.0)
        p.max_log_bf = float(m) if isinstance(m, int | float) and math.isfinite(m) else 0.0
        return p


class ABTestPolicy:
    """Fixed split over experiment arms with sticky buckets, per-unit stats and a test result."""

    def __init__(
        self,
        split: Mapping[str, float],
        *,
        rng: np.random.Generator,
        reward_type: str = "binary",
        method: str = "msprt",
        alpha: float = 0.05,
        min_samples: int = 1000,
        mixing_sd: float | None = None,
        tau2: float | None = None,
        conclude: str = "none",
        sticky: bool = False,
        guardrails: Sequence[GuardrailSpec] = (),
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown test method {method!r}; one of {METHODS}")
        if len(split) < 2:
            raise ValueError("an A/B test needs at least two arms")
        total = float(sum(split.values()))
        if total <= 0 or any(w < 0 for w in split.values()):
            raise ValueError("split weights must be >= 0 and not all zero")
        if mixing_sd is not None and tau2 is not None:
            raise ValueError("give the mSPRT mixing distribution once: mixing_sd or tau2")
        if tau2 is not None:
            mixing_sd = math.sqrt(tau2)  # legacy: a variance
        self.reward_type = reward_type
        self.method = method
        self.alpha = alpha
        self.min_samples = min_samples
        self.mixing_sd = mixing_sd
        self.conclude = conclude
        self.sticky = sticky
        self.unit = "user" if sticky else "request"
        self._np = rng
        self._rnd = random.Random(int(rng.integers(0, 2**63)))
        self.arms: tuple[str, ...] = ()
        self.weights: dict[str, float] = {}
        self._bounds: list[int] = []
        self._cum: list[float] = []
        self._stats: dict[str, ArmStats] = {}
        self._obs: dict[str, UnitAccumulator] = {}
        self.units = UnitLog()  # per-bucket increments not yet flushed (`take_units`)
        self._trial_value: float | None = None
        # (plain sums, per-bucket rows) read from an old document by `restore`, not yet shared
        self.legacy: tuple[dict[str, np.ndarray[Any, np.dtype[np.float64]]], Units] = ({}, {})
        self._pairs: list[tuple[str, str]] = []
        self._running_p: dict[str, float] = {}
        self._running_cs: dict[str, list[float]] = {}
        self._periods: list[_Period] = []
        self.guardrails = GuardrailSet(
            guardrails, tuple(split), alpha=alpha, by_unit=sticky, log=self.units
        )
        self.winner: str | None = None
        self._split(split)

    def _split(self, split: Mapping[str, float]) -> None:
        """Lay out the buckets for `split` (arm -> weight); kept arms keep their statistics,
        kept comparisons their running p-values and confidence sequences (still valid: the
        same comparison, looked at later). A new layout starts a new SRM period."""
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
        self._obs = {
            a: self._obs.get(a) or UnitAccumulator(f"abu.v1/{a}", self.units) for a in self.arms
        }
        for o in self._obs.values():
            o.trial_value = self._trial_value
        self._pairs = [
            (self.arms[i], self.arms[j])
            for i in range(len(self.arms))
            for j in range(i + 1, len(self.arms))
        ]
        keys = [_pair_key(a, b) for a, b in self._pairs]
        self._running_p = {k: self._running_p.get(k, 1.0) for k in keys}
        self._running_cs = {k: self._running_cs.get(k, [-math.inf, math.inf]) for k in keys}
        self._periods.append(_Period("split", self.weights, self._bounds, len(self._periods)))
        self.guardrails.set_arms(self.arms)
        if self.winner not in self._stats:
            self.winner = None

    def set_arms(self, arms: Sequence[str]) -> None:
        """Change the arm set: kept arms keep their weight and statistics, a new arm gets the
        mean weight of the kept ones; the first arm is the control. A winner that is gone is
        forgotten."""
        if len(arms) < 2:
            raise ValueError("an A/B test needs at least two arms")
        kept = [self.weights[a] for a in arms if a in self.weights]
        fresh = sum(kept) / len(kept) if sum(kept) > 0.0 else 1.0
        self._split({a: self.weights.get(a, fresh) for a in arms})
        if self.winner is not None and self.conclude == "route_winner":
            self._new_period_if_concluded()

    @property
    def phase(self) -> str:
        return (
            "concluded" if self.winner is not None and self.conclude == "route_winner" else "active"
        )

    def choose(self, context: Context) -> Decision:
        w = self.winner
        period = self._periods[-1]
        if w is not None and self.conclude == "route_winner":
            self._stats[w].decisions += 1
            period.decisions[w] += 1
            if context.bucket is not None and self.sticky:
                self.units.add(period.groups[w], context.bucket, 1.0, 0.0)
            return Decision(w, 1.0)
        b = context.bucket
        if b is not None:
            j = bisect.bisect_right(self._bounds, b)
        else:
            j = bisect.bisect_right(self._cum, self._rnd.random())
        j = min(j, len(self.arms) - 1)
        arm = self.arms[j]
        if b is not None and self.sticky:
            self.units.add(period.groups[arm], b, 1.0, 0.0)
        self._stats[arm].decisions += 1
        period.decisions[arm] += 1
        return Decision(arm, self.weights[arm])

    def update(
        self, arm: str, reward: float, context: Context | None = None, trial: bool = True
    ) -> None:
        """Fold in one reward; `trial=False` credits a trial already counted (missing_reward)."""
        s = self._stats[arm]
        bucket = context.bucket if context is not None and self.sticky else None
        if trial:
            s.rewards += 1
            self._obs[arm].add(reward, bucket)
        else:
            self._obs[arm].correct(reward, bucket)
        s.reward_sum += reward
        s.reward_sq_sum += reward * reward

    def observe_guardrail(
        self, arm: str, metric: str, value: float, context: Context | None = None
    ) -> None:
        """One observation of a guardrail metric (error 0/1, latency seconds, second reward)."""
        bucket = context.bucket if context is not None and self.sticky else None
        self.guardrails.observe(arm, metric, value, bucket)

    def stats(self) -> Mapping[str, ArmStats]:
        return self._stats

    def shares(self) -> dict[str, float]:
        if self.winner is not None and self.conclude == "route_winner":
            return {a: 1.0 if a == self.winner else 0.0 for a in self.arms}
        return dict(self.weights)

    # ---- the test ------------------------------------------------------------------------------

    @property
    def _bernoulli(self) -> bool:
        """Per-request 0/1 observations: the pooled variance is exact under the null."""
        return self.reward_type == "binary" and not self.sticky

    def _pair_look(self, c: st.Sample, t: st.Sample, key: str) -> dict[str, Any]:
        """Compare t with c: difference, relative lift, interval and p-value at this look."""
        d = float(t.mean - c.mean)
        bern = self._bernoulli
        out: dict[str, Any] = {"diff": d}
        v_test = float(st.test_variance(c, t, bern))
        rel = d / c.mean if c.mean != 0 else None
        if self.method == "msprt":
            tau2 = float(st.default_tau2(c, t, self.mixing_sd))
            p_now = float(st.msprt_look(c, t, tau2, bern))
            p = min(self._running_p[key], p_now)
            self._running_p[key] = p
            lo, hi = st.confidence_sequence(c, t, tau2, self.alpha, bern)
            cs = self._running_cs[key]
            cs[0], cs[1] = max(cs[0], lo), min(cs[1], hi)
            lo, hi = cs
            if lo > hi:  # intersection emptied by approximation error: keep the latest
                lo, hi = (cs[0], cs[1]) = (min(lo, hi), max(lo, hi))
            out["interval"] = "confidence_sequence"
            out["mde"] = st.mde(v_test, self.alpha, tau2=tau2) if tau2 > 0 else None
            half_rel = None
            if rel is not None:
                v_rel = _relative_variance(c, t, v_test)
                half_rel = float(st.boundary(v_rel, tau2 / (c.mean * c.mean), self.alpha))
        else:
            if self.method == "z_test" and self.reward_type == "binary":
                v = float(st.null_variance(c, t))
                z = d / math.sqrt(v) if v > 0 else 0.0
                p = math.erfc(abs(z) / math.sqrt(2.0)) if v > 0 else 1.0
                crit = st.Z95 if self.alpha == 0.05 else st.norm_ppf(1 - self.alpha / 2)
            else:
                v1 = float(st.unpooled_variance(c, t))
                df = st.welch_df(c, t)
                if c.units < 2 or t.units < 2:
                    p = 1.0
                elif v1 <= 0:
                    p = 0.0 if d != 0 else 1.0  # both constant: any difference is certain
                else:
                    p = float(2.0 * st.t_cdf(-abs(d) / math.sqrt(v1), df))
                crit = st.t_ppf(1 - self.alpha / 2, df)
            v_ci = float(st.interval_variance(c, t))
            half = crit * math.sqrt(v_ci)
            lo, hi = d - half, d + half
            out["interval"] = "confidence_interval"
            out["mde"] = st.mde(v_test, self.alpha)
            half_rel = None
            if rel is not None:
                half_rel = crit * math.sqrt(_relative_variance(c, t, v_test))
        out["diff_low"], out["diff_high"] = _finite(lo), _finite(hi)
        out["lift"] = rel
        if rel is not None and half_rel is not None and math.isfinite(half_rel):
            out["lift_low"], out["lift_high"] = rel - half_rel, rel + half_rel
        else:
            out["lift_low"] = out["lift_high"] = None
        mde = out["mde"]
        out["mde"] = _finite(mde)
        out["mde_relative"] = (
            _finite(mde / abs(c.mean)) if mde is not None and c.mean != 0 else None
        )
        out["p_value"] = p
        return out

    def result(self) -> dict[str, Any]:
        """Look at the data once (an mSPRT look) and return the test result for status."""
        by_unit = self.sticky
        samples = {a: self._obs[a].sample(by_unit) for a in self.arms}
        control = self.arms[0]
        guard = self.guardrails.result()
        failed = {a for a, g in guard.get("arms", {}).items() if g.get("failed")}
        enough = all(samples[a].n >= self.min_samples for a in self.arms)
        out: dict[str, Any] = {
            "method": self.method,
            "alpha": self.alpha,
            "control": control,
            "unit": self.unit,
        }
        arms_out: dict[str, Any] = {}
        for a in self.arms:
            s = samples[a]
            half = None
            if s.units >= 2:
                half = st.t_ppf(1 - self.alpha / 2, float(s.units) - 1) * math.sqrt(
                    float(s.var_mean)
                )
            arms_out[a] = {
                "n": int(s.n),
                "units": int(s.units),
                "mean": float(s.mean) if s.n else None,
                "ci_low": float(s.mean) - half if half is not None else None,
                "ci_high": float(s.mean) + half if half is not None else None,
            }
        out["arms"] = arms_out
        if self.method == "bayesian":
            self._bayesian(samples, enough, failed, out)
        else:
            self._frequentist(samples, enough, failed, out)
        out["means"] = {a: (float(samples[a].mean) if samples[a].n else None) for a in self.arms}
        out["winner"] = self.winner
        out["decided"] = self.winner is not None
        out["min_samples"] = self.min_samples
        least = min(float(samples[a].n) for a in self.arms)
        out["progress"] = {
            "min_samples": self.min_samples,
            "least_arm": int(least),
            "fraction": min(1.0, least / self.min_samples) if self.min_samples > 0 else 1.0,
        }
        out["srm"] = self._srm()
        if guard.get("metrics"):
            out["guardrails"] = guard
        return out

    def _bayesian(
        self, m: Mapping[str, st.Sample], enough: bool, failed: set[str], out: dict[str, Any]
    ) -> None:
        if self.reward_type == "binary" and not self.sticky:
            pb, loss = st.bayes_binary(
                [float(m[a].n * m[a].mean) for a in self.arms],
                [float(m[a].n) for a in self.arms],
                self._np,
            )
        else:
            # normal posterior of each mean with the (delta-method) variance over units
            mom = [
                st.Moments(float(m[a].n), float(m[a].mean), float(m[a].var) * (m[a].n - 1))
                if m[a].n >= 2
                else st.Moments(float(m[a].n), float(m[a].mean), 0.0)
                for a in self.arms
            ]
            pb, loss = st.bayes_normal(mom, self._np)
        out["prob_best"] = dict(zip(self.arms, pb, strict=True))
        out["expected_loss"] = dict(zip(self.arms, loss, strict=True))
        order = sorted(range(len(pb)), key=pb.__getitem__, reverse=True)
        j = order[0]
        if (
            self.winner is None
            and enough
            and pb[j] >= 1.0 - self.alpha
            and self.arms[j] not in failed
        ):
            self.winner = self.arms[j]

    def _frequentist(
        self, m: Mapping[str, st.Sample], enough: bool, failed: set[str], out: dict[str, Any]
    ) -> None:
        control = self.arms[0]
        looks = {}
        for a, b in self._pairs:
            looks[(a, b)] = self._pair_look(m[a], m[b], _pair_key(a, b))
        treatments = list(self.arms[1:])
        family = {t: looks[(control, t)]["p_value"] for t in treatments}
        leaders: tuple[str, str] | None = None
        if len(treatments) >= 2:
            ranked = sorted(treatments, key=lambda a: float(m[a].mean), reverse=True)
            x, y = ranked[0], ranked[1]
            leaders = (y, x) if (y, x) in looks else (x, y)
            family["__leaders__"] = looks[leaders]["p_value"]
        adjusted = st.holm(family) if len(family) > 1 else dict(family)
        comparisons: dict[str, Any] = {}
        for t in treatments:
            entry = dict(looks[(control, t)])
            entry["vs"] = control
            entry["p_adjusted"] = adjusted[t]
            entry["significant"] = adjusted[t] < self.alpha
            comparisons[t] = entry
        out["comparisons"] = comparisons
        out["p_value"] = {t: looks[(control, t)]["p_value"] for t in treatments}
        out["p_adjusted"] = {t: adjusted[t] for t in treatments}
        out["correction"] = "holm" if len(family) > 1 else "none"
        if leaders is not None:
            a, b = leaders
            entry = dict(looks[leaders])
            entry["arms"] = [a, b]
            entry["p_adjusted"] = adjusted["__leaders__"]
            entry["significant"] = adjusted["__leaders__"] < self.alpha
            out["leaders"] = entry
        significant = [t for t in treatments if adjusted[t] < self.alpha and t not in failed]
        if self.winner is None and enough and significant:
            candidates = [a for a in (control, *significant) if a not in failed]
            if candidates:
                self.winner = max(candidates, key=lambda a: float(m[a].mean))
                self._new_period_if_concluded()

    def _new_period_if_concluded(self) -> None:
        if self.winner is not None and self.conclude == "route_winner":
            self._periods.append(
                _Period(
                    "route_winner",
                    {a: 1.0 if a == self.winner else 0.0 for a in self.arms},
                    index=len(self._periods),
                )
            )

    def _srm(self) -> dict[str, Any]:
        """Sample-ratio mismatch, judged per period against the split in force then.

        The p-value is always valid (running maximum of a Dirichlet-multinomial Bayes factor),
        because the router looks at it every second; `chi2_p_value` is this look's classic
        chi-square. On sticky routes counts are divided by the per-bucket dispersion (users)."""
        periods = []
        worst = 1.0
        tested = 0
        for per in self._periods:
            arms = [a for a in self.arms if per.weights.get(a, 0.0) > 0]
            entry: dict[str, Any] = {"period": per.label, "weights": per.weights}
            if len(arms) < 2:
                strays = sum(n for a, n in per.decisions.items() if a not in arms)
                entry.update(p_value=None, flagged=False, dispersion=None, stray=strays)
                periods.append(entry)
                continue
            observed = [float(per.decisions[a]) for a in arms]
            phi = 1.0
            if self.sticky and len(per.bounds) == len(per.weights):
                phi = self._dispersion(per, self.units)
            weights = [per.weights[a] for a in arms]
            chi2_p, _ = st.srm_test(observed, weights, phi)
            log_bf = float(st.srm_log_bayes_factor(observed, weights, phi))
            per.max_log_bf = max(per.max_log_bf, log_bf)
            p = min(1.0, math.exp(-per.max_log_bf))
            entry.update(
                p_value=p, flagged=p < st.SRM_THRESHOLD, dispersion=phi, chi2_p_value=chi2_p
            )
            periods.append(entry)
            worst = min(worst, p)
            tested += 1
        p_all = min(1.0, worst * max(tested, 1))
        return {
            "p_value": p_all,
            "flagged": p_all < st.SRM_THRESHOLD,
            "unit": self.unit,
            "test": "sequential",
            "periods": periods,
        }

    @staticmethod
    def _dispersion(per: _Period, log: UnitLog) -> float:
        """Per-bucket overdispersion of the period's decisions, from the merged sums of N_u
        and N_u^2 over each arm's buckets."""
        sums, sq, owned = [], [], []
        lo = 0
        for a, hi in zip(per.weights, per.bounds, strict=True):
            u = log.sums(per.group(a), per.bucketed[a])
            sums.append(float(u[0]))
            sq.append(float(u[2]))
            owned.append(float(hi - lo))
            lo = hi
        keep = [i for i, b in enumerate(owned) if b > 0]
        return float(
            st.srm_dispersion(
                [sums[i] for i in keep], [sq[i] for i in keep], [owned[i] for i in keep]
            )
        )

    # ---- persistence ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "arms": {a: s.to_json() for a, s in self._stats.items()},
            "obs": {a: o.state() for a, o in self._obs.items()},  # local moments only
            "running_p": dict(self._running_p),
            "running_cs": {k: [_finite(x) for x in v] for k, v in self._running_cs.items()},
            "periods": [p.state() for p in self._periods],
            "guardrails": self.guardrails.state(),
            "winner": self.winner,
        }

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        out = {f"ab.v1/{a}": np.array(s.to_array(), dtype=float) for a, s in self._stats.items()}
        for o in self._obs.values():
            out.update(o.additive())
        for p in self._periods:
            out.update(p.additive())
        out.update(self.guardrails.additive())
        return out

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        for a in self._stats:
            self._stats[a] = ArmStats.from_array(totals[f"ab.v1/{a}"])
        for o in self._obs.values():
            o.load_additive(totals)
        for p in self._periods:
            p.load_additive(totals)
        self.guardrails.load_additive(totals)

    def take_units(self) -> Units:
        """The per-bucket increments recorded since the last call (for `Store.merge`)."""
        return self.units.take()

    def set_trial_value(self, value: float) -> None:
        """Every trial starts at `value` (missing_reward), so a correction knows what it
        replaces even in a process that did not see the trial."""
        self._trial_value = value
        for o in self._obs.values():
            o.trial_value = value

    def restore(self, state: Mapping[str, Any]) -> None:
        for a, d in state.get("arms", {}).items():
            if a in self._stats:
                self._stats[a] = ArmStats.from_json(d)
        plain: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
        rows: Units = {}
        obs = state.get("obs")
        if isinstance(obs, Mapping):
            for a, d in obs.items():
                if a in self._obs and isinstance(d, Mapping):
                    acc = self._obs[a]
                    acc.restore(d)
                    _legacy_acc(acc.name, d, plain, rows)
        else:
            # a snapshot from before per-unit statistics: rebuild per-request moments
            for a, s in self._stats.items():
                if s.rewards:
                    m = st.Moments.from_sums(s.rewards, s.reward_sum, s.reward_sq_sum)
                    self._obs[a].all = st.Welford(int(m.n), m.mean, m.m2)
                    plain[self._obs[a].name + ".l"] = np.array(
                        [float(s.rewards), s.reward_sum, s.reward_sq_sum]
                    )
        for k, p in state.get("running_p", {}).items():
            if k in self._running_p and isinstance(p, int | float) and math.isfinite(p):
                self._running_p[k] = float(p)
        # older snapshots: msprt_p per treatment arm (against the control)
        for a, p in state.get("msprt_p", {}).items():
            k = _pair_key(self.arms[0], a)
            if k in self._running_p and isinstance(p, int | float) and math.isfinite(p):
                self._running_p[k] = float(p)
        for k, cs in state.get("running_cs", {}).items():
            if k in self._running_cs and isinstance(cs, list) and len(cs) == 2:
                lo, hi = cs
                self._running_cs[k] = [
                    -math.inf if lo is None else float(lo),
                    math.inf if hi is None else float(hi),
                ]
        periods = state.get("periods")
        if isinstance(periods, list) and periods:
            self._periods = [_Period.from_state(p, self.arms, i) for i, p in enumerate(periods)]
            for per, d in zip(self._periods, periods, strict=True):
                _legacy_period(per, d, plain, rows)
        g = state.get("guardrails")
        if isinstance(g, Mapping):
            self.guardrails.restore(g)
            for k, d in g.get("acc", {}).items():
                label, _, a = str(k).rpartition("|")
                if a in self.arms and isinstance(d, Mapping):
                    _legacy_acc(f"abg.v1/{label}|{a}", d, plain, rows)
        # statistics a document from before merged per-user sums held; the engine adds them to
        # the shared sums once (whichever process claims the migration)
        self.legacy = (plain, rows)
        w = state.get("winner")
        self.winner = w if w in self._stats else None
        if self.winner is not None and len(self._periods) == 1:
            self._new_period_if_concluded()


def _legacy_acc(
    name: str,
    d: Mapping[str, Any],
    plain: dict[str, np.ndarray[Any, np.dtype[np.float64]]],
    rows: Units,
) -> None:
    if "loose" in d:
        plain[name + ".l"] = legacy_sums(d["loose"])
    if "n_b" in d and "s_b" in d:
        rows[name + ".u"] = legacy_rows(d["n_b"], d["s_b"])


def _legacy_period(
    per: _Period,
    d: Mapping[str, Any],
    plain: dict[str, np.ndarray[Any, np.dtype[np.float64]]],
    rows: Units,
) -> None:
    decisions = d.get("decisions")
    if isinstance(decisions, Mapping):
        plain[per.name] = np.array([float(decisions.get(a, 0)) for a in per.weights])
    if "bucketed" in d and len(per.bounds) == len(per.weights):
        all_rows = legacy_rows(d["bucketed"])
        lo = 0
        for a, hi in zip(per.weights, per.bounds, strict=True):
            b = all_rows[:, 0]
            rows[per.group(a)] = all_rows[(b >= lo) & (b < hi)]
            lo = hi


def _pair_key(a: str, b: str) -> str:
    return f"{a}|{b}"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _relative_variance(c: st.Sample, t: st.Sample, v_test: float) -> float:
    """Delta-method variance of mean(t)/mean(c) - 1, each arm's variance floored by the
    within-arm pooled one so an arm without conversions yet does not make the lift look
    certain."""
    s2 = float(st.within_sigma2(c, t))
    vc = max(float(c.var_mean), s2 / float(c.n)) if c.n else math.inf
    vt = max(float(t.var_mean), s2 / float(t.n)) if t.n else math.inf
    mc = float(c.mean)
    r = float(t.mean) / mc
    return (vt + r * r * vc) / (mc * mc)
