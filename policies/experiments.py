"""Plan A/B tests by simulation: false-positive rate, power and time to decision per method.

A scenario is a split, a base rate (or mean), an effect, how users arrive (how many, how many
requests each, how much they differ from each other), whether the route is sticky (users are
randomised) or not (requests are), a peeking schedule and a number of replications. Each
replication draws users, lets them fall into the 2^16 sticky buckets, and evaluates every
method at every look with the same functions `ABTestPolicy.result()` uses (policies.stats), in
vectorised form, so planning and production agree on what a test does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special as _sp

from policies import stats as st
from policies.base import BUCKETS

__all__ = ["METHODS", "ABScenario", "MethodResult", "run_ab", "scenario_from_mapping"]

# what the simulator evaluates: fixed-horizon tests looked at once (at the end) or at every
# look (naive peeking), and the sequential test at every look
METHODS = ("z_test", "welch_t", "msprt")
REQUEST_DISTS = ("fixed", "geometric", "pareto")
PARETO_TAIL = 2.5


@dataclass(frozen=True, slots=True)
class ABScenario:
    """One experiment design to simulate (see the module docstring)."""

    split: tuple[float, ...] = (50.0, 50.0)  # control first
    base: float = 0.05  # binary: control conversion rate; continuous: control mean
    effect: float = 0.0  # relative lift of every treatment arm (0.05 = +5%)
    reward: str = "binary"  # binary | continuous
    sd: float = 1.0  # continuous: per-request sd
    users: int = 5000
    requests: str = "fixed"  # requests per user: fixed | geometric | pareto (heavy-tailed)
    requests_mean: float = 10.0
    user_sd: float = 0.0  # spread of users' own rates/means (relative); correlates a user's data
    sticky: bool = True  # randomise users (sticky key) or single requests
    unit: str = "auto"  # analysis unit: auto (user on sticky, request otherwise) | request
    looks: int = 50  # peeking schedule: this many looks, geometric in users, the last at the end
    replications: int = 500
    alpha: float = 0.05
    seed: int = 0
    mixing_sd: float | None = None

    def __post_init__(self) -> None:
        if len(self.split) < 2 or min(self.split) <= 0:
            raise ValueError(f"split: at least two positive weights, got {list(self.split)}")
        if self.reward not in ("binary", "continuous"):
            raise ValueError(f"reward: binary or continuous, got {self.reward!r}")
        if self.reward == "binary" and not 0.0 < self.base < 1.0:
            raise ValueError(f"base: a binary rate must be in (0, 1), got {self.base}")
        if self.reward == "binary" and not 0.0 < self.base * (1 + self.effect) < 1.0:
            raise ValueError("effect: the treatment rate base * (1 + effect) must be in (0, 1)")
        if self.requests not in REQUEST_DISTS:
            raise ValueError(f"requests: one of {REQUEST_DISTS}, got {self.requests!r}")
        if self.requests_mean < 1:
            raise ValueError(f"requests_mean: must be >= 1, got {self.requests_mean}")
        if self.unit not in ("auto", "request"):
            raise ValueError(f"unit: auto or request, got {self.unit!r}")
        for name in ("users", "looks", "replications"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha: must be in (0, 1), got {self.alpha}")
        if self.user_sd < 0 or self.sd <= 0:
            raise ValueError("user_sd must be >= 0 and sd > 0")

    @property
    def analysis_unit(self) -> str:
        return "user" if self.sticky and self.unit == "auto" else "request"


@dataclass(slots=True)
class MethodResult:
    """How one method fared over the replications."""

    method: str
    peeking: bool
    rejections: int = 0
    replications: int = 0
    times: list[float] = field(default_factory=list)  # requests seen at the first rejection

    @property
    def rate(self) -> float:
        return self.rejections / self.replications if self.replications else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "peeking": self.peeking,
            "rate": self.rate,
            "rejections": self.rejections,
            "replications": self.replications,
            "median_requests_to_decision": float(np.median(self.times)) if self.times else None,
        }


def _looks(users: int, looks: int) -> np.ndarray[Any, np.dtype[np.intp]]:
    pts = np.unique(np.round(np.geomspace(min(users, 20), users, num=looks)).astype(np.intp))
    return pts[pts >= 1]


def _requests(sc: ABScenario, g: np.random.Generator, n: int) -> np.ndarray[Any, Any]:
    m = sc.requests_mean
    if sc.requests == "fixed":
        return np.full(n, max(1, round(m)), dtype=float)
    if sc.requests == "geometric":
        return g.geometric(1.0 / m, size=n).astype(float)
    # Pareto (Lomax + 1) with tail index 2.5: heavy (a few users make hundreds of requests)
    # but finite variance, which the delta method over users needs
    shape = PARETO_TAIL
    scale = (m - 1.0) * (shape - 1.0)
    return np.floor(1.0 + scale * g.pareto(shape, size=n)).clip(max=1e6)


def _group_prev(key: np.ndarray[Any, Any], *vals: np.ndarray[Any, Any]) -> list[Any]:
    """For each position, the sum of each `vals` over earlier positions with the same key."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    start = np.r_[True, k[1:] != k[:-1]]
    gid = np.cumsum(start) - 1
    out = []
    for v in vals:
        c = np.cumsum(v[order]) - v[order]  # exclusive running sum
        base = c[start][gid]
        prev = np.empty_like(c)
        prev[order] = c - base
        out.append(prev)
    return out


