"""P(arm i has the largest draw) for independent Beta / normal posteriors, by quadrature.

Thompson sampling plays arm i with probability

    P_i = integral f_i(x) * prod_{j != i} F_j(x) dx

where f_j, F_j are the density and distribution function of arm j's sampling distribution.
`prob_best` evaluates that integral with composite Gauss–Legendre panels whose breakpoints are
each arm's mean +- {0, 1, 2.25, 4, 6.5, 9.5, 13} standard deviations (clipped to the
support; below the second-highest lower tail end every integrand is ~0 and is skipped). Every
density and distribution function is then smooth inside each panel at the scale of the
narrowest posterior that matters there, so 8 nodes per panel give relative errors around 1e-5
(tests compare with adaptive `scipy.integrate.quad`). One call is a few hundred vectorised
`ndtr` (or `betainc`, for small-count Beta arms) evaluations and ~30 numpy calls, roughly
0.1-0.4 ms for 4 arms; callers cache the result per posterior state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import betainc, betaln, ndtr

__all__ = ["BETA", "NORMAL", "prob_best"]

BETA = 0  # parameters (alpha, beta)
NORMAL = 1  # parameters (mean, sd)

_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
_SDS = np.array([0.0, 1.0, 2.25, 4.0, 6.5, 9.5, 13.0])
_SDS = np.concatenate([-_SDS[:0:-1], _SDS])
_SQRT_2PI = float(np.sqrt(2.0 * np.pi))


def prob_best(arms: Sequence[tuple[int, float, float]]) -> list[float]:
    """P(each arm's draw is the largest) for arms given as (kind, p1, p2); sums to 1.

    kind BETA: Beta(p1, p2) with p1, p2 > 0; kind NORMAL: N(p1, p2^2) with p2 >= 0 (0 = a point
    mass at p1). Beta and normal arms may be mixed (Thompson switches an arm to its
    moment-matched normal once both shapes are large).
    """
    k = len(arms)
    if k == 1:
        return [1.0]
    if any(a[0] == NORMAL and a[2] <= 0.0 for a in arms):
        return _with_point_masses(arms)
    par = np.asarray(arms, dtype=float)  # (k, 3)
    is_beta = par[:, 0] == BETA
    p1, p2 = par[:, 1], par[:, 2]
    t = p1 + p2
    with np.errstate(divide="ignore", invalid="ignore"):  # Beta formulas on normal arms: unused
        means = np.where(is_beta, p1 / t, p1)
        sds = np.where(is_beta, np.sqrt(p1 * p2 / (t * t * (t + 1.0))), p2)
    brk = means[:, None] + sds[:, None] * _SDS[None, :]
    # below the second-highest lower tail end two arms have F ~ 0, so every integrand is ~0
    lo = float(np.partition(brk[:, 0], k - 2)[k - 2])
    hi = float(brk[:, -1].max())
    if is_beta.all():
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    edges = np.unique(np.clip(brk, lo, hi))
    if len(edges) < 2:
        edges = np.array([lo, hi if hi > lo else lo + 1e-12])
    half = np.diff(edges) * 0.5
    x = ((edges[:-1] + half)[:, None] + half[:, None] * _GL_X[None, :]).ravel()
    w = (half[:, None] * _GL_W[None, :]).ravel()
    pdf = np.empty((k, x.size))
    cdf = np.empty((k, x.size))
    normal = ~is_beta
    if normal.any():
        z = (x[None, :] - means[normal, None]) / sds[normal, None]
        pdf[normal] = np.exp(-0.5 * z * z) / (sds[normal, None] * _SQRT_2PI)
        cdf[normal] = ndtr(z)
    for j in np.flatnonzero(is_beta):
        a, b = p1[j], p2[j]
        inside = (x > 0.0) & (x < 1.0)
        xc = np.clip(x, 1e-300, 1.0 - 1e-16)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            logf = (a - 1.0) * np.log(xc) + (b - 1.0) * np.log1p(-xc) - betaln(a, b)
        pdf[j] = np.where(inside, np.exp(logf), 0.0)
        cdf[j] = betainc(a, b, np.clip(x, 0.0, 1.0))
    # prod_{j != i} F_j(x) without dividing by F_i (which may be 0): prefix * suffix products
    ones = np.ones((1, x.size))
    pre = np.concatenate([ones, np.cumprod(cdf[:-1], axis=0)])
    suf = np.concatenate([np.cumprod(cdf[:0:-1], axis=0)[::-1], ones])
    p = np.maximum((pdf * pre * suf) @ w, 0.0)
    total = float(p.sum())
    if not total > 0.0 or not np.isfinite(total):
        return [1.0 / k] * k
    return (p / total).tolist()  # type: ignore[no-any-return]


def _with_point_masses(arms: Sequence[tuple[int, float, float]]) -> list[float]:
    """Some arm is a point mass (a normal with sd 0): the best point mass competes with the rest."""
    k = len(arms)
    top = max(a[1] for a in arms if a[0] == NORMAL and a[2] <= 0.0)
    cont = [j for j, a in enumerate(arms) if not (a[0] == NORMAL and a[2] <= 0.0)]
    # P(all continuous arms below top) goes to the point-mass arm(s) at `top`
    below = 1.0
    for j in cont:
        kind, p1, p2 = arms[j]
        below *= (
            float(betainc(p1, p2, min(max(top, 0.0), 1.0)))
            if kind == BETA
            else float(ndtr((top - p1) / p2))
        )
    out = [0.0] * k
    tops = [j for j, a in enumerate(arms) if a[0] == NORMAL and a[2] <= 0.0 and a[1] >= top]
    for j in tops:
        out[j] = below / len(tops)
    if cont and below < 1.0:
        # the rest: P(continuous arm i is best | its draw beats top) by the same quadrature on
        # the continuous arms, with the point mass as a floor (exact only when one is continuous)
        sub = prob_best([arms[j] for j in cont]) if len(cont) > 1 else [1.0]
        for j, q in zip(cont, sub, strict=True):
            out[j] = (1.0 - below) * q
    return out
