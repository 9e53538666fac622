"""Leases, versioned documents and parts on every store: memory, SQLite (two connections to one
file, as two processes on one machine) and Redis (two clients of a real redis-server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.store.base import Fence, Store
from router.store.health import MonitoredStore
from router.store.memory import MemoryStore
from router.store.redis import RedisStore
from router.store.sqlite import SqliteStore
from tests.helpers import eventually
from tests.router.test_store_redis import RedisServer, redis_server  # noqa: F401 (fixture)


@pytest.fixture(params=["memory", "sqlite", "redis", "monitored"])
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two handles on one shared store (the memory store can only share itself)."""
    a: Store
    b: Store
    if request.param == "memory":
        a = b = MemoryStore()
    elif request.param == "monitored":  # the health-tracking wrapper passes every call on
        a = MonitoredStore(SqliteStore(tmp_path / "m.db"), where="m.db")
        b = MonitoredStore(SqliteStore(tmp_path / "m.db"), where="m.db")
    elif request.param == "sqlite":
        a, b = SqliteStore(tmp_path / "s.db"), SqliteStore(tmp_path / "s.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"t{uuid.uuid4().hex[:12]}:"
        a, b = RedisStore(server.url, prefix=prefix), RedisStore(server.url, prefix=prefix)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    if b is not a:
        await b.close()


async def test_one_holder_at_a_time_and_a_new_token_on_takeover(pair: tuple[Store, Store]) -> None:
    a, b = pair
    t1 = await a.lease_acquire("rollout:r", "p1", 0.3)
    assert t1 is not None
    assert await b.lease_acquire("rollout:r", "p2", 0.3) is None  # held by p1
    assert await a.lease_acquire("rollout:r", "p1", 0.3) == t1  # a renewal keeps the token
    # p1 stops renewing (a kill -9): p2 gets it once it expires, with a greater token
    t2 = await eventually(lambda: b.lease_acquire("rollout:r", "p2", 5.0), timeout=5)
    assert t2 > t1
    assert await a.lease_acquire("rollout:r", "p1", 5.0) is None
    await b.lease_release("rollout:r", "p2")
    t3 = await a.lease_acquire("rollout:r", "p1", 5.0)
    assert t3 is not None and t3 > t2
    await b.lease_release("rollout:r", "p2")  # not the holder: no effect
    assert await b.lease_acquire("rollout:r", "p2", 5.0) is None


async def test_concurrent_acquirers_elect_exactly_one(pair: tuple[Store, Store]) -> None:
    a, b = pair
    got = await asyncio.gather(
        *(s.lease_acquire("l", f"p{i}", 5.0) for i, s in enumerate([a, b] * 8))
    )
    assert sum(t is not None for t in got) == 1


async def test_versioned_document_compare_and_set(pair: tuple[Store, Store]) -> None:
    a, b = pair
    assert await a.vget("rollout:r") is None
    assert await a.vput("rollout:r", {"phase": "validating"}, 0) == 1
    assert await b.vput("rollout:r", {"phase": "other"}, 0) is None  # created already
    assert await b.vget("rollout:r") == (1, {"phase": "validating"})
    assert await b.vget("rollout:r", newer_than=1) is None  # an unchanged poll moves nothing
    assert await b.vput("rollout:r", {"phase": "progressing"}, 1) == 2
    assert await a.vput("rollout:r", {"phase": "promoted"}, 1) is None  # stale: refused
    assert await a.vget("rollout:r", newer_than=1) == (2, {"phase": "progressing"})


async def test_concurrent_writers_of_one_version_one_wins(pair: tuple[Store, Store]) -> None:
    a, b = pair
    await a.vput("k", {"n": 0}, 0)
    got = await asyncio.gather(*(s.vput("k", {"n": i}, 1) for i, s in enumerate([a, b] * 5)))
    winners = [i for i, v in enumerate(got) if v == 2]
    assert len(winners) == 1 and all(v is None for i, v in enumerate(got) if i != winners[0])
    assert await b.vget("k") == (2, {"n": winners[0]})


async def test_a_fenced_write_needs_the_lease_as_it_was(pair: tuple[Store, Store]) -> None:
    a, b = pair
    t1 = await a.lease_acquire("rollout:r", "p1", 0.3)
    assert t1 is not None
    assert await a.vput("doc", {"by": "p1"}, 0, Fence("rollout:r", "p1", t1)) == 1
    # p1 is deposed: its lease expires and p2 takes over
    t2 = await eventually(lambda: b.lease_acquire("rollout:r", "p2", 5.0), timeout=5)
    assert await a.vput("doc", {"by": "late p1"}, 1, Fence("rollout:r", "p1", t1)) is None
    assert await b.vput("doc", {"by": "p2"}, 1, Fence("rollout:r", "p2", t2)) == 2
    assert await a.vput("doc", {"by": "nobody"}, 2, Fence("rollout:r", "p3", 99)) is None
    assert await a.vget("doc") == (2, {"by": "p2"})


async def test_parts_one_per_writer(pair: tuple[Store, Store]) -> None:
    a, b = pair
    assert await a.parts_get("w") == {}
    await a.parts_put("w", "p1", {"n": 1})
    await b.parts_put("w", "p2", {"n": 2})
    await a.parts_put("w", "p1", {"n": 3})
    assert await b.parts_get("w") == {"p1": {"n": 3}, "p2": {"n": 2}}
    await b.parts_drop("w", ["p1", "absent"])
    assert await a.parts_get("w") == {"p2": {"n": 2}}
    await a.parts_drop("w", [])
