"""The embedded default store: one SQLite file in WAL mode, written by one dedicated thread.

Durability: WAL with `synchronous=NORMAL` makes every committed transaction survive a crash or
`kill -9` of the router process (the WAL is in the OS page cache once `COMMIT` returns); only an
OS crash or power loss may lose the last transactions. Feedback calls that arrive while a write
is in flight are committed together in the next transaction (group commit); every call returns
only after its records are committed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from policies.params import Param
from policies.spec import StateConfig
from router.store.base import (
    FeedbackRecord,
    Store,
    StoreError,
    StoreKind,
    extra_fields,
    record_extra,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, route TEXT, json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_route ON audit (route, seq);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    token_id TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL,
    arm TEXT NOT NULL,
    reward REAL NOT NULL,
    decided_at REAL NOT NULL,
    received_at REAL NOT NULL,
    context TEXT,
    label TEXT,
    extra TEXT);
CREATE INDEX IF NOT EXISTS feedback_route ON feedback (route, seq);
CREATE INDEX IF NOT EXISTS feedback_received ON feedback (received_at);
"""


class SqliteStore:
    """All SQLite work runs on one thread with one connection, so async callers never race."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._exec: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[list[FeedbackRecord], asyncio.Future[list[bool]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    # ---- lifecycle ----

    async def open(self) -> None:
        if self._exec is not None:
            return
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run(self._connect)
        except BaseException:
            self._exec.shutdown(wait=False)
            self._exec = None
            raise

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            cols = {row[1] for row in conn.execute("PRAGMA table_info(feedback)")}
            if "extra" not in cols:  # stores made before bucket/metrics were kept
                conn.execute("ALTER TABLE feedback ADD COLUMN extra TEXT")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open state store {self.path}: {e}") from e
        self._conn = conn

    async def close(self) -> None:
        if self._exec is None:
            return
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await self._run(self._disconnect)
        self._exec.shutdown(wait=True)
        self._exec = None

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._exec is None:
            raise StoreError(f"state store {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state store {self.path} is not open")
        return self._conn

    # ---- documents ----

    async def get(self, key: str) -> Any | None:
        return await self._run(self._get, key)

    def _get(self, key: str) -> Any | None:
        row = self._db().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    async def put(self, key: str, value: Any) -> None:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        await self._run(self._put, key, text)

    def _put(self, key: str, text: str) -> None:
        self._db().execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, text),
        )

    # ---- audit ----

    async def audit_append(self, entry: dict[str, Any]) -> None:
        text = json.dumps(entry, allow_nan=False, separators=(",", ":"))
        ts = float(entry.get("ts", 0.0))
        route = entry.get("route")
        await self._run(self._audit_append, ts, route, text)

    def _audit_append(self, ts: float, route: str | None, text: str) -> None:
        self._db().execute(
            "INSERT INTO audit (ts, route, json) VALUES (?, ?, ?)", (ts, route, text)
        )

    async def audit_list(self, limit: int = 200, route: str | None = None) -> list[dict[str, Any]]:
        return await self._run(self._audit_list, limit, route)

    def _audit_list(self, limit: int, route: str | None) -> list[dict[str, Any]]:
        if route is None:
            rows = (
                self._db()
                .execute("SELECT json FROM audit ORDER BY seq DESC LIMIT ?", (limit,))
                .fetchall()
            )
        else:
            rows = (
                self._db()
                .execute(
                    "SELECT json FROM audit WHERE route = ? ORDER BY seq DESC LIMIT ?",
                    (route, limit),
                )
                .fetchall()
            )
        return [json.loads(r[0]) for r in reversed(rows)]

    # ---- feedback ----

    async def feedback_add(self, records: list[FeedbackRecord]) -> list[bool]:
        if not records:
            return []
        fut: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(records), fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        # shield: a cancelled caller must not cancel the commit of other callers' records
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    flat = [r for recs, _ in batch for r in recs]
                    stored = await self._run(self._insert_feedback, flat)
                except BaseException as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(
                                e if isinstance(e, Exception) else StoreError("store closed")
                            )
                    if not isinstance(e, Exception):
                        raise
                    continue
                i = 0
                for recs, fut in batch:
                    if not fut.done():
                        fut.set_result(stored[i : i + len(recs)])
                    i += len(recs)
        finally:
            self._flusher = None

    def _insert_feedback(self, records: list[FeedbackRecord]) -> list[bool]:
        db = self._db()
        out: list[bool] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for r in records:
                cur = db.execute(
                    "INSERT OR IGNORE INTO feedback (token_id, route, arm, reward, decided_at, "
                    "received_at, context, label, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.token_id,
                        r.route,
                        r.arm,
                        float(r.reward),
                        float(r.decided_at),
                        float(r.received_at),
                        None if r.context is None else json.dumps(list(r.context)),
                        r.label,
                        None if (x := record_extra(r)) is None else json.dumps(x),
                    ),
                )
                out.append(cur.rowcount == 1)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    async def feedback_since(self, route: str, after_seq: int) -> list[FeedbackRecord]:
        return await self._run(self._feedback_since, route, after_seq)

    def _feedback_since(self, route: str, after_seq: int) -> list[FeedbackRecord]:
        rows = (
            self._db()
            .execute(
                "SELECT token_id, route, arm, reward, decided_at, received_at, context, label, "
                "seq, extra FROM feedback WHERE route = ? AND seq > ? ORDER BY seq",
                (route, after_seq),
            )
            .fetchall()
        )
        return [
            FeedbackRecord(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                None if r[6] is None else tuple(float(x) for x in json.loads(r[6])),
                r[7],
                r[8],
                *extra_fields(None if r[9] is None else json.loads(r[9])),
            )
            for r in rows
        ]

    async def feedback_prune(self, older_than: float) -> int:
        return await self._run(self._prune, older_than)

    def _prune(self, older_than: float) -> int:
        cur = self._db().execute("DELETE FROM feedback WHERE received_at < ?", (older_than,))
        return int(cur.rowcount)


def _open(cfg: StateConfig, base_dir: Path, feedback_ttl: float) -> Store:
    path = Path(cfg.path)
    return SqliteStore(path if path.is_absolute() else base_dir / path)


KIND = StoreKind(
    _open,
    (
        Param(
            "path",
            "SQLite file; relative paths resolve against the config file's directory.",
            type="string",
            default="modelrouter.db",
        ),
    ),
    help="one embedded file",
)
