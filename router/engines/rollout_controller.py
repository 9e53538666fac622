"""The async driver of canary and blue-green rollouts: a timer per route that gathers observations,
runs the pure step of `policies.rollout`, persists the result, then applies weights, audit,
metrics and webhooks. Also infra validation, Prometheus queries and webhook delivery.

One driver per rollout wherever it runs: every process (worker or replica) has a controller per
rollout route, but only the holder of the lease `rollout:{route}` in the shared store drives it
(validation, analysis, steps). The rollout state is a versioned document: every process polls
its version each tick and follows it; every write (a step by the leader, fenced by its lease
token, or an admin action on any process) is a compare-and-set on the version, so nobody
overwrites a newer state, and only the process whose write succeeded records the audit entry
and fires the webhooks. Each process adds its analysis-window counters to the store as its own
part; the leader judges the sum.

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
from policies.checks import LAT_BUCKETS, latency_bucket, percentile
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
from router.errors import ModelrouterError
from router.store.base import Fence

log = logging.getLogger("modelrouter.rollout")

RolloutSpec = CanarySpec | BlueGreenSpec
Transition = tuple[RolloutState, list[Event]]

WEBHOOK_ATTEMPTS = 5
WEBHOOK_TIMEOUT = 5.0
PROMETHEUS_TIMEOUT = 5.0
BODY_PREVIEW = 200
PROBE_TIMEOUT = 2.0  # a mid-rollout probe of a candidate without traffic
FOLLOW = 0.25  # seconds between reads of the shared state's version
ACTION_ATTEMPTS = 20  # compare-and-set retries of an admin action racing other writers
_STATUSES = 600


class Window:
    """Per-arm counters of one analysis window; `observe` is O(1) in time and memory."""

    __slots__ = (
        "codes",
        "errors",
        "hist",
        "requests",
        "reward_sq_sum",
        "reward_sum",
        "rewards",
        "transport",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0  # 5xx and transport errors
        self.transport = 0  # no answer from the backend
        self.codes = [0] * _STATUSES
        self.hist = [0] * LAT_BUCKETS
        self.rewards = 0
        self.reward_sum = 0.0
        self.reward_sq_sum = 0.0

    def observe(self, status: int, latency: float, error: str | None) -> None:
        self.requests += 1
        if error is not None:
            self.transport += 1
            self.errors += 1
        else:
            if status >= 500:
                self.errors += 1
            if 0 <= status < _STATUSES:
                self.codes[status] += 1
        self.hist[latency_bucket(latency)] += 1

    def reward(self, r: float) -> None:
        self.rewards += 1
        self.reward_sum += r
        self.reward_sq_sum += r * r

    def p99(self) -> float | None:
        """Upper edge of the bucket holding the 99th percentile (a slight over-estimate)."""
        return percentile(self.hist, 0.99)

    def statuses(self) -> dict[int, int]:
        return {code: n for code, n in enumerate(self.codes) if n}

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.requests,
            "e": self.errors,
            "t": self.transport,
            "c": {str(code): n for code, n in enumerate(self.codes) if n},
            "h": {str(i): n for i, n in enumerate(self.hist) if n},
            "r": self.rewards,
            "rs": self.reward_sum,
            "rq": self.reward_sq_sum,
        }

    def add_json(self, d: Mapping[str, Any]) -> None:
        """Add another process's counters of the same window (a part in the store)."""
        self.requests += int(d["n"])
        self.errors += int(d["e"])
        self.transport += int(d["t"])
        for code, n in d["c"].items():
            if 0 <= int(code) < _STATUSES:
                self.codes[int(code)] += int(n)
        for i, n in d["h"].items():
            if 0 <= int(i) < LAT_BUCKETS:
                self.hist[int(i)] += int(n)
        self.rewards += int(d["r"])
        self.reward_sum += float(d["rs"])
        self.reward_sq_sum += float(d["rq"])

    def add(self, other: Window) -> None:
        self.add_json(other.to_json())

    def obs(self) -> ArmObs:
        return ArmObs(
            self.requests,
            self.errors,
            self.p99(),
            self.rewards,
            self.reward_sum,
            self.reward_sq_sum,
            tuple(self.hist),
            tuple(self.statuses().items()),
            self.transport,
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
    """One route's rollout in this process: follows the shared state, drives it while leading."""

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
        self.window_key = f"rollout:{route}:window"
        self.node = services.node
        self.lease_ttl = services.config.state.lease
        self.version = 0  # of the stored state this process follows
        self.token: int | None = None  # fencing token while this process drives the rollout
        self.foreign = False  # the store holds a rollout of another config (other backends)
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
        self._flushed: tuple[float, int, int] | None = None
        self._unpersisted = False
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._validation: asyncio.Task[None] | None = None
        self._own_http: aiohttp.ClientSession | None = None
        # the lease is renewed every tick: a few renewals fit in one lease time
        self.tick = max(0.02, min(spec.interval / 10, 1.0, self.lease_ttl / 4))
        self.last_sequential: str | None = None

    @property
    def leading(self) -> bool:
        return self.token is not None

    # ---- identity: a stored state belongs to this rollout only if its backends are the same ----

    def identity(self) -> dict[str, str | None]:
        """Kind, backends, and the version and address of the new side(s): a new version or
        address is a new rollout (Argo's new revision). Blue-green: both sides can be new."""
        ident: dict[str, str | None] = {
            "kind": self.spec.kind,
            "stable": self.roles.stable,
            "candidate": self.roles.candidate,
        }
        roles = [("candidate", self.roles.candidate)]
        if self.spec.kind == "blue_green":
            roles.append(("stable", self.roles.stable))
        for role, name in roles:
            b = self.services.backends.get(name)
            ident[f"{role}_version"] = b.version if b else None
            ident[f"{role}_address"] = f"{b.scheme}://{b.host}:{b.port}{b.base_path}" if b else None
        return ident

    def _state_of(self, doc: Any) -> RolloutState | None:
        """The stored state if it is this rollout's, else None (another config's, unreadable)."""
        if not isinstance(doc, dict):
            return None
        stored, mine = doc.get("identity"), self.identity()
        if not isinstance(stored, dict):
            return None
        # a state stored before identities carried versions: same backends, same rollout
        legacy = {"kind", "stable", "candidate"}
        if stored != mine and not (
            set(stored) == legacy and all(stored[k] == mine[k] for k in legacy)
        ):
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

    def _doc(self, state: RolloutState) -> dict[str, Any]:
        return {"identity": self.identity(), "state": state.to_json()}

    # ---- lifecycle ----

    async def start(self) -> None:
        store = self.services.store
        got = await store.vget(self.key)
        if got is None:
            legacy = await store.get(self.key)  # written before the state was versioned
            state = self._state_of(legacy) if legacy is not None else None
            await self._create(state, 0)
        else:
            version, doc = got
            state = self._state_of(doc)
            if state is None:
                log.info("route %s: a new rollout (stored state is for other backends)", self.route)
                await self._create(None, version)
            else:
                self.version, self.state = version, state
        self._apply(self.state, reset_window=True)
        self._timer = asyncio.create_task(self._run(), name=f"rollout:{self.route}")

    async def _create(self, state: RolloutState | None, over: int) -> None:
        """Store a new rollout (or a legacy state) over version `over`; if another process
        stored one first, follow that instead."""
        now = self.services.clock()
        new = state or rollout.mark(rollout.initial_state(self.spec, now), self.spec, now, "new")
        v = await self.services.store.vput(self.key, self._doc(new), over)
        if v is not None:
            self.version, self.state = v, new
            return
        got = await self.services.store.vget(self.key)
        if got is not None:
            await self._adopt(*got)

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
        store = self.services.store
        async with self._lock:
            try:
                await self._persist_unpersisted()
                if self.token is not None:
                    await store.lease_release(self.key, self.node)  # another takes over now
                    self.token = None
            except Exception as e:  # the store failing must not break shutdown
                log.error("route %s: cannot update the store on stop: %s", self.route, e)
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
        # follow the shared state more often than the tick drives it: an admin action on another
        # process reaches this one within FOLLOW seconds (one cheap version read when unchanged)
        follow = min(self.tick, FOLLOW)
        due = 0.0
        while True:
            await asyncio.sleep(follow)
            try:
                due += follow
                if due + 1e-9 < self.tick:
                    await self.sync()
                    continue
                due = 0.0
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error(
                    "route %s: rollout tick failed (%s: %s); retrying next tick",
                    self.route,
                    type(e).__name__,
                    e,
                    exc_info=not isinstance(e, ModelrouterError),
                )

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

    def inactive(self) -> str:
        """Blue-green: the side not serving now (the preview, or the old side after a switch)."""
        active = self.state.active or self.roles.stable
        return self.roles.candidate if active == self.roles.stable else self.roles.stable

    def override_backend(self, backend: str) -> str:
        """Blue-green: an override naming the configured preview reaches the inactive side,
        whichever colour that is after switches."""
        if self.spec.kind == "blue_green" and backend == self.roles.candidate:
            return self.inactive()
        return backend

    def admits(self, backend: str) -> bool:
        """Whether an override may send a request to this backend now."""
        st = self.state
        if self.spec.kind == "blue_green":
            if backend != self.inactive() or backend == self.roles.stable:
                return True
            return st.blessed and (st.phase is not Phase.ROLLED_BACK or st.kept_ready)
        if backend != self.roles.candidate:
            return True
        return st.blessed and st.phase is not Phase.ROLLED_BACK

    # ---- following the shared state ----

    async def _persist_unpersisted(self) -> None:
        """Store a rollback that was applied while the store failed (unless a newer state won)."""
        if not self._unpersisted:
            return
        v = await self.services.store.vput(self.key, self._doc(self.state), self.version)
        self._unpersisted = False
        if v is not None:
            self.version = v

    async def sync(self) -> None:
        """Adopt a newer stored state (written by the leader or an admin action elsewhere)."""
        got = await self.services.store.vget(self.key, self.version)
        if got is not None:
            async with self._lock:
                await self._adopt(*got)

    async def _adopt(self, version: int, doc: Any) -> None:
        if version <= self.version:
            return
        state = self._state_of(doc)
        self.version = version
        if state is None:
            if not self.foreign:
                log.warning(
                    "route %s: the store holds a rollout of other backends or versions (another "
                    "replica runs a different config); this process follows it again once the "
                    "configs agree: reload the replicas with the same config",
                    self.route,
                )
            self.foreign = True
            return
        self.foreign = False
        old, self.state = self.state, state
        self._apply(state, reset_window=state.window_started_at != old.window_started_at)

    async def _flush(self) -> None:
        """Write this process's window counters as its part, when they changed."""
        w = self.state.window_started_at
        s, c = self.windows[self.roles.stable], self.windows[self.roles.candidate]
        sig = (w, s.requests + s.rewards, c.requests + c.rewards)
        if sig == self._flushed:
            return
        part = {"w": w, "s": s.to_json(), "c": c.to_json()}
        await self.services.store.parts_put(self.window_key, self.node, part)
        self._flushed = sig

    async def _merged(self, prometheus: Sequence[PromResult]) -> Observations:
        """The current window over every process: this one's counters plus the others' parts."""
        merged = {self.roles.stable: Window(), self.roles.candidate: Window()}
        for arm, w in self.windows.items():
            merged[arm].add(w)
        stale: list[str] = []
        parts = await self.services.store.parts_get(self.window_key)
        for node, part in parts.items():
            if node == self.node:
                continue
            try:
                if part["w"] != self.state.window_started_at:
                    stale.append(node)
                    continue
                merged[self.roles.stable].add_json(part["s"])
                merged[self.roles.candidate].add_json(part["c"])
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                log.warning("route %s: unreadable window part of %s: %s", self.route, node, e)
                stale.append(node)
        if stale and rollout.analysis_due(self.state, self.spec, self.services.clock()):
            await self.services.store.parts_drop(self.window_key, stale)
        return Observations(
            merged[self.roles.stable].obs(),
            merged[self.roles.candidate].obs(),
            tuple(prometheus),
        )

    # ---- driving ----

    def observations(self, prometheus: Sequence[PromResult] = ()) -> Observations:
        """This process's own window (status; the leader judges `_merged`)."""
        return Observations(
            self.windows[self.roles.stable].obs(),
            self.windows[self.roles.candidate].obs(),
            tuple(prometheus),
        )

    async def _lease(self) -> bool:
        token = await self.services.store.lease_acquire(self.key, self.node, self.lease_ttl)
        if token != self.token:
            if token is not None:
                log.info("route %s: this process drives the rollout (lease %d)", self.route, token)
            else:
                log.info("route %s: another process drives the rollout now", self.route)
        self.token = token
        return token is not None

    async def step(self) -> None:
        """One tick: follow the stored state; while leading, validate or advance it."""
        if self._unpersisted:
            async with self._lock:
                await self._persist_unpersisted()
        await self.sync()
        seen = self.state
        if self.foreign or seen.phase not in (Phase.VALIDATING, Phase.PROGRESSING):
            self.token = None  # nothing to drive: the lease lapses, a new rollout re-elects
            return
        await self._flush()
        if not await self._lease():
            return
        if seen.phase is Phase.VALIDATING:
            if self._validation is None or self._validation.done():
                self._validation = asyncio.create_task(
                    self._validate(), name=f"validate:{self.route}"
                )
            return
        now = self.services.clock()
        prom: list[PromResult] = []
        due = rollout.analysis_due(seen, self.spec, now)
        sequential = self.spec.analysis is not None and self.spec.analysis.compare == "sequential"
        if due:
            prom = await self._query_all()
        obs = await self._merged(prom) if due or sequential else self.observations(prom)
        if due:
            obs = replace(obs, candidate_down=await self._candidate_down(obs))
        async with self._lock:
            if self.state is not seen:
                return  # an action or another tick moved on while we queried
            new, events = self._step_fn(seen, obs, now)
            if sequential and self.spec.analysis is not None:
                t = seen.totals.plus(obs)
                self.last_sequential = rollout.sequential_error_test(
                    t.stable_requests,
                    t.stable_errors,
                    t.candidate_requests,
                    t.candidate_errors,
                    self.spec.analysis.alpha,
                )[1]
            if new is not seen:
                await self._commit(new, events, "controller", None, fenced=True)

    async def _candidate_down(self, obs: Observations) -> str | None:
        """Why the candidate cannot be judged on its traffic: down by health checks, or (too
        little traffic to judge) failing a probe with the validation requests."""
        name = self.roles.candidate
        if not self.services.backend_up(name):
            return f"candidate {name} is down (failing health checks or ejected)"
        analysis = self.spec.analysis
        backend = self.services.backends.get(name)
        if backend is None or analysis is None or obs.candidate.requests >= analysis.min_requests:
            return None
        requests = self.spec.validate.requests if self.spec.validate else ()
        probe = ValidateSpec(requests=requests, timeout=PROBE_TIMEOUT, attempts=1)
        ok, results = await validate_backend(self._http(), backend, probe)
        if ok:
            return None
        failing = next((r for r in results if "FAIL" in r), results[-1] if results else "")
        return f"candidate {name} fails validation: {failing}"

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

        results = list(await asyncio.gather(*(one(c.query or "", c.url) for c in checks)))
        for r in results:
            if r.error is not None:  # once per analysis window, not per request
                log.warning(
                    "route %s: prometheus check %r is inconclusive: %s",
                    self.route,
                    r.query,
                    r.error,
                )
        return results

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
            if self.state.phase is not Phase.VALIDATING:
                return  # aborted meanwhile
            now = self.services.clock()
            new, events = rollout.validated(
                self.state, self.spec, now, self.roles.candidate, ok, results
            )
            if new is not self.state:
                await self._commit(new, events, "controller", None, fenced=True, results=results)

    async def act(
        self,
        name: str,
        fn: Callable[[RolloutState], Transition],
        actor: str,
        reason: str | None,
    ) -> None:
        """Apply an admin action (pure `fn`) to the newest stored state with compare-and-set,
        whichever process drives the rollout; TransitionError -> 409."""
        for _ in range(ACTION_ATTEMPTS):
            await self.sync()
            async with self._lock:
                if self.foreign:
                    raise ActionError(
                        409,
                        f"{name} on route '{self.route}': the stored rollout is for other "
                        "backends or versions (replicas run different configs); reload this "
                        "router with the current config first",
                    )
                try:
                    new, events = fn(self.state)
                except rollout.TransitionError as e:
                    raise ActionError(409, f"{name} on route '{self.route}': {e}") from None
                if await self._commit(new, events, actor, reason, action=name):
                    return
        raise ActionError(
            503, f"{name} on route '{self.route}': the rollout kept changing under it; try again"
        )

    # ---- commit: compare-and-set first, then weights, metrics, audit, webhooks ----

    async def _commit(
        self,
        new: RolloutState,
        events: list[Event],
        actor: str,
        reason: str | None,
        action: str | None = None,
        fenced: bool = False,
        **details: Any,
    ) -> bool:
        """Store `new` over the version this process follows; False (nothing applied) when
        another process wrote first or, `fenced`, this process no longer holds the lease."""
        if fenced and self.token is None:
            return False
        old = self.state
        now = self.services.clock()
        if events:
            new = rollout.mark(new, self.spec, now, action or events[-1].kind.value)
        fence = Fence(self.key, self.node, self.token) if fenced and self.token else None
        try:
            v = await self.services.store.vput(self.key, self._doc(new), self.version, fence)
        except Exception as e:
            if new.phase is not Phase.ROLLED_BACK:
                raise  # stay where we were; the next tick tries again
            # rolling back is the safe direction: apply it even if it is not durable yet
            log.error("route %s: rollback not persisted (%s); applying it anyway", self.route, e)
            self._unpersisted = True
            v = self.version
        if v is None:
            return False  # another process moved the rollout first: the next sync follows it
        self.version = v
        self.state = new
        self._apply(new, reset_window=new.window_started_at != old.window_started_at)
        shares = self.policy.shares()
        for ev in events:
            name = action or ev.kind.value
            await self._audit(name, actor, reason if action else ev.reason, ev, shares, details)
            self._fire_webhooks(ev, shares)
        return True

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
                node=self.node,
                **details,
            )
        except Exception as e:
            log.error("route %s: audit entry not stored: %s", self.route, e)

    def _apply(self, state: RolloutState, reset_window: bool) -> None:
        self.policy.set_weights(rollout.weights_for(state, self.spec))
        if reset_window:
            self.windows = {self.roles.stable: Window(), self.roles.candidate: Window()}
            self._flushed = None
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
