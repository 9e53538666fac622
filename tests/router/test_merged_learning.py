"""Learning state merged across processes (issue 13): increments added atomically to the store.

Each "process" here is a learning engine with its own store connection (its own SQLite
connection to one file, or its own Redis client on one server), exactly as `serve --workers` or
two replicas have. Decisions and rewards are interleaved with ticks in a seeded random order.
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from policies.base import Context
from router.audit import Audit
from router.config import parse_config
from router.engines.base import Services
from router.engines.learning import ENGINES, LearningEngine
from router.feedback import TokenSigner
from router.metrics import Metrics
from router.store.base import FeedbackRecord, Store
from router.store.memory import MemoryStore
from router.store.sqlite import SqliteStore
from tests.router.test_store_redis import RedisServer, new_store, redis_server  # noqa: F401

BASE = """
version: 1
feedback: {{missing_reward: {missing}}}
backends:
  a: {{url: "http://127.0.0.1:9"}}
  b: {{url: "http://127.0.0.1:9"}}
  c: {{url: "http://127.0.0.1:9"}}
routes:
  - name: r
    match: {{path_prefix: /}}
    policy: {policy}
"""
BANDIT = "{kind: bandit, arms: [a, b, c], algorithm: thompson}"
LINUCB = (
    "{kind: contextual_bandit, arms: [a, b], algorithm: linucb, features: "
    '[{name: age, from: "header:x-age", type: numeric, default: 0.5}]}'
)

Opener = Callable[[], Store]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """A factory of store connections that all see the same data."""
    opened: list[Store] = []
    shared = MemoryStore()
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"m{random.randrange(1 << 30)}:"

    def make() -> Store:
        if request.param == "memory":
            return shared
        s: Store = (
            SqliteStore(tmp_path / "state.db")
            if request.param == "sqlite"
            else new_store(server, prefix=prefix)
        )
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()


async def engine(
    store: Store,
    policy: str,
    missing: str = "null",
    seed: int = 0,
    clock: Callable[[], float] | None = None,
) -> LearningEngine:
    await store.open()
    config = parse_config(textwrap.dedent(BASE.format(missing=missing, policy=policy)), "t.yaml")
    svc = Services(
        config=config,
        store=store,
        metrics=Metrics(registry=CollectorRegistry()),
        audit=Audit(store),
        backends=config.backends,
        rng=np.random.default_rng(seed),
        decider=TokenSigner(b"merged-learning-test-secret-0123"),
    )
    if clock is not None:
        svc.clock = clock
    e = ENGINES[config.routes[0].policy.kind](config.routes[0], svc)
    assert isinstance(e, LearningEngine)
    if clock is None:
        e.dead_after = 3600.0  # on the real clock nobody is judged dead by a slow machine
    e.tick_interval = 3600  # the test drives every tick
    await e.start()
    return e


def token_id(e: LearningEngine, i: int) -> str:
    assert e.services.decider is not None
    return f"{e.services.decider.prefix}{i:x}"  # as TokenSigner.issue makes them


def sums(e: LearningEngine) -> dict[str, tuple[int, int, float]]:
    return {
        a: (s.decisions, s.rewards, round(s.reward_sum, 9)) for a, s in e.policy.stats().items()
    }


@pytest.mark.parametrize("missing", ["null", "0"])
async def test_decisions_and_rewards_add_up_across_processes(opener: Opener, missing: str) -> None:
    rnd = random.Random(13)
    procs = [await engine(opener(), BANDIT, missing, seed=i) for i in range(3)]
    log_store = opener()
    await log_store.open()
    decided: dict[str, int] = dict.fromkeys("abc", 0)
    rewarded: dict[str, int] = dict.fromkeys("abc", 0)
    reward_sum: dict[str, float] = dict.fromkeys("abc", 0.0)
    pending: list[tuple[str, str, float]] = []
    clock = procs[0].services.clock
    try:
        for step in range(1500):
            p = rnd.choice(procs)
            u = rnd.random()
            if u < 0.6:
                arm = p.choose(Context()).arm
                decided[arm] += 1
                pending.append((token_id(p, step), arm, clock()))
            elif u < 0.9 and pending:
                # the reward goes to any process, as to any replica
                tid, arm, at = pending.pop(rnd.randrange(len(pending)))
                r = float(rnd.random() < {"a": 0.2, "b": 0.5, "c": 0.7}[arm])
                rec = FeedbackRecord(tid, "r", arm, r, at, clock())
                assert await p.services.store.feedback_add([rec]) == [True]
                p.feedback(arm, r, Context(), token_id=tid)
                rewarded[arm] += 1
                reward_sum[arm] += r
            else:
                await p.tick()
        # a reward waits until its decision is flushed by the process that made it
        for _ in range(3):
            for p in procs:
                await p.tick()
        if missing == "0":  # every decision is a trial; a reward adds only to the sum
            want = {a: (decided[a], decided[a], round(reward_sum[a], 9)) for a in "abc"}
        else:
            want = {a: (decided[a], rewarded[a], round(reward_sum[a], 9)) for a in "abc"}
        print("decisions", decided, "rewards", rewarded, "sums", reward_sum)
        for p in procs:
            assert sums(p) == want
        regret = {round(p.regret.estimate()[0], 6) for p in procs}
        assert len(regret) == 1  # the regret cells are merged too
    finally:
        for p in procs:
            await p.stop()
        await log_store.close()


async def test_linucb_model_is_the_sum_of_every_process(opener: Opener) -> None:
    rnd = random.Random(5)
    procs = [await engine(opener(), LINUCB, seed=i) for i in range(2)]
    A = {a: np.eye(2) for a in "ab"}
    b = {a: np.zeros(2) for a in "ab"}
    try:
        for step in range(400):
            p = procs[step % 2]
            x = np.array([1.0, rnd.random()])
            arm = p.choose(Context(features=x)).arm
            r = float(rnd.random() < 0.5)
            rec = FeedbackRecord(f"t{step}", "r", arm, r, 1.0, 2.0, (1.0, float(x[1])))
            other = procs[(step + 1) % 2]  # credited on the other replica
            assert await other.services.store.feedback_add([rec]) == [True]
            other.feedback(arm, r, Context(features=x), token_id=rec.token_id)
            A[arm] += np.outer(x, x)
            b[arm] += r * x
            if rnd.random() < 0.05:
                await rnd.choice(procs).tick()
        for p in procs + procs:
            await p.tick()
        for p in procs:
            pol: Any = p.policy
            for j, a in enumerate(pol.arms):
                np.testing.assert_allclose(pol.A[j], A[a], rtol=1e-9)
                np.testing.assert_allclose(pol.b[j], b[a], rtol=1e-9, atol=1e-9)
    finally:
        for p in procs:
            await p.stop()


async def test_a_killed_process_leaves_counts_and_sums_consistent(tmp_path: Path) -> None:
    """missing_reward 0 (the 0/0-with-reward_sum-308 bug): a process dies without flushing its
    last decisions; their rewards, posted anyway, count their decisions back once the process
    is judged dead; the process coming back from a stall is fenced, so nothing counts twice."""
    now = [1000.0]
    db = tmp_path / "state.db"
    a, b = SqliteStore(db), SqliteStore(db)
    pa = await engine(a, BANDIT, "0", seed=1, clock=lambda: now[0])
    pb = await engine(b, BANDIT, "0", seed=2, clock=lambda: now[0])
    accepted = 0.0
    for i in range(300):
        p = pa if i % 2 else pb
        arm = p.choose(Context()).arm
        rec = FeedbackRecord(token_id(p, i), "r", arm, float(i % 3 == 0), now[0], now[0])
        assert await p.services.store.feedback_add([rec]) == [True]
        p.feedback(arm, rec.reward, Context(), token_id=rec.token_id)
        accepted += rec.reward
        now[0] += 0.01
        if i == 200:
            await pa.tick()
            await pb.tick()
    # pa stalls here (or dies): its last ~50 decisions are not in the shared sums
    await pb.tick()

    def totals(e: LearningEngine) -> tuple[int, int, float]:
        st = e.policy.stats().values()
        return (
            sum(s.decisions for s in st),
            sum(s.rewards for s in st),
            round(sum(s.reward_sum for s in st), 6),
        )

    waiting = totals(pb)
    print("while pa is only late:", waiting)
    assert waiting[0] == waiting[1] < 300  # its rewards wait for its decisions
    now[0] += pb.dead_after + 1  # pa stays silent: judged dead
    await pb.tick()
    await pb.tick()
    print("after pa is judged dead:", totals(pb))
    assert totals(pb) == (300, 300, accepted)  # every decision with a reward counted once
    # pa was only stalled: its late flush is refused, it drops what it had not flushed and
    # carries on under a new token prefix, with the totals everyone else sees
    old = pa.services.decider.prefix if pa.services.decider else ""
    await pa.tick()
    assert pa.services.decider is not None and pa.services.decider.prefix != old
    await pa.tick()
    await pb.tick()
    assert totals(pa) == totals(pb) == (300, 300, accepted)
    await pa.stop()
    await pb.stop()
    await a.close()
    await b.close()


async def test_store_merge_is_atomic_under_concurrency(opener: Opener) -> None:
    import asyncio

    stores = [opener() for _ in range(4)]
    for s in stores:
        await s.open()

    async def add(s: Store, i: int) -> None:
        await s.merge("k", {"x": np.array([1.0, 0.5]), f"y{i % 3}": np.array([2.0])})

    await asyncio.gather(*(add(stores[i % 4], i) for i in range(200)))
    m = await stores[0].merge("k", {})
    assert m.totals["x"].tolist() == [200.0, 100.0]
    assert sum(float(m.totals[f"y{j}"][0]) for j in range(3)) == 400.0
    assert m.mark == -1
    # the conditional part is added by exactly one of the racing folders
    got = await asyncio.gather(
        *(s.merge("k", {}, {"z": np.array([1.0])}, expect=-1, mark=7) for s in stores)
    )
    assert sum(g.applied for g in got) == 1
    final = await stores[1].merge("k", {})
    assert final.totals["z"].tolist() == [1.0] and final.mark == 7
    with pytest.raises(ValueError, match="not finite"):
        await stores[0].merge("k", {"x": np.array([float("nan")])})


AB = (
    "{kind: ab_test, arms: {A: a, B: b}, split: {A: 50, B: 50}, "
    "test: {method: z_test, min_samples: 100}, conclude: route_winner}"
)


async def test_an_ab_test_decided_on_merged_totals_is_audited_once(opener: Opener) -> None:
    """Every process sees the same merged test; one of them records it."""
    procs = [await engine(opener(), AB, seed=i) for i in range(3)]
    rnd = random.Random(2)
    try:
        for step in range(3000):
            p = procs[step % 3]
            arm = p.choose(Context()).arm
            p.feedback(arm, float(rnd.random() < (0.2 if arm == "a" else 0.6)), Context())
            if step % 50 == 49:
                for q in procs:
                    await q.tick()
            if all(q.phase == "concluded" for q in procs):
                break
        assert all(q.phase == "concluded" for q in procs)
        for q in procs:
            await q.tick()
        entries = await procs[0].services.audit.list()
        actions = [e["action"] for e in entries]
        print("audit:", actions)
        assert actions.count("concluded") == 1
    finally:
        for q in procs:
            await q.stop()


async def test_a_merge_cancelled_in_flight_is_not_counted_twice() -> None:
    """stop() or a reload cancels the tick while its merge is in the store: the increments must
    be counted once, not once by the cancelled merge and again by the final one."""
    import asyncio

    class SlowStore(MemoryStore):
        gate: asyncio.Event | None = None

        async def merge(self, *args: Any, **kw: Any) -> Any:
            got = await super().merge(*args, **kw)  # applied in the store...
            if self.gate is not None:
                await self.gate.wait()  # ...and the answer is slow to come back
            return got

    store = SlowStore()
    e = await engine(store, BANDIT)
    for _ in range(40):
        e.choose(Context())
    store.gate = asyncio.Event()
    tick = asyncio.create_task(e.tick())
    await asyncio.sleep(0)  # the tick is inside merge
    for _ in range(3):
        await asyncio.sleep(0)
    tick.cancel()
    store.gate.set()
    await asyncio.gather(tick, return_exceptions=True)
    await e.stop()
    merged = await store.merge("r:bandit", {})
    decisions = sum(float(v[3]) for k, v in merged.totals.items() if k.startswith("bandit.v1/"))
    assert decisions == 40
