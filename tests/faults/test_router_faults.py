"""Model servers failing under load, through `modelrouter serve`: what clients see, what reached
the upstreams. Each test prints the figure it asserts (run with -s to see them)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import HEAD, Router
from tests.e2e.helpers import get_metrics, metric, wait_status
from tests.faults.conftest import FaultProcess
from tests.faults.load import Load
from tests.faults.upstream import FaultServer

pytestmark = pytest.mark.e2e

PREDICT = "/v1/models/clf:predict"
MakeServer = Callable[..., Awaitable[FaultServer]]
MakeProcess = Callable[..., FaultProcess]


def config(backends: str, policy: str, retries: str = "", extra_route: str = "") -> str:
    return HEAD + (
        f"backends:\n{backends}"
        "routes:\n  - name: clf\n    match: {path_prefix: /v1/models/clf}\n"
        f"    policy: {policy}\n" + (f"    retries: {retries}\n" if retries else "") + extra_route
    )


def backend(name: str, *urls: str, extra: str = "") -> str:
    eps = ", ".join(f'"{u}"' for u in urls)
    return (
        f"  {name}:\n    endpoints: [{eps}]\n    timeout: 2s\n"
        "    health: {path: /health, interval: 1s}\n" + extra
    )


async def start(router: Callable[[str], Router], cfg: str) -> Router:
    r = router(cfg)
    await r.wait_ready()
    return r


async def wait_received(p: FaultProcess, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while p.received() < n:
        assert time.monotonic() < deadline, f"{p.name} received {p.received()} < {n}"
        await asyncio.sleep(0.02)


# ---- an endpoint killed under load ---------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_sigkill_one_of_two_endpoints_under_load(
    fault_process: MakeProcess, router: Any, method: str
) -> None:
    e1 = fault_process("e1", "delay:5")
    e2 = fault_process("e2", "delay:5")
    r = await start(
        router,
        config(
            backend("a", e1.url, e2.url),
            "{kind: weighted, weights: {a: 100}}",
            "{attempts: 2, on: [connect-failure, reset]}",
        ),
    )
    load = Load(r.url + PREDICT, method, concurrency=8, max_seconds=4.0)
    load.start()
    await wait_received(e1, 100)
    e1.signal(signal.SIGKILL)
    killed_at = load.elapsed()
    e1.wait()
    in_flight = e1.unanswered()  # requests e1 had read but not answered when it died
    # A POST is not retried once its bytes may have reached e1. Besides the requests e1 had
    # read, that covers one it had not read yet (still in its socket buffer) and one written on
    # a pooled connection in the instant before the router saw the reset. Either way each
    # connection e1 had open loses at most one request, since a failed connection is dropped.
    conns = e1.open_connections()
    await load.wait()
    codes = load.codes()
    print(
        f"\n{method}: SIGKILL of 1 of 2 endpoints at {killed_at:.2f}s, c=8: "
        f"{len(load.outcomes)} requests, codes {dict(codes)}, "
        f"in flight on the killed endpoint {in_flight} on {conns} open connections, "
        f"e2 received {e2.received()}"
    )
    assert len(load.outcomes) > 200
    if method == "GET":
        assert load.errors() == 0
    else:
        assert load.errors() <= conns <= 8
    text = await get_metrics(r)
    ejected = metric(
        text,
        "modelrouter_outlier_ejections_total",
        backend="a",
        reason="consecutive_local_origin_failure",
    )
    assert ejected == 1.0, r.log()


# ---- an endpoint answering errors while its health path says 200 ----------------------------


@pytest.mark.parametrize(("mode", "declared"), [("status:500", ""), ("status:404", "[404]")])
async def test_failing_backend_share_falls_under_5_percent_within_2s(
    fault_server: MakeServer, router: Any, mode: str, declared: str
) -> None:
    good = await fault_server("good")
    bad = await fault_server("bad", mode)
    outlier = f"    outlier_detection: {{failure_status: {declared}}}\n" if declared else ""
    r = await start(
        router,
        config(
            backend("a", good.url) + backend("b", bad.url, extra=outlier),
            "{kind: weighted, weights: {a: 50, b: 50}}",
        ),
    )
    load = Load(r.url + PREDICT, "GET", concurrency=8, max_seconds=4.0)
    load.start()
    await load.wait()
    late = load.backends(since=2.0)
    share = late["b"] / max(1, sum(late.values()))
    print(
        f"\n{mode} backend: share after 2 s {share:.4f} ({late['b']} of {sum(late.values())}); "
        f"it received {bad.count()} of {len(load.outcomes)} requests in all"
    )
    assert share < 0.05
    assert (await _health(bad)) == 200  # its health path said fine all along


async def _health(s: FaultServer) -> int:
    async with aiohttp.ClientSession() as c, c.get(s.url + "/health") as resp:
        return resp.status


# ---- retries: bounded by the budget, sent elsewhere ------------------------------------------


@pytest.mark.parametrize("outlier", ["off", "on"])
async def test_full_outage_with_three_attempts_stays_within_the_retry_budget(
    fault_server: MakeServer, router: Any, outlier: str
) -> None:
    bad = await fault_server("bad", "status:503")
    off = "    outlier_detection: {consecutive_5xx: 0}\n" if outlier == "off" else ""
    r = await start(
        router,
        config(
            backend("a", bad.url, extra=off),
            "{kind: weighted, weights: {a: 100}}",
            "{attempts: 3, on: [5xx, connect-failure]}",
        ),
    )
    load = Load(r.url + PREDICT, "GET", concurrency=8, max_requests=400, max_seconds=20.0)
    load.start()
    await load.wait()
    clients, upstream = len(load.outcomes), bad.count()
    text = await get_metrics(r)
    retries = metric(text, "modelrouter_retries_total", route="clf", backend="a", reason="5xx")
    refused = metric(text, "modelrouter_retry_budget_exhausted_total", backend="a")
    print(
        f"\nfull outage, attempts: 3, outlier detection {outlier}: {clients} client requests -> "
        f"{upstream} upstream ({upstream / clients:.3f}x); retries {retries}, "
        f"budget refused {refused}"
    )
    assert upstream <= 1.2 * clients + 3
    assert (retries or 0) == upstream - clients if outlier == "off" else True
    if outlier == "off":
        assert (refused or 0) > 0


async def test_retry_goes_to_the_other_backend_when_one_is_dead(
    fault_server: MakeServer, router: Any
) -> None:
    """The issue's case: a dead, b up, 50/50, attempts: 2 — 92 of 200 requests got 502."""
    b = await fault_server("b")
    dead = await fault_server("dead")
    dead_url = dead.url
    await dead.stop()  # nothing listens there any more
    r = await start(
        router,
        config(
            f'  a:\n    url: "{dead_url}"\n    timeout: 2s\n' + backend("b", b.url),
            "{kind: weighted, weights: {a: 50, b: 50}}",
            "{attempts: 2, on: [connect-failure]}",
        ),
    )
    load = Load(r.url + PREDICT, "POST", concurrency=4, max_requests=200)
    load.start()
    await load.wait()
    print(f"\na dead, b up, 50/50: codes {dict(load.codes())}, backends {dict(load.backends())}")
    assert load.codes() == {200: 200}
    assert load.backends() == {"b": 200}  # x-modelrouter-backend names who answered
    assert b.count() == 200
    text = await get_metrics(r)
    assert (metric(text, "modelrouter_requests_total", route="clf", backend="b", code="200")) == 200


