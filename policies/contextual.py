"""Contextual bandits on per-arm ridge regressions: linucb, lin_ts and epsilon_greedy.

Sufficient statistics per arm are `A = lambda*I + sum x x^T` and `b = sum r x` (they add up
across replicas); `A^{-1}` is kept up to date by rank-one Sherman–Morrison updates and rebuilt
from `A` every few hundred updates so rounding error cannot accumulate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import ndtr

from policies.base import MAX_ABS_REWARD, ArmStats, Context, Decision
from policies.params import Algorithm, Param, param_values

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "LINEAR_ALGORITHMS", "LinearPolicy"]

_Z95 = 1.959963984540054
_REFRESH = 512  # rebuild A^{-1} from A after this many rank-one updates of an arm
# probabilists' Gauss–Hermite rule for the lin_ts propensity integral (weights sum to 1)
_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(16)
# arm i's own factor Phi(z) is in the product over all arms; dividing it out into the weights
# avoids slicing arm i away on every call
_GH_W = _GH_W / math.sqrt(2.0 * math.pi) / ndtr(_GH_Z)
_GH_ZC = _GH_Z[:, None]


class LinearPolicy:
    """Per-arm linear reward model over an encoded context (bias term included by the encoder).

    - linucb: argmax x.theta_a + alpha * sqrt(x^T A_a^{-1} x) (deterministic, propensity 1).
    - lin_ts: argmax of x.theta~_a with theta~_a ~ N(theta_a, alpha² A_a^{-1}). Only the scalar
      x.theta~_a matters, which is N(x.theta_a, alpha² x^T A^{-1} x): one normal draw per arm
      instead of a d-dimensional one. Propensity P(arm i wins) =
      E_z[prod_{j != i} Phi((m_i + s_i z - m_j) / s_j)], by 16-point Gauss–Hermite quadrature.
    - epsilon_greedy: with probability epsilon a uniform arm, else argmax x.theta_a.
    """

    def __init__(
        self,
        arms: Sequence[str],
        algorithm: str = "linucb",
        *,
        dim: int,
        rng: np.random.Generator,
        params: Mapping[str, float] | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"unknown contextual algorithm {algorithm!r}; one of {LINEAR_ALGORITHMS}"
            )
        if dim < 1:
            raise ValueError(f"feature dimension must be >= 1, got {dim}")
        self.algorithm = algorithm
        self.params = dict(params or {})
        p = param_values(_ALL_PARAMS, self.params)
        self.alpha = p["alpha"]
        self.lam = p["lambda"]
        self.epsilon = p["epsilon"]
        if self.lam <= 0.0:
            raise ValueError(f"lambda must be > 0, got {self.lam}")
        self.dim = dim
        self._np = rng
        self._rnd = random.Random(int(rng.integers(0, 2**63)))
        self._e0 = np.zeros(dim)
        self._e0[0] = 1.0
        self.arms: tuple[str, ...] = ()
        self.A: np.ndarray = np.zeros((0, dim, dim))
        self.b: np.ndarray = np.zeros((0, dim))
        self.A_inv: np.ndarray = np.zeros((0, dim, dim))
        self.theta: np.ndarray = np.zeros((0, dim))
        self._since: list[int] = []
        self._stats: dict[str, ArmStats] = {}
        self._pick = ALGORITHMS[algorithm].make
        self.set_arms(arms)

    # ---- serving --------------------------------------------------------------------------

    def choose(self, context: Context) -> Decision:
        x = context.features if context.features is not None else self._e0
        i, p = self._pick(self, x)
        arm = self.arms[i]
        self._stats[arm].decisions += 1
        return Decision(arm, p)

    def _linucb(self, x: np.ndarray) -> tuple[int, float]:
        ax = self.A_inv @ x
        scores = self.theta @ x + self.alpha * np.sqrt(np.maximum(ax @ x, 0.0))
        return int(scores.argmax()), 1.0

    def _lin_ts(self, x: np.ndarray) -> tuple[int, float]:
        mean = self.theta @ x
        sd = self.alpha * np.sqrt(np.maximum((self.A_inv @ x) @ x, 0.0))
        m = mean.tolist()
        s = sd.tolist()
        gauss = self._rnd.gauss
        scores = [mu + sig * gauss(0.0, 1.0) for mu, sig in zip(m, s, strict=True)]
        i = scores.index(max(scores))
        if len(m) == 1:
            return i, 1.0
        sd = np.maximum(sd, 1e-12)
        prob = float(_GH_W @ ndtr((m[i] + s[i] * _GH_ZC - mean) / sd).prod(axis=1))
        return i, min(max(prob, 1e-6), 1.0)

    def _eps(self, x: np.ndarray) -> tuple[int, float]:
        k = len(self.arms)
        greedy = int((self.theta @ x).argmax())
        i = self._rnd.randrange(k) if self._rnd.random() < self.epsilon else greedy
        return i, self.epsilon / k + (1.0 - self.epsilon if i == greedy else 0.0)

    def update(
        self, arm: str, reward: float, context: Context | None = None, trial: bool = True
    ) -> None:
        """Fold in one reward; `trial=False` credits a trial already counted (missing_reward: 0)."""
        i = self.arms.index(arm)
        x = self._e0 if context is None or context.features is None else context.features
        r = float(reward)
        if not math.isfinite(r) or abs(r) > MAX_ABS_REWARD:
            raise ValueError(
                f"reward must be finite and within +-{MAX_ABS_REWARD:g}, got {reward!r}"
            )
        if len(x) != self.dim or not np.all(np.isfinite(x)):
            raise ValueError(
                f"feature vector of length {len(x)} does not fit this model (dimension {self.dim})"
            )
        if trial:
            self.A[i] += np.outer(x, x)
            self._since[i] += 1
            if self._since[i] >= _REFRESH:
                self.A_inv[i] = np.linalg.inv(self.A[i])
                self._since[i] = 0
            else:
                ax = self.A_inv[i] @ x
                self.A_inv[i] -= np.outer(ax, ax) / (1.0 + float(x @ ax))
        self.b[i] += reward * x
        self.theta[i] = self.A_inv[i] @ self.b[i]
        st = self._stats[arm]
        if trial:
            st.rewards += 1
        st.reward_sum += reward
        st.reward_sq_sum += reward * reward

    def stats(self) -> Mapping[str, ArmStats]:
        return self._stats

    @property
    def phase(self) -> str:
        return "active"

    def result(self) -> None:
        return None  # no hypothesis test

    def shares(self) -> dict[str, float]:
        """Share of decisions so far per arm (the choice depends on the context)."""
        total = sum(s.decisions for s in self._stats.values())
        k = len(self.arms)
        return {a: (s.decisions / total if total else 1.0 / k) for a, s in self._stats.items()}

    # ---- arms and persistence ------------------------------------------------------------

    def set_arms(self, arms: Sequence[str]) -> None:
        """Change the arm set: kept arms keep their model, new arms start at the prior."""
        d = self.dim
        old = {a: j for j, a in enumerate(self.arms)}
        new = tuple(arms)
        A = np.empty((len(new), d, d))
        b = np.zeros((len(new), d))
        since = []
        for j, a in enumerate(new):
            if a in old:
                A[j] = self.A[old[a]]
                b[j] = self.b[old[a]]
                since.append(self._since[old[a]])
            else:
                A[j] = self.lam * np.eye(d)
                since.append(0)
        self.arms = new
        self.A, self.b, self._since = A, b, since
        self.A_inv = np.linalg.inv(A) if len(new) else np.zeros((0, d, d))
        self.theta = np.einsum("kij,kj->ki", self.A_inv, b)
        self._stats = {a: self._stats.get(a) or ArmStats() for a in new}

    def state(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "dim": self.dim,
            "arms": {
                a: {"A": self.A[j].tolist(), "b": self.b[j].tolist(), **self._stats[a].to_json()}
                for j, a in enumerate(self.arms)
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a snapshot; one of another feature dimension is ignored (features changed)."""
        if int(state.get("dim", -1)) != self.dim:
            return
        arms = state.get("arms", {})
        for j, a in enumerate(self.arms):
            d = arms.get(a)
            if d is None:
                continue
            A = np.asarray(d["A"], dtype=float)
            b = np.asarray(d["b"], dtype=float)
            if A.shape != (self.dim, self.dim) or b.shape != (self.dim,):
                continue
            self.A[j] = A
            self.b[j] = b
            self.A_inv[j] = np.linalg.inv(A)
            self.theta[j] = self.A_inv[j] @ b
            self._stats[a] = ArmStats.from_json(d)

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        # A without its prior lambda*I: only the data part adds up across processes
        d = self.dim
        prior = self.lam * np.eye(d)
        return {
            f"linear.v1.d{d}/{a}": np.concatenate(
                ((self.A[j] - prior).ravel(), self.b[j], self._stats[a].to_array())
            )
            for j, a in enumerate(self.arms)
        }

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        d = self.dim
        for j, a in enumerate(self.arms):
            x = totals[f"linear.v1.d{d}/{a}"]
            self.A[j] = x[: d * d].reshape(d, d) + self.lam * np.eye(d)
            self.b[j] = x[d * d : d * d + d]
            self._stats[a] = ArmStats.from_array(x[d * d + d :])
            self._since[j] = 0
        if len(self.arms):
            self.A_inv = np.linalg.inv(self.A)
            self.theta = np.einsum("kij,kj->ki", self.A_inv, self.b)

    def predict(self, x: np.ndarray) -> dict[str, float]:
        """Estimated mean reward of every arm in context x."""
        return dict(zip(self.arms, (self.theta @ x).tolist(), strict=True))

    def predict_interval(self, x: np.ndarray) -> dict[str, tuple[float, float, float]]:
        """(mean, low, high) of every arm's estimated reward in context x: a 95% interval
        x.theta +- 1.96 sigma sqrt(x^T A^-1 x), sigma² the arm's reward variance (pooled while an
        arm has fewer than two rewards; an upper bound on the residual variance)."""
        mean = self.theta @ x
        q = np.einsum("i,kij,j->k", x, self.A_inv, x)
        known = [st.reward_var for st in self._stats.values() if st.reward_var is not None]
        pooled = float(np.mean(known)) if known else 1.0
        out = {}
        for j, a in enumerate(self.arms):
            v = self._stats[a].reward_var
            half = _Z95 * math.sqrt((pooled if v is None else v) * max(float(q[j]), 0.0))
            m = float(mean[j])
            out[a] = (m, m - half, m + half)
        return out


