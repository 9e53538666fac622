"""Reward and estimated pseudo-regret accounting (SPEC §5), per context label when there is one.

The estimate is re-evaluated from the *current* arm means every time it is read (see
`RegretTracker.regret`), so early decisions are judged with today's knowledge, not with the
near-equal guesses there were when they were made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["RegretTracker", "true_regret"]


class RegretTracker:
    """Estimated cumulative pseudo-regret from per-(label, arm) decision counts and reward sums.

    Per context label c and arm a it keeps decisions D[c,a], rewarded trials n[c,a] and the reward
    sum s[c,a]; mu[c,a] = s/n. SPEC §5 defines the estimate as the sum over decisions of (best
    estimated arm mean - chosen arm's estimated mean); with the current estimates that sum is

        regret = sum_c sum_a D[c,a] * (max_a' mu[c,a'] - mu[c,a])

    which costs O(labels x arms) per read and nothing per decision. Adding the gap with the
    estimates *at decision time* instead under-counts badly early on, when every estimate is
    about equal, and never corrects the first thousand decisions once the means separate. Arms
    with no rewarded trial in a label have no estimate: they are left out of that label's max and
    their decisions add nothing (an unknown gap is not guessed).

    `regret_uniform` is what routing uniformly at random would have lost on the same decisions
    under the same estimates: sum_c D[c] * (max_a mu[c,a] - mean_a mu[c,a]), a baseline to read
    the estimate against.
    """

    __slots__ = ("_d", "_n", "_s")

    def __init__(self) -> None:
        self._d: dict[str | None, dict[str, float]] = {}
        self._n: dict[str | None, dict[str, float]] = {}
        self._s: dict[str | None, dict[str, float]] = {}

    def decision(self, arm: str, label: str | None = None) -> None:
        """Count one decision for `arm` in context `label`."""
        d = self._d.get(label)
        if d is None:
            d = self._d[label] = {}
        d[arm] = d.get(arm, 0.0) + 1.0

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

    def decisions(self, label: str | None = None) -> dict[str, float]:
        return dict(self._d.get(label, {}))

    def estimate(self) -> tuple[float, float]:
        """(regret, regret_uniform) under the current estimates."""
        regret = 0.0
        uniform = 0.0
        for label, d in self._d.items():
            mu = self.means(label)
            if not mu:
                continue
            best = max(mu.values())
            regret += sum(c * (best - mu[a]) for a, c in d.items() if a in mu)
            uniform += sum(d.values()) * (best - sum(mu.values()) / len(mu))
        return regret, uniform

    @property
    def regret(self) -> float:
        return self.estimate()[0]

    @property
    def regret_uniform(self) -> float:
        return self.estimate()[1]

    def state(self) -> dict[str, Any]:
        labels = set(self._d) | set(self._n)
        return {
            "cells": [
                [
                    label,
                    arm,
                    self._n.get(label, {}).get(arm, 0.0),
                    self._s.get(label, {}).get(arm, 0.0),
                    self._d.get(label, {}).get(arm, 0.0),
                ]
                for label in labels
                for arm in set(self._n.get(label, {})) | set(self._d.get(label, {}))
            ],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a snapshot. Cells of the older 4-field form carry no decision count: their
        rewarded trials stand in for it (the closest figure they have)."""
        self._d.clear()
        self._n.clear()
        self._s.clear()
        for cell in state.get("cells", []):
            label, arm, n, s = cell[:4]
            d = cell[4] if len(cell) > 4 else n
            arm = str(arm)
            self._n.setdefault(label, {})[arm] = float(n)
            self._s.setdefault(label, {})[arm] = float(s)
            self._d.setdefault(label, {})[arm] = float(d)

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """Cells (decisions, rewarded trials, reward sum) per (label, arm): they add up."""
        out: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
        for label in set(self._d) | set(self._n):
            d, n, s = self._d.get(label, {}), self._n.get(label, {}), self._s.get(label, {})
            for arm in set(d) | set(n):
                name = "regret.v1/" + json.dumps([label, arm], separators=(",", ":"))
                out[name] = np.array([d.get(arm, 0.0), n.get(arm, 0.0), s.get(arm, 0.0)])
        return out

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        """Load merged cells; names of another kind are ignored, unknown arms are kept."""
        self._d.clear()
        self._n.clear()
        self._s.clear()
        for name, x in totals.items():
            if not name.startswith("regret.v1/") or len(x) > 3:
                continue
            d, n, s = [*map(float, x), 0.0, 0.0, 0.0][:3]  # stores drop trailing zeros
            try:
                label, arm = json.loads(name[len("regret.v1/") :])
            except ValueError:
                continue
            if d != 0.0 or n != 0.0:
                self._d.setdefault(label, {})[str(arm)] = d
                self._n.setdefault(label, {})[str(arm)] = n
                self._s.setdefault(label, {})[str(arm)] = s

    def forget_arms(self, keep: set[str]) -> None:
        for table in (self._d, self._n, self._s):
            for cells in table.values():
                for arm in [a for a in cells if a not in keep]:
                    del cells[arm]


def true_regret(means: Mapping[str, float], arm: str) -> float:
    """Exact pseudo-regret of one decision when the true means are known (simulation)."""
    return max(means.values()) - means[arm]
