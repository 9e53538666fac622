"""Learning engines in-process: choice, rewards, status, persistence and replay, reload, context."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from policies.base import BUCKETS, Context
from router.audit import Audit
from router.config import parse_config
from router.dataplane.seam import Request
from router.engines.base import ActionError, Services
from router.engines.learning import ENGINES, ContextualEngine, LearningEngine
from router.metrics import Metrics
from router.store.base import FeedbackRecord
from router.store.memory import MemoryStore

BASE = """
version: 1
feedback: {{missing_reward: {missing}}}
backends:
  a: {{url: "http://127.0.0.1:9", version: 1.0.0}}
  b: {{url: "http://127.0.0.1:9", version: 1.1.0}}
  c: {{url: "http://127.0.0.1:9"}}
routes:
  - name: r
    match: {{path_prefix: /}}
    policy: {policy}
"""

BANDIT = "{kind: bandit, arms: [a, b], algorithm: thompson}"
AB = (
    "{kind: ab_test, arms: {A: a, B: b}, split: {A: 50, B: 50}, "
    "test: {method: z_test, min_samples: 100}, conclude: route_winner}"
)
CTX = """
      kind: contextual_bandit
      arms: [a, b]
      algorithm: linucb
      params: {alpha: 0.5}
      features:
        - {name: climate, from: "header:x-climate", type: categorical, values: [hot, cold]}
        - {name: age, from: "json:/instances/0/age", type: numeric, scale: 0.01, default: 0.3}
