"""RedisStore against a real redis-server: every Store method, replicas, concurrency, durability."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from router.store.base import FeedbackRecord, Store, StoreError
from router.store.redis import RedisStore, StoreUnavailable, redact
from tests.helpers import eventually

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    """One redis-server process we started, stopped by its PID."""

    port: int
    dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--dir", str(self.dir), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + 15
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server on port {self.port} did not answer PING")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def raw(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def need_redis() -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"redis-server is not installed (looked for {REDIS_SERVER})")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"), ["--appendonly", "yes"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def scratch_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for settings or crashes the shared one must not see."""
    need_redis()
    server = RedisServer(free_port(), tmp_path, [])
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


def new_store(
    server: RedisServer, prefix: str | None = None, dedup_ttl: float = 7200.0
) -> RedisStore:
    return RedisStore(
        server.url, prefix=prefix or f"t{uuid.uuid4().hex[:12]}:", dedup_ttl=dedup_ttl
    )


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = new_store(redis_server)
    await s.open()
    yield s
    await s.close()


def rec(
    token: str,
    route: str = "r",
    reward: float = 1.0,
    at: float = 100.0,
    context: tuple[float, ...] | None = (1.0, 0.5),
    label: str | None = "ctx",
) -> FeedbackRecord:
    return FeedbackRecord(token, route, "a", reward, at - 1, at, context, label)


def test_satisfies_the_store_protocol() -> None:
    s: Store = RedisStore("redis://127.0.0.1:1/0")  # mypy checks the protocol here
    assert isinstance(s, RedisStore)


# ---- documents ----


async def test_documents_round_trip_as_json_under_the_prefix(
    store: RedisStore, redis_server: RedisServer
) -> None:
    assert await store.get("rollout:x") is None
    doc = {"phase": "progressing", "step": 2, "h": [1.5, None], "s": "ü", "f": 0.1 + 0.2}
    await store.put("rollout:x", doc)
    assert await store.get("rollout:x") == doc
    await store.put("rollout:x", {"phase": "promoted"})
    assert await store.get("rollout:x") == {"phase": "promoted"}
    await store.put("n", 3)
    assert await store.get("n") == 3
    with redis_server.raw() as raw:
        assert raw.get(f"{store.prefix}kv:rollout:x") == '{"phase":"promoted"}'


async def test_put_rejects_non_json_and_keeps_the_old_value(store: RedisStore) -> None:
    await store.put("k", {"v": 1})
    with pytest.raises(ValueError):
        await store.put("k", {"v": float("nan")})
    with pytest.raises(TypeError):
        await store.put("k", {"v": object()})
    assert await store.get("k") == {"v": 1}


async def test_put_if_absent_lets_one_replica_win(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex}:"
    a, b = new_store(redis_server, prefix), new_store(redis_server, prefix)
    await a.open()
    await b.open()
    try:
        won = await asyncio.gather(
            *(s.put_if_absent("secret:feedback", f"v{i}") for i, s in enumerate([a, b] * 10))
        )
        assert len(set(won)) == 1 and won[0] == await a.get("secret:feedback")
    finally:
        await a.close()
        await b.close()


# ---- audit ----


async def test_audit_newest_last_with_limit_and_route(store: RedisStore) -> None:
    for i in range(5):
        await store.audit_append({"ts": float(i), "route": "a" if i % 2 else "b", "i": i})
    await store.audit_append({"ts": 5.0, "route": None, "i": 5})
    assert [e["i"] for e in await store.audit_list()] == [0, 1, 2, 3, 4, 5]
    assert [e["i"] for e in await store.audit_list(limit=2)] == [4, 5]
    assert [e["i"] for e in await store.audit_list(route="a")] == [1, 3]
    assert [e["i"] for e in await store.audit_list(limit=1, route="b")] == [4]
    assert await store.audit_list(route="nope") == []
    assert await store.audit_list(limit=0) == []
    assert (await store.audit_list(limit=1))[0] == {"ts": 5.0, "route": None, "i": 5}


async def test_audit_is_capped(redis_server: RedisServer) -> None:
    s = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex}:", audit_maxlen=10)
    await s.open()
    try:
        for i in range(400):
            await s.audit_append({"route": "r", "i": i})
        with redis_server.raw() as raw:
            # approximate trimming drops whole stream nodes (100 entries by default)
            assert raw.xlen(f"{s.prefix}audit") <= 110
            assert raw.xlen(f"{s.prefix}audit:route:r") <= 110
        assert [e["i"] for e in await s.audit_list(limit=3)] == [397, 398, 399]
    finally:
        await s.close()


