"""Off-policy estimators on hand-made logs: definitions, diagnostics, validity and errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from policies import ope
from policies.bandits import BanditPolicy
from policies.contextual import LinearPolicy
from policies.weighted import WeightedPolicy


def _log(action, reward, pscore, context=None, arms=("a", "b"), rt="binary"):
    n = len(action)
    ctx = np.ones((n, 1)) if context is None else np.asarray(context, float)
    return ope.LoggedData(
        tuple(arms),
        np.asarray(action, dtype=np.intp),
        np.asarray(reward, float),
        np.asarray(pscore, float),
        ctx,
        rt,
    )


def test_ips_snips_dr_match_their_definitions() -> None:
    d = _log([0, 1, 0, 1], [1.0, 0.0, 0.0, 1.0], [0.5, 0.25, 0.5, 0.75])
    dist = ope.fixed_dist(d.arms, {"a": 1.0}, d.n)  # always a
    w = np.array([2.0, 0.0, 2.0, 0.0])
    assert ope.ips(d, dist).value == pytest.approx(np.mean(w * d.reward))
    assert ope.snips(d, dist).value == pytest.approx((w * d.reward).sum() / w.sum())
    q = np.full((4, 2), 0.3)
    est = ope.dr(d, dist, q_hat=q)
    assert est.value == pytest.approx(np.mean(0.3 + w * (d.reward - 0.3)))
    assert est.ci_low < est.value < est.ci_high


def test_dr_with_a_perfect_model_has_no_variance_from_the_weights() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    action = rng.integers(0, 2, n)
    reward = np.where(action == 0, 0.2, 0.7)  # deterministic rewards
    d = _log(action, reward, np.full(n, 0.5), rt="continuous")
    dist = ope.fixed_dist(d.arms, {"b": 1.0}, n)
    q = np.tile([0.2, 0.7], (n, 1))
    assert ope.dr(d, dist, q_hat=q).se == pytest.approx(0.0, abs=1e-12)
    assert ope.dr(d, dist).value == pytest.approx(0.7, abs=0.01)  # cross-fitted ridge
    assert ope.ips(d, dist).se > 0.01


def test_diagnostics_report_ess_propensities_and_clipping() -> None:
    d = _log([0, 1, 0, 1], [1, 0, 0, 1], [0.1, 0.9, 0.5, 0.5])
    dist = ope.fixed_dist(d.arms, {"a": 1.0}, d.n)
    diag = ope.diagnostics(d, dist, clip=5.0)
    assert diag.min_pscore == pytest.approx(0.1)
    assert diag.max_weight == pytest.approx(10.0)
    assert diag.clipped_share == pytest.approx(0.25)
    w = np.array([5.0, 0.0, 2.0, 0.0])
    assert diag.ess == pytest.approx(w.sum() ** 2 / (w * w).sum())


def test_deterministic_logging_makes_every_estimator_invalid() -> None:
    # a linucb logger always took arm a (propensity 1): nothing says what b would have done
    d = _log([0] * 50, [1.0] * 50, [1.0] * 50)
    rep = ope.evaluate(d, ope.fixed_dist(d.arms, {"b": 1.0}, d.n))
    assert rep.recommended is None
    assert all(not e.valid for e in rep.estimates)
    assert "deterministic" in rep.validity["ips"].reason
    # the same log does support evaluating the policy that logged it
    same = ope.evaluate(d, ope.fixed_dist(d.arms, {"a": 1.0}, d.n))
    assert same.recommended == "dr"
    assert same.estimates[0].value == pytest.approx(1.0)


def test_validity_for_learning_candidates_depends_on_uniform_logging() -> None:
    uni = _log([0, 1], [1, 0], [0.5, 0.5])
    skew = _log([0, 1], [1, 0], [0.9, 0.1])
    assert ope.validity(uni, learning=True)["replay"].valid
    assert not ope.validity(skew, learning=True)["replay"].valid
    assert not ope.validity(uni, learning=True)["ips"].valid


def test_replay_of_a_fixed_learner_matches_the_arm_mean_on_uniform_logs() -> None:
    rng = np.random.default_rng(1)
    n = 6000
    action = rng.integers(0, 2, n)
    reward = (rng.random(n) < np.where(action == 0, 0.3, 0.6)).astype(float)
    d = _log(action, reward, np.full(n, 0.5))
    est = ope.replay(d, WeightedPolicy({"b": 1.0}, rng=np.random.default_rng(2)))
    assert est.valid
    assert est.ci_low <= 0.6 <= est.ci_high
    assert abs(est.n - n / 2) < 200
    learner = BanditPolicy(("a", "b"), "thompson", rng=np.random.default_rng(3))
    est = ope.replay(d, learner)
    print(f"replayed thompson: {est.value:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}], n={est.n}")
    assert est.value > 0.5  # it learns that b is better


def test_linear_dist_lin_ts_matches_monte_carlo() -> None:
    rng = np.random.default_rng(4)
    theta = rng.normal(size=(3, 3))
    a_inv = np.stack([np.eye(3) * s for s in (0.5, 0.05, 0.2)])
    x = rng.normal(size=(5, 3))
    dist = ope.linear_dist(theta, a_inv, x, "lin_ts", alpha=1.0)
    for i in range(5):
        m = theta @ x[i]
        s = np.sqrt(np.einsum("kde,d,e->k", a_inv, x[i], x[i]))
        draws = m + s * rng.standard_normal((200_000, 3))
        mc = np.bincount(draws.argmax(axis=1), minlength=3) / 200_000
        assert np.abs(dist[i] - mc).max() < 0.01
    eg = ope.linear_dist(theta, a_inv, x, "epsilon_greedy", epsilon=0.3)
    assert np.allclose(eg.sum(axis=1), 1.0) and eg.min() == pytest.approx(0.1)


def test_policy_dist_of_live_policy_objects() -> None:
    rng = np.random.default_rng(5)
    lin = LinearPolicy(("a", "b"), "epsilon_greedy", dim=2, rng=rng, params={"epsilon": 0.2})
    lin.b[1] = [1.0, 0.0]
    lin.theta = np.einsum("kij,kj->ki", lin.A_inv, lin.b)
    x = np.array([[1.0, 0.0], [1.0, 1.0]])
    dist = ope.policy_dist(lin, ("b", "a", "c"), x)
    assert dist[0].tolist() == pytest.approx([0.9, 0.1, 0.0])
    bandit = BanditPolicy(("a", "b"), "epsilon_greedy", rng=rng, params={"epsilon": 1.0})
    assert ope.policy_dist(bandit, ("a", "b"), x)[1].tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match=re.escape("policy arm(s) ['a']")):
        ope.policy_dist(bandit, ("b",), x)
    with pytest.raises(ValueError, match="feature layout changed"):
        ope.policy_dist(lin, ("a", "b"), np.ones((2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pscore": [0.0, 0.5]}, r"round 0: propensity must be in \(0, 1\], got 0.0"),
        ({"pscore": [0.5, 1.5]}, r"round 1: propensity must be in \(0, 1\], got 1.5"),
        ({"action": [0, 2]}, r"action indexes must be in \[0, 2\)"),
        ({"reward": [1.0, math.nan]}, "rewards must be finite"),
        ({"reward": [1.0]}, "log arrays disagree in length"),
    ],
)
def test_bad_logs_are_refused_with_a_clear_message(kwargs: dict, message: str) -> None:
    args = {"action": [0, 1], "reward": [1.0, 0.0], "pscore": [0.5, 0.5]} | kwargs
    with pytest.raises(ValueError, match=message):
        _log(**args)


def test_action_dist_shape_and_rows_are_checked() -> None:
    d = _log([0, 1], [1, 0], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"action_dist must be \(rounds, arms\) = \(2, 2\)"):
        ope.ips(d, np.ones((3, 2)) / 2)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        ope.ips(d, np.ones((2, 2)))
    with pytest.raises(ValueError, match=re.escape("arm(s) ['z'] never appear in the log")):
        ope.fixed_dist(d.arms, {"z": 1.0}, 2)
