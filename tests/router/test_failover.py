"""When a backend is down (or fails this request), its route's policy chooses among the other
healthy arms; the answer names the backend that really answered (issue 9)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.faults.upstream import FaultServer
from tests.router.conftest import Router


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port that refuses connections (bound, not listening) for the whole test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def config(backends: dict[str, int], policy: str, retries: str = "{attempts: 1}") -> str:
    lines = ["version: 1", "listen: 127.0.0.1:0", "state: {store: memory}", "backends:"]
    for name, port in backends.items():
        lines.append(f"  {name}: {{url: http://127.0.0.1:{port}}}")
    lines += ["routes:", "  - name: r", f"    policy: {policy}", f"    retries: {retries}"]
    return "\n".join(lines) + "\n"


async def send(
    r: Router, n: int, method: str = "GET"
) -> tuple[Counter[str], Counter[int], list[str]]:
    backends: Counter[str] = Counter()
    codes: Counter[int] = Counter()
    tokens: list[str] = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.request(method, f"{r.url}/v1/x?i={i}", data=b"{}") as resp:
                await resp.read()
                codes[resp.status] += 1
                backends[resp.headers.get("x-modelrouter-backend", "?")] += 1
                tok = resp.headers.get("x-modelrouter-decision")
                if tok:
                    tokens.append(tok)
    return backends, codes, tokens


async def test_weighted_route_fails_over_by_weight(
    upstreams: Any, router: Any, dead_port: int
) -> None:
    b, c = await upstreams("b"), await upstreams("c")
    r = await router(
        config(
            {"a": dead_port, "b": b.port, "c": c.port},
            "{kind: weighted, weights: {a: 50, b: 30, c: 20}}",
        )
    )
    backends, codes, _ = await send(r, 600, "POST")  # nothing reached `a`: a POST may go on
    print(f"\na dead (50/30/20): {dict(backends)}")
    assert codes == {200: 600}
    assert set(backends) == {"b", "c"}
    assert abs(backends["b"] / 600 - 0.6) < 0.07
    assert not r.runtime.backends["a"].up  # ejected: down at once, no health check configured
    assert r.sample("modelrouter_backend_up", backend="a") == 0.0
    assert (
        r.sample("modelrouter_requests_total", route="r", backend="b", code="200") == backends["b"]
    )
    assert r.sample("modelrouter_requests_total", route="r", backend="a", code="502") == 0.0


async def wait_phase(r: Router, phase: str) -> None:
    deadline = time.monotonic() + 20
    while r.runtime.status("r")["phase"] != phase:
        assert time.monotonic() < deadline, r.runtime.status("r")
        await asyncio.sleep(0.02)


async def test_canary_down_goes_to_stable_and_promoted_canary_down_to_the_old_stable(
    upstreams: Any, router: Any
) -> None:
    stable = await upstreams("stable")
    canary = FaultServer("canary")
    await canary.start()
    r = await router(
        config(
            {"stable": stable.port, "canary": canary.port},
            "{kind: canary, stable: stable, candidate: canary, steps: [50, 100], interval: 1h}",
        )
    )
    try:
        await wait_phase(r, "progressing")
        backends, codes, _ = await send(r, 100)
        assert codes == {200: 100} and set(backends) == {"stable", "canary"}
        # promoted: the canary has all the traffic; the old stable is still configured
        await r.runtime.route("r").engine.action("promote", "test", "test", {"full": True})
        assert r.runtime.status("r")["shares"]["canary"] == 1.0
    finally:
        await canary.stop()  # the canary's server goes away
    backends, codes, _ = await send(r, 50)
    print(f"\npromoted canary dead: {dict(backends)} {dict(codes)}")
    assert codes == {200: 50} and backends == {"stable": 50}


async def test_rolled_back_canary_never_takes_failover_traffic(
    upstreams: Any, router: Any, dead_port: int
) -> None:
    canary = await upstreams("canary")
    r = await router(
        config(
            {"stable": dead_port, "canary": canary.port},
            "{kind: canary, stable: stable, candidate: canary, steps: [50, 100], interval: 1h}",
        )
    )
    await wait_phase(r, "progressing")
    await r.runtime.route("r").engine.action("abort", "test", "test", {})
    before = canary.count  # (the rollout's validation request)
    _, codes, _ = await send(r, 20)
    assert codes[200] == 0  # the stable is dead and the rolled-back canary is not an option
    assert canary.count == before


async def test_bandit_chooses_again_without_the_dead_arm_and_the_token_names_who_answered(
    upstreams: Any, router: Any, dead_port: int
) -> None:
    b, c = await upstreams("b"), await upstreams("c")
    r = await router(
        config({"a": dead_port, "b": b.port, "c": c.port}, "{kind: bandit, arms: [a, b, c]}")
    )
    backends, codes, tokens = await send(r, 200)
    assert codes == {200: 200} and set(backends) <= {"b", "c"}
    signer = r.runtime.signer
    arms = Counter(signer.verify(t, time.time(), 3600).arm for t in tokens)
    print(f"\nbandit with a dead arm: answered {dict(backends)}, tokens {dict(arms)}")
    assert arms == backends
