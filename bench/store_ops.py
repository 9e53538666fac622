"""Store operations per second of one router replica, against a real redis-server (issue 13).

    .venv/bin/python bench/store_ops.py            # 2 workers; 100 and 300 req/s, 20 rewards/s
    .venv/bin/python bench/store_ops.py --workers 1 --seconds 10

Starts its own redis-server (port 0 -> a free port), a toy upstream and `modelrouter serve
--workers N` with one bandit route on Redis, drives requests and rewards at fixed rates for a
bounded time (loopback only), and reads the commands Redis processed (INFO commandstats) over
the window. Learning state is flushed as increments per tick, so the store traffic should grow
with rewards and ticks, not with requests: the two request rates should give about the same
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis
from aiohttp import web

MODELROUTER = str(Path(sys.executable).parent / "modelrouter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commands(r: redis.Redis) -> dict[str, int]:
    stats: dict[str, dict[str, int]] = r.info("commandstats")  # type: ignore[assignment]
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def upstream() -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def drive(url: str, rps: float, rewards_ps: float, seconds: float) -> tuple[int, int]:
    """Requests at `rps` and rewards at `rewards_ps` for `seconds`; (requests, rewards) sent."""
    sent = rewarded = 0
    credit = 0.0
    start = time.monotonic()
    async with aiohttp.ClientSession() as s:

        async def one() -> None:
            nonlocal sent, rewarded, credit
            async with s.post(url + "/v1/x", json={"x": 1}) as resp:
                await resp.read()
                token = resp.headers.get("x-modelrouter-decision")
            sent += 1
            credit += rewards_ps / rps
            if token and credit >= 1.0:
                credit -= 1.0
                async with s.post(
                    url + "/_modelrouter/feedback", json={"decision": token, "reward": 1.0}
                ) as resp:
                    await resp.read()
                    rewarded += resp.status == 202

        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while (now := time.monotonic() - start) < seconds:
            due = int(now * rps)
            while i < due:
                t = asyncio.create_task(one())
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    return sent, rewarded


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rates", default="100,300", help="request rates to compare (req/s)")
    ap.add_argument("--rewards", type=float, default=20.0, help="rewards per second")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="modelrouter-bench-"))
    rport = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", ""],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
    )
    runner, up = await upstream()
    port, admin = free_port(), free_port()
    cfg = tmp / "c.yaml"
    cfg.write_text(
        f"""version: 1
listen: 127.0.0.1:{port}
admin: {{listen: "127.0.0.1:{admin}"}}
state: {{store: redis, url: "redis://127.0.0.1:{rport}/0"}}
backends:
  a: {{url: "http://127.0.0.1:{up}"}}
  b: {{url: "http://127.0.0.1:{up}"}}
routes:
  - name: rec
    match: {{path_prefix: /v1}}
    policy: {{kind: bandit, arms: [a, b], algorithm: thompson}}
"""
    )
    env = dict(os.environ, MODELROUTER_FEEDBACK_SECRET="bench-secret-bench-secret-123456")
    log = open(tmp / "router.log", "wb")  # noqa: SIM115 - the child owns it
    router = subprocess.Popen(
        [MODELROUTER, "serve", str(cfg), "--workers", str(args.workers)],
        env=env,
        stdout=log,
        stderr=log,
    )
    r = redis.Redis(port=rport)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"http://127.0.0.1:{admin}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or router.poll() is not None:
                    raise SystemExit("router did not start:\n" + (tmp / "router.log").read_text())
                await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # every worker up and ticking
        print(f"one replica, {args.workers} workers, one bandit route, Redis store")
        print("store ops/s: Redis commands, those inside Lua scripts included; calls/s: round")
        print("trips from the router (scripts and plain commands)")
        print(f"{'req/s':>8} {'rewards/s':>10} {'store ops/s':>12} {'calls/s':>8}  by command")
        for rate in (float(x) for x in args.rates.split(",")):
            before, t0 = commands(r), time.monotonic()
            sent, rewarded = await drive(url, rate, args.rewards, args.seconds)
            after, dt = commands(r), time.monotonic() - t0
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            delta = {k: v for k, v in delta.items() if v and k not in ("info",)}
            ops = sum(delta.values()) / dt
            # calls: scripts (feedback add, merge: their HGETALL, HSET, ... run inside), feedback
            # log reads, documents, audit
            called = ("evalsha", "zrangebyscore", "get", "xadd", "xrevrange")
            calls = sum(delta.get(k, 0) for k in called) / dt
            by = ", ".join(f"{k} {v / dt:.1f}" for k, v in sorted(delta.items()))
            print(f"{sent / dt:8.1f} {rewarded / dt:10.1f} {ops:12.1f} {calls:8.1f}  {by}")
    finally:
        router.send_signal(signal.SIGTERM)
        try:
            router.wait(60)
        except subprocess.TimeoutExpired:
            router.kill()
        await runner.cleanup()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
