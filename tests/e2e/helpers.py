"""Helpers shared by the end-to-end tests: admin API calls, metrics, the CLI, bounded traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ADMIN_TOKEN, MODELROUTER, Router
from tests.helpers import eventually

PREDICT = "/v1/models/clf:predict"


async def get_status(r: Router, route: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=r.headers) as s,
        s.get(f"{r.admin}/admin/routes/{route}") as resp,
    ):
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


async def wait_status(
    r: Router,
    route: str,
    pred: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 40.0,
) -> dict[str, Any]:
    """Poll `GET /admin/routes/{route}` until `pred` holds; fail with the last status and log."""
    last: dict[str, Any] | None = None
    async with aiohttp.ClientSession(headers=r.headers) as s:

        async def probe() -> dict[str, Any] | None:
            nonlocal last
            assert r.proc is not None
            if r.proc.poll() is not None:
                raise AssertionError(f"router exited {r.proc.returncode}:\n{r.log()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"{r.admin}/admin/routes/{route}") as resp:
                    if resp.status == 200:
                        last = await resp.json()
                        if pred(last):
                            return last
            return None

        try:
            return await eventually(probe, timeout=timeout, interval=0.1, what=what)
        except AssertionError as e:
            raise AssertionError(
                f"{e}; last status:\n{json.dumps(last, indent=1)[:4000]}\nrouter log:\n{r.log()}"
            ) from None


async def admin_post(r: Router, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=r.headers) as s,
        s.post(f"{r.admin}{path}", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


async def get_audit(r: Router, route: str | None = None) -> list[dict[str, Any]]:
    url = f"{r.admin}/admin/audit" + (f"?route={route}" if route else "")
    async with aiohttp.ClientSession(headers=r.headers) as s, s.get(url) as resp:
        assert resp.status == 200, await resp.text()
        entries: list[dict[str, Any]] = await resp.json()
        return entries


async def get_metrics(r: Router) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{r.admin}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text, label order not mattering."""
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """`modelrouter ARGS` with the admin token in the environment; (exit code, stdout, stderr)."""
    env = dict(os.environ, MODELROUTER_ADMIN_TOKEN=ADMIN_TOKEN)
    proc = await asyncio.create_subprocess_exec(
        MODELROUTER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def send_one(
    s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with s.post(url, json={"instances": [[1.0]]}, headers=headers) as resp:
        await resp.read()
        return resp.status, resp.headers.get("x-modelrouter-backend", "?")


async def sequential(
    url: str, n: int, headers: dict[str, str] | None = None
) -> tuple[list[str], Counter[int]]:
    """n requests one after the other: the backend of each, in order, and the status codes."""
    backends: list[str] = []
    codes: Counter[int] = Counter()
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            code, backend = await send_one(s, url, headers)
            codes[code] += 1
            backends.append(backend)
    return backends, codes


class Traffic:
    """Background load bounded in count and time: `concurrency` POST loops until stopped."""

    def __init__(
        self,
        url: str,
        concurrency: int = 4,
        max_requests: int = 30_000,
        max_seconds: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.headers = headers
        self.backends: Counter[str] = Counter()
        self.codes: Counter[int] = Counter()
        self.sent = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _worker(self, s: aiohttp.ClientSession, deadline: float) -> None:
        while not self._stop.is_set() and self.sent < self.max_requests:
            if time.monotonic() > deadline:
                return
            self.sent += 1
            try:
                code, backend = await send_one(s, self.url, self.headers)
            except aiohttp.ClientError:
                self.codes[-1] += 1
                await asyncio.sleep(0.05)
                continue
            self.codes[code] += 1
            self.backends[backend] += 1

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(self._worker(s, deadline) for _ in range(self.concurrency)))

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
            self._task = None

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
