"""The rollout driver in-process, against real aiohttp upstreams on port 0: canary steps, rollback,
infra validation, manual gate, abort, Prometheus, webhooks, restore after a crash, blue-green."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from policies.base import Context
from policies.spec import (
    AnalysisSpec,
    BackendConfig,
    BlueGreenSpec,
    CanarySpec,
    Check,
    Config,
    HealthConfig,
    Match,
    PolicySpec,
    RouteConfig,
    ValidateRequest,
    ValidateSpec,
    Webhook,
)
from router.audit import Audit
from router.engines.base import ActionError, Services
from router.engines.rollout import ENGINES, BlueGreenEngine, CanaryEngine
from router.engines.rollout_controller import Window, parse_prometheus
from router.metrics import Metrics
from router.store import MemoryStore, SqliteStore, Store
from tests.helpers import eventually

# ---- real upstreams ------------------------------------------------------------------------------


@dataclass
class Upstream:
    """A toy model server: /health, and /predict failing `fail_per_10` of every 10 requests."""

    fail_per_10: int = 0
    health_status: int = 200
    live: int = 0  # /predict requests
    health: int = 0
    port: int = 0
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def predict(_: web.Request) -> web.Response:
            i = self.live
            self.live += 1
            if i % 10 < self.fail_per_10:
                return web.json_response({"error": "boom"}, status=500)
            return web.json_response({"predictions": [[1.0]]})

        async def health(_: web.Request) -> web.Response:
            self.health += 1
            return web.json_response({"ok": self.health_status == 200}, status=self.health_status)

        app = web.Application()
        app.router.add_post("/predict", predict)
        app.router.add_get("/health", health)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def backend(self, name: str, version: str) -> BackendConfig:
        return BackendConfig(
            name=name,
            url=f"http://127.0.0.1:{self.port}",
            scheme="http",
            host="127.0.0.1",
            port=self.port,
            base_path="",
            version=version,
            timeout=2.0,
            health=HealthConfig("/health"),
        )


@dataclass
class Rig:
    stable: Upstream
    cand: Upstream
    http: aiohttp.ClientSession
    tmp: Path
    engines: list[Any] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    metrics: Metrics | None = None

    def services(self, policy: PolicySpec, store: Store) -> tuple[Services, RouteConfig]:
        names = ("v1", "v2") if isinstance(policy, CanarySpec) else ("blue", "green")
        backends = {
            names[0]: self.stable.backend(names[0], "1.0.0"),
            names[1]: self.cand.backend(names[1], "1.1.0"),
        }
        route = RouteConfig("clf", Match("/predict"), policy)
        cfg = Config(backends=backends, routes=(route,))
        if self.metrics is None:
            self.metrics = Metrics(self.registry)
        metrics = self.metrics
        svc = Services(
            config=cfg,
            store=store,
            metrics=metrics,
            audit=Audit(store),
            backends=backends,
            rng=np.random.default_rng(0),
            http=self.http,
        )
        return svc, route

    async def engine(self, policy: PolicySpec, store: Store | None = None) -> Any:
        store = store or MemoryStore()
        svc, route = self.services(policy, store)
        eng = ENGINES[policy.kind](route, svc)
        await eng.start()
        self.engines.append(eng)
        return eng

    async def send(self, eng: Any, n: int) -> dict[str, int]:
        """n live requests through the engine's choice to the real upstreams, observed."""
        seen: dict[str, int] = {}
        ups = {"v1": self.stable, "v2": self.cand, "blue": self.stable, "green": self.cand}
        for _ in range(n):
            arm = eng.choose(Context()).arm
            seen[arm] = seen.get(arm, 0) + 1
            t0 = time.monotonic()
            async with self.http.post(f"http://127.0.0.1:{ups[arm].port}/predict") as r:
                await r.read()
                eng.observe(arm, r.status, time.monotonic() - t0, None)
        return seen

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value("modelrouter_" + name, labels)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    stable, cand = Upstream(), Upstream()
    await stable.start()
    await cand.start()
    async with aiohttp.ClientSession() as http:
        r = Rig(stable, cand, http, tmp_path)
        yield r
        for e in r.engines:
            await e.stop()
    await stable.stop()
    await cand.stop()


