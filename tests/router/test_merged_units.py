"""Per-user A/B statistics merged across processes (issue 10 x issue 13).

On a sticky A/B route the statistics are per sticky bucket (a user). Two processes ("workers"
or replicas: each a learning engine with its own store connection) each see part of every
user's requests; after their merges, every per-user figure must equal what one process that saw
all the traffic computes. Against memory, SQLite and a real redis-server.
"""

from __future__ import annotations

import asyncio
import math
import random
import textwrap
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from policies.abtest import ABTestPolicy
from policies.base import BUCKETS, Context
from policies.registry import build_policy
from router.audit import Audit
from router.config import parse_config
from router.engines.base import Services
from router.engines.learning import ENGINES, LearningEngine
from router.feedback import TokenSigner
from router.metrics import Metrics
from router.store.base import FeedbackRecord, Store
from router.store.memory import MemoryStore
from tests.router.test_merged_learning import Opener, opener  # noqa: F401
from tests.router.test_store_redis import redis_server  # noqa: F401

STICKY = """
version: 1
feedback: {{missing_reward: {missing}}}
backends:
  a: {{url: "http://127.0.0.1:9"}}
  b: {{url: "http://127.0.0.1:9"}}
routes:
  - name: r
    match: {{path_prefix: /}}
    sticky: {{key: "cookie:uid"}}
    policy:
      kind: ab_test
      arms: {{A: a, B: b}}
      split: {{A: {split_a}, B: {split_b}}}
      reward: {{type: binary}}
      test: {{method: z_test, min_samples: 100000000}}
      guardrails:
        - {{metric: error_rate, max_increase: 0.05}}
        - {{metric: reward, name: revenue, max_decrease: 5}}
"""


async def sticky_engine(
    store: Store, missing: str = "null", seed: int = 0, split: tuple[int, int] = (50, 50)
) -> LearningEngine:
    await store.open()
    text = STICKY.format(missing=missing, split_a=split[0], split_b=split[1])
    config = parse_config(textwrap.dedent(text), "t.yaml")
    svc = Services(
        config=config,
        store=store,
        metrics=Metrics(registry=CollectorRegistry()),
        audit=Audit(store),
        backends=config.backends,
        rng=np.random.default_rng(seed),
        decider=TokenSigner(b"merged-units-test-secret-0123456"),
    )
    e = ENGINES["ab_test"](config.routes[0], svc)
    assert isinstance(e, LearningEngine)
    e.dead_after = 3600.0
    e.tick_interval = 3600  # the test drives every tick
    await e.start()
    return e


def reference(e: LearningEngine, missing: float | None) -> ABTestPolicy:
    """A standalone policy of the same route: one process that sees everything."""
    p = build_policy(e.spec, np.random.default_rng(0))
    assert isinstance(p, ABTestPolicy)
    if missing is not None:
        p.set_trial_value(missing)
    return p


def figures(res: dict[str, Any]) -> dict[str, Any]:
    """What a user reads off status, rounded past float noise of summation order."""

    def r(x: Any) -> Any:
        return None if x is None else round(float(x), 7)

    out: dict[str, Any] = {}
    for a, s in res["arms"].items():
        out[a] = (s["n"], s["units"], r(s["mean"]), r(s["ci_low"]), r(s["ci_high"]))
    for a, c in res["comparisons"].items():
        out[f"vs {a}"] = tuple(r(c[k]) for k in ("diff", "diff_low", "diff_high", "p_value"))
    srm = res["srm"]["periods"][0]
    out["srm"] = (r(srm["chi2_p_value"]), r(srm["dispersion"]))
    for a, g in res["guardrails"]["arms"].items():
        out[f"guard {a}"] = [(c["guardrail"], c["n"], r(c["value"])) for c in g["checks"]]
    return out


