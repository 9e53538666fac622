"""The live routing table: backends, routes and their engines, matching, selection and reload.

`router.app.open_runtime(config)` wires the store, metrics and audit and calls `Runtime.create`;
the data plane calls `match`, `RouteRuntime.select` and `RouteRuntime.record` per request,
the admin API calls `status`, `reload_from_file` and engine actions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from hashlib import blake2b
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from policies.base import Context, Decision
from policies.failover import failover_arm
from policies.spec import (
    BackendConfig,
    Config,
    DecisionLogSpec,
    Limits,
    Override,
    RouteConfig,
    policy_backends,
)
from policies.weighted import sticky_bucket
from router.dataplane.endpoints import EndpointGroup
from router.dataplane.mirror import Mirrorer
from router.dataplane.routing import RouteTable
from router.dataplane.seam import Selection
from router.decisionlog import DecisionLogWriter, RouteLog, worker_log_path
from router.engines import Engine, Services, engine_for
from router.feedback import FeedbackHandler, TokenSigner, load_secret

if TYPE_CHECKING:
    from router.audit import Audit
    from router.dataplane.seam import Request, Route, Router
    from router.metrics import BoundRequest, Metrics
    from router.store.base import Store

log = logging.getLogger("modelrouter.runtime")

BUILD_SLICE = 0.005  # seconds of route building on the loop between two yields (reload)
ENV_WORKER_VAR = "MODELROUTER_WORKER"  # router.workers.ENV_WORKER: "index:...", set per worker
STATE_DIR_ENV = "MODELROUTER_STATE_DIR"  # router.store.sqlite.STATE_DIR_ENV

OUTLIER_TICK = 0.1  # seconds between checks for ejections that are over
PRUNE_EVERY = 300.0  # seconds between prunes of feedback older than twice the feedback TTL


class BackendRuntime:
    """One configured backend: its config, its endpoints (pools, health, ejections) and `up`."""

    __slots__ = ("cfg", "group", "metrics", "name", "up")

    def __init__(self, cfg: BackendConfig, limits: Limits, metrics: Metrics | None = None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.metrics = metrics
        self.up = True  # some endpoint takes requests: kept in step by the endpoint group
        self.group = EndpointGroup(cfg, limits, metrics=metrics, on_change=self._changed)

    def _changed(self, up: bool) -> None:
        self.up = up
        log.warning("backend '%s' is %s", self.name, "up" if up else "DOWN (no endpoint left)")
        if self.metrics is not None:
            self.metrics.set_backend_up(self.name, up)


_NO_CONTEXT = Context()  # shared by plain routes; nothing writes to a Context


class _OverrideMatcher:
    __slots__ = ("backend", "kind", "name", "regex", "value")

    def __init__(self, o: Override, backend: BackendRuntime) -> None:
        self.kind, self.name, self.value, self.backend = o.kind, o.name, o.value, backend
        self.regex = re.compile(o.value) if o.kind == "header_regex" else None

    def matches(self, req: Request) -> bool:
        if self.kind == "cookie":
            return req.cookie(self.name) == self.value
        v = req.header(self.name)
        if v is None:
            return False
        if self.kind == "header":
            return v == self.value
        if self.kind == "header_prefix":
            return v.startswith(self.value)
        assert self.regex is not None
        return self.regex.search(v) is not None


class RouteRuntime:
    """A configured route with its engine; `select` and `record` are the per-request hot path."""

    def __init__(
        self,
        cfg: RouteConfig,
        engine: Engine,
        backends: dict[str, BackendRuntime],
        metrics: Metrics,
        runtime: Runtime,
        dlog: RouteLog | None = None,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.engine = engine
        self.dlog = dlog
        # routes that learn from the response log that reward next to the decision
        self._response_reward: Callable[[int, float, str | None], float] | None = getattr(
            engine, "response_reward", None
        )
        self._log_response = (
            dlog is not None
            and self._response_reward is not None
            and bool(getattr(engine, "rewards_from_response", False))
        )
        m = cfg.match
        self.methods = m.methods
        # path matching (router.dataplane.routing): a prefix matches whole segments; exact; regex
        self.prefix = m.path_prefix if m.path_exact is None else m.path_exact
        # a prefix ending in "/" or ":" (or "/" itself) needs no segment check after it
        self.open_end = m.path_exact is None and self.prefix[-1:] in ("/", ":")
        self.exact = m.path_exact is not None
        self.regex = re.compile(m.path_regex) if m.path_regex is not None else None
        self._runtime = runtime
        self._backends = {b: backends[b] for b in cfg.backends}
        # a rollout engine may refuse a backend (not blessed yet, rolled back): then its
        # overrides do not apply either
        self._admits = engine.admits
        self._redirect = engine.override_backend
        self._overrides = tuple(_OverrideMatcher(o, backends[o.backend]) for o in cfg.overrides)
        # blue-green preview traffic arrives through overrides; its analysis must see it
        self._observe_overrides = engine.observes_overrides
        self._bound: dict[str, BoundRequest] = {b: metrics.bind(cfg.name, b) for b in cfg.backends}
        # decisions_total: learning engines count when they choose; the rest are counted here
        self._count_decisions = not engine.counts_decisions
        self._healthy: Callable[[str], bool] = lambda name: self._backends[name].up
        # only engines that read the request build the context; the rest get the bucket alone
        self._make_context: Callable[[Request, int | None], Context] | None = (
            engine.make_context if engine.reads_request else None
        )
        self.needs_body: bool = engine.needs_body
        self.mirror: Mirrorer | None = None
        if cfg.mirror is not None and runtime.http is not None:
            self.mirror = Mirrorer(
                cfg.name,
                cfg.mirror,
                backends[cfg.mirror.backend].cfg,
                metrics,
                runtime.http,
                random.Random(int(runtime.rng.integers(1 << 62))).random,
            )
        sticky = cfg.sticky
        self._sticky: Callable[[Request], str | None] | None = None
        if sticky is not None:
            name = sticky.name
            if sticky.source == "header":
                self._sticky = lambda req: req.header(name)
            elif sticky.source == "cookie":
                self._sticky = lambda req: req.cookie(name)
            elif sticky.source == "ip":
                self._sticky = lambda req: req.client_ip
            else:
                self._sticky = lambda req: req.query_param(name)
        # a plain route looks at nothing of the request: the proxy skips building the Request
        # view and calls select_plain(), which reuses one Selection per policy Decision
        self.plain: bool = (
            not self._overrides
            and self._sticky is None
            and self._make_context is None
            and not self.needs_body
            and not engine.learns
        )
        self._choose = engine.choose
        self._plain_sel: dict[int, Selection] = {}  # id(decision) -> Selection (it pins decision)
        self._arms = policy_backends(cfg.policy)  # a rollout's stable (or active colour) first
        self._random = random.Random(int(runtime.rng.integers(1 << 62))).random

    def select(self, req: Request) -> Selection:
        for o in self._overrides:
            if o.matches(req):
                name = self._redirect(o.backend.name)
                if self._admits(name):
                    b = o.backend if name == o.backend.name else self._backends[name]
                    return Selection(b, None, None, None, None)
        bucket = None
        key = None
        if self._sticky is not None:
            key = self._sticky(req)
            if key is not None:
                bucket = sticky_bucket(key)
        ctx = (
            self._make_context(req, bucket)
            if self._make_context is not None
            else Context(bucket=bucket)
        )
        engine = self.engine
        # learning engines re-pick among healthy arms themselves, so the decision they count
        # is the arm that serves; others are failed over below
        decision = engine.choose(ctx, self._healthy)
        backend = self._backends[decision.arm]
        if not backend.up:
            backend, decision = self._failover(decision)
        if not engine.learns:
            return Selection(backend, decision.arm, decision, ctx, None)
        return self._learning_selection(backend, decision, ctx, key, req.request_id)

    def _learning_selection(
        self,
        backend: BackendRuntime,
        decision: Decision,
        ctx: Context,
        key: str | None,
        request_id: bytes | None,
    ) -> Selection:
        """A learning route's selection: its token, and its decision record when it logs."""
        dl = self.dlog
        if dl is None:
            token = self._runtime.issue_token(self.name, decision, ctx, self.engine.layout)
            return Selection(backend, decision.arm, decision, ctx, token)
        issued = self._runtime.issue_token_with_id(self.name, decision, ctx, self.engine.layout)
        if issued is None:
            return Selection(backend, decision.arm, decision, ctx, None)
        token, token_id, now = issued
        sel = Selection(backend, decision.arm, decision, ctx, token)
        unit = None if key is None else blake2b(key.encode(), digest_size=8).hexdigest()
        # a deque append (or a counted drop): the writer thread does the rest
        if dl.writer.decision(
            now,
            self.name,
            token_id,
            decision.arm,
            decision.propensity,
            dl.version,
            dl.layout,
            ctx.features,
            unit,
            request_id,
        ):
            sel.logged = token_id
        return sel

    def select_plain(self) -> Selection:
        """`select` for a plain route (see `plain`): no Request view, a shared empty Context."""
        decision = self._choose(_NO_CONTEXT)
        sel = self._plain_sel.get(id(decision))
        if sel is None:
            if len(self._plain_sel) >= 64:  # weights changed many times: drop old decisions
                self._plain_sel.clear()
            backend = self._backends[decision.arm]
            sel = Selection(backend, decision.arm, decision, _NO_CONTEXT, None)
            self._plain_sel[id(decision)] = sel
        if not sel.backend.up:
            backend, decision = self._failover(decision)
            return Selection(backend, decision.arm, decision, _NO_CONTEXT, None)
        return sel

    def _usable(self, arm: str, failed: str | None = None) -> bool:
        b = self._backends.get(arm)
        return (
            b is not None and b.up and arm != failed and (self._admits is None or self._admits(arm))
        )

    def _failover(
        self, decision: Decision, failed: str | None = None
    ) -> tuple[BackendRuntime, Decision]:
        """The chosen backend is down (or `failed` for this request): another healthy arm
        serves, by share (policies.failover); none: the chosen one (the proxy answers 503)."""
        arm = failover_arm(
            self.engine.shares(),
            self._arms,
            lambda a: self._usable(a, failed),
            self._random(),
        )
        if arm is None:
            return self._backends[decision.arm], decision
        return self._backends[arm], Decision(arm, decision.propensity)

    def reselect(self, sel: Selection, req: Request | None) -> Selection | None:
        """Where a retry goes when no other endpoint of `sel.backend` can take it: another arm
        of the route, chosen as the policy would without the failed backend; None if none."""
        failed = sel.backend.name
        ctx = sel.context if sel.context is not None else _NO_CONTEXT
        engine = self.engine
        if engine.learns:
            decision = engine.choose(ctx, lambda a: self._usable(a, failed))
            if not self._usable(decision.arm, failed):
                return None
        else:
            base = sel.decision if sel.decision is not None else Decision(failed, 1.0)
            backend, decision = self._failover(base, failed)
            if backend.name == failed:
                return None
        backend = self._backends[decision.arm]
        if not engine.learns:
            return Selection(backend, decision.arm, decision, ctx, None)
        # the retry is a decision of its own: a new token, and its own record in the log
        key = self._sticky(req) if self._sticky is not None and req is not None else None
        rid = req.request_id if req is not None else None
        return self._learning_selection(backend, decision, ctx, key, rid)

    def _log_reward(self, decision_id: str, status: int, latency: float, error: str | None) -> None:
        rr, dl = self._response_reward, self.dlog
        if rr is not None and dl is not None:
            reward = rr(status, latency, error)
            dl.writer.response_reward(self._runtime.clock(), self.name, decision_id, reward)

    def record(self, sel: Selection, status: int, latency: float, error: str | None) -> None:
        bound = self._bound[sel.backend.name]
        bound.observe(status, latency)
        if error is not None:
            bound.upstream_error(error)
        if sel.arm is not None:
            if self._count_decisions:
                bound.decisions += 1
            self.engine.observe(sel.arm, status, latency, error, sel.context)
            if self._log_response and sel.logged is not None:
                self._log_reward(sel.logged, status, latency, error)
        elif self._observe_overrides:
            self.engine.observe(sel.backend.name, status, latency, error)

    def attempt_failed(
        self, sel: Selection, status: int, latency: float, error: str | None
    ) -> None:
        """An attempt at `sel.backend` failed (`error`: connect, reset, timeout; None for a
        failing answer) and the request is retried: the client never sees it, but the error
        counts (upstream_errors_total) and the engine observes it, so a canary whose failures
        are retried away still fails its analysis."""
        if error is not None:
            self._bound[sel.backend.name].upstream_error(error)
        if sel.arm is not None:
            self.engine.observe(sel.arm, status, latency, error, sel.context)
        elif self._observe_overrides:
            self.engine.observe(sel.backend.name, status, latency, error)


