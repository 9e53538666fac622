"""Config for issue 10: mSPRT mixing_sd (and the old `tau`), guardrails, unit of analysis."""

from __future__ import annotations

import math
import re
import textwrap

import pytest

from policies.guardrails import GuardrailSpec
from policies.spec import ABTestSpec, BanditSpec
from router.config import ConfigError, parse_config

BACKENDS = """\
backends:
  a: {url: "http://127.0.0.1:9001"}
  b: {url: "http://127.0.0.1:9002"}
"""


def cfg(policy: str, extra: str = "") -> str:
    return (
        BACKENDS
        + "routes:\n  - name: r\n"
        + textwrap.indent(textwrap.dedent(extra), "    ")
        + "    policy:\n"
        + textwrap.indent(textwrap.dedent(policy), "      ")
    )


AB = """\
kind: ab_test
arms: {A: a, B: b}
"""


def errors_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cfg.yaml")
    return str(exc.value)


def test_mixing_sd_is_a_standard_deviation() -> None:
    p = parse_config(cfg(AB + "test: {mixing_sd: 0.02}")).routes[0].policy
    assert isinstance(p, ABTestSpec) and p.test.mixing_sd == 0.02


def test_old_tau_is_read_as_a_variance_with_a_warning() -> None:
    c = parse_config(cfg(AB + "test: {tau: 0.0004}"), "cfg.yaml")
    p = c.routes[0].policy
    assert isinstance(p, ABTestSpec)
    assert p.test.mixing_sd == pytest.approx(math.sqrt(0.0004))
    assert len(c.warnings) == 1
    assert "tau is deprecated" in c.warnings[0] and "mixing_sd: 0.02" in c.warnings[0]
    msg = errors_of(cfg(AB + "test: {tau: 0.0004, mixing_sd: 0.02}"))
    assert "give mixing_sd only" in msg


def test_sticky_routes_analyse_users() -> None:
    p = parse_config(cfg(AB, extra='sticky: {key: "cookie:uid"}\n')).routes[0].policy
    assert isinstance(p, ABTestSpec) and p.sticky
    p = parse_config(cfg(AB)).routes[0].policy
    assert isinstance(p, ABTestSpec) and not p.sticky


def test_guardrails_parse() -> None:
    text = cfg(
        AB
        + """\
guardrails:
  - {metric: error_rate, max: 0.02}
  - {metric: latency, percentile: 99, max: 500ms}
  - {metric: reward, name: revenue, max_decrease: 0.5}
"""
    )
    p = parse_config(text).routes[0].policy
    assert isinstance(p, ABTestSpec)
    assert p.guardrails == (
        GuardrailSpec("error_rate", max=0.02),
        GuardrailSpec("latency", max=0.5, percentile=99.0),
        GuardrailSpec("reward", name="revenue", max_decrease=0.5),
    )
    b = (
        parse_config(
            cfg(
                "kind: bandit\narms: [a, b]\nguardrails: [{metric: error_rate, max_increase: 0.01}]"
            )
        )
        .routes[0]
        .policy
    )
    assert isinstance(b, BanditSpec)
    assert b.guardrails == (GuardrailSpec("error_rate", max_increase=0.01),)


@pytest.mark.parametrize(
    ("guard", "message"),
    [
        ("{metric: cpu, max: 1}", "metric: must be one of"),
        ("{metric: error_rate}", "exactly one of max"),
        ("{metric: error_rate, max: 2}", r"max must be in \(0, 1\)"),
        ("{metric: error_rate, min: 0.1}", "unknown key 'min'"),
        ("{metric: reward, max: 1}", "needs name"),
        ("{metric: latency, max: 1s, percentile: 100}", "percentile"),
        ("{metric: error_rate, max: 0.1, name: 'a b'}", "guardrail name"),
    ],
)
def test_bad_guardrails(guard: str, message: str) -> None:
    msg = errors_of(cfg(AB + f"guardrails: [{guard}]"))
    print(msg)
    assert re.search(message, msg), msg
    assert "guardrails[0]" in msg
