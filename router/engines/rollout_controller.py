"""The async driver of canary and blue-green rollouts: a timer per route that gathers observations,
runs the pure step of `policies.rollout`, persists the result, then applies weights, audit,
metrics and webhooks. Also infra validation, Prometheus queries and webhook delivery.

`router/engines/rollout.py` puts the Engine seam over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import aiohttp

from policies import rollout
from policies.rollout import ArmObs, Event, Observations, Phase, PromResult, RolloutState
from policies.spec import (
    BackendConfig,
    BlueGreenSpec,
    CanarySpec,
    ValidateRequest,
    ValidateSpec,
    Webhook,
)
from policies.weighted import WeightedPolicy
from router.engines.base import ActionError, Services

log = logging.getLogger("modelrouter.rollout")

RolloutSpec = CanarySpec | BlueGreenSpec
Transition = tuple[RolloutState, list[Event]]

# latency histogram: fixed log-spaced buckets, 1 ms .. ~20 min, 25% wide -> p99 within 25%
_LAT_MIN = 0.001
_LAT_FACTOR = 1.25
_LOG_FACTOR = math.log(_LAT_FACTOR)
_LAT_BUCKETS = 64
_LAT_UPPER = tuple(_LAT_MIN * _LAT_FACTOR**i for i in range(_LAT_BUCKETS))

WEBHOOK_ATTEMPTS = 5
WEBHOOK_TIMEOUT = 5.0
PROMETHEUS_TIMEOUT = 5.0
BODY_PREVIEW = 200


class Window:
    """Per-arm counters of one analysis window; `observe` is O(1) in time and memory."""

    __slots__ = ("errors", "hist", "requests", "reward_sq_sum", "reward_sum", "rewards")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.hist = [0] * _LAT_BUCKETS
        self.rewards = 0
        self.reward_sum = 0.0
        self.reward_sq_sum = 0.0

    def observe(self, status: int, latency: float, error: str | None) -> None:
        self.requests += 1
        if status >= 500 or error is not None:
            self.errors += 1
        if latency <= _LAT_MIN:
            i = 0
        else:
            i = min(_LAT_BUCKETS - 1, int(math.log(latency / _LAT_MIN) / _LOG_FACTOR) + 1)
        self.hist[i] += 1

    def reward(self, r: float) -> None:
        self.rewards += 1
        self.reward_sum += r
        self.reward_sq_sum += r * r

    def p99(self) -> float | None:
        """Upper edge of the bucket holding the 99th percentile (a slight over-estimate)."""
        n = sum(self.hist)
        if n == 0:
            return None
        rank = math.ceil(0.99 * n)
        seen = 0
        for i, c in enumerate(self.hist):
            seen += c
            if seen >= rank:
                return _LAT_UPPER[i]
        return _LAT_UPPER[-1]

    def obs(self) -> ArmObs:
        return ArmObs(
            self.requests,
            self.errors,
            self.p99(),
            self.rewards,
            self.reward_sum,
            self.reward_sq_sum,
        )


# ---- I/O helpers ---------------------------------------------------------------------------------


def _backend_url(b: BackendConfig, path: str) -> str:
    if not path.startswith("/"):
        path = "/" + path
    return f"{b.scheme}://{b.host}:{b.port}{b.base_path}{path}"


def _default_requests(b: BackendConfig) -> tuple[ValidateRequest, ...]:
    return (ValidateRequest("GET", b.health.path if b.health else "/"),)


async def _one_request(
    http: aiohttp.ClientSession, b: BackendConfig, r: ValidateRequest, timeout: float, rewrite: bool
) -> tuple[bool, str]:
    path = r.path
    if rewrite and b.rewrite is not None and path.startswith(b.rewrite.from_):
        path = b.rewrite.to + path[len(b.rewrite.from_) :]
    url = _backend_url(b, path)
    label = f"{r.method} {r.path}"
    body = None if r.body is None else json.dumps(r.body).encode()
    headers = dict(r.headers)
    if body is not None:
        headers.setdefault("content-type", "application/json")
    t0 = time.monotonic()
    try:
        async with http.request(
            r.method,
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            raw = await resp.content.read(BODY_PREVIEW)
            ms = (time.monotonic() - t0) * 1000
            if resp.status != r.expect_status:
                text = raw.decode("utf-8", "replace")
                return False, (
                    f"{label} -> FAIL: status {resp.status}, expected {r.expect_status}; "
                    f"body: {text!r}"
                )
            return True, f"{label} -> {resp.status} ({ms:.0f}ms)"
    except TimeoutError:
        return False, f"{label} -> FAIL: no answer within {timeout:g}s"
    except aiohttp.ClientError as e:
        return False, f"{label} -> FAIL: {type(e).__name__}: {e}"


async def validate_backend(
    http: aiohttp.ClientSession, backend: BackendConfig, spec: ValidateSpec | None
) -> tuple[bool, list[str]]:
    """Infra validation: every request must answer as expected within `attempts` tries."""
    spec = spec or ValidateSpec(requests=())
    configured = bool(spec.requests)
    requests = spec.requests or _default_requests(backend)
    results: list[str] = []
    for r in requests:
        line = ""
        for attempt in range(max(1, spec.attempts)):
            ok, line = await _one_request(http, backend, r, spec.timeout, configured)
            if ok:
                break
            if attempt + 1 < spec.attempts:
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        else:
            results.append(f"{line} (after {spec.attempts} attempts)")
            return False, results
        results.append(line)
    return True, results


async def query_prometheus(
    http: aiohttp.ClientSession, url: str, query: str, timeout: float = PROMETHEUS_TIMEOUT
) -> PromResult:
    """One instant query; any error, an empty answer or several series is inconclusive."""
    endpoint = f"{url.rstrip('/')}/api/v1/query?query={quote(query, safe='')}"
    try:
        async with http.get(endpoint, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            text = await resp.text()
            try:
                doc = json.loads(text)
            except ValueError:
                return PromResult(query, None, f"HTTP {resp.status}, not JSON: {text[:100]!r}")
    except TimeoutError:
        return PromResult(query, None, f"no answer from {url} within {timeout:g}s")
    except aiohttp.ClientError as e:
        return PromResult(query, None, f"cannot reach {url}: {type(e).__name__}: {e}")
    return parse_prometheus(query, doc)


def parse_prometheus(query: str, doc: Any) -> PromResult:
    """Read a /api/v1/query answer (vector or scalar) into one value."""
    if not isinstance(doc, dict) or doc.get("status") != "success":
        err = doc.get("error") if isinstance(doc, dict) else None
        return PromResult(query, None, f"query failed: {err or doc!r}"[:300])
    data = doc.get("data")
    if not isinstance(data, dict):
        return PromResult(query, None, "answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "scalar":
            value = float(result[1])  # type: ignore[index]
        elif kind == "vector":
            if not result:
                return PromResult(query, None, "empty result")
            if len(result) > 1:
                return PromResult(
                    query, None, f"{len(result)} series; aggregate the query to one (e.g. sum)"
                )
            value = float(result[0]["value"][1])
        else:
            return PromResult(query, None, f"unsupported result type {kind!r}")
    except (TypeError, ValueError, KeyError, IndexError) as e:
        return PromResult(query, None, f"unreadable value: {e}")
    if not math.isfinite(value):
        return PromResult(query, None, f"value is {value}")
    return PromResult(query, value)


# ---- the controller ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Roles:
    stable: str  # canary stable / blue-green configured active
    candidate: str  # canary candidate / blue-green preview


class RolloutController:
    """Owns one route's rollout state, its WeightedPolicy and its timers."""

    def __init__(self, route: str, spec: RolloutSpec, services: Services) -> None:
        self.route = route
        self.spec = spec
        self.services = services
        self._step_fn: Callable[[RolloutState, Observations, float], Transition]
        if isinstance(spec, CanarySpec):
            cs = spec
            self.roles = _Roles(cs.stable, cs.candidate)
            self._step_fn = lambda state, obs, now: rollout.step(state, obs, cs, now)
        else:
            bg = spec
            self.roles = _Roles(bg.active, bg.preview)
            self._step_fn = lambda state, obs, now: rollout.blue_green_step(state, obs, bg, now)
        self.key = f"rollout:{route}"
        self.state = rollout.initial_state(spec, services.clock())
        self.policy = WeightedPolicy(rollout.weights_for(self.state, spec), services.rng)
        self.windows: dict[str, Window] = {
            self.roles.stable: Window(),
            self.roles.candidate: Window(),
        }
        self.lifetime: dict[str, list[int]] = {
            self.roles.stable: [0, 0],
            self.roles.candidate: [0, 0],
        }
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._validation: asyncio.Task[None] | None = None
        self._own_http: aiohttp.ClientSession | None = None
        self.tick = max(0.02, min(spec.interval / 10, 1.0))
        self.last_sequential: str | None = None

    # ---- identity: a stored state belongs to this rollout only if its backends are the same ----

    def identity(self) -> dict[str, str]:
        return {
            "kind": self.spec.kind,
            "stable": self.roles.stable,
            "candidate": self.roles.candidate,
        }

    # ---- lifecycle ----

    async def start(self) -> None:
        restored = await self._load()
        if restored is None:
            await self._persist(self.state)
        else:
            self.state = restored
        self._apply(self.state, reset_window=True)
        self._timer = asyncio.create_task(self._run(), name=f"rollout:{self.route}")
        if self.state.phase is Phase.VALIDATING:
            self._validation = asyncio.create_task(self._validate(), name=f"validate:{self.route}")

    async def _load(self) -> RolloutState | None:
        doc = await self.services.store.get(self.key)
        if doc is None:
            return None
        if not isinstance(doc, dict) or doc.get("identity") != self.identity():
            log.info("route %s: a new rollout (stored state is for other backends)", self.route)
            return None
        try:
            state = RolloutState.from_json(doc["state"])
        except (KeyError, TypeError, ValueError) as e:
            log.error("route %s: %s; starting the rollout again from validation", self.route, e)
            return None
        if isinstance(self.spec, CanarySpec) and state.step >= len(self.spec.steps):
            # the config's steps changed under a running rollout: stay at its last step
            state = replace(state, step=len(self.spec.steps) - 1)
        return state

    async def stop(self) -> None:
        for t in (self._timer, self._validation, *self._tasks):
            if t is not None:
                t.cancel()
        for t in (self._timer, self._validation, *self._tasks):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self._timer = self._validation = None
        self._tasks.clear()
        async with self._lock:
            try:
                await self._persist(self.state)
            except Exception as e:  # the last write failing must not break shutdown
                log.error("route %s: cannot persist rollout state on stop: %s", self.route, e)
        if self._own_http is not None:
            await self._own_http.close()
            self._own_http = None

    def _http(self) -> aiohttp.ClientSession:
        if self.services.http is not None:
            return self.services.http
        if self._own_http is None:  # before the runtime opened the shared session
            self._own_http = aiohttp.ClientSession()
        return self._own_http

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("route %s: rollout tick failed; retrying next tick", self.route)

    # ---- the hot path ----

    def observe(self, arm: str, status: int, latency: float, error: str | None) -> None:
        w = self.windows.get(arm)
        if w is None:
            return
        w.observe(status, latency, error)
        life = self.lifetime[arm]
        life[0] += 1
        if status >= 500 or error is not None:
            life[1] += 1

    def reward(self, arm: str, reward: float) -> None:
        w = self.windows.get(arm)
        if w is not None:
            w.reward(reward)

    def admits(self, backend: str) -> bool:
        """Whether an override may send a request to this backend now."""
        if backend != self.roles.candidate:
            return True
        return self.state.blessed and self.state.phase is not Phase.ROLLED_BACK

    # ---- driving ----

    def observations(self, prometheus: Sequence[PromResult] = ()) -> Observations:
        return Observations(
            self.windows[self.roles.stable].obs(),
            self.windows[self.roles.candidate].obs(),
            tuple(prometheus),
        )

    async def step(self) -> None:
        """One tick: query Prometheus if the window closed, then advance the pure state."""
        seen = self.state
        if seen.phase is not Phase.PROGRESSING:
            return
        now = self.services.clock()
        prom: list[PromResult] = []
        if rollout.analysis_due(seen, self.spec, now):
            prom = await self._query_all()
        async with self._lock:
            if self.state is not seen:
                return  # an action or another tick moved on while we queried
            obs = self.observations(prom)
            new, events = self._step_fn(seen, obs, now)
            if self.spec.analysis is not None and self.spec.analysis.compare == "sequential":
                t = seen.totals.plus(obs)
                self.last_sequential = rollout.sequential_error_test(
                    t.stable_requests,
                    t.stable_errors,
                    t.candidate_requests,
                    t.candidate_errors,
                    self.spec.analysis.alpha,
                )[1]
            if new is not seen:
                await self._commit(new, events, "controller", None)

    async def _query_all(self) -> list[PromResult]:
        analysis = self.spec.analysis
        if analysis is None:
            return []
        checks = [c for c in analysis.checks if c.metric == "prometheus"]
        if not checks:
            return []

        async def one(query: str, url: str | None) -> PromResult:
            if not url:
                return PromResult(query, None, "no prometheus url configured for this check")
            return await query_prometheus(self._http(), url, query)

        return list(await asyncio.gather(*(one(c.query or "", c.url) for c in checks)))

    async def _validate(self) -> None:
        backend = self.services.backends.get(self.roles.candidate)
        if backend is None:
            ok, results = False, [f"backend {self.roles.candidate!r} is not configured -> FAIL"]
        else:
            try:
                ok, results = await validate_backend(self._http(), backend, self.spec.validate)
            except Exception as e:  # never leave a rollout stuck in validating on a bug
                log.exception("route %s: infra validation crashed", self.route)
                ok, results = False, [f"validation -> FAIL: {type(e).__name__}: {e}"]
        async with self._lock:
            now = self.services.clock()
            new, events = rollout.validated(
                self.state, self.spec, now, self.roles.candidate, ok, results
            )
            if new is not self.state:
                await self._commit(new, events, "controller", None, results=results)

    async def act(
        self,
        name: str,
        fn: Callable[[RolloutState], Transition],
        actor: str,
        reason: str | None,
    ) -> None:
        """Apply an admin action (pure `fn`) under the lock; TransitionError -> 409."""
        async with self._lock:
            try:
                new, events = fn(self.state)
            except rollout.TransitionError as e:
                raise ActionError(409, f"{name} on route '{self.route}': {e}") from None
            await self._commit(new, events, actor, reason, action=name)

    # ---- commit: persist first, then weights, metrics, audit, webhooks ----

    async def _persist(self, state: RolloutState) -> None:
        await self.services.store.put(
            self.key, {"identity": self.identity(), "state": state.to_json()}
        )

    async def _commit(
        self,
        new: RolloutState,
        events: list[Event],
        actor: str,
        reason: str | None,
        action: str | None = None,
        **details: Any,
    ) -> None:
        old = self.state
        try:
            await self._persist(new)
        except Exception as e:
            if new.phase is not Phase.ROLLED_BACK:
                raise  # stay where we were; the next tick tries again
            # rolling back is the safe direction: apply it even if it is not durable yet
            log.error("route %s: rollback not persisted (%s); applying it anyway", self.route, e)
        self.state = new
        self._apply(new, reset_window=new.window_started_at != old.window_started_at)
        shares = self.policy.shares()
        for ev in events:
            name = action or ev.kind.value
            await self._audit(name, actor, reason if action else ev.reason, ev, shares, details)
            self._fire_webhooks(ev, shares)

    async def _audit(
        self,
        name: str,
        actor: str,
        reason: str | None,
        ev: Event,
        shares: dict[str, float],
        details: Mapping[str, Any],
    ) -> None:
        try:
            await self.services.audit.record(
                self.route,
                name,
                actor,
                reason,
                **{"from": ev.from_phase.value, "to": ev.to_phase.value},
                step=ev.step,
                shares=shares,
                transition=ev.reason,
                **details,
            )
        except Exception as e:
            log.error("route %s: audit entry not stored: %s", self.route, e)

    def _apply(self, state: RolloutState, reset_window: bool) -> None:
        self.policy.set_weights(rollout.weights_for(state, self.spec))
        if reset_window:
            self.windows = {self.roles.stable: Window(), self.roles.candidate: Window()}
        m = self.services.metrics
        m.set_phase(self.route, state.phase.value)
        m.set_step(self.route, state.step)
        for backend, share in self.policy.shares().items():
            m.set_share(self.route, backend, share)

    # ---- webhooks ----

    def _fire_webhooks(self, ev: Event, shares: dict[str, float]) -> None:
        hooks: Sequence[Webhook] = self.spec.webhooks
        names = ev.names
        payload = {
            "route": self.route,
            "from": ev.from_phase.value,
            "to": ev.to_phase.value,
            "reason": ev.reason,
            "step": ev.step,
            "shares": shares,
            "ts": self.services.clock(),
        }
        for hook in hooks:
            if hook.on and not (hook.on & names):
                continue
            t = asyncio.create_task(self._deliver(hook.url, payload))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        delay = 0.5
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                async with self._http().post(
                    url, json=payload, timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)
                ) as resp:
                    if resp.status < 300:
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                problem = f"{type(e).__name__}: {e}"
            log.warning(
                "route %s: webhook %s attempt %d/%d failed: %s",
                self.route,
                url,
                attempt,
                WEBHOOK_ATTEMPTS,
                problem,
            )
            if attempt < WEBHOOK_ATTEMPTS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
        log.error("route %s: webhook %s given up after %d attempts", self.route, url, attempt)
