"""Mirrored routes: the shadow backend gets a copy, the client only ever sees the primary."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from tests.helpers import eventually
from tests.router.conftest import simple_config

MIRRORED = "modelrouter_mirror_requests_total"


def mirror_config(primary: int, shadow: int, percent: float = 100, shadow_extra: str = "") -> str:
    text = simple_config(("a", primary), ("shadow", shadow), weights={"a": 1, "shadow": 0})
    text += f"    mirror: {{backend: shadow, percent: {percent}}}\n"
    if shadow_extra:
        text = text.replace(
            f"url: http://127.0.0.1:{shadow}\n",
            f"url: http://127.0.0.1:{shadow}\n    {shadow_extra}\n",
        )
    return text


async def test_shadow_gets_a_copy_and_the_client_sees_the_primary(upstreams, router):
    async def primary_answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"from": "primary", "n": len(await request.read())})

    async def shadow_answer(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/differ"):
            return web.json_response({"from": "shadow"}, status=500)
        return web.json_response({"from": "primary", "n": len(await request.read())})

    a = await upstreams("a", primary_answer)
    shadow = await upstreams("shadow", shadow_answer)
    r = await router(mirror_config(a.port, shadow.port))
    labels = {"route": "r", "backend": "shadow"}
    async with aiohttp.ClientSession() as s:
        for i in range(3):
            body = b'{"x": %d}' % i
            async with s.post(f"{r.url}/v1/m:predict?q={i}", data=body) as resp:
                assert resp.status == 200
                assert await resp.json() == {"from": "primary", "n": len(body)}
                assert resp.headers["x-modelrouter-backend"] == "a"
        await eventually(lambda: r.sample(MIRRORED, **labels, result="match") == 3)
        assert [(x.method, x.path) for x in shadow.seen] == [
            ("POST", f"/v1/m:predict?q={i}") for i in range(3)
        ]
        assert [x.body for x in shadow.seen] == [b'{"x": %d}' % i for i in range(3)]
        assert dict(shadow.seen[0].headers)["x-modelrouter-mirror"] == "1"
        assert a.count == 3  # the primary served every request once

        # the shadow answers differently: the client still gets the primary's answer
        async with s.get(f"{r.url}/v1/differ") as resp:
            assert resp.status == 200
            assert (await resp.json())["from"] == "primary"
        await eventually(lambda: r.sample(MIRRORED, **labels, result="mismatch") == 1)
    # mirrored traffic is not counted as the shadow serving requests
    assert r.sample("modelrouter_requests_total", route="r", backend="shadow", code="200") == 0


async def test_mirror_uses_the_shadow_backends_rewrite(upstreams, router):
    a = await upstreams("a")
    shadow = await upstreams("shadow")
    r = await router(
        mirror_config(a.port, shadow.port, shadow_extra="rewrite: {from: /v1/, to: /v2/}")
    )
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}/v1/models/x?y=1") as resp:
        assert resp.status == 200
    await eventually(lambda: shadow.count == 1)
    assert shadow.seen[0].path == "/v2/models/x?y=1"
    assert a.seen[0].path == "/v1/models/x?y=1"


async def test_no_mirror_at_zero_percent(upstreams, router):
    a = await upstreams("a")
    shadow = await upstreams("shadow")
    r = await router(mirror_config(a.port, shadow.port, percent=0))
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            async with s.get(f"{r.url}/x") as resp:
                assert resp.status == 200
    assert a.count == 5
    assert shadow.count == 0


async def test_big_bodies_are_not_mirrored_and_big_answers_compare_by_status(upstreams, router):
    big_answer = b"z" * (200 * 1024)

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=big_answer, content_type="application/octet-stream")

    a = await upstreams("a", answer)
    shadow = await upstreams("shadow", answer)
    r = await router(mirror_config(a.port, shadow.port))
    labels = {"route": "r", "backend": "shadow"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{r.url}/big", data=b"b" * (100 * 1024)) as resp:
            assert resp.status == 200
            assert await resp.read() == big_answer
        await eventually(lambda: r.sample(MIRRORED, **labels, result="skipped") == 1)
        async with s.get(f"{r.url}/small-request-big-answer") as resp:
            assert await resp.read() == big_answer
        await eventually(lambda: r.sample(MIRRORED, **labels, result="match") == 1)
    assert [x.path for x in shadow.seen] == ["/small-request-big-answer"]