async def test_retry_goes_to_another_endpoint(fault_server: MakeServer, router: Any) -> None:
    ok = await fault_server("ok")
    bad = await fault_server("bad")
    r = await start(
        router,
        config(
            backend("a", bad.url, ok.url),
            "{kind: weighted, weights: {a: 100}}",
            "{attempts: 1, on: [reset]}",
        ),
    )
    # 40 good requests first: the retry budget is 3 + 20% of the backend's recent requests
    warm = Load(r.url + PREDICT, "GET", concurrency=2, max_requests=40)
    warm.start()
    await warm.wait()
    assert warm.codes() == {200: 40}
    before_ok, before_bad = ok.count(), bad.count()
    bad.set_mode("close-after-read")
    load = Load(r.url + PREDICT, "GET", concurrency=2, max_requests=100)
    load.start()
    await load.wait()
    failed = bad.count() - before_bad
    print(f"\nreset on one endpoint: codes {dict(load.codes())}; bad got {failed}")
    assert load.codes() == {200: 100}, r.log()
    assert ok.count() - before_ok == 100
    assert failed <= 6  # ejected after 5 resets in a row (one more may have been on its way)
    text = await get_metrics(r)
    retried = sum(
        metric(text, "modelrouter_retries_total", route="clf", backend="a", reason=why) or 0
        for why in ("reset", "connection-closed")  # (a kept-alive connection from before)
    )
    assert retried == failed


# ---- what may be sent twice ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "opt_in", "expect_status", "expect_received"),
    [
        ("POST", False, 502, 2),  # the bug: the POST was written, then the connection closed
        ("GET", False, 200, 3),
        ("POST", True, 200, 3),
    ],
)
async def test_request_written_to_a_reused_connection_that_closes(
    fault_server: MakeServer,
    router: Any,
    method: str,
    opt_in: bool,
    expect_status: int,
    expect_received: int,
) -> None:
    up = await fault_server("a", "close-on-reuse")
    retries = "{attempts: 0, non_idempotent: true}" if opt_in else ""
    r = await start(
        router, config(backend("a", up.url), "{kind: weighted, weights: {a: 100}}", retries)
    )
    async with aiohttp.ClientSession() as s:
        async with s.request(method, r.url + PREDICT, data=b"{}") as resp:
            assert resp.status == 200  # the first request of the pooled connection
        async with s.request(method, r.url + PREDICT, data=b"{}") as resp:
            status = resp.status
    print(
        f"\n{method} (opt-in {opt_in}) on a reused connection closed unanswered: {status}, "
        f"upstream got {up.count()}"
    )
    assert status == expect_status
    assert up.count(method) == expect_received


