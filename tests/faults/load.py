"""Bounded client load for the fault tests: what every request got, and when."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Outcome:
    at: float  # seconds since the load started, when the answer ended
    status: int  # -1: the connection broke (no complete answer)
    backend: str


@dataclass
class Load:
    """`concurrency` loops sending `method` to `url` until `max_requests` or `max_seconds`."""

    url: str
    method: str = "GET"
    concurrency: int = 8
    max_requests: int = 20_000
    max_seconds: float = 30.0
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _t0: float = 0.0

    async def _one(self, s: aiohttp.ClientSession) -> None:
        kw: dict[str, object] = {}
        if self.method == "POST":
            kw["json"] = {"instances": [[1.0, 2.0]]}
        try:
            async with s.request(self.method, self.url, **kw) as r:  # type: ignore[arg-type]
                await r.read()
                status, backend = r.status, r.headers.get("x-modelrouter-backend", "?")
        except (TimeoutError, aiohttp.ClientError):
            status, backend = -1, "?"
        self.outcomes.append(Outcome(time.monotonic() - self._t0, status, backend))

    async def _worker(self, s: aiohttp.ClientSession, deadline: float) -> None:
        while not self._stop.is_set() and self.sent < self.max_requests:
            if time.monotonic() > deadline:
                return
            self.sent += 1
            await self._one(s)

    async def _run(self) -> None:
        self._t0 = time.monotonic()
        deadline = self._t0 + self.max_seconds
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            await asyncio.gather(*(self._worker(s, deadline) for _ in range(self.concurrency)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def wait(self) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, self.max_seconds + 30)

    async def stop(self) -> None:
        self._stop.set()
        await self.wait()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def codes(self, since: float = 0.0) -> Counter[int]:
        return Counter(o.status for o in self.outcomes if o.at >= since)

    def backends(self, since: float = 0.0) -> Counter[str]:
        return Counter(o.backend for o in self.outcomes if o.at >= since)

    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.status != 200)
