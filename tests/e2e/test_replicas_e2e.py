"""Two `modelrouter serve` replicas on one real redis-server: one driver per rollout (a lease),
admin actions on either replica reach both, audit entries once, takeover after kill -9."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.conftest import Router
from tests.e2e.helpers import PREDICT, Traffic, admin_post, get_audit, get_status, wait_status
from tests.helpers import eventually
from tests.router.test_store_redis import RedisServer, free_port, need_redis

pytestmark = pytest.mark.e2e

LEASE = 2.0


@pytest.fixture
def redis_server_e2e(tmp_path: Path) -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer(free_port(), tmp_path, [])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_e2e: RedisServer) -> str:
    return redis_server_e2e.url


def redis_commands(server: RedisServer) -> int:
    with server.raw() as raw:
        info: Any = raw.info("stats")
        return int(info["total_commands_processed"])


def config(url: str, v1: Any, v2: Any, policy: str) -> str:
    """Both replicas' config: `url` is a redis:// URL, or a path for a shared SQLite file."""
    store = f'redis, url: "{url}"' if url.startswith("redis://") else f'sqlite, path: "{url}"'
    return f"""\
version: 1
listen: 127.0.0.1:{{port}}
admin: {{listen: "127.0.0.1:{{admin_port}}"}}
state: {{store: {store}, lease: {LEASE:g}s}}
backends:
  v1: {{url: "{v1.url}", version: 1.0.0, timeout: 5s}}
  v2: {{url: "{v2.url}", version: 1.1.0, timeout: 5s}}
routes:
  - name: clf
    match: {{path_prefix: /v1/models/clf}}
    policy: {policy}
"""


async def two(router: Any, text: str) -> tuple[Router, Router]:
    a: Router = router(text, name="a.yaml")
    b: Router = router(text, name="b.yaml")
    await a.wait_ready()
    await b.wait_ready()
    return a, b