async def settled(procs: list[LearningEngine], want: dict[str, Any]) -> list[dict[str, Any]]:
    """Tick every process until each shows `want` or 20 s pass (a reward is folded once its
    decider has flushed the decision, a clock tick later); the figures each shows then."""
    deadline = time.monotonic() + 20.0
    while True:
        for p in procs:
            await p.tick()
        got = [figures(p.policy.result()) for p in procs]  # type: ignore[arg-type]
        if all(g == want for g in got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("missing", ["null", "0"])
async def test_per_user_statistics_of_two_processes_equal_one_process(
    opener: Opener,  # noqa: F811
    missing: str,
) -> None:
    rnd = random.Random(10)
    procs = [await sticky_engine(opener(), missing, seed=i) for i in range(2)]
    ref = reference(procs[0], None if missing == "null" else 0.0)
    clock = procs[0].services.clock
    users = [rnd.randrange(BUCKETS) for _ in range(400)]
    weights = [rnd.paretovariate(1.2) for _ in users]  # heavy-tailed requests per user
    seq = 0
    visited: set[int] = set()
    try:
        for _ in range(3000):
            b = rnd.choices(users, weights)[0]
            ctx = Context(bucket=b)
            visited.add(b)
            p = rnd.choice(procs)  # a user's requests land on any process
            arm = p.choose(ctx).arm
            want = ref.choose(ctx)
            assert want.arm == {"a": "A", "b": "B"}[arm]
            if missing != "null":
                ref.update(want.arm, 0.0, ctx, trial=True)
            status = 500 if rnd.random() < 0.1 else 200
            p.observe(arm, status, 0.01, None, ctx)
            ref.observe_guardrail(want.arm, "error_rate", float(status >= 500), ctx)
            y = float(rnd.random() < (0.3 if b % 3 else 0.6))  # users differ: clustering
            revenue = round(rnd.expovariate(0.1), 3)
            q = rnd.choice(procs)  # the reward goes to any replica
            if rnd.random() < 0.5:
                seq += 1
                tid = f"{p.services.decider.prefix}{seq:x}"  # type: ignore[union-attr]
                rec = FeedbackRecord(
                    tid, "r", arm, y, clock(), clock(), bucket=b, metrics={"revenue": revenue}
                )
                assert await q.services.store.feedback_add([rec]) == [True]
                q.feedback(arm, y, ctx, token_id=tid, metrics={"revenue": revenue})
            else:
                q.feedback(arm, y, ctx, metrics={"revenue": revenue})
            if missing == "null":
                ref.update(want.arm, y, ctx, trial=True)
            else:
                ref.update(want.arm, y, ctx, trial=False)
            ref.observe_guardrail(want.arm, "reward:revenue", revenue, ctx)
            if rnd.random() < 0.01:
                await rnd.choice(procs).tick()
        want_figs = figures(ref.result())
        print("one process:", want_figs)
        got = await settled(procs, want_figs)
        for g in got:
            assert g == want_figs
        # the unit is the user: units counted = users who came, far fewer than requests
        assert want_figs["A"][1] + want_figs["B"][1] == len(visited) < 3000 / 5
    finally:
        for p in procs:
            await p.stop()


async def test_per_user_statistics_survive_a_restart(tmp_path: Any) -> None:
    """The per-bucket sums live in the store: a restarted process reads them back."""
    from router.store.sqlite import SqliteStore

    path = tmp_path / "s.db"
    e = await sticky_engine(SqliteStore(path))
    rnd = random.Random(3)
    for _ in range(500):
        b = rnd.randrange(200)
        arm = e.choose(Context(bucket=b)).arm
        e.feedback(arm, float(rnd.random() < 0.4), Context(bucket=b))
    await e.stop()  # flushes
    before = figures(e.policy.result())  # type: ignore[arg-type]
    await e.services.store.close()
    again = await sticky_engine(SqliteStore(path))
    try:
        assert figures(again.policy.result()) == before  # type: ignore[arg-type]
    finally:
        await again.stop()
        await again.services.store.close()


async def test_aa_across_two_workers_keeps_srm_and_z_at_nominal_levels() -> None:
    """A/A, 90/10 split, users with heavy-tailed request counts, every request on a random one
    of two workers, one merge at the end: the merged per-user z test and SRM stay at their
    nominal levels, and every run's verdicts are those of one process that saw everything."""
    reps, users_n = 200, 300
    rnd = random.Random(7)
    z_fp = srm_fp = chi2_fp = 0
    z_one = srm_one = 0
    started = time.perf_counter()
    for rep in range(reps):
        store = MemoryStore()
        procs = [await sticky_engine(store, seed=rep * 2 + i, split=(90, 10)) for i in range(2)]
        one = reference(procs[0], None)
        users = rnd.sample(range(BUCKETS), users_n)
        for u in users:
            base = 0.1 + 0.4 * rnd.random()  # users differ
            for _ in range(min(200, int(rnd.paretovariate(1.1)))):
                ctx = Context(bucket=u)
                arm = procs[rnd.randrange(2)].choose(ctx).arm
                y = float(rnd.random() < base)
                procs[rnd.randrange(2)].feedback(arm, y, ctx)
                one.update(one.choose(ctx).arm, y, ctx)
        for p in procs:
            await p.tick()
        await procs[0].tick()
        res, ref = procs[0].policy.result(), one.result()
        assert res is not None
        z_fp += res["p_value"]["B"] < 0.05
        srm_fp += res["srm"]["flagged"]
        chi2_fp += res["srm"]["periods"][0]["chi2_p_value"] < 0.001
        z_one += ref["p_value"]["B"] < 0.05
        srm_one += ref["srm"]["flagged"]
        for p in procs:
            await p.stop()
    print(
        f"A/A across two workers, {reps} runs: z false positives {z_fp / reps:.3f} (nominal "
        f"0.05; one process {z_one / reps:.3f}), sequential SRM flags {srm_fp / reps:.3f} "
        f"(nominal <= 0.001; one process {srm_one / reps:.3f}), chi-square look "
        f"{chi2_fp / reps:.3f}; {time.perf_counter() - started:.1f}s"
    )
    assert (z_fp, srm_fp) == (z_one, srm_one)  # merging changes no verdict
    # binomial(200, 0.05): mean 10, sd 3.1; allow 3 sd
    assert z_fp / reps <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps)
    assert srm_fp <= 2


