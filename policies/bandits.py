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

from policies.base import MAX_ABS_REWARD, ArmStats, Context, Decision
from policies.params import Algorithm, Param, param_values
from policies.probbest import BETA, NORMAL, prob_best

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "BanditPolicy"]

_NO_CONTEXT = Context()
_DEFAULT_TEMPERATURE = 0.1  # softmax, relative to the reward scale
# Thompson propensities are recomputed once some arm's sampling distribution moved by this many
# of its standard deviations (or its sd by this fraction). Measured on a 4-arm click-through run
# with feedback for every decision: worst staleness 0.35% relative (budget 1%), one quadrature
# per ~2 decisions; 0.001 recomputed on every update, 0.01 reached 0.9%.
_REFRESH = 0.005


class _Algorithm(Protocol):
    cold_first: bool  # arms with no rewarded trial are played before the algorithm decides

    def pick(self, b: BanditPolicy) -> int: ...

    def probs(self, b: BanditPolicy) -> list[float]: ...


class _MakeAlgorithm(Protocol):
    def __call__(self, params: Mapping[str, float], reward_type: str) -> _Algorithm: ...


class BanditPolicy:
    """A context-free bandit over `arms`; rewards are binary (0/1, or in [0, 1]) or continuous.

    Per arm it keeps the (discounted) trial weight `n`, the running mean `mu` and the running
    sum of squared deviations `m2`, updated by Welford's method (weighted, so discounting and
    late rewards fit in): no sum of squares of raw rewards, so rewards around 1e8 keep their
    precision. `clock` counts trials folded in; with `discount < 1` every trial multiplies all
    weights by the discount, and a reward whose decision was made at an earlier clock (its
    Context says when) enters with the weight it would have decayed to by now.
    """

    __slots__ = (
        "_algo",
        "_cache",
        "_cache_version",
        "_credit",
        "_floor",
        "_np",
        "_rnd",
        "_stats",
        "algorithm",
        "arms",
        "clock",
        "discount",
        "m2",
        "min_share",
        "mu",
        "n",
        "params",
        "reward_type",
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
        self.mu: list[float] = []
        self.m2: list[float] = []
        self.clock = 0.0
        self._credit: list[list[float]] = []  # [sum, sum of squares] credited without a trial
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
        self,
        arm: str,
        reward: float,
        context: Context | None = None,
        trial: bool = True,
        prior: float = 0.0,
    ) -> None:
        """Fold in one reward.

        `trial=False` credits a trial already counted with the value `prior` (missing_reward:
        the decision counted a trial of `prior`; `reward` is what to add to it now). With
        `discount < 1` and `context.clock` set (the clock when the decision was made), the
        reward's weight is discount ** (trials since then). Raises ValueError, changing nothing,
        for a reward that is not finite or would make the statistics overflow.
        """
        i = self.arms.index(arm)
        r = float(reward)
        if not math.isfinite(r) or abs(r) > MAX_ABS_REWARD:
            raise ValueError(
                f"reward must be finite and within +-{MAX_ABS_REWARD:g}, got {reward!r}"
            )
        g = self.discount
        at = context.clock if context is not None else None
        w = 1.0
        if g < 1.0 and at is not None:
            age = self.clock - at - (0.0 if trial else 1.0)
            if age > 0.0:
                w = g**age
        n, mu, m2 = self.n, self.mu, self.m2
        x_old = x_new = 0.0
        if trial:
            decay = g if g < 1.0 else 1.0
            ni = n[i] * decay + w
            if ni <= 0.0:
                return
            d = r - mu[i]
            mi = mu[i] + w * d / ni
            m2i = m2[i] * decay + w * d * (r - mi)
        else:
            ni = n[i]
            x_old = float(prior)
            x_new = x_old + r
            if ni <= 0.0 or w <= 0.0:
                # the trial was counted elsewhere (another process) and not merged here yet:
                # keep the credit as raw sums; the next merge (`additive`) carries it over
                st = self._stats[arm]
                dsq = x_new * x_new - x_old * x_old
                if not (math.isfinite(st.reward_sq_sum + dsq) and math.isfinite(dsq)):
                    raise ValueError(f"reward {reward!r} would make the statistics overflow")
                self._credit[i][0] += r
                self._credit[i][1] += dsq
                st.reward_sum += r
                st.reward_sq_sum += dsq
                self.version += 1
                return
            w = min(w, ni)
            d = x_new - x_old
            mi = mu[i] + w * d / ni
            m2i = m2[i] + w * d * (2.0 * (x_old - mu[i]) + d * (1.0 - w / ni))
        st = self._stats[arm]
        rsum = st.reward_sum + r
        rsq = st.reward_sq_sum + (r * r if trial else x_new * x_new - x_old * x_old)
        if not (math.isfinite(mi) and math.isfinite(m2i) and math.isfinite(rsq)):
            raise ValueError(f"reward {reward!r} would make the statistics of arm {arm!r} overflow")
        if trial:
            if g < 1.0:
                for j in range(len(n)):
                    if j != i:
                        n[j] *= g
                        m2[j] *= g
            self.clock += 1.0
            st.rewards += 1
        n[i] = ni
        mu[i] = mi
        m2[i] = max(0.0, m2i)
        st.reward_sum = rsum
        st.reward_sq_sum = rsq
        self.version += 1

    @property
    def s(self) -> list[float]:
        """(Discounted) reward sums per arm, n * mean."""
        return [n * m for n, m in zip(self.n, self.mu, strict=True)]

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
        return {a: self.mu[j] for j, a in enumerate(self.arms) if self.n[j] > 0.0}

    def mean_sd(self) -> dict[str, float]:
        """Standard error of each (discounted) mean with data, as the policy sees it."""
        pooled = self.pooled_var()
        out = {}
        for j, a in enumerate(self.arms):
            n = self.n[j]
            if n > 0.0:
                if self.reward_type == "binary":
                    p = min(max(self.mu[j], 0.0), 1.0)
                    var = max(p * (1.0 - p), 1.0 / (4.0 * (n + 1.0)))
                else:
                    var = self.arm_var(j, pooled)
                out[a] = math.sqrt(var / n)
        return out

    def _policy_prob(self, i: int) -> float:
        if self._algo.cold_first:
            cold = [j for j in range(len(self.arms)) if self.n[j] <= 0.0]
            if cold:
                return 1.0 / len(cold) if i in cold else 0.0
        return self._algo.probs(self)[i]

    # ---- arms and persistence ------------------------------------------------------------

    def set_arms(self, arms: Sequence[str]) -> None:
        """Change the arm set (reload): kept arms keep their statistics, new arms start cold."""
        old = {a: (self.n[j], self.mu[j], self.m2[j]) for j, a in enumerate(self.arms)}
        self.arms = tuple(arms)
        zero = (0.0, 0.0, 0.0)
        self.n = [old.get(a, zero)[0] for a in self.arms]
        self.mu = [old.get(a, zero)[1] for a in self.arms]
        self.m2 = [old.get(a, zero)[2] for a in self.arms]
        self._credit = [[0.0, 0.0] for _ in self.arms]
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
            "clock": self.clock,
            "arms": {
                a: {
                    "n": self.n[j],
                    "mean": self.mu[j],
                    "m2": self.m2[j],
                    **self._stats[a].to_json(),
                }
                for j, a in enumerate(self.arms)
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a snapshot (also the older form with raw sums `s`, `ss`)."""
        arms = state.get("arms", {})
        for j, a in enumerate(self.arms):
            d = arms.get(a)
            if d is None:
                continue
            n = float(d.get("n", 0.0))
            if "mean" in d:
                mu = float(d["mean"])
                m2 = float(d.get("m2", 0.0))
            else:
                s = float(d.get("s", 0.0))
                mu = s / n if n > 0.0 else 0.0
                m2 = max(0.0, float(d.get("ss", 0.0)) - s * mu)
            if not all(math.isfinite(v) for v in (n, mu, m2)) or n < 0.0:
                raise ValueError(f"arm {a!r}: statistics are not finite")
            self.n[j], self.mu[j], self.m2[j] = n, mu, m2
            self._stats[a] = ArmStats.from_json(d)
        self.clock = float(state.get("clock", 0.0))
        self.version = int(state.get("version", 0)) + 1
        self._cache_version = -1

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """[n, sum, sum of squares, ArmStats...] per arm: what adds up across processes.

        Welford's (mean, M2) do not add, so the merged form is the raw sums, rebuilt from them
        (sum = n mean, sum of squares = M2 + n mean²). Known limit: after a merge the spread of
        rewards around 1e8 is only as precise as those sums (a shifted-sum format is the fix).
        """
        return {
            f"bandit.v1/{a}": np.array(
                [
                    self.n[j],
                    self.n[j] * self.mu[j] + self._credit[j][0],
                    self.m2[j] + self.n[j] * self.mu[j] * self.mu[j] + self._credit[j][1],
                    *self._stats[a].to_array(),
                ],
                dtype=float,
            )
            for j, a in enumerate(self.arms)
        }

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        for j, a in enumerate(self.arms):
            x = totals[f"bandit.v1/{a}"]
            n, s, ss = float(x[0]), float(x[1]), float(x[2])
            if not (math.isfinite(n) and math.isfinite(s) and math.isfinite(ss)):
                continue  # never adopt poisoned totals
            mu = s / n if n > 0.0 else 0.0
            m2 = max(0.0, ss - s * mu)
            if n == self.n[j] and abs(mu - self.mu[j]) <= 1e-9 * max(1.0, abs(mu)):
                # nothing new from other processes: keep our exact moments, not the rounded ones
                mu, m2 = self.mu[j], self.m2[j]
            self.n[j], self.mu[j], self.m2[j] = n, mu, m2
            self._credit[j] = [0.0, 0.0]
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
        for n, m2 in zip(self.n, self.m2, strict=True):
            if n > 1.0:
                num += m2
                dof += n - 1.0
        return num / dof if dof > 0.0 else 1.0

    def arm_var(self, j: int, pooled: float) -> float:
        n = self.n[j]
        if n > 2.0:
            return self.m2[j] / (n - 1.0) or pooled
        return pooled

    def reward_scale(self) -> float:
        """Typical size of rewards, for defaults that must not depend on units: the overall
        success rate for binary rewards (click-through scale), the pooled sd for continuous."""
        total = sum(self.n)
        if self.reward_type == "binary":
            if total <= 0.0:
                return 1.0
            rate = sum(self.s) / total
            return max(min(rate, 1.0 - rate), 1.0 / (total + 2.0))
        return math.sqrt(self.pooled_var())


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
    """Gamma(shape, 1) by Marsaglia–Tsang (about 2x faster than stdlib here); shape < 1 boosts
    a Gamma(shape + 1) draw by U^(1/shape)."""
    if shape < 1.0:
        return _gamma(rnd, shape + 1.0) * float((1.0 - rnd.random()) ** (1.0 / shape))
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
    """Beta(prior_alpha + s, prior_beta + n - s) posteriors for binary rewards; normal
    posteriors N(mean, var / n) for continuous ones.

    A Beta draw is G_a / (G_a + G_b) with exact Gamma variates (Marsaglia–Tsang), or, once both
    shapes exceed `normal_above` (default 50), one draw of the moment-matched normal (4 arms then
    cost about 4 Gaussian draws). The logged propensity is P(this arm's draw is the largest) for
    exactly those sampling distributions, computed by quadrature (`policies.probbest`, relative
    error around 1e-5) and cached until some posterior moved by _REFRESH of its sd.
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
        self._plan: list[tuple[int, float, float]] = []
        self._plan_version = -1
        self._probs: list[float] = []
        self._probs_plan: list[tuple[int, float, float]] = []
        self._probs_version = -1

    def posteriors(self, b: BanditPolicy) -> list[tuple[int, float, float]]:
        """Per arm the distribution a draw comes from: (BETA, a, b) or (NORMAL, mean, sd)."""
        if self._plan_version == b.version:
            return self._plan
        plan: list[tuple[int, float, float]] = []
        if self.binary:
            lim = self.normal_above
            for j in range(len(b.n)):
                s = b.n[j] * b.mu[j]
                a1 = self.prior_a + max(0.0, s)
                b1 = self.prior_b + max(0.0, b.n[j] - s)
                if a1 > lim and b1 > lim:
                    t = a1 + b1
                    plan.append((NORMAL, a1 / t, math.sqrt(a1 * b1 / (t * t * (t + 1.0)))))
                else:
                    plan.append((BETA, a1, b1))
        else:
            pooled = b.pooled_var()
            for j in range(len(b.n)):
                n = max(b.n[j], 1e-9)
                plan.append((NORMAL, b.mu[j], math.sqrt(b.arm_var(j, pooled) / n)))
        self._plan = plan
        self._plan_version = b.version
        return plan

    def pick(self, b: BanditPolicy) -> int:
        rnd = b._rnd
        gauss = rnd.gauss
        best = -math.inf
        bi = 0
        for j, (kind, p1, p2) in enumerate(self.posteriors(b)):
            if kind == NORMAL:
                x = p1 + p2 * gauss(0.0, 1.0)
            else:
                g1 = _gamma(rnd, p1)
                x = g1 / (g1 + _gamma(rnd, p2))
            if x > best:
                best = x
                bi = j
        return bi

    def probs(self, b: BanditPolicy) -> list[float]:
        """Exact P(best) per arm, recomputed when some arm's sampling distribution moved by more
        than _REFRESH of its sd (mean) or relative (sd) since the cached value was computed."""
        plan = self.posteriors(b)
        if self._probs_version == b.version:
            return self._probs
        if _moved(self._probs_plan, plan):
            # a drawn arm has P > 0 even where the quadrature underflows: keep IPS weights finite
            self._probs = [max(x, 1e-12) for x in prob_best(plan)]
            self._probs_plan = plan
        self._probs_version = b.version
        return self._probs


def _moments(kind: int, p1: float, p2: float) -> tuple[float, float]:
    if kind == BETA:
        t = p1 + p2
        return p1 / t, math.sqrt(p1 * p2 / (t * t * (t + 1.0)))
    return p1, p2


def _moved(old: list[tuple[int, float, float]], new: list[tuple[int, float, float]]) -> bool:
    """True when some arm's sampling distribution moved enough to change P(best) by more than
    about 0.4% relative (mean by _REFRESH sds, or the sd by _REFRESH relative)."""
    if len(old) != len(new):
        return True
    for (k0, a0, b0), (k1, a1, b1) in zip(old, new, strict=True):
        if k0 != k1:
            return True
        if (a0, b0) == (a1, b1):
            continue
        m0, s0 = _moments(k0, a0, b0)
        m1, s1 = _moments(k1, a1, b1)
        if abs(m1 - m0) > _REFRESH * s0 or abs(s1 - s0) > _REFRESH * s0:
            return True
    return False


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
        return [m + scale * math.sqrt(2.0 * log_t / n) for n, m in zip(b.n, b.mu, strict=True)]


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
            return [_kl_ucb_bound(m, n, level) for n, m in zip(b.n, b.mu, strict=True)]
        var = b.pooled_var()
        return [m + math.sqrt(2.0 * var * level / n) for n, m in zip(b.n, b.mu, strict=True)]


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
        greedy = _argmax_probs(list(b.mu))
        eps = self.epsilon / (1.0 + self.decay * sum(b.n)) if self.decay else self.epsilon
        return [eps / k + (1.0 - eps) * g for g in greedy]


class Softmax:
    """Boltzmann exploration: P(arm) proportional to exp(mean / temperature).

    Without an explicit `temperature` the default is 0.1 x the reward scale
    (`BanditPolicy.reward_scale`: the overall success rate for binary rewards, the pooled sd for
    continuous ones), so a 10% relative lift in a click-through rate of 0.05 weighs as much as
    one in a success rate of 0.5. A fixed 0.1 would route click-through arms almost uniformly.
    """

    cold_first = True

    PARAMS = (
        Param(
            "temperature",
            "Boltzmann temperature. Unset: 0.1 x the reward scale (binary: the overall success "
            "rate, so click-through rates are not routed uniformly; continuous: the pooled sd).",
            gt=0.0,
            example="0.005",
        ),
    )

    def __init__(self, params: Mapping[str, float], reward_type: str) -> None:
        self.temperature = param_values(self.PARAMS, params).get("temperature")
        if self.temperature is not None and self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def pick(self, b: BanditPolicy) -> int:
        return _sample(self.probs(b), b._rnd.random())

    def probs(self, b: BanditPolicy) -> list[float]:
        return b.cached(self._probs)  # type: ignore[no-any-return]

    def _probs(self, b: BanditPolicy) -> list[float]:
        temp = self.temperature
        if temp is None:
            temp = max(_DEFAULT_TEMPERATURE * b.reward_scale(), 1e-12)
        means = list(b.mu)
        top = max(means)
        w = [math.exp((m - top) / temp) for m in means]
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
