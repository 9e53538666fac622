"""Large bodies stream through with bounded memory, both ways; drain finishes in-flight work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from tests.helpers import eventually
from tests.router.conftest import SERVE_CODE, rss_peak_kib, simple_config

BIG = 64 * 1024 * 1024
PIECE = b"\xab" * (256 * 1024)


async def test_64mib_streams_both_ways_without_buffering(upstreams, tmp_path):
    async def sink_or_source(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            n = 0
            async for chunk in request.content.iter_any():
                n += len(chunk)
            return web.json_response({"n": n})
        resp = web.StreamResponse(headers={"Content-Length": str(BIG)})
        await resp.prepare(request)
        for _ in range(BIG // len(PIECE)):
            await resp.write(PIECE)
        await resp.write_eof()
        return resp

    up = await upstreams("a", sink_or_source, record=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(simple_config(("a", up.port), limits="{max_body: 1GiB}"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE_CODE,
        str(cfg),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 20))
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/warm") as resp:  # warm up: imports, pools, buffers
                assert resp.status == 200
                async for _ in resp.content.iter_any():
                    pass
            base = rss_peak_kib(proc.pid)

            async def upload() -> AsyncIterator[bytes]:
                for _ in range(BIG // len(PIECE)):
                    yield PIECE

            async with s.post(f"{url}/up", data=upload()) as resp:
                assert resp.status == 200
                assert (await resp.json())["n"] == BIG
            async with s.post(
                f"{url}/up", data=upload(), headers={"Content-Length": str(BIG)}
            ) as resp:
                assert (await resp.json())["n"] == BIG
            async with s.get(f"{url}/down") as resp:
                n = 0
                async for chunk in resp.content.iter_any():
                    n += len(chunk)
                    if n < 8 * len(PIECE):
                        await asyncio.sleep(0.001)  # a slow reader at first: backpressure
                assert n == BIG
        growth_mib = (rss_peak_kib(proc.pid) - base) / 1024
        assert growth_mib < 16, f"proxy peak RSS grew by {growth_mib:.1f} MiB for 64 MiB bodies"
    finally:
        proc.terminate()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)


async def test_drain_finishes_in_flight_and_refuses_new(upstreams, router):
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        return web.Response(text="done")

    up = await upstreams("a", slow)
    r = await router(simple_config(("a", up.port)))
    # an idle keep-alive connection (one answered request), and one with a request in flight
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", r.port)
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        idle_w.write(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await asyncio.wait_for(idle_r.readuntil(b"done"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        busy_w.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        await eventually(lambda: up.count == 2)
        drain = asyncio.create_task(r.proxy.drain(10))
        assert await asyncio.wait_for(idle_r.read(), 5) == b""  # idle connection closed
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", r.port)
            w.close()
            raise AssertionError("a new connection was accepted while draining")
        assert not drain.done()
        release.set()
        data = await asyncio.wait_for(busy_r.read(), 5)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"done")
        assert b"connection: close" in data.lower()
        await asyncio.wait_for(drain, 5)
    finally:
        release.set()
        idle_w.close()
        busy_w.close()
