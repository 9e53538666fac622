"""Metrics: every verb against its own registry, and a promtool-clean exposition."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry

from router.metrics import CONTENT_TYPE, DURATION_BUCKETS, ROLLOUT_PHASES, Metrics


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(reg: CollectorRegistry) -> Metrics:
    return Metrics(reg)


def val(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def populate(m: Metrics) -> None:
    """One sample in every metric family of SPEC §6."""
    b = m.bind("clf", "stable")
    b.observe(200, 0.004)
    b.observe(200, 0.2)
    b.observe(503, 31.0)
    b.upstream_error("timeout")
    m.request_unmatched(404)
    m.set_share("clf", "stable", 0.9)
    m.set_share("clf", "cand", 0.1)
    m.set_backend_up("stable", True)
    m.set_backend_up("cand", False)
    m.config_reload("success")
    m.decision("clf", "stable")
    m.feedback("clf", "stable")
    m.feedback_rejected("expired")
    m.set_reward("clf", "stable", 31.0, 0.775, 40)
    m.set_regret("clf", 3.2)
    m.set_phase("clf", "progressing")
    m.set_step("clf", 1)
    m.set_p_value("ab", "B", 0.04)
    m.set_prob_best("ab", "B", 0.97)


def test_default_registry_is_private() -> None:
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    a.bind("r", "x").observe(200, 0.1)
    assert (
        b.registry.get_sample_value(
            "modelrouter_requests_total", {"route": "r", "backend": "x", "code": "200"}
        )
        is None
    )


def test_bound_request_counts_codes_and_histogram(m: Metrics, reg: CollectorRegistry) -> None:
    b = m.bind("clf", "stable")
    assert m.bind("clf", "stable") is b
    b.observe(200, 0.004)
    b.observe(200, 0.001)  # exactly on a bound: counted in le=0.001
    b.observe(503, 99.0)  # beyond the last bound: +Inf only
    assert val(reg, "modelrouter_requests_total", route="clf", backend="stable", code="200") == 2
    assert val(reg, "modelrouter_requests_total", route="clf", backend="stable", code="503") == 1
    h = "modelrouter_request_duration_seconds"
    assert val(reg, h + "_bucket", route="clf", backend="stable", le="0.001") == 1
    assert val(reg, h + "_bucket", route="clf", backend="stable", le="0.005") == 2
    assert val(reg, h + "_bucket", route="clf", backend="stable", le="30.0") == 2
    assert val(reg, h + "_bucket", route="clf", backend="stable", le="+Inf") == 3
    assert val(reg, h + "_count", route="clf", backend="stable") == 3
    assert val(reg, h + "_sum", route="clf", backend="stable") == pytest.approx(99.005)
    assert DURATION_BUCKETS[0] == 0.001 and DURATION_BUCKETS[-1] == 30.0


def test_upstream_errors_and_unmatched(m: Metrics, reg: CollectorRegistry) -> None:
    b = m.bind("clf", "cand")
    b.upstream_error("connect")
    b.upstream_error("connect")
    b.upstream_error("timeout")
    name = "modelrouter_upstream_errors_total"
    assert val(reg, name, route="clf", backend="cand", reason="connect") == 2
    assert val(reg, name, route="clf", backend="cand", reason="timeout") == 1
    m.request_unmatched(404)
    assert val(reg, "modelrouter_requests_total", route="", backend="", code="404") == 1


def test_gauges_and_counters(m: Metrics, reg: CollectorRegistry) -> None:
    populate(m)
    assert val(reg, "modelrouter_traffic_share", route="clf", backend="cand") == 0.1
    assert val(reg, "modelrouter_backend_up", backend="stable") == 1
    assert val(reg, "modelrouter_backend_up", backend="cand") == 0
    assert val(reg, "modelrouter_config_reloads_total", result="success") == 1
    assert val(reg, "modelrouter_config_reloads_total", result="failure") == 0
    assert val(reg, "modelrouter_decisions_total", route="clf", backend="stable") == 1
    assert val(reg, "modelrouter_feedback_total", route="clf", backend="stable") == 1
    assert val(reg, "modelrouter_feedback_rejected_total", reason="expired") == 1
    assert val(reg, "modelrouter_reward_sum", route="clf", backend="stable") == 31.0
    assert val(reg, "modelrouter_reward_count", route="clf", backend="stable") == 40
    assert val(reg, "modelrouter_reward_mean", route="clf", backend="stable") == 0.775
    assert val(reg, "modelrouter_regret", route="clf") == 3.2
    assert val(reg, "modelrouter_rollout_step", route="clf") == 1
    assert val(reg, "modelrouter_experiment_p_value", route="ab", arm="B") == 0.04
    assert val(reg, "modelrouter_experiment_prob_best", route="ab", arm="B") == 0.97
    with pytest.raises(ValueError, match="success"):
        m.config_reload("maybe")


def test_none_values_drop_series(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_reward("r", "a", 0.0, None)
    assert val(reg, "modelrouter_reward_sum", route="r", backend="a") == 0
    assert val(reg, "modelrouter_reward_count", route="r", backend="a") == 0
    assert val(reg, "modelrouter_reward_mean", route="r", backend="a") is None
    m.set_reward("r", "a", 3.0, 0.5)  # count derived from sum / mean when not given
    assert val(reg, "modelrouter_reward_count", route="r", backend="a") == 6
    m.set_p_value("r", "A", 0.5)
    m.set_p_value("r", "A", None)
    assert val(reg, "modelrouter_experiment_p_value", route="r", arm="A") is None
    m.set_prob_best("r", "A", 0.5)
    m.set_prob_best("r", "A", None)
    assert val(reg, "modelrouter_experiment_prob_best", route="r", arm="A") is None


def test_rollout_phase_is_one_hot(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_phase("clf", "progressing")
    phases = {
        p: val(reg, "modelrouter_rollout_phase", route="clf", phase=p) for p in ROLLOUT_PHASES
    }
    assert phases == {p: (1.0 if p == "progressing" else 0.0) for p in ROLLOUT_PHASES}
    m.set_phase("clf", "rolled_back")
    assert val(reg, "modelrouter_rollout_phase", route="clf", phase="progressing") == 0
    assert val(reg, "modelrouter_rollout_phase", route="clf", phase="rolled_back") == 1
    m.set_phase("bandit", "active")
    assert val(reg, "modelrouter_rollout_phase", route="bandit", phase="active") == 1
    assert val(reg, "modelrouter_rollout_phase", route="bandit", phase="concluded") == 0
    assert val(reg, "modelrouter_rollout_phase", route="bandit", phase="promoted") is None


def test_forget_route_drops_only_that_route(m: Metrics, reg: CollectorRegistry) -> None:
    populate(m)
    m.bind("other", "stable").observe(200, 0.01)
    m.set_share("other", "stable", 1.0)
    m.forget_route("clf")
    text = m.render().decode()
    assert 'route="clf"' not in text
    assert val(reg, "modelrouter_requests_total", route="other", backend="stable", code="200") == 1
    assert val(reg, "modelrouter_traffic_share", route="other", backend="stable") == 1
    assert val(reg, "modelrouter_backend_up", backend="stable") == 1
    # a route bound again after being forgotten starts from zero
    m.bind("clf", "stable").observe(200, 0.01)
    assert val(reg, "modelrouter_requests_total", route="clf", backend="stable", code="200") == 1
    m.forget_backend("cand")
    assert val(reg, "modelrouter_backend_up", backend="cand") is None


def test_render_has_every_spec_family(m: Metrics) -> None:
    populate(m)
    text = m.render().decode()
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    spec = (
        "requests_total",
        "request_duration_seconds_bucket",
        "upstream_errors_total",
        "traffic_share",
        "decisions_total",
        "feedback_total",
        "feedback_rejected_total",
        "reward_sum",
        "reward_mean",
        "regret",
        "rollout_phase",
        "rollout_step",
        "backend_up",
        "config_reloads_total",
        "experiment_p_value",
        "experiment_prob_best",
    )
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    for name in spec:
        assert "modelrouter_" + name in samples, name


def test_promtool_check_metrics_is_clean(m: Metrics) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus' ships it)")
    populate(m)
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=m.render(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    assert (proc.stdout + proc.stderr).strip() == b""
