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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from policies import stats as stt
from policies.abtest import ABTestPolicy
from policies.bandits import BanditPolicy
from policies.base import ArmStats, Context, Decision, LearningPolicy, reward_problem
from policies.features import FeatureEncoder, json_pointer
from policies.guardrails import GuardrailSet
from policies.registry import build_encoder, build_policy
from policies.regret import RegretTracker
from policies.spec import ABTestSpec, BanditSpec, ContextualSpec, RouteConfig
from router.engines.base import ActionError, EngineBase, EngineFactory, Services

if TYPE_CHECKING:
    from router.dataplane.seam import Request
    from router.store.base import FeedbackRecord

__all__ = ["ENGINES", "ContextualEngine", "LearningEngine"]

log = logging.getLogger("modelrouter.learning")

GUARDRAIL_ALPHA = 0.05  # bandit routes have no test alpha of their own


class LearningEngine(EngineBase):
    """One learning route: an ab_test or bandit policy fed by decisions and rewards."""

    learns = True
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
        # judge decisions with the policy's own estimates (discounted means, linear model)
        if not isinstance(spec, ABTestSpec):
            self.regret.attach(self.policy)
        self.reward_range = spec.reward.range
        # a discounted bandit decays a late reward by the trials since its decision
        self._clocked: BanditPolicy | None = (
            self.policy
            if isinstance(self.policy, BanditPolicy) and self.policy.discount < 1.0
            else None
        )
        self._refused = 0  # rewards the policy refused (replayed records from before a check)
        self._watermark = 0
        self._applied: dict[str, None] = {}  # ids applied by the handler, not yet seen by a pull
        self._pulled: set[str] = set()  # ids applied by the last two pulls (handler race guard)
        self._pulled_prev: set[str] = set()
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._srm_flagged = False
        self._decided = False
        self._test: dict[str, Any] | None = None
        # guardrails: an A/B policy tests them itself (a failing arm never wins); on bandit
        # routes the engine does, and caps a failing arm at min_share
        self._ab = self.policy if isinstance(self.policy, ABTestPolicy) else None
        guards = spec.guardrails if isinstance(spec, ABTestSpec | BanditSpec) else ()
        self._guard: GuardrailSet | None = None
        if self._ab is not None:
            self._guard_sources = self._ab.guardrails.sources
        else:
            if guards:
                self._guard = GuardrailSet(guards, self.policy.arms, alpha=GUARDRAIL_ALPHA)
            self._guard_sources = self._guard.sources if self._guard else frozenset()
        self._reward_guards = frozenset(
            s.partition(":")[2] for s in self._guard_sources if s.startswith("reward:")
        )
        self._min_share = spec.min_share if isinstance(spec, BanditSpec) else 0.0
        self._failed: frozenset[str] = frozenset()  # arms failing a guardrail (bandit routes)
        self._failed_seen: frozenset[str] = frozenset()  # already audited
        self._guard_result: dict[str, Any] = {}

    # ---- hot path ---------------------------------------------------------------------------

    def choose(self, ctx: Context, healthy: Callable[[str], bool] | None = None) -> Decision:
        """Pick an arm and account the decision; returns the backend to send the request to.

        With `healthy` (backend name -> up?), a pick whose backend is down is moved to a healthy
        arm before anything is counted, so decisions, missing-reward trials and regret all name
        the arm that really served (see `_failover`).
        """
        if self._clocked is not None:
            ctx.clock = self._clocked.clock  # the decision token carries it to the feedback
        d = self.policy.choose(ctx)
        arm = d.arm
        backend = self._to_backend[arm]
        if healthy is not None and not all(healthy(b) for b in self.arms):
            d = self._failover(d, healthy)
            arm = d.arm
            backend = self._to_backend[arm]
        if self._failed and arm in self._failed:
            d = self._cap_failed(d)
            arm = d.arm
            backend = self._to_backend[arm]
        self._metrics.decision(self.route, backend)
        self.regret.decision(arm, ctx.label, ctx.features)
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

    def _cap_failed(self, d: Decision) -> Decision:
        """The pick failed a guardrail: it keeps at most `min_share` of traffic; the rest moves
        to arms in good standing in proportion to their shares (propensities say so)."""
        shares = self.policy.shares()
        cap = self._min_share
        own = shares.get(d.arm, 0.0)
        ok = [(a, s) for a, s in shares.items() if a not in self._failed and s > 0.0]
        total = sum(s for _, s in ok)
        if own <= cap or not ok or total <= 0.0:
            return d
        rng = self.services.rng
        if float(rng.random()) * own < cap:
            return Decision(d.arm, cap)
        excess = sum(max(0.0, s - cap) for a, s in shares.items() if a in self._failed)
        u = float(rng.random()) * total
        arm, share = ok[-1]
        for a, s in ok:
            u -= s
            if u < 0.0:
                arm, share = a, s
                break
        stats = self.policy.stats()
        stats[d.arm].decisions -= 1
        stats[arm].decisions += 1
        return Decision(arm, min(1.0, share + excess * share / total))

    def _observe_guard(self, arm: str, source: str, value: float, ctx: Context | None) -> None:
        if self._ab is not None:
            self._ab.observe_guardrail(arm, source, value, ctx)
        elif self._guard is not None:
            self._guard.observe(arm, source, value)
        self._dirty = True

    def observe(
        self, arm: str, status: int, latency: float, error: str | None, ctx: Context | None = None
    ) -> None:
        """Outcome of a proxied request: feeds error-rate and latency guardrails, and learns
        from it when the reward comes from the response."""
        if self._guard_sources:
            a = self._to_arm.get(arm)
            if a is not None:
                if "error_rate" in self._guard_sources:
                    bad = error is not None or status >= 500
                    self._observe_guard(a, "error_rate", 1.0 if bad else 0.0, ctx)
                if "latency" in self._guard_sources and error is None:
                    self._observe_guard(a, "latency", latency, ctx)
        if not self._from_response:
            return
        r = self._reward
        ok = error is None and status < r.max_status
        if ok and r.max_latency is not None:
            ok = latency <= r.max_latency
        self._learn(arm, 1.0 if ok else 0.0, ctx if ctx is not None else Context())

    def feedback(
        self,
        arm: str,
        reward: float,
        ctx: Context,
        token_id: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """An accepted, already durable reward (and guardrail metrics) from the feedback
        endpoint."""
        if token_id is not None:
            if token_id in self._pulled or token_id in self._pulled_prev:
                return  # a pull got to it first
            self._applied[token_id] = None
        self._learn(arm, reward, ctx)
        if metrics:
            self._learn_metrics(arm, metrics, ctx)

    @property
    def guardrail_metrics(self) -> frozenset[str]:
        """Names feedback may send in `metrics` (the route's reward guardrails)."""
        return self._reward_guards

    def _learn_metrics(self, backend: str, metrics: Mapping[str, float], ctx: Context) -> None:
        arm = self._to_arm.get(backend)
        if arm is None:
            return
        for name, value in metrics.items():
            if name in self._reward_guards:
                self._observe_guard(arm, f"reward:{name}", float(value), ctx)

    def _learn(self, backend: str, reward: float, ctx: Context) -> None:
        arm = self._to_arm.get(backend)
        if arm is None:
            return
        fitted = self._fit_context(ctx)
        problem = reward_problem(reward, self.reward_type, self.reward_range)
        if fitted is None or problem is not None:
            # the endpoint refuses such feedback; this is a record stored before it did (or
            # by another router): replaying it must not poison the model, nor stop the pull
            self._skip(backend, problem or "its feature layout differs from the route's")
            return
        try:
            if self._missing is not None:
                if isinstance(self.policy, BanditPolicy):
                    self.policy.update(
                        arm, reward - self._missing, fitted, trial=False, prior=self._missing
                    )
                else:
                    self.policy.update(arm, reward - self._missing, fitted, trial=False)
                self.regret.reward(arm, reward - self._missing, fitted.label, trial=False)
            else:
                self.policy.update(arm, reward, fitted, trial=True)
                self.regret.reward(arm, reward, fitted.label, trial=True)
        except ValueError as e:
            self._skip(backend, str(e))
            return
        self._dirty = True

    def _restore_model(self, snap: Mapping[str, Any]) -> bool:
        """Whether the snapshot's model fits this engine (a contextual one checks the layout)."""
        return True

    def _model_extra(self) -> dict[str, Any]:
        """What else the snapshot keeps beside the policy (the encoder's statistics)."""
        return {}

    def _skip(self, backend: str, why: str) -> None:
        self._refused += 1
        if self._refused <= 10 or self._refused % 1000 == 0:
            log.warning(
                "route '%s': a reward for '%s' was not learned from (%s); %d so far",
                self.route,
                backend,
                why,
                self._refused,
            )

    def _fit_context(self, ctx: Context) -> Context | None:
        """The context the policy can learn from, or None when it belongs to another layout."""
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
        test = self._test if self._test is not None else self.policy.result()
        test_arms = (test or {}).get("arms", {})
        for arm, st in self.policy.stats().items():
            b = self._to_backend[arm]
            if arm in test_arms:  # by unit of analysis (users on sticky routes)
                lo, hi = test_arms[arm]["ci_low"], test_arms[arm]["ci_high"]
            else:
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
        est = self.regret.summary()
        reward: dict[str, Any] = {"type": self.reward_type, "from": self._reward.source}
        if self.reward_range is not None:
            reward["range"] = list(self.reward_range)
        out: dict[str, Any] = {
            "phase": self.phase,
            "shares": self.shares(),
            "arms": arms,
            "regret": est["regret"],
            "regret_sd": est["regret_sd"],
            "regret_interval": [est["regret_low"], est["regret_high"]],
            "regret_method": est["regret_method"],
            "regret_uniform": est["regret_uniform"],
            "reward": reward,
        }
        if self._refused:
            out["rewards_refused"] = self._refused
        if self._algorithm is not None:
            out["algorithm"] = self._algorithm
        if test is not None:
            out["test"] = test
            out["unit"] = test.get("unit", "request")
        else:
            out["unit"] = "request"
        if self._guard is not None:
            out["guardrails"] = self._guard_result or self._guard.result()
        return out

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def _key(self) -> str:
        return f"policy:{self.route}"

    async def start(self) -> None:
        snap = await self.services.store.get(self._key)
        if isinstance(snap, dict) and snap.get("kind") == self.kind:
            try:
                if self._restore_model(snap):
                    self.policy.restore(snap.get("policy", {}))
                    self.regret.restore(snap.get("regret", {}))
                    self.regret.forget_arms(set(self.policy.arms))
                self._watermark = int(snap.get("watermark", 0))
                self._applied = dict.fromkeys(str(x) for x in snap.get("applied", []))
                guard = snap.get("guardrails")
                if self._guard is not None and isinstance(guard, dict):
                    self._guard.restore(guard)
            except (TypeError, ValueError, KeyError) as e:
                log.warning("route '%s': ignoring an unreadable snapshot: %s", self.route, e)
        await self._pull()
        if self._guard is not None:  # a restored failure caps the arm from the first request
            self._guard_result = self._guard.result()
            self._failed = self._failed_seen = frozenset(
                a for a, g in self._guard_result.get("arms", {}).items() if g.get("failed")
            )
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
            **self._model_extra(),
        }
        if self._guard is not None:
            snap["guardrails"] = self._guard.state()
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
                    bucket=r.bucket,
                    features=None if r.context is None else np.asarray(r.context, dtype=float),
                    label=r.label,
                )
                self._learn(r.arm, r.reward, ctx)
                if r.metrics:
                    self._learn_metrics(r.arm, r.metrics, ctx)
            self._watermark = max(self._watermark, r.seq)

    async def _refresh_guardrails(self, result: Mapping[str, Any]) -> None:
        """Metrics and audit for guardrail results (either the A/B test's or the engine's)."""
        failed = set()
        for arm, g in result.get("arms", {}).items():
            b = self._to_backend.get(arm, arm)
            for check in g.get("checks", []):
                self._metrics.set_guardrail(self.route, b, check["guardrail"], check["failed"])
            if g.get("failed"):
                failed.add(arm)
        for arm in sorted(failed - self._failed_seen):
            broken = [
                f"{c['guardrail']} {c['value']:.4g} vs {c['limit']} (p={c['p_value']:.3g})"
                for c in result["arms"][arm]["checks"]
                if c["failed"] and c["value"] is not None
            ]
            log.warning("route '%s': arm %s failed a guardrail: %s", self.route, arm, broken)
            await self.services.audit.record(
                self.route,
                "guardrail_failed",
                "controller",
                f"arm {self._to_backend.get(arm, arm)} failed guardrail: " + "; ".join(broken),
                arm=self._to_backend.get(arm, arm),
            )
        self._failed_seen = frozenset(failed)
        if self._ab is None:
            self._failed = self._failed_seen  # bandit routes: capped at min_share from now on

    async def _refresh_test(self) -> None:
        if self._guard is not None:
            self._guard_result = self._guard.result()
            await self._refresh_guardrails(self._guard_result)
        test = self.policy.result()
        if test is None:
            return  # the policy has no test to look at
        if "guardrails" in test:
            await self._refresh_guardrails(test["guardrails"])
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
            for arm, c in (test.get("comparisons") or {}).items():
                m.set_comparison(
                    self.route,
                    arm,
                    c.get("p_adjusted"),
                    (c.get("lift"), c.get("lift_low"), c.get("lift_high")),
                    (c.get("diff"), c.get("diff_low"), c.get("diff_high")),
                    c.get("mde"),
                )
            progress = test.get("progress")
            if progress is not None:
                m.set_progress(self.route, float(progress["fraction"]))

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
        # what each position of a feature vector means; decision tokens carry it
        self.layout: str | None = encoder.layout

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

    def _fit_context(self, ctx: Context) -> Context | None:
        # a vector of another feature layout (config changed) must not update the model; the
        # feedback endpoint refuses such tokens (409), this catches replayed records
        if ctx.features is None or len(ctx.features) != self.encoder.dim:
            return None
        return ctx

    def _restore_model(self, snap: Mapping[str, Any]) -> bool:
        layout = snap.get("layout")
        if layout is not None and layout != self.encoder.layout:
            log.warning(
                "route '%s': the features changed since the snapshot; the model starts afresh",
                self.route,
            )
            return False
        enc = snap.get("encoder")
        if isinstance(enc, dict):
            self.encoder.restore(enc)
        return True

    def _model_extra(self) -> dict[str, Any]:
        return {"layout": self.encoder.layout, "encoder": self.encoder.state()}

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["contexts"] = self.context_view()
        out["layout"] = self.encoder.layout
        return out

    def context_view(self, limit: int = 50) -> list[dict[str, Any]]:
        """Per categorical context (label): the arm the model sends it to now, every arm's
        estimated reward with a 95% interval, and the realised decisions. Numeric features sit
        at their typical value (running mean / mid-range). The `limit` most frequent labels."""
        policy = self.policy
        predict = getattr(policy, "predict_interval", None)
        out: list[dict[str, Any]] = []
        if predict is None:
            return out
        for label in self.regret.labels()[:limit]:
            if label is None:
                continue
            x = self.encoder.label_vector(label)
            if x is None:
                continue
            pred: dict[str, tuple[float, float, float]] = predict(x)
            best = max(pred, key=lambda a: pred[a][0])
            decisions = self.regret.decisions(label)
            total = sum(decisions.values())
            out.append(
                {
                    "context": label,
                    "sent_to": self._to_backend[best],
                    "decisions": int(total),
                    "arms": {
                        self._to_backend[a]: {
                            "estimate": m,
                            "ci_low": lo,
                            "ci_high": hi,
                            "share": decisions.get(a, 0.0) / total if total else 0.0,
                        }
                        for a, (m, lo, hi) in pred.items()
                    },
                }
            )
        return out


def _parse_body(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # unparsable body: every json: feature takes its default


def _interval(st: ArmStats, reward_type: str) -> tuple[float | None, float | None]:
    """95% interval of the mean: Wilson for binary rewards, Student t for continuous ones."""
    if st.rewards <= 0:
        return None, None
    m = stt.Moments.from_sums(st.rewards, st.reward_sum, st.reward_sq_sum)
    ci = stt.mean_interval(m, binary=reward_type == "binary")
    return (None, None) if ci is None else ci


ENGINES: dict[str, EngineFactory] = {
    "ab_test": LearningEngine,
    "bandit": LearningEngine,
    "contextual_bandit": ContextualEngine,
}
