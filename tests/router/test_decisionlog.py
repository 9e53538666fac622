"""The decision log writer and reader: records, joins, rotation, retention, drops, sampling."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from policies.spec import Feature
from router.decisionlog import (
    DecisionLogWriter,
    LogError,
    layout_of,
    log_files,
    read_log,
    to_logged_data,
)


def _wait(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)


def _writer(path: Path, **kw) -> tuple[DecisionLogWriter, str, str]:
    w = DecisionLogWriter(path, **kw)
    version = w.register_policy(
        "r",
        {"kind": "contextual_bandit", "algorithm": "lin_ts", "params": {}, "arms": ["a", "b"],
         "reward_type": "binary", "missing_reward": None},
    )  # fmt: skip
    feats = (Feature("climate", "header", "x-climate", "categorical", values=("hot", "cold")),)
    layout = w.register_layout(layout_of(feats))
    return w, version, layout


def _reward(tid: str, r: float, arm: str = "a", p: float = 0.5) -> dict:
    return {
        "t": time.time(),
        "route": "r",
        "id": tid,
        "reward": r,
        "arm": arm,
        "propensity": p,
        "features": [1.0, 1.0, 0.0],
        "decided_at": 1.0,
        "layout": None,
    }


def test_round_trip_joins_rewards_and_keeps_the_features_the_policy_saw(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    w, version, layout = _writer(path)
    w.start()
    for i in range(10):
        x = np.array([1.0, float(i % 2 == 0), float(i % 2 == 1)])
        w.decision(100.0 + i, "r", f"id{i}", "a" if i < 5 else "b", 0.5, version, layout, x,
                   "u1", f"req{i}")  # fmt: skip
    _wait(lambda: w.written == 10)
    assert w.rewards([_reward("id1", 1.0), _reward("id7", 0.0, "b")]) == 2
    w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["type"] for x in lines[:2]] == ["policy", "layout"]
    dec = lines[2]
    assert dec["id"] == "id0" and dec["features"] == [1.0, 1.0, 0.0] and dec["unit"] == "u1"
    assert dec["request_id"] == "req0" and dec["policy"] == version and dec["layout"] == layout
    contents = read_log(path)
    ext = to_logged_data(contents)
    assert ext.data.n == 2 and ext.unrewarded == 8
    assert ext.data.arms == ("a", "b")
    assert ext.layout is not None and ext.layout["features"][0]["values"] == ["hot", "cold"]
    filled = to_logged_data(contents, missing_reward=0.0)
    assert filled.data.n == 10 and filled.filled == 8
    assert filled.data.reward.sum() == 1.0


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    w, version, _ = _writer(tmp_path / "d.jsonl", queue_max=100)
    # the writer thread is not started: nothing drains, so the queue must stay bounded
    for i in range(1000):
        w.decision(1.0, "r", f"id{i}", "a", 0.5, version, None, None, None, None)
    assert w.dropped == 900
    assert w.health()["queued"] == 100
    w.close()
    assert to_logged_data(read_log(tmp_path / "d.jsonl"), missing_reward=0.0).data.n == 100


def test_rewards_are_on_disk_when_rewards_returns(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    w, _, _ = _writer(path)
    w.start()
    w.rewards([_reward("late", 1.0)])
    # no close(): what a kill -9 right now would leave behind
    text = path.read_text()
    assert '"id":"late"' in text
    ext = to_logged_data(read_log(path))
    assert ext.data.n == 1 and ext.rounds[0].arm == "a"  # rebuilt from the reward record
    w.close()


def test_sampling_keeps_a_decision_and_its_reward_together(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    w, version, _ = _writer(path, sample_rate=0.3)
    w.start()
    ids = [f"tok{i}" for i in range(2000)]
    for tid in ids:
        w.decision(1.0, "r", tid, "a", 0.5, version, None, None, None, None)
    kept = w.rewards([_reward(tid, 1.0) for tid in ids])
    w.close()
    contents = read_log(path)
    assert 500 < kept < 700
    assert contents.rewards_without_decision == 0
    assert to_logged_data(contents).data.n == kept


def test_rotation_compresses_and_late_rewards_still_join(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    now = [1_000_000.0]
    w, version, layout = _writer(path, rotate_seconds=60.0, retention=3600.0, clock=lambda: now[0])
    w.start()
    w.decision(now[0], "r", "early", "b", 0.25, version, layout, [1.0, 1.0, 0.0], None, None)
    _wait(lambda: w.written == 1)
    now[0] += 120.0
    w.decision(now[0], "r", "next", "a", 0.75, version, layout, [1.0, 0.0, 1.0], None, None)
    _wait(lambda: w.written == 2)
    w.rewards([_reward("early", 1.0, "b", 0.25)])  # late: its decision is in the rotated file
    w.close()
    files = log_files(path)
    assert [f.name for f in files][-1] == "d.jsonl"
    assert files[0].name.endswith(".jsonl.gz") and len(files) == 2
    with gzip.open(files[0], "rt") as fh:
        first = [json.loads(x)["type"] for x in fh]
    assert first == ["policy", "layout", "decision"]
    # every file starts with the policy and layout records it needs
    assert [json.loads(x)["type"] for x in path.read_text().splitlines()][:2] == [
        "policy",
        "layout",
    ]
    ext = to_logged_data(read_log(path))
    assert ext.data.n == 1 and ext.rounds[0].propensity == 0.25 and ext.rounds[0].id == "early"


def test_retention_deletes_old_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    old = tmp_path / "d-20200101T000000Z.jsonl.gz"
    with gzip.open(old, "wt") as fh:
        fh.write("{}\n")
    os.utime(old, (1.0, 1.0))
    now = [time.time()]
    w, version, _ = _writer(path, rotate_seconds=10.0, retention=3600.0, clock=lambda: now[0])
    w.start()
    w.decision(now[0], "r", "x", "a", 0.5, version, None, None, None, None)
    _wait(lambda: w.written == 1)
    now[0] += 20.0
    w.decision(now[0], "r", "y", "a", 0.5, version, None, None, None, None)
    _wait(lambda: w.written == 2)
    w.close()
    assert not old.exists()
    assert len(log_files(path)) == 2


def test_a_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    w, _, _ = _writer(path)
    w.start()
    w.rewards([_reward("a1", 1.0)])
    w.close()
    with open(path, "a") as fh:
        fh.write('{"type":"reward","id":"half')  # what a kill -9 mid-write leaves
    w2, _, _ = _writer(path)
    w2.start()
    w2.rewards([_reward("a2", 0.0)])
    w2.close()
    contents = read_log(path)
    assert contents.bad_lines == 1
    assert to_logged_data(contents).data.n == 2


def test_reader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="no decision log here"):
        read_log(tmp_path / "nothing.jsonl")
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"type":"decision","t":1,"route":"x","id":"1","arm":"a","propensity":0.5}\n'
        '{"type":"decision","t":1,"route":"y","id":"2","arm":"a","propensity":0.5}\n'
    )
    with pytest.raises(LogError, match="routes x, y; choose one with --route"):
        to_logged_data(read_log(path))
    with pytest.raises(LogError, match="route 'z' has no decisions"):
        to_logged_data(read_log(path), "z")
    with pytest.raises(ValueError, match="sample_rate must be in"):
        DecisionLogWriter(path, sample_rate=2.0)


def test_each_worker_writes_its_own_file_and_the_reader_joins_them(tmp_path: Path) -> None:
    from router.decisionlog import worker_log_path

    path = tmp_path / "d.jsonl"
    assert worker_log_path(path, "") == path
    assert worker_log_path(path, "1:8080:9901:42").name == "d.w1.jsonl"
    for i in range(2):
        w, version, _ = _writer(worker_log_path(path, f"{i}:1:2:3"))
        w.start()
        w.decision(1.0 + i, "r", f"w{i}", "a", 0.5, version, None, None, None, None)
        _wait(lambda w=w: w.written == 1)
        # the reward of worker 0's decision arrives at worker 1
        w.rewards([_reward("w0", 1.0)] if i == 1 else [])
        w.close()
    assert [f.name for f in log_files(path)] == ["d.w0.jsonl", "d.w1.jsonl"]
    ext = to_logged_data(read_log(path))
    assert ext.data.n == 1 and ext.rounds[0].id == "w0" and ext.unrewarded == 1
