"""When a failed attempt may be tried again, and how many retries a backend may take.

Two rules, both pure:

- `may_resend`: a request whose bytes may have reached an upstream (anything but a failed
  connect) is sent again only when its method is idempotent (RFC 9110 §9.2.2: GET, HEAD,
  OPTIONS, TRACE, PUT, DELETE) or its route opts in, as nginx's `proxy_next_upstream` does
  without and with `non_idempotent`. A POST written to a kept-alive connection that then closed
  without an answer may have been processed: it is not re-sent unless the route says so.
- `RetryBudget`: retries to one backend stay within `budget_percent` of the requests it got in
  the last `window` seconds, plus `min_retries` so a quiet backend can still retry at all.
  Envoy's retry budget has the same knobs but counts requests in flight; counting over a window
  (as Linkerd and Finagle do) bounds what an outage adds: upstream attempts stay within
  (1 + budget_percent/100) x client requests + min_retries per window. The data plane charges
  only retries of attempts that may have reached an upstream: re-sending after a failed
  connect adds no upstream load.
"""

from __future__ import annotations

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_REASONS",
    "RetryBudget",
    "may_resend",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# why an attempt is retried; the `reason` label of modelrouter_retries_total
RETRY_REASONS = (
    "connect-failure",
    "reset",
    "timeout",
    "5xx",
    "retriable-status",
    "connection-closed",
)


def may_resend(method: str, *, maybe_sent: bool, route_opt_in: bool) -> bool:
    """Whether a failed attempt may be sent again (to any endpoint).

    `maybe_sent`: some byte of the request may have reached the upstream (the connection was
    established and written to). Nothing written (a failed connect) is always safe to re-send.
    """
    return not maybe_sent or route_opt_in or method in IDEMPOTENT_METHODS


class RetryBudget:
    """Retries at most `budget_percent` of requests over a sliding window, plus `min_retries`.

    `request(now)` counts a first attempt; `try_retry(now)` takes one retry from the budget and
    says whether it was there. The window is `slots` buckets of `window / slots` seconds each,
    so both calls are O(1) (a bucket rotation touches at most `slots` entries).
    """

    __slots__ = (
        "_bucket",
        "_requests",
        "_retries",
        "_slot",
        "_slot_len",
        "_sum_requests",
        "_sum_retries",
        "budget_percent",
        "exhausted",
        "min_retries",
        "window",
    )

    def __init__(
        self,
        budget_percent: float = 20.0,
        min_retries: int = 3,
        window: float = 10.0,
        slots: int = 10,
    ) -> None:
        if not 0 <= budget_percent <= 100:
            raise ValueError(f"budget_percent must be in [0, 100], got {budget_percent}")
        if min_retries < 0:
            raise ValueError(f"min_retries must be 0 or more, got {min_retries}")
        if not window > 0 or slots < 1:
            raise ValueError(f"window must be positive, got {window}")
        self.budget_percent = budget_percent
        self.min_retries = min_retries
        self.window = window
        self._slot_len = window / slots
        self._requests = [0] * slots
        self._retries = [0] * slots
        self._sum_requests = 0
        self._sum_retries = 0
        self._slot = 0  # index of the bucket of the current slot
        self._bucket = -1  # number of the current slot (now // slot_len)
        self.exhausted = 0  # retries refused since creation (for the metric)

    def _advance(self, now: float) -> int:
        bucket = int(now / self._slot_len)
        if bucket != self._bucket:
            n = len(self._requests)
            steps = bucket - self._bucket if self._bucket >= 0 else n
            if steps < 0:  # the clock went back: keep counting in the current slot
                return self._slot
            slot = self._slot
            for _ in range(min(steps, n)):
                slot = slot + 1 if slot + 1 < n else 0
                self._sum_requests -= self._requests[slot]
                self._sum_retries -= self._retries[slot]
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._slot = slot
            self._bucket = bucket
        return self._slot

    def request(self, now: float) -> None:
        """Count one request (its first attempt) to the backend."""
        slot = self._advance(now)
        self._requests[slot] += 1
        self._sum_requests += 1

    def allowance(self, now: float) -> float:
        """How many retries the window allows in all (used or not)."""
        self._advance(now)
        return self.min_retries + self._sum_requests * self.budget_percent / 100.0

    def try_retry(self, now: float) -> bool:
        """Take one retry if the budget has one left; False (and counted) when exhausted."""
        slot = self._advance(now)
        allowed = self.min_retries + self._sum_requests * self.budget_percent / 100.0
        if self._sum_retries + 1 > allowed:
            self.exhausted += 1
            return False
        self._retries[slot] += 1
        self._sum_retries += 1
        return True
