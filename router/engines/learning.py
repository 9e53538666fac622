"""Engines of the learning kinds (ab_test, bandit, contextual_bandit): policy, rewards, persistence.

The hot path (`choose`, `observe`, `feedback`) is synchronous and touches only the policy and
in-memory counters. A background tick (every second) merges learning state with every other
process and replica through the store (`policies.merge`):

- what this process learned since its last flush (decisions, rewards from responses) is added to
  the shared sums as increments, in one atomic store call that also answers the merged totals,
  which the policy adopts; counts and sums of one update always travel together;
- accepted feedback is durable in the store's feedback log before its 202, and is folded into the
  sums exactly once by whichever process wins the fold (a compare-and-set on the sums' mark, the
  highest log seq folded, in the same atomic call). The process that received a reward applies it
  at once for visibility; that effect is provisional and replaced by the totals once folded.

So decisions and rewards add up exactly across processes, store traffic is one merge and one
feedback read per route per tick (never per request), and a `kill -9` loses at most the
un-flushed decisions and response rewards of that process (never an accepted reward: a survivor
or the restart folds it). An A/B test's per-user statistics (per sticky bucket: arms, guardrails,
SRM periods) are merged too, as sparse per-bucket increments (`policies.units`; the store adds
the squares' change to dense sums in the same atomic step). The `policy:{route}` document keeps
what does not add up (running p-values and maxima, periods' layout, the winner; a bandit
route's guardrail accumulators; each process's exact per-request moments): every process
applies every accepted reward from the log to those (the watermark and applied ids in the
document make a restart replay them exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from policies import stats as stt
from policies.abtest import ABTestPolicy
from policies.bandits import BanditPolicy
from policies.base import ArmStats, Context, Decision, LearningPolicy, reward_problem
from policies.failover import draw_by_share
from policies.features import FeatureEncoder, json_pointer
from policies.guardrails import GuardrailSet
from policies.merge import Arrays, Merger, diff
from policies.registry import build_encoder, build_policy
from policies.regret import RegretTracker
from policies.spec import ABTestSpec, BanditSpec, ContextualSpec, RouteConfig
from policies.units import Units
from router.engines.base import ActionError, EngineBase, EngineFactory, Services
from router.feedback import DECIDER_CHARS
from router.warmstart import WarmStartError, load_warm_start

if TYPE_CHECKING:
    from router.dataplane.seam import Request
    from router.store.base import FeedbackRecord

__all__ = ["ENGINES", "ContextualEngine", "LearningEngine"]

log = logging.getLogger("modelrouter.learning")

GUARDRAIL_ALPHA = 0.05  # bandit routes have no test alpha of their own
_HEX = frozenset("0123456789abcdef")


class LearningEngine(EngineBase):
    """One learning route: an ab_test or bandit policy fed by decisions and rewards."""

    learns = True
    counts_decisions = True  # choose() counts the arm that really serves
    tick_interval = 1.0  # seconds between feedback pulls / metric refreshes / snapshots
    # a decider silent this long (while this process flushes fine) is dead: the decisions of
    # its rewards are counted from them, and its own late flushes are refused (fenced)
    dead_after = 5.0

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
        self._merger = Merger(self._additive, self._load_additive)
        self._mark = -1  # highest feedback seq folded into the shared sums, as last seen
        self._cursor = 0  # feedback log read position of the fold (<= _mark after a lost fold)
        self._folded: set[str] = set()  # ids folded by the last two merges (handler race guard)
        self._folded_prev: set[str] = set()
        # token prefixes this process decided under (-> last time current), the meta fields of
        # the sums (`#flushed:PREFIX`, `#dead:PREFIX`) as last merged, and since when this
        # process has been flushing without a failure (None: it has not, lately)
        self._prefixes: dict[str, float] = {}
        self._meta: dict[str, float] = {}
        self._healthy_since: float | None = None
        self._sync_lock = asyncio.Lock()
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._srm_flagged = False
        self._decided = False
        self._test: dict[str, Any] | None = None
        # guardrails: an A/B policy tests them itself (a failing arm never wins); on bandit
        # routes the engine does, and caps a failing arm at min_share
        self._ab = self.policy if isinstance(self.policy, ABTestPolicy) else None
        if self._ab is not None:
            self._ab.units.shared = True  # per-bucket sums live in the store (see _sync)
            if self._missing is not None:
                self._ab.set_trial_value(self._missing)
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
        self._warm_path = route.warm_start

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
        arm, share = draw_by_share(up, float(self.services.rng.random()))
        self._recount(d.arm, arm)
        return Decision(arm, min(1.0, share / total))

    def _recount(self, picked: str, serving: str) -> None:
        """The policy counted the decision for the arm it picked; it belongs to the one serving."""
        stats = self.policy.stats()
        stats[picked].decisions -= 1
        stats[serving].decisions += 1

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
        arm, share = draw_by_share(ok, float(rng.random()))
        self._recount(d.arm, arm)
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
        reward = self.response_reward(status, latency, error)
        self._learn(arm, reward, ctx if ctx is not None else Context(), self.policy, self.regret)

    def response_reward(self, status: int, latency: float, error: str | None) -> float:
        """The reward of a response under `reward: {from: response}`: 1 when it was good."""
        r = self._reward
        ok = error is None and status < r.max_status
        if ok and r.max_latency is not None:
            ok = latency <= r.max_latency
        return 1.0 if ok else 0.0

    @property
    def rewards_from_response(self) -> bool:
        return self._from_response

    def feedback(
        self,
        arm: str,
        reward: float,
        ctx: Context,
        token_id: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """An accepted reward (and guardrail metrics) from the feedback endpoint. With
        `token_id` it is durable in the feedback log, which folds it into the shared sums: its
        effect on them is provisional here (for immediate visibility), its effect on what does
        not add up is this process's own. Without one it is this process's own increment."""
        if token_id is None:
            self._learn(arm, reward, ctx, self.policy, self.regret)
            if metrics:
                self._learn_metrics(arm, metrics, ctx)
            return
        if token_id in self._pulled or token_id in self._pulled_prev:
            return  # a pull got to it first (it applied the rest; a merge folds the sums)
        self._applied[token_id] = None

        def apply(regret: RegretTracker) -> Callable[[], None]:
            def run() -> None:
                self._learn(arm, reward, ctx, self.policy, regret)
                if metrics:
                    self._learn_metrics(arm, metrics, ctx)

            return run

        if token_id in self._folded or token_id in self._folded_prev:
            self._local_only(apply(RegretTracker()))
        else:
            with self._units_paused():  # the fold adds the per-bucket part
                self._merger.provisionally(token_id, apply(self.regret))

    def _local_only(self, apply: Callable[[], None]) -> None:
        """Run `apply` for what does not add up only: the additive state is put back (the
        shared sums have, or will get, that part through the merge)."""
        keep = self.policy.additive()
        with self._units_paused():
            apply()
        self.policy.load_additive(keep)

    @contextlib.contextmanager
    def _units_paused(self) -> Iterator[None]:
        """Per-bucket increments (A/B routes) made inside are not flushed by this process."""
        log = self._ab.units if self._ab is not None else None
        if log is None:
            yield
            return
        was, log.paused = log.paused, True
        try:
            yield
        finally:
            log.paused = was

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

    def _learn(
        self,
        backend: str,
        reward: float,
        ctx: Context,
        policy: LearningPolicy,
        regret: RegretTracker,
    ) -> None:
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
                if isinstance(policy, BanditPolicy):
                    policy.update(
                        arm, reward - self._missing, fitted, trial=False, prior=self._missing
                    )
                else:
                    policy.update(arm, reward - self._missing, fitted, trial=False)
                regret.reward(arm, reward - self._missing, fitted.label, trial=False)
            else:
                policy.update(arm, reward, fitted, trial=True)
                regret.reward(arm, reward, fitted.label, trial=True)
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

    @property
    def _sums_key(self) -> str:
        return f"{self.route}:{self.kind}"

    def _additive(self) -> Arrays:
        return {**self.policy.additive(), **self.regret.additive()}

    def _load_additive(self, totals: Arrays) -> None:
        self.policy.load_additive(totals)
        self.regret.load_additive(totals)
        self.regret.forget_arms(set(self.policy.arms))

    async def start(self) -> None:
        store = self.services.store
        snap = await store.get(self._key)
        legacy: Arrays | None = None
        legacy_mark = -1
        warm: str | None = None
        if not (isinstance(snap, dict) and snap.get("kind") == self.kind):
            # a fitted/snapshotted start seeds the shared sums like a legacy snapshot: once,
            # only if nobody did (N workers starting together seed it once)
            warm = self._warm_start()
            if warm is not None:
                legacy, legacy_mark = self._additive(), 0
        if isinstance(snap, dict) and snap.get("kind") == self.kind:
            try:
                fits = self._restore_model(snap)
                if fits:
                    self.policy.restore(snap.get("policy", {}))
                    # the discounted / contextual regret state that does not add up
                    self.regret.restore_local(snap.get("regret", {}))
                self._watermark = int(snap.get("watermark", 0))
                self._applied = dict.fromkeys(str(x) for x in snap.get("applied", []))
                guard = snap.get("guardrails")
                if self._guard is not None and isinstance(guard, dict):
                    self._guard.restore(guard)
                if snap.get("format") != 2 and fits:
                    # a snapshot from before merged sums: its statistics seed the sums once
                    self.regret.restore(snap.get("regret", {}))
                    self.regret.forget_arms(set(self.policy.arms))
                    legacy, legacy_mark = self._additive(), self._watermark
            except (TypeError, ValueError, KeyError) as e:
                log.warning("route '%s': ignoring an unreadable snapshot: %s", self.route, e)
        await self._migrate_units()
        taken = self._merger.take()[1]
        if legacy is not None:
            # seeds only where nobody did yet (mark -1): N workers upgrading migrate it once
            merged = await store.merge(self._sums_key, {}, legacy, -1, legacy_mark)
        else:
            merged = await store.merge(self._sums_key, {})
        self._merger.load(merged.totals, taken)
        self._mark = merged.mark
        self._cursor = max(0, merged.mark)
        if warm is not None:
            await self.services.audit.record(
                self.route, "warm_start", "controller", f"started from {warm}"
            )
        await self._pull()
        await self.sync()
        if self._guard is not None:  # a restored failure caps the arm from the first request
            self._guard_result = self._guard.result()
            self._failed = self._failed_seen = frozenset(
                a for a, g in self._guard_result.get("arms", {}).items() if g.get("failed")
            )
        self._refresh()
        self._task = asyncio.create_task(self._loop(), name=f"learning:{self.route}")

    async def _migrate_units(self) -> None:
        """Per-user A/B statistics of a document from before they were merged: added to the
        shared sums once, by whichever process claims the migration first (a process that dies
        between the claim and the merge loses them; none adds them twice)."""
        if self._ab is None:
            return
        plain, rows = self._ab.legacy
        self._ab.legacy = ({}, {})
        if not plain and not rows:
            return
        me = uuid.uuid4().hex
        won = await self.services.store.put_if_absent(f"units-migrated:{self.route}", me)
        if won != me:
            return
        await self.services.store.merge(self._sums_key, plain, units=rows)
        log.info(
            "route '%s': per-user A/B statistics of the old document added to the sums", self.route
        )

    def _warm_start(self) -> str | None:
        """Load the route's `warm_start:` file into the policy; the file's path, or None."""
        if self._warm_path is None:
            return None
        source = self.services.config.source
        base = Path(source).resolve().parent if Path(source).is_file() else Path.cwd()
        path = base / self._warm_path
        try:
            state = load_warm_start(path, self.spec)
            self.policy.restore(state)
        except (WarmStartError, TypeError, ValueError, KeyError) as e:
            raise ValueError(f"route '{self.route}': warm_start: {e}") from None
        rounds = sum(int(a.get("rewards", 0)) for a in state.get("arms", {}).values())
        log.info("route '%s': warm start from %s (%d rewarded rounds)", self.route, path, rounds)
        return str(path)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self._pull()
            await self.sync()
        except Exception as e:  # the document below still saves what does not add up
            log.warning("route '%s': final feedback pull or merge failed: %s", self.route, e)
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
        """Pull feedback applied elsewhere, merge the sums with the other processes, refresh
        metrics and the test, persist the document if dirty."""
        await self._pull()
        await self.sync()
        await self._refresh_test()
        self._refresh()
        if self._dirty:
            await self.persist()

    async def persist(self) -> None:
        """Write the policy document: what does not add up (the sums live in the store), with
        the log position those parts have applied."""
        snap = {
            "kind": self.kind,
            "format": 2,
            "algorithm": self._algorithm,
            "policy": self.policy.state(),
            "watermark": self._watermark,
            "applied": list(self._applied),
            "regret": self.regret.local_state(),
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
        todo: list[tuple[FeedbackRecord, Context]] = []
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
                todo.append((r, ctx))
            self._watermark = max(self._watermark, r.seq)
        if not todo:
            return
        # what does not add up learns here from every reward; the sums get them by the fold

        def apply() -> None:
            scratch = RegretTracker()
            for r, ctx in todo:
                self._learn(r.arm, r.reward, ctx, self.policy, scratch)
                if r.metrics:
                    self._learn_metrics(r.arm, r.metrics, ctx)

        self._local_only(apply)

    async def sync(self) -> None:
        """One merge: fold new feedback from the log (if no other process folded it first), add
        this process's increments, adopt the totals. Two store calls, whatever the traffic.

        One at a time, and never abandoned half way: a cancelled caller (stop, reload) must not
        leave increments added to the store but not yet marked as flushed here, or the next
        merge would add them again. So the merge runs shielded, under a lock."""
        await asyncio.shield(asyncio.ensure_future(self._sync_once()))

    async def _sync_once(self) -> None:
        async with self._sync_lock:
            await self._sync()

    async def _sync(self) -> None:
        store = self.services.store
        records: list[FeedbackRecord] = await store.feedback_since(self.route, self._cursor)
        decider = self.services.decider
        me = decider.prefix if decider is not None else None
        stamp = self.services.clock()
        if me is not None:
            self._prefixes[me] = stamp
        known = [r.token_id for r in records if r.seq <= self._mark]
        folded: list[FeedbackRecord] = []
        recount: set[str] = set()  # token ids whose decision died with its process
        dead: set[str] = set()
        top = self._mark  # the highest seq this merge folds
        for r in records:
            if r.seq <= self._mark:
                continue
            verdict, node = self._judge(r, stamp)
            if verdict == "wait":
                break  # its decider has not flushed that decision yet: fold from here next tick
            if verdict == "recount":
                recount.add(r.token_id)
                dead.add(node)
            folded.append(r)
            top = r.seq
        fold, fold_units = self._fold_increments(folded, recount) if folded else ({}, {})
        inc, taken = self._merger.take()
        units = self._ab.take_units() if self._ab is not None else {}
        nodes = [p for p in self._prefixes if f"#dead:{p}" not in self._meta]
        try:
            merged = await store.merge(
                self._sums_key,
                inc,
                fold,
                self._mark,
                top,
                nodes=nodes,
                stamp=stamp,
                fence=me,
                dead=sorted(dead),
                units=units,
                fold_units=fold_units,
            )
        except Exception:
            if self._ab is not None:
                self._ab.units.give_back(units)
            self._healthy_since = None  # judge nobody dead until we have been flushing again
            raise
        if self._healthy_since is None:
            self._healthy_since = stamp
        self._meta = merged.meta
        if merged.fenced:
            # another process found this one silent for DEAD_AFTER and counted its decisions
            # from their rewards: what it has not flushed is gone, and so is its token prefix
            log.error(
                "route '%s': this process was declared dead by another one (no flush for %.0fs);"
                " dropping its unflushed decisions and issuing tokens under a new prefix",
                self.route,
                self.dead_after,
            )
            self._merger.load(merged.totals, self._merger.take()[1])
            if decider is not None and decider.prefix == me:
                decider.renew_prefix()
            self._prefixes.pop(me or "", None)
            self._mark = merged.mark
            return
        done = set(known)
        if merged.applied:
            done.update(r.token_id for r in folded)
            self._cursor = top
        else:  # another process folded first: what it covered is in the totals
            done.update(r.token_id for r in records if self._mark < r.seq <= merged.mark)
        self._folded_prev, self._folded = self._folded, done
        self._merger.load(merged.totals, taken, done)
        self._mark = merged.mark
        # a prefix this process no longer issues under stops mattering once its tokens expired
        ttl = self.services.config.feedback.ttl + self.dead_after
        self._prefixes = {p: t for p, t in self._prefixes.items() if p == me or stamp - t < ttl}

    def _reports(self) -> bool:
        """Whether this process records the route's test events in the audit log: every process
        sees the same merged test, so only one of them (the live one with the smallest token
        prefix, as of the last merge) writes each entry."""
        decider = self.services.decider
        if decider is None:
            return True
        me = decider.prefix
        now = self.services.clock()
        live = [
            k[len("#flushed:") :]
            for k, t in self._meta.items()
            if k.startswith("#flushed:")
            and now - t <= self.dead_after
            and f"#dead:{k[len('#flushed:') :]}" not in self._meta
        ]
        return min([*live, me]) == me

    def _judge(self, r: FeedbackRecord, now: float) -> tuple[str, str]:
        """Whether the reward `r` can be folded ("ok"), must wait until its decider flushed the
        decision ("wait"), or comes from a process that died before flushing it ("recount":
        the decision is counted from the reward). Token ids start with their decider's prefix."""
        node = r.token_id[:DECIDER_CHARS]
        if len(r.token_id) <= DECIDER_CHARS or not all(c in _HEX for c in node):
            return "ok", node  # not a decider-tagged id (written before issue 13, or a test's)
        if node in self._prefixes:
            return "ok", node  # decided here, before the pull: this very merge flushes it
        flushed = self._meta.get(f"#flushed:{node}")
        if flushed is not None and r.decided_at + 0.002 < flushed:
            return "ok", node  # its decider's flush at `flushed` had counted it
        if f"#dead:{node}" in self._meta:
            return "recount", node
        last = flushed if flushed is not None else r.decided_at
        ref = max(last, self._healthy_since if self._healthy_since is not None else now)
        return ("recount" if now - ref > self.dead_after else "wait"), node

    def _fold_increments(
        self, records: list[FeedbackRecord], recount: set[str]
    ) -> tuple[Arrays, Units]:
        """What `records` add to the sums (and, on A/B routes, per bucket): learned by a fresh
        policy, the difference taken. A `recount` record also adds its decision (its decider
        died before flushing it)."""
        policy = build_policy(self.spec, np.random.default_rng(0))
        if isinstance(policy, ABTestPolicy):
            policy.units.shared = True
            if self._missing is not None:
                policy.set_trial_value(self._missing)
        regret = RegretTracker()
        before = {**policy.additive(), **regret.additive()}
        for r in records:
            ctx = Context(
                bucket=r.bucket,
                features=None if r.context is None else np.asarray(r.context, dtype=float),
                label=r.label,
            )
            arm = self._to_arm.get(r.arm)
            if r.token_id in recount and arm is not None:
                policy.stats()[arm].decisions += 1
                regret.decision(arm, ctx.label)
                if self._missing is not None:
                    fit = self._fit_context(ctx)
                    policy.update(arm, self._missing, fit, trial=True)
                    regret.reward(arm, self._missing, ctx.label, trial=True)
            self._learn(r.arm, r.reward, ctx, policy, regret)
            if r.metrics and isinstance(policy, ABTestPolicy):
                arm_ = self._to_arm.get(r.arm)
                for name, value in r.metrics.items():
                    if arm_ is not None and name in self._reward_guards:
                        policy.observe_guardrail(arm_, f"reward:{name}", float(value), ctx)
        units = policy.take_units() if isinstance(policy, ABTestPolicy) else {}
        return diff({**policy.additive(), **regret.additive()}, before), units

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
            if not self._reports():
                continue  # another process records it
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
        reports = self._reports()
        if srm["flagged"] and not self._srm_flagged and reports:
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
        if test["decided"] and not self._decided and reports:
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