async def drive(
    rig: Rig,
    eng: Any,
    done: Callable[[], bool],
    batch: int = 20,
    max_requests: int = 4000,
    timeout: float = 30.0,
) -> int:
    """Send traffic in batches until `done()`; bounded in requests and time."""
    sent = 0
    deadline = time.monotonic() + timeout
    while not done():
        if sent >= max_requests or time.monotonic() > deadline:
            raise AssertionError(f"not done after {sent} requests: {eng.status()['phase']}")
        await rig.send(eng, batch)
        sent += batch
        await asyncio.sleep(0.01)
    return sent


def canary_spec(
    steps: tuple[float, ...] = (20, 50, 100),
    checks: tuple[Check, ...] = (Check("error_rate", max=0.05),),
    interval: float = 0.3,
    gate: str = "auto",
    failure_limit: int = 2,
    min_requests: int = 10,
    validate: ValidateSpec | None = None,
    webhooks: tuple[Webhook, ...] = (),
    compare: str = "none",
) -> CanarySpec:
    return CanarySpec(
        stable="v1",
        candidate="v2",
        steps=steps,
        interval=interval,
        validate=validate,
        analysis=AnalysisSpec(
            min_requests=min_requests,
            failure_limit=failure_limit,
            checks=checks,
            compare=compare,  # type: ignore[arg-type]
        ),
        gate=gate,  # type: ignore[arg-type]
        webhooks=webhooks,
    )


def phase(eng: Any) -> str:
    return str(eng.status()["phase"])


# ---- canary --------------------------------------------------------------------------------------


async def test_healthy_candidate_walks_the_steps_to_promoted(rig: Rig) -> None:
    eng = await rig.engine(canary_spec())
    assert isinstance(eng, CanaryEngine)
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    st = eng.status()
    assert st["blessed"]["ok"] and st["blessed"]["results"][0].startswith("GET /health -> 200")
    assert st["shares"] == {"v1": 0.8, "v2": 0.2}
    shares_seen = set()

    def done() -> bool:
        shares_seen.add(eng.shares()["v2"])
        return phase(eng) == "promoted"

    await drive(rig, eng, done)
    assert {0.2, 0.5} <= shares_seen
    assert eng.shares() == {"v1": 0.0, "v2": 1.0}
    assert (await rig.send(eng, 20)) == {"v2": 20}
    assert rig.metric("rollout_phase", route="clf", phase="promoted") == 1.0
    assert rig.metric("rollout_phase", route="clf", phase="progressing") == 0.0
    assert rig.metric("traffic_share", route="clf", backend="v2") == 1.0
    audit = await eng.controller.services.audit.list(route="clf")
    assert [e["action"] for e in audit] == ["blessed", "step", "promoted"]
    assert all(e["actor"] == "controller" for e in audit)
    assert [h["outcome"] for h in eng.status()["analysis"]].count("pass") >= 2


async def test_candidate_failing_30_percent_is_rolled_back_with_the_reason(rig: Rig) -> None:
    rig.cand.fail_per_10 = 3
    eng = await rig.engine(canary_spec(steps=(50, 100), min_requests=20))
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    await drive(rig, eng, lambda: phase(eng) == "rolled_back")
    st = eng.status()
    assert re.search(
        r"analysis failed 2/2: error_rate 0\.\d+ > max 0\.05 over \d+ requests", st["reason"]
    ), st["reason"]
    assert eng.shares() == {"v1": 1.0, "v2": 0.0}
    assert (await rig.send(eng, 30)) == {"v1": 30}
    assert not eng.admits("v2")
    assert rig.metric("rollout_phase", route="clf", phase="rolled_back") == 1.0


async def test_candidate_failing_infra_validation_never_gets_a_live_request(rig: Rig) -> None:
    rig.cand.health_status = 503
    eng = await rig.engine(canary_spec(validate=ValidateSpec((), timeout=1.0, attempts=2)))
    assert eng.shares()["v2"] == 0.0  # nothing before validation either
    await rig.send(eng, 50)
    await eventually(lambda: phase(eng) == "rolled_back", timeout=20)
    st = eng.status()
    assert st["blessed"]["ok"] is False
    assert (
        "infra validation of v2 failed: GET /health -> FAIL: status 503, expected 200"
        in (st["reason"])
    )
    assert "(after 2 attempts)" in st["reason"] and '"ok": false' in st["reason"]
    await rig.send(eng, 100)
    assert rig.cand.live == 0 and rig.cand.health == 2
    assert not eng.admits("v2")
    with pytest.raises(ActionError) as e:
        await eng.action("promote", None, "admin", {})
    assert e.value.status == 409 and "rolled back" in e.value.message


