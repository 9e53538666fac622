"""Statistical tests against scipy reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from policies import stats as st


def test_two_proportion_z_matches_reference() -> None:
    z, p = st.two_proportion_z(120, 2400, 150, 2400)
    p1, p2, pool = 120 / 2400, 150 / 2400, 270 / 4800
    ref_z = (p2 - p1) / math.sqrt(pool * (1 - pool) * (2 / 2400))
    assert z == pytest.approx(ref_z)
    assert p == pytest.approx(2 * sp.norm.sf(abs(ref_z)))
    # chi-square test of the 2x2 table without continuity correction is the same test
    table = [[120, 2400 - 120], [150, 2400 - 150]]
    assert p == pytest.approx(sp.chi2_contingency(table, correction=False).pvalue)


def test_z_degenerate_inputs() -> None:
    assert st.two_proportion_z(0, 0, 1, 10) == (0.0, 1.0)
    assert st.two_proportion_z(0, 10, 0, 10) == (0.0, 1.0)


def test_welch_matches_scipy() -> None:
    g = np.random.default_rng(0)
    a = g.normal(1.0, 2.0, size=57)
    b = g.normal(1.6, 0.7, size=83)
    ma, mb = st.Moments.of(a), st.Moments.of(b)
    t, p = st.welch_t(ma, mb)
    ref = sp.ttest_ind(b, a, equal_var=False)
    assert t == pytest.approx(ref.statistic, rel=1e-9)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_msprt_lambda_formula_and_monotone_p() -> None:
    # Lambda = sqrt(V/(V+tau2)) exp(tau2 d^2 / (2 V (V+tau2)))
    d, v, tau2 = 0.3, 0.01, 0.04
    ref = math.sqrt(v / (v + tau2)) * math.exp(tau2 * d * d / (2 * v * (v + tau2)))
    assert st.msprt_lambda(d, v, tau2) == pytest.approx(ref)
    p = st.msprt_p_value(1.0, d, v, tau2)
    assert p == pytest.approx(1 / ref)
    assert st.msprt_p_value(p, 0.0, v, tau2) == p  # never increases
    assert st.msprt_lambda(0.0, 0.0, 1.0) == 1.0


def test_bayes_binary_two_arms_matches_exact() -> None:
    # exact P(B > A) for Beta posteriors by numerical integration
    a1, b1, a2, b2 = 1 + 30, 1 + 970, 1 + 45, 1 + 955
    xs = np.linspace(0, 0.2, 200001)
    ref = float(np.trapezoid(sp.beta.pdf(xs, a2, b2) * sp.beta.cdf(xs, a1, b1), xs))
    pb, loss = st.bayes_binary([30, 45], [1000, 1000], np.random.default_rng(0), draws=200000)
    assert pb[1] == pytest.approx(ref, abs=0.005)
    assert sum(pb) == pytest.approx(1.0)
    assert loss[1] < loss[0]


def test_bayes_deterministic_with_seed() -> None:
    r1 = st.bayes_binary([3, 5], [50, 50], np.random.default_rng(0))
    r2 = st.bayes_binary([3, 5], [50, 50], np.random.default_rng(0))
    assert r1 == r2
    m = [st.Moments.from_sums(100, 50.0, 40.0), st.Moments.from_sums(100, 60.0, 50.0)]
    pb, _ = st.bayes_normal(m, np.random.default_rng(0))
    assert pb[1] > 0.9


def test_srm_matches_chisquare() -> None:
    p, flagged = st.srm_test([5100, 4900], [50, 50])
    assert p == pytest.approx(sp.chisquare([5100, 4900], [5000, 5000]).pvalue)
    assert not flagged
    p, flagged = st.srm_test([5400, 4600], [1, 1])
    assert flagged and p < 0.001
    assert st.srm_test([0, 0], [1, 1]) == (1.0, False)


def test_lai_robbins() -> None:
    means = [0.05, 0.04, 0.045, 0.03]
    c = st.lai_robbins_constant(means)
    ref = sum(
        (0.05 - m) / (m * math.log(m / 0.05) + (1 - m) * math.log((1 - m) / 0.95))
        for m in means[1:]
    )
    assert c == pytest.approx(ref)
    assert st.lai_robbins(means, 1000) == pytest.approx(ref * math.log(1000))
    assert st.bernoulli_kl(0.3, 0.3) == pytest.approx(0.0)


# ---- issue 10: precision, degenerate Welch, units of analysis, sequential tests ------------


def test_welch_with_both_variances_zero_but_different_means() -> None:
    a, b = st.Moments.of([1.0] * 5), st.Moments.of([2.0] * 7)
    t, p = st.welch_t(a, b)
    ref = sp.ttest_ind([2.0] * 7, [1.0] * 5, equal_var=False)
    print("welch constant samples:", t, p, "scipy:", ref.statistic, ref.pvalue)
    assert p == 0.0 and t == math.inf and ref.pvalue == 0.0
    assert st.welch_t(a, st.Moments.of([1.0] * 3)) == (0.0, 1.0)


def test_moments_keep_precision_around_1e8() -> None:
    g = np.random.default_rng(3)
    a = 1e8 + g.normal(0.0, 1.0, 400)
    b = 1e8 + 0.2 + g.normal(0.0, 1.0, 400)
    w = st.Welford()
    for x in a:
        w.add(float(x))
    assert w.moments().var == pytest.approx(float(np.var(a, ddof=1)), rel=1e-6)
    t, p = st.welch_t(w.moments(), st.Moments.of(b))
    ref = sp.ttest_ind(b, a, equal_var=False)
    print("t around 1e8:", t, "scipy:", ref.statistic)
    assert t == pytest.approx(ref.statistic, rel=1e-6)
    assert p == pytest.approx(ref.pvalue, rel=1e-5)


def test_welford_merge_matches_one_pass() -> None:
    g = np.random.default_rng(1)
    x = g.normal(5, 2, 300)
    a, b = st.Welford(), st.Welford()
    for v in x[:100]:
        a.add(float(v))
    for v in x[100:]:
        b.add(float(v))
    a.merge(b)
    ref = st.Moments.of(x)
    assert a.n == 300
    assert a.mean == pytest.approx(ref.mean) and a.m2 == pytest.approx(ref.m2)


def test_mean_interval_uses_t_at_small_n() -> None:
    x = [1.0, 2.0, 4.0, 3.5]
    lo, hi = st.mean_interval(st.Moments.of(x), binary=False) or (0.0, 0.0)
    ref = sp.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sp.sem(x))
    print("t interval n=4:", (lo, hi), "scipy:", ref)
    assert (lo, hi) == pytest.approx(ref)


def test_cluster_sample_is_the_delta_method() -> None:
    # per-unit counts and sums; the variance of the ratio mean over units (delta method)
    g = np.random.default_rng(5)
    n = g.integers(1, 20, 300).astype(float)
    s = g.binomial(n.astype(int), g.beta(2, 20, 300)).astype(float)
    smp = st.Sample.from_units(n, s)
    m = s.sum() / n.sum()
    ref = ((s - m * n) ** 2).sum() / (n.sum() ** 2) * 300 / 299
    assert smp.mean == pytest.approx(m) and smp.var_mean == pytest.approx(ref)
    assert smp.units == 300
    # sums form (used by the simulator) agrees with the centred form
    sums = st.Sample.from_sums(n.sum(), s.sum(), (s * s).sum(), (s * n).sum(), (n * n).sum(), 300)
    assert sums.var_mean == pytest.approx(ref)
    # merging two halves gives the same sample
    half = st.Sample.from_units(n[:150], s[:150]).merge(st.Sample.from_units(n[150:], s[150:]))
    assert half.var_mean == pytest.approx(ref) and half.mean == pytest.approx(m)
    # per-request units reduce to s^2 / n
    x = g.normal(0, 1, 50)
    assert st.Sample.per_request(st.Moments.of(x)).var_mean == pytest.approx(
        float(np.var(x, ddof=1)) / 50
    )


def test_null_variance_is_pooled_and_never_zero_with_an_empty_arm() -> None:
    c = st.Sample.per_request(st.Moments.of([1.0] * 50 + [0.0] * 950))
    t = st.Sample.per_request(st.Moments.of([0.0] * 100))  # no conversions yet
    assert st.unpooled_variance(c, t) == pytest.approx(c.var_mean)  # the arm adds nothing
    p0 = 50 / 1100
    assert st.null_variance(c, t) == pytest.approx(p0 * (1 - p0) * (1 / 1000 + 1 / 100))
    _, p_ref = st.two_proportion_z(50, 1000, 0, 100)
    v = st.null_variance(c, t)
    assert math.erfc(abs(t.mean - c.mean) / math.sqrt(v) / math.sqrt(2)) == pytest.approx(p_ref)


def test_confidence_sequence_matches_the_test() -> None:
    g = np.random.default_rng(11)
    for _ in range(40):
        nc, nt = int(g.integers(200, 5000)), int(g.integers(50, 3000))
        pc, pt = 0.05, 0.05 + float(g.normal(0, 0.02))
        pt = min(max(pt, 0.005), 0.5)
        c = st.Sample.per_request(
            st.Moments.of(np.r_[np.ones(g.binomial(nc, pc)), np.zeros(nc)][:nc])
        )
        t = st.Sample.per_request(
            st.Moments.of(np.r_[np.ones(g.binomial(nt, pt)), np.zeros(nt)][:nt])
        )
        for bern in (True, False):
            tau2 = float(st.default_tau2(c, t, None))
            p = float(st.msprt_look(c, t, tau2, bern))
            lo, hi = st.confidence_sequence(c, t, tau2, 0.05, bern)
            excludes_zero = lo > 0 or hi < 0
            assert excludes_zero == (p < 0.05), (nc, nt, p, lo, hi, bern)
            assert lo <= t.mean - c.mean <= hi


def test_holm_matches_reference() -> None:
    adj = st.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    # statsmodels multipletests(method="holm") gives [0.03, 0.06, 0.06]
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})


def test_srm_dispersion_counts_users() -> None:
    g = np.random.default_rng(2)
    # 3000 users with 10 requests each in 1000 buckets per arm: per-request chi-square is
    # 10x too large; the dispersion factor brings it back
    b = g.integers(0, 2000, 3000)
    counts = np.bincount(b, minlength=2000) * 10.0
    sums = [counts[:1000].sum(), counts[1000:].sum()]
    sq = [(counts[:1000] ** 2).sum(), (counts[1000:] ** 2).sum()]
    phi = st.srm_dispersion(sums, sq, [1000, 1000])
    print("dispersion with 10 requests per user:", phi)
    assert 9 < phi < 13


@pytest.mark.parametrize("bern", [True, False])
def test_confidence_sequence_covers_the_true_difference_at_every_look(bern: bool) -> None:
    # 90/10 split, 5% vs 7%: the running intersection over 30 looks must keep the true
    # difference in at least 1 - alpha of the runs (always valid, not just at the end)
    g = np.random.default_rng(21)
    true = 0.02
    reps, misses = 150, 0
    looks = np.unique(np.geomspace(500, 30000, 30).astype(int))
    for _ in range(reps):
        nc = g.binomial(looks[-1], 0.9)
        xc = (g.random(nc) < 0.05).astype(float)
        xt = (g.random(looks[-1] - nc) < 0.07).astype(float)
        lo, hi = -math.inf, math.inf
        for n in looks:
            kc = round(n * 0.9)
            c = st.Sample.per_request(st.Moments.of(xc[:kc]))
            t = st.Sample.per_request(st.Moments.of(xt[: n - kc]))
            tau2 = float(st.default_tau2(c, t, None))
            a, b = st.confidence_sequence(c, t, tau2, 0.05, bern)
            lo, hi = max(lo, a), min(hi, b)
        misses += not (lo <= true <= hi)
    print("confidence sequence misses over 30 looks:", misses / reps)
    assert misses / reps <= 0.05


def test_sequential_srm_does_not_add_up_over_looks() -> None:
    # the router checks the split every second: a chi-square at p < 0.001 per look fires in a
    # few % of A/A runs over 200 looks; the always-valid test stays under 0.001 at any look
    g = np.random.default_rng(8)
    seq = chi2 = 0
    runs = 300
    for _ in range(runs):
        x = np.cumsum(g.multinomial(500, [0.9, 0.1], size=200), axis=0)
        seq += bool(np.max(st.srm_log_bayes_factor(x, [0.9, 0.1])) >= math.log(1000))
        chi2 += bool((np.asarray(st.srm_chi2(x, [0.9, 0.1])) < 0.001).any())
    print("A/A SRM alarms over 200 looks: sequential", seq / runs, "chi-square", chi2 / runs)
    assert seq / runs <= 0.005 and chi2 > seq
    # and it still finds a 2-point shift of a 50/50 split within 100,000 decisions
    x = np.cumsum(np.random.default_rng(9).multinomial(500, [0.48, 0.52], size=200), axis=0)
    assert np.max(st.srm_log_bayes_factor(x, [0.5, 0.5])) >= math.log(1000)