# ---- feedback ----


async def test_feedback_duplicates_in_and_across_calls(store: RedisStore) -> None:
    assert await store.feedback_add([]) == []
    assert await store.feedback_add([rec("t1"), rec("t2"), rec("t1")]) == [True, True, False]
    assert await store.feedback_add([rec("t2"), rec("t3", route="other")]) == [False, True]
    # a duplicate token is rejected whatever route or reward it claims
    assert await store.feedback_add([rec("t3", route="r", reward=0.0)]) == [False]
    assert [r.token_id for r in await store.feedback_since("r", 0)] == ["t1", "t2"]
    assert [r.token_id for r in await store.feedback_since("other", 0)] == ["t3"]


async def test_feedback_records_round_trip(store: RedisStore) -> None:
    records = [
        FeedbackRecord("a", "r", "arm-1", 0.1 + 0.2, 1700000000.123, 1700000001.5, (1.0, -2.5)),
        FeedbackRecord("b", "r", "arm-2", -3.0, 1.0, 2.0, None, None),
        FeedbackRecord("c", "r", "arm-1", 1.0, 1.0, 2.0, (), "label:with:colons"),
    ]
    assert await store.feedback_add(records) == [True, True, True]
    got = await store.feedback_since("r", 0)
    assert [(g.token_id, g.route, g.arm, g.reward, g.decided_at, g.received_at) for g in got] == [
        (r.token_id, r.route, r.arm, r.reward, r.decided_at, r.received_at) for r in records
    ]
    assert [(g.context, g.label) for g in got] == [
        ((1.0, -2.5), None),
        (None, None),
        ((), "label:with:colons"),
    ]
    assert all(g.seq > 0 for g in got)


async def test_feedback_records_keep_bucket_and_metrics(store: RedisStore) -> None:
    # issue 10: the sticky bucket (A/B unit of analysis) and guardrail metrics ride along
    records = [
        FeedbackRecord("x", "r", "a", 1.0, 1.0, 2.0, bucket=65535, metrics={"revenue": 2.5}),
        FeedbackRecord("y", "r", "a", 0.0, 1.0, 2.0),
    ]
    assert await store.feedback_add(records) == [True, True]
    got = await store.feedback_since("r", 0)
    assert [(g.bucket, g.metrics) for g in got] == [(65535, {"revenue": 2.5}), (None, None)]


