"""Analysis check kinds (``analysis.checks[].metric``): one judge function and its parameters each.

Like Argo Rollouts' metric providers: a kind declares its parameters (``Param``) next to the
function that judges one analysis window, and registers both in `CHECK_KINDS`. The rollout
analysis looks the kind up there; the config validator and the README reference read the same
entry. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from policies.params import Param
from policies.spec import Check

if TYPE_CHECKING:
    from policies.rollout import Observations, Outcome

__all__ = ["CHECK_KINDS", "MIN_REWARDS", "CheckKind"]

MIN_REWARDS = 30  # rewards per arm before reward_mean is judged (capped by min_requests)

Judge = Callable[[Check, "Observations", int], "tuple[Outcome, str]"]
# (values read, keys present) -> what is missing, or None; values hold None for absent params
Requires = Callable[[Mapping[str, object], Collection[str]], "str | None"]


@dataclass(frozen=True, slots=True)
class CheckKind:
    """One check kind: how it judges a window, what it reads from the config, how it is shown."""

    judge: Judge
    params: tuple[Param, ...]  # each name is a field of `Check`
    example: Mapping[str, object]  # the smallest valid check (documentation, probing)
    requires: Requires | None = None  # cross-parameter rule beyond each param's own bounds
    help: str = "What to check."  # the `metric` key's meaning in the reference
    note: str = ""  # the reference's note under the table
    needs_rewards: bool = False  # the route issues decision tokens so rewards reach the check
    keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", ("metric", *(p.name for p in self.params)))


def _fmt(x: float, unit: str = "") -> str:
    if unit == "s":
        return f"{x * 1000:.4g}ms" if abs(x) < 1 else f"{x:.4g}s"
    return f"{x:.4g}"


def _judge(
    name: str,
    value: float,
    check: Check,
    base: float | None,
    suffix: str,
    unit: str = "",
) -> tuple[Outcome, str]:
    """Compare a value with the check's limits; the message shows value against limit."""
    v = _fmt(value, unit)
    sfx = f" {suffix}" if suffix else ""
    if check.max is not None and value > check.max:
        return "fail", f"{name} {v} > max {_fmt(check.max, unit)}{sfx}"
    if check.min is not None and value < check.min:
        return "fail", f"{name} {v} < min {_fmt(check.min, unit)}{sfx}"
    limits = []
    if check.max is not None:
        limits.append(f"max {_fmt(check.max, unit)}")
    if check.min is not None:
        limits.append(f"min {_fmt(check.min, unit)}")
    relative = (
        ("min", "<", check.min_relative_to_stable),
        ("max", ">", check.max_relative_to_stable),
    )
    for word, cmp, ratio in relative:
        if ratio is None:
            continue
        if base is None:
            return "inconclusive", f"{name}: stable has no data to compare with{sfx}"
        limit = ratio * base
        rel = f"{word} {ratio:g} x stable {_fmt(base, unit)} = {_fmt(limit, unit)}"
        if (value < limit) if word == "min" else (value > limit):
            return "fail", f"{name} {v} {cmp} {rel}{sfx}"
        limits.append(rel)
    within = ", ".join(limits) if limits else "no limit"
    return "pass", f"{name} {v} ok ({within}){sfx}"


# ---- error_rate ----------------------------------------------------------------------------------


def _error_rate(check: Check, obs: Observations, min_requests: int) -> tuple[Outcome, str]:
    c, s = obs.candidate, obs.stable
    return _judge(
        "error_rate", c.errors / c.requests, check, s.error_rate, f"over {c.requests} requests"
    )


_ERROR_RATE = CheckKind(
    _error_rate,
    (
        Param(
            "max",
            "Highest candidate error rate (5xx and upstream errors), 0-1.",
            required=True,
            min=0.0,
            max=1.0,
        ),
    ),
    {"metric": "error_rate", "max": 0.01},
)


# ---- latency_p99 ---------------------------------------------------------------------------------


