"""Offline simulation: run a policy spec against an environment with known means (SPEC §4).

The policy objects come from `policies.registry.build_policy`, the same ones that serve
traffic, and contexts go through the same `FeatureEncoder`, so what is measured here is what
runs in production. Regret is exact: sum over rounds of (best true mean - chosen true mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import stats as st
from policies.base import Context
from policies.registry import build_encoder, build_policy

__all__ = [
    "ENVIRONMENTS",
    "BernoulliEnv",
    "GaussianEnv",
    "LinearEnv",
    "SimResult",
    "TableEnv",
    "checkpoints",
    "make_env",
    "run",
]


class BernoulliEnv:
    """Context-free arms with Bernoulli rewards of known means."""

    type = "bernoulli"

    def __init__(self, means: Mapping[str, float]) -> None:
        for a, m in means.items():
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"means.{a}: a Bernoulli mean must be in [0, 1], got {m}")
        self.means = dict(means)
        self.arms = tuple(means)

    def context(
        self, rng: np.random.Generator, encoder: Any
    ) -> tuple[Context, Mapping[str, float]]:
        return Context(), self.means

    def reward(self, arm: str, mean: float, rng: np.random.Generator) -> float:
        return 1.0 if rng.random() < mean else 0.0


class GaussianEnv(BernoulliEnv):
    """Context-free arms with normal rewards N(mean, sd²)."""

    type = "gaussian"

    def __init__(self, means: Mapping[str, float], sd: float = 1.0) -> None:
        if not sd > 0.0:
            raise ValueError(f"sd: must be > 0, got {sd}")
        self.means = dict(means)
        self.arms = tuple(means)
        self.sd = sd

    def reward(self, arm: str, mean: float, rng: np.random.Generator) -> float:
        return float(mean + self.sd * rng.standard_normal())


class TableEnv:
    """Discrete contexts with known probabilities and Bernoulli mean reward per (context, arm).

    The context value is offered to the policy as the value of its first categorical feature,
    through the policy's own FeatureEncoder.
    """

    type = "table"

    def __init__(
        self, contexts: Mapping[str, float], means: Mapping[str, Mapping[str, float]]
    ) -> None:
        if not contexts:
            raise ValueError("contexts: at least one context is needed")
        missing = [c for c in contexts if c not in means]
        if missing:
            raise ValueError(f"means: no row for context(s) {missing}")
        total = float(sum(contexts.values()))
        if total <= 0 or any(p < 0 for p in contexts.values()):
            raise ValueError("contexts: probabilities must be >= 0 and not all zero")
        self.names = tuple(contexts)
        self.probs = np.array([contexts[c] / total for c in self.names])
        self.rows = {c: dict(means[c]) for c in self.names}
        arms = list(self.rows[self.names[0]])
        for c in self.names:
            if list(self.rows[c]) != arms and set(self.rows[c]) != set(arms):
                raise ValueError(
                    f"means.{c}: arms {sorted(self.rows[c])} differ from {sorted(arms)}"
                )
            for a, m in self.rows[c].items():
                if not 0.0 <= m <= 1.0:
                    raise ValueError(f"means.{c}.{a}: a Bernoulli mean must be in [0, 1], got {m}")
        self.arms = tuple(arms)
        self._ctx_cache: dict[str, tuple[Any, str | None]] = {}

    def context(
        self, rng: np.random.Generator, encoder: Any
    ) -> tuple[Context, Mapping[str, float]]:
        c = self.names[int(rng.choice(len(self.names), p=self.probs))]
        if encoder is None:
            return Context(label=c), self.rows[c]
        enc = self._ctx_cache.get(c)
        if enc is None:
            cat = next((f for f in encoder.features if f.type == "categorical"), None)

            def get(source: str, key: str) -> str | None:
                if cat is not None and source == cat.source and key == cat.key:
                    return c
                return None

            enc = encoder.encode(get)
            self._ctx_cache[c] = enc
        x, label = enc
        return Context(features=x, label=label), self.rows[c]

    def reward(self, arm: str, mean: float, rng: np.random.Generator) -> float:
        return 1.0 if rng.random() < mean else 0.0


class LinearEnv:
    """Contexts x ~ N(0, I_d); reward x.theta_arm + N(0, noise²); x goes straight to the policy."""

    type = "linear"

    def __init__(self, theta: Mapping[str, Sequence[float]], noise: float = 0.5) -> None:
        if not theta:
            raise ValueError("theta: at least one arm is needed")
        dims = {len(v) for v in theta.values()}
        if len(dims) != 1:
            raise ValueError(f"theta: every arm needs the same dimension, got {sorted(dims)}")
        self.arms = tuple(theta)
        self.theta = np.array([list(theta[a]) for a in self.arms], dtype=float)
        self.dim = self.theta.shape[1]
        self.noise = noise

    def context(
        self, rng: np.random.Generator, encoder: Any
    ) -> tuple[Context, Mapping[str, float]]:
        x: np.ndarray = np.asarray(rng.standard_normal(self.dim), dtype=float)
        mu = self.theta @ x
        return Context(features=x), dict(zip(self.arms, mu.tolist(), strict=True))

    def reward(self, arm: str, mean: float, rng: np.random.Generator) -> float:
        return float(mean + self.noise * rng.standard_normal())


Env = BernoulliEnv | GaussianEnv | TableEnv | LinearEnv


def _bernoulli(d: Mapping[str, Any]) -> Env:
    return BernoulliEnv({str(k): float(v) for k, v in d["means"].items()})


def _gaussian(d: Mapping[str, Any]) -> Env:
    return GaussianEnv({str(k): float(v) for k, v in d["means"].items()}, float(d.get("sd", 1.0)))


def _table(d: Mapping[str, Any]) -> Env:
    return TableEnv(
        {str(k): float(v) for k, v in d["contexts"].items()},
        {str(c): {str(a): float(m) for a, m in row.items()} for c, row in d["means"].items()},
    )


def _linear(d: Mapping[str, Any]) -> Env:
    return LinearEnv(
        {str(k): [float(x) for x in v] for k, v in d["theta"].items()}, float(d.get("noise", 0.5))
    )


# type -> (builder, required keys, optional keys)
ENVIRONMENTS: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]] = {
    "bernoulli": (_bernoulli, ("means",), ()),
    "gaussian": (_gaussian, ("means",), ("sd",)),
    "table": (_table, ("contexts", "means"), ()),
    "linear": (_linear, ("theta",), ("noise",)),
}


def make_env(d: Mapping[str, Any]) -> Env:
    """An environment from its parsed mapping (`type` plus that type's keys); ValueError if bad."""
    kind = d.get("type")
    if kind not in ENVIRONMENTS:
        raise ValueError(f"type: must be one of {sorted(ENVIRONMENTS)}, got {kind!r}")
    builder, required, optional = ENVIRONMENTS[kind]
    allowed = {"type", *required, *optional}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")
    for key in required:
        if key not in d:
            raise ValueError(f"{key}: required for environment type {kind}")
    try:
        return builder(d)  # type: ignore[no-any-return]
    except (TypeError, AttributeError) as e:
        raise ValueError(f"malformed {kind} environment: {e}") from None


def checkpoints(horizon: int, n: int = 100) -> list[int]:
    """About n rounds spread log-uniformly over [1, horizon], always ending at horizon."""
    pts = {round(x) for x in np.geomspace(1, horizon, num=min(n, horizon))}
    pts.add(horizon)
    return sorted(p for p in pts if 1 <= p <= horizon)


@dataclass(slots=True)
class SimResult:
    horizon: int
    seeds: int
    regret: list[float]  # final true regret per seed
    reward: list[float]  # final cumulative reward per seed
    rows: list[tuple[int, int, float, float]] = field(default_factory=list)  # seed,t,reward,regret
    lai_robbins: float | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "horizon": self.horizon,
            "seeds": self.seeds,
            "regret_mean": float(np.mean(self.regret)),
            "regret_std": float(np.std(self.regret, ddof=1)) if len(self.regret) > 1 else 0.0,
            "reward_mean": float(np.mean(self.reward)),
        }
        if self.lai_robbins is not None:
            out["lai_robbins"] = self.lai_robbins
        return out