class Hooks:
    """A webhook receiver on 127.0.0.1: the payloads it got, in order."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.got.append(await request.json())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"


@pytest.fixture
async def hooks() -> Any:
    h = Hooks()
    await h.start()
    yield h
    assert h.runner is not None
    await h.runner.cleanup()


def counts(entries: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    return Counter((e["action"], e.get("step", -1)) for e in entries)


async def test_a_canary_on_two_replicas_advances_once_per_interval(
    upstreams: Any, router: Any, redis_server_e2e: RedisServer, hooks: Hooks
) -> None:
    redis_url = redis_server_e2e.url
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [20, 40, 60, 80, 100], interval: 1s, "
        "analysis: {min_requests: 10, checks: [{metric: error_rate, max: 0.2}]}, "
        f'webhooks: [{{url: "{hooks.url}"}}]}}'
    )
    a, b = await two(router, config(redis_url, v1, v2, policy))
    # traffic reaches both replicas; the leader judges the sum of their windows
    await wait_status(a, "clf", lambda s: s["phase"] == "progressing", "progressing", 30)
    c0, t0 = redis_commands(redis_server_e2e), time.monotonic()
    async with (
        Traffic(a.url + PREDICT, 2, 20_000, 60) as ta,
        Traffic(b.url + PREDICT, 2, 20_000, 60) as tb,
    ):
        for r in (a, b):
            await wait_status(r, "clf", lambda s: s["phase"] == "promoted", "promoted", 60)
        sent, ops, took = (
            ta.sent + tb.sent,
            redis_commands(redis_server_e2e) - c0,
            time.monotonic() - t0,
        )
    # store traffic follows ticks (one per 0.1s here: interval 1s / 10), not requests
    per_replica = ops / took / 2
    print(
        f"\nrollout control: {per_replica:.0f} Redis commands/s per replica "
        f"({per_replica * 0.1:.1f} per tick) at {sent / took / 2:.0f} requests/s per replica, "
        f"no rewards, tick 0.1s ({took:.1f}s)"
    )
    assert per_replica * 0.1 < 8, per_replica  # a few commands per tick, none per request
    audit = await get_audit(a, "clf")
    assert audit == await get_audit(b, "clf")  # one shared log
    c = counts(audit)
    assert c[("blessed", 0)] == 1 and c[("promoted", 3)] == 1, audit
    assert [c[("step", i)] for i in (1, 2, 3)] == [1, 1, 1], audit  # each step once
    moves = [e["ts"] for e in audit if e["action"] in ("blessed", "step", "promoted")]
    gaps = [y - x for x, y in itertools.pairwise(moves)]
    assert all(g >= 0.9 for g in gaps), gaps  # at most one step per 1s interval
    # exactly one process drove it; both followed the state
    leaders = {e["node"] for e in audit if e["actor"] == "controller"}
    assert len(leaders) == 1, leaders
    # and one webhook delivery per transition, from that process alone
    await eventually(lambda: len(hooks.got) >= len(moves), timeout=10)
    assert [(h["to"], h["step"]) for h in hooks.got] == [(e["to"], e["step"]) for e in audit]
    for r in (a, b):
        st = await get_status(r, "clf")
        assert st["shares"] == {"v1": 0.0, "v2": 1.0}
        assert [m["phase"] for m in st["timeline"]][-1] == "promoted"
        ramp = [m["shares"]["v2"] for m in st["timeline"]]
        assert ramp == sorted(ramp) and ramp[-1] == 1.0 and 0.4 in ramp  # the ramp is kept


@pytest.mark.parametrize("store", ["redis", "sqlite"])
async def test_promote_on_one_replica_and_abort_on_the_other_end_stable_everywhere(
    upstreams: Any, router: Any, store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # sqlite: two processes of one machine sharing the file (as `serve --workers` does)
    url = request.getfixturevalue("redis_url") if store == "redis" else str(tmp_path / "s.db")
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [10, 50, 100], interval: 60s, "
        "analysis: {min_requests: 10, checks: [{metric: error_rate, max: 0.2}]}}"
    )
    a, b = await two(router, config(url, v1, v2, policy))
    for r in (a, b):
        await wait_status(r, "clf", lambda s: s["phase"] == "progressing", "progressing", 30)
    await admin_post(a, "/admin/routes/clf/promote", {"full": True, "reason": "ship it"})
    await admin_post(b, "/admin/routes/clf/abort", {"reason": "no, stop"})
    t0 = time.monotonic()
    for r in (a, b):
        await wait_status(
            r,
            "clf",
            lambda s: s["phase"] == "rolled_back" and s["shares"]["v1"] == 1.0,
            "rolled back",
            5,
        )
    took = time.monotonic() - t0
    print(f"\n{store}: promote via A, abort via B: both at 100% stable {took:.2f}s after the abort")
    assert took < 1.0
    async with Traffic(a.url + PREDICT, 2, 40, 20) as ta, Traffic(b.url + PREDICT, 2, 40, 20) as tb:
        await eventually(lambda: ta.sent >= 40 and tb.sent >= 40, timeout=20)
    assert set(ta.backends) == {"v1"} and set(tb.backends) == {"v1"}
    c = counts(await get_audit(b, "clf"))
    assert sum(n for (act, _), n in c.items() if act == "promote") == 1
    assert sum(n for (act, _), n in c.items() if act == "abort") == 1


async def test_kill_9_of_the_leader_hands_the_rollout_over_within_the_lease(
    upstreams: Any, router: Any, redis_url: str
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [10, 20, 30, 40, 50, 100], "
        "interval: 1s, analysis: {min_requests: 5, checks: [{metric: error_rate, max: 0.2}]}}"
    )
    a, b = await two(router, config(redis_url, v1, v2, policy))
    async with Traffic(a.url + PREDICT, 2, 20_000, 60), Traffic(b.url + PREDICT, 2, 20_000, 60):
        st = await wait_status(a, "clf", lambda s: s["step"] >= 1, "step 1", 30)
        sa, sb = await get_status(a, "clf"), await get_status(b, "clf")
        assert sa["control"]["leading"] != sb["control"]["leading"], (sa, sb)
        leader, follower = (a, b) if sa["control"]["leading"] else (b, a)
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        t0 = time.monotonic()
        await wait_status(follower, "clf", lambda s: s["control"]["leading"], "takeover", 10)
        took = time.monotonic() - t0
        print(f"\nkill -9 of the leader: the other leads after {took:.2f}s (lease {LEASE}s)")
        assert took <= LEASE + 1.5
        step = st["step"]
        # it continues from the persisted state: onward from the step reached, never from 0
        await wait_status(follower, "clf", lambda s: s["phase"] == "promoted", "promoted", 60)
    audit = await get_audit(follower, "clf")
    steps = [e["step"] for e in audit if e["action"] == "step"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and step in steps, audit
    assert sum(e["action"] == "blessed" for e in audit) == 1


# ---- two routers of two workers each (`serve --workers 2`) on one Redis ------------------------


async def node_statuses(r: Router, nodes: int, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """`GET /admin/routes/clf` on fresh connections until `nodes` different worker processes
    answered (the kernel picks a worker per connection): node name -> its latest status."""
    seen: dict[str, dict[str, Any]] = {}

    async def ask() -> bool:
        conn = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=conn, headers=r.headers) as s,
            s.get(f"{r.admin}/admin/routes/clf") as resp,
        ):
            if resp.status == 200:
                st = await resp.json()
                seen[st["control"]["node"]] = st
        return len(seen) >= nodes

    await eventually(ask, timeout=timeout, interval=0.01, what=f"{nodes} workers of {r.admin}")
    return seen


async def every_worker(
    routers: tuple[Router, ...], pred: Any, what: str, timeout: float = 20.0
) -> float:
    """Seconds until every worker of every router answered a status satisfying `pred`."""
    t0 = time.monotonic()
    done: set[str] = set()

    async def all_agree() -> bool:
        for r in routers:
            for node, st in (await node_statuses(r, 2, timeout)).items():
                if pred(st):
                    done.add(node)
        return len(done) >= 2 * len(routers)

    await eventually(all_agree, timeout=timeout, interval=0.01, what=what)
    return time.monotonic() - t0


async def test_two_routers_of_two_workers_drive_each_rollout_once(
    upstreams: Any, router: Any, redis_url: str
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [20, 40, 60, 100], interval: 1s, "
        "analysis: {min_requests: 10, checks: [{metric: error_rate, max: 0.2}]}}"
    )
    text = config(redis_url, v1, v2, policy)
    a: Router = router(text, name="a.yaml", workers=2)
    b: Router = router(text, name="b.yaml", workers=2)
    await a.wait_ready(timeout=60)
    await b.wait_ready(timeout=60)
    async with Traffic(a.url + PREDICT, 4, 20_000, 60), Traffic(b.url + PREDICT, 4, 20_000, 60):
        await every_worker((a, b), lambda s: s["phase"] == "promoted", "promoted", 60)
    audit = await get_audit(a, "clf")
    c = counts(audit)
    assert c[("blessed", 0)] == 1 and c[("promoted", 2)] == 1, audit
    assert [c[("step", i)] for i in (1, 2)] == [1, 1], audit
    moves = [e["ts"] for e in audit if e["action"] in ("blessed", "step", "promoted")]
    assert all(y - x >= 0.9 for x, y in itertools.pairwise(moves)), moves
    assert len({e["node"] for e in audit if e["actor"] == "controller"}) == 1, audit


async def test_two_routers_of_two_workers_promote_abort_and_kill_9_of_the_driver(
    upstreams: Any, router: Any, redis_url: str
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [10, 50, 100], interval: 60s, "
        "analysis: {min_requests: 10, checks: [{metric: error_rate, max: 0.2}]}}"
    )
    text = config(redis_url, v1, v2, policy)
    a: Router = router(text, name="a.yaml", workers=2)
    b: Router = router(text, name="b.yaml", workers=2)
    await a.wait_ready(timeout=60)
    await b.wait_ready(timeout=60)
    await every_worker((a, b), lambda s: s["phase"] == "progressing", "progressing", 30)
    # the driver is one worker of one router; kill -9 it: another takes over within the lease
    statuses = {**(await node_statuses(a, 2)), **(await node_statuses(b, 2))}
    leaders = [n for n, st in statuses.items() if st["control"]["leading"]]
    assert len(leaders) == 1, {n: st["control"] for n, st in statuses.items()}
    os.kill(int(leaders[0].split(":")[1]), signal.SIGKILL)
    t0 = time.monotonic()

    async def new_driver() -> bool:
        now = {**(await node_statuses(a, 1)), **(await node_statuses(b, 1))}
        return any(st["control"]["leading"] and n != leaders[0] for n, st in now.items())

    await eventually(new_driver, timeout=LEASE + 10, interval=0.01, what="a new driver")
    took = time.monotonic() - t0
    print(f"\n2x2 workers: kill -9 of the driving worker, new driver after {took:.2f}s")
    assert took <= LEASE + 1.5
    # the supervisor restarts the killed worker; wait until all four answer again
    await node_statuses(a, 2, timeout=60)
    await node_statuses(b, 2, timeout=60)
    # promote via one router, abort via the other: every worker at 100% stable
    await admin_post(a, "/admin/routes/clf/promote", {"full": True})
    await admin_post(b, "/admin/routes/clf/abort", {"reason": "stop"})
    took = await every_worker(
        (a, b), lambda s: s["phase"] == "rolled_back" and s["shares"]["v1"] == 1.0, "stable"
    )
    print(f"2x2 workers: every worker at 100% stable {took:.2f}s after the abort")
    assert took < 1.0
    actions = [e["action"] for e in await get_audit(a, "clf")]
    assert actions.count("promote") == 1 and actions.count("abort") == 1