async def test_feedback_since_is_ordered_and_filtered_by_seq(store: RedisStore) -> None:
    for i in range(6):
        assert await store.feedback_add([rec(f"t{i}", route="r" if i % 3 else "q")]) == [True]
    got = await store.feedback_since("r", 0)
    assert [r.token_id for r in got] == ["t1", "t2", "t4", "t5"]
    seqs = [r.seq for r in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    # seq is store-wide: other routes' records take numbers in between
    q = await store.feedback_since("q", 0)
    assert {r.seq for r in q}.isdisjoint(seqs)
    assert [r.token_id for r in await store.feedback_since("r", seqs[1])] == ["t4", "t5"]
    assert await store.feedback_since("r", seqs[-1]) == []
    assert await store.feedback_since("unknown", 0) == []


async def test_big_batches_are_chunked_and_pruned_in_batches(store: RedisStore) -> None:
    records = [rec(f"b{i}", at=float(i)) for i in range(1300)]
    assert await store.feedback_add(records) == [True] * 1300
    got = await store.feedback_since("r", 0)
    assert [r.token_id for r in got] == [f"b{i}" for i in range(1300)]
    assert await store.feedback_prune(older_than=1200.0) == 1200
    assert [r.token_id for r in await store.feedback_since("r", 0)] == [
        f"b{i}" for i in range(1200, 1300)
    ]


async def test_feedback_prune_by_received_at(store: RedisStore, redis_server: RedisServer) -> None:
    await store.feedback_add(
        [
            rec("old", at=10.0),
            rec("edge", at=500.0),
            rec("new", at=1000.0),
            rec("old-q", route="q", at=20.0),
        ]
    )
    assert await store.feedback_prune(older_than=500.0) == 2  # strictly older only
    assert [r.token_id for r in await store.feedback_since("r", 0)] == ["edge", "new"]
    assert await store.feedback_since("q", 0) == []
    assert await store.feedback_prune(older_than=500.0) == 0
    # the dedup id outlives its pruned record: the old token is still a duplicate
    assert await store.feedback_add([rec("old", at=2000.0)]) == [False]
    with redis_server.raw() as raw:
        assert 0 < raw.ttl(f"{store.prefix}fb:id:old") <= store.dedup_ttl
        assert raw.zcard(f"{store.prefix}fb:recv") == 2


async def test_dedup_ttl_is_configurable(redis_server: RedisServer) -> None:
    s = new_store(redis_server, dedup_ttl=2.5)
    assert s.dedup_ttl == 3
    await s.open()
    try:
        await s.feedback_add([rec("x")])
        with redis_server.raw() as raw:
            assert 0 < raw.ttl(f"{s.prefix}fb:id:x") <= 3
    finally:
        await s.close()
    with pytest.raises(ValueError, match="dedup_ttl"):
        RedisStore(redis_server.url, dedup_ttl=0)


async def test_a_retried_call_does_not_turn_its_own_write_into_a_duplicate(
    store: RedisStore,
) -> None:
    # what a client-side retry after a lost reply does: the same call (nonce) runs again
    assert await store._add_chunk([rec("t1"), rec("t2")], "nonce-1") == [True, True]
    assert await store._add_chunk([rec("t1"), rec("t2")], "nonce-1") == [True, True]
    assert await store._add_chunk([rec("t1")], "nonce-2") == [False]
    # inside one call a repeated token is still a duplicate
    assert await store._add_chunk([rec("t3"), rec("t3")], "nonce-3") == [True, False]
    assert [r.token_id for r in await store.feedback_since("r", 0)] == ["t1", "t2", "t3"]


async def test_concurrent_overlapping_feedback_is_accepted_exactly_once(
    redis_server: RedisServer,
) -> None:
    prefix = f"t{uuid.uuid4().hex}:"
    replicas = [new_store(redis_server, prefix), new_store(redis_server, prefix)]
    for s in replicas:
        await s.open()
    try:

        async def caller(i: int) -> list[tuple[str, bool]]:
            # 150 calls over 40 tokens: every token is offered by several calls at once
            tokens = [f"tok{(i * 7 + k) % 40}" for k in range(3)]
            ok = await replicas[i % 2].feedback_add([rec(t) for t in tokens])
            return list(zip(tokens, ok, strict=True))

        results = await asyncio.gather(*(caller(i) for i in range(150)))
        accepted = [t for res in results for t, ok in res if ok]
        assert sorted(accepted) == sorted(f"tok{k}" for k in range(40))
        for s in replicas:
            got = await s.feedback_since("r", 0)
            assert sorted(r.token_id for r in got) == sorted(accepted)
            assert [r.seq for r in got] == sorted({r.seq for r in got})
    finally:
        for s in replicas:
            await s.close()


async def test_two_replicas_see_each_others_writes(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex}:"
    a, b = new_store(redis_server, prefix), new_store(redis_server, prefix)
    other = new_store(redis_server)  # another deployment on the same Redis
    for s in (a, b, other):
        await s.open()
    try:
        await a.put("rollout:r", {"step": 2})
        assert await b.get("rollout:r") == {"step": 2}
        await b.put("rollout:r", {"step": 3})
        assert await a.get("rollout:r") == {"step": 3}
        await a.audit_append({"route": "r", "action": "promote"})
        await b.audit_append({"route": "r", "action": "pause"})
        assert [e["action"] for e in await a.audit_list(route="r")] == ["promote", "pause"]
        assert await a.feedback_add([rec("t1")]) == [True]
        assert await b.feedback_add([rec("t1"), rec("t2")]) == [False, True]
        got = await a.feedback_since("r", 0)
        assert [r.token_id for r in got] == ["t1", "t2"]
        # a replica that replayed up to t1 picks up exactly what the other one added since
        assert [r.token_id for r in await b.feedback_since("r", got[0].seq)] == ["t2"]
        # prefixes isolate deployments sharing one Redis
        assert await other.get("rollout:r") is None
        assert await other.feedback_add([rec("t1")]) == [True]
        assert await other.audit_list() == []
    finally:
        for s in (a, b, other):
            await s.close()


# ---- lifecycle and errors ----


async def test_open_is_idempotent_and_close_is_final(redis_server: RedisServer) -> None:
    s = new_store(redis_server)
    await s.open()
    await s.open()
    await s.put("k", 1)
    await s.close()
    await s.close()
    with pytest.raises(StoreError, match=r"state store redis://127\.0\.0\.1:\d+/0 is not open"):
        await s.get("k")
    with pytest.raises(StoreError, match="is not open"):
        await s.feedback_add([rec("t")])
    await s.open()  # reopening works
    assert await s.get("k") == 1
    await s.close()


async def test_unreachable_redis_is_a_clear_error_naming_the_url() -> None:
    port = free_port()  # nothing listens there
    s = RedisStore(f"redis://:sekret@127.0.0.1:{port}/0", timeout=1.0)
    with pytest.raises(
        StoreUnavailable, match=rf"cannot reach state store redis://:\*\*\*@127\.0\.0\.1:{port}/0"
    ) as e:
        await s.open()
    assert "sekret" not in str(e.value)
    assert isinstance(e.value, StoreError)
    with pytest.raises(StoreError, match="is not open"):
        await s.get("k")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:pw@h:1/2", "redis://user:***@h:1/2"),
        ("rediss://:pw@h/0", "rediss://:***@h/0"),
        ("redis://:p@ss:w@h/0", "redis://:***@h/0"),
        ("unix:///run/redis.sock?db=1&password=pw", "unix:///run/redis.sock?db=1&password=***"),
    ],
)
def test_redact_hides_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379/0", "redis://127.0.0.1:6379/x", "redis://h:port/0"]
)
def test_bad_url_is_rejected_up_front(url: str) -> None:
    with pytest.raises(StoreError, match=r"state\.url: not a usable Redis URL"):
        RedisStore(url)


