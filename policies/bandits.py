"""Context-free multi-armed bandits: thompson, ucb1, kl_ucb, epsilon_greedy and softmax.

One `BanditPolicy` keeps the sufficient statistics (discounted trials, reward sums, sums of
squares); the algorithm is a small strategy looked up by name in `ALGORITHMS`, which also
declares each algorithm's parameters (the validator and the README reference read them there).
For 2-4 arms the standard library's `random` is several times faster per draw than numpy scalar
calls, so the hot path uses a `random.Random` seeded from the injected numpy Generator
(deterministic per seed).

Exploration floor (`min_share = m`, K arms): with probability K*m the arm is drawn uniformly,
otherwise the algorithm picks. The logged propensity is therefore exactly
`(1 - K*m) * p_algorithm(arm) + m`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from policies.base import ArmStats, Context, Decision
from policies.params import Algorithm, Param, param_values

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "BanditPolicy"]

_NO_CONTEXT = Context()
_MC_DRAWS = 512  # Monte-Carlo draws behind a Thompson propensity estimate
_WH_MIN = 3.0  # Gamma shapes from here on use the Wilson–Hilferty transform


class _Algorithm(Protocol):
    cold_first: bool  # arms with no rewarded trial are played before the algorithm decides

    def pick(self, b: BanditPolicy) -> int: ...

    def probs(self, b: BanditPolicy) -> list[float]: ...


class _MakeAlgorithm(Protocol):
    def __call__(self, params: Mapping[str, float], reward_type: str) -> _Algorithm: ...


class BanditPolicy:
    """A context-free bandit over `arms`; rewards are binary (0/1, or in [0, 1]) or continuous."""

    __slots__ = (
        "_algo",
        "_cache",
        "_cache_version",
        "_floor",
        "_np",
        "_rnd",
        "_stats",
        "algorithm",
        "arms",
        "discount",
        "min_share",
        "n",
        "params",
        "reward_type",
        "s",
        "ss",
        "version",
    )

    def __init__(
        self,
        arms: Sequence[str],
        algorithm: str = "thompson",
        *,
        rng: np.random.Generator,
        reward_type: str = "binary",
        params: Mapping[str, float] | None = None,
        min_share: float = 0.0,
        discount: float = 1.0,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown bandit algorithm {algorithm!r}; one of {sorted(ALGORITHMS)}")
        if reward_type not in ("binary", "continuous"):
            raise ValueError(f"reward type must be binary or continuous, got {reward_type!r}")
        if not arms:
            raise ValueError("a bandit needs at least one arm")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        if min_share < 0.0 or min_share * len(arms) > 1.0:
            raise ValueError(f"min_share * arms must be in [0, 1], got {min_share} x {len(arms)}")
        self.algorithm = algorithm
        self.reward_type = reward_type
        self.params = dict(params or {})
        self.min_share = min_share
        self.discount = discount
        self._np = rng
        self._rnd = random.Random(int(rng.integers(0, 2**63)))
        self._algo = ALGORITHMS[algorithm].make(self.params, reward_type)
        self.arms: tuple[str, ...] = ()
        self.n: list[float] = []
        self.s: list[float] = []
        self.ss: list[float] = []
        self._stats: dict[str, ArmStats] = {}
        self.version = 0
        self._cache: Any = None
        self._cache_version = -1
        self.set_arms(arms)

    # ---- serving --------------------------------------------------------------------------

    def choose(self, context: Context = _NO_CONTEXT) -> Decision:
        k = len(self.arms)
        floor = self._floor
        rnd = self._rnd
        if floor > 0.0 and rnd.random() < floor:
            i = rnd.randrange(k)
            p = self._policy_prob(i)
        else:
            i = -1
            if self._algo.cold_first:
                cold = [j for j in range(k) if self.n[j] <= 0.0]
                if cold:
                    i = cold[rnd.randrange(len(cold))] if len(cold) > 1 else cold[0]
            if i < 0:
                i = self._algo.pick(self)
            p = self._policy_prob(i)
        arm = self.arms[i]
        self._stats[arm].decisions += 1
        return Decision(arm, (1.0 - floor) * p + self.min_share)

    def update(
        self, arm: str, reward: float, context: Context | None = None, trial: bool = True
    ) -> None:
        """Fold in one reward. `trial=False` credits a trial already counted (missing_reward: 0)."""
        i = self.arms.index(arm)
        if trial:
            g = self.discount
            if g < 1.0:
                n, s, ss = self.n, self.s, self.ss
                for j in range(len(n)):
                    n[j] *= g
                    s[j] *= g
                    ss[j] *= g
            self.n[i] += 1.0
        self.s[i] += reward
        self.ss[i] += reward * reward
        st = self._stats[arm]
        if trial:
            st.rewards += 1
        st.reward_sum += reward
        st.reward_sq_sum += reward * reward
        self.version += 1

    def stats(self) -> Mapping[str, ArmStats]:
        return self._stats

    @property
    def phase(self) -> str:
        return "active"  # a bandit never concludes: it keeps shifting traffic

    def result(self) -> None:
        return None  # no hypothesis test: the shares are the answer

    def shares(self) -> dict[str, float]:
        """Intended share of traffic per arm right now (the propensities), sums to 1."""
        k = len(self.arms)
        cold = [j for j in range(k) if self.n[j] <= 0.0] if self._algo.cold_first else []
        if cold:
            base = [1.0 / len(cold) if j in cold else 0.0 for j in range(k)]
        else:
            base = self._algo.probs(self)
        return {a: (1.0 - self._floor) * base[j] + self.min_share for j, a in enumerate(self.arms)}

    def means(self) -> dict[str, float]:
        """Current (discounted) estimated mean reward of every arm with data."""
        return {a: self.s[j] / self.n[j] for j, a in enumerate(self.arms) if self.n[j] > 0.0}

    def _policy_prob(self, i: int) -> float:
        if self._algo.cold_first:
            cold = [j for j in range(len(self.arms)) if self.n[j] <= 0.0]
            if cold:
                return 1.0 / len(cold) if i in cold else 0.0
        return self._algo.probs(self)[i]

    # ---- arms and persistence ------------------------------------------------------------

    def set_arms(self, arms: Sequence[str]) -> None:
        """Change the arm set (reload): kept arms keep their statistics, new arms start cold."""
        old = {a: (self.n[j], self.s[j], self.ss[j]) for j, a in enumerate(self.arms)}
        self.arms = tuple(arms)
        self.n = [old.get(a, (0.0, 0.0, 0.0))[0] for a in self.arms]
        self.s = [old.get(a, (0.0, 0.0, 0.0))[1] for a in self.arms]
        self.ss = [old.get(a, (0.0, 0.0, 0.0))[2] for a in self.arms]
        self._stats = {a: self._stats.get(a) or ArmStats() for a in self.arms}
        self._floor = self.min_share * len(self.arms)
        if self._floor > 1.0:
            raise ValueError(f"min_share {self.min_share} x {len(self.arms)} arms exceeds 1")
        self.version += 1
        self._cache_version = -1

    def state(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "version": self.version,
            "arms": {
                a: {"n": self.n[j], "s": self.s[j], "ss": self.ss[j], **self._stats[a].to_json()}
                for j, a in enumerate(self.arms)
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        arms = state.get("arms", {})
        for j, a in enumerate(self.arms):
            d = arms.get(a)
            if d is None:
                continue
            self.n[j] = float(d.get("n", 0.0))
            self.s[j] = float(d.get("s", 0.0))
            self.ss[j] = float(d.get("ss", 0.0))
            self._stats[a] = ArmStats.from_json(d)
        self.version = int(state.get("version", 0)) + 1
        self._cache_version = -1

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        return {
            f"bandit.v1/{a}": np.array(
                [self.n[j], self.s[j], self.ss[j], *self._stats[a].to_array()], dtype=float
            )
            for j, a in enumerate(self.arms)
        }

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        for j, a in enumerate(self.arms):
            x = totals[f"bandit.v1/{a}"]
            self.n[j], self.s[j], self.ss[j] = float(x[0]), float(x[1]), float(x[2])
            self._stats[a] = ArmStats.from_array(x[3:7])
        self.version += 1
        self._cache_version = -1

    # ---- helpers the algorithms share ---------------------------------------------------------

    def cached(self, compute: Any, every: float = 0.0) -> Any:
        """Value of compute(self), recomputed when statistics changed (by `every` relative)."""
        v = self.version
        cv = self._cache_version
        if cv < 0 or (v != cv and v - cv >= every * cv):
            self._cache = compute(self)
            self._cache_version = v
        return self._cache

    def pooled_var(self) -> float:
        """Pooled within-arm variance of the rewards (1.0 until there is data)."""
        num = 0.0
        dof = 0.0
        for n, s, ss in zip(self.n, self.s, self.ss, strict=True):
            if n > 1.0:
                num += max(0.0, ss - s * s / n)
                dof += n - 1.0
        return num / dof if dof > 0.0 else 1.0

    def arm_var(self, j: int, pooled: float) -> float:
        n = self.n[j]
        if n > 2.0:
            return max(0.0, self.ss[j] - self.s[j] * self.s[j] / n) / (n - 1.0) or pooled
        return pooled


def _argmax_probs(scores: Sequence[float]) -> list[float]:
    """Deterministic choice as probabilities: ties share the mass evenly."""
    top = max(scores)
    ties = [j for j, x in enumerate(scores) if x >= top]
    return [1.0 / len(ties) if j in ties else 0.0 for j in range(len(scores))]


def _sample(probs: Sequence[float], u: float) -> int:
    acc = 0.0
    for j, p in enumerate(probs):
        acc += p
        if u < acc:
            return j
    return max(j for j, p in enumerate(probs) if p > 0.0)


# ---- Thompson sampling ----------------------------------------------------------------------


def _gamma(rnd: random.Random, shape: float) -> float:
    """Gamma(shape, 1) for shape >= 1 by Marsaglia–Tsang (about 2x faster than stdlib here)."""
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    gauss = rnd.gauss
    while True:
        x = gauss(0.0, 1.0)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = rnd.random()
        if u < 1.0 - 0.0331 * x * x * x * x or math.log(u) < 0.5 * x * x + d * (
            1.0 - v + math.log(v)
        ):
            return d * v


class Thompson:
    """Beta(1+s, 1+n-s) posteriors for binary rewards; Normal posteriors for continuous ones.

    Beta(a, b) draws are G_a / (G_a + G_b) with Gamma variates: exact Marsaglia–Tsang while a
    shape is below 3, the Wilson–Hilferty cube transform of one Gaussian above (relative error
    well under 1% there), and the moment-matched normal once both shapes exceed `normal_above`
    (default 50). That keeps 4 arms near 2 Gaussian draws each.
    The propensity is a Monte-Carlo estimate (512 joint posterior draws), refreshed whenever the
    statistics grew by 2% (cheap, and accurate to a few percent), floored at 1/512.
    """

    PARAMS = (
        Param(
            "prior_alpha",
            "Beta prior successes + 1 (Beta(1, 1): uniform).",
            default=1.0,
            gt=0.0,
            reward="binary",
        ),
        Param(
            "prior_beta",
            "Beta prior failures + 1 (Beta(1, 1): uniform).",
            default=1.0,
            gt=0.0,
            reward="binary",
        ),
    )

    def __init__(self, params: Mapping[str, float], reward_type: str) -> None:
        self.binary = reward_type == "binary"
        self.cold_first = not self.binary  # a Beta prior explores; a Normal needs data
        p = param_values(self.PARAMS, params)
        self.prior_a = p["prior_alpha"]
        self.prior_b = p["prior_beta"]
        if self.prior_a <= 0 or self.prior_b <= 0:
            raise ValueError("prior_alpha and prior_beta must be > 0")
        self.normal_above = float(params.get("normal_above", 50.0))
        self.wh_above = float(params.get("wh_above", _WH_MIN))
        self._plan: list[tuple[int, float, float, float, float]] = []
        self._plan_version = -1

    def _make_plan(self, b: BanditPolicy) -> list[tuple[int, float, float, float, float]]:
        """Per arm: (mode, constants) for its Beta draw, recomputed only when stats change."""
        plan = []
        lim = self.normal_above
        for j in range(len(b.n)):
            a1 = self.prior_a + b.s[j]
            b1 = self.prior_b + max(0.0, b.n[j] - b.s[j])
            if a1 > lim and b1 > lim:
                t = a1 + b1
                plan.append((0, a1 / t, math.sqrt(a1 * b1 / (t * t * (t + 1.0))), 0.0, 0.0))
            elif a1 >= self.wh_above and b1 >= self.wh_above:
                plan.append((1, a1, 1.0 - 1.0 / (9.0 * a1), 1.0 / (3.0 * math.sqrt(a1)), b1))
            else:
                plan.append((2, a1, b1, 0.0, 0.0))
        return plan

    def pick(self, b: BanditPolicy) -> int:
        rnd = b._rnd
        best = -math.inf
        bi = 0
        if self.binary:
            if self._plan_version != b.version:
                self._plan = self._make_plan(b)
                self._plan_version = b.version
            gauss = rnd.gauss
            for j, (mode, p1, p2, p3, p4) in enumerate(self._plan):
                if mode == 0:
                    x = p1 + p2 * gauss(0.0, 1.0)
                elif mode == 1:
                    v = p2 + p3 * gauss(0.0, 1.0)
                    g1 = p1 * v * v * v if v > 0.0 else 1e-300
                    w = 1.0 - 1.0 / (9.0 * p4) + gauss(0.0, 1.0) / (3.0 * math.sqrt(p4))
                    g2 = p4 * w * w * w if w > 0.0 else 1e-300
                    x = g1 / (g1 + g2)
                else:
                    g1 = _gamma(rnd, p1)
                    x = g1 / (g1 + _gamma(rnd, p2))
                if x > best:
                    best = x
                    bi = j
        else:
            pooled = b.pooled_var()
            for j in range(len(b.n)):
                n = b.n[j]
                x = b.s[j] / n + math.sqrt(b.arm_var(j, pooled) / n) * rnd.gauss(0.0, 1.0)
                if x > best:
                    best = x
                    bi = j
        return bi

    def probs(self, b: BanditPolicy) -> list[float]:
        return b.cached(self._mc, every=0.02)  # type: ignore[no-any-return]

    def _mc(self, b: BanditPolicy) -> list[float]:
        g = b._np
        k = len(b.n)
        n = np.asarray(b.n)
        s = np.asarray(b.s)
        if self.binary:
            draws = g.beta(
                self.prior_a + s, self.prior_b + np.maximum(0.0, n - s), size=(_MC_DRAWS, k)
            )
        else:
            pooled = b.pooled_var()
            sd = np.array([math.sqrt(b.arm_var(j, pooled) / max(b.n[j], 1e-9)) for j in range(k)])
            draws = g.normal(s / np.maximum(n, 1e-9), sd, size=(_MC_DRAWS, k))
        counts = np.bincount(np.argmax(draws, axis=1), minlength=k)
        p = np.maximum(counts / _MC_DRAWS, 1.0 / _MC_DRAWS)
        return [float(x) for x in p / p.sum()]


# ---- index policies -------------------------------------------------------------------------


class _Deterministic:
    """An index policy: play the arm with the highest score; ties share evenly."""

    cold_first = True

    def pick(self, b: BanditPolicy) -> int:
        probs = self.probs(b)
        for j, p in enumerate(probs):
            if p >= 1.0:
                return j
        return _sample(probs, b._rnd.random())

    def probs(self, b: BanditPolicy) -> list[float]:
        return b.cached(lambda bb: _argmax_probs(self.scores(bb)))  # type: ignore[no-any-return]

    def scores(self, b: BanditPolicy) -> list[float]:
        raise NotImplementedError


class UCB1(_Deterministic):
    """mean + c * sqrt(2 ln t / n) (scaled by the pooled reward sd for continuous rewards)."""

    PARAMS = (Param("c", "Width of the confidence bonus.", default=1.0, min=0.0),)

    def __init__(self, params: Mapping[str, float], reward_type: str) -> None:
        self.c = param_values(self.PARAMS, params)["c"]
        self.binary = reward_type == "binary"

    def scores(self, b: BanditPolicy) -> list[float]:
        log_t = math.log(max(sum(b.n), 1.0))
        scale = self.c * (1.0 if self.binary else math.sqrt(b.pooled_var()))
        return [s / n + scale * math.sqrt(2.0 * log_t / n) for n, s in zip(b.n, b.s, strict=True)]


def _kl_ucb_bound(p: float, n: float, level: float) -> float:
    """Largest q >= p with n * KL(p, q) <= level; Newton from above stays an upper bound."""
    if level <= 0.0:
        return p
    p = min(max(p, 0.0), 1.0)
    q = min(p + math.sqrt(level / (2.0 * n)), 1.0 - 1e-12)  # Pinsker: above the root
    if q <= p:
        return q
    for _ in range(20):
        pp = min(max(p, 1e-15), 1.0 - 1e-15)
        kl = pp * math.log(pp / q) + (1.0 - pp) * math.log((1.0 - pp) / (1.0 - q))
        f = n * kl - level
        if f <= 1e-9:
            break
        df = n * (q - pp) / (q * (1.0 - q))
        if df <= 0.0:
            break
        q -= f / df
    return q


class KLUCB(_Deterministic):
    """Bernoulli KL-UCB with exploration level ln t + c ln ln t (c = 0 by default).

    Continuous rewards use the Gaussian KL: mean + sqrt(2 sigma² level / n).
    """

    PARAMS = (Param("c", "The `c log log t` term of the KL-UCB index.", default=0.0, min=0.0),)

    def __init__(self, params: Mapping[str, float], reward_type: str) -> None:
        self.c = param_values(self.PARAMS, params)["c"]
        self.binary = reward_type == "binary"

    def scores(self, b: BanditPolicy) -> list[float]:
        t = max(sum(b.n), 1.0)
        level = math.log(t) + (self.c * math.log(math.log(t)) if t > math.e else 0.0)
        if self.binary:
            return [_kl_ucb_bound(s / n, n, level) for n, s in zip(b.n, b.s, strict=True)]
        var = b.pooled_var()
        return [s / n + math.sqrt(2.0 * var * level / n) for n, s in zip(b.n, b.s, strict=True)]


class EpsilonGreedy:
    """With probability epsilon a uniform arm, else the best estimated mean.

    `decay` > 0 lowers exploration as trials accumulate: epsilon_t = epsilon / (1 + decay * t).
    """

    cold_first = True

    PARAMS = (
        Param(
            "epsilon", "Probability of a uniformly random arm (0-1).", default=0.1, min=0.0, max=1.0
        ),
        Param("decay", "Exploration decay: epsilon / (1 + decay * trials).", default=0.0, min=0.0),
    )

    def __init__(self, params: Mapping[str, float], reward_type: str) -> None:
        p = param_values(self.PARAMS, params)
        self.epsilon = p["epsilon"]
        self.decay = p["decay"]
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.decay < 0.0:
            raise ValueError(f"decay must be >= 0, got {self.decay}")

    def pick(self, b: BanditPolicy) -> int:
        return _sample(self.probs(b), b._rnd.random())

    def probs(self, b: BanditPolicy) -> list[float]:
        return b.cached(self._probs)  # type: ignore[no-any-return]

    def _probs(self, b: BanditPolicy) -> list[float]:
        k = len(b.n)
        greedy = _argmax_probs([s / n for n, s in zip(b.n, b.s, strict=True)])
        eps = self.epsilon / (1.0 + self.decay * sum(b.n)) if self.decay else self.epsilon
        return [eps / k + (1.0 - eps) * g for g in greedy]


class Softmax:
    """Boltzmann exploration: P(arm) proportional to exp(mean / temperature)."""

    cold_first = True

    PARAMS = (Param("temperature", "Boltzmann temperature.", default=0.1, gt=0.0),)

    def __init__(self, params: Mapping[str, float], reward_type: str) -> None:
        self.temperature = param_values(self.PARAMS, params)["temperature"]
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def pick(self, b: BanditPolicy) -> int:
        return _sample(self.probs(b), b._rnd.random())

    def probs(self, b: BanditPolicy) -> list[float]:
        return b.cached(self._probs)  # type: ignore[no-any-return]

    def _probs(self, b: BanditPolicy) -> list[float]:
        means = [s / n for n, s in zip(b.n, b.s, strict=True)]
        top = max(means)
        w = [math.exp((m - top) / self.temperature) for m in means]
        total = sum(w)
        return [x / total for x in w]


# The registry: name -> implementation and the parameters it reads.
ALGORITHMS: dict[str, Algorithm[_MakeAlgorithm]] = {
    "thompson": Algorithm(Thompson, Thompson.PARAMS),
    "ucb1": Algorithm(UCB1, UCB1.PARAMS),
    "kl_ucb": Algorithm(KLUCB, KLUCB.PARAMS),
    "epsilon_greedy": Algorithm(EpsilonGreedy, EpsilonGreedy.PARAMS),
    "softmax": Algorithm(Softmax, Softmax.PARAMS),
}
DEFAULT_ALGORITHM = "thompson"
