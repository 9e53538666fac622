"""Admin listener: auth, every endpoint and its errors, over a real Runtime from a config file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import router.admin as admin
from router.admin import create_admin_app
from router.app import close_runtime, open_runtime
from router.config import load_config
from router.runtime import Runtime
from tests.helpers import eventually

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


def config_text(a: float = 90, b: float = 10, port: int = 9) -> str:
    return f"""
version: 1
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
state: {{store: memory}}
backends:
  model-a: {{url: "http://127.0.0.1:{port}", version: 1.0.0}}
  model-b: {{url: "http://127.0.0.1:{port}", version: 1.1.0}}
routes:
  - name: clf
    match: {{path_prefix: /v1/models/clf}}
    policy: {{kind: weighted, weights: {{model-a: {a}, model-b: {b}}}}}
"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    path = tmp_path / "router.yaml"
    path.write_text(config_text())
    rt = await open_runtime(load_config(path), config_path=path)
    yield rt
    await close_runtime(rt)


@pytest.fixture
async def client(aiohttp_client: MakeClient, runtime: Runtime) -> Client:
    return await aiohttp_client(create_admin_app(runtime, token=TOKEN))


@pytest.fixture
async def open_client(aiohttp_client: MakeClient, runtime: Runtime) -> Client:
    """An admin app with no token configured."""
    return await aiohttp_client(create_admin_app(runtime, token=None))


async def json_of(resp: Any) -> Any:
    assert resp.content_type == "application/json", await resp.text()
    return await resp.json()


# ---- open endpoints ---------------------------------------------------------------------------


async def test_healthz_and_metrics_need_no_token(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await json_of(resp)) == {"status": "ok"}
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    assert 'modelrouter_traffic_share{backend="model-a",route="clf"} 0.9' in text
    assert "modelrouter_config_reloads_total" in text


async def test_readyz_follows_health_and_draining(client: Client, runtime: Runtime) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await json_of(resp))["ready"] is True
    for b in runtime.backends.values():
        b.up = False
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert "clf" in (await json_of(resp))["reason"]
    for b in runtime.backends.values():
        b.up = True
    runtime.draining = True
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await json_of(resp))["reason"] == "draining"


