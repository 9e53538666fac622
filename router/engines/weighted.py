"""The `weighted` engine: static weights from the config, changed at run time by `set-weights`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from policies.base import Context, Decision
from policies.spec import RouteConfig, WeightedSpec
from policies.weighted import WeightedPolicy
from router.engines.base import ActionError, EngineBase, Services


class WeightedEngine(EngineBase):
    """Serves fixed weights; weights set through the admin API persist until the file changes."""

    kind = "weighted"

    def __init__(self, route: RouteConfig, services: Services) -> None:
        if not isinstance(route.policy, WeightedSpec):
            raise TypeError(f"route '{route.name}': WeightedEngine needs a weighted policy")
        super().__init__(route, services)
        self._spec = route.policy
        self.policy = WeightedPolicy(route.policy.weights, services.rng)

    def choose(self, ctx: Context, healthy: Callable[[str], bool] | None = None) -> Decision:
        return self.policy.choose(ctx)

    def shares(self) -> dict[str, float]:
        return self.policy.shares()

    def status(self) -> dict[str, Any]:
        versions = self.services.backends
        arms = {}
        for arm, s in self.policy.stats().items():
            if arm not in self.policy.arms:
                continue
            arms[arm] = {
                "version": versions[arm].version if arm in versions else None,
                "weight": self.policy.weights[arm],
                "decisions": s.decisions,
                "rewards": s.rewards,
                "reward_sum": s.reward_sum,
                "reward_mean": s.reward_mean,
            }
        return {
            "phase": "active",
            "step": None,
            "shares": self.shares(),
            "arms": arms,
            "regret": None,
            "analysis": [],
            "test": None,
        }

    async def start(self) -> None:
        saved = await self.services.store.get(f"weights:{self.route}")
        # weights set at run time survive a restart, until the file's weights change
        if isinstance(saved, dict) and saved.get("config") == dict(self._spec.weights):
            weights = saved.get("weights")
            if isinstance(weights, dict) and set(weights) == set(self._spec.weights):
                self.policy.set_weights({a: float(weights[a]) for a in self._spec.weights})
        self._publish()

    async def action(
        self, name: str, reason: str | None, actor: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        if name != "weights":
            raise ActionError(
                409,
                f"route '{self.route}' is a weighted route: '{name}' applies to canary and "
                "blue_green routes; use set-weights (PUT /admin/routes/{route}/weights)",
            )
        new = params.get("weights")
        if not isinstance(new, Mapping) or not new:
            raise ActionError(400, 'body must be {"weights": {"backend": number, ...}}')
        unknown = sorted(set(new) - set(self.policy.arms))
        if unknown:
            raise ActionError(
                400,
                f"unknown backend(s) {unknown} for route '{self.route}'; "
                f"allowed: {list(self.policy.arms)}",
            )
        weights: dict[str, float] = {}
        for arm in self.policy.arms:
            w = new.get(arm, 0.0)
            if isinstance(w, bool) or not isinstance(w, int | float) or w != w or w < 0:
                raise ActionError(
                    400, f"weight of '{arm}' must be a non-negative number, got {w!r}"
                )
            weights[arm] = float(w)
        if sum(weights.values()) <= 0:
            raise ActionError(400, "weights must not all be zero")
        before = self.shares()
        await self.services.store.put(
            f"weights:{self.route}", {"config": dict(self._spec.weights), "weights": weights}
        )
        self.policy.set_weights(weights)
        self._publish()
        await self.services.audit.record(
            self.route, "set_weights", actor, reason, before=before, after=self.shares()
        )
        return self.status()

    def _publish(self) -> None:
        for arm, share in self.shares().items():
            self.services.metrics.set_share(self.route, arm, share)