"""


async def make(
    policy: str, missing: str = "null", store: MemoryStore | None = None, seed: int = 0
) -> LearningEngine:
    if store is None:
        store = MemoryStore()
        await store.open()
    text = textwrap.dedent(
        BASE.format(missing=missing, policy=policy.strip() if "\n" not in policy else "\n" + policy)
    )
    config = parse_config(text, "test.yaml")
    svc = Services(
        config=config,
        store=store,
        metrics=Metrics(registry=CollectorRegistry()),
        audit=Audit(store),
        backends=config.backends,
        rng=np.random.default_rng(seed),
    )
    route = config.routes[0]
    engine = ENGINES[route.policy.kind](route, svc)
    assert isinstance(engine, LearningEngine)
    engine.tick_interval = 3600  # tests drive tick() themselves
    await engine.start()
    return engine


def metric(engine: LearningEngine, name: str, **labels: str) -> float | None:
    return engine._metrics.registry.get_sample_value(name, labels)


async def test_bandit_engine_choose_feedback_status() -> None:
    e = await make(BANDIT)
    try:
        assert e.learns and e.kind == "bandit" and e.arms == ("a", "b")
        for _ in range(200):
            d = e.choose(Context())
            e.feedback(d.arm, 1.0 if d.arm == "b" else 0.0, Context())
        st = e.status()
        assert st["phase"] == "active" and st["algorithm"] == "thompson"
        assert st["arms"]["a"]["version"] == "1.0.0"
        b = st["arms"]["b"]
        assert b["decisions"] == b["rewards"] and b["reward_mean"] == 1.0
        assert b["ci_low"] < 1.0 <= b["ci_high"] + 1e-12
        assert sum(st["shares"].values()) == pytest.approx(1.0)
        assert st["shares"]["b"] > 0.8 and st["regret"] >= 0
        await e.tick()
        assert metric(e, "modelrouter_decisions_total", route="r", backend="b") == b["decisions"]
        assert metric(e, "modelrouter_reward_mean", route="r", backend="b") == 1.0
        assert metric(e, "modelrouter_regret", route="r") == st["regret"]
        with pytest.raises(ActionError) as err:
            await e.action("promote", None, "admin", {})
        assert err.value.status == 409
    finally:
        await e.stop()


async def test_missing_reward_zero_counts_every_decision() -> None:
    e = await make(BANDIT, missing="0")
    try:
        arms = [e.choose(Context()).arm for _ in range(10)]
        st = e.policy.stats()
        assert sum(s.rewards for s in st.values()) == 10  # trials at decision time
        e.feedback(arms[0], 1.0, Context())
        assert sum(s.rewards for s in st.values()) == 10  # feedback adds reward, not a trial
        assert st[arms[0]].reward_sum == 1.0
    finally:
        await e.stop()


async def test_null_missing_reward_counts_only_rewarded() -> None:
    e = await make(BANDIT)
    try:
        for _ in range(10):
            e.choose(Context())
        assert sum(s.rewards for s in e.policy.stats().values()) == 0
    finally:
        await e.stop()


async def test_ab_engine_maps_arms_to_backends_and_concludes() -> None:
    e = await make(AB)
    try:
        assert e.arms == ("a", "b")
        assert e.choose(Context(bucket=0)).arm == "a"
        assert e.choose(Context(bucket=BUCKETS - 1)).arm == "b"
        env = np.random.default_rng(1)
        for _ in range(4000):
            d = e.choose(Context())
            e.feedback(d.arm, float(env.random() < (0.1 if d.arm == "a" else 0.25)), Context())
        await e.tick()
        st = e.status()
        assert st["phase"] == "concluded" and st["test"]["winner"] == "B"
        assert st["arms"]["b"]["arm"] == "B"
        assert st["shares"] == {"a": 0.0, "b": 1.0}
        assert e.choose(Context(bucket=0)).arm == "b"
        assert metric(e, "modelrouter_experiment_p_value", route="r", arm="B") < 0.05
        audit = await e.services.audit.list()
        assert any(x["action"] == "concluded" and x["winner"] == "B" for x in audit)
    finally:
        await e.stop()


async def test_ab_srm_is_audited() -> None:
    e = await make(AB.replace("z_test", "bayesian"))
    try:
        for _ in range(3000):
            e.choose(Context(bucket=0))
        for _ in range(2000):
            e.choose(Context(bucket=BUCKETS - 1))
        await e.tick()
        assert e.status()["test"]["srm"]["flagged"]
        audit = await e.services.audit.list()
        assert [x["action"] for x in audit].count("srm_flagged") == 1
        await e.tick()
        assert [x["action"] for x in await e.services.audit.list()].count("srm_flagged") == 1
        assert "prob_best" in e.status()["test"]
    finally:
        await e.stop()


async def test_persist_restore_and_replay_without_double_counting() -> None:
    store = MemoryStore()
    await store.open()
    e = await make(BANDIT, store=store)

    async def accept(engine: LearningEngine, tid: str, arm: str, reward: float) -> None:
        rec = FeedbackRecord(tid, "r", arm, reward, 1.0, 2.0)
        assert await store.feedback_add([rec]) == [True]
        engine.feedback(arm, reward, Context(), token_id=tid)

    for i in range(20):
        await accept(e, f"t{i}", "a" if i % 2 else "b", 1.0)
    await e.tick()  # folds the log into the shared sums (mark 20)
    for i in range(20, 30):
        await accept(e, f"t{i}", "b", 1.0)  # applied provisionally, durable in the log
    await e.persist()  # the policy document: nothing in it adds up any more
    await accept(e, "t30", "a", 0.0)  # durable only: the "crash" comes before any tick
    expected = {a: (s.rewards, s.reward_sum) for a, s in e.policy.stats().items()}
    e2 = await make(BANDIT, store=store, seed=5)  # a restart on the same store
    try:
        got = {a: (s.rewards, s.reward_sum) for a, s in e2.policy.stats().items()}
        assert got == expected
        assert e2._mark == 31  # the restart folded the rest of the log, exactly once
        await e2.tick()
        assert {a: (s.rewards, s.reward_sum) for a, s in e2.policy.stats().items()} == expected
    finally:
        await e2.stop()
        if e._task is not None:
            e._task.cancel()


async def test_feedback_from_another_worker_is_pulled() -> None:
    store = MemoryStore()
    await store.open()
    e1 = await make(BANDIT, store=store)
    e2 = await make(BANDIT, store=store)
    try:
        rec = FeedbackRecord("x1", "r", "b", 1.0, 1.0, 2.0)
        await store.feedback_add([rec])
        e1.feedback("b", 1.0, Context(), token_id="x1")
        await e1.tick()
        await e2.tick()
        assert e1.policy.stats()["b"].reward_sum == 1.0
        assert e2.policy.stats()["b"].reward_sum == 1.0
        e2.feedback("b", 1.0, Context(), token_id="x1")  # late handler call after the pull
        assert e2.policy.stats()["b"].reward_sum == 1.0
    finally:
        await e1.stop()
        await e2.stop()


async def test_reload_with_new_arm_keeps_old_stats() -> None:
    store = MemoryStore()
    await store.open()
    e = await make("{kind: bandit, arms: [a, b], algorithm: ucb1}", store=store)
    for _ in range(50):
        d = e.choose(Context())
        e.feedback(d.arm, 1.0, Context())
    before = e.policy.stats()["a"].rewards
    await e.stop()
    e2 = await make("{kind: bandit, arms: [a, b, c], algorithm: ucb1}", store=store)
    try:
        assert e2.policy.stats()["a"].rewards == before > 0
        assert e2.choose(Context()).arm == "c"  # new arm is cold: played first
    finally:
        await e2.stop()


async def test_reward_from_response() -> None:
    e = await make(
        "{kind: bandit, arms: [a, b], algorithm: thompson, "
        "reward: {from: response, max_latency: 1s}}"
    )
    try:
        e.observe("a", 200, 0.01, None)
        e.observe("a", 200, 2.0, None)
        e.observe("b", 503, 0.01, None)
        e.observe("b", 200, 0.01, "reset")
        st = e.policy.stats()
        assert (st["a"].rewards, st["a"].reward_sum) == (2, 1.0)
        assert (st["b"].rewards, st["b"].reward_sum) == (2, 0.0)
    finally:
        await e.stop()


async def test_contextual_context_from_request() -> None:
    e = await make(CTX)
    try:
        assert isinstance(e, ContextualEngine) and e.needs_body
        req = Request(
            "POST",
            "/p",
            "",
            [(b"X-Climate", b"cold")],
            "127.0.0.1",
            body=json.dumps({"instances": [{"age": 50}]}).encode(),
        )
        ctx = e.make_context(req, 7)
        assert ctx.bucket == 7 and ctx.label == "climate=cold"
        assert ctx.features is not None and ctx.features.tolist() == [1.0, 0.0, 1.0, 0.5]
        bad = Request("POST", "/p", "", [], "127.0.0.1", body=b"{oops")
        ctx2 = e.make_context(bad, None)
        assert ctx2.features is not None and ctx2.features.tolist() == [1.0, 0.0, 0.0, 0.3]
        hot = e.make_context(Request("GET", "/", "", [(b"x-climate", b"hot")], "::1"), None)
        cold = ctx
        for _ in range(600):
            for c, best in ((hot, "a"), (cold, "b")):
                d = e.choose(c)
                e.feedback(d.arm, 1.0 if d.arm == best else 0.0, c)
        assert e.choose(hot).arm == "a" and e.choose(cold).arm == "b"
        # a feature vector of another layout (older config) does not break learning
        e.feedback("a", 1.0, Context(features=np.ones(9), label="x"))
        assert e.status()["regret"] >= 0
    finally:
        await e.stop()


def test_registry() -> None:
    assert set(ENGINES) == {"ab_test", "bandit", "contextual_bandit"}


async def test_status_regret_uses_current_estimates_and_uniform_baseline() -> None:
    e = await make(BANDIT, missing="0")
    try:
        env = np.random.default_rng(2)
        for _ in range(300):
            d = e.choose(Context())
            e.feedback(d.arm, float(env.random() < (0.2 if d.arm == "a" else 0.6)), Context())
        st = e.status()
        mu = {a: s.reward_sum / s.rewards for a, s in e.policy.stats().items()}
        gap = mu["b"] - mu["a"]
        n_a = e.policy.stats()["a"].decisions
        assert st["regret"] == pytest.approx(n_a * gap)
        assert st["regret_uniform"] == pytest.approx(300 * gap / 2)
        assert st["regret"] < st["regret_uniform"]
        await e.tick()
        assert metric(e, "modelrouter_regret", route="r") == pytest.approx(st["regret"])
    finally:
        await e.stop()


async def test_srm_metric_follows_the_test() -> None:
    e = await make(AB.replace("z_test", "bayesian"))
    try:
        for _ in range(200):
            e.choose(Context())
        await e.tick()
        assert metric(e, "modelrouter_experiment_srm", route="r") == 0.0
        for _ in range(3000):
            e.choose(Context(bucket=0))
        await e.tick()
        assert metric(e, "modelrouter_experiment_srm", route="r") == 1.0
    finally:
        await e.stop()


@pytest.mark.parametrize("missing", ["null", "0"])
async def test_failover_counts_the_arm_that_served(missing: str) -> None:
    e = await make(BANDIT, missing=missing)
    try:
        up = {"a": False, "b": True}
        for _ in range(50):
            d = e.choose(Context(), healthy=up.__getitem__)
            assert d.arm == "b" and d.propensity == pytest.approx(1.0)
        st = e.policy.stats()
        assert st["a"].decisions == 0 and st["b"].decisions == 50
        assert st["a"].rewards == 0
        assert st["b"].rewards == (50 if missing == "0" else 0)
        assert e.regret.decisions() == {"b": 50.0}
        assert metric(e, "modelrouter_decisions_total", route="r", backend="a") is None
        assert metric(e, "modelrouter_decisions_total", route="r", backend="b") == 50
        # nothing healthy: the pick stands (the proxy answers 503)
        d = e.choose(Context(), healthy=lambda _b: False)
        assert e.policy.stats()[d.arm].decisions >= 1
    finally:
        await e.stop()


async def test_failover_on_ab_test_maps_backends_and_propensity() -> None:
    e = await make(AB)
    try:
        d = e.choose(Context(bucket=0), healthy=lambda b: b != "a")
        assert d.arm == "b" and d.propensity == pytest.approx(1.0)
        assert e.policy.stats()["A"].decisions == 0 and e.policy.stats()["B"].decisions == 1
    finally:
        await e.stop()
