"""The policy seam: what every routing policy offers to the data plane, and the small value types.

Pure CPU, synchronous, microseconds per call. No I/O, no aiohttp, no `router` imports: this
package must be usable from a notebook. Randomness comes from an injected numpy Generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

BUCKETS = 1 << 16  # sticky bucket space; each bucket is owned by exactly one arm
# Largest reward magnitude a learning policy folds in, declared range or not: sums of squares
# of 1e9 such rewards stay below 1e40, far from overflow (1e308 would make them infinite).
MAX_ABS_REWARD = 1e15


def reward_problem(
    reward: object, reward_type: str, bounds: tuple[float, float] | None = None
) -> str | None:
    """Why `reward` cannot be learned from (a message naming the rule), or None when it can.

    Binary rewards must lie in [0, 1]; continuous ones in their declared `bounds` (the
    `reward.range` of the route) when there are any; every reward must be a finite number of
    magnitude at most MAX_ABS_REWARD.
    """
    if isinstance(reward, bool) or not isinstance(reward, int | float):
        return "must be a number"
    try:
        r = float(reward)
    except OverflowError:
        return f"must be within +-{MAX_ABS_REWARD:g}"
    if not math.isfinite(r):
        return "must be finite"
    if reward_type == "binary" and not 0.0 <= r <= 1.0:
        return f"a binary reward must be in [0, 1], got {reward}"
    if bounds is not None and not bounds[0] <= r <= bounds[1]:
        return f"must be in the route's declared range [{bounds[0]:g}, {bounds[1]:g}], got {reward}"
    if abs(r) > MAX_ABS_REWARD:
        return f"must be within +-{MAX_ABS_REWARD:g} (declare reward.range), got {reward}"
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """Which arm serves a request, and the probability the policy gave it (for off-policy stats)."""

    arm: str
    propensity: float


@dataclass(slots=True)
class Context:
    """What a policy may look at for one request.

    `bucket` is the sticky bucket in [0, BUCKETS) when the route has a sticky key, else None
    (the policy draws at random). `features` is the encoded feature vector for contextual
    policies (bias term included), else None. `label` is a short, hashable name of the
    context for per-context regret (e.g. "climate=hot"), or None. `clock` is the learning
    policy's clock (`policy.clock`, trials folded in) when the decision was made, or None:
    with `discount < 1` a late reward is decayed by the trials that happened since.
    """

    bucket: int | None = None
    features: np.ndarray[Any, np.dtype[np.float64]] | None = None
    label: str | None = None
    clock: float | None = None


@dataclass(slots=True)
class ArmStats:
    """Sufficient statistics of one arm; they add up across replicas."""

    decisions: int = 0
    rewards: int = 0  # rewarded decisions (feedback received, or counted as 0 by missing_reward)
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0

    @property
    def reward_mean(self) -> float | None:
        return self.reward_sum / self.rewards if self.rewards else None

    @property
    def reward_var(self) -> float | None:
        if self.rewards < 2:
            return None
        m = self.reward_sum / self.rewards
        return max(0.0, (self.reward_sq_sum - self.rewards * m * m) / (self.rewards - 1))

    def to_json(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "rewards": self.rewards,
            "reward_sum": self.reward_sum,
            "reward_sq_sum": self.reward_sq_sum,
        }

    def to_array(self) -> list[float]:
        """The four sums as floats, in field order (for `LearningPolicy.additive`)."""
        return [float(self.decisions), float(self.rewards), self.reward_sum, self.reward_sq_sum]

    @classmethod
    def from_array(cls, x: Sequence[float] | np.ndarray[Any, np.dtype[np.float64]]) -> ArmStats:
        return cls(round(float(x[0])), round(float(x[1])), float(x[2]), float(x[3]))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ArmStats:
        return cls(
            int(d.get("decisions", 0)),
            int(d.get("rewards", 0)),
            float(d.get("reward_sum", 0.0)),
            float(d.get("reward_sq_sum", 0.0)),
        )


@runtime_checkable
class Policy(Protocol):
    """A routing policy: choose an arm per request, learn from rewards, report statistics."""

    arms: tuple[str, ...]

    def choose(self, context: Context) -> Decision: ...

    def update(self, arm: str, reward: float, context: Context) -> None: ...

    def stats(self) -> Mapping[str, ArmStats]: ...


class LearningPolicy(Policy, Protocol):
    """A policy that learns from rewards (bandit, contextual bandit, A/B test).

    Learning engines (`router/engines/learning.py`) and the simulator (`policies/simulate.py`)
    see only this; `policies.registry.build_policy` returns it.
    """

    @property
    def phase(self) -> str:
        """Either "active", or "concluded" once an A/B test routes all traffic to its winner."""
        ...

    def choose(self, context: Context) -> Decision:
        """Pick an arm for one request; counts the decision in `stats()`."""
        ...

    def update(
        self, arm: str, reward: float, context: Context | None = None, trial: bool = True
    ) -> None:
        """Fold in one reward. `trial=False` credits a trial already counted (missing_reward)."""
        ...

    def shares(self) -> dict[str, float]:
        """Intended (or, for contextual policies, realised) share of traffic per arm; sums to 1."""
        ...

    def result(self) -> dict[str, Any] | None:
        """The policy's statistical test, looked at once (A/B tests); None when it has none."""
        ...

    def set_arms(self, arms: Sequence[str]) -> None:
        """Change the arm set: kept arms keep what they learned, new arms start cold."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-able sufficient statistics, for `restore` after a restart."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what `state` returned; arms no longer present are ignored."""
        ...

    def additive(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """The statistics that add up across processes, as a flat dict of named float arrays
        (see `policies.merge`): counts, sums, sums of squares, LinUCB's A and b. Names encode
        the layout (a new layout takes a new name), so stores never need to know them."""
        ...

    def load_additive(self, totals: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
        """Set the additive statistics to `totals` (merged across processes); every name
        `additive()` returns is present. Derived state (caches, A^-1, theta) follows."""
        ...