async def test_configured_validation_requests_with_body_and_expected_status(rig: Rig) -> None:
    v = ValidateSpec((ValidateRequest("POST", "/predict", {"instances": [[1.0]]}, (), 200),))
    eng = await rig.engine(canary_spec(validate=v))
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    assert eng.status()["blessed"]["results"][0].startswith("POST /predict -> 200")


async def test_manual_gate_pauses_and_promote_finishes(rig: Rig) -> None:
    eng = await rig.engine(canary_spec(steps=(30, 100), gate="manual"))
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    await drive(rig, eng, lambda: phase(eng) == "paused")
    st = eng.status()
    assert st["gate"] == {"mode": "manual", "waiting": True}
    assert eng.shares() == {"v1": 0.7, "v2": 0.3}
    with pytest.raises(ActionError, match="manual gate: use promote"):
        await eng.action("resume", None, "admin", {})
    out = await eng.action("promote", "reviewed the dashboards", "admin", {})
    assert out["phase"] == "promoted" and eng.shares()["v2"] == 1.0
    audit = await eng.controller.services.audit.list(route="clf")
    assert audit[-1]["action"] == "promote" and audit[-1]["actor"] == "admin"
    assert audit[-1]["reason"] == "reviewed the dashboards"


async def test_abort_moves_everything_to_stable_within_one_request(rig: Rig) -> None:
    eng = await rig.engine(canary_spec(steps=(50, 100), interval=30.0))
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    assert set(await rig.send(eng, 40)) == {"v1", "v2"}
    out = await eng.action("abort", "latency spike", "admin", {})
    assert out["phase"] == "rolled_back"
    assert (await rig.send(eng, 40)) == {"v1": 40}
    assert rig.metric("traffic_share", route="clf", backend="v1") == 1.0
    with pytest.raises(ActionError) as e:
        await eng.action("abort", None, "admin", {})
    assert e.value.status == 409


async def test_pause_resume_promote_full_and_unknown_action(rig: Rig) -> None:
    eng = await rig.engine(canary_spec(steps=(10, 20, 50, 100), interval=30.0))
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    assert (await eng.action("pause", "lunch", "admin", {}))["phase"] == "paused"
    assert (await eng.action("resume", None, "admin", {}))["phase"] == "progressing"
    assert (await eng.action("promote", None, "admin", {}))["step"] == 1
    assert eng.shares()["v2"] == pytest.approx(0.2)
    assert (await eng.action("promote", None, "admin", {"full": True}))["phase"] == "promoted"
    with pytest.raises(ActionError, match="'weights' does not apply"):
        await eng.action("weights", None, "admin", {})
    with pytest.raises(ActionError, match="switch applies to blue_green"):
        await eng.action("switch", None, "admin", {})


async def test_unreachable_prometheus_never_promotes(rig: Rig) -> None:
    check = Check("prometheus", query="sum(up)", max=5, url="http://127.0.0.1:9")
    eng = await rig.engine(canary_spec(steps=(50, 100), checks=(check,), interval=0.2))
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    await drive(rig, eng, lambda: len(eng.status()["analysis"]) >= 4, max_requests=2000, timeout=30)
    st = eng.status()
    assert st["phase"] == "progressing" and st["step"] == 0
    assert all(h["outcome"] == "inconclusive" for h in st["analysis"])
    assert any("cannot reach http://127.0.0.1:9" in r for h in st["analysis"] for r in h["reasons"])


async def test_prometheus_http_api_answer_drives_the_check(rig: Rig) -> None:
    value = {"v": "1.5"}

    async def query(request: web.Request) -> web.Response:
        assert request.query["query"] == "sum(rate(errors[1m]))"
        return web.json_response(
            {
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [{"metric": {}, "value": [time.time(), value["v"]]}],
                },
            }
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        check = Check(
            "prometheus", query="sum(rate(errors[1m]))", max=5, url=f"http://127.0.0.1:{port}"
        )
        eng = await rig.engine(canary_spec(steps=(50, 100), checks=(check,), failure_limit=1))
        await drive(rig, eng, lambda: phase(eng) == "promoted")
        value["v"] = "9"
        eng2 = await rig.engine(canary_spec(steps=(50, 100), checks=(check,), failure_limit=1))
        await drive(rig, eng2, lambda: phase(eng2) == "rolled_back")
        assert "prometheus 'sum(rate(errors[1m]))' 9 > max 5" in eng2.status()["reason"]
    finally:
        await runner.cleanup()


