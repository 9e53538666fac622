"""Fixtures of the fault-injection suite: misbehaving upstreams in-process or as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import router, upstreams  # noqa: F401 - `modelrouter serve`, toy models
from tests.faults.upstream import FaultServer

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FaultProcess:
    """`python -m tests.faults.upstream` as a child process we can SIGKILL or SIGTERM."""

    name: str
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, mode: str = "ok") -> None:
        cmd = [sys.executable, "-m", "tests.faults.upstream", "--name", self.name]
        cmd += ["--port", str(self.port), "--mode", mode, "--log", str(self.log_path)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the port, once it listens
        if not line:
            raise AssertionError(f"fault upstream {self.name} did not start")
        self.port = int(line)

    def set_mode(self, mode: str) -> None:
        with urllib.request.urlopen(f"{self.url}/_fault/mode?set={mode}", timeout=5) as r:
            assert r.status == 200

    def events(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(ln) for ln in self.log_path.read_text().splitlines() if ln]

    def received(self, method: str | None = None) -> int:
        return sum(1 for e in self.events() if e["ev"] == "recv" and method in (None, e["method"]))

    def unanswered(self, method: str | None = None) -> int:
        ev = self.events()
        sent = {e["rid"] for e in ev if e["ev"] == "sent"}
        return sum(
            1
            for e in ev
            if e["ev"] == "recv" and e["rid"] not in sent and method in (None, e["method"])
        )

    def open_connections(self) -> int:
        """Connections it had open when it died (or now): each can lose at most one request."""
        ev = self.events()
        return sum(1 for e in ev if e["ev"] == "open") - sum(1 for e in ev if e["ev"] == "close")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def fault_process(tmp_path: Path) -> Iterator[Callable[..., FaultProcess]]:
    """`fault_process("a", mode="ok")`: a started misbehaving upstream in its own process."""
    made: list[FaultProcess] = []

    def make(name: str, mode: str = "ok") -> FaultProcess:
        p = FaultProcess(name, tmp_path / f"{name}.events")
        made.append(p)
        p.start(mode)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
async def fault_server() -> AsyncIterator[Callable[..., Awaitable[FaultServer]]]:
    """`await fault_server("a", mode="ok")`: a started misbehaving upstream in this process."""
    made: list[FaultServer] = []

    async def make(name: str, mode: str = "ok") -> FaultServer:
        s = FaultServer(name, mode)
        await s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.stop()
