"""Bandit logs with known ground truth, from `policies.simulate` environments.

A logging policy (uniform, epsilon-greedy or Thompson, built by `policies.registry` exactly as a
route would build it) serves `n` rounds of an environment and learns as it goes; every round is
logged with its propensity. The true value of a target policy is computed from the
environment's known means, so off-policy estimates can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.features import FeatureEncoder
from policies.ope import FloatArray, LoggedData
from policies.registry import build_policy
from policies.simulate import BernoulliEnv, Env, GaussianEnv, LinearEnv, TableEnv
from policies.spec import BanditSpec, ContextualSpec, Feature, RewardSpec
from policies.weighted import WeightedPolicy

__all__ = ["LOGGERS", "SimLog", "context_feature", "generate_log", "true_value"]

LOGGERS = ("uniform", "epsilon_greedy", "thompson")


@dataclass(frozen=True, slots=True, eq=False)
class SimLog:
    data: LoggedData
    means: FloatArray  # (n, K): true mean reward of every arm at every logged context
    spec: Any  # the logging policy's spec (None for uniform)


def context_feature(env: TableEnv) -> Feature:
    """The categorical feature a contextual policy uses to see a table environment's context."""
    return Feature("ctx", "header", "x-ctx", "categorical", values=env.names)


def _logger(env: Env, kind: str, epsilon: float, rng: np.random.Generator) -> tuple[Any, Any]:
    arms = env.arms
    binary = not isinstance(env, GaussianEnv | LinearEnv)
    reward = RewardSpec(type="binary" if binary else "continuous")
    if kind == "uniform":
        return WeightedPolicy(dict.fromkeys(arms, 1.0), rng=rng), None
    if kind not in LOGGERS:
        raise ValueError(f"logger must be one of {LOGGERS}, got {kind!r}")
    if isinstance(env, TableEnv | LinearEnv):
        algo = "epsilon_greedy" if kind == "epsilon_greedy" else "lin_ts"
        features = (context_feature(env),) if isinstance(env, TableEnv) else ()
        params = {"epsilon": epsilon} if kind == "epsilon_greedy" else {"alpha": 1.0}
        spec: Any = ContextualSpec(arms, algo, params, features, reward)
        dim = env.dim if isinstance(env, LinearEnv) else None
        return build_policy(spec, rng, dim=dim), spec
    params = {"epsilon": epsilon} if kind == "epsilon_greedy" else {}
    spec = BanditSpec(arms, kind, reward, params)
    return build_policy(spec, rng), spec


def _encoder(env: Env) -> FeatureEncoder | None:
    return FeatureEncoder((context_feature(env),)) if isinstance(env, TableEnv) else None


def generate_log(env: Env, logger: str, n: int, seed: int, *, epsilon: float = 0.1) -> SimLog:
    """`n` rounds of `env` served (and learned from) by the `logger` policy, seeded."""
    rng = np.random.default_rng(seed)
    env_rng = np.random.default_rng(10_000_019 + seed)
    policy, spec = _logger(env, logger, epsilon, rng)
    encoder = _encoder(env)
    arms = env.arms
    index = {a: i for i, a in enumerate(arms)}
    dim = env.dim if isinstance(env, LinearEnv) else (encoder.dim if encoder else 1)
    action = np.empty(n, dtype=np.intp)
    reward = np.empty(n)
    pscore = np.empty(n)
    context = np.ones((n, dim))
    means = np.empty((n, len(arms)))
    for t in range(n):
        ctx, mu = env.context(env_rng, encoder)
        d = policy.choose(ctx)
        r = env.reward(d.arm, mu[d.arm], env_rng)
        policy.update(d.arm, r, ctx)
        action[t] = index[d.arm]
        reward[t] = r
        pscore[t] = d.propensity
        if ctx.features is not None:
            context[t] = ctx.features
        means[t] = [mu[a] for a in arms]
    rt = "continuous" if isinstance(env, GaussianEnv | LinearEnv) else "binary"
    return SimLog(LoggedData(arms, action, reward, pscore, context, rt), means, spec)


def true_value(
    env: Env,
    dist: Callable[[FloatArray], FloatArray],
    *,
    n_mc: int = 200_000,
    seed: int = 7,
) -> float:
    """E_x[sum_a pi(a | x) mu(x, a)] for a frozen target `dist(X) -> (m, K)`.

    Exact for Bernoulli/Gaussian (one context) and table environments (every context, weighted
    by its probability); Monte Carlo over `n_mc` fresh contexts for the linear environment.
    """
    arms = env.arms
    if isinstance(env, TableEnv):
        enc = _encoder(env)
        assert enc is not None
        xs = np.array(
            [enc.encode(lambda s, k, c=c: c)[0] for c in env.names]  # type: ignore[misc]
        )
        mu = np.array([[env.rows[c][a] for a in arms] for c in env.names])
        return float(env.probs @ (dist(xs) * mu).sum(axis=1))
    if isinstance(env, LinearEnv):
        x = np.random.default_rng(seed).standard_normal((n_mc, env.dim))
        mu = x @ env.theta.T
        return float((dist(x) * mu).sum(axis=1).mean())
    if isinstance(env, BernoulliEnv):
        mu1 = np.array([env.means[a] for a in arms])
        return float((dist(np.ones((1, 1))) * mu1).sum())
    raise ValueError(f"no ground truth for environment {type(env).__name__}")
