"""Parameter declarations: implementations run with the declared defaults, overridden by config."""

from __future__ import annotations

import numpy as np

from policies import bandits, contextual
from policies.params import Algorithm, Param, param_values


def test_given_values_override_declared_defaults() -> None:
    declared = (Param("c", "", default=1.0), Param("q", "", type="string", default="x"))
    assert param_values(declared, {}) == {"c": 1.0}
    assert param_values(declared, {"c": 2}) == {"c": 2.0}


def test_reward_dependent_params() -> None:
    a = Algorithm(object, (Param("prior", "", reward="binary"), Param("c", "")))
    assert [p.name for p in a.params_for("binary")] == ["prior", "c"]
    assert [p.name for p in a.params_for("continuous")] == ["c"]
    assert a.reward_dependent


def test_bandits_run_with_their_declared_defaults() -> None:
    rng = np.random.default_rng(0)
    ucb = bandits.BanditPolicy(("a", "b"), "ucb1", rng=rng)._algo
    (c,) = bandits.ALGORITHMS["ucb1"].params
    assert getattr(ucb, "c") == c.default  # noqa: B009
    soft = bandits.BanditPolicy(("a", "b"), "softmax", rng=rng, params={"temperature": 0.5})
    assert getattr(soft._algo, "temperature") == 0.5  # noqa: B009


def test_linear_policy_runs_with_the_declared_defaults() -> None:
    rng = np.random.default_rng(0)
    for name, algo in contextual.ALGORITHMS.items():
        p = contextual.LinearPolicy(("a", "b"), name, dim=2, rng=rng)
        attrs = {"alpha": p.alpha, "lambda": p.lam, "epsilon": p.epsilon}
        for param in algo.params:
            assert attrs[param.name] == param.default, (name, param.name)
