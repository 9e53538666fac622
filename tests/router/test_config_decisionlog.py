"""`decision_log:` and `warm_start:` in the config: defaults, and each bad input's message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from router.config import ConfigError, load_config, parse_config

HEAD = """
backends: {a: {url: "http://127.0.0.1:1"}, b: {url: "http://127.0.0.1:2"}}
routes:
"""
BANDIT = "{kind: bandit, arms: [a, b]}"


def _route(extra: str, policy: str = BANDIT, name: str = "r", prefix: str = "/") -> str:
    return f"""  - name: {name}
    match: {{path_prefix: {prefix}}}
    policy: {policy}
{extra}
"""


def test_defaults_and_values() -> None:
    cfg = parse_config(HEAD + _route("    decision_log: {path: logs/r.jsonl}"))
    dl = cfg.routes[0].decision_log
    assert dl is not None and dl.path == "logs/r.jsonl"
    assert (dl.sample_rate, dl.rotate_size, dl.rotate_interval, dl.retention, dl.queue) == (
        1.0,
        64 * 1024 * 1024,
        86400.0,
        7 * 86400.0,
        65536,
    )
    cfg = parse_config(
        HEAD
        + _route(
            "    decision_log: {path: d.jsonl, sample_rate: 0.25, rotate_size: 1MiB, "
            "rotate_interval: 1h, retention: 48h, queue: 100}"
        )
    )
    dl = cfg.routes[0].decision_log
    assert dl is not None
    assert (dl.sample_rate, dl.rotate_size, dl.rotate_interval, dl.retention, dl.queue) == (
        0.25,
        1024 * 1024,
        3600.0,
        172800.0,
        100,
    )


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (_route("    decision_log: {}"), r"routes\[0\]\.decision_log: missing required key 'path'"),
        (
            _route("    decision_log: {path: d.jsonl, sample_rate: 0}"),
            r"decision_log\.sample_rate: must be greater than 0",
        ),
        (
            _route("    decision_log: {path: d.jsonl, rotate_size: lots}"),
            r"decision_log\.rotate_size: expected a size",
        ),
        (
            _route("    decision_log: {path: d.jsonl, every: 1}"),
            r"decision_log: unknown key 'every'",
        ),
        (
            _route("    decision_log: {path: d.jsonl}", "{kind: weighted, weights: {a: 1}}"),
            r"a weighted route makes no logged decisions",
        ),
        (
            _route("    decision_log: {path: d.jsonl}")
            + _route("    decision_log: {path: d.jsonl}", name="s", prefix="/s"),
            r"routes\[1\]\.decision_log: path d\.jsonl is already the decision log of routes\[0\]",
        ),
        (
            _route("    warm_start: w.json", "{kind: weighted, weights: {a: 1}}"),
            r"routes\[0\]\.warm_start: a weighted route does not learn",
        ),
    ],
)
def test_bad_decision_log_config(route: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(HEAD + route)
    assert any(re.search(message, line) for line in e.value.errors), e.value.errors


def test_warm_start_file_is_checked_against_the_route(tmp_path: Path) -> None:
    arms = {"a": {"n": 10, "s": 7, "ss": 7}, "b": {"n": 10, "s": 2, "ss": 2}}
    good = {"policy": {"kind": "bandit", "arms": ["a", "b"]}, "state": {"arms": arms}}
    (tmp_path / "w.json").write_text(json.dumps(good))
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + _route("    warm_start: w.json"))
    assert load_config(path).routes[0].warm_start == "w.json"
    bad = dict(good, state={"arms": {"z": {"n": 1, "s": 1, "ss": 1}}})
    (tmp_path / "w.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"r\.yaml: routes\[0\]\.warm_start: .*arm\(s\) z"):
        load_config(path)
    path.write_text(HEAD + _route("    warm_start: missing.json"))
    with pytest.raises(ConfigError, match=r"routes\[0\]\.warm_start: cannot read"):
        load_config(path)
