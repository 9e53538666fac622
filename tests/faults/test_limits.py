"""Every wait has a limit (issue 9): hostile or broken clients and upstreams against the router.

Slow-drip heads and bodies (the feedback endpoint and body-buffering routes too), silent and
idle connections, connections held beyond `limits.max_connections`, upstream response heads past
`limits.max_upstream_header`, and a 413 that a client streaming its whole body first (Python's
urllib: no `Expect: 100-continue`) still reads. Each case asserts what the client sees and what
reached the upstream.
"""

# ruff: noqa: F811 - the in-process `router`/`upstreams` fixtures are imported by name: they
# take precedence over any fixture of the same name in tests/faults/conftest.py

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.helpers import eventually
from tests.router.conftest import (  # noqa: F401 - fixtures
    parse_responses,
    router,
    simple_config,
    upstreams,
)

FAST = (
    "{client_header_timeout: 500ms, client_body_timeout: 500ms, keepalive_timeout: 500ms, "
    "max_connections: 20}"
)


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until the peer closes (a reset ends it too), within `timeout`."""
    buf = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# ---- slow clients ------------------------------------------------------------------------------


async def test_slow_drip_head_gets_408_and_close(upstreams: Any, router: Any) -> None:
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port), limits=FAST))
    async with connection(r.port) as (reader, writer):
        started = time.monotonic()
        writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n")
        # a byte every 100 ms keeps the connection busy but never finishes the head (slowloris)
        answer = b""
        for _ in range(100):
            with contextlib.suppress(ConnectionError):
                writer.write(b"x")
                await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(65536), 0.1)
                break
            except TimeoutError:
                continue
        answer += await read_all(reader, 10)
        took = time.monotonic() - started
    [(status, headers, body)] = parse_responses(answer)
    assert status == 408 and b"request head" in body
    assert headers["connection"] == ["close"]
    assert took < 5.0, f"408 after {took:.2f}s with client_header_timeout 500ms"
    assert up.count == 0


async def test_silent_new_connection_is_closed(upstreams: Any, router: Any) -> None:
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port), limits=FAST))
    async with connection(r.port) as (reader, _):
        started = time.monotonic()
        assert await read_all(reader, 10) == b""  # closed without a word: nothing was asked
        assert time.monotonic() - started < 5.0


async def test_idle_keepalive_connection_is_closed(upstreams: Any, router: Any) -> None:
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port), limits=FAST))
    async with connection(r.port) as (reader, writer):
        writer.write(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n")
        buf = b""
        while b"}" not in buf:
            buf += await asyncio.wait_for(reader.read(65536), 5)
        assert buf.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert await read_all(reader, 10) == b""
        assert time.monotonic() - started < 5.0
    assert up.count == 1


@pytest.mark.parametrize("target", ["/_modelrouter/feedback", "/plain", "/recommend"])
async def test_slow_body_gets_408_on_every_path(target: str, upstreams: Any, router: Any) -> None:
    """A body that stops arriving: the feedback endpoint, a proxied route and a route that
    buffers the body for a JSON feature all answer 408 and close instead of waiting forever."""
    a, b = await upstreams("a"), await upstreams("b")
    text = f"""\
    version: 1
    state: {{store: memory}}
    limits: {FAST}
    backends:
      a: {{url: "http://127.0.0.1:{a.port}"}}
      b: {{url: "http://127.0.0.1:{b.port}"}}
    routes:
      - name: rec
        match: {{path_prefix: /recommend}}
        policy:
          kind: contextual_bandit
          arms: [a, b]
          algorithm: linucb
          features: [{{name: age, from: "json:/age", type: numeric, default: 0.5}}]
      - name: plain
        match: {{path_prefix: /plain}}
        policy: {{kind: weighted, weights: {{a: 1}}}}
    """
    r = await router(text)
    async with connection(r.port) as (reader, writer):
        writer.write(
            f"POST {target} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
            'Content-Length: 100\r\n\r\n{"age": 3'.encode()
        )
        await writer.drain()
        started = time.monotonic()
        answer = await read_all(reader, 10)
        took = time.monotonic() - started
    [(status, headers, body)] = parse_responses(answer)
    assert status == 408 and b"request body" in body, answer
    assert headers["connection"] == ["close"]
    assert took < 5.0, f"408 after {took:.2f}s with client_body_timeout 500ms"
    # nothing complete reached an upstream: the plain route had started forwarding the body, and
    # that upstream request was cut (aiohttp never handed it to the handler)
    assert a.count == 0 and b.count == 0


async def test_a_slow_upstream_is_not_a_slow_client(upstreams: Any, router: Any) -> None:
    """Back-pressure from a slow upstream pauses reading the client: that is no body timeout."""

    async def slow_reader(request: Any) -> Any:
        from aiohttp import web

        n = 0
        async for chunk in request.content.iter_chunked(65536):
            n += len(chunk)
            await asyncio.sleep(0.05)
        return web.json_response({"len": n})

    up = await upstreams("a", slow_reader, record=False)
    r = await router(simple_config(("a", up.port), limits=FAST))
    body = b"x" * (8 << 20)  # the upstream takes several client_body_timeouts to read it
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{r.url}/big", data=body, timeout=aiohttp.ClientTimeout(total=60)) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["len"] == len(body)


# ---- too many connections ----------------------------------------------------------------------


async def test_connections_beyond_max_get_503_and_close(upstreams: Any, router: Any) -> None:
    up = await upstreams("a")
    limits = "{max_connections: 5, client_header_timeout: 30s}"
    r = await router(simple_config(("a", up.port), limits=limits))
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(5):
            held.append(await asyncio.open_connection("127.0.0.1", r.port))
        await eventually(lambda: len(r.proxy.connections) == 5, what="5 connections open")
        # the sixth is answered at once, before it says anything, and closed
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        answer = await read_all(reader, 5)
        writer.close()
        [(status, headers, body)] = parse_responses(answer)
        assert status == 503 and b"too many connections" in body
        assert headers["retry-after"] == ["1"] and headers["connection"] == ["close"]
        assert r.sample("modelrouter_connections_refused_total") == 1
        assert r.sample("modelrouter_client_connections") == 5
        # a held connection still works
        hr, hw = held[0]
        hw.write(b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await read_all(hr, 5)).startswith(b"HTTP/1.1 200")
    finally:
        for _, w in held:
            w.close()
    # with the held ones gone, new clients are served again
    await eventually(lambda: len(r.proxy.connections) == 0, what="held connections closed")
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}/again") as resp:
        assert resp.status == 200
    assert up.count == 2


# ---- a hostile upstream ------------------------------------------------------------------------


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handler: RawHandler) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server answering with `handler`; yields (port, [requests accepted])."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()


@pytest.mark.parametrize("shape", ["one-huge-header", "many-headers", "dripped"])
async def test_huge_upstream_head_is_a_502(shape: str, router: Any) -> None:
    sent = [0]

    async def huge_head(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
        if shape == "one-huge-header":
            pieces = [b"X-Big: " + b"a" * (4 << 20) + b"\r\n"]  # 4 MiB in one header
        elif shape == "many-headers":
            pieces = [b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(40_000)]
        else:
            pieces = [b"X-Drip: " + b"c" * 1000 + b"\r\n" for _ in range(200)]
        for p in pieces:
            writer.write(p)
            sent[0] += len(p)
            await writer.drain()
            if shape == "dripped":
                await asyncio.sleep(0.001)
        writer.write(b"\r\nok")
        await writer.drain()

    async with raw_upstream(huge_head) as (port, accepted):
        r = await router(simple_config(("a", port), limits="{max_upstream_header: 64KiB}"))
        async with aiohttp.ClientSession() as s, s.get(f"{r.url}/x") as resp:
            assert resp.status == 502
            assert resp.headers["x-modelrouter-backend"] == "a"
            assert "invalid response" in (await resp.json())["error"]
        assert accepted == [1]
    assert r.sample("modelrouter_upstream_errors_total", route="r", backend="a", reason="protocol")


async def test_upstream_head_under_the_limit_passes(router: Any) -> None:
    async def big_but_fine(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        big = b"".join(b"X-Big%d: %s\r\n" % (i, b"a" * 6000) for i in range(8))  # 48 KiB
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + big + b"\r\nok")
        await writer.drain()

    async with raw_upstream(big_but_fine) as (port, _):
        r = await router(simple_config(("a", port), limits="{max_upstream_header: 64KiB}"))
        async with aiohttp.ClientSession() as s, s.get(f"{r.url}/x") as resp:
            assert resp.status == 200 and len(resp.headers["x-big7"]) == 6000


# ---- 413 with a lingering close ----------------------------------------------------------------


def _urllib_post(url: str, body: bytes) -> tuple[int, bytes]:
    """What Python's urllib does: Content-Length, no Expect, the whole body before reading."""
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _chunked_post(port: int, size: int) -> tuple[int, bytes]:
    """http.client streaming a body of unknown length (chunked), no Expect."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    piece = b"z" * (1 << 20)

    def body() -> Any:
        for _ in range(size // len(piece)):
            yield piece

    try:
        conn.request("POST", "/upload", body=body(), encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["content-length", "chunked"])
async def test_413_reaches_a_client_that_streams_40mib(
    how: str, upstreams: Any, router: Any
) -> None:
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))  # default max_body: 16 MiB
    size = 40 << 20
    if how == "content-length":
        status, body = await asyncio.to_thread(_urllib_post, f"{r.url}/upload", b"y" * size)
    else:
        status, body = await asyncio.to_thread(_chunked_post, r.port, size)
    assert status == 413, body
    assert b"too large" in body
    # the Content-Length one never reached the upstream; the chunked one was cut at 16 MiB
    assert all(s.method != "POST" or len(s.body) < size for s in up.seen)
