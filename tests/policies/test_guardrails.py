"""Guardrails: validation, always-valid per-arm tests, latency percentiles, relative limits."""

from __future__ import annotations

import numpy as np
import pytest

from policies.guardrails import GuardrailSet, GuardrailSpec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "cpu", "max": 1}, "metric: one of"),
        ({"metric": "error_rate"}, "exactly one of"),
        ({"metric": "error_rate", "max": 0.1, "max_increase": 0.01}, "exactly one of"),
        ({"metric": "error_rate", "min": 0.1}, "min does not apply to error_rate"),
        ({"metric": "error_rate", "max": 1.5}, r"max must be in \(0, 1\)"),
        ({"metric": "latency", "max": 0.5, "percentile": 100}, "percentile must be in"),
        ({"metric": "latency", "max_increase": 0.1}, "max_increase does not apply to latency"),
        ({"metric": "reward", "name": "revenue", "max_decrease": -1}, "max_decrease must be >= 0"),
    ],
)
def test_bad_guardrails(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GuardrailSpec(**kwargs)  # type: ignore[arg-type]


def _run(
    specs: list[GuardrailSpec], gen: dict[str, object], n: int, seed: int
) -> dict[str, object]:
    g = np.random.default_rng(seed)
    gs = GuardrailSet(specs, ("A", "B"))
    for i in range(n):
        arm = "A" if i % 2 else "B"
        for source, f in gen.items():
            gs.observe(arm, source, float(f(g, arm)))  # type: ignore[operator]
        if i % 200 == 199:
            gs.result()
    return gs.result()


def test_error_rate_limit_fails_only_the_bad_arm_and_stays_failed() -> None:
    res = _run(
        [GuardrailSpec("error_rate", max=0.02)],
        {"error_rate": lambda g, a: g.random() < (0.01 if a == "A" else 0.04)},
        6000,
        1,
    )
    arms = res["arms"]  # type: ignore[index]
    print(arms)
    assert arms["B"]["failed"] and not arms["A"]["failed"]


def test_latency_percentile_is_an_exceedance_rate() -> None:
    # p99 <= 0.5 s: B has 3% of requests slower than 0.5 s, A has 0.2%
    res = _run(
        [GuardrailSpec("latency", max=0.5, percentile=99)],
        {"latency": lambda g, a: 0.8 if g.random() < (0.002 if a == "A" else 0.03) else 0.1},
        8000,
        2,
    )
    arms = res["arms"]  # type: ignore[index]
    check = arms["B"]["checks"][0]
    assert check["guardrail"] == "latency_p99" and check["limit"] == "p99 <= 0.5s"
    assert arms["B"]["failed"] and not arms["A"]["failed"]


def test_relative_reward_guardrail() -> None:
    spec = GuardrailSpec("reward", name="revenue", max_decrease=0.05)
    res = _run(
        [spec],
        {"reward:revenue": lambda g, a: g.normal(1.0 if a == "A" else 0.8, 0.5)},
        4000,
        3,
    )
    arms = res["arms"]  # type: ignore[index]
    assert arms["B"]["failed"]
    assert arms["A"]["checks"] == []  # the control is the reference of a relative limit


def test_no_false_failures_at_the_limit() -> None:
    # true error rate exactly at the limit on both arms, looked at every 200 requests:
    # always-valid, so an arm fails in at most alpha of the runs
    fails = 0
    runs = 60
    for seed in range(runs):
        res = _run(
            [GuardrailSpec("error_rate", max=0.05)],
            {"error_rate": lambda g, a: g.random() < 0.05},
            4000,
            100 + seed,
        )
        fails += any(a["failed"] for a in res["arms"].values())  # type: ignore[attr-defined]
    print("runs with a false guardrail failure:", fails / runs)
    assert fails / runs <= 0.1  # two arms, alpha 0.05 each
