"""`modelrouter serve` end to end: split, headers, reload under traffic, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import HEAD, Router, fill_ports
from tests.helpers import eventually

pytestmark = pytest.mark.e2e


def weighted_config(a: Any, b: Any, wa: int, wb: int, extra: str = "") -> str:
    return (
        HEAD
        + f"""
backends:
  a: {{url: "{a.url}", version: 1.0.0, timeout: 5s}}
  b: {{url: "{b.url}", version: 1.1.0, timeout: 5s}}
routes:
  - name: clf
    match: {{path_prefix: /v1/models/clf}}
    overrides:
      - when: {{header: {{x-user-group: canary}}}}
        backend: b
    policy: {{kind: weighted, weights: {{a: {wa}, b: {wb}}}}}
{extra}"""
    )


async def hammer(
    url: str, n: int, concurrency: int = 16, headers: dict[str, str] | None = None
) -> tuple[Counter[str], Counter[int]]:
    """n POSTs with bounded concurrency; backend counts and status counts."""
    backends: Counter[str] = Counter()
    codes: Counter[int] = Counter()
    todo = iter(range(n))

    async def worker(s: aiohttp.ClientSession) -> None:
        for _ in todo:
            try:
                async with s.post(url, json={"instances": [[1.0]]}, headers=headers) as r:
                    await r.read()
                    codes[r.status] += 1
                    backends[r.headers.get("x-modelrouter-backend", "?")] += 1
            except aiohttp.ClientError:
                codes[-1] += 1

    async with aiohttp.ClientSession() as s:
        await asyncio.wait_for(asyncio.gather(*(worker(s) for _ in range(concurrency))), 120)
    return backends, codes


async def test_split_headers_and_overrides(upstreams: Any, router: Any) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    r: Router = router(weighted_config(a, b, 90, 10))
    await r.wait_ready()
    backends, codes = await hammer(f"{r.url}/v1/models/clf:predict", 3000)
    assert codes == {200: 3000}
    share_b = backends["b"] / 3000
    assert 0.10 - 0.025 < share_b < 0.10 + 0.025, backends

    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{r.url}/v1/models/clf:predict",
            json={},
            headers={"x-user-group": "canary", "x-request-id": "req-123"},
        ) as resp:
            assert resp.status == 200
            assert resp.headers["x-modelrouter-backend"] == "b"
            assert resp.headers["x-request-id"] == "req-123"
        seen = b.seen_headers[-1]
        assert seen.get("X-Request-Id") == "req-123"
        assert "127.0.0.1" in seen.get("X-Forwarded-For", "")
        async with s.get(f"{r.url}/nothing/here") as resp:
            assert resp.status == 404
            assert "error" in await resp.json()
        async with s.get(f"{r.admin}/metrics") as resp:
            text = await resp.text()
            assert 'modelrouter_requests_total{backend="b",code="200",route="clf"}' in text
            assert 'modelrouter_traffic_share{backend="a",route="clf"} 0.9' in text


async def test_set_weights_then_reload_under_traffic_without_failures(
    upstreams: Any, router: Any
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    r: Router = router(weighted_config(a, b, 100, 0))
    await r.wait_ready()
    url = f"{r.url}/v1/models/clf:predict"
    traffic = asyncio.create_task(hammer(url, 6000, concurrency=8))
    async with aiohttp.ClientSession(headers=r.headers) as s:
        # the course lab: 100/0, then 70/30 at run time
        async with s.put(
            f"{r.admin}/admin/routes/clf/weights", json={"weights": {"a": 70, "b": 30}}
        ) as resp:
            assert resp.status == 200, await resp.text()
        for _ in range(3):
            r.config_path.write_text(
                fill_ports(weighted_config(a, b, 50, 50), r.port, r.admin_port)
            )
            async with s.post(f"{r.admin}/admin/reload") as resp:
                assert resp.status == 200, await resp.text()
            r.signal(signal.SIGHUP)
            await asyncio.sleep(0.2)
        # an invalid file is rejected with every error; the old config keeps serving
        bad = HEAD + "backends: {}\nroutes: [{name: x}]\nbogus: 1\n"
        r.config_path.write_text(fill_ports(bad, r.port, r.admin_port))
        async with s.post(f"{r.admin}/admin/reload") as resp:
            assert resp.status == 400
            errors = (await resp.json())["errors"]
            assert len(errors) >= 2 and any("bogus" in e for e in errors), errors
        async with s.get(f"{r.admin}/admin/audit") as resp:
            assert resp.status == 200
    backends, codes = await traffic
    assert codes == {200: 6000}, codes
    assert backends["b"] > 0
    async with aiohttp.ClientSession() as s, s.get(f"{r.admin}/metrics") as resp:
        text = await resp.text()
    assert 'modelrouter_config_reloads_total{result="failure"} 1.0' in text
    assert 'modelrouter_traffic_share{backend="b",route="clf"} 0.5' in text


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
    upstreams: Any, router: Any
) -> None:
    a, b = await upstreams("a", delay=1.0), await upstreams("b", delay=1.0)
    r: Router = router(weighted_config(a, b, 50, 50))
    await r.wait_ready()

    async def one(s: aiohttp.ClientSession) -> int:
        async with s.post(f"{r.url}/v1/models/clf:predict", json={}) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession() as s:
        inflight = [asyncio.create_task(one(s)) for _ in range(10)]
        await eventually(lambda: a.total + b.total >= 10, what="10 requests in flight")
        r.signal(signal.SIGTERM)
        results = await asyncio.gather(*inflight)
    assert results == [200] * 10
    assert await asyncio.to_thread(r.wait_exit, 30) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as s, s.get(f"{r.url}/v1/models/clf") as resp:
            await resp.read()
