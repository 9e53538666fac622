"""WeightedPolicy: split accuracy, sticky monotonicity (property test), determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.base import BUCKETS, Context
from policies.weighted import WeightedPolicy, bucket_owners, sticky_bucket

ARMS = ["stable", "cand", "c", "d"]


def test_random_split_matches_weights() -> None:
    p = WeightedPolicy({"stable": 90, "cand": 10}, np.random.default_rng(0))
    n = 50_000
    counts = Counter(p.choose(Context()).arm for _ in range(n))
    share = counts["cand"] / n
    # 4 standard errors of a binomial proportion
    assert abs(share - 0.10) < 4 * (0.1 * 0.9 / n) ** 0.5 + 0.003
    assert p.stats()["cand"].decisions == counts["cand"]


def test_bucket_layout_share_is_close_to_weights() -> None:
    owners = bucket_owners({"a": 1, "b": 2, "c": 7})
    shares = np.bincount(owners, minlength=3) / BUCKETS
    assert np.allclose(shares, [0.1, 0.2, 0.7], atol=0.01)


def test_propensity_is_normalised_weight() -> None:
    p = WeightedPolicy({"a": 3, "b": 1}, np.random.default_rng(1))
    d = p.choose(Context(bucket=0))
    assert d.propensity == pytest.approx({"a": 0.75, "b": 0.25}[d.arm])


def test_zero_weight_arm_gets_nothing_and_all_zero_is_rejected() -> None:
    p = WeightedPolicy({"a": 1, "b": 0}, np.random.default_rng(2))
    assert {p.choose(Context()).arm for _ in range(2000)} == {"a"}
    with pytest.raises(ValueError, match="not all zero"):
        p.set_weights({"a": 0, "b": 0})
    with pytest.raises(ValueError, match="non-negative"):
        p.set_weights({"a": -1, "b": 2})


def test_sticky_bucket_is_stable_and_in_range() -> None:
    assert sticky_bucket("user-42") == sticky_bucket(b"user-42")
    assert all(0 <= sticky_bucket(f"u{i}") < BUCKETS for i in range(1000))


def test_same_key_same_arm_across_instances() -> None:
    a = WeightedPolicy({"stable": 70, "cand": 30}, np.random.default_rng(0))
    b = WeightedPolicy({"stable": 70, "cand": 30}, np.random.default_rng(99))
    for i in range(500):
        ctx = Context(bucket=sticky_bucket(f"user-{i}"))
        assert a.choose(ctx).arm == b.choose(ctx).arm


weights_st = st.lists(st.integers(min_value=0, max_value=100), min_size=2, max_size=4).filter(
    lambda ws: sum(ws) > 0
)


@settings(max_examples=60, deadline=None)
@given(before=weights_st, raise_index=st.integers(0, 3), raise_by=st.integers(1, 100))
def test_raising_a_weight_only_moves_buckets_to_that_arm(
    before: list[int], raise_index: int, raise_by: int
) -> None:
    arms = ARMS[: len(before)]
    i = raise_index % len(arms)
    after = list(before)
    after[i] += raise_by
    old = bucket_owners(dict(zip(arms, before, strict=True)))
    new = bucket_owners(dict(zip(arms, after, strict=True)))
    moved = old != new
    assert np.all(new[moved] == i), "a bucket moved to an arm whose weight was not raised"


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(st.integers(1, 99), min_size=2, max_size=6, unique=True))
def test_canary_steps_never_move_users_back_to_stable(steps: list[int]) -> None:
    steps = sorted(steps)
    p = WeightedPolicy({"stable": 100, "cand": 0}, np.random.default_rng(0))
    keys = [sticky_bucket(f"user-{k}") for k in range(3000)]
    on_cand: set[int] = set()
    for s in steps:
        p.set_weights({"stable": 100 - s, "cand": s})
        now = {b for b in keys if p.choose(Context(bucket=b)).arm == "cand"}
        assert on_cand <= now
        on_cand = now
        share = len(now) / len(keys)
        assert abs(share - s / 100) < 0.05