PROM_ANSWERS = [
    ({"status": "success", "data": {"resultType": "scalar", "result": [1, "2.5"]}}, 2.5, None),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, None, "empty result"),
    (
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "NaN"]}]}},
        None,
        "value is nan",
    ),
    (
        {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]},
        },
        None,
        "2 series; aggregate",
    ),
    ({"status": "error", "error": "parse error at char 3"}, None, "parse error at char 3"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, None, "unsupported"),
]


@pytest.mark.parametrize(("doc", "value", "error"), PROM_ANSWERS)
def test_parse_prometheus(doc: Any, value: float | None, error: str | None) -> None:
    r = parse_prometheus("q", doc)
    assert r.value == value
    if error is None:
        assert r.error is None
    else:
        assert r.error is not None and error in r.error


def test_latency_window_p99_is_close_and_constant_memory() -> None:
    w = Window()
    for i in range(1, 1001):
        w.observe(200, i / 1000, None)  # 1 ms .. 1 s uniform
    p99 = w.p99()
    assert p99 is not None and 0.99 <= p99 <= 0.99 * 1.1
    assert len(w.hist) == 160 and w.requests == 1000 and w.errors == 0
    w.observe(503, 0.0, None)
    w.observe(200, 0.01, "reset")
    assert w.errors == 2
    assert Window().p99() is None


# ---- webhooks ------------------------------------------------------------------------------------


async def test_webhooks_are_retried_with_backoff_and_never_block(rig: Rig) -> None:
    got: list[dict[str, Any]] = []
    calls = {"n": 0}

    async def hook(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] <= 2:
            return web.Response(status=500)
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        hooks = (
            Webhook(f"http://127.0.0.1:{port}/hook", frozenset({"rolled_back"})),
            Webhook("http://127.0.0.1:9/unreachable", frozenset({"rolled_back"})),
        )
        eng = await rig.engine(canary_spec(interval=30.0, webhooks=hooks))
        await eventually(lambda: phase(eng) == "progressing", timeout=20)
        assert calls["n"] == 0  # progressing is not subscribed
        t0 = time.monotonic()
        await eng.action("abort", "bad model", "admin", {})
        assert time.monotonic() - t0 < 2.0  # delivery happens in the background
        await eventually(lambda: bool(got), timeout=15)
        assert got[0]["route"] == "clf" and got[0]["from"] == "progressing"
        assert got[0]["to"] == "rolled_back" and got[0]["shares"] == {"v1": 1.0, "v2": 0.0}
        assert "abort by admin: bad model" in got[0]["reason"] and "ts" in got[0]
        assert calls["n"] == 3
    finally:
        await runner.cleanup()


# ---- durability ----------------------------------------------------------------------------------


async def test_state_restored_exactly_after_a_crash(rig: Rig) -> None:
    path = rig.tmp / "state.db"
    store = SqliteStore(path)
    await store.open()
    spec = canary_spec(steps=(20, 50, 80, 100), interval=0.3)
    eng = await rig.engine(spec, store)
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    await drive(rig, eng, lambda: eng.status()["step"] >= 1)
    await eng.action("pause", "hold", "admin", {})
    before = eng.status()
    # crash: timers die, nothing is written on the way out
    ctl = eng.controller
    assert ctl._timer is not None
    ctl._timer.cancel()
    rig.engines.remove(eng)
    await store.close()

    store2 = SqliteStore(path)
    await store2.open()
    eng2 = await rig.engine(spec, store2)
    after = eng2.status()
    for key in (
        "phase",
        "step",
        "shares",
        "analysis",
        "blessed",
        "reason",
        "paused_reason",
        "step_started_at",
        "failures",
        "gate",
    ):
        assert after[key] == before[key], key
    assert eng2.controller.state == eng.controller.state
    assert rig.metric("rollout_step", route="clf") == before["step"]
    await eng2.stop()
    rig.engines.remove(eng2)
    await store2.close()


