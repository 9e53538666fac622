"""Off-policy evaluation: what reward would another policy have earned on logged decisions?

Estimators follow the standard definitions (as in Open Bandit Pipeline's `ope` module), for a
log of n rounds with context x_i, logged action a_i, its logging propensity p_i and reward r_i,
and a target policy given as its action distribution pi(a | x_i) at every logged context:

- IPS:   mean_i w_i r_i,  w_i = min(pi(a_i | x_i) / p_i, clip)
- SNIPS: sum_i w_i r_i / sum_i w_i  (self-normalised: bounded by the rewards, slightly biased)
- DR:    mean_i [ sum_a pi(a | x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)) ], with q a per-arm
         ridge (continuous) or L2-logistic (binary) reward model, cross-fitted: each round is
         predicted by a model fitted on the other folds, so q never saw the reward it corrects.
- replay (Li et al. 2011): a *learning* candidate walks through the log in order; a round
  counts only where it picks the logged action, and only then does it learn. Unbiased when the
  logging was uniform at random; otherwise not valid and flagged so.

Intervals are normal (CLT) intervals of the per-round terms; SNIPS uses the delta method.
Pure numpy/scipy: no I/O, usable from a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit, ndtr, ndtri

from policies.base import Context

__all__ = [
    "ESTIMATORS",
    "Diagnostics",
    "Estimate",
    "LoggedData",
    "Report",
    "Validity",
    "cross_fit_q",
    "diagnostics",
    "dr",
    "evaluate",
    "fixed_dist",
    "ips",
    "linear_dist",
    "observed",
    "policy_dist",
    "replay",
    "snips",
    "validity",
]

ESTIMATORS = ("ips", "snips", "dr")
_UNIFORM_TOL = 1e-6
_DETERMINISTIC = 1.0 - 1e-9
_WEAK = 0.99  # a logged propensity above this leaves the other arms all but unobserved there

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.intp]]


@dataclass(frozen=True, slots=True, eq=False)
class LoggedData:
    """A bandit log as arrays (the layout Open Bandit Pipeline's estimators take).

    `action[i]` indexes `arms`; `pscore[i]` is the logging propensity of that action;
    `context` is (n, d) and includes the bias column (context-free logs: a column of ones).
    """

    arms: tuple[str, ...]
    action: IntArray
    reward: FloatArray
    pscore: FloatArray
    context: FloatArray
    reward_type: str = "binary"

    def __post_init__(self) -> None:
        n = len(self.action)
        if len(self.reward) != n or len(self.pscore) != n or self.context.shape[0] != n:
            raise ValueError(
                f"log arrays disagree in length: action {n}, reward {len(self.reward)}, "
                f"pscore {len(self.pscore)}, context {self.context.shape[0]}"
            )
        if self.context.ndim != 2:
            raise ValueError(f"context must be 2-d (rounds x features), got {self.context.ndim}-d")
        if n and (self.action.min() < 0 or self.action.max() >= len(self.arms)):
            raise ValueError(f"action indexes must be in [0, {len(self.arms)}) (one per arm)")
        if n and not (np.all(self.pscore > 0.0) and np.all(self.pscore <= 1.0 + 1e-9)):
            bad = int(np.flatnonzero((self.pscore <= 0.0) | (self.pscore > 1.0 + 1e-9))[0])
            raise ValueError(
                f"round {bad}: propensity must be in (0, 1], got {float(self.pscore[bad])}"
            )
        if not np.all(np.isfinite(self.reward)):
            raise ValueError("rewards must be finite")
        if self.reward_type not in ("binary", "continuous"):
            raise ValueError(f"reward_type must be binary or continuous, got {self.reward_type!r}")

    @property
    def n(self) -> int:
        return len(self.action)

    @property
    def n_actions(self) -> int:
        return len(self.arms)

    @property
    def uniform(self) -> bool:
        """Every logged propensity is 1/K: the logging policy was uniform at random."""
        k = len(self.arms)
        return bool(self.n) and bool(np.all(np.abs(self.pscore - 1.0 / k) < _UNIFORM_TOL))

    def subset(self, idx: IntArray | slice) -> LoggedData:
        return LoggedData(
            self.arms,
            self.action[idx],
            self.reward[idx],
            self.pscore[idx],
            self.context[idx],
            self.reward_type,
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimator's value with its (1 - alpha) interval; `valid` says whether to trust it."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    se: float
    n: int
    valid: bool = True
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "value": _f(self.value),
            "ci_low": _f(self.ci_low),
            "ci_high": _f(self.ci_high),
            "se": _f(self.se),
            "n": self.n,
            "valid": self.valid,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Diagnostics:
    """How much the log tells about the target: weights, overlap and effective sample size."""

    n: int
    ess: float  # Kish effective sample size of the importance weights
    min_pscore: float
    max_weight: float
    mean_weight: float  # ~1 when the log covers the target; far from 1 flags missing overlap
    clip: float
    clipped_share: float  # share of rounds whose weight exceeded `clip`
    unsupported_share: float  # target mass on actions a deterministic logger could never take
    weak_share: float  # target mass on other actions where the logger was >= 99% sure

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "ess": _f(self.ess),
            "min_pscore": _f(self.min_pscore),
            "max_weight": _f(self.max_weight),
            "mean_weight": _f(self.mean_weight),
            "clip": _f(self.clip),
            "clipped_share": _f(self.clipped_share),
            "unsupported_share": _f(self.unsupported_share),
            "weak_overlap_share": _f(self.weak_share),
        }


@dataclass(frozen=True, slots=True)
class Validity:
    valid: bool
    reason: str


@dataclass(slots=True)
class Report:
    """Everything `replay` shows for one candidate."""

    observed: Estimate
    estimates: list[Estimate]
    diagnostics: Diagnostics | None
    validity: dict[str, Validity]
    recommended: str | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "observed": self.observed.to_json(),
            "estimates": {e.estimator: e.to_json() for e in self.estimates},
            "diagnostics": None if self.diagnostics is None else self.diagnostics.to_json(),
            "validity": {
                k: {"valid": v.valid, "reason": v.reason} for k, v in self.validity.items()
            },
            "recommended": self.recommended,
            "notes": list(self.notes),
        }


def _f(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _z(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(ndtri(1.0 - alpha / 2.0))  # scipy.stats would cost the router a second to import


def _check_dist(data: LoggedData, action_dist: FloatArray) -> FloatArray:
    dist = np.asarray(action_dist, dtype=float)
    if dist.ndim == 3:  # OBP layout (n, K, len_list) with one position
        dist = dist[:, :, 0]
    if dist.shape != (data.n, data.n_actions):
        raise ValueError(
            f"action_dist must be (rounds, arms) = ({data.n}, {data.n_actions}), got {dist.shape}"
        )
    if data.n and not np.allclose(dist.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("action_dist rows must sum to 1 (a probability over arms per round)")
    return dist


def _weights(data: LoggedData, dist: FloatArray, clip: float) -> tuple[FloatArray, FloatArray]:
    """(clipped, raw) importance weights pi(a_i | x_i) / p_i."""
    raw: FloatArray = dist[np.arange(data.n), data.action] / data.pscore
    return np.minimum(raw, clip), raw


def _from_terms(name: str, terms: FloatArray, z: float, note: str = "") -> Estimate:
    n = len(terms)
    if n == 0:
        return Estimate(name, math.nan, math.nan, math.nan, math.nan, 0, False, "no rounds")
    v = float(terms.mean())
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Estimate(name, v, v - z * se, v + z * se, se, n, True, note)


def ips(
    data: LoggedData, action_dist: FloatArray, *, clip: float = math.inf, alpha: float = 0.05
) -> Estimate:
    """Inverse propensity scoring: unbiased when every action the target takes could be logged."""
    dist = _check_dist(data, action_dist)
    w, _ = _weights(data, dist, clip)
    return _from_terms("ips", w * data.reward, _z(alpha))


def snips(
    data: LoggedData, action_dist: FloatArray, *, clip: float = math.inf, alpha: float = 0.05
) -> Estimate:
    """Self-normalised IPS: sum w r / sum w, with a delta-method interval."""
    dist = _check_dist(data, action_dist)
    w, _ = _weights(data, dist, clip)
    total = float(w.sum())
    if data.n == 0 or total <= 0.0:
        return Estimate(
            "snips", math.nan, math.nan, math.nan, math.nan, data.n, False,
            "the target never takes a logged action (all weights are zero)",
        )  # fmt: skip
    v = float((w * data.reward).sum() / total)
    se = float(math.sqrt(float((w * w * (data.reward - v) ** 2).sum())) / total)
    z = _z(alpha)
    return Estimate("snips", v, v - z * se, v + z * se, se, data.n)


def dr(
    data: LoggedData,
    action_dist: FloatArray,
    *,
    q_hat: FloatArray | None = None,
    clip: float = math.inf,
    alpha: float = 0.05,
    folds: int = 5,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: the direct model's value plus an importance-weighted residual correction."""
    dist = _check_dist(data, action_dist)
    q = cross_fit_q(data, folds=folds, seed=seed) if q_hat is None else np.asarray(q_hat, float)
    if q.shape != (data.n, data.n_actions):
        raise ValueError(f"q_hat must be ({data.n}, {data.n_actions}), got {q.shape}")
    w, _ = _weights(data, dist, clip)
    rows = np.arange(data.n)
    terms = (dist * q).sum(axis=1) + w * (data.reward - q[rows, data.action])
    return _from_terms("dr", terms, _z(alpha))


def observed(data: LoggedData, *, alpha: float = 0.05) -> Estimate:
    """The logging policy's own mean reward on the log (the baseline to beat)."""
    return _from_terms("observed", data.reward.astype(float), _z(alpha))


# ---- direct model -------------------------------------------------------------------------------


def _ridge(x: FloatArray, y: FloatArray, lam: float) -> FloatArray:
    d = x.shape[1]
    beta = np.linalg.solve(lam * np.eye(d) + x.T @ x, x.T @ y)
    return np.asarray(beta, dtype=float)


def _logistic(x: FloatArray, y: FloatArray, lam: float, iters: int = 30) -> FloatArray:
    """L2-penalised logistic regression by Newton's method (d is small: one-hots and numerics)."""
    d = x.shape[1]
    beta = np.zeros(d)
    eye = lam * np.eye(d)
    for _ in range(iters):
        p = expit(x @ beta)
        grad = x.T @ (p - y) + lam * beta
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + eye
        step = np.linalg.solve(hess, grad)
        beta = beta - step
        if float(np.abs(step).max()) < 1e-8:
            break
    out: FloatArray = beta
    return out


def _fit_predict(train: LoggedData, x_pred: FloatArray, lam: float) -> FloatArray:
    """Per-arm reward model fitted on `train`, predicted at `x_pred` for every arm: (m, K)."""
    k = train.n_actions
    out = np.empty((x_pred.shape[0], k))
    prior = float(train.reward.mean()) if train.n else 0.0
    for a in range(k):
        mask = train.action == a
        if not mask.any():
            out[:, a] = prior
            continue
        xa, ya = train.context[mask], train.reward[mask]
        if train.reward_type == "binary" and ya.min() >= 0.0 and ya.max() <= 1.0:
            out[:, a] = expit(x_pred @ _logistic(xa, ya, lam))
        else:
            # ridge on the residual from the pooled mean, so the penalty shrinks toward it
            out[:, a] = prior + x_pred @ _ridge(xa, ya - prior, lam)
    return out


def cross_fit_q(data: LoggedData, *, folds: int = 5, seed: int = 0, lam: float = 1.0) -> FloatArray:
    """Cross-fitted reward predictions q(x_i, a) for every round and arm, shape (n, K)."""
    n = data.n
    q = np.empty((n, data.n_actions))
    if n == 0:
        return q
    k = max(2, min(folds, n // 2)) if n >= 4 else 1
    if k == 1:
        return _fit_predict(data, data.context, lam)
    order = np.random.default_rng(seed).permutation(n)
    for f in range(k):
        test = order[f::k]
        train_mask = np.ones(n, dtype=bool)
        train_mask[test] = False
        q[test] = _fit_predict(data.subset(np.flatnonzero(train_mask)), data.context[test], lam)
    return q


# ---- diagnostics and validity -------------------------------------------------------------------


def diagnostics(
    data: LoggedData, action_dist: FloatArray, *, clip: float = math.inf
) -> Diagnostics:
    dist = _check_dist(data, action_dist)
    w, raw = _weights(data, dist, clip)
    if data.n == 0:
        return Diagnostics(0, 0.0, math.nan, math.nan, math.nan, clip, 0.0, 0.0, 0.0)
    sw2 = float((w * w).sum())
    ess = float(w.sum()) ** 2 / sw2 if sw2 > 0.0 else 0.0
    det = data.pscore >= _DETERMINISTIC
    rows = np.arange(data.n)
    # where the logger was certain, the target's mass on any other arm is never observable
    off = 1.0 - dist[rows, data.action]
    unsupported = float((off * det).sum() / data.n)
    weak = float((off * (data.pscore >= _WEAK)).sum() / data.n)
    return Diagnostics(
        n=data.n,
        ess=ess,
        min_pscore=float(data.pscore.min()),
        max_weight=float(raw.max()),
        mean_weight=float(raw.mean()),
        clip=clip,
        clipped_share=float((raw > clip).mean()),
        unsupported_share=unsupported,
        weak_share=weak,
    )


def validity(
    data: LoggedData, diag: Diagnostics | None = None, *, learning: bool = False
) -> dict[str, Validity]:
    """Which estimators are valid for this log and target, each with the reason.

    `learning=True` means the candidate keeps learning along the log: only replay applies, and
    only when the logging was uniform. Otherwise IPS/SNIPS/DR need the target's actions to have
    had a positive logging probability (no deterministic logging where the target disagrees).
    """
    out: dict[str, Validity] = {}
    if data.n == 0:
        reason = "the log has no rewarded decisions"
        return {e: Validity(False, reason) for e in (*ESTIMATORS, "replay")}
    if learning:
        reason = "the candidate learns as it goes; a fixed-policy estimator does not apply"
        for e in ESTIMATORS:
            out[e] = Validity(False, reason)
        if data.uniform:
            out["replay"] = Validity(True, "logging was uniform: replay is unbiased")
        else:
            out["replay"] = Validity(
                False,
                "logging was not uniform (propensities differ from 1/K): replay is biased; "
                "evaluate a frozen snapshot of the candidate instead",
            )
        return out
    out["replay"] = Validity(False, "replay is for learning candidates; this one is frozen")
    if diag is not None and diag.unsupported_share > 0.01:
        reason = (
            f"no overlap: {diag.unsupported_share:.1%} of the target's choices fall where the "
            "logging policy was deterministic (propensity 1), so they were never observed"
        )
        for e in ESTIMATORS:
            out[e] = Validity(False, reason)
        return out
    clipped = diag is not None and diag.clipped_share > 0.0
    note = " (weights clipped: biased toward the logged rewards)" if clipped else ""
    out["ips"] = Validity(not clipped, "unbiased with known propensities" + note)
    out["snips"] = Validity(True, "consistent; bounded by the rewards, small bias at small n")
    out["dr"] = Validity(
        not clipped, "unbiased with known propensities; the cross-fitted model cuts variance" + note
    )
    return out


def evaluate(
    data: LoggedData,
    action_dist: FloatArray,
    *,
    clip: float = math.inf,
    alpha: float = 0.05,
    folds: int = 5,
    seed: int = 0,
) -> Report:
    """IPS, SNIPS and DR of a frozen target side by side with the logging policy's reward."""
    dist = _check_dist(data, action_dist)
    diag = diagnostics(data, dist, clip=clip)
    valid = validity(data, diag)
    ests = [
        ips(data, dist, clip=clip, alpha=alpha),
        snips(data, dist, clip=clip, alpha=alpha),
        dr(data, dist, clip=clip, alpha=alpha, folds=folds, seed=seed),
    ]
    ests = [
        Estimate(e.estimator, e.value, e.ci_low, e.ci_high, e.se, e.n,
                 e.valid and valid[e.estimator].valid, valid[e.estimator].reason)
        for e in ests
    ]  # fmt: skip
    notes: list[str] = []
    if data.n and diag.ess < 0.1 * data.n:
        notes.append(
            f"effective sample size {diag.ess:.0f} of {data.n}: the target differs a lot from "
            "the logging policy, intervals are wide"
        )
    if data.n and diag.weak_share > 0.05 and diag.unsupported_share <= 0.01:
        notes.append(
            f"weak overlap: {diag.weak_share:.0%} of the target's choices fall where the logging "
            "policy was at least 99% sure of another arm; those are seen rarely, so the estimate "
            "leans on a few heavy rounds and its interval may under-cover"
        )
    if data.n and diag.max_weight > 0.05 * data.n:
        notes.append(
            f"heavy-tailed weights: one round weighs {diag.max_weight:.0f} "
            f"(smallest propensity {diag.min_pscore:.2g}); rare decisions carry the estimate and "
            "its interval may under-cover; a logging policy with an exploration floor helps"
        )
    recommended = next((e for e in ("dr", "snips", "ips") if valid[e].valid), None)
    return Report(observed(data, alpha=alpha), ests, diag, valid, recommended, notes)


# ---- replay for learning candidates --------------------------------------------------------------


def replay(
    data: LoggedData,
    candidate: Any,
    *,
    alpha: float = 0.05,
    arms: Sequence[str] | None = None,
) -> Estimate:
    """Replay method: the candidate (choose/update) walks the log and learns on matches only.

    `arms` maps the candidate's arm names to the log's (default: the same names). The value is
    the candidate's mean reward over matched rounds, valid when the logging was uniform.
    """
    index = {a: i for i, a in enumerate(data.arms)}
    names = list(arms) if arms is not None else list(candidate.arms)
    missing = [a for a in names if a not in index]
    if missing:
        raise ValueError(f"candidate arm(s) {missing} never appear in the log (arms {data.arms})")
    to_log = {a: index[a] for a in names}
    has_features = data.context.shape[1] > 1
    rewards: list[float] = []
    for i in range(data.n):
        x = data.context[i]
        ctx = Context(features=x) if has_features else Context()
        arm = candidate.choose(ctx).arm
        if to_log[arm] != data.action[i]:
            continue
        r = float(data.reward[i])
        candidate.update(arm, r, ctx)
        rewards.append(r)
    est = _from_terms("replay", np.asarray(rewards, dtype=float), _z(alpha))
    ok = data.uniform
    note = f"{len(rewards)} of {data.n} rounds matched" + (
        "" if ok else "; logging was not uniform, so replay is biased"
    )
    return Estimate(est.estimator, est.value, est.ci_low, est.ci_high, est.se, est.n,
                    ok and est.valid, note)  # fmt: skip


# ---- target action distributions ----------------------------------------------------------------


def fixed_dist(arms: Sequence[str], weights: Mapping[str, float], n: int) -> FloatArray:
    """A fixed split (weights over the log's arms; unnamed arms get 0) repeated for n rounds."""
    unknown = [a for a in weights if a not in arms]
    if unknown:
        raise ValueError(f"arm(s) {unknown} never appear in the log (arms {tuple(arms)})")
    w = np.array([max(0.0, float(weights.get(a, 0.0))) for a in arms])
    if w.sum() <= 0.0:
        raise ValueError("weights must not all be zero")
    return np.tile(w / w.sum(), (n, 1))


def linear_dist(
    theta: FloatArray,
    a_inv: FloatArray,
    x: FloatArray,
    algorithm: str,
    *,
    alpha: float = 1.0,
    epsilon: float = 0.1,
) -> FloatArray:
    """Action probabilities of a frozen linear contextual policy at every row of x: (n, K).

    linucb: the argmax of x.theta + alpha sqrt(x' A^-1 x) (ties share); epsilon_greedy:
    epsilon/K + (1 - epsilon) on the greedy arm; lin_ts: P(arm wins) for independent normal
    scores N(x.theta_a, alpha² x' A_a^-1 x), by 32-point Gauss–Hermite quadrature.
    """
    mean = x @ theta.T  # (n, K)
    var = np.einsum("nd,kde,ne->nk", x, a_inv, x)
    sd = np.sqrt(np.maximum(var, 0.0))
    k = theta.shape[0]
    if algorithm == "linucb":
        return _argmax_dist(mean + alpha * sd)
    if algorithm == "epsilon_greedy":
        eg: FloatArray = epsilon / k + (1.0 - epsilon) * _argmax_dist(mean)
        return eg
    if algorithm == "lin_ts":
        s = np.maximum(alpha * sd, 1e-12)
        z, wq = np.polynomial.hermite_e.hermegauss(32)
        wq = wq / math.sqrt(2.0 * math.pi)
        out = np.empty_like(mean)
        for i in range(k):
            # score of arm i at node z, against every arm's normal cdf; arm i's own factor is 1
            t = mean[:, i, None, None] + s[:, i, None, None] * z[None, :, None]  # (n, Z, 1)
            cdf = ndtr((t - mean[:, None, :]) / s[:, None, :])  # (n, Z, K)
            cdf[:, :, i] = 1.0
            out[:, i] = cdf.prod(axis=2) @ wq
        out = np.maximum(out, 0.0)
        total: FloatArray = out.sum(axis=1, keepdims=True)
        return out / total
    raise ValueError(f"unknown contextual algorithm {algorithm!r}")


def _argmax_dist(scores: FloatArray) -> FloatArray:
    top = scores.max(axis=1, keepdims=True)
    ties = (scores >= top - 1e-12).astype(float)
    out: FloatArray = ties / ties.sum(axis=1, keepdims=True)
    return out


def policy_dist(policy: Any, log_arms: Sequence[str], x: FloatArray) -> FloatArray:
    """Action distribution of a frozen policy object (weighted, ab_test, bandit, contextual).

    A contextual policy's probabilities depend on x; the others' are their current shares.
    Arms of the log the policy does not have get probability 0.
    """
    index = {a: i for i, a in enumerate(log_arms)}
    missing = [a for a in policy.arms if a not in index]
    if missing:
        raise ValueError(
            f"policy arm(s) {missing} never appear in the log (arms {tuple(log_arms)})"
        )
    n = x.shape[0]
    out = np.zeros((n, len(log_arms)))
    cols = [index[a] for a in policy.arms]
    theta = getattr(policy, "theta", None)
    if theta is not None:  # a LinearPolicy
        if x.shape[1] != policy.dim:
            raise ValueError(
                f"the policy has {policy.dim} features, the log's contexts have {x.shape[1]} "
                "(the feature layout changed)"
            )
        out[:, cols] = linear_dist(
            policy.theta, policy.A_inv, x, policy.algorithm,
            alpha=policy.alpha, epsilon=policy.epsilon,
        )  # fmt: skip
        return out
    shares = policy.shares()
    for a, c in zip(policy.arms, cols, strict=True):
        out[:, c] = float(shares.get(a, 0.0))
    total = out.sum(axis=1, keepdims=True)
    if n and float(total.min()) <= 0.0:
        raise ValueError("the policy gives every arm probability 0")
    res: FloatArray = out / total
    return res