def _one_replication(
    sc: ABScenario, g: np.random.Generator, look_users: np.ndarray[Any, Any]
) -> dict[str, Any]:
    """Per-look, per-arm sufficient statistics of one replication."""
    k = len(sc.split)
    w = np.asarray(sc.split, dtype=float) / sum(sc.split)
    bounds = np.round(np.cumsum(w) * BUCKETS).astype(np.int64)
    bounds[-1] = BUCKETS
    owned = np.diff(np.r_[0, bounds]).astype(float)
    u = sc.users
    binary = sc.reward == "binary"
    means = np.full(k, sc.base)
    means[1:] *= 1.0 + sc.effect
    if not sc.sticky:
        return _per_request_replication(sc, g, look_users, means, owned)
    req = _requests(sc, g, u)
    bucket = g.integers(0, BUCKETS, size=u)
    arm = np.searchsorted(bounds, bucket, side="right")
    mu = means[arm]
    if sc.user_sd > 0:
        if binary:
            # Beta with mean mu and relative sd user_sd
            v = (sc.user_sd * mu) ** 2
            conc = np.maximum(mu * (1 - mu) / np.maximum(v, 1e-300) - 1.0, 1e-3)
            mu = g.beta(mu * conc, (1 - mu) * conc)
        else:
            mu = mu + sc.user_sd * abs(sc.base) * g.standard_normal(u)
    if binary:
        s = g.binomial(req.astype(np.int64), mu).astype(float)
        sq = s  # 0/1 rewards: sum of squares = sum
    else:
        e_sum = np.sqrt(req) * sc.sd * g.standard_normal(u)
        s = req * mu + e_sum
        # sum over the user's requests of r^2 = R mu^2 + 2 mu E + sum e^2
        e_sq = e_sum * e_sum / req + sc.sd**2 * g.chisquare(np.maximum(req - 1, 1e-9))
        sq = req * mu * mu + 2 * mu * e_sum + e_sq
    prev_s, prev_n = _group_prev(bucket, s, req)
    d_ss = 2 * prev_s * s + s * s
    d_sn = prev_s * req + s * prev_n + s * req
    d_nn = 2 * prev_n * req + req * req
    d_units = (prev_n == 0).astype(float)
    idx = look_users - 1
    out: dict[str, Any] = {"owned": owned}
    for name, v in (
        ("n", req),
        ("s", s),
        ("sq", sq),
        ("ss", d_ss),
        ("sn", d_sn),
        ("nn", d_nn),
        ("units", d_units),
    ):
        per_arm = np.zeros((len(idx), k))
        for a in range(k):
            per_arm[:, a] = np.cumsum(np.where(arm == a, v, 0.0))[idx]
        out[name] = per_arm
    return out


