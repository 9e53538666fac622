"""Every error answer of the data plane, framing attacks, stale connections and retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import eventually
from tests.router.conftest import parse_responses, raw_exchange, simple_config

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawUpstream:
    """A hand-written HTTP server: `behave(conn_no, req_no, head) -> (bytes, close)` per request."""

    def __init__(self, behave: Callable[[int, int, bytes], tuple[bytes, bool]]) -> None:
        self.behave = behave
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.connections
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                self.heads.append(head)
                out, close = self.behave(conn, n, head)
                n += 1
                if out:
                    writer.write(out)
                    await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    made: list[RawUpstream] = []

    async def make(behave: Callable[[int, int, bytes], tuple[bytes, bool]]) -> RawUpstream:
        u = await RawUpstream(behave).start()
        made.append(u)
        return u

    yield make
    for u in made:
        await u.close()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def assert_json_error(status: int, headers: dict[str, list[str]], body: bytes, want: int) -> None:
    assert status == want
    assert headers["content-type"] == ["application/json"]
    assert int(headers["content-length"][0]) == len(body)
    assert json.loads(body)["status"] == want


async def test_404_json_and_connection_goes_on(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port), prefix="/v1"))
    buf = await raw_exchange(
        r.port,
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /v1/ok HTTP/1.1\r\nHost: h\r\n\r\n",
        n_responses=2,
    )
    [(s1, h1, b1), (s2, _, _)] = parse_responses(buf)
    assert_json_error(s1, h1, b1, 404)
    assert json.loads(b1) == {"error": "no route for POST /x", "status": 404}
    assert s2 == 200
    assert r.sample("modelrouter_requests_total", route="", backend="", code="404") == 1


async def test_502_when_upstream_refuses(router):
    r = await router(simple_config(("a", free_port())))
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}/x") as resp:
        assert resp.status == 502
        assert (await resp.json())["status"] == 502
        assert resp.headers["x-modelrouter-backend"] == "a"
    assert r.sample("modelrouter_requests_total", route="r", backend="a", code="502") == 1
    assert (
        r.sample("modelrouter_upstream_errors_total", route="r", backend="a", reason="connect") == 1
    )


async def test_504_backend_timeout_and_route_deadline(upstreams, router):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    up = await upstreams("a", slow)
    r = await router(simple_config(("a", up.port), backend_extra="timeout: 200ms"))
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}/x") as resp:
        assert resp.status == 504
        assert (await resp.json())["error"] == "upstream timeout"
    up2 = await upstreams("b", slow)
    r2 = await router(simple_config(("b", up2.port), route_extra="timeout: 200ms"))
    async with aiohttp.ClientSession() as s, s.get(f"{r2.url}/x") as resp:
        assert resp.status == 504
    assert (
        r2.sample("modelrouter_upstream_errors_total", route="r", backend="b", reason="timeout")
        == 1
    )


async def test_503_when_backend_down(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))
    r.runtime.backends["a"].up = False
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}/x") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "no healthy backend"
    assert up.count == 0


async def test_503_when_too_many_wait_for_a_connection(upstreams, router):
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text="ok")

    up = await upstreams("a", held)
    r = await router(simple_config(("a", up.port), limits="{max_pending: 1}"))
    pool = r.runtime.backends["a"].group.pools[0]
    pool.max_connections = 1
    async with aiohttp.ClientSession() as s:

        async def get() -> int:
            async with s.get(f"{r.url}/x") as resp:
                await resp.read()
                return resp.status

        first = asyncio.create_task(get())
        await eventually(lambda: up.count == 1)
        second = asyncio.create_task(get())
        await eventually(lambda: len(pool.waiters) == 1)
        assert await get() == 503
        gate.set()
        assert await first == 200 and await second == 200


async def test_413_from_content_length_before_upstream(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port), limits="{max_body: 1KiB}"))
    buf = await raw_exchange(
        r.port, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n" + b"a" * 100
    )
    [(status, headers, body)] = parse_responses(buf)
    assert_json_error(status, headers, body, 413)
    assert up.count == 0


async def test_413_while_streaming_chunked(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port), limits="{max_body: 1KiB}"))
    chunks = b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(5))
    buf = await raw_exchange(
        r.port,
        b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n",
    )
    [(status, headers, body)] = parse_responses(buf)
    assert_json_error(status, headers, body, 413)
    assert headers["connection"] == ["close"]


async def test_431_headers_too_large(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port), limits="{max_header: 1KiB}"))
    big = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(20))
    buf = await raw_exchange(r.port, b"GET /x HTTP/1.1\r\nHost: h\r\n" + big + b"\r\n")
    [(status, headers, body)] = parse_responses(buf)
    assert_json_error(status, headers, body, 431)
    # one endless header line, sent in pieces, is cut off too
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(b"GET /x HTTP/1.1\r\nX-Long: ")
    with contextlib.suppress(ConnectionError):
        for _ in range(10):
            writer.write(b"y" * 512)
            await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 431")
    writer.close()
    assert up.count == 0


FRAMING_ATTACKS = [
    (
        "cl+te",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te+cl",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    ),
    ("dup cl", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    (
        "conflicting cl",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    ),
    ("cl list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc"),
    ("1.0 te", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("te gzip", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
    (
        "te gzip,chunked",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te twice",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    ("te xchunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    (
        "te space colon",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "bad chunk size",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ),
    ("bad request line", b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("dot segment", b"GET /v1/../admin HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("encoded dot segment", b"GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("bare lf", b"GET / HTTP/1.1\nHost: h\n\n"),
]


@pytest.mark.parametrize("name,payload", FRAMING_ATTACKS, ids=[n for n, _ in FRAMING_ATTACKS])
async def test_framing_attacks_get_400_and_close(upstreams, router, name, payload):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    buf = await raw_exchange(r.port, payload + smuggled)
    answers = parse_responses(buf)
    assert answers, f"{name}: no answer, got {buf!r}"
    status, headers, body = answers[0]
    assert_json_error(status, headers, body, 400)
    assert headers["connection"] == ["close"]
    assert len(answers) == 1
    assert all("smuggled" not in s.path for s in up.seen)
    assert up.count == 0


SMUGGLING = [
    # CL.TE: a front end trusting Content-Length would forward the rest as the next request
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    # TE.CL
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5c\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
    # TE obfuscation
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
]


async def test_smuggled_requests_never_reach_upstream(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))
    for payload in SMUGGLING:
        buf = await raw_exchange(r.port, payload)
        assert buf.startswith(b"HTTP/1.1 400"), buf[:60]
    # a request whose body merely looks like a request is one request
    body = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    buf = await raw_exchange(
        r.port,
        b"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body),
    )
    assert buf.startswith(b"HTTP/1.1 200")
    assert [s.path for s in up.seen] == ["/ok"]
    assert up.seen[0].body == body


async def test_upstream_connection_close_is_not_reused(raw_upstream, router):
    up = await raw_upstream(
        lambda c, n, h: (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            True,
        )
    )
    r = await router(simple_config(("a", up.port)))
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(f"{r.url}/x") as resp:
                assert resp.status == 200 and await resp.read() == b"ok"
                assert "connection" not in {
                    k.lower() for k in resp.headers if resp.headers[k] == "close"
                }
    assert up.connections == 3


async def test_upstream_closing_mid_response_closes_client(raw_upstream, router):
    up = await raw_upstream(
        lambda c, n, h: (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"p" * 10, True)
    )
    r = await router(simple_config(("a", up.port)))
    buf = await raw_exchange(
        r.port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    # the truncated answer, then the close: never a second answer glued to a broken first
    assert buf.startswith(b"HTTP/1.1 200") and buf.endswith(b"p" * 10)
    assert buf.count(b"HTTP/1.1") == 1
    await eventually(
        lambda: (
            r.sample("modelrouter_upstream_errors_total", route="r", backend="a", reason="reset")
            == 1
        )
    )


async def test_stale_pooled_connection_is_retried_on_a_fresh_one(raw_upstream, router):
    # every connection serves one request, then closes silently when the next arrives
    up = await raw_upstream(lambda c, n, h: (OK, False) if n == 0 else (b"", True))
    r = await router(simple_config(("a", up.port)))
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            async with s.get(f"{r.url}/x?i={i}") as resp:
                assert resp.status == 200, i
                assert await resp.read() == b"ok"
    assert up.connections == 4
    assert (
        r.sample("modelrouter_retries_total", route="r", backend="a", reason="connection-closed")
        == 3
    )


async def test_post_on_a_stale_connection_is_not_sent_twice(raw_upstream, router):
    # the upstream read the second POST, then closed: it may have acted on it
    up = await raw_upstream(lambda c, n, h: (OK, False) if n == 0 else (b"", True))
    r = await router(simple_config(("a", up.port)))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{r.url}/x", data=b"first") as resp:
            assert resp.status == 200
        async with s.post(f"{r.url}/x", data=b"second") as resp:
            assert resp.status == 502
    assert len(up.heads) == 2  # each POST reached the upstream once
    # a route that declares its POSTs safe to repeat gets the old behaviour
    up2 = await raw_upstream(lambda c, n, h: (OK, False) if n == 0 else (b"", True))
    r2 = await router(simple_config(("b", up2.port), route_extra="retries: {non_idempotent: true}"))
    async with aiohttp.ClientSession() as s:
        for i in range(3):
            async with s.post(f"{r2.url}/x", data=b"body%d" % i) as resp:
                assert resp.status == 200, i
    assert len(up2.heads) == 5


async def test_route_retries_on_5xx_and_reset(raw_upstream, router):
    err = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    # each upstream answers its first request 503, the rest 200
    for method, extra, status, heads in [
        ("GET", "", 200, 2),
        ("POST", "", 503, 1),  # the POST reached the upstream: not sent again
        ("POST", ", non_idempotent: true", 200, 2),  # unless the route says it may be
    ]:
        up = await raw_upstream(lambda c, n, h: (err, False) if c == 0 and n == 0 else (OK, False))
        r = await router(
            simple_config(
                ("a", up.port), route_extra=f"retries: {{attempts: 1, on: [5xx, reset]{extra}}}"
            )
        )
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, f"{r.url}/x", data=b"abc") as resp,
        ):
            assert resp.status == status, (method, extra)
        assert len(up.heads) == heads, (method, extra)
    # a fresh connection reset before any answer: retried by `reset`
    up2 = await raw_upstream(lambda c, n, h: (b"", True) if c == 0 else (OK, False))
    r2 = await router(
        simple_config(("b", up2.port), route_extra="retries: {attempts: 1, on: [reset]}")
    )
    async with aiohttp.ClientSession() as s, s.get(f"{r2.url}/x") as resp:
        assert resp.status == 200
    # without retries the same failure is a 502
    up3 = await raw_upstream(lambda c, n, h: (b"", True))
    r3 = await router(simple_config(("c", up3.port)))
    async with aiohttp.ClientSession() as s, s.get(f"{r3.url}/x") as resp:
        assert resp.status == 502


async def test_client_gone_mid_request_is_recorded_and_upstream_freed(upstreams, router):
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        with contextlib.suppress(asyncio.CancelledError):
            await gate.wait()
        return web.Response(text="x")

    up = await upstreams("a", held)
    r = await router(simple_config(("a", up.port)))
    _reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    await writer.drain()
    await eventually(lambda: up.count == 1)
    writer.close()
    await eventually(
        lambda: r.sample("modelrouter_requests_total", route="r", backend="a", code="499") == 1
    )
    gate.set()
