"""Statistical tests for A/B experiments: z, Welch t, mSPRT, Bayesian, SRM and Lai–Robbins.

Pure functions of sufficient statistics (counts, sums, sums of squares) so they work on the
`ArmStats` every policy keeps. Distribution tails come from scipy.special ufuncs (microseconds,
where scipy.stats wrappers cost a hundred); tests check them against scipy.stats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special as _sp

__all__ = [
    "SRM_THRESHOLD",
    "Moments",
    "bayes_binary",
    "bayes_normal",
    "bernoulli_kl",
    "lai_robbins",
    "lai_robbins_constant",
    "msprt_lambda",
    "msprt_p_value",
    "srm_test",
    "two_proportion_z",
    "welch_t",
]

SRM_THRESHOLD = 0.001  # sample-ratio mismatch is flagged below this chi-square p-value


@dataclass(frozen=True, slots=True)
class Moments:
    """n observations with their sum and sum of squares."""

    n: float
    s: float
    ss: float

    @property
    def mean(self) -> float:
        return self.s / self.n if self.n > 0 else 0.0

    @property
    def var(self) -> float:
        """Unbiased sample variance (0 with fewer than two observations)."""
        if self.n < 2:
            return 0.0
        m = self.s / self.n
        return max(0.0, (self.ss - self.n * m * m) / (self.n - 1))


def two_proportion_z(x1: float, n1: float, x2: float, n2: float) -> tuple[float, float]:
    """Pooled two-proportion z-test of p1 == p2: returns (z, two-sided p). z > 0 when p2 > p1."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1.0 - p) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def welch_t(a: Moments, b: Moments) -> tuple[float, float]:
    """Welch's unequal-variance t-test of mean(a) == mean(b): (t, two-sided p); t > 0 when b > a.

    Matches `scipy.stats.ttest_ind(a, b, equal_var=False)` up to the sign convention.
    """
    if a.n < 2 or b.n < 2:
        return 0.0, 1.0
    va, vb = a.var / a.n, b.var / b.n
    se2 = va + vb
    if se2 <= 0.0:
        return 0.0, 1.0
    t = (b.mean - a.mean) / math.sqrt(se2)
    df = se2 * se2 / (va * va / (a.n - 1) + vb * vb / (b.n - 1))
    return t, float(2.0 * _sp.stdtr(df, -abs(t)))


def msprt_lambda(diff: float, v: float, tau2: float) -> float:
    """Mixture likelihood ratio of the normal-mixture mSPRT (Johari et al. 2017).

    `diff` is the observed difference of means, `v` its variance (sigma_a²/n_a + sigma_b²/n_b),
    `tau2` the variance of the normal mixing distribution over the true difference under H1.
    """
    if v <= 0.0 or tau2 <= 0.0:
        return 1.0
    log_l = 0.5 * math.log(v / (v + tau2)) + tau2 * diff * diff / (2.0 * v * (v + tau2))
    return math.exp(min(log_l, 700.0))


def msprt_p_value(prev_p: float, diff: float, v: float, tau2: float) -> float:
    """Always-valid p-value after one more look: p_n = min(p_{n-1}, 1 / Lambda_n)."""
    return min(prev_p, 1.0 / msprt_lambda(diff, v, tau2))


def bayes_binary(
    successes: Sequence[float],
    trials: Sequence[float],
    rng: np.random.Generator,
    draws: int = 20000,
) -> tuple[list[float], list[float]]:
    """Probability to be best and expected loss per arm under Beta(1+s, 1+n-s) posteriors.

    Monte Carlo with the injected generator (deterministic for a seeded generator).
    """
    k = len(successes)
    samples = np.empty((draws, k))
    for i, (s, n) in enumerate(zip(successes, trials, strict=True)):
        samples[:, i] = rng.beta(1.0 + s, 1.0 + max(0.0, n - s), size=draws)
    return _best_and_loss(samples)


def bayes_normal(
    moments: Sequence[Moments], rng: np.random.Generator, draws: int = 20000
) -> tuple[list[float], list[float]]:
    """Probability to be best and expected loss per arm for continuous rewards.

    Posterior of each mean ~ Normal(sample mean, sample var / n) (flat prior, large-sample).
    """
    k = len(moments)
    samples = np.empty((draws, k))
    for i, m in enumerate(moments):
        sd = math.sqrt(m.var / m.n) if m.n >= 2 else 1e6
        samples[:, i] = rng.normal(m.mean, sd, size=draws)
    return _best_and_loss(samples)


def _best_and_loss(samples: np.ndarray) -> tuple[list[float], list[float]]:
    k = samples.shape[1]
    best = np.bincount(np.argmax(samples, axis=1), minlength=k) / samples.shape[0]
    loss = np.mean(np.max(samples, axis=1)[:, None] - samples, axis=0)
    return [float(x) for x in best], [float(x) for x in loss]


def srm_test(observed: Sequence[float], weights: Sequence[float]) -> tuple[float, bool]:
    """Sample-ratio-mismatch chi-square test: (p-value, flagged at p < SRM_THRESHOLD)."""
    total = float(sum(observed))
    wsum = float(sum(weights))
    pairs = [(o, w) for o, w in zip(observed, weights, strict=True) if w > 0]
    if total <= 0 or len(pairs) < 2 or wsum <= 0:
        return 1.0, False
    obs = [o for o, _ in pairs]
    exp = [w / wsum * total for _, w in pairs]
    # weights of zero-share arms were dropped; rescale so both sides sum to the same total
    scale = sum(obs) / sum(exp)
    chi2 = sum((o - e * scale) ** 2 / (e * scale) for o, e in zip(obs, exp, strict=True))
    p = float(_sp.chdtrc(len(obs) - 1, chi2))  # == scipy.stats.chisquare(obs, exp).pvalue
    if math.isnan(p):
        p = 1.0
    return p, p < SRM_THRESHOLD


def bernoulli_kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q))."""
    eps = 1e-15
    p = min(max(p, eps), 1.0 - eps)
    q = min(max(q, eps), 1.0 - eps)
    return p * math.log(p / q) + (1.0 - p) * math.log((1.0 - p) / (1.0 - q))


def lai_robbins_constant(means: Sequence[float]) -> float:
    """sum over suboptimal arms of (mu* - mu_a) / KL(mu_a, mu*) for Bernoulli arms."""
    best = max(means)
    return sum((best - m) / bernoulli_kl(m, best) for m in means if m < best)


def lai_robbins(means: Sequence[float], horizon: float) -> float:
    """Asymptotic lower bound on expected regret of any consistent policy at `horizon`."""
    return lai_robbins_constant(means) * math.log(max(horizon, 1.0))
