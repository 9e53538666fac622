"""Estimated pseudo-regret (SPEC §5): current estimates, per context label, uniform baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policies.regret import RegretTracker, true_regret


def test_early_decisions_are_judged_with_current_estimates() -> None:
    r = RegretTracker()
    # early on both arms look alike, so a decision-time estimate would add ~0 for these
    for arm in ("a", "b") * 50:
        r.decision(arm)
        r.reward(arm, 0.5)
    assert r.regret == pytest.approx(0.0)
    # later the means separate: the 50 early decisions for b now count at the current gap
    for _ in range(100):
        r.decision("a")
        r.reward("a", 1.0)
        r.reward("b", 0.0)
    mu = r.means()
    gap = mu["a"] - mu["b"]
    assert gap > 0.5
    assert r.regret == pytest.approx(50 * gap)


def test_regret_per_label_and_uniform_baseline() -> None:
    r = RegretTracker()
    # label hot: a=0.8, b=0.2; label cold: a=0.1, b=0.9
    for label, arm, mean, d in (
        ("hot", "a", 0.8, 30),
        ("hot", "b", 0.2, 10),
        ("cold", "a", 0.1, 5),
        ("cold", "b", 0.9, 25),
    ):
        for _ in range(d):
            r.decision(arm, label)
        r.reward(arm, mean * d, label)
        for _ in range(d - 1):
            r.reward(arm, 0.0, label, trial=True)
        # one trial carrying the whole sum and d-1 zero trials: mean = mean
    assert r.means("hot") == pytest.approx({"a": 0.8, "b": 0.2})
    regret, uniform = r.estimate()
    assert regret == pytest.approx(10 * 0.6 + 5 * 0.8)
    # uniform routing: half the decisions in each label go to the worse arm
    assert uniform == pytest.approx(40 * (0.8 - 0.5) + 30 * (0.9 - 0.5))
    assert r.regret_uniform == pytest.approx(uniform)


def test_arms_without_estimate_add_nothing() -> None:
    r = RegretTracker()
    r.decision("a")
    r.decision("b")
    assert r.estimate() == (0.0, 0.0)
    r.reward("a", 1.0)
    r.decision("b")  # b still has no rewarded trial: unknown gap, not guessed
    assert r.estimate() == (0.0, 0.0)


def test_forget_arms() -> None:
    r = RegretTracker()
    r.reward("a", 1.0)
    r.reward("b", 0.0)
    r.decision("b")
    assert r.regret == pytest.approx(1.0)
    r.forget_arms({"b"})
    assert r.estimate() == (0.0, 0.0) and r.decisions() == {"b": 1.0}


def test_state_round_trip_through_json_and_old_snapshots() -> None:
    r = RegretTracker()
    g = np.random.default_rng(0)
    for _ in range(200):
        label = "hot" if g.random() < 0.5 else None
        arm = "ab"[int(g.integers(2))]
        r.decision(arm, label)
        r.reward(arm, float(g.random() < (0.3 if arm == "a" else 0.6)), label)
    q = RegretTracker()
    q.restore(json.loads(json.dumps(r.state())))
    assert q.estimate() == pytest.approx(r.estimate())
    old = RegretTracker()  # a snapshot from before decision counts: trials stand in
    old.restore({"regret": 12.0, "cells": [[None, "a", 10.0, 5.0], [None, "b", 10.0, 1.0]]})
    assert old.regret == pytest.approx(10 * 0.4)


def test_true_regret() -> None:
    assert true_regret({"a": 0.1, "b": 0.3}, "a") == pytest.approx(0.2)