async def test_dashboard_page_and_data(
    client: Client, open_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    resp = await client.get("/dashboard")
    assert resp.status == 200  # the page itself holds no data: open
    assert resp.content_type == "text/html"
    # route status and the audit log are admin reads: the token when one is configured
    resp = await client.get("/dashboard/data")
    assert resp.status == 401
    assert "admin token" in (await json_of(resp))["error"]
    resp = await open_client.get("/dashboard/data")
    assert resp.status == 200
    resp = await client.get("/dashboard/data", headers=AUTH)
    assert resp.status == 200
    data = await json_of(resp)
    assert set(data) == {"ts", "routes", "audit"}
    assert [r["route"] for r in data["routes"]] == ["clf"]
    assert isinstance(data["audit"], list)
    monkeypatch.setattr(admin, "DASHBOARD", Path("/nonexistent/dashboard.html"))
    resp = await client.get("/dashboard")
    assert resp.status == 404
    assert "dashboard" in (await json_of(resp))["error"]


async def test_unknown_paths_and_methods_answer_json(client: Client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert "error" in await json_of(resp)
    resp = await client.post("/healthz")
    assert resp.status == 405
    assert "error" in await json_of(resp)


# ---- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
async def test_admin_needs_the_token(client: Client, headers: dict[str, str]) -> None:
    for method, path in (
        ("GET", "/admin/routes"),
        ("POST", "/admin/routes/clf/pause"),
        ("GET", "/admin/routes/unknown-route"),
    ):
        resp = await client.request(method, path, headers=headers)
        assert resp.status == 401, (method, path)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in (await json_of(resp))["error"]


async def test_token_compared_in_constant_time(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = admin.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", spy)
    assert (await client.get("/admin/routes", headers=AUTH)).status == 200
    assert calls == [(TOKEN.encode(), TOKEN.encode())]


async def test_no_token_configured_reads_ok_writes_403(open_client: Client) -> None:
    resp = await open_client.get("/admin/routes")
    assert resp.status == 200
    for method, path in (
        ("POST", "/admin/routes/clf/promote"),
        ("PUT", "/admin/routes/clf/weights"),
        ("POST", "/admin/reload"),
    ):
        resp = await open_client.request(method, path, json={})
        assert resp.status == 403
        err = (await json_of(resp))["error"]
        assert "MODELROUTER_ADMIN_TOKEN" in err and "Bearer" in err


# ---- routes -----------------------------------------------------------------------------------


async def test_routes_and_route_status(client: Client) -> None:
    resp = await client.get("/admin/routes", headers=AUTH)
    routes = await json_of(resp)
    assert isinstance(routes, list) and len(routes) == 1
    st = routes[0]
    assert st["route"] == "clf" and st["kind"] == "weighted"
    assert st["shares"] == pytest.approx({"model-a": 0.9, "model-b": 0.1})
    resp = await client.get("/admin/routes/clf", headers=AUTH)
    assert (await json_of(resp))["route"] == "clf"
    resp = await client.get("/admin/routes/nope", headers=AUTH)
    assert resp.status == 404
    err = (await json_of(resp))["error"]
    assert "'nope'" in err and "clf" in err


async def test_action_errors(client: Client) -> None:
    # a weighted route has no rollout: the engine's ActionError decides the status
    resp = await client.post("/admin/routes/clf/promote", headers=AUTH, json={"reason": "go"})
    assert resp.status == 409
    assert "weighted" in (await json_of(resp))["error"]
    resp = await client.post("/admin/routes/clf/explode", headers=AUTH)
    assert resp.status == 404
    assert "promote" in (await json_of(resp))["error"]
    resp = await client.post("/admin/routes/nope/abort", headers=AUTH)
    assert resp.status == 404
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"reason": 5}', "'reason' must be a string"),
        (b'{"full": "yes"}', "'full' must be true or false"),
    ]
    for body, message in cases:
        resp = await client.post(
            "/admin/routes/clf/promote",
            headers={**AUTH, "Content-Type": "application/json"},
            data=body,
        )
        assert resp.status == 400, body
        assert message in (await json_of(resp))["error"]


class SpyEngine:
    """Stands in for a rollout engine to show what the admin API passes to `action`."""

    kind = "canary"
    learns = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str, dict[str, Any]]] = []

    async def action(
        self, name: str, reason: str | None, actor: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.calls.append((name, reason, actor, dict(params)))
        return {}

    def status(self) -> dict[str, Any]:
        return {"phase": "progressing", "step": len(self.calls)}

    def shares(self) -> dict[str, float]:
        return {"model-a": 0.5, "model-b": 0.5}

    async def stop(self) -> None:
        return None


async def test_actions_reach_the_engine(
    client: Client, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SpyEngine()
    monkeypatch.setattr(runtime.route("clf"), "engine", spy)
    resp = await client.post(
        "/admin/routes/clf/promote", headers=AUTH, json={"reason": "looks good", "full": True}
    )
    assert resp.status == 200
    st = await json_of(resp)
    assert st["route"] == "clf" and st["kind"] == "canary" and st["step"] == 1
    for action in ("abort", "pause", "resume", "switch"):
        resp = await client.post(f"/admin/routes/clf/{action}", headers=AUTH)
        assert resp.status == 200, action
    assert spy.calls == [
        ("promote", "looks good", "admin", {"full": True}),
        ("abort", None, "admin", {}),
        ("pause", None, "admin", {}),
        ("resume", None, "admin", {}),
        ("switch", None, "admin", {}),
    ]


async def test_set_weights(client: Client, runtime: Runtime) -> None:
    resp = await client.put(
        "/admin/routes/clf/weights",
        headers=AUTH,
        json={"weights": {"model-a": 1, "model-b": 1}, "reason": "even"},
    )
    assert resp.status == 200, await resp.text()
    st = await json_of(resp)
    assert st["shares"] == pytest.approx({"model-a": 0.5, "model-b": 0.5})
    audit = await runtime.store.audit_list(10, "clf")
    assert [e["action"] for e in audit] == ["set_weights"]  # recorded once, by the engine
    assert audit[0]["actor"] == "admin" and audit[0]["reason"] == "even"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, '{"weights"'),
        ({"weights": []}, '{"weights"'),
        ({"weights": {"model-c": 1}}, "unknown backend(s) ['model-c']"),
        ({"weights": {"model-a": -1}}, "weights.model-a: must be a non-negative number, got -1"),
        ({"weights": {"model-a": "x"}}, 'weights.model-a: must be a non-negative number, got "x"'),
        ({"weights": {"model-a": True}}, "weights.model-a: must be a non-negative number"),
        ({"weights": {"model-a": 0, "model-b": 0}}, "must not all be zero"),
        ({"weights": {"model-a": 1}, "extra": 1}, "unknown key(s) ['extra']"),
    ],
)
async def test_set_weights_rejects(client: Client, body: dict[str, Any], message: str) -> None:
    resp = await client.put("/admin/routes/clf/weights", headers=AUTH, json=body)
    assert resp.status == 400
    assert message in (await json_of(resp))["error"]