class Runtime:
    """Everything the data plane and the admin API share, swapped atomically on reload."""

    # the index `match` uses, rebuilt when `routes` is replaced (startup, reload)
    _table: RouteTable[RouteRuntime] = RouteTable(())

    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        metrics: Metrics,
        audit: Audit,
        config_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.store = store
        self.metrics = metrics
        self.audit = audit
        self.clock = clock
        self.rng = rng if rng is not None else np.random.default_rng()
        self.generation = 1
        self.draining = False
        self.routes: tuple[RouteRuntime, ...] = ()
        self.backends: dict[str, BackendRuntime] = {}
        self.http: aiohttp.ClientSession | None = None
        self.signer: TokenSigner | None = None
        self.feedback: FeedbackHandler | None = None
        self._health: dict[str, asyncio.Task[None]] = {}
        # decision logs: one writer per file (resolved path), one RouteLog per logging route
        self._writers: dict[str, tuple[DecisionLogSpec, DecisionLogWriter]] = {}
        self._route_logs: dict[str, RouteLog] = {}
        self._open_writers: dict[int, DecisionLogWriter] = {}
        self._prune_task: asyncio.Task[None] | None = None
        self._outlier_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        # called after every successful reload with (actor, recorded); `serve --workers` uses it
        # to pass a reload made on one worker on to the others
        self.reload_listeners: list[Callable[[str, bool], None]] = []

    # ---- life cycle -------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        config: Config,
        *,
        store: Store,
        metrics: Metrics,
        audit: Audit,
        config_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
    ) -> Runtime:
        """Build backends and routes, restore engine state from the store, start health checks."""
        rt = cls(
            config,
            store=store,
            metrics=metrics,
            audit=audit,
            config_path=config_path,
            clock=clock,
            rng=rng,
        )
        await rt._open()
        return rt

    async def _open(self) -> None:
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), headers={"User-Agent": "modelrouter"}
        )
        await self._open_feedback()
        limits = self.config.limits
        self.backends = {
            n: BackendRuntime(c, limits, self.metrics) for n, c in self.config.backends.items()
        }
        self.routes = await self._build_routes(self.config, self.backends, {})
        self._start_health(self.backends.values())
        for b in self.backends.values():
            self.metrics.set_backend_up(b.name, b.up)
        self._prune_task = asyncio.create_task(self._prune_loop(), name="feedback-prune")
        self._outlier_task = asyncio.create_task(self._outlier_loop(), name="outlier-tick")

    async def _outlier_loop(self) -> None:
        """Bring ejected endpoints back when their time is up (the data plane's clock)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(OUTLIER_TICK)
            now = loop.time()
            for b in self.backends.values():
                b.group.tick(now)

    async def _prune_loop(self) -> None:
        """Keep the feedback log bounded: duplicates only matter within the feedback TTL."""
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            try:
                n = await self.store.feedback_prune(self.clock() - 2 * self.config.feedback.ttl)
                if n:
                    log.info("pruned %d feedback records older than twice the TTL", n)
            except Exception:
                log.exception("pruning old feedback failed; will retry")

    async def _open_feedback(self) -> None:
        self.signer = TokenSigner(await load_secret(self.config, self.store))
        self.feedback = FeedbackHandler(self)

    async def close(self) -> None:
        """Stop health checks and engines (they persist their state), close connections."""
        tasks = [
            *self._health.values(),
            *(t for t in (self._prune_task, self._outlier_task) if t is not None),
        ]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._health.clear()
        for r in self.routes:
            await r.engine.stop()
        await self._sync_logs(())
        for b in self.backends.values():
            b.group.close()
        if self.http is not None:
            await self.http.close()

    # ---- per request --------------------------------------------------------------------------

    def match(self, method: str, path: str) -> RouteRuntime | None:
        table = self._table
        if table.source is not self.routes:  # built (or reloaded) since: index them again
            table = self._table = RouteTable(self.routes)
        return table.match(method, path)

    def issue_token_with_id(
        self, route: str, decision: Decision, ctx: Context, layout: str | None = None
    ) -> tuple[str, str, float] | None:
        """(token, decision id, time) for a logged decision; None without a signer."""
        if self.signer is None:
            return None
        now = self.clock()
        features = None if ctx.features is None else tuple(ctx.features.tolist())
        token, token_id = self.signer.issue_with_id(
            route,
            decision.arm,
            decision.propensity,
            self.generation,
            features,
            ctx.label,
            now,
            bucket=ctx.bucket,
            layout=layout,
            clock=ctx.clock,
        )
        return token, token_id, now

    def decision_log(self, route: str) -> RouteLog | None:
        """The route's decision log, for the feedback handler's reward records."""
        return self._route_logs.get(route)

    def issue_token(
        self, route: str, decision: Decision, ctx: Context, layout: str | None = None
    ) -> str | None:
        issued = self.issue_token_with_id(route, decision, ctx, layout)
        return None if issued is None else issued[0]

    async def handle_feedback(self, body: bytes) -> tuple[int, bytes]:
        if self.feedback is None:
            return 503, b'{"error": "feedback is not available", "status": 503}'
        result: tuple[int, bytes] = await self.feedback.handle(body)
        return result

    # ---- admin ------------------------------------------------------------------------------

    def route(self, name: str) -> RouteRuntime:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)

    def status(self, name: str) -> dict[str, Any]:
        r = self.route(name)
        out: dict[str, Any] = {"route": r.name, "kind": r.engine.kind}
        out.update(r.engine.status())
        out.setdefault("shares", r.engine.shares())
        out["backends"] = {
            b: {
                "up": rb.up,
                "version": rb.cfg.version,
                "endpoints": [
                    {
                        "address": ep.address,
                        "up": ep.available,
                        "healthy": ep.healthy,
                        "ejected": ep.ejected,
                        "in_flight": ep.outstanding,
                    }
                    for ep in rb.group.endpoints
                ],
            }
            for b, rb in r._backends.items()
        }
        if r.dlog is not None:
            out["decision_log"] = r.dlog.writer.health()
        return out

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        for r in self.routes:
            if not any(b.up for b in r._backends.values()):
                return False, f"route '{r.name}' has no healthy backend"
        return True, "ready"

    async def reload_from_file(
        self, actor: str = "reload", reason: str | None = None, *, record: bool = True
    ) -> dict[str, Any]:
        """Re-read the config file and apply it; raises ConfigError and keeps the old config.

        The file is read and validated in a child process (router.config.worker), so a large
        config (or a rejected alias bomb) does not hold up the requests in flight; the parent
        rebuilds it and the routing table a slice at a time and swaps it in at once. The cyclic
        garbage collector waits meanwhile, and what the reload built is frozen after it (as
        start-up's objects are), so no full collection walks it while requests wait.

        `record=False` (a worker following a reload another worker made and recorded) neither
        audits nor counts it, so one reload of the router is one entry whatever N is."""
        from router.config.worker import load_config_offloaded

        if self.config_path is None:
            raise RuntimeError("this router was not started from a config file")
        collecting = gc.isenabled()
        gc.disable()
        try:
            try:
                new = await load_config_offloaded(self.config_path)
            except Exception:
                if record:
                    self.metrics.config_reload("failure")
                raise
            changes = await self.reload(new, actor=actor, reason=reason, record=record)
        finally:
            if collecting:
                gc.enable()
        if gc.get_freeze_count():
            gc.freeze()
        return changes

    async def reload(
        self,
        new: Config,
        *,
        actor: str = "reload",
        reason: str | None = None,
        record: bool = True,
    ) -> dict[str, Any]:
        """Apply a validated config atomically; unchanged routes keep their engines and state.

        Changed routes get a new engine that restores what the old one persisted, so learned
        statistics and rollout progress carry over where the arms still exist.
        """
        async with self._reload_lock:
            try:
                changes = await self._reload(new)
            except Exception:
                if record:
                    self.metrics.config_reload("failure")
                raise
            if record:
                self.metrics.config_reload("success")
                await self.audit.record("*", "reload", actor, reason, **changes)
            for listener in self.reload_listeners:
                listener(actor, record)
            return changes

    async def _reload(self, new: Config) -> dict[str, Any]:
        old_cfg, old_routes, old_backends = self.config, self.routes, self.backends
        backends: dict[str, BackendRuntime] = {}
        for n, c in new.backends.items():
            prev = old_backends.get(n)
            same = prev is not None and prev.cfg == c and old_cfg.limits == new.limits
            backends[n] = (
                prev if same and prev is not None else BackendRuntime(c, new.limits, self.metrics)
            )
        by_name = {r.name: r for r in old_routes}
        keep: dict[str, RouteRuntime] = {}
        for rc in new.routes:
            prev_route = by_name.get(rc.name)
            if (
                prev_route is not None
                and prev_route.cfg == rc
                and all(backends[b] is old_backends.get(b) for b in rc.backends)
            ):
                keep[rc.name] = prev_route
        # engines of changed routes persist first, so their successors restore the newest state
        for r in old_routes:
            if r.name not in keep:
                await r.engine.stop()
        self.generation += 1
        routes = await self._build_routes(new, backends, keep)
        self.config, self.routes, self.backends = new, routes, backends
        new_names = {r.name for r in routes}
        for r in old_routes:
            if r.name not in new_names:
                self.metrics.forget_route(r.name)
        gone = [b for n, b in old_backends.items() if backends.get(n) is not b]
        for b in gone:
            task = self._health.pop(b.name, None)
            if task is not None:
                task.cancel()
            b.group.close()
            if b.name not in backends:
                self.metrics.forget_backend(b.name)
        self._start_health(b for b in backends.values() if b.name not in self._health)
        before_after = (
            ("listen", old_cfg.listen, new.listen),
            ("admin", old_cfg.admin, new.admin),
            ("state", old_cfg.state, new.state),
        )
        restart = [k for k, was, now in before_after if was != now]
        return {
            "generation": self.generation,
            "added": sorted(new_names - set(by_name)),
            "removed": sorted(set(by_name) - new_names),
            "changed": sorted(n for n in new_names & set(by_name) if n not in keep),
            "unchanged": sorted(keep),
            "backends_changed": sorted(
                n for n in backends if old_backends.get(n) is not backends[n]
            ),
            "restart_required": restart,
        }

    async def _build_routes(
        self, config: Config, backends: dict[str, BackendRuntime], keep: dict[str, RouteRuntime]
    ) -> tuple[RouteRuntime, ...]:
        services = Services(
            config=config,
            store=self.store,
            metrics=self.metrics,
            audit=self.audit,
            backends=config.backends,
            clock=self.clock,
            rng=self.rng,
            http=self.http,
            backend_up=lambda name: name in backends and backends[name].up,
            decider=self.signer,
        )
        routes: list[RouteRuntime] = []
        started: list[Engine] = []
        try:
            loop = asyncio.get_running_loop()
            turn = loop.time()
            for rc in config.routes:
                if loop.time() - turn > BUILD_SLICE:
                    # a config with many routes: let requests in flight run meanwhile (the
                    # new table is swapped in only once it is complete)
                    await asyncio.sleep(0)
                    turn = loop.time()
                kept = keep.get(rc.name)
                if kept is not None:
                    routes.append(kept)
                    continue
                engine = engine_for(rc.policy.kind)(rc, services)
                await engine.start()
                started.append(engine)
                dlog = self._open_log(rc, config)
                routes.append(RouteRuntime(rc, engine, backends, self.metrics, self, dlog))
        except BaseException:
            for e in started:
                await e.stop()
            await self._sync_logs(self.routes)  # close what this failed build opened
            raise
        await self._sync_logs(routes)
        return tuple(routes)

    def _open_log(self, rc: RouteConfig, config: Config) -> RouteLog | None:
        spec = rc.decision_log
        if spec is None or not self._engine_learns(rc):
            return None
        # like the SQLite store: relative to $MODELROUTER_STATE_DIR when set (the image's
        # writable volume; the config may be mounted read-only), else to the config file
        state_dir = os.environ.get(STATE_DIR_ENV)
        base = (
            Path(state_dir)
            if state_dir
            else (self.config_path.resolve().parent if self.config_path else Path.cwd())
        )
        path = str(worker_log_path(base / spec.path, os.environ.get(ENV_WORKER_VAR, "")))
        cur = self._writers.get(path)
        if cur is None or cur[0] != spec:
            writer = DecisionLogWriter(
                path,
                sample_rate=spec.sample_rate,
                rotate_bytes=spec.rotate_size,
                rotate_seconds=spec.rotate_interval,
                retention=spec.retention,
                queue_max=spec.queue,
                clock=self.clock,
            )
            try:
                writer.start()
            except OSError as e:
                raise ValueError(
                    f"route '{rc.name}': decision_log.path {path}: cannot open: {e.strerror or e}"
                ) from None
            self._open_writers[id(writer)] = writer
            self._writers[path] = (spec, writer)
        else:
            writer = cur[1]
        return RouteLog.build(writer, rc.name, rc.policy, config.feedback.missing_reward)

    @staticmethod
    def _engine_learns(rc: RouteConfig) -> bool:
        return rc.policy.kind in ("ab_test", "bandit", "contextual_bandit")

    async def _sync_logs(self, routes: Iterable[RouteRuntime]) -> None:
        """Point metrics and feedback at the live routes' logs; close writers nobody uses."""
        live = {r.name: r.dlog for r in routes if r.dlog is not None}
        for name in set(self._route_logs) - set(live):
            self.metrics.watch_decision_log(name, None)
        for name, rl in live.items():
            self.metrics.watch_decision_log(name, rl.writer)
        self._route_logs = live
        used = {id(rl.writer) for rl in live.values()}
        self._writers = {p: sw for p, sw in self._writers.items() if id(sw[1]) in used}
        for key in [k for k in self._open_writers if k not in used]:
            await asyncio.to_thread(self._open_writers.pop(key).close)

    # ---- health -----------------------------------------------------------------------------

    def _start_health(self, backends: Iterable[BackendRuntime]) -> None:
        for b in backends:
            if b.cfg.health is not None:
                self._health[b.name] = asyncio.create_task(
                    self._check_loop(b), name=f"health:{b.name}"
                )

    async def _check_loop(self, b: BackendRuntime) -> None:
        """Check every endpoint of `b` each interval, all at once."""
        assert b.cfg.health is not None
        path = f"{b.cfg.base_path}{b.cfg.health.path}"
        timeout = aiohttp.ClientTimeout(total=min(b.cfg.timeout, b.cfg.health.interval, 5.0))
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            results = await asyncio.gather(
                *(
                    self._check_one(b, f"http://{ep.address}{path}", timeout)
                    for ep in b.group.endpoints
                )
            )
            now = loop.time()
            for ep, ok in zip(b.group.endpoints, results, strict=True):
                b.group.health(ep, ok, now, started)
            await asyncio.sleep(b.cfg.health.interval)

    async def _check_one(self, b: BackendRuntime, url: str, timeout: aiohttp.ClientTimeout) -> bool:
        try:
            assert self.http is not None
            async with self.http.get(url, timeout=timeout) as resp:
                await resp.read()
                return resp.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        except asyncio.CancelledError:
            raise
        except Exception:  # never let a health check take the router down
            log.exception("health check of backend '%s' failed unexpectedly", b.name)
            return False


if TYPE_CHECKING:

    def _provides_the_seam(rt: Runtime, route: RouteRuntime) -> tuple[Router, Route]:
        """mypy checks here that the runtime is what the data plane needs (dataplane.seam)."""
        return rt, route