# ---- hangs, resets, drips ------------------------------------------------------------------


async def test_hang_after_accept_times_out_without_a_retry_for_post(
    fault_server: MakeServer, router: Any
) -> None:
    up = await fault_server("a", "hang")
    r = await start(
        router,
        config(
            backend("a", up.url),
            "{kind: weighted, weights: {a: 100}}",
            "{attempts: 2, on: [timeout]}",
        ),
    )
    async with aiohttp.ClientSession() as s:
        t = time.monotonic()
        async with s.post(r.url + PREDICT, json={}) as resp:
            status = resp.status
        took = time.monotonic() - t
    print(f"\nhang: POST answered {status} after {took:.2f}s; upstream got {up.count()}")
    assert status == 504 and 1.5 < took < 6
    assert up.count() == 1  # bytes reached it: a POST is not sent again


async def test_reset_mid_body_reaches_the_client_as_a_broken_answer_once(
    fault_server: MakeServer, router: Any
) -> None:
    up = await fault_server("a", "reset-mid-body")
    r = await start(
        router,
        config(
            backend("a", up.url),
            "{kind: weighted, weights: {a: 100}}",
            "{attempts: 2, on: [reset]}",
        ),
    )
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(r.url + PREDICT) as resp:
                assert resp.status == 200
                await resp.read()
    assert up.count() == 1  # the answer had started: nothing is retried


async def test_slow_drip_within_the_idle_timeout_arrives_whole(
    fault_server: MakeServer, router: Any
) -> None:
    up = await fault_server("a", "drip:150")  # 16 bytes, one every 150 ms: 2.4 s in all
    r = await start(router, config(backend("a", up.url), "{kind: weighted, weights: {a: 100}}"))
    async with aiohttp.ClientSession() as s, s.get(r.url + PREDICT) as resp:
        body = await resp.read()
    assert resp.status == 200 and body == b"0123456789abcdef"
    assert up.count() == 1


async def test_sigterm_of_one_endpoint_under_load_loses_no_get(
    fault_process: MakeProcess, router: Any
) -> None:
    e1 = fault_process("e1", "delay:5")
    e2 = fault_process("e2", "delay:5")
    r = await start(
        router,
        config(
            backend("a", e1.url, e2.url),
            "{kind: weighted, weights: {a: 100}}",
            "{attempts: 2, on: [connect-failure, reset]}",
        ),
    )
    load = Load(r.url + PREDICT, "GET", concurrency=8, max_seconds=3.0)
    load.start()
    await wait_received(e1, 100)
    e1.signal(signal.SIGTERM)
    assert e1.wait() == 0
    await load.wait()
    print(f"\nSIGTERM of 1 of 2 endpoints, c=8 GET: codes {dict(load.codes())}")
    assert load.errors() == 0
    assert e1.unanswered() == 0  # it drained what it had


async def test_canary_failures_retried_away_still_roll_it_back(upstreams: Any, router: Any) -> None:
    """Clients of a canary failing 30% see no error (retried on the stable version), and the
    rollout analysis still sees the canary's failures and rolls it back."""
    v1, v2 = await upstreams("v1"), await upstreams("v2", fail_rate=0.3)
    cfg = HEAD + (
        "backends:\n"
        f'  v1: {{url: "{v1.url}", timeout: 5s}}\n'
        f'  v2: {{url: "{v2.url}", timeout: 5s, outlier_detection: {{consecutive_5xx: 0}},\n'
        # 30% failures need more than the default 20% budget to be retried away
        "      retry_budget: {budget_percent: 50}}\n"
        "routes:\n  - name: clf\n    match: {path_prefix: /v1/models/clf}\n"
        "    retries: {attempts: 1, on: [5xx], non_idempotent: true}\n"
        "    policy: {kind: canary, stable: v1, candidate: v2, steps: [30, 60, 100], "
        "interval: 1s, analysis: {min_requests: 20, failure_limit: 1, "
        "checks: [{metric: error_rate, max: 0.05}]}}\n"
    )
    r = await start(router, cfg)
    load = Load(r.url + PREDICT, "POST", concurrency=4, max_seconds=30.0)
    load.start()
    st = await wait_status(
        r, "clf", lambda s: s["phase"] in ("rolled_back", "promoted"), "rollback"
    )
    await load.stop()
    print(f"\ncanary failing 30% with retries: {st['phase']}; clients saw {dict(load.codes())}")
    assert st["phase"] == "rolled_back", st
    assert "error_rate" in st["reason"]
    assert load.errors() == 0
