"""EndpointGroup: a backend's endpoints, their pools, and when the backend is up."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from policies.spec import Address, BackendConfig, Limits, OutlierDetection
from router.dataplane.endpoints import EndpointGroup
from router.metrics import Metrics


def cfg(n: int, **outlier: object) -> BackendConfig:
    addrs = tuple(Address("127.0.0.1", 9000 + i) for i in range(n))
    return BackendConfig(
        name="m",
        url="http://127.0.0.1:9000/base",
        scheme="http",
        host="127.0.0.1",
        port=9000,
        base_path="/base",
        endpoints=addrs,
        outlier=OutlierDetection(**outlier),  # type: ignore[arg-type]
    )


def test_one_pool_per_endpoint_with_its_own_host() -> None:
    g = EndpointGroup(cfg(3), Limits())
    assert [p.cfg.port for p in g.pools] == [9000, 9001, 9002]
    assert b"host: 127.0.0.1:9002" in g.pools[2].host_line
    assert all(p.base_path == b"/base" for p in g.pools)
    assert all(p.name_b == b"m" for p in g.pools)  # x-modelrouter-backend names the backend


def test_backend_is_down_at_once_when_its_last_endpoint_is_ejected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = CollectorRegistry()
    changes: list[bool] = []
    g = EndpointGroup(cfg(2), Limits(), metrics=Metrics(reg), on_change=changes.append)
    a, b = g.endpoints
    with caplog.at_level(logging.WARNING, "modelrouter.endpoints"):
        for _ in range(5):
            g.local_failure(a, "connect-failure", 1.0)
        assert changes == [] and g.up
        for _ in range(5):
            g.answered(b, 503, 1.0)
    assert changes == [False] and not g.up
    assert (
        "endpoint 127.0.0.1:9000 ejected for 30s: consecutive_local_origin_failure" in caplog.text
    )
    assert (
        reg.get_sample_value(
            "modelrouter_outlier_ejections_total",
            {"backend": "m", "endpoint": "127.0.0.1:9001", "reason": "consecutive_5xx"},
        )
        == 1.0
    )
    assert (
        reg.get_sample_value(
            "modelrouter_endpoint_up", {"backend": "m", "endpoint": "127.0.0.1:9001"}
        )
        == 0.0
    )
    g.tick(30.9)
    assert not g.up
    g.tick(31.0)
    assert changes == [False, True] and a.available and b.available


def test_declared_status_counts_and_good_answers_cost_nothing() -> None:
    g = EndpointGroup(cfg(1, failure_status=frozenset({404})), Limits())
    (ep,) = g.endpoints
    for _ in range(4):
        g.answered(ep, 404, 0.0)
    g.answered(ep, 200, 0.0)
    assert ep.consecutive_failures == 0
    for _ in range(5):
        g.answered(ep, 404, 0.0)
    assert not g.up


def test_health_marks_an_endpoint_down_after_two_failures_and_up_after_one_success() -> None:
    changes: list[bool] = []
    g = EndpointGroup(cfg(1), Limits(), on_change=changes.append)
    (ep,) = g.endpoints
    g.health(ep, False, 0.0)
    assert g.up
    g.health(ep, False, 1.0)
    assert not g.up and changes == [False]
    g.health(ep, True, 2.0)
    assert g.up and changes == [False, True]


def test_one_failed_check_keeps_an_endpoint_healthy_but_does_not_end_its_ejection() -> None:
    g = EndpointGroup(cfg(2), Limits())
    a, _ = g.endpoints
    for _ in range(5):
        g.local_failure(a, "connect-failure", 10.0)
    g.health(a, False, 10.5, started=10.2)  # 1 of HEALTH_FAILS_DOWN: still "healthy"
    assert a.healthy and a.ejected and not a.available
    g.health(a, True, 11.5, started=11.2)
    assert a.available
