"""A/B test policy: sticky split, every test method, SRM, conclusion, A/A peeking."""

from __future__ import annotations

import numpy as np
import pytest

from policies.abtest import ABTestPolicy
from policies.base import BUCKETS, ArmStats, Context


def make(method: str = "msprt", **kw: object) -> ABTestPolicy:
    args: dict[str, object] = {
        "rng": np.random.default_rng(0),
        "method": method,
        "min_samples": 100,
    }
    args.update(kw)
    return ABTestPolicy({"A": 50, "B": 50}, **args)  # type: ignore[arg-type]


def feed(
    p: ABTestPolicy, means: dict[str, float], n: int, seed: int = 0, continuous: bool = False
) -> None:
    env = np.random.default_rng(seed)
    for _ in range(n):
        arm = p.choose(Context()).arm
        r = env.normal(means[arm], 1.0) if continuous else float(env.random() < means[arm])
        p.update(arm, float(r))


def test_sticky_contiguous_split() -> None:
    p = ABTestPolicy({"A": 25, "B": 75}, rng=np.random.default_rng(0))
    assert p.choose(Context(bucket=0)).arm == "A"
    assert p.choose(Context(bucket=BUCKETS // 4 - 1)).arm == "A"
    assert p.choose(Context(bucket=BUCKETS // 4 + 1)).arm == "B"
    assert p.choose(Context(bucket=BUCKETS - 1)).arm == "B"
    d = p.choose(Context(bucket=5))
    assert d.arm == "A" and d.propensity == pytest.approx(0.25)
    arms = [p.choose(Context()).arm for _ in range(4000)]
    assert arms.count("A") / 4000 == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("method", ["z_test", "welch_t", "msprt", "bayesian"])
def test_detects_a_real_difference(method: str) -> None:
    p = make(method)
    feed(p, {"A": 0.10, "B": 0.16}, 12000)
    res = p.result()
    assert res["decided"] and res["winner"] == "B"
    assert res["method"] == method
    assert not res["srm"]["flagged"]
    if method == "bayesian":
        assert res["prob_best"]["B"] > 0.95
        assert res["expected_loss"]["B"] < res["expected_loss"]["A"]
    else:
        assert res["p_value"]["B"] < 0.05


def test_continuous_rewards_welch_and_msprt() -> None:
    for method in ("welch_t", "msprt", "bayesian", "z_test"):
        p = make(method, reward_type="continuous")
        feed(p, {"A": 1.0, "B": 1.2}, 4000, continuous=True)
        assert p.result()["winner"] == "B", method


def test_min_samples_blocks_an_early_decision() -> None:
    p = make("z_test", min_samples=10000)
    feed(p, {"A": 0.1, "B": 0.3}, 2000)
    res = p.result()
    assert res["p_value"]["B"] < 1e-6
    assert not res["decided"] and res["winner"] is None


def test_route_winner_concludes() -> None:
    p = make("z_test", conclude="route_winner")
    feed(p, {"A": 0.1, "B": 0.2}, 6000)
    assert p.phase == "active"
    p.result()
    assert p.phase == "concluded"
    assert {p.choose(Context(bucket=b)).arm for b in (0, BUCKETS - 1)} == {"B"}
    assert p.choose(Context()).propensity == 1.0
    assert p.shares() == {"A": 0.0, "B": 1.0}


def test_stop_keeps_split() -> None:
    p = make("z_test", conclude="stop")
    feed(p, {"A": 0.1, "B": 0.2}, 6000)
    assert p.result()["decided"]
    assert p.phase == "active"
    assert p.shares() == {"A": 0.5, "B": 0.5}


def test_srm_flagged() -> None:
    p = make()
    for _ in range(5500):
        p.choose(Context(bucket=0))
    for _ in range(4500):
        p.choose(Context(bucket=BUCKETS - 1))
    res = p.result()
    assert res["srm"]["flagged"] and res["srm"]["p_value"] < 0.001


def test_state_round_trip_keeps_running_min() -> None:
    p = make()
    feed(p, {"A": 0.1, "B": 0.13}, 3000)
    r1 = p.result()
    q = make()
    q.restore(p.state())
    assert q.stats()["A"].rewards == p.stats()["A"].rewards
    assert q._msprt_p == p._msprt_p
    assert q.winner == r1["winner"]


def test_set_arms_keeps_what_kept_arms_learned() -> None:
    p = ABTestPolicy({"A": 25, "B": 75}, rng=np.random.default_rng(0), conclude="route_winner")
    feed(p, {"A": 0.1, "B": 0.5}, 2000)
    b_stats = ArmStats.from_json(p.stats()["B"].to_json())
    p.winner = "A"
    p.set_arms(["B", "A", "C"])  # B becomes the control, C joins with the mean weight
    assert p.arms == ("B", "A", "C") and p.winner == "A"
    assert p.weights == pytest.approx({"B": 0.75 / 1.5, "A": 0.25 / 1.5, "C": 0.5 / 1.5})
    assert p.shares() == {"B": 0.0, "A": 1.0, "C": 0.0}  # concluded: the winner serves
    p.set_arms(["B", "C"])  # the winner is gone: the test runs again
    assert p.winner is None and p.phase == "active"
    assert p.stats()["B"] == b_stats and p.stats()["C"] == ArmStats()
    assert p.shares() == pytest.approx({"B": 0.6, "C": 0.4})  # relative weights kept
    assert p.choose(Context(bucket=0)).arm == "B"
    assert p.choose(Context(bucket=BUCKETS - 1)).arm == "C"
    assert set(p.result()["p_value"]) == {"C"}
    with pytest.raises(ValueError, match="at least two arms"):
        p.set_arms(["B"])


def _aa_false_positive_rate(method: str, reps: int, looks: int, step: int) -> float:
    """Share of A/A experiments declared decided when peeking every `step` users per arm."""
    g = np.random.default_rng(42)
    hits = 0
    for _ in range(reps):
        p = ABTestPolicy(
            {"A": 1, "B": 1},
            rng=np.random.default_rng(int(g.integers(1 << 31))),
            method=method,
            min_samples=1,
        )
        sa = sb = 0
        for k in range(1, looks + 1):
            sa += int(g.binomial(step, 0.1))
            sb += int(g.binomial(step, 0.1))
            n = k * step
            st = p.stats()
            st["A"].__init__(n, n, float(sa), float(sa))  # type: ignore[misc]
            st["B"].__init__(n, n, float(sb), float(sb))  # type: ignore[misc]
            if p.result()["decided"]:
                hits += 1
                break
    return hits / reps


def test_aa_peeking_msprt_stays_under_alpha() -> None:
    # reduced form of the bench: 200 A/A tests, a look every 200 users per arm up to 6000
    assert _aa_false_positive_rate("msprt", 200, 30, 200) <= 0.05
    assert _aa_false_positive_rate("z_test", 200, 30, 200) > 0.1  # naive peeking inflates


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown test method"):
        make("t_test")
    with pytest.raises(ValueError, match="two arms"):
        ABTestPolicy({"A": 1}, rng=np.random.default_rng(0))
    assert isinstance(make().stats()["A"], ArmStats)
