"""Guardrail metrics of experiments: error rate, a latency percentile, a second reward.

Each guardrail is tested per arm with an always-valid (normal-mixture) one-sided test, so it can
be looked at on every tick: an arm *fails* once the evidence that it breaks the limit reaches
1/alpha, and stays failed. A limit is absolute (`max` / `min`) or relative to the control arm
(`max_increase` / `max_decrease`, in the metric's units). A latency percentile limit
("p99 <= 0.5 s") is tested as the share of requests slower than 0.5 s being <= 1%.
An insignificant result is not a pass: it means "no evidence of harm yet".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies import stats as st
from policies.units import UnitAccumulator, UnitLog

__all__ = ["GUARDRAIL_METRICS", "GuardrailSet", "GuardrailSpec"]

GUARDRAIL_METRICS = ("error_rate", "latency", "reward")


@dataclass(frozen=True, slots=True)
class GuardrailSpec:
    """One guardrail as configured (`name` is what status shows)."""

    metric: str  # error_rate | latency | reward
    name: str = ""
    max: float | None = None  # error_rate: fraction; latency: seconds; reward: mean
    min: float | None = None  # reward: mean
    percentile: float = 99.0  # latency
    max_increase: float | None = None  # vs control: error_rate points, reward units
    max_decrease: float | None = None  # vs control: reward units
    binary: bool = False  # reward: 0/1 values

    def __post_init__(self) -> None:
        if self.metric not in GUARDRAIL_METRICS:
            raise ValueError(f"metric: one of {GUARDRAIL_METRICS}, got {self.metric!r}")
        limits = [
            k
            for k in ("max", "min", "max_increase", "max_decrease")
            if getattr(self, k) is not None
        ]
        if len(limits) != 1:
            raise ValueError(
                f"guardrail {self.label}: give exactly one of max, min, max_increase, "
                f"max_decrease (got {limits or 'none'})"
            )
        allowed = {
            "error_rate": ("max", "max_increase"),
            "latency": ("max",),
            "reward": ("max", "min", "max_increase", "max_decrease"),
        }[self.metric]
        if limits[0] not in allowed:
            raise ValueError(
                f"guardrail {self.label}: {limits[0]} does not apply to {self.metric}; "
                f"use {' or '.join(allowed)}"
            )
        if self.metric == "error_rate" and self.max is not None and not 0 < self.max < 1:
            raise ValueError(f"guardrail {self.label}: max must be in (0, 1), got {self.max}")
        if self.metric == "latency":
            if not 0 < self.percentile < 100:
                raise ValueError(
                    f"guardrail {self.label}: percentile must be in (0, 100), got {self.percentile}"
                )
            if self.max is None or not self.max > 0:
                raise ValueError(f"guardrail {self.label}: max (seconds) must be > 0")
        for k in ("max_increase", "max_decrease"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise ValueError(f"guardrail {self.label}: {k} must be >= 0, got {v}")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.metric == "latency":
            return f"latency_p{self.percentile:g}"
        return self.metric

    @property
    def source(self) -> str:
        """Which observation stream feeds it: error_rate, latency or reward:<name>."""
        return f"reward:{self.name}" if self.metric == "reward" else self.metric

    @property
    def is_binary(self) -> bool:
        return self.metric in ("error_rate", "latency") or self.binary


class GuardrailSet:
    """The guardrails of one route and their per-arm accumulators and running p-values."""

    def __init__(
        self,
        specs: Sequence[GuardrailSpec],
        arms: Sequence[str],
        *,
        alpha: float = 0.05,
        by_unit: bool = False,
        log: UnitLog | None = None,
    ) -> None:
        labels = [g.label for g in specs]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"guardrail names must be unique; repeated: {sorted(dup)}")
        self.specs = tuple(specs)
        self.arms = tuple(arms)
        self.alpha = alpha
        self.by_unit = by_unit
        self._log = log  # per-bucket increments to flush (A/B routes), else local only
        self._acc = {(g.label, a): self._new_acc(g.label, a) for g in self.specs for a in self.arms}
        self._p = {(g.label, a): 1.0 for g in self.specs for a in self.arms}
        self._by_source: dict[str, list[GuardrailSpec]] = {}
        for g in self.specs:
            self._by_source.setdefault(g.source, []).append(g)

    def set_arms(self, arms: Sequence[str]) -> None:
        """Kept arms keep their observations and running p-values; new arms start empty."""
        self.arms = tuple(arms)
        for g in self.specs:
            for a in self.arms:
                if (g.label, a) not in self._acc:
                    self._acc[(g.label, a)] = self._new_acc(g.label, a)
                self._p.setdefault((g.label, a), 1.0)

    def _new_acc(self, label: str, arm: str) -> UnitAccumulator:
        return UnitAccumulator(f"abg.v1/{label}|{arm}", self._log)

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """The merged sums of the current arms' accumulators (see `policies.units`)."""
        out: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
        for g in self.specs:
            for a in self.arms:
                out.update(self._acc[(g.label, a)].additive())
        return out

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        for g in self.specs:
            for a in self.arms:
                self._acc[(g.label, a)].load_additive(totals)

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(self._by_source)

    def observe(self, arm: str, source: str, value: float, bucket: int | None = None) -> None:
        for g in self._by_source.get(source, ()):
            acc = self._acc.get((g.label, arm))
            if acc is None:
                continue
            x = value
            if g.metric == "latency":
                assert g.max is not None
                x = 1.0 if value > g.max else 0.0
            acc.add(x, bucket if self.by_unit else None)

    def failed(self) -> set[str]:
        return {a for (_, a), p in self._p.items() if p < self.alpha}

    def result(self) -> dict[str, Any]:
        if not self.specs:
            return {}
        arms: dict[str, Any] = {a: {"failed": False, "checks": []} for a in self.arms}
        control = self.arms[0]
        for g in self.specs:
            samples = {a: self._acc[(g.label, a)].sample(self.by_unit) for a in self.arms}
            for a in self.arms:
                key = (g.label, a)
                check = self._look(g, samples[a], samples[control], a == control)
                if check is None:
                    continue
                p_now, value, limit = check
                self._p[key] = min(self._p[key], p_now)
                fail = self._p[key] < self.alpha
                entry = {
                    "guardrail": g.label,
                    "metric": g.metric,
                    "value": value,
                    "limit": limit,
                    "n": int(samples[a].n),
                    "p_value": self._p[key],
                    "failed": fail,
                }
                arms[a]["checks"].append(entry)
                if fail:
                    arms[a]["failed"] = True
        return {"metrics": [g.label for g in self.specs], "alpha": self.alpha, "arms": arms}

    def _look(
        self, g: GuardrailSpec, s: st.Sample, c: st.Sample, is_control: bool
    ) -> tuple[float, float | None, str] | None:
        """(p-value of this look for "the arm breaks the limit", observed value, limit text)."""
        bern = g.is_binary and not self.by_unit
        if g.max_increase is not None or g.max_decrease is not None:
            if is_control:
                return None
            if g.max_increase is not None:
                margin, sign, text = g.max_increase, 1.0, f"control + {g.max_increase:g}"
            else:
                assert g.max_decrease is not None
                margin, sign, text = g.max_decrease, -1.0, f"control - {g.max_decrease:g}"
            value = float(s.mean) if s.n else None
            if not s.n or not c.n:
                return 1.0, value, text
            excess = sign * float(s.mean - c.mean) - margin
            v = float(st.test_variance(c, s, bern))
            tau2 = float(st.default_tau2(c, s, None))
            ready = bool(st.sequential_ready(c, s, bern))
            return _one_sided(excess, v, tau2, ready), value, text
        # absolute limit
        value = float(s.mean) if s.n else None
        if g.metric == "latency":
            assert g.max is not None
            bound, sign = 1.0 - g.percentile / 100.0, 1.0
            text = f"p{g.percentile:g} <= {g.max:g}s"
            value = value  # the share of requests slower than the limit
        elif g.max is not None:
            bound, sign, text = g.max, 1.0, f"<= {g.max:g}"
        else:
            assert g.min is not None
            bound, sign, text = g.min, -1.0, f">= {g.min:g}"
        if not s.n:
            return 1.0, value, text
        excess = sign * (float(s.mean) - bound)
        if g.is_binary:
            b = min(max(bound, 1e-9), 1 - 1e-9)
            v0 = b * (1.0 - b) / float(s.n)
            v = v0 if bern else max(v0, float(s.var_mean))
            sigma2 = b * (1.0 - b)
            ready = s.units >= st.SEQ_MIN_UNITS and min(b, 1 - b) * float(s.n) >= st.SEQ_MIN_EVENTS
        else:
            v = float(s.var_mean)
            sigma2 = float(s.var)
            ready = s.units >= st.SEQ_MIN_UNITS
        tau2 = st.DEFAULT_MIXING_SD**2 * sigma2
        return _one_sided(excess, v, tau2, bool(ready)), value, text

    def state(self) -> dict[str, Any]:
        return {
            "acc": {f"{g}|{a}": acc.state() for (g, a), acc in self._acc.items()},
            "p": {f"{g}|{a}": p for (g, a), p in self._p.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        for k, d in state.get("acc", {}).items():
            g, _, a = str(k).rpartition("|")
            if (g, a) in self._acc and isinstance(d, Mapping):
                self._acc[(g, a)].restore(d)
        for k, p in state.get("p", {}).items():
            g, _, a = str(k).rpartition("|")
            if (g, a) in self._p and isinstance(p, int | float) and math.isfinite(p):
                self._p[(g, a)] = float(p)


def _one_sided(excess: float, v: float, tau2: float, ready: bool) -> float:
    """Always-valid p-value that the true excess over the limit is > 0 (1 if it looks <= 0)."""
    if not ready or excess <= 0 or v <= 0 or tau2 <= 0:
        return 1.0
    return min(1.0, math.exp(-float(st.msprt_log_lambda(excess, v, tau2))))
