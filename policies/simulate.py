"""Offline simulation: run a policy spec against an environment with known means (SPEC §4).

The policy objects come from `policies.registry.build_policy`, the same ones that serve
traffic, and contexts go through the same `FeatureEncoder`, so what is measured here is what
runs in production. Regret is exact: sum over rounds of (best true mean - chosen true mean).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import stats as st
from policies.base import Context
from policies.registry import build_encoder, build_policy
from policies.regret import RegretTracker

__all__ = [
    "ENVIRONMENTS",
    "BernoulliEnv",
    "DriftingEnv",
    "GaussianEnv",
    "LinearEnv",
    "SimResult",
    "SwitchingEnv",
    "TableEnv",
    "checkpoints",
    "make_env",
    "run",
]


class BernoulliEnv:
    """Context-free arms with Bernoulli rewards of known means."""

    type = "bernoulli"
    delay = 0.0  # mean rounds before a reward arrives (make_env sets it)

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
    delay = 0.0  # mean rounds before a reward arrives (make_env sets it)

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
    """Contexts x ~ N(mean, I_d); reward x.theta_arm + N(0, noise²).

    When the policy declares exactly d numeric features, the raw x goes through the policy's
    own FeatureEncoder as the values of those features (in order), so scaling, clipping and
    standardisation are exercised as in production ("linear-numeric"); otherwise x goes to the
    policy as is. With `outlier_rate` > 0 a feature value is now and then replaced by
    `outlier_value` (a client sending 1000 where 1 is usual); the true means keep using the
    clean x (the outlier is a bad input, not a different user).
    """

    type = "linear"
    delay = 0.0  # mean rounds before a reward arrives (make_env sets it)

    def __init__(
        self,
        theta: Mapping[str, Sequence[float]],
        noise: float = 0.5,
        mean: Sequence[float] | None = None,
        outlier_rate: float = 0.0,
        outlier_value: float = 1000.0,
    ) -> None:
        if not theta:
            raise ValueError("theta: at least one arm is needed")
        dims = {len(v) for v in theta.values()}
        if len(dims) != 1:
            raise ValueError(f"theta: every arm needs the same dimension, got {sorted(dims)}")
        self.arms = tuple(theta)
        self.theta = np.array([list(theta[a]) for a in self.arms], dtype=float)
        self.dim = self.theta.shape[1]
        self.noise = noise
        self.mean = np.zeros(self.dim) if mean is None else np.asarray(mean, dtype=float)
        if self.mean.shape != (self.dim,):
            raise ValueError(f"mean: needs {self.dim} values, got {len(self.mean)}")
        if not 0.0 <= outlier_rate <= 1.0:
            raise ValueError(f"outlier_rate: must be in [0, 1], got {outlier_rate}")
        self.outlier_rate = outlier_rate
        self.outlier_value = outlier_value

    def uses_encoder(self, encoder: Any) -> bool:
        """True when contexts go through `encoder` (it has exactly d numeric features)."""
        if encoder is None:
            return False
        return bool(sum(f.type == "numeric" for f in encoder.features) == self.dim)

    def context(
        self, rng: np.random.Generator, encoder: Any
    ) -> tuple[Context, Mapping[str, float]]:
        x: np.ndarray = self.mean + np.asarray(rng.standard_normal(self.dim), dtype=float)
        mu = self.theta @ x
        means = dict(zip(self.arms, mu.tolist(), strict=True))
        seen = x
        if self.outlier_rate > 0.0 and rng.random() < self.outlier_rate:
            seen = x.copy()
            seen[int(rng.integers(self.dim))] = self.outlier_value
        if not self.uses_encoder(encoder):
            return Context(features=seen), means
        keys = {
            (f.source, f.key): i
            for i, f in enumerate(f for f in encoder.features if f.type == "numeric")
        }

        def get(source: str, key: str) -> float | None:
            i = keys.get((source, key))
            return None if i is None else float(seen[i])

        enc, label = encoder.encode(get)
        return Context(features=enc, label=label), means

    def reward(self, arm: str, mean: float, rng: np.random.Generator) -> float:
        return float(mean + self.noise * rng.standard_normal())


class SwitchingEnv(BernoulliEnv):
    """Bernoulli arms whose means switch at given rounds (`phases`: start round and means)."""

    type = "switching"

    def __init__(self, phases: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        if not phases:
            raise ValueError("phases: at least one phase is needed")
        ordered = sorted(phases, key=lambda p: p[0])
        if ordered[0][0] > 1:
            ordered.insert(0, (1, ordered[0][1]))
        arms = set(ordered[0][1])
        for start, means in ordered:
            if set(means) != arms:
                raise ValueError(f"phases: the phase at {start} has arms {sorted(means)}")
        super().__init__(ordered[0][1])
        self.phases = [(int(s), BernoulliEnv(m).means) for s, m in ordered]

    def advance(self, t: int) -> None:
        for start, means in self.phases:
            if start <= t:
                self.means = means


class DriftingEnv(BernoulliEnv):
    """Bernoulli arms whose means random-walk: each round every mean moves by N(0, drift²),
    reflected into [0.01, 0.99]."""

    type = "drifting"

    def __init__(self, means: Mapping[str, float], drift: float = 0.002, seed: int = 0) -> None:
        super().__init__(means)
        if not drift >= 0.0:
            raise ValueError(f"drift: must be >= 0, got {drift}")
        self.drift = drift
        self._start = dict(self.means)
        self._seed = seed
        self._walk = np.random.default_rng(seed)

    def reset(self, seed: int) -> None:
        self.means = dict(self._start)
        self._walk = np.random.default_rng(10_007 * (seed + 1) + self._seed)

    def advance(self, t: int) -> None:
        if t <= 1:
            return
        step = self._walk.normal(0.0, self.drift, size=len(self.arms))
        for a, d in zip(self.arms, step.tolist(), strict=True):
            m = self.means[a] + d
            if m < 0.01:
                m = 0.02 - m
            elif m > 0.99:
                m = 1.98 - m
            self.means[a] = m


Env = BernoulliEnv | GaussianEnv | TableEnv | LinearEnv | SwitchingEnv | DriftingEnv


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
    mean = d.get("mean")
    return LinearEnv(
        {str(k): [float(x) for x in v] for k, v in d["theta"].items()},
        float(d.get("noise", 0.5)),
        mean=None if mean is None else [float(x) for x in mean],
        outlier_rate=float(d.get("outlier_rate", 0.0)),
        outlier_value=float(d.get("outlier_value", 1000.0)),
    )


def _switching(d: Mapping[str, Any]) -> Env:
    phases = d["phases"]
    if not isinstance(phases, list):
        raise ValueError("phases: must be a list of {start: ROUND, means: {ARM: MEAN}}")
    out = []
    for i, ph in enumerate(phases):
        if not isinstance(ph, dict) or set(ph) != {"start", "means"}:
            raise ValueError(f"phases[{i}]: must be {{start: ROUND, means: {{ARM: MEAN}}}}")
        out.append((int(ph["start"]), {str(k): float(v) for k, v in ph["means"].items()}))
    return SwitchingEnv(out)


def _drifting(d: Mapping[str, Any]) -> Env:
    return DriftingEnv(
        {str(k): float(v) for k, v in d["means"].items()}, float(d.get("drift", 0.002))
    )


# type -> (builder, required keys, optional keys)
ENVIRONMENTS: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]] = {
    "bernoulli": (_bernoulli, ("means",), ()),
    "gaussian": (_gaussian, ("means",), ("sd",)),
    "table": (_table, ("contexts", "means"), ()),
    "linear": (_linear, ("theta",), ("noise", "mean", "outlier_rate", "outlier_value")),
    "switching": (_switching, ("phases",), ()),
    "drifting": (_drifting, ("means",), ("drift",)),
}
# every environment type also takes `delay`: the mean number of rounds before a reward arrives
# (geometric; 0 = at once), to rehearse feedback that comes late
_COMMON = ("delay",)


def make_env(d: Mapping[str, Any]) -> Env:
    """An environment from its parsed mapping (`type` plus that type's keys); ValueError if bad."""
    kind = d.get("type")
    if kind not in ENVIRONMENTS:
        raise ValueError(f"type: must be one of {sorted(ENVIRONMENTS)}, got {kind!r}")
    builder, required, optional = ENVIRONMENTS[kind]
    allowed = {"type", *required, *optional, *_COMMON}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")
    for key in required:
        if key not in d:
            raise ValueError(f"{key}: required for environment type {kind}")
    try:
        env = builder(d)
        delay = float(d.get("delay", 0.0))
    except (TypeError, AttributeError) as e:
        raise ValueError(f"malformed {kind} environment: {e}") from None
    if not (delay >= 0.0 and math.isfinite(delay)):
        raise ValueError(f"delay: must be a number of rounds >= 0, got {d.get('delay')}")
    env.delay = delay
    return env  # type: ignore[no-any-return]


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
    estimate: list[float] = field(default_factory=list)  # the router's regret estimate per seed
    estimate_sd: list[float | None] = field(default_factory=list)  # its own standard deviation
    estimate_method: str = "plain"
    # the estimate as it was before issue 10 (today's per-label means, no model): a baseline
    estimate_label_means: list[float] = field(default_factory=list)

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
        if self.estimate:
            est = float(np.mean(self.estimate))
            true = out["regret_mean"]
            out["regret_estimate_mean"] = est
            out["regret_estimate_ratio"] = est / true if true > 0.0 else None
            sds = [s for s in self.estimate_sd if s is not None]
            out["regret_estimate_sd_mean"] = float(np.mean(sds)) if sds else None
            out["regret_estimate_method"] = self.estimate_method
            covered = [
                abs(e - g) <= 1.959963984540054 * s
                for e, g, s in zip(self.estimate, self.regret, self.estimate_sd, strict=True)
                if s is not None
            ]
            out["regret_interval_coverage"] = float(np.mean(covered)) if covered else None
        if self.estimate_label_means:
            out["regret_label_means_estimate"] = float(np.mean(self.estimate_label_means))
        return out


def run(
    spec: Any,
    env: Env,
    horizon: int,
    seeds: int | Sequence[int],
    n_checkpoints: int = 100,
) -> SimResult:
    """Play `horizon` rounds per seed; the policy sees only its rewards, regret uses true means.

    Alongside the true regret, every seed's run keeps the router's own `RegretTracker` fed as
    the engine feeds it, so `SimResult.estimate` can be checked against the truth. With
    `env.delay` > 0 each reward arrives a geometric number of rounds later (mean `delay`) and
    carries the policy clock of its decision, as a decision token does.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    missing = [a for a in getattr(spec, "arms", ()) if _arm_name(spec, a) not in env.arms]
    if missing:
        raise ValueError(f"policy arms {missing} have no mean in the environment")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    marks = set(checkpoints(horizon, n_checkpoints))
    lr = None
    if type(env) is BernoulliEnv:
        lr = st.lai_robbins(list(env.means.values()), horizon)
    result = SimResult(horizon, len(seed_list), [], [], lai_robbins=lr)
    encoder = build_encoder(spec)
    dim = None
    if isinstance(env, LinearEnv) and not env.uses_encoder(encoder):
        dim = env.dim
    delay = float(getattr(env, "delay", 0.0))
    advance = getattr(env, "advance", None)
    for seed in seed_list:
        if isinstance(env, DriftingEnv):
            env.reset(seed)
        if advance is not None:
            advance(1)
        if encoder is not None:
            encoder = build_encoder(spec)  # fresh online-standardisation statistics per seed
        policy = build_policy(spec, np.random.default_rng(seed), dim=dim)
        tracker = RegretTracker()
        tracker.attach(policy)
        naive = RegretTracker()  # not attached: per-label current means, as before issue 10
        env_rng = np.random.default_rng(1_000_003 + seed)
        to_env = {a: _arm_name(spec, a) for a in policy.arms}
        has_clock = hasattr(policy, "clock")
        pending: list[tuple[int, int, str, float, Context]] = []
        total = 0.0
        regret = 0.0
        for t in range(1, horizon + 1):
            if advance is not None:
                advance(t)
            ctx, means = env.context(env_rng, encoder)
            if has_clock:
                ctx.clock = getattr(policy, "clock", None)
            arm = policy.choose(ctx).arm
            tracker.decision(arm, ctx.label, ctx.features)
            naive.decision(arm, ctx.label)
            mean = means[to_env[arm]]
            r = env.reward(arm, mean, env_rng)
            if delay > 0.0:
                due = t + int(env_rng.geometric(1.0 / (1.0 + delay))) - 1
                heapq.heappush(pending, (due, t, arm, r, ctx))
                while pending and pending[0][0] <= t:
                    _, _, a, rr, c = heapq.heappop(pending)
                    policy.update(a, rr, c)
                    tracker.reward(a, rr, c.label)
                    naive.reward(a, rr, c.label)
            else:
                policy.update(arm, r, ctx)
                tracker.reward(arm, r, ctx.label)
                naive.reward(arm, r, ctx.label)
            total += r
            regret += max(means[to_env[a]] for a in policy.arms) - mean
            if t in marks:
                result.rows.append((seed, t, total, regret))
                policy.result()  # an A/B test looks at its data (and may decide) here
        result.regret.append(regret)
        result.reward.append(total)
        est = tracker.summary()
        result.estimate.append(float(est["regret"]))
        result.estimate_sd.append(est["regret_sd"])
        result.estimate_method = str(est["regret_method"])
        result.estimate_label_means.append(naive.regret)
    return result


def _arm_name(spec: Any, arm: str) -> str:
    """Environment arm for a policy arm: A/B arms map to backends, others are backends already."""
    if getattr(spec, "kind", None) == "ab_test":
        return str(spec.arms[arm])
    return arm
