"""`GET /admin/routes/{route}/snapshot`: a live route's model, frozen, usable by replay."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from policies import ope
from policies.base import Context
from router.admin import create_admin_app
from router.audit import Audit
from router.config import load_config
from router.metrics import Metrics
from router.replay import candidate_dist, load_candidate
from router.runtime import Runtime
from router.store.memory import MemoryStore

Client = TestClient[web.Request, web.Application]

CONFIG = """
version: 1
listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
state: {store: memory}
backends:
  a: {url: "http://127.0.0.1:9"}
  b: {url: "http://127.0.0.1:9"}
routes:
  - name: clothing
    match: {path_prefix: /clothing}
    policy:
      kind: contextual_bandit
      arms: [a, b]
      algorithm: epsilon_greedy
      params: {epsilon: 0.1}
      features:
        - {name: climate, from: "header:x-climate", type: categorical, values: [hot, cold]}
  - name: split
    match: {path_prefix: /split}
    policy: {kind: weighted, weights: {a: 3, b: 1}}
  - name: canary
    match: {path_prefix: /canary}
    policy: {kind: canary, stable: a, candidate: b, steps: [10, 50]}
"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    path = tmp_path / "router.yaml"
    path.write_text(CONFIG)
    store = MemoryStore()
    await store.open()
    rt = await Runtime.create(
        load_config(path),
        store=store,
        metrics=Metrics(CollectorRegistry()),
        audit=Audit(store),
        config_path=path,
    )
    yield rt
    await rt.close()
    await store.close()


async def test_snapshot_of_a_contextual_route_replays_as_the_live_model(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    engine = runtime.route("clothing").engine
    hot, cold = np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0])
    for _ in range(50):  # a wins when hot, b when cold
        engine.feedback("a", 1.0, Context(features=hot))
        engine.feedback("b", 0.0, Context(features=hot))
        engine.feedback("a", 0.0, Context(features=cold))
        engine.feedback("b", 1.0, Context(features=cold))
    client = await aiohttp_client(create_admin_app(runtime, token=None))
    resp = await client.get("/admin/routes/clothing/snapshot")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["format"] == "modelrouter-policy/1" and doc["route"] == "clothing"
    assert doc["policy"]["kind"] == "contextual_bandit" and doc["learn"] is False
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc))
    cand = load_candidate(str(path))
    assert not cand.learn
    x = np.array([hot, cold])
    data = ope.LoggedData(("a", "b"), np.array([0, 1]), np.zeros(2), np.full(2, 0.5), x, "binary")
    dist = candidate_dist(cand, data)
    # the frozen model is the live one: greedy a when hot, b when cold, epsilon spread
    assert np.allclose(dist, [[0.95, 0.05], [0.05, 0.95]])

    resp = await client.get("/admin/routes/split/snapshot")
    assert (await resp.json())["policy"] == {"kind": "weighted", "weights": {"a": 0.75, "b": 0.25}}
    resp = await client.get("/admin/routes/canary/snapshot")
    assert resp.status == 409
    assert "no learned model" in (await resp.json())["error"]
    resp = await client.get("/admin/routes/nope/snapshot")
    assert resp.status == 404


async def test_a_new_route_warm_starts_from_a_snapshot(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    engine = runtime.route("clothing").engine
    hot = np.array([1.0, 1.0, 0.0])
    for _ in range(30):
        engine.feedback("a", 1.0, Context(features=hot))
    client = await aiohttp_client(create_admin_app(runtime, token=None))
    doc = await (await client.get("/admin/routes/clothing/snapshot")).json()
    (tmp_path / "model.json").write_text(json.dumps(doc))
    path = tmp_path / "new.yaml"
    lines = CONFIG.replace("name: clothing", "name: fresh").splitlines()
    i = lines.index("  - name: split")
    lines.insert(i, "    warm_start: model.json")
    path.write_text("\n".join(lines) + "\n")
    store = MemoryStore()
    await store.open()
    rt = await Runtime.create(
        load_config(path),
        store=store,
        metrics=Metrics(CollectorRegistry()),
        audit=Audit(store),
        config_path=path,
    )
    try:
        st = rt.status("fresh")
        assert st["arms"]["a"]["rewards"] == 30  # learned before it served anything
        audit = await store.audit_list(route="fresh")
        assert any(e["action"] == "warm_start" for e in audit)
    finally:
        await rt.close()
        await store.close()
