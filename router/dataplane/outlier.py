"""Passive outlier detection: take an endpoint out of rotation when its answers show it is broken.

Envoy's outlier ejection, with its vocabulary: `consecutive_5xx` failing answers in a row (5xx,
plus any status declared a failure for the backend, e.g. 404 from a model server that lost its
model) or `consecutive_local_origin_failure` connect failures, resets or timeouts in a row eject
the endpoint for `base_ejection_time` times the number of recent ejections (capped by
`max_ejection_time`); `max_ejection_percent` caps the share of a backend's endpoints out at once,
although one endpoint may always be ejected. Ejections end when their time is up (`tick`), or,
for connect failures, resets and timeouts, as soon as the active health check passes again (a
passing health path proves nothing against a model answering 500 or 404 to real requests).

Pure bookkeeping on `Endpoint` objects; the caller passes the loop clock and turns the returned
events into log lines and metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.dataplane.balance import Endpoint

__all__ = [
    "CONSECUTIVE_5XX",
    "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
    "LOCAL_FAILURES",
    "OutlierDetector",
    "OutlierEvent",
]

LOCAL_FAILURES = ("connect-failure", "reset", "timeout")
CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"


class OutlierEvent:
    """An endpoint was ejected or came back; `reason` is a fixed word fit for a metric label."""

    __slots__ = ("duration", "ejected", "endpoint", "reason")

    def __init__(self, endpoint: Endpoint, ejected: bool, reason: str, duration: float) -> None:
        self.endpoint = endpoint
        self.ejected = ejected
        # ejected: consecutive_5xx | consecutive_local_origin_failure;
        # returned: timer | health
        self.reason = reason
        self.duration = duration  # seconds of the ejection (0 for a return)

    def __repr__(self) -> str:
        what = "ejected" if self.ejected else "returned"
        return f"<OutlierEvent {self.endpoint.address} {what} ({self.reason})>"


class OutlierDetector:
    """Counts failures per endpoint of one backend and ejects/returns endpoints."""

    __slots__ = (
        "_next_return",
        "base_ejection_time",
        "consecutive_5xx",
        "consecutive_local_origin_failure",
        "endpoints",
        "failure_status",
        "interval",
        "max_ejection_percent",
        "max_ejection_time",
    )

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        consecutive_5xx: int = 5,
        consecutive_local_origin_failure: int = 5,
        failure_status: frozenset[int] = frozenset(),
        base_ejection_time: float = 30.0,
        max_ejection_time: float = 300.0,
        max_ejection_percent: float = 100.0,
        interval: float = 10.0,
    ) -> None:
        if consecutive_5xx < 0 or consecutive_local_origin_failure < 0:
            raise ValueError("consecutive failure counts must be 0 (off) or more")
        if not base_ejection_time > 0:
            raise ValueError(f"base_ejection_time must be positive, got {base_ejection_time}")
        if max_ejection_time < base_ejection_time:
            raise ValueError(
                f"max_ejection_time {max_ejection_time} must be at least "
                f"base_ejection_time {base_ejection_time}"
            )
        if not 0 <= max_ejection_percent <= 100:
            raise ValueError(
                f"max_ejection_percent must be in [0, 100], got {max_ejection_percent}"
            )
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self.consecutive_5xx = consecutive_5xx
        self.consecutive_local_origin_failure = consecutive_local_origin_failure
        self.failure_status = failure_status
        self.base_ejection_time = base_ejection_time
        self.max_ejection_time = max_ejection_time
        self.max_ejection_percent = max_ejection_percent
        # an endpoint that stays in for this long forgets one of its past ejections
        self.interval = interval
        self._next_return = 0.0  # earliest ejected_until of an ejected endpoint (0: none)

    def is_failure(self, status: int) -> bool:
        """Whether an answer with `status` counts against the endpoint."""
        return status >= 500 or status in self.failure_status

    # ---- what happened to a request ---------------------------------------------------------

    def answered(self, ep: Endpoint, status: int, now: float) -> OutlierEvent | None:
        """`ep` answered with `status` (the head arrived): count it; an ejection if due."""
        ep.consecutive_local = 0
        if status < 500 and status not in self.failure_status:
            ep.consecutive_failures = 0
            return None
        ep.consecutive_failures += 1
        limit = self.consecutive_5xx
        if limit and ep.consecutive_failures >= limit and not ep.ejected:
            return self._eject(ep, CONSECUTIVE_5XX, False, now)
        return None

    def local_failure(self, ep: Endpoint, now: float) -> OutlierEvent | None:
        """A connect failure, reset or timeout at `ep`; an ejection if due."""
        ep.consecutive_local += 1
        limit = self.consecutive_local_origin_failure
        if limit and ep.consecutive_local >= limit and not ep.ejected:
            return self._eject(ep, CONSECUTIVE_LOCAL_ORIGIN_FAILURE, True, now)
        return None

    def health(
        self,
        ep: Endpoint,
        ok: bool,
        now: float,
        started: float | None = None,
        passed: bool | None = None,
    ) -> OutlierEvent | None:
        """The active health check's verdict on `ep`; a return when it ends an ejection.

        `ok`: the endpoint counts as healthy (a caller may wait for several failed checks);
        `passed`: this very check passed (default `ok`); only that ends an ejection, and only
        when the check began (`started`) after it: an earlier check says nothing about it.
        """
        ep.healthy = ok
        if (
            (ok if passed is None else passed)
            and ep.ejected
            and ep.eject_local
            and (started is None or started >= ep.ejected_at)
        ):
            return self._return(ep, "health", now)
        ep.available = ok and not ep.ejected
        return None

    def tick(self, now: float) -> list[OutlierEvent]:
        """End the ejections whose time is up; call it every fraction of a second."""
        if not self._next_return or now < self._next_return:
            return []
        events: list[OutlierEvent] = []
        for ep in self.endpoints:
            if ep.ejected and ep.ejected_until <= now:
                events.append(self._return(ep, "timer", now))
        return events

    def next_return(self) -> float:
        """When the next ejection ends (loop time), 0 when none is ejected."""
        return self._next_return

    def available_count(self) -> int:
        n = 0
        for ep in self.endpoints:
            if ep.available:
                n += 1
        return n

    # ---- internals -------------------------------------------------------------------------

    def _eject(self, ep: Endpoint, reason: str, local: bool, now: float) -> OutlierEvent | None:
        ejected = 0
        for e in self.endpoints:
            if e.ejected:
                ejected += 1
        # one endpoint may always go, as in Envoy; beyond, the cap holds
        if ejected and (ejected + 1) * 100 > self.max_ejection_percent * len(self.endpoints):
            return None
        if ep.ejections and ep.returned_at:
            # time spent back in rotation since the last ejection forgives past ejections
            forgiven = int((now - ep.returned_at) / self.interval)
            ep.ejections = max(0, ep.ejections - forgiven)
        ep.ejections += 1
        duration = min(self.base_ejection_time * ep.ejections, self.max_ejection_time)
        ep.ejected = True
        ep.available = False
        ep.eject_local = local
        ep.ejected_at = now
        ep.ejected_until = now + duration
        if not self._next_return or ep.ejected_until < self._next_return:
            self._next_return = ep.ejected_until
        return OutlierEvent(ep, True, reason, duration)

    def _return(self, ep: Endpoint, reason: str, now: float) -> OutlierEvent:
        ep.ejected = False
        ep.available = ep.healthy
        ep.consecutive_failures = 0
        ep.consecutive_local = 0
        ep.returned_at = now
        nxt = 0.0
        for e in self.endpoints:
            if e.ejected and (not nxt or e.ejected_until < nxt):
                nxt = e.ejected_until
        self._next_return = nxt
        return OutlierEvent(ep, False, reason, 0.0)
