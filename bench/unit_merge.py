"""Event-loop time of the merged per-user A/B statistics on a dense sticky route (issue 10/13).

    .venv/bin/python bench/unit_merge.py                       # memory, sqlite and redis
    .venv/bin/python bench/unit_merge.py --requests 5000 --users 200000 --ticks 20

One A/B learning engine on a sticky route (2 arms, an error-rate guardrail, binary reward) on
each store: per tick it takes `--requests` decisions from users spread over all 2^16 sticky
buckets, each with an observed response and a reward, then runs the engine's tick (feedback
pull, merge of the increments - sparse per bucket - with the store, the test's look, the
snapshot of the policy document). A heartbeat task measures the longest time the event loop
was blocked during the tick (what a request arriving then would wait), and the script prints
it with the parts done on the loop: `policy.state()` plus its JSON (the snapshot) and the
tick's wall time. The loop's stretches are measured in CPU time of its thread too: on a
shared machine the wall figure includes waiting for a core. Starts its own redis-server on a
free loopback port; bounded in ticks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from policies.base import BUCKETS, Context
from router.audit import Audit
from router.config import parse_config
from router.engines.base import Services
from router.engines.learning import ENGINES, LearningEngine
from router.metrics import Metrics
from router.store.base import Store
from router.store.memory import MemoryStore
from router.store.redis import RedisStore
from router.store.sqlite import SqliteStore

CONFIG = """
version: 1
backends:
  a: {url: "http://127.0.0.1:9"}
  b: {url: "http://127.0.0.1:9"}
routes:
  - name: r
    match: {path_prefix: /}
    sticky: {key: "cookie:uid"}
    policy:
      kind: ab_test
      arms: {A: a, B: b}
      split: {A: 50, B: 50}
      reward: {type: binary}
      test: {method: msprt, min_samples: 1000}
      guardrails: [{metric: error_rate, max_increase: 0.05}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def engine(store: Store) -> LearningEngine:
    await store.open()
    config = parse_config(textwrap.dedent(CONFIG), "bench.yaml")
    svc = Services(
        config=config,
        store=store,
        metrics=Metrics(registry=CollectorRegistry()),
        audit=Audit(store),
        backends=config.backends,
        rng=np.random.default_rng(0),
    )
    e = ENGINES["ab_test"](config.routes[0], svc)
    assert isinstance(e, LearningEngine)
    e.tick_interval = 3600.0  # the bench drives every tick
    await e.start()
    return e


async def heartbeat(done: asyncio.Event) -> tuple[float, float]:
    """The longest gap between two turns of the event loop until `done`, in wall time and in
    CPU time of the loop's thread (seconds). The wall gap also counts waiting for the CPU on a
    busy machine and for the GIL; the CPU gap is the work the loop did in one stretch."""
    worst = worst_cpu = 0.0
    last, last_cpu = time.perf_counter(), time.thread_time()
    while not done.is_set():
        await asyncio.sleep(0)
        now, now_cpu = time.perf_counter(), time.thread_time()
        worst = max(worst, now - last)
        worst_cpu = max(worst_cpu, now_cpu - last_cpu)
        last, last_cpu = now, now_cpu
    return worst, worst_cpu


async def measure(name: str, store: Store, args: argparse.Namespace) -> None:
    e = await engine(store)
    rnd = random.Random(1)
    users = [rnd.randrange(BUCKETS) for _ in range(args.users)]
    stalls, cpus, ticks, snaps, cells = [], [], [], [], []
    for _ in range(args.ticks):
        for _ in range(args.requests):
            ctx = Context(bucket=rnd.choice(users))
            arm = e.choose(ctx).arm
            e.observe(arm, 500 if rnd.random() < 0.02 else 200, 0.01, None, ctx)
            e.feedback(arm, float(rnd.random() < 0.1), ctx)
        assert e._ab is not None
        cells.append(sum(len(n) for n, _ in e._ab.units.pending.values()))
        t0 = time.perf_counter()
        doc = json.dumps(e.policy.state())
        snaps.append(time.perf_counter() - t0)
        done = asyncio.Event()
        hb = asyncio.create_task(heartbeat(done))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        e._dirty = True
        await e.tick()
        ticks.append(time.perf_counter() - t0)
        done.set()
        wall, cpu = await hb
        stalls.append(wall)
        cpus.append(cpu)
    res = e.policy.result()
    assert res is not None
    units = sum(a["units"] for a in res["arms"].values())
    await e.stop()
    await store.close()

    def ms(xs: list[float]) -> str:
        return f"median {1e3 * statistics.median(xs):.2f} ms, max {1e3 * max(xs):.2f} ms"

    print(
        f"{name:7s} {args.requests} req/tick, {int(statistics.mean(cells))} bucket cells/tick, "
        f"{units} users:\n  loop blocked: cpu {ms(cpus)}; wall {ms(stalls)}\n  tick wall "
        f"{ms(ticks)}; "
        f"state()+json {ms(snaps)} ({len(doc)} bytes)"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000, help="decisions per tick")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--ticks", type=int, default=15)
    ap.add_argument("--stores", default="memory,sqlite,redis")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="modelrouter-bench-"))
    redis_proc = None
    try:
        for name in args.stores.split(","):
            store: Store
            if name == "memory":
                store = MemoryStore()
            elif name == "sqlite":
                store = SqliteStore(tmp / "state.db")
            elif name == "redis":
                port = free_port()
                redis_proc = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                    cwd=tmp,
                    stdout=subprocess.DEVNULL,
                )
                store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="bench:")
                deadline = time.monotonic() + 10
                while True:
                    try:
                        await store.open()
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)
            else:
                raise SystemExit(f"--stores: unknown store {name!r}")
            await measure(name, store, args)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
