"""Config of endpoints, outlier detection, retry budget and retries (issue 9)."""

from __future__ import annotations

import re

import pytest

from policies.spec import Address, OutlierDetection, Retries, RetryBudget
from router.config import ConfigError, parse_config

ROUTE = "routes:\n  - name: r\n    policy: {kind: weighted, weights: {a: 1}}\n"


def parse(backend: str, retries: str = "") -> object:
    text = "backends:\n  a: " + backend + "\n" + ROUTE
    if retries:
        text += f"    retries: {retries}\n"
    return parse_config(text, "cfg.yaml")


def test_url_is_one_endpoint_and_defaults_are_envoys() -> None:
    cfg = parse('{url: "http://10.0.0.1:8501/base"}')
    b = cfg.backends["a"]  # type: ignore[attr-defined]
    assert b.addresses() == (Address("10.0.0.1", 8501),)
    assert b.base_path == "/base"
    assert b.outlier == OutlierDetection()
    assert b.retry_budget == RetryBudget(budget_percent=20.0, min_retries=3)


def test_endpoints_outlier_and_budget() -> None:
    cfg = parse(
        '{endpoints: ["http://10.0.0.1:8501/m", "http://10.0.0.2:8501/m"], '
        "outlier_detection: {consecutive_5xx: 3, failure_status: [404], base_ejection_time: 10s,"
        " max_ejection_percent: 50}, retry_budget: {budget_percent: 10, min_retries: 1}}",
        "{attempts: 2, on: [connect-failure, reset, 503, 404], non_idempotent: true}",
    )
    b = cfg.backends["a"]  # type: ignore[attr-defined]
    assert b.addresses() == (Address("10.0.0.1", 8501), Address("10.0.0.2", 8501))
    assert (b.host, b.port, b.url) == ("10.0.0.1", 8501, "http://10.0.0.1:8501/m")
    assert b.outlier == OutlierDetection(
        consecutive_5xx=3,
        failure_status=frozenset({404}),
        base_ejection_time=10.0,
        max_ejection_time=300.0,
        max_ejection_percent=50.0,
    )
    assert b.retry_budget == RetryBudget(10.0, 1)
    assert cfg.routes[0].retries == Retries(  # type: ignore[attr-defined]
        attempts=2,
        on=frozenset({"connect-failure", "reset"}),
        status=frozenset({503, 404}),
        non_idempotent=True,
    )


@pytest.mark.parametrize(
    ("backend", "retries", "message"),
    [
        (
            '{url: "http://h:1", endpoints: ["http://h:2"]}',
            "",
            r"backends\.a: give either 'url' \(one endpoint\) or 'endpoints'",
        ),
        ("{endpoints: []}", "", r"backends\.a\.endpoints: must have at least 1 item, got 0"),
        (
            '{endpoints: ["http://h:1/a", "http://h:2/b"]}',
            "",
            r"backends\.a\.endpoints\[1\]: every endpoint of a backend must have the same path",
        ),
        (
            '{endpoints: ["http://h:1", "http://h:1"]}',
            "",
            r"backends\.a\.endpoints\[1\]: duplicate endpoint h:1",
        ),
        (
            '{url: "http://h:1", outlier_detection: {consecutive_5xxx: 3}}',
            "",
            r"outlier_detection: unknown key 'consecutive_5xxx'.*did you mean 'consecutive_5xx'",
        ),
        (
            '{url: "http://h:1", outlier_detection: {failure_status: [200]}}',
            "",
            r"failure_status\[0\]: must be at least 400, got 200",
        ),
        (
            '{url: "http://h:1", outlier_detection: {base_ejection_time: 60s, '
            "max_ejection_time: 30s}}",
            "",
            r"max_ejection_time: must be at least base_ejection_time \(60s\), got 30s",
        ),
        (
            '{url: "http://h:1", retry_budget: {budget_percent: 150}}',
            "",
            r"retry_budget\.budget_percent: must be at most 100",
        ),
        ('{url: "http://h:1"}', "{on: [5xx, 200]}", r"retries\.on\[1\]: must be at least 400"),
        (
            '{url: "http://h:1"}',
            "{on: [50x]}",
            r"retries\.on\[0\]: must be one of connect-failure.*did you mean '5xx'",
        ),
    ],
)
def test_bad_settings_give_one_clear_error(backend: str, retries: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(backend, retries)
    print(e.value.errors)
    assert len(e.value.errors) == 1
    assert re.search(message, e.value.errors[0]), e.value.errors[0]