def run(
    spec: Any,
    env: Env,
    horizon: int,
    seeds: int | Sequence[int],
    n_checkpoints: int = 100,
) -> SimResult:
    """Play `horizon` rounds per seed; the policy sees only its rewards, regret uses true means."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    missing = [a for a in getattr(spec, "arms", ()) if _arm_name(spec, a) not in env.arms]
    if missing:
        raise ValueError(f"policy arms {missing} have no mean in the environment")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    marks = set(checkpoints(horizon, n_checkpoints))
    lr = None
    if isinstance(env, BernoulliEnv) and not isinstance(env, GaussianEnv):
        lr = st.lai_robbins(list(env.means.values()), horizon)
    result = SimResult(horizon, len(seed_list), [], [], lai_robbins=lr)
    encoder = build_encoder(spec)
    dim = env.dim if isinstance(env, LinearEnv) else None
    for seed in seed_list:
        policy = build_policy(spec, np.random.default_rng(seed), dim=dim)
        env_rng = np.random.default_rng(1_000_003 + seed)
        to_env = {a: _arm_name(spec, a) for a in policy.arms}
        total = 0.0
        regret = 0.0
        for t in range(1, horizon + 1):
            ctx, means = env.context(env_rng, encoder)
            arm = policy.choose(ctx).arm
            mean = means[to_env[arm]]
            r = env.reward(arm, mean, env_rng)
            policy.update(arm, r, ctx)
            total += r
            regret += max(means[to_env[a]] for a in policy.arms) - mean
            if t in marks:
                result.rows.append((seed, t, total, regret))
                policy.result()  # an A/B test looks at its data (and may decide) here
        result.regret.append(regret)
        result.reward.append(total)
    return result


def _arm_name(spec: Any, arm: str) -> str:
    """Environment arm for a policy arm: A/B arms map to backends, others are backends already."""
    if getattr(spec, "kind", None) == "ab_test":
        return str(spec.arms[arm])
    return arm
