"""failover_arm: by share among usable arms, else the first usable arm, else nobody."""

from __future__ import annotations

from collections import Counter

import numpy as np

from policies.failover import failover_arm


def test_weighted_route_fails_over_in_proportion_to_the_remaining_weights() -> None:
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    rng = np.random.default_rng(0)
    got = Counter(
        failover_arm(shares, ("a", "b", "c"), lambda x: x != "a", rng.random())
        for _ in range(10_000)
    )
    print(dict(got))
    assert set(got) == {"b", "c"}
    assert abs(got["b"] / 10_000 - 0.6) < 0.02


def test_canary_down_goes_to_stable_and_stable_down_goes_to_canary() -> None:
    shares = {"stable": 0.9, "canary": 0.1}
    arms = ("stable", "canary")
    assert failover_arm(shares, arms, lambda a: a != "canary", 0.99) == "stable"
    assert failover_arm(shares, arms, lambda a: a != "stable", 0.0) == "canary"


def test_old_stable_serves_after_promotion_and_idle_colour_after_a_switch() -> None:
    # promoted: the candidate has everything; it is down, the old stable is still configured
    assert failover_arm({"v1": 0.0, "v2": 1.0}, ("v1", "v2"), lambda a: a == "v1", 0.5) == "v1"
    # blue-green: blue is live, green idle; blue down
    assert (
        failover_arm({"blue": 1.0, "green": 0.0}, ("blue", "green"), lambda a: a != "blue", 0.3)
        == "green"
    )


def test_nothing_usable() -> None:
    assert failover_arm({"a": 1.0}, ("a",), lambda a: False, 0.5) is None
    # a rolled-back candidate is not admitted: it is not usable either
    assert failover_arm({"s": 1.0, "c": 0.0}, ("s", "c"), lambda a: False, 0.5) is None
