"""Issue 10, inputs that cannot poison a route: declared reward ranges and huge rewards (422),
tokens of another feature layout (409), poisoned records already in the store, late rewards
under discounting, and the per-context view of a contextual route."""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from policies.base import Context, Decision
from router.app import open_runtime
from router.config import parse_config
from router.runtime import Runtime
from router.store.base import FeedbackRecord
from router.store.memory import MemoryStore

CONFIG = """
version: 1
feedback: {ttl: 600s}
backends:
  a: {url: "http://127.0.0.1:9"}
  b: {url: "http://127.0.0.1:9"}
routes:
  - name: revenue
    match: {path_prefix: /rev}
    policy:
      kind: bandit
      arms: [a, b]
      algorithm: thompson
      reward: {type: continuous, range: [0, 100]}
  - name: open
    match: {path_prefix: /open}
    policy: {kind: bandit, arms: [a, b], algorithm: ucb1, reward: {type: continuous}}
  - name: drift
    match: {path_prefix: /drift}
    policy: {kind: bandit, arms: [a, b], algorithm: thompson, discount: 0.9}
  - name: ctx
    match: {path_prefix: /ctx}
    policy:
      kind: contextual_bandit
      arms: [a, b]
      features:
        - {name: climate, from: "header:x-climate", type: categorical, values: [hot, cold]}
        - {name: age, from: "query:age", type: numeric, range: [0, 100]}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    store = MemoryStore()
    await store.open()
    runtime = await open_runtime(parse_config(textwrap.dedent(CONFIG)), store=store, clock=Clock())
    yield runtime
    await runtime.close()


async def post(rt: Runtime, doc: Any) -> tuple[int, dict[str, Any]]:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    status, out = await rt.handle_feedback(body)
    return status, json.loads(out)


def decide(rt: Runtime, route: str, ctx: Context | None = None) -> tuple[str, str]:
    """A real decision through the route's engine and its token (as the data plane does)."""
    engine: Any = rt.route(route).engine
    ctx = ctx if ctx is not None else Context()
    d = engine.choose(ctx)
    tok = rt.issue_token(route, d, ctx, engine.layout)
    assert tok is not None
    return tok, d.arm


def ctx_for(rt: Runtime, climate: str, age: float) -> Context:
    engine: Any = rt.route("ctx").engine
    raw = {("header", "x-climate"): climate, ("query", "age"): age}
    x, label = engine.encoder.encode(lambda s, k: raw.get((s, k)))
    return Context(features=x, label=label)


@pytest.mark.parametrize(
    ("route", "reward", "message"),
    [
        ("open", 1e308, r"within \+-1e\+15"),
        ("open", -1e308, r"within \+-1e\+15"),
        ("revenue", 150.0, r"declared range \[0, 100\], got 150"),
        ("revenue", -0.5, r"declared range \[0, 100\]"),
    ],
)
async def test_reward_outside_range_is_refused_and_changes_nothing(
    rt: Runtime, route: str, reward: float, message: str
) -> None:
    """Issue 10 item 5: `1e308` was accepted (202) and made the statistics infinite."""
    tok, _ = decide(rt, route)
    status, out = await post(rt, {"decision": tok, "reward": reward})
    assert status == 422, out
    assert re.search(message, out["error"]), out["error"]
    assert out["error"].startswith("reward: ")
    engine: Any = rt.route(route).engine
    assert all(s.rewards == 0 for s in engine.policy.stats().values())
    assert await rt.store.feedback_since(route, 0) == []  # nothing stored, nothing to replay
    assert rt.metrics.registry.get_sample_value(
        "modelrouter_feedback_rejected_total", {"reason": "invalid_reward"}
    )


async def test_reward_inside_the_declared_range_is_learned(rt: Runtime) -> None:
    tok, _ = decide(rt, "revenue")
    assert (await post(rt, {"decision": tok, "reward": 99.5}))[0] == 202
    st = rt.status("revenue")
    assert st["reward"]["range"] == [0.0, 100.0]
    assert sum(a["reward_sum"] for a in st["arms"].values()) == 99.5