def _per_request_replication(
    sc: ABScenario,
    g: np.random.Generator,
    look_users: np.ndarray[Any, Any],
    means: np.ndarray[Any, Any],
    owned: np.ndarray[Any, Any],
) -> dict[str, Any]:
    """Non-sticky routes: requests are independent, so draw each look's increments at once."""
    k = len(means)
    steps = np.diff(np.r_[0, look_users]).astype(np.int64)
    counts = g.multinomial(steps, owned / owned.sum())  # (looks, arms)
    if sc.reward == "binary":
        s = g.binomial(counts, means).astype(float)
        sq = s
    else:
        cnt = counts.astype(float)
        e_sum = np.sqrt(cnt) * sc.sd * g.standard_normal(cnt.shape)
        s = cnt * means + e_sum
        e_sq = np.where(
            cnt > 0,
            e_sum * e_sum / np.maximum(cnt, 1.0)
            + sc.sd**2 * g.chisquare(np.maximum(cnt - 1, 1e-9)),
            0.0,
        )
        sq = cnt * means * means + 2 * means * e_sum + e_sq
    n = np.cumsum(counts.astype(float), axis=0)
    cs, csq = np.cumsum(s, axis=0), np.cumsum(sq, axis=0)
    assert n.shape[1] == k
    return {"owned": owned, "n": n, "s": cs, "sq": csq, "ss": csq, "sn": cs, "nn": n, "units": n}


def _samples(data: Mapping[str, Any], a: int, unit: str) -> st.Sample:
    if unit == "user":
        return st.Sample.from_sums(
            data["n"][:, a],
            data["s"][:, a],
            data["ss"][:, a],
            data["sn"][:, a],
            data["nn"][:, a],
            data["units"][:, a],
        )
    n = data["n"][:, a]
    return st.Sample.from_sums(n, data["s"][:, a], data["sq"][:, a], data["s"][:, a], n, n)


def _p_values(
    sc: ABScenario, c: st.Sample, t: st.Sample, method: str, bernoulli: bool
) -> np.ndarray[Any, Any]:
    d = t.mean - c.mean
    if method == "msprt":
        tau2 = st.default_tau2(c, t, sc.mixing_sd)
        return np.minimum.accumulate(np.asarray(st.msprt_look(c, t, tau2, bernoulli)))
    if method == "z_test" and sc.reward == "binary":
        v = np.asarray(st.null_variance(c, t))
        z = np.where(v > 0, d / np.sqrt(np.maximum(v, 1e-300)), 0.0)
        return np.asarray(_sp.erfc(np.abs(z) / math.sqrt(2.0)))
    # Welch over units
    vc, vt = np.asarray(c.var_mean), np.asarray(t.var_mean)
    v = vc + vt
    den = vc * vc / np.maximum(c.units - 1, 1) + vt * vt / np.maximum(t.units - 1, 1)
    df = np.where(den > 0, v * v / np.maximum(den, 1e-300), 1.0)
    tt = np.where(v > 0, d / np.sqrt(np.maximum(v, 1e-300)), 0.0)
    p = 2.0 * _sp.stdtr(df, -np.abs(tt))
    ok = (c.units >= 2) & (t.units >= 2) & (v > 0)
    return np.where(ok, p, 1.0)