# ---- reload and audit -------------------------------------------------------------------------


async def test_reload_applies_a_valid_file(client: Client, runtime: Runtime) -> None:
    assert runtime.config_path is not None
    runtime.config_path.write_text(config_text(a=50, b=50))
    resp = await client.post("/admin/reload", headers=AUTH)
    assert resp.status == 200, await resp.text()
    changes = await json_of(resp)
    assert changes["changed"] == ["clf"]
    st = await json_of(await client.get("/admin/routes/clf", headers=AUTH))
    assert st["shares"] == pytest.approx({"model-a": 0.5, "model-b": 0.5})
    reg = runtime.metrics.registry
    assert reg.get_sample_value("modelrouter_config_reloads_total", {"result": "success"}) == 1


async def test_reload_drops_the_series_of_a_removed_backend(
    client: Client, runtime: Runtime
) -> None:
    route = runtime.route("clf")
    for _ in range(200):  # 90/10: model-b serves some of these
        sel = route.select_plain()
        route.record(sel, 200, 0.01, "reset" if sel.backend.name == "model-b" else None)
    text = await (await client.get("/metrics")).text()
    assert 'modelrouter_requests_total{backend="model-b"' in text
    assert 'modelrouter_upstream_errors_total{backend="model-b"' in text
    assert 'modelrouter_backend_up{backend="model-b"} 1.0' in text
    assert runtime.config_path is not None
    runtime.config_path.write_text(
        config_text()
        .replace('  model-b: {url: "http://127.0.0.1:9", version: 1.1.0}\n', "")
        .replace("model-a: 90, model-b: 10", "model-a: 1")
    )
    resp = await client.post("/admin/reload", headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert (await json_of(resp))["backends_changed"] == []
    text = await (await client.get("/metrics")).text()
    assert "model-b" not in text, [ln for ln in text.splitlines() if "model-b" in ln]
    assert 'modelrouter_requests_total{backend="model-a",code="200",route="clf"}' in text
    assert 'modelrouter_traffic_share{backend="model-a",route="clf"} 1.0' in text
    assert 'modelrouter_backend_up{backend="model-a"} 1.0' in text


async def test_reload_rejects_a_bad_file_and_keeps_serving(
    client: Client, runtime: Runtime
) -> None:
    assert runtime.config_path is not None
    runtime.config_path.write_text(
        config_text().replace("weights: {model-a: 90", "weights: {model-z: 90") + "bogus: 1\n"
    )
    resp = await client.post("/admin/reload", headers=AUTH, json={"reason": "try"})
    assert resp.status == 400
    body = await json_of(resp)
    assert len(body["errors"]) >= 2
    assert all(str(runtime.config_path) in e for e in body["errors"])
    st = await json_of(await client.get("/admin/routes/clf", headers=AUTH))
    assert st["shares"] == pytest.approx({"model-a": 0.9, "model-b": 0.1})
    audit = await json_of(await client.get("/admin/audit", headers=AUTH))
    assert audit[-1]["action"] == "reload_rejected" and audit[-1]["reason"] == "try"
    reg = runtime.metrics.registry
    assert reg.get_sample_value("modelrouter_config_reloads_total", {"result": "failure"}) == 1


async def test_audit_listing(client: Client, runtime: Runtime) -> None:
    for i in range(3):
        await runtime.audit.record("clf", "pause", "admin", f"r{i}")
    await runtime.audit.record("other", "pause", "admin", "x")
    entries = await json_of(await client.get("/admin/audit?route=clf&limit=2", headers=AUTH))
    assert [e["reason"] for e in entries] == ["r1", "r2"]
    entries = await json_of(await client.get("/admin/audit", headers=AUTH))
    assert len(entries) == 4
    for bad in ("abc", "0", "-1", "100001"):
        resp = await client.get(f"/admin/audit?limit={bad}", headers=AUTH)
        assert resp.status == 400
        assert "limit" in (await json_of(resp))["error"]


async def test_unexpected_failure_is_a_json_500(
    client: Client, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(name: str) -> dict[str, Any]:
        raise RuntimeError("engine bug")

    monkeypatch.setattr(runtime, "status", boom)
    resp = await client.get("/admin/routes/clf", headers=AUTH)
    assert resp.status == 500
    assert "internal error" in (await json_of(resp))["error"]


async def test_canary_actions_end_to_end(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]],
    aiohttp_client: MakeClient,
    tmp_path: Path,
) -> None:
    """Real canary engine behind the admin API: promote, pause, resume, abort, each audited once."""

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", ok)
    upstream = await aiohttp_server(upstream_app)
    path = tmp_path / "router.yaml"
    path.write_text(
        config_text(port=upstream.port).replace(
            "policy: {kind: weighted, weights: {model-a: 90, model-b: 10}}",
            "policy: {kind: canary, stable: model-a, candidate: model-b, steps: [10, 50, 100], "
            "interval: 1h}",
        )
    )
    rt = await open_runtime(load_config(path), config_path=path)
    try:
        client = await aiohttp_client(create_admin_app(rt, token=TOKEN))
        await eventually(lambda: rt.status("clf")["phase"] != "validating", timeout=20)
        assert rt.status("clf")["phase"] == "progressing"

        async def act(action: str, **body: Any) -> dict[str, Any]:
            resp = await client.post(f"/admin/routes/clf/{action}", headers=AUTH, json=body)
            assert resp.status == 200, await resp.text()
            result: dict[str, Any] = await json_of(resp)
            return result

        st = await act("promote", reason="bake looked fine")
        assert st["phase"] == "progressing" and st["step"] == 1
        assert st["shares"] == pytest.approx({"model-a": 0.5, "model-b": 0.5})
        assert (await act("pause", reason="hold"))["phase"] == "paused"
        assert (await act("resume"))["phase"] == "progressing"
        st = await act("abort", reason="latency")
        assert st["phase"] == "rolled_back"
        assert st["shares"] == pytest.approx({"model-a": 1.0, "model-b": 0.0})
        resp = await client.post("/admin/routes/clf/switch", headers=AUTH)
        assert resp.status == 409
        admin_entries = [e for e in await rt.store.audit_list(50, "clf") if e["actor"] == "admin"]
        assert [(e["reason"]) for e in admin_entries] == [
            "bake looked fine",
            "hold",
            None,
            "latency",
        ]
    finally:
        await close_runtime(rt)
