"""The admin listener (aiohttp): metrics, health, route status/actions, reload, audit, dashboard.

`/metrics`, `/healthz`, `/readyz` and the `/dashboard` page are open; `/admin/*` and the
dashboard's data (`/dashboard/data`: route status and the audit log) need the bearer token.
With no token configured, reads stay open and every mutating call answers 403 saying how to set one.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from policies.spec import Config, RouteConfig, WeightedSpec, policy_backends
from router.decisionlog import snapshot_doc
from router.errors import ActionError

__all__ = ["ACTIONS", "RUNTIME_KEY", "ActionError", "AdminRuntime", "create_admin_app"]

log = logging.getLogger("modelrouter.admin")

ACTIONS: tuple[str, ...] = ("promote", "abort", "pause", "resume", "switch", "retry")
DASHBOARD = Path(__file__).parent / "static" / "dashboard.html"
DEFAULT_TOKEN_ENV = "MODELROUTER_ADMIN_TOKEN"
AUDIT_MAX = 10_000
DASHBOARD_AUDIT = 100


class _Engine(Protocol):
    async def action(
        self, name: str, reason: str | None, actor: str, params: Mapping[str, Any]
    ) -> dict[str, Any]: ...


class _Route(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def cfg(self) -> RouteConfig: ...

    @property
    def engine(self) -> _Engine: ...


class _Store(Protocol):
    async def audit_list(
        self, limit: int = 200, route: str | None = None
    ) -> list[dict[str, Any]]: ...


class _Audit(Protocol):
    async def record(
        self, route: str | None, action: str, actor: str, reason: str | None, **details: Any
    ) -> object: ...


class _Metrics(Protocol):
    def render(self) -> bytes: ...


class AdminRuntime(Protocol):
    """What the admin API needs of `router.runtime.Runtime`."""

    @property
    def config(self) -> Config: ...

    @property
    def routes(self) -> Sequence[_Route]: ...

    @property
    def metrics(self) -> _Metrics: ...

    @property
    def store(self) -> _Store: ...

    @property
    def audit(self) -> _Audit: ...

    @property
    def draining(self) -> bool: ...

    def route(self, name: str) -> _Route: ...

    def status(self, name: str) -> dict[str, Any]: ...

    def ready(self) -> tuple[bool, str]: ...

    async def reload_from_file(
        self, actor: str = "reload", reason: str | None = None
    ) -> dict[str, Any]: ...


RUNTIME_KEY: web.AppKey[AdminRuntime] = web.AppKey("runtime")
TOKEN_KEY: web.AppKey[str | None] = web.AppKey("admin_token")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_admin_app(runtime: AdminRuntime, *, token: str | None) -> web.Application:
    """The admin application over `runtime`; `token` None or "" makes mutating calls answer 403."""
    app = web.Application(middlewares=[_errors_as_json, _auth])
    app[RUNTIME_KEY] = runtime
    app[TOKEN_KEY] = token or None
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/admin/routes", _routes)
    app.router.add_get("/admin/routes/{route}", _route_status)
    app.router.add_get("/admin/routes/{route}/snapshot", _snapshot)
    app.router.add_post("/admin/routes/{route}/{action}", _route_action)
    app.router.add_put("/admin/routes/{route}/weights", _weights)
    app.router.add_post("/admin/reload", _reload)
    app.router.add_get("/admin/audit", _audit)
    app.router.add_get("/dashboard", _dashboard)
    app.router.add_get("/dashboard/data", _dashboard_data)
    return app


# ---- middlewares -----------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as `{"error": ...}` JSON; an unexpected one is logged, never raised."""
    try:
        return await handler(request)
    except ActionError as e:
        return _error(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(
            {"error": f"{e.reason}: {request.method} {request.path}"},
            status=e.status,
            headers={k: v for k, v in e.headers.items() if k in ("Allow", "WWW-Authenticate")},
        )
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error, see the router's log"}, status=500)


def _token_env(runtime: AdminRuntime) -> str:
    try:
        return runtime.config.admin.token_env
    except AttributeError:
        return DEFAULT_TOKEN_ENV


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if not path.startswith("/admin/") and path != "/dashboard/data":
        return await handler(request)
    token = request.app[TOKEN_KEY]
    if token is None:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return await handler(request)
        env = _token_env(request.app[RUNTIME_KEY])
        return web.json_response(
            {
                "error": "admin actions are disabled because no admin token is configured: "
                f"set {env} in the router's environment, restart it, and pass the token as "
                "'Authorization: Bearer <token>' (the CLI reads it from "
                f"{DEFAULT_TOKEN_ENV})"
            },
            status=403,
        )
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # compare_digest on bytes: constant time whatever the length or content of `given`
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        what = "missing" if not header else "wrong"
        return web.json_response(
            {"error": f"{what} admin token: send 'Authorization: Bearer <token>'"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="modelrouter"'},
        )
    return await handler(request)


# ---- open endpoints ---------------------------------------------------------------------------


async def _metrics(request: web.Request) -> web.Response:
    from router.metrics import CONTENT_TYPE

    body = request.app[RUNTIME_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    if runtime.draining:
        return web.json_response({"ready": False, "reason": "draining"}, status=503)
    ok, reason = runtime.ready()
    # a store failing at run time (router.store.health.MonitoredStore): proxying goes on, but
    # this replica cannot persist rollout steps, rewards or audit entries
    problem: str | None = getattr(runtime.store, "problem", None)
    if ok and problem is not None:
        where = getattr(runtime.store, "where", "")
        ok, reason = False, f"state store {where} failing: {problem}"
    return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)


async def _dashboard(request: web.Request) -> web.Response:
    try:
        page = DASHBOARD.read_bytes()
    except OSError:
        return _error(404, f"the dashboard page is not installed ({DASHBOARD} is missing)")
    return web.Response(
        body=page, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"}
    )


async def _dashboard_data(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.json_response(
        {
            "ts": time.time(),
            "routes": [runtime.status(r.name) for r in runtime.routes],
            "audit": await runtime.store.audit_list(DASHBOARD_AUDIT),
        },
        headers={"Cache-Control": "no-store"},
    )


# ---- /admin -----------------------------------------------------------------------------------


def _route_or_404(runtime: AdminRuntime, name: str) -> _Route:
    try:
        return runtime.route(name)
    except KeyError:
        known = [r.name for r in runtime.routes]
        raise ActionError(404, f"unknown route '{name}'; routes: {known}") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {}; anything else is a 400."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ActionError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ActionError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _reason(body: Mapping[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ActionError(400, f"'reason' must be a string, got {json.dumps(reason)}")
    return reason or None


async def _routes(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return web.json_response([runtime.status(r.name) for r in runtime.routes])


async def _route_status(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    route = _route_or_404(runtime, request.match_info["route"])
    return web.json_response(runtime.status(route.name))


async def _snapshot(request: web.Request) -> web.Response:
    """The route's policy and learned state, frozen: a `replay --policy` / `warm_start:` file."""
    runtime = request.app[RUNTIME_KEY]
    route = _route_or_404(runtime, request.match_info["route"])
    engine: Any = route.engine
    policy = getattr(engine, "policy", None)
    spec = route.cfg.policy
    clock = getattr(runtime, "clock", time.time)
    if policy is not None and hasattr(policy, "state") and getattr(engine, "learns", False):
        doc = snapshot_doc(route.name, spec, policy.state(), clock())
    elif spec.kind == "weighted":
        shares = engine.shares()
        doc = snapshot_doc(route.name, WeightedSpec(dict(shares)), None, clock())
    else:
        raise ActionError(
            409,
            f"route '{route.name}' ({spec.kind}) has no learned model to snapshot; "
            "write its split as a kind: weighted policy to evaluate it",
        )
    return web.json_response(doc)


async def _route_action(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ActionError(
            404, f"unknown action '{action}'; actions: {', '.join(ACTIONS)} (POST), weights (PUT)"
        )
    route = _route_or_404(runtime, request.match_info["route"])
    body = await _json_body(request)
    reason = _reason(body)
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise ActionError(400, f"'full' must be true or false, got {json.dumps(full)}")
    params = {k: v for k, v in body.items() if k != "reason"}
    return await _act(runtime, route, action, reason, params)


async def _act(
    runtime: AdminRuntime, route: _Route, action: str, reason: str | None, params: dict[str, Any]
) -> web.Response:
    # the engine records the action in the audit log itself, next to automatic transitions;
    # an ActionError it raises leaves through _errors_as_json like any other
    await route.engine.action(action, reason, "admin", params)
    return web.json_response(runtime.status(route.name))


async def _weights(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    route = _route_or_404(runtime, request.match_info["route"])
    body = await _json_body(request)
    reason = _reason(body)
    weights = _valid_weights(body, route)
    return await _act(runtime, route, "weights", reason, {"weights": weights})


def _valid_weights(body: Mapping[str, Any], route: _Route) -> dict[str, float]:
    example = '{"weights": {"backend": 70, "other": 30}}'
    if set(body) - {"weights", "reason"}:
        extra = sorted(set(body) - {"weights", "reason"})
        raise ActionError(400, f"unknown key(s) {extra}; allowed: weights, reason")
    raw = body.get("weights")
    if not isinstance(raw, dict) or not raw:
        raise ActionError(400, f"body must be {example}")
    allowed = policy_backends(route.cfg.policy)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ActionError(
            400,
            f"unknown backend(s) {unknown} for route '{route.name}'; allowed: {list(allowed)}",
        )
    weights: dict[str, float] = {}
    for name, w in raw.items():
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ActionError(
                400, f"weights.{name}: must be a non-negative number, got {json.dumps(w)}"
            )
        weights[name] = float(w)
    if sum(weights.values()) <= 0:
        raise ActionError(400, "weights must not all be zero")
    return weights


async def _reload(request: web.Request) -> web.Response:
    from router.config import ConfigError

    runtime = request.app[RUNTIME_KEY]
    body = await _json_body(request)
    reason = _reason(body)
    try:
        # the runtime counts config_reloads_total and audits a successful reload
        changes = await runtime.reload_from_file(actor="admin", reason=reason)
    except ConfigError as e:
        await runtime.audit.record("*", "reload_rejected", "admin", reason, errors=len(e.errors))
        return web.json_response(
            {
                "error": f"config rejected ({len(e.errors)} errors); the old config keeps serving",
                "errors": list(e.errors),
            },
            status=400,
        )
    return web.json_response(changes)


async def _audit(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    raw_limit = request.query.get("limit", "200")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= AUDIT_MAX:
        raise ActionError(400, f"limit must be an integer 1..{AUDIT_MAX}, got '{raw_limit}'")
    route = request.query.get("route") or None
    return web.json_response(await runtime.store.audit_list(limit, route))