_LAMBDA = Param("lambda", "Ridge regularisation.", default=1.0, gt=0.0)
_EPSILON = Param(
    "epsilon", "Probability of a uniformly random arm (0-1).", default=0.1, min=0.0, max=1.0
)
# The registry: name -> the choosing method and the parameters it reads.
ALGORITHMS: dict[str, Algorithm[Callable[[LinearPolicy, np.ndarray], tuple[int, float]]]] = {
    "linucb": Algorithm(
        LinearPolicy._linucb,
        (
            Param("alpha", "Width of the upper confidence bound.", default=1.0, min=0.0),
            _LAMBDA,
        ),
    ),
    "lin_ts": Algorithm(
        LinearPolicy._lin_ts,
        (
            Param(
                "alpha",
                "Posterior scale: draws from N(theta, alpha^2 A^-1).",
                default=1.0,
                gt=0.0,
            ),
            _LAMBDA,
        ),
    ),
    "epsilon_greedy": Algorithm(LinearPolicy._eps, (_EPSILON, _LAMBDA)),
}
DEFAULT_ALGORITHM = "linucb"
LINEAR_ALGORITHMS = tuple(ALGORITHMS)
# every parameter any algorithm declares, with its declared default (LinearPolicy keeps all)
_ALL_PARAMS = tuple({p.name: p for a in ALGORITHMS.values() for p in a.params}.values())
