"""Issue 10 through the learning engine: units via tokens and stored feedback, SRM per period,
guardrails on A/B and bandit routes, lift metrics, t intervals, stores keeping the bucket."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy import stats as sp

from policies.base import BUCKETS, Context
from router.audit import Audit
from router.config import parse_config
from router.engines.base import Services
from router.engines.learning import ENGINES, LearningEngine
from router.feedback import TokenSigner
from router.metrics import Metrics
from router.store.base import FeedbackRecord
from router.store.memory import MemoryStore
from router.store.sqlite import SqliteStore

BASE = """
version: 1
backends:
  a: {{url: "http://127.0.0.1:9"}}
  b: {{url: "http://127.0.0.1:9"}}
routes:
  - name: r
    match: {{path_prefix: /}}
{sticky}    policy:
{policy}
"""

AB = """\
kind: ab_test
arms: {A: a, B: b}
test: {method: z_test, min_samples: 100}
conclude: route_winner
"""


async def make(
    policy: str, sticky: bool = False, store: MemoryStore | SqliteStore | None = None
) -> LearningEngine:
    if store is None:
        store = MemoryStore()
        await store.open()
    text = BASE.format(
        sticky='    sticky: {key: "cookie:uid"}\n' if sticky else "",
        policy=textwrap.indent(policy, "      "),
    )
    config = parse_config(text, "test.yaml")
    svc = Services(
        config=config,
        store=store,
        metrics=Metrics(registry=CollectorRegistry()),
        audit=Audit(store),
        backends=config.backends,
        rng=np.random.default_rng(0),
    )
    route = config.routes[0]
    engine = ENGINES[route.policy.kind](route, svc)
    assert isinstance(engine, LearningEngine)
    engine.tick_interval = 3600
    await engine.start()
    return engine


def metric(e: LearningEngine, name: str, **labels: str) -> float | None:
    return e._metrics.registry.get_sample_value(name, labels)


async def test_srm_after_route_winner_is_not_a_false_alarm() -> None:
    e = await make(AB)
    g = np.random.default_rng(1)
    try:
        for _ in range(4000):
            d = e.choose(Context())
            e.feedback(d.arm, float(g.random() < (0.1 if d.arm == "a" else 0.25)), Context())
        await e.tick()
        assert e.phase == "concluded"
        for _ in range(5000):
            e.choose(Context())
        await e.tick()
        srm = e.status()["test"]["srm"]
        actions = [x["action"] for x in await e.services.audit.list()]
        print("SRM after conclusion:", srm["p_value"], actions)
        assert not srm["flagged"] and "srm_flagged" not in actions
        assert metric(e, "modelrouter_experiment_srm", route="r") == 0.0
    finally:
        await e.stop()


async def test_sticky_route_counts_users_through_tokens_and_replay() -> None:
    store = MemoryStore()
    await store.open()
    e = await make(AB.replace("z_test", "msprt"), sticky=True, store=store)
    g = np.random.default_rng(2)
    records = []
    try:
        for user in range(300):
            bucket = int(g.integers(0, BUCKETS))
            for i in range(5):
                ctx = Context(bucket=bucket)
                d = e.choose(ctx)
                r = float(g.random() < 0.2)
                if user < 150:
                    e.feedback(d.arm, r, ctx)  # the handler's path
                else:  # stored by another replica: replayed with its bucket
                    records.append(
                        FeedbackRecord(f"t{user}-{i}", "r", d.arm, r, 0.0, 0.0, bucket=bucket)
                    )
        await store.feedback_add(records)
        await e.tick()
        st = e.status()
        assert st["unit"] == "user" and st["test"]["unit"] == "user"
        units = sum(a["units"] for a in st["test"]["arms"].values())
        n = sum(a["n"] for a in st["test"]["arms"].values())
        print("units", units, "observations", n)
        assert n == 1500 and 290 <= units <= 300
    finally:
        await e.stop()


async def test_ab_guardrail_blocks_the_winner_and_is_audited() -> None:
    e = await make(AB + "guardrails: [{metric: error_rate, max: 0.02}]\n")
    g = np.random.default_rng(3)
    try:
        for _ in range(6000):
            d = e.choose(Context())
            bad = g.random() < (0.005 if d.arm == "a" else 0.08)
            e.observe(d.arm, 500 if bad else 200, 0.01, None)
            e.feedback(d.arm, float(g.random() < (0.1 if d.arm == "a" else 0.3)), Context())
        await e.tick()
        test = e.status()["test"]
        assert test["guardrails"]["arms"]["B"]["failed"]
        assert test["comparisons"]["B"]["significant"] and test["winner"] is None
        assert e.phase == "active"
        got = metric(
            e, "modelrouter_experiment_guardrail_failed", route="r", arm="b", guardrail="error_rate"
        )
        assert got == 1.0
        actions = [x["action"] for x in await e.services.audit.list()]
        assert actions.count("guardrail_failed") == 1
    finally:
        await e.stop()


async def test_bandit_arm_failing_a_guardrail_gets_at_most_min_share() -> None:
    e = await make(
        "kind: bandit\narms: [a, b]\nalgorithm: thompson\nmin_share: 0.05\n"
        "guardrails: [{metric: latency, percentile: 95, max: 200ms}]\n"
    )
    g = np.random.default_rng(4)
    try:
        for i in range(4000):
            d = e.choose(Context())
            slow = d.arm == "b" and g.random() < 0.3
            e.observe(d.arm, 200, 0.5 if slow else 0.05, None)
            # b converts better: without the guardrail the bandit would send it most traffic
            e.feedback(d.arm, float(g.random() < (0.1 if d.arm == "a" else 0.3)), Context())
            if i % 500 == 499:
                await e.tick()
        assert e.status()["guardrails"]["arms"]["b"]["failed"]
        served = [e.choose(Context()) for _ in range(4000)]
        share_b = sum(d.arm == "b" for d in served) / 4000
        props = {d.propensity for d in served if d.arm == "b"}
        print("share of the failing arm:", share_b, props)
        assert share_b < 0.08 and props == {0.05}
    finally:
        await e.stop()


async def test_reward_guardrail_from_feedback_metrics() -> None:
    e = await make(AB + "guardrails: [{metric: reward, name: revenue, max_decrease: 0.1}]\n")
    g = np.random.default_rng(5)
    try:
        assert e.guardrail_metrics == frozenset({"revenue"})
        for _ in range(3000):
            d = e.choose(Context())
            rev = g.normal(1.0 if d.arm == "a" else 0.6, 0.3)
            e.feedback(d.arm, 1.0, Context(), metrics={"revenue": float(rev)})
        await e.tick()
        assert e.status()["test"]["guardrails"]["arms"]["B"]["failed"]
    finally:
        await e.stop()


async def test_lift_metrics_and_progress() -> None:
    e = await make(AB.replace("min_samples: 100", "min_samples: 4000"))
    g = np.random.default_rng(6)
    try:
        for _ in range(2000):
            d = e.choose(Context())
            e.feedback(d.arm, float(g.random() < (0.1 if d.arm == "a" else 0.12)), Context())
        await e.tick()
        c = e.status()["test"]["comparisons"]["B"]
        est = metric(e, "modelrouter_experiment_lift", route="r", arm="B", bound="estimate")
        low = metric(e, "modelrouter_experiment_lift", route="r", arm="B", bound="low")
        assert est == pytest.approx(c["lift"]) and low == pytest.approx(c["lift_low"])
        assert metric(e, "modelrouter_experiment_p_adjusted", route="r", arm="B") is not None
        prog = metric(e, "modelrouter_experiment_progress", route="r")
        assert prog is not None and 0.2 < prog < 0.3
    finally:
        await e.stop()


async def test_continuous_interval_uses_t_at_small_n() -> None:
    e = await make("kind: bandit\narms: [a, b]\nalgorithm: ucb1\nreward: {type: continuous}\n")
    try:
        xs = [1.0, 2.0, 4.0]
        for x in xs:
            e.feedback("a", x, Context())
        arm = e.status()["arms"]["a"]
        ref = sp.t.interval(0.95, 2, loc=np.mean(xs), scale=sp.sem(xs))
        print("interval n=3:", (arm["ci_low"], arm["ci_high"]), "scipy:", ref)
        assert (arm["ci_low"], arm["ci_high"]) == pytest.approx(ref)
    finally:
        await e.stop()


def test_token_carries_the_bucket_and_old_tokens_still_verify() -> None:
    s = TokenSigner(b"k" * 32)
    t = s.issue("r", "a", 0.5, 1, None, None, 100.0, bucket=4242)
    assert s.verify(t, 101.0, 60).bucket == 4242
    old = s.issue("r", "a", 0.5, 1, None, None, 100.0)  # no bucket: the pre-issue-10 layout
    assert s.verify(old, 101.0, 60).bucket is None


async def test_sqlite_keeps_bucket_and_metrics_and_upgrades_old_files(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # a store file from before the extra column
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT, token_id TEXT NOT NULL "
        "UNIQUE, route TEXT NOT NULL, arm TEXT NOT NULL, reward REAL NOT NULL, decided_at REAL "
        "NOT NULL, received_at REAL NOT NULL, context TEXT, label TEXT);"
        "INSERT INTO feedback (token_id, route, arm, reward, decided_at, received_at) "
        "VALUES ('old', 'r', 'a', 1.0, 0, 0);"
    )
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    await store.open()
    try:
        rec = FeedbackRecord("new", "r", "b", 0.0, 1.0, 1.0, bucket=7, metrics={"revenue": 2.5})
        assert await store.feedback_add([rec]) == [True]
        got = await store.feedback_since("r", 0)
        assert [(x.token_id, x.bucket, x.metrics) for x in got] == [
            ("old", None, None),
            ("new", 7, {"revenue": 2.5}),
        ]
    finally:
        await store.close()


async def test_bandit_guardrail_failure_survives_a_restart() -> None:
    store = MemoryStore()
    await store.open()
    policy = (
        "kind: bandit\narms: [a, b]\nalgorithm: thompson\nmin_share: 0.05\n"
        "guardrails: [{metric: error_rate, max: 0.05}]\n"
    )
    e = await make(policy, store=store)
    g = np.random.default_rng(11)
    for _ in range(3000):
        d = e.choose(Context())
        e.observe(d.arm, 500 if (d.arm == "b" and g.random() < 0.3) else 200, 0.01, None)
    await e.tick()
    assert e.status()["guardrails"]["arms"]["b"]["failed"]
    await e.stop()
    again = await make(policy, store=store)  # restart (or reload): restores the snapshot
    try:
        assert again.status()["guardrails"]["arms"]["b"]["failed"]
        served = [again.choose(Context()).arm for _ in range(2000)]
        assert served.count("b") / 2000 < 0.08
    finally:
        await again.stop()
