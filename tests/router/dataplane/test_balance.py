"""Balancer: least outstanding requests across available endpoints, retries elsewhere."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.dataplane.balance import Balancer, Endpoint


def eps(n: int) -> list[Endpoint]:
    return [Endpoint(i, "127.0.0.1", 9000 + i) for i in range(n)]


def test_single_endpoint_is_picked_until_unavailable() -> None:
    (ep,) = e = eps(1)
    b = Balancer(e)
    assert b.pick() is ep
    assert b.pick(avoid=ep) is ep  # nowhere else to go
    ep.available = False
    assert b.pick() is None
    assert not b.any_available()


def test_no_endpoints_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one endpoint"):
        Balancer([])


@pytest.mark.parametrize("n", [2, 3, 4, 8, 20])
def test_least_outstanding_spreads_concurrent_requests_evenly(n: int) -> None:
    e = eps(n)
    b = Balancer(e, random.Random(0))
    # hold 10 requests per endpoint open at once: each pick goes to a least loaded one
    for _ in range(10 * n):
        ep = b.pick()
        assert ep is not None
        ep.outstanding += 1
    loads = [ep.outstanding for ep in e]
    print(f"n={n} loads={loads}")
    if n <= 4:
        assert loads == [10] * n  # exact scan
    else:
        assert max(loads) - min(loads) <= 3  # two random choices: close, not exact


def test_idle_endpoints_take_turns() -> None:
    e = eps(3)
    b = Balancer(e)
    seen = Counter(b.pick().index for _ in range(300))  # type: ignore[union-attr]
    assert seen == {0: 100, 1: 100, 2: 100}


def test_slow_endpoint_gets_less() -> None:
    e = eps(2)
    b = Balancer(e)
    e[0].outstanding = 5  # stuck requests on endpoint 0
    picks = Counter(b.pick().index for _ in range(50))  # type: ignore[union-attr]
    assert picks == {1: 50}


@pytest.mark.parametrize("n", [2, 4, 10])
def test_unavailable_endpoints_get_nothing(n: int) -> None:
    e = eps(n)
    b = Balancer(e, random.Random(1))
    for ep in e[: n - 1]:
        ep.available = False
    for _ in range(100):
        assert b.pick() is e[-1]
    e[-1].available = False
    assert b.pick() is None


@pytest.mark.parametrize("n", [2, 3, 10])
def test_retry_avoids_the_endpoint_that_failed(n: int) -> None:
    e = eps(n)
    b = Balancer(e, random.Random(2))
    for _ in range(200):
        failed = b.pick()
        again = b.pick(avoid=failed)
        assert again is not None and again is not failed


def test_retry_falls_back_to_the_failed_endpoint_when_it_is_the_only_one_left() -> None:
    e = eps(3)
    b = Balancer(e)
    e[1].available = e[2].available = False
    assert b.pick(avoid=e[0]) is e[0]
    e[0].available = False
    assert b.pick(avoid=e[0]) is None
