"""Outlier detection: consecutive failures eject, ejections grow, cap, timer and health return."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.dataplane.balance import Balancer, Endpoint
from router.dataplane.outlier import OutlierDetector


def eps(n: int) -> list[Endpoint]:
    return [Endpoint(i, "127.0.0.1", 9000 + i) for i in range(n)]


def test_five_consecutive_5xx_eject_for_the_base_time() -> None:
    (ep,) = e = eps(1)
    d = OutlierDetector(e)
    for _ in range(4):
        assert d.answered(ep, 500, 1.0) is None
    ev = d.answered(ep, 503, 1.0)
    assert ev is not None and ev.ejected and ev.reason == "consecutive_5xx"
    assert ev.duration == 30.0
    assert not ep.available and ep.ejected
    assert d.next_return() == 31.0
    assert d.tick(30.9) == []
    (back,) = d.tick(31.0)
    assert back.reason == "timer" and not back.ejected
    assert ep.available and ep.consecutive_failures == 0


def test_a_success_breaks_the_streak() -> None:
    (ep,) = e = eps(1)
    d = OutlierDetector(e)
    for _ in range(20):
        for _ in range(4):
            assert d.answered(ep, 500, 0.0) is None
        assert d.answered(ep, 200, 0.0) is None
    assert ep.available


def test_4xx_counts_only_when_declared() -> None:
    a, b = e = eps(2)
    d = OutlierDetector(e, failure_status=frozenset({404}))
    plain = OutlierDetector([b])
    for _ in range(5):
        d.answered(a, 404, 0.0)
        plain.answered(b, 404, 0.0)
    assert a.ejected
    assert not b.ejected
    assert not d.is_failure(429) and d.is_failure(404) and d.is_failure(502)


def test_local_failures_have_their_own_threshold() -> None:
    (ep,) = e = eps(1)
    d = OutlierDetector(e, consecutive_local_origin_failure=3)
    assert d.local_failure(ep, 0.0) is None
    assert d.local_failure(ep, 0.0) is None
    ev = d.local_failure(ep, 0.0)
    assert ev is not None and ev.reason == "consecutive_local_origin_failure"
    # an answer (even a 500) proves the connection works again: the streak restarts
    ep2 = Endpoint(1, "127.0.0.1", 1)
    d2 = OutlierDetector([ep2], consecutive_local_origin_failure=3)
    d2.local_failure(ep2, 0.0)
    d2.local_failure(ep2, 0.0)
    d2.answered(ep2, 500, 0.0)
    assert d2.local_failure(ep2, 0.0) is None


def test_zero_turns_a_detector_off() -> None:
    (ep,) = e = eps(1)
    d = OutlierDetector(e, consecutive_5xx=0, consecutive_local_origin_failure=0)
    for _ in range(100):
        d.answered(ep, 500, 0.0)
        d.local_failure(ep, 0.0)
    assert ep.available


def test_repeated_ejections_last_longer_up_to_the_max() -> None:
    (ep,) = e = eps(1)
    d = OutlierDetector(e, base_ejection_time=10.0, max_ejection_time=35.0, interval=100.0)
    now = 0.0
    durations = []
    for _ in range(5):
        ev = None
        while ev is None:
            ev = d.answered(ep, 500, now)
        durations.append(ev.duration)
        now = d.next_return()
        d.tick(now)
    assert durations == [10.0, 20.0, 30.0, 35.0, 35.0]


def test_time_back_in_rotation_forgives_past_ejections() -> None:
    (ep,) = e = eps(1)
    d = OutlierDetector(e, base_ejection_time=10.0, interval=10.0)
    for _ in range(5):
        d.answered(ep, 500, 0.0)
    d.tick(10.0)
    for _ in range(5):
        d.answered(ep, 500, 10.0)
    assert ep.ejected_until == 30.0  # second ejection: twice the base
    d.tick(30.0)
    ev = None
    while ev is None:  # 25 s healthy = 2 intervals: both past ejections forgiven
        ev = d.answered(ep, 500, 55.0)
    assert ev.duration == 10.0


def test_max_ejection_percent_caps_but_one_may_always_go() -> None:
    e = eps(4)
    d = OutlierDetector(e, max_ejection_percent=50.0)
    for ep in e:
        for _ in range(5):
            d.answered(ep, 500, 0.0)
    assert [ep.ejected for ep in e] == [True, True, False, False]
    one = eps(1)
    d1 = OutlierDetector(one, max_ejection_percent=10.0)
    for _ in range(5):
        d1.answered(one[0], 500, 0.0)
    assert one[0].ejected  # the only endpoint: its backend is down at once


def test_health_returns_endpoints_ejected_for_connection_trouble_only() -> None:
    a, b = e = eps(2)
    d = OutlierDetector(e, max_ejection_percent=100.0)
    for _ in range(5):
        d.local_failure(a, 0.0)
        d.answered(b, 500, 0.0)
    assert a.ejected and b.ejected
    ev = d.health(a, True, 1.0)
    assert ev is not None and ev.reason == "health" and a.available
    # a health path answering 200 says nothing about a model answering 500
    assert d.health(b, True, 1.0) is None and not b.available
    assert d.next_return() == 30.0


def test_a_health_check_begun_before_the_ejection_does_not_end_it() -> None:
    (ep,) = e = eps(1)
    d = OutlierDetector(e)
    for _ in range(5):
        d.local_failure(ep, 10.0)
    assert d.health(ep, True, 10.5, started=9.8) is None and ep.ejected
    assert d.health(ep, True, 11.5, started=11.0) is not None and ep.available


def test_failing_health_keeps_a_returned_endpoint_out() -> None:
    (ep,) = e = eps(1)
    d = OutlierDetector(e)
    for _ in range(5):
        d.answered(ep, 500, 0.0)
    d.health(ep, False, 1.0)
    d.tick(30.0)
    assert not ep.ejected and not ep.available
    d.health(ep, True, 31.0)
    assert ep.available


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"consecutive_5xx": -1}, "0 \\(off\\) or more"),
        ({"base_ejection_time": 0}, "base_ejection_time must be positive"),
        ({"base_ejection_time": 60, "max_ejection_time": 30}, "must be at least"),
        ({"max_ejection_percent": 101}, "max_ejection_percent must be in"),
    ],
)
def test_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutlierDetector(eps(1), **kwargs)  # type: ignore[arg-type]


def test_failing_endpoint_share_falls_under_5_percent() -> None:
    """Seeded simulation: two endpoints, one answers 500 to everything; 2000 requests.

    The balancer and detector run as the data plane would (8 requests in flight, answers in
    random order); the failing endpoint's share of all requests is printed and must be small.
    """
    rng = random.Random(0)
    e = eps(2)
    bad = e[1]
    bal = Balancer(e, rng)
    d = OutlierDetector(e)
    inflight: list[Endpoint] = []
    got: Counter[int] = Counter()
    now = 0.0
    for _ in range(2000):
        while len(inflight) >= 8:
            ep = inflight.pop(rng.randrange(len(inflight)))
            ep.outstanding -= 1
            d.answered(ep, 500 if ep is bad else 200, now)
        now += 0.001
        d.tick(now)
        ep2 = bal.pick()
        assert ep2 is not None
        ep2.outstanding += 1
        inflight.append(ep2)
        got[ep2.index] += 1
    share = got[1] / 2000
    print(f"failing endpoint share: {share:.4f} ({got[1]} of 2000 requests)")
    assert share < 0.05
