"""The misbehaving upstream does what each mode says (the fault tests rely on it)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from tests.faults.conftest import FaultProcess
from tests.faults.upstream import FaultServer

Make = Callable[..., Awaitable[FaultServer]]


async def get(url: str, **kw: object) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.read()


async def test_ok_status_and_burst(fault_server: Make) -> None:
    u = await fault_server("a")
    assert (await get(u.url + "/v1/x"))[0] == 200
    u.set_mode("status:404")
    status, body = await get(u.url + "/v1/x")
    assert status == 404 and b"model not found" in body
    assert (await get(u.url + "/health"))[0] == 200  # the health path still says fine
    u.set_mode("burst:500:2")
    assert [(await get(u.url + "/v1/x"))[0] for _ in range(4)] == [500, 500, 200, 200]
    assert u.count() == 6 and u.count("GET") == 6  # health and control are not counted


async def test_hang_and_close_after_read(fault_server: Make) -> None:
    u = await fault_server("a", "hang")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(get(u.url + "/v1/x"), 0.3)
    assert u.count() == 1 and u.unanswered() == 1
    u.set_mode("close-after-read")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with aiohttp.ClientSession() as s, s.post(u.url + "/v1/x", data=b"{}") as r:
            await r.read()
    assert u.count("POST") == 1  # (aiohttp itself re-sends a GET once on a fresh connection)


async def test_close_on_reuse_answers_first_request_of_a_connection_only(
    fault_server: Make,
) -> None:
    u = await fault_server("a", "close-on-reuse")
    reader, writer = await asyncio.open_connection("127.0.0.1", u.port)
    req = b"GET /v1/x HTTP/1.1\r\nhost: x\r\n\r\n"
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await reader.readexactly(int(head.split(b"content-length: ")[1].split(b"\r\n")[0]))
    writer.write(req)
    assert await reader.read() == b""  # closed, unanswered
    writer.close()
    assert u.count() == 2 and u.unanswered() == 1


async def test_reset_mid_body_and_drip(fault_server: Make) -> None:
    u = await fault_server("a", "reset-mid-body")
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(u.url + "/v1/x")
    u.set_mode("drip:20")
    t = time.monotonic()
    status, body = await get(u.url + "/v1/x")
    assert status == 200 and body == b"0123456789abcdef"
    assert time.monotonic() - t >= 16 * 0.02


async def test_huge_head(fault_server: Make) -> None:
    u = await fault_server("a", "huge-head:100000")
    reader, writer = await asyncio.open_connection("127.0.0.1", u.port, limit=1 << 22)
    writer.write(b"GET /v1/x HTTP/1.1\r\nhost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200") and len(head) >= 100_000


async def test_process_sigterm_finishes_in_flight_and_sigkill_loses_no_record(
    fault_process: Callable[..., FaultProcess],
) -> None:
    p = fault_process("a", "delay:300")
    task = asyncio.ensure_future(get(p.url + "/v1/slow"))
    deadline = time.monotonic() + 5
    while p.received() < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    p.signal(signal.SIGTERM)
    assert (await task)[0] == 200  # drained: the request in flight was answered
    assert p.wait() == 0
    q = fault_process("b", "hang")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(get(q.url + "/v1/x", headers={"x-request-id": "r1"}), 0.3)
    q.signal(signal.SIGKILL)
    q.wait()
    assert q.received() == 1 and q.unanswered() == 1
