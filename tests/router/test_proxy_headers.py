"""Proxying basics through the real Runtime: keep-alive, headers both ways, rewrite, HEAD, 1.0."""

from __future__ import annotations

import asyncio

import aiohttp
import uvloop
from aiohttp import web

from router.dataplane.head import sane_request_id
from router.dataplane.seam import Request
from tests.router.conftest import parse_responses, raw_exchange, simple_config


async def test_keepalive_get_and_post_reuse_one_upstream_connection(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            async with s.post(f"{r.url}/v1/x?i={i}", data=b"z" * i) as resp:
                assert resp.status == 200
                assert await resp.json() == {"path": f"/v1/x?i={i}", "len": i}
                assert resp.headers["x-modelrouter-backend"] == "a"
                assert resp.headers["x-upstream"] == "a"
    assert up.count == 20
    pool = r.runtime.backends["a"].group.pools[0]
    assert pool.size == 1  # sequential requests share one keep-alive upstream connection
    assert r.sample("modelrouter_requests_total", route="r", backend="a", code="200") == 20


async def test_headers_both_ways(upstreams, router):
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.Response(text="ok")
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers["Connection"] = "x-secret-hop"
        resp.headers["X-Secret-Hop"] = "no"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["Proxy-Authenticate"] = "Basic"
        resp.headers["X-After"] = "1"
        return resp

    up = await upstreams("a", handler)
    r = await router(simple_config(("a", up.port)))
    req = (
        b"GET /p HTTP/1.1\r\nHost: front.example:8080\r\nX-Forwarded-For: 10.1.1.1\r\n"
        b"X-Forwarded-Proto: https\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\n"
        b"Keep-Alive: 300\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n"
        b"Upgrade: websocket\r\nX-Request-Id: abc-123.x:y_z\r\n"
        b"X-Multi: 1\r\nX-Multi: 2\r\nAccept-Encoding: gzip\r\n\r\n"
    )
    buf = await raw_exchange(r.port, req, n_responses=1)
    [(status, headers, body)] = parse_responses(buf)
    assert status == 200 and body == b"ok"
    assert headers["set-cookie"] == ["a=1", "b=2"]
    for hop in ("x-secret-hop", "keep-alive", "proxy-authenticate"):
        assert hop not in headers
    assert headers["x-request-id"] == ["abc-123.x:y_z"]
    assert headers["x-modelrouter-backend"] == ["a"]
    assert headers["x-after"] == ["1"]
    assert "x-modelrouter-decision" not in headers  # weighted routes do not learn

    seen = up.seen[0]
    names = [k.lower() for k, _ in seen.headers]
    h = {k.lower(): v for k, v in seen.headers}
    for hop in ("x-drop-me", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert hop not in names
    assert h["host"] == f"127.0.0.1:{up.port}"
    assert h["x-forwarded-for"] == "127.0.0.1"  # trusted_hops 0: the client's chain is not kept
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "front.example:8080"
    assert h["x-request-id"] == "abc-123.x:y_z"
    assert h["accept-encoding"] == "gzip"  # passed through: the proxy never decompresses
    assert [v for k, v in seen.headers if k.lower() == "x-multi"] == ["1", "2"]
    assert names.index("x-multi") < names.index("accept-encoding")  # order kept


async def test_request_id_generated_when_missing_or_insane(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))
    async with aiohttp.ClientSession() as s:
        ids = set()
        for rid in (None, "bad id with spaces", "x" * 129):
            hdrs = {} if rid is None else {"x-request-id": rid}
            async with s.get(f"{r.url}/", headers=hdrs) as resp:
                got = resp.headers["x-request-id"]
                assert got != rid and sane_request_id(got.encode())
                ids.add(got)
    assert len(ids) == 3
    sent = {v for x in up.seen for k, v in x.headers if k.lower() == "x-request-id"}
    assert sent == ids


async def test_rewrite_and_base_path(upstreams, router):
    up = await upstreams("a")
    text = f"""\
    version: 1
    state: {{store: memory}}
    backends:
      a:
        url: http://127.0.0.1:{up.port}/base
        rewrite: {{from: /v1/models/clf, to: /v1/models/resnet}}
    routes:
      - name: r
        match: {{path_prefix: /v1/models/clf}}
        policy: {{kind: weighted, weights: {{a: 1}}}}
    """
    r = await router(text)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{r.url}/v1/models/clf:predict?x=1", data=b"{}") as resp,
    ):
        assert resp.status == 200
    assert up.seen[0].path == "/base/v1/models/resnet:predict?x=1"


