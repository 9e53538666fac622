"""Every Prometheus metric of modelrouter (SPEC §6), owned by one `Metrics` object with verbs.

The per-request pair (`requests_total`, `request_duration_seconds`) lives in plain counters behind
a custom collector so the hot path costs well under a microsecond; the rest use prometheus_client.

Under `serve --workers N` the supervisor sets PROMETHEUS_MULTIPROC_DIR for every worker, which
puts prometheus_client in its multiprocess mode (each process writes its values to files there).
`render()` then answers for the whole router, whichever worker serves it: counters and
histograms add up across workers (a dead worker's counts keep counting), gauges (which every
worker derives from the shared state) show the most recent value of a live worker. The plain
per-request counters are written to the same directory by `sync_files()` (every second, and
just before a render), so another worker's requests appear within a second.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
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
_DECISIONS_HELP = "Policy decisions by route and chosen backend (every kind; overrides excluded)."
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


class _DecisionLogCollector(Collector):
    """Decision-log health read from each route's writer at scrape time (no refresh loop)."""

    def __init__(self, logs: dict[str, Any]) -> None:
        self._logs = logs

    def describe(self) -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                PREFIX + "decision_log_records",
                "Decision records by route and result: written, dropped (the writer fell "
                "behind), failed (an I/O error).",
                labels=("route", "result"),
            ),
            CounterMetricFamily(
                PREFIX + "decision_log_rewards",
                "Reward records written to the route's decision log (feedback rewards are "
                "fsync'ed before their 202).",
                labels=("route",),
            ),
            GaugeMetricFamily(
                PREFIX + "decision_log_lag_seconds",
                "Age of the oldest decision record still waiting for the writer.",
                labels=("route",),
            ),
        )

    def collect(self) -> Iterator[Metric]:
        records, rewards, lag = self.describe()
        for route, w in list(self._logs.items()):
            records.add_metric((route, "written"), w.written)
            records.add_metric((route, "dropped"), w.dropped)
            records.add_metric((route, "failed"), w.errors)
            rewards.add_metric((route,), w.rewards_written)
            lag.add_metric((route,), w.lag())
        yield records
        yield rewards
        yield lag


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
            CounterMetricFamily(PREFIX + "decisions", _DECISIONS_HELP, labels=("route", "backend")),
        )


class _RewardCollector(Collector):
    """The reward summary alone: in multiprocess mode it comes from the serving worker, whose
    figures are the merged totals every worker shares (summing them would count N times)."""

    def __init__(self, plain: _PlainCollector) -> None:
        self._plain = plain

    def collect(self) -> Iterator[Metric]:
        yield list(self._plain.collect())[2]


class _FileExport:
    """This worker's plain request counters, written where prometheus_client's multiprocess
    collector reads them (`counter_plain-PID.db`, `histogram_plain-PID.db`)."""

    def __init__(self, path: str) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        pid = os.getpid()
        mmaped: Any = MmapedDict  # untyped in prometheus_client
        self._counters: Any = mmaped(os.path.join(path, f"counter_plain-{pid}.db"))
        self._histograms: Any = mmaped(os.path.join(path, f"histogram_plain-{pid}.db"))

    def write(self, bound: dict[tuple[str, str], BoundRequest]) -> None:
        from prometheus_client.mmap_dict import mmap_key

        now = time.time()
        req, dur = PREFIX + "requests", PREFIX + "request_duration_seconds"
        for (route, backend), b in list(bound.items()):
            for code, n in list(b.codes.items()):
                key = mmap_key(
                    req,
                    req + "_total",
                    ["route", "backend", "code"],
                    [route, backend, str(code)],
                    "Requests answered, by route, backend and HTTP status code.",
                )
                self._counters.write_value(key, float(n), now)
            help_text = (
                "Time from request head to the last byte of the answer, by route and backend."
            )
            for label, n in zip(_BUCKET_LABELS, b.buckets, strict=True):
                key = mmap_key(
                    dur,
                    dur + "_bucket",
                    ["route", "backend", "le"],
                    [route, backend, label],
                    help_text,
                )
                self._histograms.write_value(key, float(n), now)
            key = mmap_key(dur, dur + "_sum", ["route", "backend"], [route, backend], help_text)
            self._histograms.write_value(key, b.total, now)
            if b.decisions:
                dec = PREFIX + "decisions"
                key = mmap_key(
                    dec, dec + "_total", ["route", "backend"], [route, backend], _DECISIONS_HELP
                )
                self._counters.write_value(key, float(b.decisions), now)


