"""The `canary` and `blue_green` engines: the Engine seam over a RolloutController
(`router/engines/rollout_controller.py`), which drives the pure `policies.rollout`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from policies import rollout
from policies.base import Context, Decision
from policies.checks import CHECK_KINDS, percentile
from policies.rollout import RolloutState
from policies.spec import BlueGreenSpec, CanarySpec, RouteConfig
from router.engines.base import ActionError, EngineBase, EngineFactory, Services
from router.engines.rollout_controller import RolloutController, RolloutSpec, Transition

__all__ = ["ENGINES", "BlueGreenEngine", "CanaryEngine"]

_ACTIONS = ("promote", "abort", "pause", "resume", "switch", "retry")


class _RolloutEngine(EngineBase):
    """Shared by canary and blue-green: the hot path goes straight to the WeightedPolicy."""

    observes_overrides = True  # arms are backend names: override traffic counts for analysis
    reward_type = "continuous"  # rewards for reward_mean checks: any finite number

    def __init__(self, route: RouteConfig, spec: RolloutSpec, services: Services) -> None:
        super().__init__(route, services)
        self._spec = spec
        # a reward_mean check needs rewards: the route then issues decision tokens and the
        # feedback endpoint credits them, exactly as on learning routes
        analysis = spec.analysis
        self.learns = analysis is not None and any(
            CHECK_KINDS[c.metric].needs_rewards for c in analysis.checks
        )
        self.controller = RolloutController(route.name, spec, services)
        self.policy = self.controller.policy
        self._choose = self.policy.choose
        self._observe = self.controller.observe

    def choose(self, ctx: Context, healthy: Callable[[str], bool] | None = None) -> Decision:
        return self._choose(ctx)

    def observe(
        self, arm: str, status: int, latency: float, error: str | None, ctx: Context | None = None
    ) -> None:
        self._observe(arm, status, latency, error)

    def feedback(
        self,
        arm: str,
        reward: float,
        ctx: Context,
        token_id: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        self.controller.reward(arm, reward)
        self.policy.update(arm, reward, ctx)

    def admits(self, backend: str) -> bool:
        """Overrides may reach the new version only once it is blessed and not rolled back."""
        return self.controller.admits(backend)

    def override_backend(self, backend: str) -> str:
        return self.controller.override_backend(backend)

    def shares(self) -> dict[str, float]:
        return self.policy.shares()

    async def start(self) -> None:
        await self.controller.start()

    async def stop(self) -> None:
        await self.controller.stop()

    async def action(
        self, name: str, reason: str | None, actor: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        if name not in _ACTIONS:
            raise ActionError(
                409,
                f"route '{self.route}' is a {self.kind} route: '{name}' does not apply; "
                f"allowed actions: {', '.join(_ACTIONS)}",
            )
        spec = self._spec
        clock = self.services.clock
        fn: Callable[[RolloutState], Transition]
        if name == "promote":
            full = bool(params.get("full", False))

            def fn(s: RolloutState) -> Transition:
                return rollout.promote(s, spec, clock(), full, reason, actor)
        else:
            pure = {
                "abort": rollout.abort,
                "pause": rollout.pause,
                "resume": rollout.resume,
                "switch": rollout.switch,
                "retry": rollout.retry,
            }[name]

            def fn(s: RolloutState) -> Transition:
                return pure(s, spec, clock(), reason, actor)

        await self.controller.act(name, fn, actor, reason)
        return self.status()

    def status(self) -> dict[str, Any]:
        c = self.controller
        st = c.state
        backends = self.services.backends
        stats = self.policy.stats()
        weights = self.policy.weights
        arms: dict[str, Any] = {}
        for role, arm in (("stable", c.roles.stable), ("candidate", c.roles.candidate)):
            if self.kind == "blue_green":
                role = "active" if arm == (st.active or c.roles.stable) else "preview"
            w = c.windows[arm]
            life = c.lifetime[arm]
            s = stats.get(arm)
            hist = w.hist
            arms[arm] = {
                "role": role,
                "version": backends[arm].version if arm in backends else None,
                "weight": weights.get(arm, 0.0),
                "decisions": s.decisions if s else 0,
                "requests": life[0],
                "errors": life[1],
                "window": {
                    "requests": w.requests,
                    "errors": w.errors,
                    "error_rate": w.errors / w.requests if w.requests else None,
                    "latency_p50": percentile(hist, 0.5),
                    "latency_p90": percentile(hist, 0.9),
                    "latency_p95": percentile(hist, 0.95),
                    "latency_p99": w.p99(),
                    "statuses": {str(k): n for k, n in w.statuses().items()},
                    "transport_errors": w.transport,
                },
                "up": self.services.backend_up(arm),
                "rewards": s.rewards if s else 0,
                "reward_sum": s.reward_sum if s else 0.0,
                "reward_mean": s.reward_mean if s else None,
            }
        analysis = self._spec.analysis
        out: dict[str, Any] = {
            "phase": st.phase.value,
            "step": st.step,
            "shares": self.shares(),
            "arms": arms,
            "regret": None,
            "analysis": [h.to_json() for h in st.history[-50:]],
            "blessed": st.blessing.to_json() if st.blessing else None,
            "reason": st.reason,
            "paused_reason": st.paused_reason,
            "failures": st.failures,
            "failure_limit": analysis.failure_limit if analysis else None,
            "inconclusive": st.inconclusive,
            "inconclusive_limit": analysis.inconclusive_limit if analysis else None,
            "on_inconclusive": analysis.on_inconclusive if analysis else None,
            "interval": self._spec.interval,
            "timeline": list(st.timeline),
            "control": {
                "node": c.node,
                "leading": c.leading,
                "version": c.version,
                "lease": c.lease_ttl,
                "following_other_config": c.foreign,
            },
            "step_started_at": st.step_started_at,
            "next_analysis_at": st.next_analysis_at
            if rollout.analysis_due(st, self._spec, float("inf"))
            else None,
            "changed_at": st.changed_at,
            "test": {"method": "msprt", "result": c.last_sequential}
            if analysis is not None and analysis.compare == "sequential"
            else None,
        }
        if isinstance(self._spec, CanarySpec):
            out["steps"] = list(self._spec.steps)
            out["gate"] = {"mode": self._spec.gate, "waiting": st.gate_waiting}
        else:
            out["active"] = st.active or self._spec.active
            out["preview"] = (
                self._spec.preview if out["active"] == self._spec.active else (self._spec.active)
            )
            out["gate"] = {
                "mode": "auto_switch" if self._spec.auto_switch else "manual_switch",
                "waiting": st.gate_waiting,
            }
        return out


class CanaryEngine(_RolloutEngine):
    """Canary: candidate weight raised step by step while the analysis passes."""

    kind = "canary"

    def __init__(self, route: RouteConfig, services: Services) -> None:
        if not isinstance(route.policy, CanarySpec):
            raise TypeError(f"route '{route.name}': CanaryEngine needs a canary policy")
        super().__init__(route, route.policy, services)


class BlueGreenEngine(_RolloutEngine):
    """Blue-green: the active side serves; the preview only via overrides until `switch`."""

    kind = "blue_green"

    def __init__(self, route: RouteConfig, services: Services) -> None:
        if not isinstance(route.policy, BlueGreenSpec):
            raise TypeError(f"route '{route.name}': BlueGreenEngine needs a blue_green policy")
        super().__init__(route, route.policy, services)


ENGINES: dict[str, EngineFactory] = {"canary": CanaryEngine, "blue_green": BlueGreenEngine}
