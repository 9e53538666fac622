"""Spreading one backend's requests over its endpoints: least outstanding requests.

Pure bookkeeping, no I/O: the data plane counts a request in (`Endpoint.outstanding`) when it is
sent to an endpoint and out when its answer ends, and asks `Balancer.pick` where the next one
goes. Up to `SCAN_MAX` endpoints every available one is looked at (exact least-outstanding, ties
taken in turn); beyond, two random ones are compared ("power of two choices"), which keeps the
pick O(1) and avoids herding onto one endpoint that just freed up.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["SCAN_MAX", "Balancer", "Endpoint"]

SCAN_MAX = 4  # up to this many endpoints a full scan is as cheap as two random draws


class Endpoint:
    """One address of a backend: what the balancer and the outlier detector know about it."""

    __slots__ = (
        "available",
        "consecutive_failures",
        "consecutive_local",
        "eject_local",
        "ejected",
        "ejected_at",
        "ejected_until",
        "ejections",
        "healthy",
        "host",
        "index",
        "outstanding",
        "port",
        "returned_at",
    )

    def __init__(self, index: int, host: str, port: int) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.outstanding = 0  # requests sent here whose answer has not ended
        self.healthy = True  # the active health check's verdict
        self.ejected = False  # taken out by passive outlier detection
        self.available = True  # healthy and not ejected: may receive requests
        # outlier detection (router.dataplane.outlier)
        self.consecutive_failures = 0  # failing answers (5xx or a declared status) in a row
        self.consecutive_local = 0  # connect failures, resets, timeouts in a row
        self.ejected_at = 0.0
        self.ejected_until = 0.0
        self.ejections = 0  # how often ejected recently: multiplies the ejection time
        self.eject_local = False  # the current ejection is for connect failures/resets/timeouts
        self.returned_at = 0.0  # when the last ejection ended

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = "ejected" if self.ejected else ("up" if self.healthy else "down")
        return f"<Endpoint {self.address} {state} outstanding={self.outstanding}>"


class Balancer:
    """Picks the endpoint of one backend for each request: the least loaded available one."""

    __slots__ = ("_cursor", "_rng", "endpoints")

    def __init__(self, endpoints: Sequence[Endpoint], rng: random.Random | None = None) -> None:
        if not endpoints:
            raise ValueError("a backend needs at least one endpoint")
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._rng = rng if rng is not None else random.Random()
        self._cursor = 0

    def any_available(self) -> bool:
        """Whether some endpoint may take requests (the backend is up)."""
        return any(ep.available for ep in self.endpoints)

    def pick(self, avoid: Endpoint | None = None) -> Endpoint | None:
        """The endpoint for the next request, or None when none is available.

        `avoid` (the endpoint a failed attempt went to) is chosen only when it is the only
        available one: a retry goes elsewhere when it can.
        """
        eps = self.endpoints
        n = len(eps)
        if n == 1:
            ep = eps[0]
            return ep if ep.available else None
        if n <= SCAN_MAX:
            return self._scan(avoid)
        return self._two_choices(avoid)

    def _scan(self, avoid: Endpoint | None) -> Endpoint | None:
        eps = self.endpoints
        n = len(eps)
        # start at a rotating position so equally loaded endpoints take turns
        start = self._cursor
        self._cursor = start + 1 if start + 1 < n else 0
        best: Endpoint | None = None
        for i in range(n):
            j = start + i
            ep = eps[j if j < n else j - n]
            if not ep.available or ep is avoid:
                continue
            if best is None or ep.outstanding < best.outstanding:
                best = ep
        if best is None and avoid is not None and avoid.available:
            return avoid
        return best

    def _two_choices(self, avoid: Endpoint | None) -> Endpoint | None:
        eps = self.endpoints
        n = len(eps)
        rand = self._rng.randrange
        a = eps[rand(n)]
        b = eps[rand(n)]
        a_ok = a.available and a is not avoid
        b_ok = b.available and b is not avoid and b is not a
        if a_ok and b_ok:
            return a if a.outstanding <= b.outstanding else b
        if a_ok:
            return a
        if b_ok:
            return b
        # both draws unusable (many endpoints out): fall back to the exact scan
        return self._scan(avoid)
