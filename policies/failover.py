"""Where a request goes when the arm its policy chose is down: the rule for every route kind.

Among the usable arms (healthy, not the one that just failed, admitted by a rollout) the ones
with traffic share get the request in proportion to their shares — weighted routes by weight,
a canary's stable when the canary is down and the other way round. When no usable arm has a
share (blue-green's idle colour, the old stable after a promotion, a zero weight), the first
usable arm in the route's order serves rather than nobody. Learning routes do not need this:
their policy chooses again without the arm (`Engine.choose(ctx, healthy)`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

__all__ = ["draw_by_share", "failover_arm"]


def draw_by_share(candidates: Sequence[tuple[str, float]], u: float) -> tuple[str, float]:
    """One of `candidates` (arm, share > 0; not empty) drawn in proportion to its share, with
    its share; `u` is a uniform draw in [0, 1)."""
    x = u * sum(share for _, share in candidates)
    for arm, share in candidates:
        x -= share
        if x < 0:
            return arm, share
    return candidates[-1]


def failover_arm(
    shares: Mapping[str, float],
    arms: Sequence[str],
    usable: Callable[[str], bool],
    u: float,
) -> str | None:
    """The arm to serve instead, or None when no arm is usable.

    `shares`: the route's traffic shares; `arms`: its arms in configured order (stable first);
    `usable`: whether an arm may serve now; `u`: a uniform draw in [0, 1).
    """
    candidates = [(a, shares.get(a, 0.0)) for a in arms if shares.get(a, 0.0) > 0 and usable(a)]
    if candidates:
        return draw_by_share(candidates, u)[0]
    for arm in arms:
        if usable(arm):
            return arm
    return None
