"""End-to-end fixtures: real aiohttp upstreams on port 0 and `modelrouter serve` as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import eventually

MODELROUTER = str(Path(sys.executable).parent / "modelrouter")
ADMIN_TOKEN = "e2e-secret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Upstream:
    """A toy model server that counts what it received."""

    name: str
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    fail_rate: float = 0.0  # share of requests answered 500 (deterministic: every k-th)
    delay: float = 0.0
    seen_headers: deque[Any] = field(default_factory=lambda: deque(maxlen=50))
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def total(self) -> int:
        return sum(self.hits.values())


async def start_upstream(name: str, **kw: Any) -> Upstream:
    up = Upstream(name, **kw)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        up.hits[request.path] += 1
        up.seen_headers.append(request.headers.copy())  # case-insensitive
        if request.path.endswith("/health") or request.path == "/healthz":
            return web.json_response({"ok": True, "model": name})
        if up.delay:
            await asyncio.sleep(up.delay)
        n = up.total
        if up.fail_rate and (n * up.fail_rate) % 1 + up.fail_rate >= 1:
            return web.json_response({"error": "boom", "model": name}, status=500)
        return web.json_response({"model": name, "path": request.path, "bytes": len(body)})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handle)
    up.runner = web.AppRunner(app, access_log=None)
    await up.runner.setup()
    site = web.TCPSite(up.runner, "127.0.0.1", 0)
    await site.start()
    up.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return up


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def make(name: str, **kw: Any) -> Upstream:
        up = await start_upstream(name, **kw)
        started.append(up)
        return up

    yield make
    for up in started:
        assert up.runner is not None
        await up.runner.cleanup()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound but not listening, so nothing else can
    take it while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class Router:
    """`modelrouter serve CONFIG` in a subprocess, with its ports and helpers."""

    def __init__(
        self, config_path: Path, port: int, admin_port: int, log_path: Path, workers: int = 1
    ) -> None:
        self.config_path = config_path
        self.port = port
        self.admin_port = admin_port
        self.log_path = log_path
        self.workers = workers  # > 1: `serve --workers N`; proc is the supervisor
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def start(self) -> None:
        env = dict(
            os.environ,
            MODELROUTER_ADMIN_TOKEN=ADMIN_TOKEN,
            MODELROUTER_FEEDBACK_SECRET="e2e-feedback-secret",
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        extra = ["--workers", str(self.workers)] if self.workers > 1 else []
        self.proc = subprocess.Popen(
            [MODELROUTER, "serve", str(self.config_path), *extra],
            stdout=log,
            stderr=log,
            env=env,
            cwd=self.config_path.parent,
        )

    async def wait_ready(self, timeout: float = 20.0) -> None:
        async with aiohttp.ClientSession() as s:

            async def healthy() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"router exited {self.proc.returncode}:\n{self.log()}")
                try:
                    async with s.get(f"{self.admin}/healthz") as r:
                        # the data plane listens before the admin side starts
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            try:
                await eventually(healthy, timeout=timeout, interval=0.05, what="/healthz")
            except AssertionError as e:
                raise AssertionError(f"router not ready: {e}\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def children(self) -> list[int]:
        """PIDs of the worker processes (`--workers`): the supervisor's children."""
        assert self.proc is not None
        pid = self.proc.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def fill_ports(config: str, port: int, admin_port: int) -> str:
    return config.replace("{port}", str(port)).replace("{admin_port}", str(admin_port))


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Callable[[str], Router]]:
    """`router(config_yaml)` writes the config (with free ports filled in for {port} and
    {admin_port}) and returns a started Router; call `await r.wait_ready()`."""
    made: list[Router] = []

    def make(
        config: str, *, name: str = "config.yaml", start: bool = True, workers: int = 1
    ) -> Router:
        port, admin_port = free_port(), free_port()
        path = tmp_path / name
        path.write_text(fill_ports(config, port, admin_port))
        r = Router(path, port, admin_port, tmp_path / f"{name}.log", workers)
        made.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in made:
        r.stop()


HEAD = """\
version: 1
listen: 127.0.0.1:{port}
admin: {listen: "127.0.0.1:{admin_port}"}
state: {store: sqlite, path: state.db}
"""
