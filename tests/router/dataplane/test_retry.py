"""Retry rules: what may be sent twice, and the retry budget bounding an outage's extra load."""

from __future__ import annotations

import random

import pytest

from router.dataplane.retry import IDEMPOTENT_METHODS, RetryBudget, may_resend


@pytest.mark.parametrize(
    ("method", "maybe_sent", "opt_in", "expected"),
    [
        ("POST", False, False, True),  # connect failed: nothing reached the upstream
        ("POST", True, False, False),  # written to a connection that then closed: maybe done
        ("PATCH", True, False, False),
        ("POST", True, True, True),  # the route declared its POSTs safe to repeat
        ("GET", True, False, True),
        ("HEAD", True, False, True),
        ("PUT", True, False, True),
        ("DELETE", True, False, True),
        ("OPTIONS", True, False, True),
    ],
)
def test_may_resend(method: str, maybe_sent: bool, opt_in: bool, expected: bool) -> None:
    assert may_resend(method, maybe_sent=maybe_sent, route_opt_in=opt_in) is expected


def test_idempotent_methods_are_rfc_9110s() -> None:
    assert frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}) == IDEMPOTENT_METHODS


def test_min_retries_allow_a_quiet_backend_to_retry() -> None:
    b = RetryBudget(budget_percent=20, min_retries=3)
    assert [b.try_retry(0.5) for _ in range(4)] == [True, True, True, False]
    assert b.exhausted == 1


def test_budget_grows_with_requests() -> None:
    b = RetryBudget(budget_percent=20, min_retries=0)
    for _ in range(50):
        b.request(1.0)
    assert b.allowance(1.0) == pytest.approx(10)
    assert sum(b.try_retry(1.0) for _ in range(20)) == 10


def test_window_forgets_old_requests_and_retries() -> None:
    b = RetryBudget(budget_percent=20, min_retries=0, window=10.0, slots=10)
    for _ in range(100):
        b.request(0.0)
    assert sum(b.try_retry(0.0) for _ in range(30)) == 20
    # half a window later the old requests still count, and so do the retries taken
    assert not b.try_retry(5.0)
    # a window later both are gone
    assert b.allowance(10.5) == 0
    for _ in range(10):
        b.request(10.5)
    assert sum(b.try_retry(10.5) for _ in range(5)) == 2


def test_clock_going_back_does_not_break_the_counts() -> None:
    b = RetryBudget(budget_percent=50, min_retries=0)
    for _ in range(4):
        b.request(100.0)
    b.request(99.0)
    assert b.allowance(100.0) == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_percent": 120}, "budget_percent must be in"),
        ({"min_retries": -1}, "min_retries must be 0 or more"),
        ({"window": 0}, "window must be positive"),
    ],
)
def test_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def test_full_outage_adds_at_most_the_budget() -> None:
    """Every attempt fails and each request may try 3 more times: the budget holds the total.

    A seeded simulation: client requests arrive over 5 s (inside one window), each first attempt
    is counted, each failure asks the budget for a retry until its 3 extra attempts are used.
    """
    rng = random.Random(0)
    budget = RetryBudget(budget_percent=20, min_retries=3, window=10.0)
    clients = upstream = 0
    t = 0.0
    while t < 5.0:
        t += rng.expovariate(400.0)
        clients += 1
        budget.request(t)
        upstream += 1
        for _ in range(3):  # attempts: 3 extra
            if not budget.try_retry(t):
                break
            upstream += 1
    ratio = upstream / clients
    print(f"full outage: {clients} client requests -> {upstream} upstream ({ratio:.3f}x)")
    assert upstream <= 1.2 * clients + 3
    assert upstream >= 1.19 * clients  # the budget is used, not refused outright