async def test_poisoned_record_already_in_the_store_is_skipped_on_replay() -> None:
    """Issue 10 item 5: the poisoned record was replayed after a restart and the snapshot
    failed every second. Now it is skipped, counted and logged, and learning goes on."""
    store = MemoryStore()
    await store.open()
    rec = [
        FeedbackRecord("t1", "open", "a", 1e308, 1.0, 2.0),
        FeedbackRecord("t2", "open", "a", 3.0, 1.0, 2.0),
    ]
    assert await store.feedback_add(rec) == [True, True]
    runtime = await open_runtime(parse_config(textwrap.dedent(CONFIG)), store=store, clock=Clock())
    try:
        engine: Any = runtime.route("open").engine
        await engine.tick()
        st = runtime.status("open")
        assert st["rewards_refused"] >= 1  # met by the local pass and by the merge fold
        assert st["arms"]["a"]["reward_sum"] == 3.0
        assert all(math.isfinite(v) for v in (*engine.policy.mu, *engine.policy.m2))
        await engine.persist()  # the snapshot is JSON-able again
        snap = await store.get("policy:open")
        assert isinstance(snap, dict) and snap["watermark"] >= 2
    finally:
        await runtime.close()


async def test_token_of_another_feature_layout_is_refused_with_409(rt: Runtime) -> None:
    """Issue 10 item 6: a token issued under another layout still updated the model (with a
    unit vector). Now it is refused before anything is stored, and changes nothing."""
    tok, _ = decide(rt, "ctx", ctx_for(rt, "hot", 30))
    # the route's features change (same dimension, other meaning): a reload builds a new engine
    new = textwrap.dedent(CONFIG).replace("values: [hot, cold]", "values: [cold, hot]")
    await rt.reload(parse_config(new))
    engine = rt.route("ctx").engine
    A_before = engine.policy.A.copy()
    status, out = await post(rt, {"decision": tok, "reward": 1})
    assert status == 409, out
    assert "layout" in out["error"] and "features changed" in out["error"]
    assert np.array_equal(engine.policy.A, A_before)
    assert await rt.store.feedback_since("ctx", 0) == []
    assert rt.metrics.registry.get_sample_value(
        "modelrouter_feedback_rejected_total", {"reason": "stale_layout"}
    )
    # a token of the current layout is credited and updates the model
    tok, _ = decide(rt, "ctx", ctx_for(rt, "hot", 30))
    assert (await post(rt, {"decision": tok, "reward": 1}))[0] == 202
    assert not np.array_equal(engine.policy.A, A_before)


async def test_old_style_token_with_a_vector_of_another_length_is_refused(rt: Runtime) -> None:
    engine: Any = rt.route("ctx").engine
    ctx = Context(features=np.ones(engine.encoder.dim + 2), label="climate=hot")
    tok = rt.issue_token("ctx", Decision("a", 0.5), ctx)  # no layout: a token of an older router
    assert tok is not None
    status, out = await post(rt, {"decision": tok, "reward": 1})
    assert status == 409 and "older router" in out["error"]


async def test_late_reward_is_decayed_by_the_trials_since_its_decision(rt: Runtime) -> None:
    """Issue 10 item 8: with discount < 1 late rewards were added undecayed."""
    engine: Any = rt.route("drift").engine
    late, _ = decide(rt, "drift")
    for _ in range(10):
        tok, _ = decide(rt, "drift")
        assert (await post(rt, {"decision": tok, "reward": 0}))[0] == 202
    n_before = sum(engine.policy.n)
    assert (await post(rt, {"decision": late, "reward": 1}))[0] == 202
    # every weight decays by 0.9 for the new trial; the late one enters at 0.9^10, not 1
    assert sum(engine.policy.n) == pytest.approx(0.9 * n_before + 0.9**10)


async def test_status_shows_regret_uncertainty_and_per_context_view(rt: Runtime) -> None:
    g = np.random.default_rng(0)
    means = {("hot", "a"): 0.8, ("hot", "b"): 0.2, ("cold", "a"): 0.1, ("cold", "b"): 0.7}
    for _ in range(400):
        climate = "hot" if g.random() < 0.5 else "cold"
        tok, arm = decide(rt, "ctx", ctx_for(rt, climate, float(g.integers(0, 100))))
        reward = float(g.random() < means[(climate, arm)])
        assert (await post(rt, {"decision": tok, "reward": reward}))[0] == 202
    st = rt.status("ctx")
    assert st["regret_method"] == "contextual"
    assert st["regret_sd"] is not None and st["regret_sd"] >= 0
    lo, hi = st["regret_interval"]
    assert lo <= st["regret"] <= hi
    view = {c["context"]: c for c in st["contexts"]}
    print(json.dumps(view, indent=1)[:1500])
    hot, cold = view["climate=hot"], view["climate=cold"]
    assert hot["sent_to"] == "a" and cold["sent_to"] == "b"
    for c in (hot, cold):
        for arm in ("a", "b"):
            e = c["arms"][arm]
            assert e["ci_low"] <= e["estimate"] <= e["ci_high"]
        assert c["decisions"] > 100
    assert hot["arms"]["a"]["share"] > 0.6
