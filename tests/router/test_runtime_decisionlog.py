"""A Runtime with decision logs: records from select, rewards from feedback, reload, close."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from router.audit import Audit
from router.config import load_config
from router.dataplane.seam import Request
from router.decisionlog import read_log, to_logged_data
from router.metrics import Metrics
from router.runtime import Runtime
from router.store.memory import MemoryStore

CONFIG = """
version: 1
state: {store: memory}
backends:
  a: {url: "http://127.0.0.1:9"}
  b: {url: "http://127.0.0.1:9"}
routes:
  - name: rec
    match: {path_prefix: /rec}
    sticky: {key: "header:x-user"}
    policy: {kind: bandit, arms: [a, b], algorithm: epsilon_greedy, params: {epsilon: 0.5}}
    decision_log: {path: logs/rec.jsonl%s}
"""


async def _runtime(path: Path) -> tuple[Runtime, MemoryStore]:
    store = MemoryStore()
    await store.open()
    rt = await Runtime.create(
        load_config(path),
        store=store,
        metrics=Metrics(CollectorRegistry()),
        audit=Audit(store),
        config_path=path,
    )
    return rt, store


def _req(user: str) -> Request:
    return Request("POST", "/rec", "", [(b"x-user", user.encode())], "127.0.0.1")


async def test_decisions_rewards_reload_and_close(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(CONFIG % "")
    rt, store = await _runtime(path)
    try:
        route = rt.route("rec")
        tokens = [route.select(_req(f"u{i}")).token for i in range(20)]
        assert all(tokens)
        body = {"feedback": [{"decision": t, "reward": 1} for t in tokens[:5]]}
        status, _ = await rt.handle_feedback(json.dumps(body).encode())
        assert status == 202
        # the reward records are on disk when the 202 is answered
        text = (tmp_path / "logs" / "rec.jsonl").read_text()
        assert text.count('"type":"reward"') == 5
        assert rt.status("rec")["decision_log"]["rewards_written"] == 5
        text_metrics = rt.metrics.render().decode()
        assert 'modelrouter_decision_log_rewards_total{route="rec"} 5.0' in text_metrics

        # a reload that changes the log settings swaps the writer; the old one is closed
        old = route.dlog
        assert old is not None
        path.write_text(CONFIG % ", sample_rate: 0.5")
        await rt.reload_from_file()
        new = rt.route("rec").dlog
        assert new is not None and new.writer is not old.writer
        assert old.writer._thread is None  # closed, everything it had is written
        for i in range(20, 40):
            rt.route("rec").select(_req(f"u{i}"))
    finally:
        await rt.close()
        await store.close()
    contents = read_log(tmp_path / "logs" / "rec.jsonl")
    ext = to_logged_data(contents, missing_reward=0.0)
    assert 20 < ext.data.n < 40  # all 20 of the first config, about half of the next 20
    units = {r.id: r for r in contents.rounds.values()}
    assert len(units) == ext.data.n
    first = (tmp_path / "logs" / "rec.jsonl").read_text().splitlines()
    decision = next(json.loads(x) for x in first if '"type":"decision"' in x)
    assert decision["unit"] is not None and len(decision["unit"]) == 16  # hashed sticky key
    assert "u0" not in json.dumps(decision)


async def test_rewards_taken_from_responses_are_logged_with_their_decisions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        (CONFIG % "").replace(
            "params: {epsilon: 0.5}}", "params: {epsilon: 0.5}, reward: {from: response}}"
        )
    )
    rt, store = await _runtime(path)
    try:
        route = rt.route("rec")
        for i in range(30):
            sel = route.select(_req(f"u{i}"))
            assert sel.logged is not None
            # a fails, b answers: the reward the route learns is the one logged
            route.record(sel, 500 if sel.backend.name == "a" else 200, 0.01, None)
    finally:
        await rt.close()
        await store.close()
    ext = to_logged_data(read_log(tmp_path / "logs" / "rec.jsonl"))
    assert ext.data.n == 30 and ext.unrewarded == 0
    for r in ext.rounds:
        assert r.reward == (0.0 if r.arm == "a" else 1.0)