async def test_stored_state_of_another_candidate_starts_a_new_rollout(rig: Rig) -> None:
    store = MemoryStore()
    await store.put(
        "rollout:clf",
        {
            "identity": {"kind": "canary", "stable": "v1", "candidate": "old"},
            "state": {"phase": "x"},
        },
    )
    eng = await rig.engine(canary_spec(), store)
    assert phase(eng) == "validating"
    await store.put("rollout:clf", {"identity": eng.controller.identity(), "state": {"bad": 1}})
    eng2 = await rig.engine(canary_spec(), store)  # unreadable: logged, starts again
    assert phase(eng2) == "validating"


# ---- blue-green ----------------------------------------------------------------------------------


async def test_blue_green_switch_and_switch_back(rig: Rig) -> None:
    eng = await rig.engine(BlueGreenSpec(active="blue", preview="green", interval=0.3))
    assert isinstance(eng, BlueGreenEngine)
    assert not eng.admits("green")  # overrides may not reach it before validation
    await eventually(lambda: phase(eng) == "progressing", timeout=20)
    assert eng.admits("green") and eng.shares() == {"blue": 1.0, "green": 0.0}
    assert (await rig.send(eng, 20)) == {"blue": 20}
    out = await eng.action("switch", "release 1.1", "admin", {})
    assert out["phase"] == "promoted" and out["active"] == "green"
    assert (await rig.send(eng, 20)) == {"green": 20}
    out = await eng.action("switch", "rollback", "admin", {})
    assert out["phase"] == "rolled_back" and out["active"] == "blue"
    assert (await rig.send(eng, 20)) == {"blue": 20}


async def test_blue_green_analysis_on_preview_traffic_auto_switches(rig: Rig) -> None:
    spec = BlueGreenSpec(
        active="blue",
        preview="green",
        interval=0.2,
        auto_switch=True,
        analysis=AnalysisSpec(min_requests=10, checks=(Check("error_rate", max=0.05),)),
    )
    eng = await rig.engine(spec)
    await eventually(lambda: phase(eng) == "progressing", timeout=20)

    async def preview_traffic() -> None:  # what the runtime's override path feeds in
        for _ in range(5):
            async with rig.http.post(f"http://127.0.0.1:{rig.cand.port}/predict") as r:
                eng.observe("green", r.status, 0.01, None)

    async def promoted_after_preview() -> bool:
        await preview_traffic()
        return phase(eng) == "promoted"

    await eventually(promoted_after_preview, timeout=20, what="promotion on preview traffic")
    assert eng.status()["active"] == "green" and eng.shares()["green"] == 1.0


async def test_engine_registry() -> None:
    assert set(ENGINES) == {"canary", "blue_green"}


# ---- a real Prometheus server --------------------------------------------------------------------


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    """/usr/bin/prometheus on a free port with an empty scrape config and tmp storage."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.skip("prometheus is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 15s}\nscrape_configs: []\n")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={cfg}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.skip("prometheus did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def test_real_prometheus_value_passes_and_empty_result_never_does(
    rig: Rig, prometheus: str
) -> None:
    ok = Check("prometheus", query="vector(1)", max=5, url=prometheus)
    eng = await rig.engine(canary_spec(steps=(50, 100), checks=(ok,)))
    await drive(rig, eng, lambda: phase(eng) == "promoted")
    assert "prometheus 'vector(1)' 1 ok (max 5)" in eng.status()["analysis"][-1]["reasons"]
    # no series match: an empty vector is inconclusive, never a pass
    empty = Check("prometheus", query='sum(up{job="nope"})', max=5, url=prometheus)
    eng2 = await rig.engine(canary_spec(steps=(50, 100), checks=(empty,), interval=0.2))
    await drive(rig, eng2, lambda: len(eng2.status()["analysis"]) >= 3)
    st = eng2.status()
    assert st["phase"] == "progressing" and st["step"] == 0
    assert any("empty result" in r for h in st["analysis"] for r in h["reasons"])
    bad = Check("prometheus", query="sum(", max=5, url=prometheus)
    eng3 = await rig.engine(canary_spec(steps=(50, 100), checks=(bad,), interval=0.2))
    await drive(rig, eng3, lambda: len(eng3.status()["analysis"]) >= 1)
    assert "query failed" in eng3.status()["analysis"][-1]["reasons"][0]
