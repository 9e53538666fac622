"""Reward and estimated pseudo-regret accounting (SPEC §5), with the estimate's uncertainty.

Three ways to judge a decision, chosen by `RegretTracker.attach(policy)`:

- **plain** (A/B tests, bandits with discount 1): every decision is judged with the *current*
  per-(label, arm) means when the estimate is read, so early decisions are judged with today's
  knowledge, not with the near-equal guesses there were when they were made.
- **discounted** (bandits with discount < 1): today's means are the wrong yardstick for a
  decision made before the environment changed. Each decision's weight decays on the policy's
  own clock (trials folded in) by the policy's discount; the part that decays away is frozen,
  judged with the policy's discounted estimates of that time, i.e. about one window
  1 / (1 - discount) after the decision, when its window's rewards are in.
- **contextual** (linear policies): the gap of a decision is max_a x.theta_a - x.theta_chosen
  under the policy's model, for the full feature vector x (numeric features included). The last
  `window` decisions are re-judged with the current model at every read; older ones were frozen
  with the model of the time they left the window.

`summary()` also gives a standard deviation of the estimate (delta method on the means or the
model's coefficients, treating frozen pieces as independent) and the uniform-routing baseline.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["RegretTracker", "true_regret"]

_WINDOW = 1000  # contextual: decisions re-judged with the current model at every read
_FREEZE_STEP = 0.05  # discounted: freeze every 5% of a window (in trials)
_Z95 = 1.959963984540054
_DRAWS = 32  # contextual: posterior draws behind the estimate's standard deviation


class RegretTracker:
    """Estimated cumulative pseudo-regret from per-(label, arm) decision counts and reward sums.

    Plain mode: per context label c and arm a it keeps decisions D[c,a], rewarded trials n[c,a]
    and the reward sum s[c,a]; mu[c,a] = s/n. SPEC §5 defines the estimate as the sum over
    decisions of (best estimated arm mean - chosen arm's estimated mean); with the current
    estimates that sum is

        regret = sum_c sum_a D[c,a] * (max_a' mu[c,a'] - mu[c,a])

    which costs O(labels x arms) per read and nothing per decision. Arms with no rewarded trial
    in a label have no estimate: they are left out of that label's max and their decisions add
    nothing (an unknown gap is not guessed). The discounted and contextual modes (see the module
    docstring) use the attached policy's own estimates instead; the per-label counts are kept in
    every mode for the per-context views.

    `regret_uniform` is what routing uniformly at random would have lost on the same decisions
    under the same estimates, a baseline to read the estimate against.
    """

    __slots__ = (
        "_buf",
        "_clock",
        "_d",
        "_frozen",
        "_live",
        "_mode",
        "_n",
        "_policy",
        "_s",
        "_window",
    )

    def __init__(self, window: int = _WINDOW) -> None:
        self._d: dict[str | None, dict[str, float]] = {}
        self._n: dict[str | None, dict[str, float]] = {}
        self._s: dict[str | None, dict[str, float]] = {}
        self._policy: Any = None
        self._mode = "plain"
        self._window = window
        self._buf: deque[tuple[str, np.ndarray]] = deque()
        self._live: dict[str, float] = {}  # discounted: decision weights not frozen yet
        self._clock = 0.0  # discounted: policy clock at the last freeze
        # regret, its variance (discounted) or standard deviation (contextual), uniform baseline
        self._frozen = [0.0, 0.0, 0.0]

    def attach(self, policy: Any) -> None:
        """Judge with `policy`'s estimates: a linear model (theta, A_inv) or a discounted bandit."""
        self._policy = policy
        if hasattr(policy, "theta") and hasattr(policy, "A_inv"):
            self._mode = "contextual"
        elif getattr(policy, "discount", 1.0) < 1.0 and hasattr(policy, "clock"):
            self._mode = "discounted"
            self._clock = float(policy.clock)
        else:
            self._mode = "plain"

    @property
    def mode(self) -> str:
        return self._mode

    def decision(self, arm: str, label: str | None = None, x: Any = None) -> None:
        """Count one decision for `arm` in context `label` (feature vector `x`, if contextual)."""
        d = self._d.get(label)
        if d is None:
            d = self._d[label] = {}
        d[arm] = d.get(arm, 0.0) + 1.0
        mode = self._mode
        if mode == "plain":
            return
        if mode == "discounted":
            clock = self._policy.clock
            if clock - self._clock >= self._step():
                self._freeze(clock)
            self._live[arm] = self._live.get(arm, 0.0) + 1.0
        elif x is not None:
            buf = self._buf
            buf.append((arm, x))
            if len(buf) >= 2 * self._window:
                # freeze the oldest half in one vectorised pass (nothing per decision)
                batch = [buf.popleft() for _ in range(self._window)]
                g, sd, u = self._judge(batch)
                f = self._frozen
                f[0] += g
                f[1] += sd
                f[2] += u

    def reward(self, arm: str, reward: float, label: str | None = None, trial: bool = True) -> None:
        """Fold in one reward; `trial=False` adds to the sum of a trial counted earlier."""
        n = self._n.setdefault(label, {})
        s = self._s.setdefault(label, {})
        if trial:
            n[arm] = n.get(arm, 0.0) + 1.0
        else:
            n.setdefault(arm, 0.0)
        s[arm] = s.get(arm, 0.0) + reward

    def means(self, label: str | None = None) -> dict[str, float]:
        n = self._n.get(label, {})
        s = self._s.get(label, {})
        return {a: s[a] / c for a, c in n.items() if c > 0.0}

    def decisions(self, label: str | None = None) -> dict[str, float]:
        return dict(self._d.get(label, {}))

    def labels(self) -> list[str | None]:
        """Context labels seen, most decisions first."""
        return sorted(self._d, key=lambda c: -sum(self._d[c].values()))

    # ---- the estimate ---------------------------------------------------------------------

    def estimate(self) -> tuple[float, float]:
        """(regret, regret_uniform) under the current estimates."""
        s = self.summary()
        return s["regret"], s["regret_uniform"]

    def summary(self) -> dict[str, Any]:
        """The estimate, its standard deviation and 95% interval, and the uniform baseline."""
        if self._mode == "contextual":
            g, sd_live, u = self._judge(list(self._buf))
            f = self._frozen
            # frozen batches were judged with overlapping data: their errors are positively
            # correlated, so their standard deviations add (conservative)
            regret, var, uniform = f[0] + g, (f[1] + sd_live) ** 2, f[2] + u
        elif self._mode == "discounted":
            g, v, u = self._judge_means(self._live)
            f = self._frozen
            regret, var, uniform = f[0] + g, f[1] + v, f[2] + u
        else:
            regret, var, uniform = self._plain()
        sd = math.sqrt(max(var, 0.0)) if math.isfinite(var) else None
        return {
            "regret": regret,
            "regret_sd": sd,
            "regret_low": None if sd is None else max(0.0, regret - _Z95 * sd),
            "regret_high": None if sd is None else regret + _Z95 * sd,
            "regret_uniform": uniform,
            "regret_method": self._mode,
        }

    @property
    def regret(self) -> float:
        return self.estimate()[0]

    @property
    def regret_uniform(self) -> float:
        return self.estimate()[1]

    def _plain(self) -> tuple[float, float, float]:
        regret = 0.0
        var = 0.0
        uniform = 0.0
        policy_sd = getattr(self._policy, "mean_sd", None)
        for label, d in self._d.items():
            mu = self.means(label)
            if not mu:
                continue
            best_arm = max(mu, key=mu.__getitem__)
            best = mu[best_arm]
            regret += sum(c * (best - mu[a]) for a, c in d.items() if a in mu)
            uniform += sum(d.values()) * (best - sum(mu.values()) / len(mu))
            # delta method: d regret / d mu_best = D - D_best, d / d mu_a = -D_a
            sd = policy_sd() if label is None and policy_sd is not None else self._sd(label, mu)
            total = sum(c for a, c in d.items() if a in mu)
            for a, c in d.items():
                if a in mu:
                    grad = total - c if a == best_arm else -c
                    var += (grad * sd.get(a, math.nan)) ** 2
        return regret, var, uniform

    def _sd(self, label: str | None, mu: Mapping[str, float]) -> dict[str, float]:
        """Standard error of each label mean: binomial when rewards are in [0, 1] (which also
        bounds the variance of any reward in [0, 1]); unknown (NaN) otherwise."""
        n = self._n.get(label, {})
        out = {}
        for a, m in mu.items():
            if 0.0 <= m <= 1.0:
                p = max(m * (1.0 - m), 1.0 / (4.0 * (n[a] + 1.0)))
                out[a] = math.sqrt(p / n[a])
            else:
                out[a] = math.nan
        return out

    # discounted ----------------------------------------------------------------------------

    def _step(self) -> float:
        g = float(self._policy.discount)
        return max(1.0, _FREEZE_STEP / (1.0 - g))

    def _freeze(self, clock: float) -> None:
        """Freeze the part of the live decision weights that decayed since the last freeze."""
        keep = float(self._policy.discount) ** (clock - self._clock)
        self._clock = clock
        if not self._live:
            return
        part = {a: w * (1.0 - keep) for a, w in self._live.items()}
        g, v, u = self._judge_means(part)
        f = self._frozen
        f[0] += g
        # the ~1/_FREEZE_STEP freezes within one window use the same data (fully correlated
        # errors); windows apart use disjoint data (independent): scale the variance to match
        f[1] += v * min(1.0 / _FREEZE_STEP, 1.0 / (1.0 - keep))
        f[2] += u
        for a in self._live:
            self._live[a] *= keep

    def _judge_means(self, weights: Mapping[str, float]) -> tuple[float, float, float]:
        p = self._policy
        mu = p.means()
        if not mu or not weights:
            return 0.0, 0.0, 0.0
        sd = p.mean_sd()
        best_arm = max(mu, key=mu.__getitem__)
        best = mu[best_arm]
        total = sum(w for a, w in weights.items() if a in mu)
        regret = sum(w * (best - mu[a]) for a, w in weights.items() if a in mu)
        uniform = total * (best - sum(mu.values()) / len(mu))
        var = 0.0
        for a, w in weights.items():
            if a in mu:
                grad = total - w if a == best_arm else -w
                var += (grad * sd.get(a, 0.0)) ** 2
        return regret, var, uniform

    # contextual ---------------------------------------------------------------------------

    def _judge(self, items: list[tuple[str, np.ndarray]]) -> tuple[float, float, float]:
        """(sum of gaps, its standard deviation, uniform baseline) of decisions (arm, x) under
        the attached linear model. The gap of a decision is max_a x.theta_a - x.theta_chosen.
        The standard deviation comes from redoing the sum with coefficients drawn from their
        approximate posterior N(theta_a, sigma_a² A_a^-1) (sigma_a² the arm's reward variance,
        an upper bound on the residual variance): it includes decisions whose best arm the
        model may have wrong, which a delta method at the point estimate would miss."""
        if not items:
            return 0.0, 0.0, 0.0
        p = self._policy
        index = {a: j for j, a in enumerate(p.arms)}
        keep = [(index[a], x) for a, x in items if a in index and len(x) == p.dim]
        if not keep:
            return 0.0, 0.0, 0.0
        X = np.asarray([x for _, x in keep], dtype=float)
        chosen = np.asarray([j for j, _ in keep])
        rows = np.arange(len(keep))
        theta = np.asarray(p.theta)
        pred = X @ theta.T  # (m, k)
        gap = float((pred.max(axis=1) - pred[rows, chosen]).sum())
        uniform = float((pred.max(axis=1) - pred.mean(axis=1)).sum())
        sig2 = _residual_vars(p)
        k, d = theta.shape
        g = np.random.default_rng(len(keep))  # fixed draws: a read is reproducible
        chol = _sqrt_psd(np.asarray(p.A_inv) * sig2[:, None, None])  # (k, d, d)
        z = g.standard_normal((_DRAWS, k, d))
        draws = theta[None, :, :] + np.einsum("kij,skj->ski", chol, z)  # (s, k, d)
        pd = np.einsum("md,skd->smk", X, draws)  # (s, m, k)
        sums = (pd.max(axis=2) - pd[:, rows, chosen]).sum(axis=1)
        return gap, float(np.std(sums, ddof=1)), uniform

    # ---- persistence ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        labels = set(self._d) | set(self._n)
        out: dict[str, Any] = {
            "cells": [
                [
                    label,
                    arm,
                    self._n.get(label, {}).get(arm, 0.0),
                    self._s.get(label, {}).get(arm, 0.0),
                    self._d.get(label, {}).get(arm, 0.0),
                ]
                for label in labels
                for arm in set(self._n.get(label, {})) | set(self._d.get(label, {}))
            ],
        }
        out.update(self.local_state())
        return out

    def local_state(self) -> dict[str, Any]:
        """The discounted / contextual parts (frozen estimate, live weights, recent window):
        they are not sums, so they travel in the policy document, not the merged cells."""
        if self._mode == "plain":
            return {}
        return {
            "mode": self._mode,
            "frozen": list(self._frozen),
            "live": dict(self._live),
            "clock": self._clock,
            "window": [[a, [float(f"{v:.7g}") for v in x]] for a, x in self._buf],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a snapshot. Cells of the older 4-field form carry no decision count: their
        rewarded trials stand in for it (the closest figure they have). The frozen part of a
        discounted or contextual estimate is kept only when the mode is the same."""
        self._d.clear()
        self._n.clear()
        self._s.clear()
        for cell in state.get("cells", []):
            label, arm, n, s = cell[:4]
            d = cell[4] if len(cell) > 4 else n
            arm = str(arm)
            self._n.setdefault(label, {})[arm] = float(n)
            self._s.setdefault(label, {})[arm] = float(s)
            self._d.setdefault(label, {})[arm] = float(d)
        self.restore_local(state)

    def restore_local(self, state: Mapping[str, Any]) -> None:
        """Load `local_state()` (kept only when the mode is the same)."""
        if state.get("mode") == self._mode and self._mode != "plain":
            f = [float(v) for v in state.get("frozen", [0.0, 0.0, 0.0])][:3]
            if len(f) == 3 and all(math.isfinite(v) for v in f):
                self._frozen = f
            self._live = {str(a): float(w) for a, w in state.get("live", {}).items()}
            self._clock = float(state.get("clock", self._clock))
            self._buf = deque(
                (str(a), np.asarray(x, dtype=float)) for a, x in state.get("window", [])
            )

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """Cells (decisions, rewarded trials, reward sum) per (label, arm): they add up."""
        out: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
        for label in set(self._d) | set(self._n):
            d, n, s = self._d.get(label, {}), self._n.get(label, {}), self._s.get(label, {})
            for arm in set(d) | set(n):
                name = "regret.v1/" + json.dumps([label, arm], separators=(",", ":"))
                out[name] = np.array([d.get(arm, 0.0), n.get(arm, 0.0), s.get(arm, 0.0)])
        return out

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        """Load merged cells; names of another kind are ignored, unknown arms are kept."""
        self._d.clear()
        self._n.clear()
        self._s.clear()
        for name, x in totals.items():
            if not name.startswith("regret.v1/") or len(x) > 3:
                continue
            d, n, s = [*map(float, x), 0.0, 0.0, 0.0][:3]  # stores drop trailing zeros
            try:
                label, arm = json.loads(name[len("regret.v1/") :])
            except ValueError:
                continue
            if d != 0.0 or n != 0.0:
                self._d.setdefault(label, {})[str(arm)] = d
                self._n.setdefault(label, {})[str(arm)] = n
                self._s.setdefault(label, {})[str(arm)] = s

    def forget_arms(self, keep: set[str]) -> None:
        for table in (self._d, self._n, self._s):
            for cells in table.values():
                for arm in [a for a in cells if a not in keep]:
                    del cells[arm]
        for arm in [a for a in self._live if a not in keep]:
            del self._live[arm]
        self._buf = deque((a, x) for a, x in self._buf if a in keep)


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    """A matrix square root L (L L^T = cov) per leading index; tolerant of rounding that leaves
    a covariance a hair short of positive definite (eigenvalues clipped at 0)."""
    try:
        return np.linalg.cholesky(cov + np.eye(cov.shape[-1]) * 1e-12)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(cov)
        return vecs * np.sqrt(np.maximum(vals, 0.0))[..., None, :]  # type: ignore[no-any-return]


def _residual_vars(policy: Any) -> np.ndarray:
    """Per-arm reward variance of a linear policy (an upper bound on the residual variance)."""
    stats = policy.stats()
    out = []
    pooled: list[float] = []
    for a in policy.arms:
        v = stats[a].reward_var
        out.append(v)
        if v is not None:
            pooled.append(v)
    fill = float(np.mean(pooled)) if pooled else 1.0
    return np.asarray([fill if v is None else v for v in out], dtype=float)


def true_regret(means: Mapping[str, float], arm: str) -> float:
    """Exact pseudo-regret of one decision when the true means are known (simulation)."""
    return max(means.values()) - means[arm]