async def test_head_and_no_body_statuses(upstreams, router):
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/204":
            return web.Response(status=204)
        return web.Response(body=b"x" * 1000, content_type="text/plain")

    up = await upstreams("a", handler)
    r = await router(simple_config(("a", up.port)))
    req = (
        b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    buf = await raw_exchange(r.port, req)
    # HEAD carries the length of the body it does not send
    first, rest = buf.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: 1000" in first
    assert rest.startswith(b"HTTP/1.1 204")
    _second, third = rest.split(b"\r\n\r\n", 1)
    assert third.startswith(b"HTTP/1.1 200") and third.endswith(b"x" * 1000)
    assert b"connection: close" in third.lower()


async def test_http10_closes_unless_keepalive(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))
    buf = await raw_exchange(r.port, b"GET /a HTTP/1.0\r\n\r\n", timeout=5)
    assert buf.startswith(b"HTTP/1.1 200") and b'"/a"' in buf  # closed by the proxy: read ended
    buf = await raw_exchange(
        r.port,
        b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
    )
    [(_s1, h1, b1), (s2, _h2, b2)] = parse_responses(buf)
    assert h1["connection"] == ["keep-alive"] and b'"/a"' in b1
    assert s2 == 200 and b'"/b"' in b2


async def test_http10_client_gets_close_delimited_body_for_chunked_upstream(upstreams, router):
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(b"part%d;" % i)
        await resp.write_eof()
        return resp

    up = await upstreams("a", handler)
    r = await router(simple_config(("a", up.port)))
    buf = await raw_exchange(r.port, b"GET / HTTP/1.0\r\n\r\n")
    head, body = buf.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower()
    assert body == b"part0;part1;part2;part3;part4;"
    # HTTP/1.1 client: re-framed as chunked, connection kept
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(f"{r.url}/") as resp:
                assert resp.headers["Transfer-Encoding"] == "chunked"
                assert await resp.read() == b"part0;part1;part2;part3;part4;"


async def test_pipelined_requests_answer_in_order(upstreams, router):
    async def handler(request: web.Request) -> web.StreamResponse:
        # the first request is the slowest: order must come from the proxy, not from timing
        n = int(request.path.strip("/"))
        await asyncio.sleep(0.02 * (5 - n))
        return web.Response(text=str(n))

    up = await upstreams("a", handler)
    r = await router(simple_config(("a", up.port)))
    req = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    req += b"POST /5 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    buf = await raw_exchange(r.port, req, n_responses=6)
    bodies = [b for _, _, b in parse_responses(buf)]
    assert bodies == [b"0", b"1", b"2", b"3", b"4", b"5"]


async def test_chunked_request_and_response_stream(upstreams, router):
    async def handler(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 1000):
            await resp.write(data[i : i + 1000])
        await resp.write_eof()
        return resp

    up = await upstreams("a", handler, record=False)
    r = await router(simple_config(("a", up.port)))
    payload = bytes(range(256)) * 400

    async def gen():
        for i in range(0, len(payload), 7000):
            yield payload[i : i + 7000]

    async with aiohttp.ClientSession() as s, s.post(f"{r.url}/echo", data=gen()) as resp:
        assert resp.status == 200
        assert await resp.read() == payload


async def test_expect_100_continue(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    writer.write(
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert line == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    assert up.seen[0].body == b"hello"
    assert "expect" not in {k.lower() for k, _ in up.seen[0].headers}


async def test_feedback_endpoint_reaches_runtime(upstreams, router):
    up = await upstreams("a")
    r = await router(simple_config(("a", up.port)))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{r.url}/_modelrouter/feedback", data=b"not json") as resp:
            assert resp.status == 400
            assert resp.headers["Content-Type"].startswith("application/json")
            assert "error" in await resp.json()
        async with s.get(f"{r.url}/_modelrouter/feedback") as resp:
            assert resp.status in (404, 405)
        async with s.get(f"{r.url}/x") as resp:  # the connection goes on serving
            assert resp.status == 200


async def test_on_uvloop(upstreams):
    """The same proxy on uvloop (what `modelrouter serve` runs), in its own loop."""

    def run() -> list[int]:
        async def main() -> list[int]:
            from tests.router.conftest import Upstream  # noqa: F401 - same module, own loop

            async def handler(request: web.Request) -> web.Response:
                return web.Response(text="u")

            app = web.Application()
            app.router.add_get("/{t:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            from router.app import open_runtime
            from router.config import parse_config
            from router.dataplane.proxy import start_proxy

            rt = await open_runtime(parse_config(simple_config(("a", port)), "t.yaml"))
            px = await start_proxy(rt, "127.0.0.1", 0)
            codes = []
            async with aiohttp.ClientSession() as s:
                for _ in range(50):
                    async with s.get(f"http://127.0.0.1:{px.port}/q") as resp:
                        await resp.read()
                        codes.append(resp.status)
            await px.drain(2)
            await rt.close()
            await runner.cleanup()
            return codes

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())

    codes = await asyncio.get_running_loop().run_in_executor(None, run)
    assert codes == [200] * 50


def test_request_view_lookups():
    req = Request(
        "POST",
        "/p",
        "a=1&b=x%20y&a=2&c",
        [(b"X-User", b"u1"), (b"Cookie", b's=1; grp="beta"'), (b"cookie", b"s=9; t=2")],
        "1.2.3.4",
    )
    assert req.header("x-user") == "u1"
    assert req.header("missing") is None
    assert req.cookie("grp") == "beta" and req.cookie("s") == "1" and req.cookie("t") == "2"
    assert req.cookie("nope") is None
    assert req.query_param("a") == "1" and req.query_param("b") == "x y"
    assert req.query_param("c") == "" and req.query_param("z") is None
