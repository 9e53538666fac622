"""What the decision log adds to a request: `RouteRuntime.select` with the log off and on.

    .venv/bin/python bench/decisionlog.py [--n 20000] [--rounds 5]

In-process and single-threaded on purpose: it times the selection a contextual route does per
request (features, policy choice, token) on a real Runtime, with and without `decision_log:`,
interleaved, and reports medians in µs per request. The writer thread runs as in `serve`.
The whole data plane
is measured by `bench/proxy.py`. Figures are process CPU time per request (the writer thread
included, up to the moment it has written every record), so neighbours on a shared machine
disturb them less than they would wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

# run as a script, bench/ comes first on the path and bench/policies.py would shadow `policies`
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from router.audit import Audit
from router.config import load_config
from router.dataplane.seam import Request
from router.metrics import Metrics
from router.runtime import Runtime
from router.store.memory import MemoryStore

CONFIG = """
version: 1
state: {store: memory}
backends:
  a: {url: "http://127.0.0.1:9"}
  b: {url: "http://127.0.0.1:9"}
  c: {url: "http://127.0.0.1:9"}
routes:
  - name: r
    policy:
      kind: contextual_bandit
      arms: [a, b, c]
      algorithm: epsilon_greedy
      features:
        - {name: climate, from: "header:x-climate", type: categorical, values: [hot, cold, mild]}
        - {name: age, from: "header:x-age", type: numeric, scale: 0.01}
"""


async def _runtime(dir_: Path, log: bool) -> Runtime:
    text = CONFIG + ("    decision_log: {path: d.jsonl}\n" if log else "")
    path = dir_ / ("on.yaml" if log else "off.yaml")
    path.write_text(text)
    store = MemoryStore()
    await store.open()
    return await Runtime.create(
        load_config(path),
        store=store,
        metrics=Metrics(CollectorRegistry()),
        audit=Audit(store),
        config_path=path,
    )


def _time(rt: Runtime, req: Request, n: int) -> float:
    """CPU µs per request of the whole process (the writer thread included), until the
    writer has caught up: wall time on a shared machine says more about the neighbours."""
    route = rt.routes[0]
    select = route.select
    writer = route.dlog.writer if route.dlog is not None else None
    target = (writer.written + writer.dropped + n) if writer is not None else 0
    t = time.process_time()
    for _ in range(n):
        select(req)
    while writer is not None and writer.written + writer.dropped < target:
        time.sleep(0.005)
    return (time.process_time() - t) / n * 1e6


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        off = await _runtime(Path(tmp), False)
        on = await _runtime(Path(tmp), True)
        req = Request(
            "POST",
            "/v1/models/r:predict",
            "",
            [(b"x-climate", b"hot"), (b"x-age", b"42")],
            "127.0.0.1",
        )
        _time(off, req, 2000), _time(on, req, 2000)  # warm up
        res: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(rounds):
            res["off"].append(_time(off, req, n))
            res["on"].append(_time(on, req, n))
        writer = on.routes[0].dlog.writer if on.routes[0].dlog else None
        await off.close()
        await on.close()
        m_off, m_on = statistics.median(res["off"]), statistics.median(res["on"])
        print(f"select() CPU per request (process time), median of {rounds} rounds x {n}:")
        print(f"  decision log off {m_off:6.2f} µs")
        print(f"  decision log on  {m_on:6.2f} µs   (+{m_on - m_off:.2f} µs)")
        if writer is not None:
            print(f"  records written {writer.written}, dropped {writer.dropped}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    asyncio.run(main(a.n, a.rounds))
