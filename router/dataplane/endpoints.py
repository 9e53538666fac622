"""A backend's endpoints as the data plane uses them: one pool each, balancing, outlier
detection, the retry budget, and what their state means for the backend (`up`).

`EndpointGroup` ties the pure pieces (`balance`, `outlier`, `retry`) to connection pools, the
log and the metrics. The runtime owns one per backend (built with the backend, so active health
checks can report per endpoint); the exchange asks it where each attempt goes and tells it how
each attempt ended.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from router.dataplane.balance import Balancer, Endpoint
from router.dataplane.outlier import OutlierDetector, OutlierEvent
from router.dataplane.retry import RetryBudget
from router.dataplane.upstream import UpstreamPool

if TYPE_CHECKING:
    from policies.spec import BackendConfig, Limits

__all__ = ["HEALTH_FAILS_DOWN", "EndpointGroup", "EndpointMetrics"]

log = logging.getLogger("modelrouter.endpoints")

HEALTH_FAILS_DOWN = 2  # consecutive failed active checks before an endpoint is marked down


class EndpointMetrics(Protocol):
    """The metric verbs the group calls (router.metrics.Metrics has them)."""

    def ejection(self, backend: str, endpoint: str, reason: str) -> None: ...

    def set_endpoint_up(self, backend: str, endpoint: str, up: bool) -> None: ...


class EndpointGroup:
    """The endpoints of one backend with their pools, balancer, outlier detector and budget."""

    def __init__(
        self,
        cfg: BackendConfig,
        limits: Limits,
        *,
        metrics: EndpointMetrics | None = None,
        on_change: Callable[[bool], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._metrics = metrics
        self._on_change = on_change  # called with the backend's new `up` when it flips
        self.endpoints: list[Endpoint] = []
        self.pools: list[UpstreamPool] = []
        for i, a in enumerate(cfg.addresses()):
            ep = Endpoint(i, a.host, a.port)
            ep_cfg = dataclasses.replace(
                cfg, host=a.host, port=a.port, url=f"http://{a.host}:{a.port}{cfg.base_path}"
            )
            self.endpoints.append(ep)
            self.pools.append(UpstreamPool(ep_cfg, limits))
        self.balancer = Balancer(self.endpoints, rng)
        o = cfg.outlier
        self.detector = OutlierDetector(
            self.endpoints,
            consecutive_5xx=o.consecutive_5xx,
            consecutive_local_origin_failure=o.consecutive_local_origin_failure,
            failure_status=o.failure_status,
            base_ejection_time=o.base_ejection_time,
            max_ejection_time=o.max_ejection_time,
            max_ejection_percent=o.max_ejection_percent,
        )
        self.budget = RetryBudget(cfg.retry_budget.budget_percent, cfg.retry_budget.min_retries)
        self._health_fails = [0] * len(self.endpoints)
        self.up = True
        if metrics is not None:
            for ep in self.endpoints:
                metrics.set_endpoint_up(self.name, ep.address, True)

    # ---- what happened ------------------------------------------------------------------------

    def answered(self, ep: Endpoint, status: int, now: float) -> None:
        """An attempt at `ep` got an answer head with `status`."""
        # the common case (a good answer, no streak to break) costs three comparisons
        if (
            status >= 500
            or ep.consecutive_failures
            or ep.consecutive_local
            or status in self.detector.failure_status
        ):
            ev = self.detector.answered(ep, status, now)
            if ev is not None:
                self._event(ev, now)

    def local_failure(self, ep: Endpoint, kind: str, now: float) -> None:
        """An attempt at `ep` failed to connect, was reset or timed out (`kind`)."""
        ev = self.detector.local_failure(ep, now)
        if ev is not None:
            self._event(ev, now, kind)

    def health(self, ep: Endpoint, ok: bool, now: float, started: float | None = None) -> None:
        """The active health check's result for `ep` (down after HEALTH_FAILS_DOWN failures);
        `started`: when the check began (loop time)."""
        i = ep.index
        self._health_fails[i] = 0 if ok else self._health_fails[i] + 1
        healthy = ok or (ep.healthy and self._health_fails[i] < HEALTH_FAILS_DOWN)
        was = ep.available
        if healthy != ep.healthy:
            log.warning(
                "backend '%s' endpoint %s is %s (health check)",
                self.name,
                ep.address,
                "up" if healthy else "DOWN",
            )
        ev = self.detector.health(ep, healthy, now, started, ok)
        if ev is not None:
            self._event(ev, now)
        elif ep.available != was:
            self._changed(ep)

    def tick(self, now: float) -> None:
        """End ejections whose time is up (call often; cheap when none is due)."""
        nxt = self.detector.next_return()
        if nxt and now >= nxt:
            for ev in self.detector.tick(now):
                self._event(ev, now)

    # ---- internals -------------------------------------------------------------------------

    def _event(self, ev: OutlierEvent, now: float, kind: str = "") -> None:
        ep = ev.endpoint
        if ev.ejected:
            log.warning(
                "backend '%s' endpoint %s ejected for %.0fs: %s%s (ejection %d)",
                self.name,
                ep.address,
                ev.duration,
                ev.reason,
                f" ({kind})" if kind else "",
                ep.ejections,
            )
            if self._metrics is not None:
                self._metrics.ejection(self.name, ep.address, ev.reason)
        else:
            log.warning(
                "backend '%s' endpoint %s back in rotation (%s)", self.name, ep.address, ev.reason
            )
        self._changed(ep)

    def _changed(self, ep: Endpoint) -> None:
        if self._metrics is not None:
            self._metrics.set_endpoint_up(self.name, ep.address, ep.available)
        up = self.balancer.any_available()
        if up != self.up:
            self.up = up
            if self._on_change is not None:
                self._on_change(up)

    def close(self) -> None:
        for p in self.pools:
            p.close()

    def sweep(self, now: float) -> None:
        for p in self.pools:
            p.sweep(now)
