"""`modelrouter simulate` with an `experiment:` scenario: A/B planning from the command line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.simulate_cli import simulate_main

SCENARIO = """\
experiment:
  split: [90, 10]
  base: 0.05
  users: 4000
  requests: pareto
  requests_mean: 10
  user_sd: 0.5
  looks: 40
  replications: 120
"""


def test_aa_scenario_prints_false_positives_per_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "aa.yaml"
    f.write_text(SCENARIO)
    out = tmp_path / "rates.csv"
    assert simulate_main(str(f), out=str(out)) == 0
    text = capsys.readouterr().out
    print(text)
    assert "unit of analysis: user" in text and "false positives" in text
    rows = list(csv.DictReader(out.open()))
    rate = {(r["method"], r["peeking"]): float(r["rate"]) for r in rows}
    assert rate[("msprt", "True")] <= 0.05
    assert rate[("z_test", "True")] > rate[("z_test", "False")]


def test_power_scenario_json_and_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "power.yaml"
    f.write_text(
        "experiment: {split: [50, 50], base: 0.1, effect: 0.3, sticky: false, looks: 30}\n"
    )
    assert simulate_main(str(f), horizon=20000, seeds=60, as_json=True) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["scenario"]["users"] == 20000 and res["scenario"]["replications"] == 60
    msprt = next(m for m in res["methods"] if m["method"] == "msprt")
    assert msprt["rate"] > 0.8 and msprt["median_requests_to_decision"] < 20000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("experiment: {split: [1]}\n", "experiment: split: at least two"),
        ("experiment: {users: many}\n", "experiment.users: bad value"),
        ("experiment: {bogus: 1}\n", "experiment.bogus: unknown key"),
        ("experiment: [1, 2]\n", "experiment: must be a mapping"),
        ("experiment: {}\npolicy: {}\n", "policy: unknown key next to experiment"),
    ],
)
def test_bad_experiment_scenarios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    assert simulate_main(str(f)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_through_the_modelrouter_command(tmp_path: Path) -> None:
    f = tmp_path / "aa.yaml"
    f.write_text(SCENARIO.replace("replications: 120", "replications: 20"))
    exe = Path(sys.executable).with_name("modelrouter")
    done = subprocess.run(
        [str(exe), "simulate", str(f)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "msprt" in done.stdout and "sample-ratio mismatch" in done.stdout
