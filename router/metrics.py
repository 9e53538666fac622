"""Every Prometheus metric of modelrouter (SPEC §6), owned by one `Metrics` object with verbs.

The per-request pair (`requests_total`, `request_duration_seconds`) lives in plain counters behind
a custom collector so the hot path costs well under a microsecond; the rest use prometheus_client.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "LEARNING_PHASES",
    "ROLLOUT_PHASES",
    "BoundRequest",
    "Metrics",
]

# Every name and label is a legacy Prometheus name, so the classic text format is exact and is
# understood by every Prometheus version (prometheus_client >= 0.22 advertises version=1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "modelrouter_"
FEEDBACK_ROUTE = "_feedback"  # the route label of requests to the feedback endpoint

# Model serving spans sub-millisecond lookups to multi-second generative calls.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

ROLLOUT_PHASES: tuple[str, ...] = ("validating", "progressing", "paused", "promoted", "rolled_back")
LEARNING_PHASES: tuple[str, ...] = ("active", "concluded")

_BUCKET_LABELS: tuple[str, ...] = (
    *(floatToGoString(b) for b in DURATION_BUCKETS),  # type: ignore[no-untyped-call]
    "+Inf",
)


class BoundRequest:
    """Request counters of one (route, backend), bound once: `observe` is a few list operations."""

    __slots__ = (
        "_errors",
        "_errors_metric",
        "backend",
        "buckets",
        "codes",
        "decisions",
        "route",
        "total",
    )

    def __init__(self, route: str, backend: str, errors: Counter) -> None:
        self.route = route
        self.backend = backend
        self.codes: dict[int, int] = {}
        # non-cumulative counts; the last slot is the +Inf overflow
        self.buckets: list[int] = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0
        self.decisions = 0  # policy decisions for this backend (decisions_total)
        self._errors_metric = errors
        self._errors: dict[str, Counter] = {}

    def observe(self, code: int, seconds: float) -> None:
        """Count one answered request: status code and latency in seconds."""
        codes = self.codes
        codes[code] = codes.get(code, 0) + 1
        # bisect_left finds the first bound >= seconds, which is Prometheus' `le` semantics
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def upstream_error(self, reason: str) -> None:
        """Count an upstream failure (connect, reset, timeout, ...); `reason` is a fixed word."""
        child = self._errors.get(reason)
        if child is None:
            child = self._errors[reason] = self._errors_metric.labels(
                self.route, self.backend, reason
            )
        child.inc()


class _PlainCollector(Collector):
    """Exposes plain-Python state: request counters/histograms and the reward summaries."""

    def __init__(
        self,
        bound: dict[tuple[str, str], BoundRequest],
        rewards: dict[tuple[str, str], tuple[int, float]],
    ) -> None:
        self._bound = bound
        self._rewards = rewards

    def collect(self) -> Iterator[Metric]:
        requests, duration, reward, decisions = self.describe()
        for (route, backend), b in list(self._bound.items()):
            if b.decisions:
                decisions.add_metric((route, backend), b.decisions)
            for code, n in sorted(b.codes.items()):
                requests.add_metric((route, backend, str(code)), n)
            cumulative: list[tuple[str, float]] = []
            acc = 0
            for label, n in zip(_BUCKET_LABELS, b.buckets, strict=True):
                acc += n
                cumulative.append((label, float(acc)))
            duration.add_metric((route, backend), cumulative, b.total)
        for (route, backend), (count, total) in list(self._rewards.items()):
            reward.add_metric((route, backend), count, total)
        yield requests
        yield duration
        yield reward
        yield decisions

    def describe(
        self,
    ) -> tuple[
        CounterMetricFamily, HistogramMetricFamily, SummaryMetricFamily, CounterMetricFamily
    ]:
        return (
            CounterMetricFamily(
                PREFIX + "requests",
                "Requests answered, by route, backend and HTTP status code.",
                labels=("route", "backend", "code"),
            ),
            HistogramMetricFamily(
                PREFIX + "request_duration_seconds",
                "Time from request head to the last byte of the answer, by route and backend.",
                labels=("route", "backend"),
            ),
            # A summary, so SPEC's `reward_sum` comes with `reward_count` and passes promtool's
            # rule that only histograms and summaries may end in `_sum`.
            SummaryMetricFamily(
                PREFIX + "reward",
                "Rewards credited per route and backend (_sum: total reward, _count: rewards).",
                labels=("route", "backend"),
            ),
            CounterMetricFamily(
                PREFIX + "decisions",
                "Policy decisions by route and chosen backend (every kind; overrides excluded).",
                labels=("route", "backend"),
            ),
        )


class Metrics:
    """Owns every modelrouter metric in one registry; callers use verbs, never metric objects."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._bound: dict[tuple[str, str], BoundRequest] = {}
        self._rewards: dict[tuple[str, str], tuple[int, float]] = {}
        r.register(_PlainCollector(self._bound, self._rewards))

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=r)

        # prometheus_client appends `_total` to counter names in the exposition
        self._upstream_errors = counter(
            "upstream_errors",
            "Upstream failures by route, backend and reason (connect, reset, timeout, ...).",
            ("route", "backend", "reason"),
        )
        self._feedback = counter(
            "feedback", "Accepted rewards by route and backend.", ("route", "backend")
        )
        self._feedback_rejected = counter(
            "feedback_rejected", "Rejected rewards by reason.", ("reason",)
        )
        self._reloads = counter(
            "config_reloads", "Configuration reloads by result (success, failure).", ("result",)
        )
        self._share = gauge(
            "traffic_share",
            "Intended share of the route's traffic per backend (0..1).",
            ("route", "backend"),
        )
        self._reward_mean = gauge(
            "reward_mean", "Mean reward per rewarded decision.", ("route", "backend")
        )
        self._regret = gauge(
            "regret", "Estimated cumulative pseudo-regret of a learning route.", ("route",)
        )
        self._phase = gauge(
            "rollout_phase",
            "1 for the route's current phase, 0 for the others.",
            ("route", "phase"),
        )
        self._step = gauge("rollout_step", "Current canary step index (0-based).", ("route",))
        self._backend_up = gauge(
            "backend_up", "1 while the backend passes health checks, else 0.", ("backend",)
        )
        self._p_value = gauge(
            "experiment_p_value",
            "Current p-value of the route's A/B test per arm.",
            ("route", "arm"),
        )
        self._prob_best = gauge(
            "experiment_prob_best",
            "Posterior probability that the arm is the best one.",
            ("route", "arm"),
        )
        self._srm = gauge(
            "experiment_srm",
            "1 while the route's A/B test shows a sample-ratio mismatch (chi-square p < 0.001).",
            ("route",),
        )
        self._mirror = counter(
            "mirror_requests",
            "Shadow requests to a route's mirror backend by result "
            "(match, mismatch, error, skipped).",
            ("route", "backend", "result"),
        )
        self._refused = counter(
            "connections_refused",
            "Client connections answered 503 and closed because limits.max_connections were open.",
            (),
        )
        self._connections = gauge("client_connections", "Open client connections.", ())
        for result in ("success", "failure"):
            self._reloads.labels(result)
        self._route_metrics: tuple[Counter | Gauge, ...] = (
            self._upstream_errors,
            self._feedback,
            self._share,
            self._reward_mean,
            self._regret,
            self._phase,
            self._step,
            self._p_value,
            self._prob_best,
            self._mirror,
            self._srm,
        )
        self._backend_metrics: tuple[Counter | Gauge, ...] = (
            self._upstream_errors,
            self._feedback,
            self._share,
            self._reward_mean,
            self._mirror,
        )
        self._phases_seen: dict[str, set[str]] = {}
        # cached children for per-request verbs that are not pre-bound
        self._feedback_children: dict[tuple[str, str], Counter] = {}

    # ---- hot path ------------------------------------------------------------------------------

    def bind(self, route: str, backend: str) -> BoundRequest:
        """The counters of (route, backend); the same object until the route is forgotten."""
        key = (route, backend)
        b = self._bound.get(key)
        if b is None:
            b = self._bound[key] = BoundRequest(route, backend, self._upstream_errors)
        return b

    def request_unmatched(self, code: int) -> None:
        """Count a request no route matched (or that failed before routing), with empty labels."""
        self.bind("", "").observe(code, 0.0)

    def connection_refused(self) -> None:
        """A client connection was refused (over limits.max_connections)."""
        self._refused.inc()

    def count_connections(self, count: Callable[[], int]) -> None:
        """`client_connections` reads `count()` at every scrape (the data plane's open set)."""
        self._connections.set_function(count)

    def request_feedback(self, code: int, seconds: float) -> None:
        """Count a request to the feedback endpoint, under route="_feedback" (no route name can
        start with "_")."""
        self.bind(FEEDBACK_ROUTE, "").observe(code, seconds)

    def decision(self, route: str, backend: str) -> None:
        """Count one policy decision (learning engines call this when they choose; the runtime
        counts the other kinds' decisions in `RouteRuntime.record` on the bound counters)."""
        self.bind(route, backend).decisions += 1

    def feedback(self, route: str, backend: str) -> None:
        child = self._feedback_children.get((route, backend))
        if child is None:
            child = self._feedback_children[(route, backend)] = self._feedback.labels(
                route, backend
            )
        child.inc()

    def feedback_rejected(self, reason: str) -> None:
        self._feedback_rejected.labels(reason).inc()

    # ---- state gauges --------------------------------------------------------------------------

    def set_share(self, route: str, backend: str, share: float) -> None:
        self._share.labels(route, backend).set(share)

    def set_backend_up(self, backend: str, up: bool) -> None:
        self._backend_up.labels(backend).set(1.0 if up else 0.0)

    def config_reload(self, result: str) -> None:
        """Count a reload attempt; `result` is "success" or "failure"."""
        if result not in ("success", "failure"):
            raise ValueError(f"config_reload result must be 'success' or 'failure', got {result!r}")
        self._reloads.labels(result).inc()

    def set_reward(
        self,
        route: str,
        backend: str,
        reward_sum: float,
        reward_mean: float | None,
        rewards: int | None = None,
    ) -> None:
        """Set `reward_sum`, `reward_count` (`rewards`: rewarded decisions) and `reward_mean`.

        Pass `rewards` (ArmStats.rewards); without it the count is derived from sum / mean, which
        is unknowable when the mean is 0. A mean of None (nothing rewarded yet) drops the mean.
        """
        if rewards is None:
            rewards = round(reward_sum / reward_mean) if reward_mean else 0
        self._rewards[(route, backend)] = (rewards, reward_sum)
        if reward_mean is None:
            _remove(self._reward_mean, route, backend)
        else:
            self._reward_mean.labels(route, backend).set(reward_mean)

    def set_regret(self, route: str, regret: float) -> None:
        self._regret.labels(route).set(regret)

    def set_phase(self, route: str, phase: str) -> None:
        """Set `rollout_phase`: 1 for `phase`, 0 for every other phase of the route's family."""
        family = ROLLOUT_PHASES if phase in ROLLOUT_PHASES else LEARNING_PHASES
        seen = self._phases_seen.setdefault(route, set())
        seen.update(family)
        seen.add(phase)
        for p in seen:
            self._phase.labels(route, p).set(1.0 if p == phase else 0.0)

    def set_step(self, route: str, step: int) -> None:
        self._step.labels(route).set(step)

    def set_p_value(self, route: str, arm: str, p: float | None) -> None:
        if p is None:
            _remove(self._p_value, route, arm)
        else:
            self._p_value.labels(route, arm).set(p)

    def set_prob_best(self, route: str, arm: str, p: float | None) -> None:
        if p is None:
            _remove(self._prob_best, route, arm)
        else:
            self._prob_best.labels(route, arm).set(p)

    def set_srm(self, route: str, flagged: bool) -> None:
        """Whether the route's A/B split shows a sample-ratio mismatch."""
        self._srm.labels(route).set(1.0 if flagged else 0.0)

    def mirror(self, route: str, backend: str, result: str) -> None:
        """A mirrored (shadow) request finished with `result`: match, mismatch, error, skipped."""
        self._mirror.labels(route, backend, result).inc()

    # ---- lifecycle -----------------------------------------------------------------------------

    def forget_route(self, route: str) -> None:
        """Drop every series labelled with `route` (the route was removed by a reload)."""
        for plain in (self._bound, self._rewards):
            for key in [k for k in plain if k[0] == route]:
                del plain[key]
        for m in self._route_metrics:
            m.remove_by_labels({"route": route})
        for key in [k for k in self._feedback_children if k[0] == route]:
            del self._feedback_children[key]
        self._phases_seen.pop(route, None)

    def forget_backend(self, backend: str) -> None:
        """Drop every series labelled with `backend` (the backend was removed by a reload)."""
        _remove(self._backend_up, backend)
        for plain in (self._bound, self._rewards):
            for key in [k for k in plain if k[1] == backend]:
                del plain[key]
        for m in self._backend_metrics:
            m.remove_by_labels({"backend": backend})
        for key in [k for k in self._feedback_children if k[1] == backend]:
            del self._feedback_children[key]

    def render(self) -> bytes:
        """The exposition text of every metric (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    # prometheus_client's remove() ignores label sets it does not have
    metric.remove(*labels)
