"""Analysis check kinds (``analysis.checks[].metric``): one judge function and its parameters each.

Like Argo Rollouts' metric providers: a kind declares its parameters (``Param``) next to the
function that judges one analysis window, and registers both in `CHECK_KINDS`. The rollout
analysis looks the kind up there; the config validator and the README reference read the same
entry. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING

from policies.params import Param
from policies.spec import AnalysisSpec, Check

if TYPE_CHECKING:
    from policies.rollout import ArmObs, Observations, Outcome

__all__ = [
    "CHECK_KINDS",
    "LAT_BUCKETS",
    "MIN_REWARDS",
    "CheckKind",
    "latency_bucket",
    "parse_statuses",
    "percentile",
    "statuses",
    "wilson_bounds",
    "z_for",
]

MIN_REWARDS = 30  # rewards per arm before reward_mean is judged (capped by min_requests)

Judge = Callable[[Check, "Observations", AnalysisSpec], "tuple[Outcome, str]"]
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


# ---- latency histogram (shared with the router's per-window counters) ----------------------------

# fixed log-spaced buckets, 1 ms .. ~1 h, 10% wide: a percentile is known within 10%, which a
# relative check such as `max_relative_to_stable: 1.2` needs
LAT_MIN = 0.001
LAT_FACTOR = 1.1
LAT_BUCKETS = 160
_LOG_FACTOR = math.log(LAT_FACTOR)
LAT_UPPER = tuple(LAT_MIN * LAT_FACTOR**i for i in range(LAT_BUCKETS))


def latency_bucket(latency: float) -> int:
    """The histogram bucket of one latency (seconds): O(1)."""
    if latency <= LAT_MIN:
        return 0
    return min(LAT_BUCKETS - 1, int(math.log(latency / LAT_MIN) / _LOG_FACTOR) + 1)


def percentile(hist: Sequence[int], q: float) -> float | None:
    """Upper edge of the bucket holding the q-quantile (a slight over-estimate); None if empty."""
    n = sum(hist)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= rank:
            return LAT_UPPER[i]
    return LAT_UPPER[-1]


# ---- confidence bounds ---------------------------------------------------------------------------


def z_for(confidence: float) -> float:
    """One-sided normal quantile: 1.645 at 0.95."""
    return NormalDist().inv_cdf(confidence)


def wilson_bounds(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a rate k/n (one-sided bounds at z each)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _bounded(
    name: str,
    value: float,
    low: float,
    high: float,
    check: Check,
    confidence: float,
    suffix: str,
    unit: str = "",
) -> tuple[Outcome, str] | None:
    """A threshold check on a noisy estimate: fail only when the confidence bound nearest the
    limit is past it (`max`: the lower bound above max; `min`: the upper bound below min); a
    point estimate past the limit with a bound that is not is inconclusive (more traffic
    decides). None: no threshold is violated by the point estimate (the caller judges)."""
    v, c = _fmt(value, unit), f"{confidence:.0%}"
    suffix = f" {suffix}" if suffix else ""
    if check.max is not None and value > check.max:
        lim = _fmt(check.max, unit)
        if low > check.max:
            return "fail", f"{name} {v} > max {lim}{suffix} ({c} lower bound {_fmt(low, unit)})"
        return "inconclusive", (
            f"{name} {v} > max {lim}{suffix}, but not at {c} confidence (lower bound "
            f"{_fmt(low, unit)}); waiting for more traffic"
        )
    if check.min is not None and value < check.min:
        lim = _fmt(check.min, unit)
        if high < check.min:
            return "fail", f"{name} {v} < min {lim}{suffix} ({c} upper bound {_fmt(high, unit)})"
        return "inconclusive", (
            f"{name} {v} < min {lim}{suffix}, but not at {c} confidence (upper bound "
            f"{_fmt(high, unit)}); waiting for more traffic"
        )
    return None


# ---- error_rate ----------------------------------------------------------------------------------


def statuses(spec: str | None) -> Callable[[int], bool]:
    """A predicate from a canonical status list ("5xx,404"); None: 5xx."""
    codes: set[int] = set()
    classes: set[int] = set()
    for item in (spec or "5xx").split(","):
        item = item.strip()
        if item.endswith("xx"):
            classes.add(int(item[0]))
        elif item:
            codes.add(int(item))
    return lambda status: status in codes or status // 100 in classes


def parse_statuses(items: Sequence[object]) -> str:
    """Canonical form of a declared status list; ValueError names the bad item."""
    out: list[str] = []
    for item in items:
        text = str(item).strip().lower()
        if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
            out.append(text)
        elif isinstance(item, int | str) and text.isdigit() and 100 <= int(text) <= 599:
            out.append(str(int(text)))
        else:
            raise ValueError(f"{item!r} is not a status code (100-599) or a class such as 5xx")
    if not out:
        raise ValueError("needs at least one status code or class")
    return ",".join(dict.fromkeys(out))


def _failures(arm: ArmObs, spec: str | None) -> int:
    if spec is None or not arm.statuses:
        return arm.errors  # 5xx and transport errors (or the caller's own count)
    failed = statuses(spec)
    return arm.transport_errors + sum(n for code, n in arm.statuses if failed(code))


def _error_rate(check: Check, obs: Observations, analysis: AnalysisSpec) -> tuple[Outcome, str]:
    c, s = obs.candidate, obs.stable
    k = _failures(c, check.failure_status)
    rate = k / c.requests
    base = _failures(s, check.failure_status) / s.requests if s.requests else None
    declared = check.failure_status not in (None, "5xx")
    what = f"error_rate ({check.failure_status})" if declared else "error_rate"
    suffix = f"over {c.requests} requests"
    low, high = wilson_bounds(k, c.requests, z_for(analysis.confidence))
    bounded = _bounded(what, rate, low, high, check, analysis.confidence, suffix)
    return bounded or _judge(what, rate, check, base, suffix)


_ERROR_RATE = CheckKind(
    _error_rate,
    (
        Param(
            "max",
            "Highest candidate error rate, 0-1; fails only when exceeded at the analysis' "
            "`confidence` (the rate's lower confidence bound is above max).",
            required=True,
            min=0.0,
            max=1.0,
        ),
        Param(
            "failure_status",
            "Statuses that count as errors, e.g. `[5xx, 404]`; transport errors always count.",
            type="statuses",
            default="5xx",
        ),
    ),
    {"metric": "error_rate", "max": 0.01},
)


# ---- latency percentiles -------------------------------------------------------------------------


def _latency(q: float) -> Judge:
    name = f"latency_p{round(q * 100)}"

    def judge(check: Check, obs: Observations, analysis: AnalysisSpec) -> tuple[Outcome, str]:
        c, s = obs.candidate, obs.stable
        value = c.latency(q)
        if value is None:
            return "inconclusive", f"{name}: no latency samples"
        suffix = f"over {c.requests} requests"
        n = sum(c.latency_hist)
        if n:
            # the order-statistic bounds of the quantile (normal approximation of the binomial)
            spread = z_for(analysis.confidence) * math.sqrt(q * (1 - q) / n)
            low = percentile(c.latency_hist, max(0.0, q - spread)) or value
            high = percentile(c.latency_hist, min(1.0, q + spread)) or value
            bounded = _bounded(name, value, low, high, check, analysis.confidence, suffix, "s")
            if bounded is not None:
                return bounded
        return _judge(name, value, check, s.latency(q), suffix, "s")

    return judge


def _needs_max(values: Mapping[str, object], present: Collection[str]) -> str | None:
    if "max" in present or "max_relative_to_stable" in present:
        return None
    return "needs max and/or max_relative_to_stable"


def _latency_kind(q: float) -> CheckKind:
    pct = round(q * 100)
    return CheckKind(
        _latency(q),
        (
            Param(
                "max",
                f"Highest candidate p{pct} latency; fails only when exceeded at the analysis' "
                "`confidence`.",
                type="duration",
            ),
            Param(
                "max_relative_to_stable",
                f"Highest ratio candidate p{pct} / stable p{pct}, e.g. 1.2.",
                gt=0.0,
            ),
        ),
        {"metric": f"latency_p{pct}", "max": "500ms"},
        requires=_needs_max,
        note="At least one of `max`, `max_relative_to_stable` is required.",
    )


# ---- reward_mean ---------------------------------------------------------------------------------


def _reward_mean(check: Check, obs: Observations, analysis: AnalysisSpec) -> tuple[Outcome, str]:
    c, s = obs.candidate, obs.stable
    need = max(1, min(MIN_REWARDS, analysis.min_requests))
    relative = check.min_relative_to_stable is not None or check.max_relative_to_stable is not None
    if c.rewards < need or (relative and s.rewards < need):
        got = f"candidate {c.rewards}" + (f", stable {s.rewards}" if relative else "")
        return "inconclusive", f"reward_mean: too few rewards ({got}; need {need} per arm)"
    mean = c.reward_sum / c.rewards
    var = max(0.0, c.reward_sq_sum / c.rewards - mean * mean) * c.rewards / max(1, c.rewards - 1)
    half = z_for(analysis.confidence) * math.sqrt(var / c.rewards)
    suffix = f"over {c.rewards} rewards"
    bounded = _bounded(
        "reward_mean", mean, mean - half, mean + half, check, analysis.confidence, suffix
    )
    return bounded or _judge("reward_mean", mean, check, s.reward_mean, suffix)


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


def _prometheus(check: Check, obs: Observations, analysis: AnalysisSpec) -> tuple[Outcome, str]:
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
    "latency_p50": _latency_kind(0.5),
    "latency_p90": _latency_kind(0.9),
    "latency_p95": _latency_kind(0.95),
    "latency_p99": _latency_kind(0.99),
    "reward_mean": _REWARD_MEAN,
    "prometheus": _PROMETHEUS,
}
