"""Reward and estimated pseudo-regret accounting (SPEC §5), per context label when there is one.

On every decision we add (best estimated mean - chosen arm's estimated mean) in that decision's
context, using the estimates at that moment. Arms without data are left out of the comparison,
so early decisions contribute nothing rather than a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["RegretTracker", "true_regret"]


class RegretTracker:
    """Estimated cumulative pseudo-regret from per-(label, arm) reward sums."""

    __slots__ = ("_n", "_s", "regret")

    def __init__(self) -> None:
        self.regret = 0.0
        self._n: dict[str | None, dict[str, float]] = {}
        self._s: dict[str | None, dict[str, float]] = {}

    def decision(self, arm: str, label: str | None = None) -> float:
        """Account one decision; returns the regret it added."""
        n = self._n.get(label)
        if not n or n.get(arm, 0.0) <= 0.0:
            return 0.0
        s = self._s[label]
        best = max(s[a] / c for a, c in n.items() if c > 0.0)
        added = best - s[arm] / n[arm]
        self.regret += added
        return added

    def reward(self, arm: str, reward: float, label: str | None = None, trial: bool = True) -> None:
        """Fold in one reward; `trial=False` adds to the sum of a trial counted earlier."""
        n = self._n.setdefault(label, {})
        s = self._s.setdefault(label, {})
        if trial:
            n[arm] = n.get(arm, 0.0) + 1.0
        else:
            n.setdefault(arm, 0.0)
        s[arm] = s.get(arm, 0.0) + reward

    def means(self, label: str | None = None) -> dict[str, float]:
        n = self._n.get(label, {})
        s = self._s.get(label, {})
        return {a: s[a] / c for a, c in n.items() if c > 0.0}

    def state(self) -> dict[str, Any]:
        return {
            "regret": self.regret,
            "cells": [
                [label, arm, self._n[label][arm], self._s[label][arm]]
                for label in self._n
                for arm in self._n[label]
            ],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.regret = float(state.get("regret", 0.0))
        self._n.clear()
        self._s.clear()
        for label, arm, n, s in state.get("cells", []):
            self._n.setdefault(label, {})[str(arm)] = float(n)
            self._s.setdefault(label, {})[str(arm)] = float(s)

    def forget_arms(self, keep: set[str]) -> None:
        for label in list(self._n):
            for arm in list(self._n[label]):
                if arm not in keep:
                    del self._n[label][arm]
                    del self._s[label][arm]


def true_regret(means: Mapping[str, float], arm: str) -> float:
    """Exact pseudo-regret of one decision when the true means are known (simulation)."""
    return max(means.values()) - means[arm]