class Metrics:
    """Owns every modelrouter metric in one registry; callers use verbs, never metric objects."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._bound: dict[tuple[str, str], BoundRequest] = {}
        self._rewards: dict[tuple[str, str], tuple[int, float]] = {}
        plain = _PlainCollector(self._bound, self._rewards)
        r.register(plain)
        self._dlogs: dict[str, Any] = {}
        r.register(_DecisionLogCollector(self._dlogs))
        # serve --workers: prometheus_client's multiprocess mode (see the module docstring)
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._export: _FileExport | None = None
        self._reward_collector = _RewardCollector(plain)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
            # every worker derives gauges from the shared state: show the latest live value
            return Gauge(PREFIX + name, doc, labels, registry=r, multiprocess_mode="livemostrecent")

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
        self._p_adjusted = gauge(
            "experiment_p_adjusted",
            "A/B p-value per treatment arm after the multiple-comparison correction (Holm).",
            ("route", "arm"),
        )
        self._lift = gauge(
            "experiment_lift",
            "Relative lift of a treatment arm over the control (0.05 = +5%): `estimate`, and "
            "the interval's `low` and `high` (confidence sequence with msprt, else interval).",
            ("route", "arm", "bound"),
        )
        self._diff = gauge(
            "experiment_difference",
            "Absolute difference of means, treatment arm - control, with `low`/`high` bounds.",
            ("route", "arm", "bound"),
        )
        self._mde = gauge(
            "experiment_mde",
            "Minimum detectable absolute difference at the current sample size (80% power).",
            ("route", "arm"),
        )
        self._progress = gauge(
            "experiment_progress",
            "Fraction of min_samples reached by the A/B arm with the fewest rewards (0..1).",
            ("route",),
        )
        self._guardrail = gauge(
            "experiment_guardrail_failed",
            "1 once an arm has failed the guardrail (always-valid test), else 0.",
            ("route", "arm", "guardrail"),
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
        # the open count of this process (with serve --workers, each worker's latest value)
        self._connections = gauge("client_connections", "Open client connections.", ())
        self._retries = counter(
            "retries",
            "Attempts sent again, by route, the backend whose attempt failed, and reason "
            "(connect-failure, reset, timeout, 5xx, retriable-status, connection-closed).",
            ("route", "backend", "reason"),
        )
        self._budget_exhausted = counter(
            "retry_budget_exhausted",
            "Retries refused because the backend's retry budget was used up.",
            ("route", "backend"),
        )
        self._ejections = counter(
            "outlier_ejections",
            "Endpoints taken out of rotation by outlier detection, by reason "
            "(consecutive_5xx, consecutive_local_origin_failure).",
            ("backend", "endpoint", "reason"),
        )
        self._endpoint_up = gauge(
            "endpoint_up",
            "1 while the endpoint takes requests (healthy and not ejected), else 0.",
            ("backend", "endpoint"),
        )
        self._store_up = gauge(
            "store_up",
            "1 while the state store takes writes, 0 while its calls fail (then /readyz is 503).",
            (),
        )
        self._store_errors = counter(
            "store_errors",
            "Failed state-store calls by operation (get, put, audit_append, feedback_add, "
            "probe, ...).",
            ("operation",),
        )
        self._store_up.set(1.0)  # until a store call fails (router.store.health)
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
            self._retries,
            self._budget_exhausted,
            self._p_adjusted,
            self._lift,
            self._diff,
            self._mde,
            self._progress,
            self._guardrail,
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

    def retry(self, route: str, backend: str, reason: str) -> None:
        """An attempt to `backend` failed for `reason` and the request is sent again."""
        self._retries.labels(route, backend, reason).inc()

    def retry_budget_exhausted(self, route: str, backend: str) -> None:
        self._budget_exhausted.labels(route, backend).inc()

    def ejection(self, backend: str, endpoint: str, reason: str) -> None:
        self._ejections.labels(backend, endpoint, reason).inc()

    def set_endpoint_up(self, backend: str, endpoint: str, up: bool) -> None:
        self._endpoint_up.labels(backend, endpoint).set(1.0 if up else 0.0)

    def set_store_up(self, up: bool) -> None:
        self._store_up.set(1.0 if up else 0.0)

    def store_error(self, operation: str) -> None:
        """Count a failed store call; `operation` is a Store method name or "probe"."""
        self._store_errors.labels(operation).inc()

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

    def set_comparison(
        self,
        route: str,
        arm: str,
        p_adjusted: float | None,
        lift: tuple[float | None, float | None, float | None],
        diff: tuple[float | None, float | None, float | None],
        mde: float | None,
    ) -> None:
        """One treatment-vs-control comparison: corrected p, lift and difference with bounds."""
        self.set_p_adjusted(route, arm, p_adjusted)
        for fam, values in ((self._lift, lift), (self._diff, diff)):
            for bound, v in zip(("estimate", "low", "high"), values, strict=True):
                if v is None:
                    _remove(fam, route, arm, bound)
                else:
                    fam.labels(route, arm, bound).set(v)
        if mde is None:
            _remove(self._mde, route, arm)
        else:
            self._mde.labels(route, arm).set(mde)

    def set_p_adjusted(self, route: str, arm: str, p: float | None) -> None:
        if p is None:
            _remove(self._p_adjusted, route, arm)
        else:
            self._p_adjusted.labels(route, arm).set(p)

    def set_progress(self, route: str, fraction: float) -> None:
        self._progress.labels(route).set(fraction)

    def set_guardrail(self, route: str, arm: str, guardrail: str, failed: bool) -> None:
        self._guardrail.labels(route, arm, guardrail).set(1.0 if failed else 0.0)

    def set_srm(self, route: str, flagged: bool) -> None:
        """Whether the route's A/B split shows a sample-ratio mismatch."""
        self._srm.labels(route).set(1.0 if flagged else 0.0)

    def mirror(self, route: str, backend: str, result: str) -> None:
        """A mirrored (shadow) request finished with `result`: match, mismatch, error, skipped."""
        self._mirror.labels(route, backend, result).inc()

    def watch_decision_log(self, route: str, writer: Any | None) -> None:
        """Export the health of `route`'s decision-log writer (None: the route logs no more)."""
        if writer is None:
            self._dlogs.pop(route, None)
        else:
            self._dlogs[route] = writer

    # ---- lifecycle -----------------------------------------------------------------------------

    def forget_route(self, route: str) -> None:
        """Drop every series labelled with `route` (the route was removed by a reload)."""
        self._dlogs.pop(route, None)
        for plain in (self._bound, self._rewards):
            for key in [k for k in plain if k[0] == route]:
                del plain[key]
        for m in self._route_metrics if self.multiprocess_dir is None else ():
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
        for m in self._backend_metrics if self.multiprocess_dir is None else ():
            m.remove_by_labels({"backend": backend})
        for key in [k for k in self._feedback_children if k[1] == backend]:
            del self._feedback_children[key]
        for m in (self._ejections, self._endpoint_up):
            m.remove_by_labels({"backend": backend})

    def sync_files(self) -> None:
        """Multiprocess mode: write this worker's plain request counters for the others."""
        if self.multiprocess_dir is None:
            return
        if self._export is None:
            self._export = _FileExport(self.multiprocess_dir)
        self._export.write(self._bound)

    def render(self) -> bytes:
        """The exposition text of every metric (Prometheus text format 0.0.4); in multiprocess
        mode, of the whole router (every worker's files)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        self.sync_files()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, self.multiprocess_dir)  # type: ignore[no-untyped-call]
        merged.register(self._reward_collector)
        return generate_latest(merged)


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    # prometheus_client's remove() ignores label sets it does not have; its multiprocess mode
    # cannot remove a series at all (it warns), so there the last value stays until a restart
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    metric.remove(*labels)
