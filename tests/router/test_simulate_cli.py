"""`modelrouter simulate`: scenario loading, JSON line, CSV checkpoints, clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from router.simulate_cli import simulate_main

BANDIT = """
policy: {kind: bandit, arms: [a, b, c], algorithm: thompson, reward: {type: binary}}
environment:
  type: bernoulli
  means: {a: 0.05, b: 0.04, c: 0.045}
horizon: 100000
seeds: 20
"""

CLIMATE = """
policy: {kind: contextual_bandit, arms: [summer, winter, allround], algorithm: linucb,
         features: [{name: climate, from: "header:x-climate", type: categorical,
                     values: [hot, cold, mild]}]}
environment:
  type: table
  contexts: {hot: 0.4, cold: 0.4, mild: 0.2}
  means:
    hot:  {summer: 0.12, winter: 0.02, allround: 0.07}
    cold: {summer: 0.02, winter: 0.11, allround: 0.07}
    mild: {summer: 0.06, winter: 0.05, allround: 0.08}
horizon: 50000
seeds: 10
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "scenario.yaml"
    p.write_text(text)
    return str(p)


def test_json_line_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.csv"
    code = simulate_main(write(tmp_path, BANDIT), horizon=2000, seeds=2, out=str(out), as_json=True)
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {
        "horizon",
        "seeds",
        "regret_mean",
        "regret_std",
        "reward_mean",
        "lai_robbins",
        "regret_estimate_mean",
        "regret_estimate_ratio",
        "regret_estimate_sd_mean",
        "regret_estimate_method",
        "regret_interval_coverage",
        "regret_label_means_estimate",
    }
    assert doc["horizon"] == 2000 and doc["seeds"] == 2
    assert 0.5 < doc["regret_estimate_ratio"] < 2.0  # the router's estimate vs the truth
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["seed", "t", "cumulative_reward", "regret"]
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert rows[-1]["t"] == "2000"
    assert 50 < len(rows) <= 200


def test_table_and_contextual(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate_main(write(tmp_path, CLIMATE), horizon=1000, seeds=1) == 0
    text = capsys.readouterr().out
    assert "contextual_bandit/linucb vs table" in text and "regret" in text
    assert "Lai" not in text


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        (
            "policy: {kind: bandit, arms: [a, b], algorithm: thompsn}\n"
            "environment: {type: bernoulli, means: {a: 0.1, b: 0.2}}\nhorizn: 5\n",
            [
                r"scenario.yaml:3: horizn: unknown key",
                r"scenario.yaml:1: policy.algorithm: must be",
            ],
        ),
        (
            "policy: {kind: bandit, arms: [a, b]}\nenvironment: {type: bernoulli, means: {a: 2}}\n",
            [r"environment.means.a: a Bernoulli mean must be in \[0, 1\], got 2"],
        ),
        (
            "policy: {kind: bandit, arms: [a, b]}\n"
            "environment: {type: bernoulli, means: {a: 0.1}}\n",
            [r"environment: no mean for arm\(s\) b"],
        ),
        (
            "policy: {kind: weighted, weights: {a: 1}}\n"
            "environment: {type: bernoulli, means: {a: 0.1}}\n",
            [r"policy.kind: simulate runs learning policies"],
        ),
        (
            "environment: {type: dice}\nseeds: 0\n",
            [
                r"policy: required",
                r"environment.type: must be one of",
                r"seeds: must be a positive",
            ],
        ),
        ("policy: [\n", [r"invalid YAML"]),
        ("- 1\n", [r"a scenario must be a mapping"]),
    ],
)
def test_errors_are_listed_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, messages: list[str]
) -> None:
    import re

    assert simulate_main(write(tmp_path, text)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for m in messages:
        assert re.search(m, err), err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate_main("/nonexistent/scenario.yaml") == 2
    assert "cannot read" in capsys.readouterr().err
