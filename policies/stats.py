"""Statistical tests for A/B experiments: z, Welch t, mSPRT, Bayesian, SRM and Lai–Robbins.

Pure functions of sufficient statistics (counts, sums, sums of squares) so they work on the
`ArmStats` every policy keeps. Distribution tails come from scipy.special ufuncs (microseconds,
where scipy.stats wrappers cost a hundred); tests check them against scipy.stats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    """n observations summarised by their mean and sum of squared deviations (Welford's M2).

    Centred moments keep full precision where raw sums of squares cancel: rewards around 1e8
    with unit spread lose every significant digit in `ss - n * mean**2`.
    """

    n: float
    mean: float
    m2: float

    @classmethod
    def from_sums(cls, n: float, s: float, ss: float) -> Moments:
        """From raw sums (imprecise when the mean is large next to the spread)."""
        if n <= 0:
            return cls(0.0, 0.0, 0.0)
        m = s / n
        return cls(n, m, max(0.0, ss - n * m * m))

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray[Any, Any]) -> Moments:
        a = np.asarray(values, dtype=float)
        if a.size == 0:
            return cls(0.0, 0.0, 0.0)
        m = float(a.mean())
        return cls(float(a.size), m, float(((a - m) ** 2).sum()))

    @property
    def s(self) -> float:
        return self.n * self.mean

    @property
    def var(self) -> float:
        """Unbiased sample variance (0 with fewer than two observations)."""
        return self.m2 / (self.n - 1) if self.n >= 2 else 0.0


class Welford:
    """Running count, mean and M2 of a stream (Welford 1962), mergeable across replicas."""

    __slots__ = ("m2", "mean", "n")

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0) -> None:
        self.n = n
        self.mean = mean
        self.m2 = m2

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def merge(self, o: Welford) -> None:
        n = self.n + o.n
        if n == 0:
            return
        d = o.mean - self.mean
        self.mean += d * o.n / n
        self.m2 += o.m2 + d * d * self.n * o.n / n
        self.n = n

    def moments(self) -> Moments:
        return Moments(float(self.n), self.mean, self.m2)

    def to_json(self) -> list[float]:
        return [self.n, self.mean, self.m2]

    @classmethod
    def from_json(cls, d: Any) -> Welford:
        n, mean, m2 = d
        n, mean, m2 = int(n), float(mean), float(m2)
        if n < 0 or not (math.isfinite(mean) and math.isfinite(m2)) or m2 < 0:
            raise ValueError(f"bad running moments {d!r}")
        return cls(n, mean, m2)


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
        # both samples constant: any difference of means is certain (scipy: t=inf, p=0)
        if b.mean == a.mean:
            return 0.0, 1.0
        return math.copysign(math.inf, b.mean - a.mean), 0.0
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


def srm_test(
    observed: Sequence[float], weights: Sequence[float], dispersion: float = 1.0
) -> tuple[float, bool]:
    """Sample-ratio-mismatch chi-square test: (p-value, flagged at p < SRM_THRESHOLD).

    `dispersion` (>= 1, see `srm_dispersion`) divides the statistic when whole users, not single
    requests, were randomised.
    """
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
    chi2 /= max(1.0, dispersion)
    p = float(_sp.chdtrc(len(obs) - 1, chi2))  # == scipy.stats.chisquare(obs, exp).pvalue
    if math.isnan(p):
        p = 1.0
    return p, p < SRM_THRESHOLD


# ---- units of analysis, null variances, sequential tests, intervals -------------------------

Num = Any  # a float, or a numpy array of floats: the simulator evaluates many looks at once

Z95 = 1.959963984540054
SEQ_MIN_UNITS = 20  # an arm needs this many units before a sequential look counts
SEQ_MIN_EVENTS = 5.0  # binary: expected successes and failures per arm before a look counts
DEFAULT_MIXING_SD = 0.1  # mSPRT effect prior: sd = 0.1 x the pooled sd of one observation


@dataclass(frozen=True, slots=True)
class Sample:
    """One arm's data summarised over its units of analysis (sticky buckets, or requests).

    Unit u contributed N_u observations summing to S_u. The arm mean is the ratio
    sum S_u / sum N_u, and its variance comes from the delta method over units: that is what
    keeps a test honest when one user's requests are correlated (they share a sticky bucket).
    `q0`, `qn` and `nn` are sum (S_u - mean N_u)^2, sum (S_u - mean N_u) N_u and sum N_u^2,
    enough for sum (S_u - m N_u)^2 about any other m. Per-request analysis is N_u = 1.
    Fields may be numpy arrays, one entry per look or replication.
    """

    n: Num
    mean: Num
    units: Num
    q0: Num
    qn: Num
    nn: Num

    @classmethod
    def per_request(cls, m: Moments) -> Sample:
        return cls(m.n, m.mean, m.n, m.m2, 0.0, m.n)

    @classmethod
    def from_units(cls, counts: Any, sums: Any) -> Sample:
        """From per-unit observation counts N_u and sums S_u (units with N_u = 0 are skipped)."""
        big_n = np.asarray(counts, dtype=float)
        big_s = np.asarray(sums, dtype=float)
        n = float(big_n.sum())
        if n <= 0:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        mean = float(big_s.sum()) / n
        # units without observations have S_u = N_u = 0 and add nothing below
        r = big_s - mean * big_n
        units = float(np.count_nonzero(big_n))
        return cls(n, mean, units, float(r @ r), float(r @ big_n), float(big_n @ big_n))

    @classmethod
    def from_sums(cls, n: Num, s: Num, ss: Num, sn: Num, nn: Num, units: Num) -> Sample:
        """From raw sums over units (sum S_u, sum S_u^2, sum S_u N_u, sum N_u^2).

        For simulations with bounded rewards; live traffic uses the centred forms above.
        """
        mean = s / np.maximum(n, 1e-300)
        q0 = np.maximum(ss - 2.0 * mean * sn + mean * mean * nn, 0.0)
        return cls(n, mean, units, q0, sn - mean * nn, nn)

    def q(self, m: Num) -> Num:
        """sum over units of (S_u - m N_u)^2."""
        d = self.mean - m
        return self.q0 + 2.0 * d * self.qn + d * d * self.nn

    def merge(self, o: Sample) -> Sample:
        """The two samples' units together (scalar fields only)."""
        n = self.n + o.n
        if n <= 0:
            return self
        mean = self.mean + (o.mean - self.mean) * o.n / n
        return Sample(
            n,
            mean,
            self.units + o.units,
            self.q(mean) + o.q(mean),
            self.qn + (self.mean - mean) * self.nn + o.qn + (o.mean - mean) * o.nn,
            self.nn + o.nn,
        )

    @property
    def var_mean(self) -> Num:
        """Delta-method variance of the arm mean over units (s^2/n per request); 0 below 2."""
        u = np.asarray(self.units, dtype=float)
        n = np.maximum(np.asarray(self.n, dtype=float), 1e-300)
        n = np.maximum(n, 1.0)
        out = np.where(u >= 2, self.q0 / (n * n) * u / np.maximum(u - 1.0, 1.0), 0.0)
        return out if out.ndim else float(out)

    @property
    def var(self) -> Num:
        """Variance of one observation's worth: var_mean * n (includes the clustering)."""
        return self.var_mean * self.n


def _f(x: Num) -> Num:
    a = np.asarray(x, dtype=float)
    return a if a.ndim else float(a)


def pooled_sigma2(c: Sample, t: Sample) -> Num:
    """Per-observation variance with both arms pooled about their common mean (the null)."""
    n = c.n + t.n
    safe = np.maximum(n, 1e-300)
    m0 = (c.n * c.mean + t.n * t.mean) / safe
    return _f((c.q(m0) + t.q(m0)) / safe)


def null_variance(c: Sample, t: Sample) -> Num:
    """Variance of mean(t) - mean(c) if the arms did not differ: pooled, so never 0 because one
    arm happens to have no conversions yet (the defect that broke mSPRT on uneven splits)."""
    inv = 1.0 / np.maximum(c.n, 1e-300) + 1.0 / np.maximum(t.n, 1e-300)
    return _f(pooled_sigma2(c, t) * inv)


def unpooled_variance(c: Sample, t: Sample) -> Num:
    return _f(c.var_mean + t.var_mean)


def within_sigma2(c: Sample, t: Sample) -> Num:
    """Per-observation variance pooled within arms (each about its own mean)."""
    n = np.maximum(c.n + t.n, 1e-300)
    return _f((c.q0 + t.q0) / n)


def interval_variance(c: Sample, t: Sample) -> Num:
    """Variance of mean(t) - mean(c) for an interval (any true difference): the arms' own
    (unpooled) variances, each at least the within-arm pooled one, so an arm with no
    conversions yet does not look certain."""
    s2 = within_sigma2(c, t)
    vc = np.maximum(c.var_mean, s2 / np.maximum(c.n, 1e-300))
    vt = np.maximum(t.var_mean, s2 / np.maximum(t.n, 1e-300))
    return _f(vc + vt)


def test_variance(c: Sample, t: Sample, bernoulli: bool) -> Num:
    """The variance a test of "no difference" divides by.

    Per-request 0/1 rewards: the pooled null variance, exact under the null (a rate fixes its
    variance). Otherwise the larger of pooled and unpooled, so unequal spreads on an uneven split
    (Behrens-Fisher) cannot shrink it below the arms' own variances.
    """
    v0 = null_variance(c, t)
    if bernoulli:
        return v0
    return _f(np.maximum(v0, unpooled_variance(c, t)))


def msprt_log_lambda(diff: Num, v: Num, tau2: Num) -> Num:
    """log of the normal-mixture likelihood ratio (Johari et al. 2017); 0 where v or tau2 is 0."""
    v = np.asarray(v, dtype=float)
    tau2 = np.asarray(tau2, dtype=float)
    ok = (v > 0.0) & (tau2 > 0.0)
    vs = np.where(ok, v, 1.0)
    ts = np.where(ok, tau2, 1.0)
    with np.errstate(over="ignore"):
        out = 0.5 * np.log(vs / (vs + ts)) + ts * diff * diff / (2.0 * vs * (vs + ts))
    return _f(np.where(ok, out, 0.0))


def boundary(v: Num, tau2: Num, alpha: float) -> Num:
    """|difference| at which the mixture ratio reaches 1/alpha: the half-width of the
    confidence sequence for a difference whose estimate has variance v."""
    v = np.asarray(v, dtype=float)
    tau2 = np.asarray(tau2, dtype=float)
    ok = (v > 0.0) & (tau2 > 0.0)
    vs = np.where(ok, v, 1.0)
    ts = np.where(ok, tau2, 1.0)
    h = np.sqrt(vs * (vs + ts) / ts * (2.0 * math.log(1.0 / alpha) + np.log((vs + ts) / vs)))
    return _f(np.where(ok, h, np.inf))


def sequential_ready(c: Sample, t: Sample, bernoulli: bool) -> Num:
    """Whether a sequential look counts yet: enough units per arm and, for 0/1 rewards, enough
    expected successes and failures in each arm for the normal mixture to hold."""
    ok = (np.asarray(c.units) >= SEQ_MIN_UNITS) & (np.asarray(t.units) >= SEQ_MIN_UNITS)
    if bernoulli:
        n = c.n + t.n
        m0 = (c.n * c.mean + t.n * t.mean) / np.maximum(n, 1e-300)
        small = np.minimum(c.n, t.n)
        ok = ok & (small * m0 >= SEQ_MIN_EVENTS) & (small * (1.0 - m0) >= SEQ_MIN_EVENTS)
    out = np.asarray(ok)
    return out if out.ndim else bool(out)


def default_tau2(c: Sample, t: Sample, mixing_sd: float | None) -> Num:
    """Mixing variance tau^2: the configured sd squared, else (0.1 pooled sd)^2."""
    if mixing_sd is not None:
        return mixing_sd * mixing_sd
    return _f(DEFAULT_MIXING_SD * DEFAULT_MIXING_SD * pooled_sigma2(c, t))


def msprt_look(c: Sample, t: Sample, tau2: Num, bernoulli: bool) -> Num:
    """p-value of one look, 1/Lambda with the null variance (not yet the running minimum);
    1 where the look does not count yet (see `sequential_ready`)."""
    lam = msprt_log_lambda(t.mean - c.mean, test_variance(c, t, bernoulli), tau2)
    p = np.minimum(1.0, np.exp(-np.asarray(lam)))
    return _f(np.where(sequential_ready(c, t, bernoulli), p, 1.0))


def _restricted_rates(
    x1: float, n1: float, x2: float, n2: float, delta: float
) -> tuple[float, float]:
    """Maximum-likelihood rates (p1, p2) of control and treatment under p2 - p1 = delta.

    The closed-form root of the score equation's cubic (Farrington & Manning 1990, as in
    Miettinen-Nurminen intervals); bisection on the concave log-likelihood when it degenerates.
    """
    pt, pc = x2 / n2, x1 / n1
    th = n1 / n2
    a = 1.0 + th
    b = -(1.0 + th + pt + th * pc + delta * (th + 2.0))
    c = delta * delta + delta * (2.0 * pt + th + 1.0) + pt + th * pc
    d = -pt * delta * (1.0 + delta)
    v = b**3 / (27.0 * a**3) - b * c / (6.0 * a * a) + d / (2.0 * a)
    u2 = b * b / (9.0 * a * a) - c / (3.0 * a)
    if u2 > 0.0:
        u = math.copysign(math.sqrt(u2), v)
        w = (math.pi + math.acos(max(-1.0, min(1.0, v / u**3)))) / 3.0
        p2 = 2.0 * u * math.cos(w) - b / (3.0 * a)
        p1 = p2 - delta
        if 0.0 <= p1 <= 1.0 and 0.0 <= p2 <= 1.0:
            return p1, p2
    lo, hi = max(0.0, -delta) + 1e-12, min(1.0, 1.0 - delta) - 1e-12
    if hi <= lo:
        p = (lo + hi) / 2.0
        return p, p + delta
    for _ in range(80):
        p = (lo + hi) / 2.0
        q = p + delta
        score = (x1 - n1 * p) / (p * (1.0 - p)) + (x2 - n2 * q) / (q * (1.0 - q))
        if score > 0.0:
            lo = p
        else:
            hi = p
    p = (lo + hi) / 2.0
    return p, p + delta


def confidence_sequence(
    c: Sample, t: Sample, tau2: float, alpha: float, bernoulli: bool
) -> tuple[float, float]:
    """Always-valid interval for mean(t) - mean(c) that matches `msprt_look`.

    It is {delta : Lambda(diff - delta) < 1/alpha} with the variance each delta implies
    (restricted maximum likelihood under the hypothesis "difference = delta"); at delta = 0 that
    is the test's pooled null variance, so 0 lies outside exactly when the look's p < alpha.
    Intersected over looks by the caller, it holds at all times with probability >= 1 - alpha.
    """
    d = float(t.mean - c.mean)
    v1 = float(unpooled_variance(c, t))
    big_n = float(c.n + t.n)
    inv_n = 1.0 / float(c.n) + 1.0 / float(t.n) if c.n > 0 and t.n > 0 else math.inf

    def var_at(delta: float) -> float:
        if bernoulli:
            p1, p2 = _restricted_rates(c.n * c.mean, float(c.n), t.n * t.mean, float(t.n), delta)
            return float(p1 * (1.0 - p1) / c.n + p2 * (1.0 - p2) / t.n)
        # common spread about means that differ by delta (restricted shift model)
        mc = (c.n * c.mean + t.n * t.mean - t.n * delta) / big_n
        s2 = float(c.q(mc) + t.q(mc + delta)) / big_n
        return max(s2 * inv_n, v1)

    log_a = 2.0 * math.log(1.0 / alpha)

    def half(v: float) -> float:
        if v <= 0.0:
            return math.inf
        return math.sqrt(v * (v + tau2) / tau2 * (log_a + math.log((v + tau2) / v)))

    def outside(delta: float) -> bool:
        return abs(d - delta) >= half(var_at(delta))

    if not (c.n > 0 and t.n > 0 and tau2 > 0 and sequential_ready(c, t, bernoulli)):
        return -math.inf, math.inf
    limit = 1.0 if bernoulli else math.inf
    ends: list[float] = []
    for sign in (1.0, -1.0):
        step = max(half(var_at(d)), 1e-12)
        inner, outer = d, d
        found = False
        for _ in range(200):
            outer = d + sign * step
            if abs(outer) >= limit:
                outer = sign * limit
                found = outside(outer)
                break
            if outside(outer):
                found = True
                break
            inner = outer
            step *= 1.25
        if not found:
            ends.append(sign * math.inf if not bernoulli else sign * limit)
            continue
        for _ in range(32):
            mid = (inner + outer) / 2.0
            if outside(mid):
                outer = mid
            else:
                inner = mid
        ends.append(outer)
    return ends[1], ends[0]


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values (family-wise error <= alpha under any dependence).

    Valid on always-valid p-values too: they are valid p-values at any stopping time, and their
    running minima are monotone, so a rejection once made stays made.
    """
    items = sorted(pvalues.items(), key=lambda kv: kv[1])
    m = len(items)
    out: dict[str, float] = {}
    running = 0.0
    for i, (k, p) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def norm_ppf(q: float) -> float:
    return float(_sp.ndtri(q))


def t_ppf(q: float, df: float) -> float:
    if not math.isfinite(df) or df > 1e7:
        return norm_ppf(q)
    return float(_sp.stdtrit(df, q))


def t_cdf(x: float, df: float) -> float:
    if not math.isfinite(df) or df > 1e7:
        return float(_sp.ndtr(x))
    return float(_sp.stdtr(df, x))


def welch_df(c: Sample, t: Sample) -> float:
    """Welch-Satterthwaite degrees of freedom over units."""
    vc, vt = float(c.var_mean), float(t.var_mean)
    den = 0.0
    if c.units > 1:
        den += vc * vc / (c.units - 1)
    if t.units > 1:
        den += vt * vt / (t.units - 1)
    return (vc + vt) ** 2 / den if den > 0 else math.inf


def mean_interval(m: Moments, binary: bool, conf: float = 0.95) -> tuple[float, float] | None:
    """Interval for one mean: Wilson for 0/1 rewards, Student t (n - 1 df) for continuous ones."""
    n = m.n
    if n <= 0:
        return None
    z = norm_ppf(0.5 + conf / 2.0)
    if binary:
        p = min(max(m.mean, 0.0), 1.0)
        z2 = z * z
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return centre - half, centre + half
    if n < 2:
        return None
    half = t_ppf(0.5 + conf / 2.0, n - 1) * math.sqrt(m.var / n)
    return m.mean - half, m.mean + half


def mde(v: float, alpha: float, power: float = 0.8, tau2: float | None = None) -> float:
    """Smallest true difference found with probability `power` at estimate variance v.

    Fixed horizon: (z_{1-alpha/2} + z_power) sqrt(v). Sequential (tau2 given): the confidence
    sequence's half-width at v plus z_power sqrt(v), i.e. the effect whose estimate clears the
    boundary now with that probability (approximate: it ignores later looks).
    """
    if not v > 0:
        return math.inf
    zp = norm_ppf(power)
    if tau2 is None:
        return (norm_ppf(1.0 - alpha / 2.0) + zp) * math.sqrt(v)
    return float(boundary(v, tau2, alpha)) + zp * math.sqrt(v)


def srm_dispersion(sums: Any, sumsqs: Any, buckets: Any) -> Num:
    """Overdispersion of decisions per sticky bucket: pooled within-arm variance / mean.

    `sums`, `sumsqs` and `buckets` are per arm (last axis): decisions, sum of squared decisions
    per bucket, and how many buckets the arm owns (empty ones included). All of a user's
    requests land in one bucket, so bucket counts vary more than a multinomial allows; dividing
    the chi-square by this factor makes the SRM test count users. Never below 1.
    """
    s = np.asarray(sums, dtype=float)
    q = np.asarray(sumsqs, dtype=float)
    b = np.asarray(buckets, dtype=float)
    within = (q - s * s / b).sum(axis=-1)
    nb = b.sum(axis=-1)
    mean = s.sum(axis=-1) / nb
    phi = within / (nb - s.shape[-1]) / np.maximum(mean, 1e-300)
    return _f(np.where(mean > 0, np.maximum(phi, 1.0), 1.0))


def srm_chi2(observed: Any, expected_share: Any, dispersion: Num = 1.0) -> Num:
    """Vectorised SRM p-value (arms on the last axis), chi-square / dispersion."""
    o = np.asarray(observed, dtype=float)
    w = np.asarray(expected_share, dtype=float)
    total = o.sum(axis=-1, keepdims=True)
    e = w / w.sum() * total
    chi2 = (((o - e) ** 2) / np.maximum(e, 1e-300)).sum(axis=-1) / np.maximum(dispersion, 1.0)
    p = _sp.chdtrc(o.shape[-1] - 1, chi2)
    return _f(np.where(total[..., 0] > 0, p, 1.0))


SRM_PRIOR = 1000.0  # Dirichlet concentration of the sequential SRM test, centred on the split


def srm_log_bayes_factor(observed: Any, expected_share: Any, dispersion: Num = 1.0) -> Num:
    """log Bayes factor of "assignment differs from the split" for the counts so far (arms on the
    last axis): Dirichlet-multinomial mixture against the split (Lindon & Malek 2020).

    Its running maximum gives an always-valid SRM p-value, 1 / max BF, so checking the split
    every second does not add up to false alarms. Counts are divided by `dispersion` (users,
    not requests, on sticky routes).
    """
    x = np.asarray(observed, dtype=float) / np.maximum(np.asarray(dispersion)[..., None], 1.0)
    w = np.asarray(expected_share, dtype=float)
    w = w / w.sum()
    a = SRM_PRIOR * w
    n = x.sum(axis=-1)
    out = (
        _sp.gammaln(a.sum())
        - _sp.gammaln(a.sum() + n)
        + (_sp.gammaln(a + x) - _sp.gammaln(a)).sum(axis=-1)
        - (x * np.log(w)).sum(axis=-1)
    )
    return _f(out)


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
