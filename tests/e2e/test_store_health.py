"""The state store checked at start and watched at run time, through `modelrouter serve`.

At start an unwritable, corrupt or unreachable store is one line on stderr naming the store
and what to do, exit 2, no traceback. At run time a store that fails turns `/readyz` 503 and
`modelrouter_store_up` 0 while requests are still proxied; it recovers by itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import HEAD, MODELROUTER, Router, fill_ports, free_port
from tests.e2e.helpers import get_metrics, metric
from tests.router.test_store_redis import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.e2e

SETPRIV = shutil.which("setpriv")


def config(store: str, upstream_url: str = "http://127.0.0.1:9") -> str:
    head = HEAD.replace("state: {store: sqlite, path: state.db}", f"state: {store}")
    return head + (
        f'backends:\n  a: {{url: "{upstream_url}", timeout: 5s}}\n'
        "routes:\n  - name: clf\n    match: {path_prefix: /v1/models/clf}\n"
        "    policy: {kind: weighted, weights: {a: 100}}\n"
    )


def serve_expecting_failure(tmp_path: Path, store: str, *, unprivileged: bool = False) -> str:
    """Run `modelrouter serve`; it must exit 2 at once. Returns its stderr."""
    path = tmp_path / "config.yaml"
    path.write_text(fill_ports(config(store), free_port(), free_port()))
    cmd = [MODELROUTER, "serve", str(path)]
    if unprivileged and os.geteuid() == 0:
        # root writes anything: drop the capabilities that let it ignore file permissions, so
        # the file's own mode decides, as for any service user
        if SETPRIV is None:
            pytest.skip("running as root without setpriv: cannot make a file unwritable")
        cmd = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, cwd=tmp_path, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{err}"
    assert "Traceback" not in err, err
    return err


def the_line(err: str) -> str:
    """The one line of the error (log lines have a timestamp and a level)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("modelrouter:")]
    assert len(lines) == 1, err
    return lines[0]


def test_read_only_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    sqlite3.connect(db).executescript("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")
    db.chmod(0o444)
    err = serve_expecting_failure(tmp_path, f"{{store: sqlite, path: {db}}}", unprivileged=True)
    line = the_line(err)
    print(line)
    assert f"state store {db} is not writable" in line
    assert "give the router's user write access" in line


def test_unwritable_directory_refuses_to_start(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    db = d / "state.db"
    err = serve_expecting_failure(tmp_path, f"{{store: sqlite, path: {db}}}", unprivileged=True)
    line = the_line(err)
    print(line)
    assert f"state store {db} cannot be opened or created" in line


@pytest.mark.parametrize("damage", ["garbage", "header"])
def test_corrupt_sqlite_file_refuses_to_start(tmp_path: Path, damage: str) -> None:
    db = tmp_path / "state.db"
    if damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 500)
    else:  # a real database whose header got overwritten
        c = sqlite3.connect(db)
        c.executescript("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")
        c.execute("INSERT INTO kv VALUES ('rollout:clf', '{}')")
        c.commit()
        c.close()
        with db.open("r+b") as f:
            f.write(b"\0" * 100)
    before = db.read_bytes()
    err = serve_expecting_failure(tmp_path, f"{{store: sqlite, path: {db}}}")
    line = the_line(err)
    print(line)
    assert f"state store {db} is corrupt or not an SQLite database" in line
    assert "move it aside" in line
    assert db.read_bytes() == before  # nothing written over what may still be rescued


def test_unreachable_redis_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    err = serve_expecting_failure(
        tmp_path, f'{{store: redis, url: "redis://:pw@127.0.0.1:{port}/0"}}'
    )
    line = the_line(err)
    print(line)
    assert f"cannot reach state store redis://:***@127.0.0.1:{port}/0" in line
    assert "check that Redis is running" in line
    assert "pw@" not in err


async def readyz(r: Router) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{r.admin}/readyz") as resp:
        return resp.status, await resp.json()


async def wait_readyz(r: Router, status: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        code, last = await readyz(r)
        if code == status:
            return dict(last)
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never answered {status}; last {last}\n{r.log()}")


async def test_redis_failing_at_run_time_turns_readyz_503_while_proxying_goes_on(
    tmp_path: Path, upstreams: Any, router: Any
) -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    redis = RedisServer(free_port(), tmp_path, [])
    redis.start()
    try:
        a = await upstreams("a")
        r: Router = router(config(f'{{store: redis, url: "{redis.url}"}}', a.url))
        await r.wait_ready()
        assert (await wait_readyz(r, 200))["ready"] is True
        assert metric(await get_metrics(r), "modelrouter_store_up") == 1.0

        redis.stop(signal.SIGKILL)
        doc = await wait_readyz(r, 503)
        print("readyz while Redis is down:", doc)
        assert f"state store {redis.url}" in doc["reason"]
        text = await get_metrics(r)
        assert metric(text, "modelrouter_store_up") == 0.0
        assert (metric(text, "modelrouter_store_errors_total", operation="probe") or 0) >= 1
        async with aiohttp.ClientSession() as s:
            for _ in range(20):
                async with s.post(f"{r.url}/v1/models/clf:predict", json={"x": 1}) as resp:
                    assert resp.status == 200
        assert a.total >= 20

        redis.start()  # same port, empty data: the router finds it again by itself
        assert (await wait_readyz(r, 200))["ready"] is True
        assert metric(await get_metrics(r), "modelrouter_store_up") == 1.0
        assert "state store" in r.log() and "works again" in r.log()
    finally:
        redis.stop(signal.SIGKILL)