async def test_warns_when_redis_does_not_persist(
    scratch_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    scratch_server.args = ["--appendonly", "no"]
    scratch_server.start()
    s = RedisStore(scratch_server.url)
    with caplog.at_level(logging.WARNING, logger="router.store.redis"):
        await s.open()
    await s.close()
    assert any("appendonly no" in r.getMessage() for r in caplog.records)


async def test_no_warning_with_aof_or_without_config_access(
    redis_server: RedisServer, scratch_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    scratch_server.args = ["--appendonly", "no", "--rename-command", "CONFIG", ""]
    scratch_server.start()
    with caplog.at_level(logging.WARNING, logger="router.store.redis"):
        for url in (redis_server.url, scratch_server.url):
            s = RedisStore(url)
            await s.open()
            await s.put("k", 1)
            await s.close()
    assert caplog.records == []


async def test_accepted_feedback_survives_a_redis_crash(scratch_server: RedisServer) -> None:
    scratch_server.args = ["--appendonly", "yes", "--appendfsync", "always"]
    scratch_server.start()
    s = RedisStore(scratch_server.url, timeout=2.0)
    await s.open()
    try:
        assert await s.feedback_add([rec("t1"), rec("t2", route="q")]) == [True, True]
        await s.put("rollout:r", {"step": 4})
        await s.audit_append({"route": "r", "action": "promote"})
        before = await s.feedback_since("r", 0)

        scratch_server.stop(signal.SIGKILL)
        with pytest.raises(StoreUnavailable, match=r"cannot reach state store redis://127"):
            await s.feedback_add([rec("t3")])
        scratch_server.start()  # same port, same --dir: replays the AOF

        # the replica's pool reconnects by itself once Redis is back
        async def reconnected() -> list[FeedbackRecord] | None:
            try:
                return await s.feedback_since("r", 0)
            except StoreUnavailable:
                return None

        after = await eventually(reconnected, timeout=15, interval=0.05, what="reconnect")
        assert after == before and after[0].token_id == "t1"

        fresh = RedisStore(scratch_server.url)
        await fresh.open()
        try:
            assert await fresh.feedback_since("r", 0) == before
            assert [r.token_id for r in await fresh.feedback_since("q", 0)] == ["t2"]
            assert await fresh.get("rollout:r") == {"step": 4}
            assert [e["action"] for e in await fresh.audit_list(route="r")] == ["promote"]
            # dedup ids and the seq counter came back too
            assert await fresh.feedback_add([rec("t1"), rec("t4")]) == [False, True]
            t4 = (await fresh.feedback_since("r", before[0].seq))[0]
            assert t4.token_id == "t4" and t4.seq > before[0].seq
        finally:
            await fresh.close()
    finally:
        await s.close()