def run_ab(sc: ABScenario) -> dict[str, Any]:
    """Simulate `sc.replications` experiments; rejection rates and time to decision per method.

    With more than two arms each treatment is tested against the control and the p-values are
    Holm-corrected at every look. `srm_rate` is the share of replications whose SRM check (per
    analysis unit; the router's sequential test, so any look) fires; `srm_rate_chi2_end` and
    `srm_rate_chi2_any_look` the classic chi-square's (0.001 per look) at the end / any look.
    """
    g = np.random.default_rng(sc.seed)
    look_users = _looks(sc.users, sc.looks)
    unit = sc.analysis_unit
    bernoulli = sc.reward == "binary" and unit == "request"
    results = {
        (m, peek): MethodResult(m, peek, replications=sc.replications)
        for m in METHODS
        for peek in ((True,) if m == "msprt" else (False, True))
    }
    srm_hits = chi2_end = chi2_any = 0
    k = len(sc.split)
    w = np.asarray(sc.split, dtype=float) / sum(sc.split)
    for _ in range(sc.replications):
        data = _one_replication(sc, g, look_users)
        control = _samples(data, 0, unit)
        for method in METHODS:
            ps = np.stack(
                [
                    _p_values(sc, control, _samples(data, a, unit), method, bernoulli)
                    for a in range(1, k)
                ],
                axis=1,
            )
            if k > 2:
                ps = _holm_rows(ps)
            reject: np.ndarray[Any, Any] = np.asarray((ps < sc.alpha).any(axis=1))
            for peek in (True, False) if method != "msprt" else (True,):
                r = results[(method, peek)]
                hit = reject if peek else reject[-1:]
                if hit.any():
                    r.rejections += 1
                    first = int(np.argmax(hit)) if peek else len(reject) - 1
                    r.times.append(float(data["n"][first].sum()))
        phi = st.srm_dispersion(data["n"], data["nn"], data["owned"]) if unit == "user" else 1.0
        share = data["owned"] / BUCKETS if sc.sticky else w
        srm_p = st.srm_chi2(data["n"], share, phi)
        flags = np.asarray(srm_p) < st.SRM_THRESHOLD
        chi2_end += int(flags[-1])
        chi2_any += int(flags.any())
        log_bf = np.asarray(st.srm_log_bayes_factor(data["n"], share, phi))
        srm_hits += int(log_bf.max() >= -np.log(st.SRM_THRESHOLD))
    return {
        "scenario": {
            "split": list(sc.split),
            "base": sc.base,
            "effect": sc.effect,
            "reward": sc.reward,
            "users": sc.users,
            "requests": sc.requests,
            "requests_mean": sc.requests_mean,
            "sticky": sc.sticky,
            "unit": unit,
            "looks": len(look_users),
            "replications": sc.replications,
            "alpha": sc.alpha,
        },
        "methods": [r.summary() for r in results.values()],
        "srm_rate": srm_hits / sc.replications,
        "srm_rate_chi2_end": chi2_end / sc.replications,
        "srm_rate_chi2_any_look": chi2_any / sc.replications,
    }


def _holm_rows(ps: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    m = ps.shape[1]
    order = np.argsort(ps, axis=1)
    sorted_p = np.take_along_axis(ps, order, axis=1)
    adj = np.maximum.accumulate(np.minimum(1.0, sorted_p * (m - np.arange(m))), axis=1)
    out = np.empty_like(ps)
    np.put_along_axis(out, order, adj, axis=1)
    return out


def scenario_from_mapping(d: Mapping[str, Any], where: str = "scenario") -> ABScenario:
    """An ABScenario from parsed YAML/JSON; ValueError naming the bad key."""
    allowed = set(ABScenario.__dataclass_fields__)
    unknown = sorted(set(d) - allowed - {"type"})
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}"
        )
    kw: dict[str, Any] = {}
    for key, value in d.items():
        if key == "type":
            continue
        try:
            if key == "split":
                vals = list(value.values()) if isinstance(value, Mapping) else list(value)
                kw[key] = tuple(float(x) for x in vals)
            elif key in ("users", "looks", "replications", "seed"):
                if isinstance(value, bool) or int(value) != value:
                    raise TypeError
                kw[key] = int(value)
            elif key in ("sticky",):
                if not isinstance(value, bool):
                    raise TypeError
                kw[key] = value
            elif key in ("reward", "requests", "unit"):
                kw[key] = str(value)
            elif key == "mixing_sd":
                kw[key] = None if value is None else float(value)
            else:
                if isinstance(value, bool):
                    raise TypeError
                kw[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{key}: bad value {value!r}") from None
    try:
        return ABScenario(**kw)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
