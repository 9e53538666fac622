"""Configuration that cannot hurt the running router (issue 9): reloads during traffic.

`modelrouter serve` proxies a steady load (concurrency 8, bounded in count and time) while it
reloads a ~5 MB config (SIGHUP) and then rejects a YAML alias bomb (POST /admin/reload). The
file is read and validated on a worker thread and the routing table is swapped atomically, so
the proxied requests in flight barely notice. The test prints the latency figures (p50, p99,
max) before and during each reload; it asserts only generous bounds, because this machine is
shared and timing here is noisy (the issue's target, p99 under 50 ms, is what the print shows).

    .venv/bin/pytest -q -s tests/faults/test_reload_traffic.py     # -s shows the figures
"""

# ruff: noqa: F811 - the e2e `router`/`upstreams` fixtures are imported by name

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import router, upstreams  # noqa: F401 - fixtures
from tests.helpers import eventually

CONFIG = """\
version: 1
listen: 127.0.0.1:{port}
admin: {listen: "127.0.0.1:{admin_port}"}
state: {store: memory}
backends:
  a: {url: "http://127.0.0.1:UP_A"}
  b: {url: "http://127.0.0.1:UP_B"}
routes:
  - name: clf
    match: {path_prefix: /v1/models/clf}
    policy: {kind: weighted, weights: {a: 50, b: 50}}
"""

CONCURRENCY = 8
MAX_REQUESTS = 200_000  # bounds of the load loop: whichever comes first
MAX_SECONDS = 600.0
BIG_BYTES = int(os.environ.get("MODELROUTER_RELOAD_BYTES", 5_000_000))


def big_config(base: str, size: int) -> str:
    """`base` plus routes until it is `size` bytes: a tenant-pinning config, each route with
    100 header overrides (the bulk of a large real config), a sticky key and retries."""
    lines = [base.rstrip("\n")]
    n = len(base)
    i = 0
    while n < size:
        pins = "".join(
            f"      - {{when: {{header: {{x-tenant: tenant-{i}-{t}}}}}, backend: {'ab'[t % 2]}}}\n"
            for t in range(100)
        )
        route = (
            f"  - name: extra-{i}\n"
            f"    match: {{path_prefix: /v1/models/extra-{i}, methods: [POST, GET]}}\n"
            "    overrides:\n"
            f"{pins}"
            "    sticky: {key: 'header:x-user-id'}\n"
            "    retries: {attempts: 1, on: [connect-failure, reset]}\n"
            "    timeout: 3s\n"
            f"    policy: {{kind: weighted, weights: {{a: {1 + i % 97}, b: {97 - i % 97}}}}}\n"
        )
        lines.append(route.rstrip("\n"))
        n += len(route)
        i += 1
    return "\n".join(lines) + "\n"


def alias_bomb(base: str) -> str:
    """`base` with a ~600-byte "billion laughs": 9 levels of 9 aliases each (4e9 nodes)."""
    bomb = ['bomb0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, 10):
        bomb.append(f"bomb{k}: &a{k} [" + ",".join([f"*a{k - 1}"] * 9) + "]")
    return base + "\n".join(bomb) + "\n"


class Load:
    """CONCURRENCY clients sending one request after another; every latency with its start."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, float]] = []  # (start, latency)
        self.errors = 0
        self.stop = False
        self.tasks: list[asyncio.Task[None]] = []

    async def _client(self, s: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while not self.stop and len(self.samples) < MAX_REQUESTS and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                async with s.post(self.url, json={"instances": [[1.0]]}) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            self.samples.append((t0, time.monotonic() - t0))
            if not ok:
                self.errors += 1

    async def __aenter__(self) -> Load:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        self.tasks = [asyncio.create_task(self._client(self.session)) for _ in range(CONCURRENCY)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop = True
        await asyncio.gather(*self.tasks)
        await self.session.close()

    def window(self, start: float, end: float) -> list[float]:
        """Latencies of the requests in flight at some point between start and end."""
        return [lat for t0, lat in self.samples if t0 <= end and t0 + lat >= start]


def figures(lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 99
    return (
        f"{len(lat)} requests, p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
        f"max {max(lat) * 1000:.1f} ms"
    )


def p99(lat: list[float]) -> float:
    return statistics.quantiles(lat, n=100)[98]


async def test_reload_big_config_and_bomb_under_load(
    router: Any, upstreams: Any, tmp_path: Path
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    base = CONFIG.replace("UP_A", str(a.port)).replace("UP_B", str(b.port))
    r = router(base)
    await r.wait_ready()
    base_text = r.config_path.read_text()
    big = big_config(base_text, BIG_BYTES)
    async with Load(f"{r.url}/v1/models/clf:predict") as load:
        await eventually(lambda: len(load.samples) > 400, timeout=60, what="warm-up traffic")
        t0 = time.monotonic()
        await eventually(lambda: time.monotonic() - t0 > 2, timeout=10, what="2 s of baseline")
        baseline = load.window(t0, time.monotonic())

        # 1. SIGHUP with a ~5 MB config: applied, while the requests keep flowing. Its routes
        # answer once it is live (polled on the data plane: a /metrics scrape of 1,500 series
        # would itself stall both processes and spoil the measurement)
        r.config_path.write_text(big)
        start = time.monotonic()
        r.signal(signal.SIGHUP)
        probe = aiohttp.ClientSession()

        async def reloaded() -> bool:
            async with probe.get(f"{r.url}/v1/models/extra-7/x") as resp:
                return resp.status == 200

        try:
            await eventually(reloaded, timeout=400, interval=0.2, what="the 5 MB reload")
        finally:
            await probe.close()
        big_window = load.window(start, time.monotonic())
        big_took = time.monotonic() - start

        # 2. POST /admin/reload with an alias bomb: rejected quickly with a clear error
        r.config_path.write_text(alias_bomb(base_text))
        start = time.monotonic()
        async with (
            aiohttp.ClientSession(headers=r.headers) as s,
            s.post(f"{r.admin}/admin/reload", json={"reason": "bomb"}) as resp,
        ):
            answer = await resp.json()
        bomb_took = time.monotonic() - start
        await eventually(lambda: time.monotonic() - start > 0.5, timeout=5, what="0.5 s after")
        bomb_window = load.window(start, time.monotonic())
    print(
        f"\nreload under load (concurrency {CONCURRENCY}, {len(big) / 1e6:.1f} MB config):\n"
        f"  baseline:          {figures(baseline)}\n"
        f"  5 MB reload ({big_took:.1f} s): {figures(big_window)}\n"
        f"  alias bomb ({bomb_took * 1000:.0f} ms): {figures(bomb_window)}\n"
        f"  errors: {load.errors} of {len(load.samples)}"
    )
    assert resp.status == 400, answer
    assert any("too many aliases/nodes" in e for e in answer["errors"]), answer
    assert bomb_took < 5.0
    assert load.errors == 0
    # generous bounds for a shared machine; the figures above are the measurement
    assert p99(big_window) < 1.0 and p99(bomb_window) < 1.0
    # the big config is live: one of its routes answers
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}/v1/models/extra-7/x") as resp2:
        assert resp2.status == 200
    assert r.proc is not None and r.proc.poll() is None
