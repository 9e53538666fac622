"""Shared fixtures for data-plane tests: real aiohttp upstreams on port 0, the router in front."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from router.app import close_runtime, open_runtime
from router.config import parse_config
from router.dataplane.proxy import ProxyServer, start_proxy
from router.runtime import Runtime
from router.store.memory import MemoryStore

NAME = web.AppKey("name", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str  # raw path with query
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Upstream:
    """A real aiohttp server recording what it received."""

    name: str
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def count(self) -> int:
        return len(self.seen)


async def default_handler(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.json_response(
        {"path": request.path_qs, "len": len(body)},
        headers={"x-upstream": request.app[NAME]},
    )


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    """`await upstreams("a", handler=None, record_body=True)` starts one upstream."""
    started: list[Upstream] = []

    async def start(name: str, handler: Handler | None = None, record: bool = True) -> Upstream:
        up = Upstream(name)
        h = handler or default_handler

        @web.middleware
        async def recorder(request: web.Request, handler: Handler) -> web.StreamResponse:
            if record:
                body = await request.read()
                up.seen.append(
                    Seen(request.method, request.raw_path, list(request.headers.items()), body)
                )
            return await handler(request)

        app = web.Application(middlewares=[recorder], client_max_size=1 << 30)
        app[NAME] = name
        app.router.add_route("*", "/{tail:.*}", h)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        up.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        up.runner = runner
        started.append(up)
        return up

    yield start
    for up in started:
        assert up.runner is not None
        await up.runner.cleanup()


@dataclass
class Router:
    runtime: Runtime
    proxy: ProxyServer
    registry: CollectorRegistry

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def sample(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


@pytest.fixture
async def router() -> AsyncIterator[Callable[..., Awaitable[Router]]]:
    """`await router(yaml_text)` parses a real config, builds the Runtime and starts the proxy."""
    made: list[Router] = []

    async def make(text: str, **_: Any) -> Router:
        config = parse_config(textwrap.dedent(text), "test.yaml")
        registry = CollectorRegistry()
        store = MemoryStore()  # whatever the test's config says: nothing touches the disk
        await store.open()
        runtime = await open_runtime(config, store=store, registry=registry)
        proxy = await start_proxy(runtime, "127.0.0.1", 0, freeze_gc=False)
        r = Router(runtime, proxy, registry)
        made.append(r)
        return r

    yield make
    for r in made:
        r.proxy.close()
        await close_runtime(r.runtime)


def simple_config(
    *backends: tuple[str, int],
    weights: dict[str, float] | None = None,
    limits: str = "",
    route_extra: str = "",
    backend_extra: str = "",
    prefix: str = "/",
) -> str:
    """A config with the given backends and one weighted route over them."""
    lines = ["version: 1", "listen: 127.0.0.1:0", "state: {store: memory}"]
    if limits:
        lines.append(f"limits: {limits}")
    lines.append("backends:")
    for name, port in backends:
        lines.append(f"  {name}:")
        lines.append(f"    url: http://127.0.0.1:{port}")
        if backend_extra:
            lines.append(f"    {backend_extra}")
    w = weights or {name: 1 for name, _ in backends}
    lines += [
        "routes:",
        "  - name: r",
        f"    match: {{path_prefix: {prefix}}}",
        "    policy: {kind: weighted, weights: {"
        + ", ".join(f"{k}: {v}" for k, v in w.items())
        + "}}",
    ]
    if route_extra:
        lines += ["    " + line for line in route_extra.strip().splitlines()]
    return "\n".join(lines) + "\n"


async def raw_exchange(
    port: int, data: bytes, *, until_close: bool = True, timeout: float = 5.0, n_responses: int = 0
) -> bytes:
    """Send raw bytes; read until the server closes (or `n_responses` complete answers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        buf = b""
        async with asyncio.timeout(timeout):
            if until_close and not n_responses:
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buf += chunk
            else:
                while count_responses(buf) < n_responses:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buf += chunk
        return buf
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def count_responses(buf: bytes) -> int:
    """How many complete Content-Length-framed answers `buf` holds."""
    n = 0
    i = 0
    while True:
        end = buf.find(b"\r\n\r\n", i)
        if end < 0:
            return n
        head = buf[i:end].lower()
        clen = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                clen = int(line.split(b":", 1)[1])
        if len(buf) < end + 4 + clen:
            return n
        if not head.startswith(b"http/1.1 1"):
            n += 1
        i = end + 4 + clen


def parse_responses(buf: bytes) -> list[tuple[int, dict[str, list[str]], bytes]]:
    """Split Content-Length-framed answers: (status, headers lower-case -> values, body)."""
    out = []
    i = 0
    while i < len(buf):
        end = buf.find(b"\r\n\r\n", i)
        if end < 0:
            break
        lines = buf[i:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
        clen = int(headers.get("content-length", ["0"])[0])
        body = buf[end + 4 : end + 4 + clen]
        i = end + 4 + clen
        if status >= 200:
            out.append((status, headers, body))
    return out


SERVE_CODE = """
import asyncio, sys, uvloop
from router.app import open_runtime
from router.config import parse_config
from router.dataplane.proxy import start_proxy

async def main():
    cfg = parse_config(open(sys.argv[1]).read(), sys.argv[1])
    rt = await open_runtime(cfg)
    px = await start_proxy(rt, "127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(px.port, flush=True)
    await asyncio.Event().wait()

with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
    r.run(main())
"""


def rss_peak_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")
