"""Simulation: exact regret, environments, the registry builds the serving objects."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from policies import simulate as sim
from policies.abtest import ABTestPolicy
from policies.bandits import BanditPolicy
from policies.contextual import LinearPolicy
from policies.registry import build_policy


@dataclass(frozen=True)
class Reward:
    type: str = "binary"


@dataclass(frozen=True)
class Bandit:
    arms: tuple[str, ...]
    algorithm: str = "thompson"
    reward: Reward = field(default_factory=Reward)
    params: dict[str, float] = field(default_factory=dict)
    min_share: float = 0.0
    discount: float = 1.0
    kind: str = "bandit"


@dataclass(frozen=True)
class Feat:
    name: str
    source: str
    key: str
    type: str
    values: tuple[str, ...] = ()
    scale: float = 1.0
    default: float = 0.0


@dataclass(frozen=True)
class Contextual:
    arms: tuple[str, ...]
    algorithm: str = "linucb"
    params: dict[str, float] = field(default_factory=dict)
    features: tuple[Feat, ...] = ()
    reward: Reward = field(default_factory=Reward)
    kind: str = "contextual_bandit"


@dataclass(frozen=True)
class MethodSpec:
    method: str = "z_test"
    alpha: float = 0.05
    min_samples: int = 100
    mixing_sd: float | None = None


@dataclass(frozen=True)
class AB:
    arms: dict[str, str]
    split: dict[str, float]
    reward: Reward = field(default_factory=Reward)
    test: MethodSpec = field(default_factory=MethodSpec)
    conclude: str = "route_winner"
    kind: str = "ab_test"


def test_registry_builds_each_kind() -> None:
    g = np.random.default_rng(0)
    assert isinstance(build_policy(Bandit(("a", "b")), g), BanditPolicy)
    assert isinstance(build_policy(Contextual(("a", "b")), g), LinearPolicy)
    assert isinstance(build_policy(AB({"A": "x", "B": "y"}, {"A": 1, "B": 1}), g), ABTestPolicy)
    with pytest.raises(ValueError, match="no learning policy"):
        build_policy(type("S", (), {"kind": "canary"})(), g)


def test_bernoulli_regret_exact_and_deterministic() -> None:
    env = sim.BernoulliEnv({"a": 0.3, "b": 0.5})
    r1 = sim.run(Bandit(("a", "b")), env, 2000, 3)
    r2 = sim.run(Bandit(("a", "b")), env, 2000, 3)
    assert r1.regret == r2.regret
    # regret is a multiple of the gap 0.2 (exact pseudo-regret)
    for reg in r1.regret:
        assert reg / 0.2 == pytest.approx(round(reg / 0.2))
    assert max(r1.regret) < 0.2 * 400
    s = r1.summary()
    assert s["horizon"] == 2000 and s["seeds"] == 3 and s["lai_robbins"] > 0
    ts = sorted({t for _, t, _, _ in r1.rows})
    assert ts[0] == 1 and ts[-1] == 2000 and 50 < len(ts) <= 100


def test_thompson_beats_uniform_and_ucb1() -> None:
    env = sim.BernoulliEnv({"a": 0.05, "b": 0.04, "c": 0.045, "d": 0.03})
    arms = ("a", "b", "c", "d")
    ts = sim.run(Bandit(arms), env, 5000, 2).summary()["regret_mean"]
    ucb = sim.run(Bandit(arms, "ucb1"), env, 5000, 2).summary()["regret_mean"]
    assert ts < ucb < 5000 * 0.01


def test_gaussian_env() -> None:
    env = sim.GaussianEnv({"a": 1.0, "b": 1.5}, sd=1.0)
    res = sim.run(Bandit(("a", "b"), reward=Reward("continuous")), env, 2000, 2)
    assert res.lai_robbins is None
    assert np.mean(res.regret) < 0.5 * 300


def test_table_env_contexts_through_encoder() -> None:
    feat = Feat("climate", "header", "x-climate", "categorical", ("hot", "cold", "mild"))
    env = sim.TableEnv(
        {"hot": 0.4, "cold": 0.4, "mild": 0.2},
        {
            "hot": {"summer": 0.5, "winter": 0.1},
            "cold": {"summer": 0.1, "winter": 0.5},
            "mild": {"summer": 0.3, "winter": 0.25},
        },
    )
    ctx_res = sim.run(
        Contextual(("summer", "winter"), features=(feat,), params={"alpha": 0.3}), env, 3000, 2
    )
    flat = sim.run(Bandit(("summer", "winter")), env, 3000, 2)
    assert np.mean(ctx_res.regret) < 0.5 * np.mean(flat.regret)


def test_linear_env() -> None:
    g = np.random.default_rng(1)
    env = sim.LinearEnv({a: g.normal(size=4).tolist() for a in ("a", "b", "c")}, noise=0.5)
    res = sim.run(Contextual(("a", "b", "c")), env, 1500, 1)
    assert res.regret[0] < 100


def test_ab_conclusion_in_simulation() -> None:
    env = sim.BernoulliEnv({"x": 0.1, "y": 0.3})
    res = sim.run(AB({"A": "x", "B": "y"}, {"A": 1, "B": 1}), env, 5000, 1)
    # after the test concludes all traffic goes to y, so regret stops growing
    assert res.rows[-1][3] == pytest.approx(res.rows[-5][3])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"type": "poisson"}, "type: must be one of"),
        ({"type": "bernoulli"}, "means: required"),
        ({"type": "bernoulli", "means": {"a": 2}}, r"means\.a: a Bernoulli mean"),
        ({"type": "gaussian", "means": {"a": 1}, "sd": 0}, "sd: must be > 0"),
        ({"type": "bernoulli", "means": {"a": 0.1}, "sd": 1}, "sd: unknown key"),
        ({"type": "table", "contexts": {"hot": 1}, "means": {}}, "no row for context"),
        ({"type": "linear", "theta": {"a": [1, 2], "b": [1]}}, "same dimension"),
    ],
)
def test_bad_environments(env: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sim.make_env(env)


def test_missing_arm_mean() -> None:
    with pytest.raises(ValueError, match="no mean"):
        sim.run(Bandit(("a", "zz")), sim.BernoulliEnv({"a": 0.1}), 10, 1)
