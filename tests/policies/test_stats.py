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
    ma = st.Moments(len(a), float(a.sum()), float((a * a).sum()))
    mb = st.Moments(len(b), float(b.sum()), float((b * b).sum()))
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
    m = [st.Moments(100, 50.0, 40.0), st.Moments(100, 60.0, 50.0)]
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