def rows(cells: dict[int, tuple[float, float]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array([(b, n, s) for b, (n, s) in cells.items()], dtype=float).reshape(-1, 3)


async def test_store_unit_sums_are_those_of_the_full_bucket_arrays(opener: Opener) -> None:  # noqa: F811
    """Sparse per-bucket increments from two connections, plain and folded: the dense sums the
    store answers equal the sums over the full per-bucket arrays."""
    rnd = np.random.default_rng(4)
    stores = [opener(), opener()]
    for s in stores:
        await s.open()
    key = f"u{rnd.integers(1 << 30)}"
    full_n, full_s = np.zeros(BUCKETS), np.zeros(BUCKETS)
    mark = -1
    try:
        for step in range(30):
            cells: dict[int, tuple[float, float]] = {}
            for b in rnd.integers(0, 300, size=50).tolist():  # few buckets: they repeat
                n, s = cells.get(b, (0.0, 0.0))
                cells[b] = (n + 1.0, s + float(rnd.normal(2.0, 3.0)))
            for b, (n, s) in cells.items():
                full_n[b] += n
                full_s[b] += s
            store = stores[step % 2]
            if step % 3 == 0:  # a fold: applies once, with the mark
                m = await store.merge(key, {}, {}, mark, mark + 1, fold_units={"g": rows(cells)})
                assert m.applied
                again = await store.merge(
                    key, {}, {}, mark, mark + 1, fold_units={"g": rows(cells)}
                )
                assert not again.applied  # the stale mark: nothing added twice
                mark += 1
            else:
                m = await store.merge(key, {}, units={"g": rows(cells)})
        got = m.totals["g"]
        want = [
            full_n.sum(),
            full_s.sum(),
            full_n @ full_n,
            full_s @ full_s,
            full_s @ full_n,
            float(np.count_nonzero(full_n)),
        ]
        print("dense sums:", got.tolist(), "from full arrays:", want)
        assert got.tolist() == pytest.approx(want, rel=1e-12)
        assert got[0] == want[0] and got[5] == want[5]  # counts are exact
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize(
    ("units", "words"),
    [
        ({"g": [[3, 1.0, math.nan]]}, "non-finite"),
        ({"g": [[BUCKETS, 1.0, 1.0]]}, "bucket out of range"),
        ({"g": [[-1, 1.0, 1.0]]}, "bucket out of range"),
        ({"a#b": [[1, 1.0, 1.0]]}, "must not contain '#'"),
    ],
)
async def test_store_rejects_bad_unit_increments_whole(
    opener: Opener,  # noqa: F811
    units: dict[str, Any],
    words: str,
) -> None:
    store = opener()
    await store.open()
    key = f"bad{random.randrange(1 << 30)}"
    try:
        await store.merge(key, {"x": np.array([1.0])}, units={"g": [[5, 1.0, 2.0]]})
        with pytest.raises(ValueError, match=words):
            await store.merge(key, {"x": np.array([1.0])}, units=units)
        m = await store.merge(key, {})
        assert m.totals["x"].tolist() == [1.0]  # the refused call added nothing
        assert m.totals["g"].tolist() == [1.0, 2.0, 1.0, 4.0, 2.0, 1.0]
    finally:
        await store.close()


def old_pack(x: np.ndarray[Any, np.dtype[np.float64]]) -> str:
    """Bucket arrays as documents stored them before per-user sums were merged."""
    import base64
    import zlib

    if bool(np.all(x == np.floor(x))) and x.min() >= 0:
        return "u4:" + base64.b64encode(zlib.compress(x.astype(np.uint32).tobytes())).decode()
    return "f8:" + base64.b64encode(zlib.compress(x.astype(np.float64).tobytes())).decode()


async def test_an_old_document_s_per_user_statistics_are_added_once(tmp_path: Any) -> None:
    """A document written before per-user sums were merged (bucket arrays inside) seeds the
    shared sums exactly once, however many workers start on it."""
    from router.store.sqlite import SqliteStore

    g = np.random.default_rng(1)
    n = {a: np.zeros(BUCKETS) for a in "AB"}
    s = {a: np.zeros(BUCKETS) for a in "AB"}
    for a, lo, hi in (("A", 0, BUCKETS // 2), ("B", BUCKETS // 2, BUCKETS)):
        b = g.integers(lo, hi, 300)
        np.add.at(n[a], b, 1.0)
        np.add.at(s[a], b, (g.random(300) < 0.3).astype(float))
    decided = n["A"] + n["B"]
    doc = {
        "kind": "ab_test",
        "format": 2,
        "algorithm": None,
        "policy": {
            "obs": {
                a: {
                    "all": [0, 0.0, 0.0],
                    "loose": [0, 0.0, 0.0],
                    "n_b": old_pack(n[a]),
                    "s_b": old_pack(s[a]),
                }
                for a in "AB"
            },
            "periods": [
                {
                    "label": "split",
                    "weights": {"A": 0.5, "B": 0.5},
                    "decisions": {"A": int(n["A"].sum()), "B": int(n["B"].sum())},
                    "bounds": [BUCKETS // 2, BUCKETS],
                    "bucketed": old_pack(decided),
                    "max_log_bf": 0.0,
                }
            ],
        },
        "watermark": 0,
        "applied": [],
    }
    path = tmp_path / "s.db"
    first = SqliteStore(path)
    await first.open()
    await first.put("policy:r", doc)
    await first.close()
    procs = [await sticky_engine(SqliteStore(path), seed=i) for i in range(3)]
    try:
        for p in procs:
            await p.tick()
            res = p.policy.result()
            assert res is not None
            for a in "AB":
                assert res["arms"][a]["n"] == int(n[a].sum())  # once, not three times
                assert res["arms"][a]["units"] == int(np.count_nonzero(n[a]))
                assert res["arms"][a]["mean"] == pytest.approx(s[a].sum() / n[a].sum())
            assert res["srm"]["periods"][0]["dispersion"] is not None
    finally:
        for p in procs:
            await p.stop()
            await p.services.store.close()


async def test_per_request_statistics_add_up_on_a_non_sticky_route(
    opener: Opener,  # noqa: F811
) -> None:
    """Without a sticky key the unit is the request; with `missing_reward: 0` each decision is
    a trial, counted by the process that made it: the merged figures are one process's."""
    rnd = random.Random(4)
    text = STICKY.replace('    sticky: {{key: "cookie:uid"}}\n', "")
    procs = []
    for i in range(2):
        store = opener()
        await store.open()
        config = parse_config(
            textwrap.dedent(text.format(missing="0", split_a=50, split_b=50)), "t.yaml"
        )
        svc = Services(
            config=config,
            store=store,
            metrics=Metrics(registry=CollectorRegistry()),
            audit=Audit(store),
            backends=config.backends,
            rng=np.random.default_rng(i),
            decider=TokenSigner(b"merged-units-test-secret-0123456"),
        )
        e = ENGINES["ab_test"](config.routes[0], svc)
        assert isinstance(e, LearningEngine)
        e.dead_after, e.tick_interval = 3600.0, 3600
        await e.start()
        procs.append(e)
    ref = reference(procs[0], 0.0)
    try:
        for _ in range(2000):
            p = rnd.choice(procs)
            arm = p.choose(Context()).arm
            a = {"a": "A", "b": "B"}[arm]
            ref.stats()[a].decisions += 1
            ref.update(a, 0.0, Context(), trial=True)
            if rnd.random() < 0.5:
                y = float(rnd.random() < 0.3)
                rnd.choice(procs).feedback(arm, y, Context())
                ref.update(a, y, Context(), trial=False)
        for p in procs:
            await p.tick()
        await procs[0].tick()
        want = ref.result()["arms"]
        print("one process:", want)
        for p in procs:
            got = p.policy.result()["arms"]  # type: ignore[index]
            for a in "AB":
                assert got[a]["n"] == want[a]["n"]
                assert got[a]["mean"] == pytest.approx(want[a]["mean"], rel=1e-9)
                assert got[a]["ci_high"] == pytest.approx(want[a]["ci_high"], rel=1e-9)
    finally:
        for p in procs:
            await p.stop()
