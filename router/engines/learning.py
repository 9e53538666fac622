"""Engines of the learning kinds (ab_test, bandit, contextual_bandit): policy, rewards, persistence.

The hot path (`choose`, `observe`, `feedback`) is synchronous and touches only the policy and
in-memory counters. A background tick (every second) pulls accepted feedback from the store
that this process has not applied yet (other workers or replicas; after a restart, what came
after the snapshot), refreshes metrics and the A/B test, and persists a snapshot when dirty.

The snapshot `policy:{route}` holds the policy's sufficient statistics, the regret tracker,
the feedback watermark (highest store seq folded in) and the ids of decisions applied above the
watermark, so replay after a crash neither loses nor double-counts an accepted reward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from policies.base import ArmStats, Context, Decision, LearningPolicy
from policies.features import FeatureEncoder, json_pointer
from policies.registry import build_encoder, build_policy
from policies.regret import RegretTracker
from policies.spec import ABTestSpec, BanditSpec, ContextualSpec, RouteConfig
from router.engines.base import ActionError, EngineBase, EngineFactory, Services

if TYPE_CHECKING:
    from router.dataplane.seam import Request
    from router.store.base import FeedbackRecord

__all__ = ["ENGINES", "ContextualEngine", "LearningEngine"]

log = logging.getLogger("modelrouter.learning")

_Z95 = 1.959963984540054


class LearningEngine(EngineBase):
    """One learning route: an ab_test or bandit policy fed by decisions and rewards."""

    learns = True
    counts_decisions = True  # choose() counts the arm that really serves
    tick_interval = 1.0  # seconds between feedback pulls / metric refreshes / snapshots

    def __init__(self, route: RouteConfig, services: Services) -> None:
        spec = route.policy
        if not isinstance(spec, ABTestSpec | BanditSpec | ContextualSpec):
            raise TypeError(f"route '{route.name}': a learning engine needs a learning policy")
        super().__init__(route, services)
        self.kind = spec.kind
        self.spec = spec
        self._algorithm = None if isinstance(spec, ABTestSpec) else spec.algorithm
        self._metrics = services.metrics
        self.reward_type = spec.reward.type
        self._reward = spec.reward
        self._from_response = self._reward.source == "response"
        self._missing = services.config.feedback.missing_reward
        self.policy: LearningPolicy = build_policy(spec, services.rng)
        if isinstance(spec, ABTestSpec):
            backends = list(spec.arms.values())
            if len(set(backends)) != len(backends):
                raise ValueError(
                    f"route '{route.name}': A/B arms must use distinct backends "
                    "(the backend name identifies the arm in decisions and feedback)"
                )
            self._to_backend = dict(spec.arms)
        else:
            self._to_backend = {a: a for a in self.policy.arms}
        self._to_arm = {b: a for a, b in self._to_backend.items()}
        self.arms = tuple(self._to_backend[a] for a in self.policy.arms)
        self.regret = RegretTracker()
        self._watermark = 0
        self._applied: dict[str, None] = {}  # ids applied by the handler, not yet seen by a pull
        self._pulled: set[str] = set()  # ids applied by the last two pulls (handler race guard)
        self._pulled_prev: set[str] = set()
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._srm_flagged = False
        self._decided = False
        self._test: dict[str, Any] | None = None

    # ---- hot path ---------------------------------------------------------------------------

    def choose(self, ctx: Context, healthy: Callable[[str], bool] | None = None) -> Decision:
        """Pick an arm and account the decision; returns the backend to send the request to.

        With `healthy` (backend name -> up?), a pick whose backend is down is moved to a healthy
        arm before anything is counted, so decisions, missing-reward trials and regret all name
        the arm that really served (see `_failover`).
        """
        d = self.policy.choose(ctx)
        arm = d.arm
        backend = self._to_backend[arm]
        if healthy is not None and not all(healthy(b) for b in self.arms):
            d = self._failover(d, healthy)
            arm = d.arm
            backend = self._to_backend[arm]
        self._metrics.decision(self.route, backend)
        self.regret.decision(arm, ctx.label)
        if self._missing is not None:
            # missing_reward: every decision is a trial now; feedback later adds its reward
            self.policy.update(arm, self._missing, ctx, trial=True)
            self.regret.reward(arm, self._missing, ctx.label, trial=True)
        self._dirty = True
        return d if backend == arm else Decision(backend, d.propensity)

    def _failover(self, d: Decision, healthy: Callable[[str], bool]) -> Decision:
        """Some backend is down: a pick of a down arm moves to a healthy arm drawn in proportion
        to its share, and the served arm's propensity becomes P(pick it) + P(pick a down arm) *
        share / healthy_total, i.e. share / healthy_total for context-free policies (exact: their
        shares are the choice probabilities). Contextual shares are the decision mix so far, so
        there the part that comes from down arms is an estimate. With no healthy arm the pick
        stands (the proxy answers 503, and a response reward counts the failure).
        """
        shares = self.policy.shares()
        up = [(a, s) for a, s in shares.items() if s > 0.0 and healthy(self._to_backend[a])]
        total = sum(s for _, s in up)
        if not up or total <= 0.0:
            return d
        down = max(0.0, 1.0 - total)
        if healthy(self._to_backend[d.arm]):
            own = shares.get(d.arm, 0.0)
            return Decision(d.arm, min(1.0, d.propensity + down * own / total))
        u = float(self.services.rng.random()) * total
        arm, share = up[-1]
        for a, s in up:
            u -= s
            if u < 0.0:
                arm, share = a, s
                break
        stats = self.policy.stats()
        # the policy counted the decision for the arm it picked; it belongs to the one serving
        stats[d.arm].decisions -= 1
        stats[arm].decisions += 1
        return Decision(arm, min(1.0, share / total))

    def observe(
        self, arm: str, status: int, latency: float, error: str | None, ctx: Context | None = None
    ) -> None:
        """Outcome of a proxied request; learns from it when the reward comes from the response."""
        if not self._from_response:
            return
        r = self._reward
        ok = error is None and status < r.max_status
        if ok and r.max_latency is not None:
            ok = latency <= r.max_latency
        self._learn(arm, 1.0 if ok else 0.0, ctx if ctx is not None else Context())

    def feedback(self, arm: str, reward: float, ctx: Context, token_id: str | None = None) -> None:
        """An accepted, already durable reward from the feedback endpoint."""
        if token_id is not None:
            if token_id in self._pulled or token_id in self._pulled_prev:
                return  # a pull got to it first
            self._applied[token_id] = None
        self._learn(arm, reward, ctx)

    def _learn(self, backend: str, reward: float, ctx: Context) -> None:
        arm = self._to_arm.get(backend)
        if arm is None:
            return
        ctx = self._fit_context(ctx)
        if self._missing is not None:
            self.policy.update(arm, reward - self._missing, ctx, trial=False)
            self.regret.reward(arm, reward - self._missing, ctx.label, trial=False)
        else:
            self.policy.update(arm, reward, ctx, trial=True)
            self.regret.reward(arm, reward, ctx.label, trial=True)
        self._dirty = True

    def _fit_context(self, ctx: Context) -> Context:
        return ctx

    # ---- reporting ------------------------------------------------------------------------

    def shares(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for arm, share in self.policy.shares().items():
            b = self._to_backend[arm]
            out[b] = out.get(b, 0.0) + share
        return out

    @property
    def phase(self) -> str:
        return self.policy.phase

    def status(self) -> dict[str, Any]:
        versions = {n: c.version for n, c in self.services.backends.items()}
        arms: dict[str, Any] = {}
        for arm, st in self.policy.stats().items():
            b = self._to_backend[arm]
            lo, hi = _interval(st, self.reward_type)
            entry: dict[str, Any] = {
                "version": versions.get(b),
                "decisions": st.decisions,
                "rewards": st.rewards,
                "reward_sum": st.reward_sum,
                "reward_mean": st.reward_mean,
                "ci_low": lo,
                "ci_high": hi,
            }
            if b != arm:
                entry["arm"] = arm
            arms[b] = entry
        regret, regret_uniform = self.regret.estimate()
        out: dict[str, Any] = {
            "phase": self.phase,
            "shares": self.shares(),
            "arms": arms,
            "regret": regret,
            "regret_uniform": regret_uniform,
            "reward": {"type": self.reward_type, "from": self._reward.source},
        }
        if self._algorithm is not None:
            out["algorithm"] = self._algorithm
        test = self._test if self._test is not None else self.policy.result()
        if test is not None:
            out["test"] = test
        return out

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def _key(self) -> str:
        return f"policy:{self.route}"

    async def start(self) -> None:
        snap = await self.services.store.get(self._key)
        if isinstance(snap, dict) and snap.get("kind") == self.kind:
            try:
                self.policy.restore(snap.get("policy", {}))
                self.regret.restore(snap.get("regret", {}))
                self.regret.forget_arms(set(self.policy.arms))
                self._watermark = int(snap.get("watermark", 0))
                self._applied = dict.fromkeys(str(x) for x in snap.get("applied", []))
            except (TypeError, ValueError, KeyError) as e:
                log.warning("route '%s': ignoring an unreadable snapshot: %s", self.route, e)
        await self._pull()
        self._refresh()
        self._task = asyncio.create_task(self._loop(), name=f"learning:{self.route}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self._pull()
        except Exception as e:  # the snapshot below still saves what we have
            log.warning("route '%s': final feedback pull failed: %s", self.route, e)
        await self.persist()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store hiccup must not end learning for good
                log.exception("route '%s': learning tick failed", self.route)

    async def tick(self) -> None:
        """Pull feedback applied elsewhere, refresh metrics and the test, persist if dirty."""
        await self._pull()
        await self._refresh_test()
        self._refresh()
        if self._dirty:
            await self.persist()

    async def persist(self) -> None:
        snap = {
            "kind": self.kind,
            "algorithm": self._algorithm,
            "policy": self.policy.state(),
            "regret": self.regret.state(),
            "watermark": self._watermark,
            "applied": list(self._applied),
        }
        self._dirty = False
        try:
            await self.services.store.put(self._key, snap)
        except Exception:
            self._dirty = True
            raise

    async def _pull(self) -> None:
        records: list[FeedbackRecord] = await self.services.store.feedback_since(
            self.route, self._watermark
        )
        self._pulled_prev, self._pulled = self._pulled, set()
        for r in records:
            if r.token_id in self._applied:
                del self._applied[r.token_id]
            else:
                self._pulled.add(r.token_id)
                ctx = Context(
                    features=None if r.context is None else np.asarray(r.context, dtype=float),
                    label=r.label,
                )
                self._learn(r.arm, r.reward, ctx)
            self._watermark = max(self._watermark, r.seq)

    async def _refresh_test(self) -> None:
        test = self.policy.result()
        if test is None:
            return  # the policy has no test to look at
        self._test = test
        audit = self.services.audit
        srm = test["srm"]
        if srm["flagged"] and not self._srm_flagged:
            log.warning("route '%s': sample ratio mismatch (p=%.2g)", self.route, srm["p_value"])
            await audit.record(
                self.route,
                "srm_flagged",
                "controller",
                f"sample ratio mismatch: chi-square p={srm['p_value']:.3g} < 0.001",
                p_value=srm["p_value"],
            )
        self._srm_flagged = bool(srm["flagged"])
        self._metrics.set_srm(self.route, self._srm_flagged)
        if test["decided"] and not self._decided:
            self._dirty = True
            await audit.record(
                self.route,
                "concluded" if self.phase == "concluded" else "test_decided",
                "controller",
                f"{test['method']} test decided: winner {test['winner']}",
                winner=test["winner"],
                p_value=test.get("p_value"),
                prob_best=test.get("prob_best"),
            )
        self._decided = bool(test["decided"])

    def _refresh(self) -> None:
        m = self._metrics
        for arm, st in self.policy.stats().items():
            m.set_reward(
                self.route, self._to_backend[arm], st.reward_sum, st.reward_mean, st.rewards
            )
        for b, share in self.shares().items():
            m.set_share(self.route, b, share)
        m.set_regret(self.route, self.regret.regret)
        m.set_phase(self.route, self.phase)
        test = self._test
        if test is not None:
            for arm, p in (test.get("p_value") or {}).items():
                m.set_p_value(self.route, arm, p)
            for arm, p in (test.get("prob_best") or {}).items():
                m.set_prob_best(self.route, arm, p)

    async def action(
        self, name: str, reason: str | None, actor: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        raise ActionError(
            409,
            f"'{name}' does not apply to route '{self.route}' of kind {self.kind}: "
            "learning routes shift traffic by themselves",
        )


class ContextualEngine(LearningEngine):
    """A contextual bandit route: builds each request's features before choosing."""

    reads_request = True

    def __init__(self, route: RouteConfig, services: Services) -> None:
        super().__init__(route, services)
        encoder = build_encoder(self.spec)
        if encoder is None:
            raise TypeError(f"route '{route.name}': a contextual engine needs a contextual policy")
        self.encoder: FeatureEncoder = encoder
        self.needs_body = encoder.needs_body

    def make_context(self, req: Request, bucket: int | None) -> Context:
        parsed: list[Any] = []

        def get(source: str, key: str) -> str | float | None:
            if source == "header":
                return req.header(key)
            if source == "cookie":
                return req.cookie(key)
            if source == "query":
                return req.query_param(key)
            if not parsed:
                parsed.append(_parse_body(req.body))
            v = json_pointer(parsed[0], key)
            return (
                v
                if isinstance(v, str | int | float) and not isinstance(v, bool)
                else (None if v is None else json.dumps(v))
            )

        x, label = self.encoder.encode(get)
        return Context(bucket=bucket, features=x, label=label)

    def _fit_context(self, ctx: Context) -> Context:
        # a token issued under another feature layout (config changed) cannot update the model
        if ctx.features is not None and len(ctx.features) != self.encoder.dim:
            return Context(label=ctx.label)
        return ctx


def _parse_body(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # unparsable body: every json: feature takes its default


def _interval(st: ArmStats, reward_type: str) -> tuple[float | None, float | None]:
    """95% interval of the mean: Wilson for binary rewards, normal for continuous ones."""
    n = st.rewards
    if n <= 0:
        return None, None
    mean = st.reward_sum / n
    if reward_type == "binary":
        p = min(max(mean, 0.0), 1.0)
        z2 = _Z95 * _Z95
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return centre - half, centre + half
    var = st.reward_var
    if var is None:
        return None, None
    half = _Z95 * math.sqrt(var / n)
    return mean - half, mean + half


ENGINES: dict[str, EngineFactory] = {
    "ab_test": LearningEngine,
    "bandit": LearningEngine,
    "contextual_bandit": ContextualEngine,
}
