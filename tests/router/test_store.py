"""State stores: the same behaviour from memory and SQLite, and SQLite durability under kill -9."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from policies.spec import StateConfig
from router.store import MemoryStore, SqliteStore, Store, StoreError, open_store
from router.store.base import FeedbackRecord
from router.store.redis import RedisStore


def rec(token: str, route: str = "r", reward: float = 1.0, at: float = 100.0) -> FeedbackRecord:
    return FeedbackRecord(token, route, "a", reward, at - 1, at, (1.0, 0.5), "ctx")


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, without persistence, for this module."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.skip("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "s.db")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, prefix=f"t{uuid.uuid4().hex}:")
    await s.open()
    yield s
    await s.close()


async def test_documents(store: Store) -> None:
    assert await store.get("rollout:x") is None
    await store.put("rollout:x", {"phase": "progressing", "step": 2, "h": [1.5, None]})
    assert await store.get("rollout:x") == {"phase": "progressing", "step": 2, "h": [1.5, None]}
    await store.put("rollout:x", {"phase": "promoted"})
    assert await store.get("rollout:x") == {"phase": "promoted"}


async def test_audit_newest_last_with_limit_and_route(store: Store) -> None:
    for i in range(5):
        await store.audit_append({"ts": float(i), "route": "a" if i % 2 else "b", "i": i})
    assert [e["i"] for e in await store.audit_list()] == [0, 1, 2, 3, 4]
    assert [e["i"] for e in await store.audit_list(limit=2)] == [3, 4]
    assert [e["i"] for e in await store.audit_list(route="a")] == [1, 3]


async def test_feedback_duplicates_and_replay(store: Store) -> None:
    assert await store.feedback_add([rec("t1"), rec("t2"), rec("t1")]) == [True, True, False]
    assert await store.feedback_add([rec("t2"), rec("t3", route="other")]) == [False, True]
    got = await store.feedback_since("r", 0)
    assert [r.token_id for r in got] == ["t1", "t2"]
    assert got[0].context == (1.0, 0.5) and got[0].label == "ctx"
    assert got[0].seq < got[1].seq
    assert [r.token_id for r in await store.feedback_since("r", got[0].seq)] == ["t2"]


async def test_feedback_prune_by_received_at(store: Store) -> None:
    await store.feedback_add([rec("old", at=10.0), rec("new", at=1000.0)])
    assert await store.feedback_prune(older_than=500.0) == 1
    assert [r.token_id for r in await store.feedback_since("r", 0)] == ["new"]


async def test_concurrent_callers(store: Store) -> None:
    async def writer(i: int) -> list[bool]:
        await store.put(f"k{i}", {"i": i})
        return await store.feedback_add([rec(f"t{i}"), rec("shared")])

    results = await asyncio.gather(*(writer(i) for i in range(200)))
    assert all(r[0] for r in results)
    assert sum(r[1] for r in results) == 1  # exactly one caller stored the shared token
    assert len(await store.feedback_since("r", 0)) == 201
    assert all([await store.get(f"k{i}") == {"i": i} for i in range(0, 200, 37)])


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SqliteStore(path)
    await s.open()
    await s.put("rollout:r", {"step": 3})
    await s.feedback_add([rec("t1")])
    await s.close()
    s2 = SqliteStore(path)
    await s2.open()
    assert await s2.get("rollout:r") == {"step": 3}
    assert await s2.feedback_add([rec("t1")]) == [False]
    await s2.close()


CHILD = """
import asyncio, sys
from router.store import SqliteStore
from router.store.base import FeedbackRecord
from router.store.redis import RedisStore

async def main():
    s = SqliteStore(sys.argv[1])
    await s.open()
    i = 0
    while True:
        ok = await s.feedback_add([FeedbackRecord(f"t{i}", "r", "a", 1.0, 0.0, 1.0)])
        await s.put("progress", {"i": i})
        print(i, ok[0], flush=True)   # printed only after the commit returned
        i += 1

asyncio.run(main())
"""


def test_sqlite_committed_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = -1
    try:
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while acknowledged < 50 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged = int(line.split()[0])
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert acknowledged >= 50, "the child did not write"

    async def check() -> None:
        s = SqliteStore(path)
        await s.open()
        rows = await s.feedback_since("r", 0)
        progress = await s.get("progress")
        await s.close()
        tokens = {r.token_id for r in rows}
        # every acknowledged record is there (and maybe a few more written after the last print)
        assert {f"t{i}" for i in range(acknowledged + 1)} <= tokens
        assert progress is not None and progress["i"] >= acknowledged

    asyncio.run(check())


async def test_sqlite_group_commit_is_per_call_durable(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db")
    await s.open()
    results = await asyncio.gather(*(s.feedback_add([rec(f"g{i}")]) for i in range(300)))
    assert all(r == [True] for r in results)
    await s.close()


async def test_sqlite_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    s = SqliteStore(tmp_path / "dir.db")
    with pytest.raises(StoreError, match=r"state store .*dir\.db cannot be opened or created"):
        await s.open()
    with pytest.raises(StoreError, match="not open"):
        await s.get("x")


def test_open_store(tmp_path: Path) -> None:
    assert isinstance(open_store(StateConfig(store="memory"), tmp_path), MemoryStore)
    s = open_store(StateConfig(store="sqlite", path="sub/m.db"), tmp_path)
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "sub" / "m.db"
    s = open_store(StateConfig(store="sqlite", path=str(tmp_path / "abs.db")), Path("/elsewhere"))
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "abs.db"
    s = open_store(StateConfig(store="redis", url="redis://127.0.0.1:1/0"), tmp_path)
    assert isinstance(s, RedisStore)
    with pytest.raises(StoreError, match=r"state\.url: required for store: redis"):
        open_store(StateConfig(store="redis"), tmp_path)


async def test_redis_unreachable_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match=r"cannot reach state store redis://127\.0\.0\.1:9/0"):
        await RedisStore("redis://127.0.0.1:9/0").open()