def _latency_p99(check: Check, obs: Observations, min_requests: int) -> tuple[Outcome, str]:
    c, s = obs.candidate, obs.stable
    if c.latency_p99 is None:
        return "inconclusive", "latency_p99: no latency samples"
    return _judge(
        "latency_p99", c.latency_p99, check, s.latency_p99, f"over {c.requests} requests", "s"
    )


_LATENCY_P99 = CheckKind(
    _latency_p99,
    (Param("max", "Highest candidate p99 latency.", type="duration", required=True),),
    {"metric": "latency_p99", "max": "500ms"},
)


# ---- reward_mean ---------------------------------------------------------------------------------


def _reward_mean(check: Check, obs: Observations, min_requests: int) -> tuple[Outcome, str]:
    c, s = obs.candidate, obs.stable
    need = max(1, min(MIN_REWARDS, min_requests))
    relative = check.min_relative_to_stable is not None or check.max_relative_to_stable is not None
    if c.rewards < need or (relative and s.rewards < need):
        got = f"candidate {c.rewards}" + (f", stable {s.rewards}" if relative else "")
        return "inconclusive", f"reward_mean: too few rewards ({got}; need {need} per arm)"
    return _judge(
        "reward_mean",
        c.reward_sum / c.rewards,
        check,
        s.reward_mean,
        f"over {c.rewards} rewards",
    )


def _needs_a_limit(values: Mapping[str, object], present: Collection[str]) -> str | None:
    if any(v is not None for v in values.values()) or present:
        return None
    return "needs min, min_relative_to_stable or max_relative_to_stable"


_REWARD_MEAN = CheckKind(
    _reward_mean,
    (
        Param("min", "Lowest candidate reward mean."),
        Param("min_relative_to_stable", "Lowest ratio candidate / stable mean.", gt=0.0),
        Param("max_relative_to_stable", "Highest ratio candidate / stable mean.", gt=0.0),
    ),
    {"metric": "reward_mean", "min": 0.1},
    requires=_needs_a_limit,
    help="What to check (needs reward feedback).",
    needs_rewards=True,
    note="One of `min`, `min_relative_to_stable`, `max_relative_to_stable` is required.",
)


# ---- prometheus ----------------------------------------------------------------------------------


def _prometheus(check: Check, obs: Observations, min_requests: int) -> tuple[Outcome, str]:
    q = check.query or ""
    found = [r for r in obs.prometheus if r.query == q]
    if not found:
        return "inconclusive", f"prometheus {q!r}: not queried"
    r = found[-1]
    if r.error is not None:
        return "inconclusive", f"prometheus {q!r}: {r.error}"
    if r.value is None or not math.isfinite(r.value):
        return "inconclusive", f"prometheus {q!r}: no usable value ({r.value})"
    return _judge(f"prometheus {q!r}", r.value, check, None, "")


def _min_max(values: Mapping[str, object], present: Collection[str]) -> str | None:
    if "min" not in present and "max" not in present:
        return "needs min and/or max"
    lo, hi = values.get("min"), values.get("max")
    if isinstance(lo, float) and isinstance(hi, float) and lo > hi:
        return f"min {lo:g} is greater than max {hi:g}"
    return None


_PROMETHEUS = CheckKind(
    _prometheus,
    (
        Param(
            "query",
            "Instant query; an empty result, NaN or an error is inconclusive.",
            type="string",
            required=True,
            doc_type="PromQL",
        ),
        Param("url", "Prometheus base URL.", type="http_url", required=True),
        Param("min", "Lowest allowed value."),
        Param("max", "Highest allowed value."),
    ),
    {"metric": "prometheus", "query": "up", "url": "http://127.0.0.1:9090", "max": 1},
    requires=_min_max,
    note="At least one of `min`, `max` is required.",
)


# The registry: metric name -> kind. Names are the values of `analysis.checks[].metric`.
CHECK_KINDS: dict[str, CheckKind] = {
    "error_rate": _ERROR_RATE,
    "latency_p99": _LATENCY_P99,
    "reward_mean": _REWARD_MEAN,
    "prometheus": _PROMETHEUS,
}
