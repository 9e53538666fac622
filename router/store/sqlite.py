"""The embedded default store: one SQLite file in WAL mode, written by one dedicated thread.

Durability: WAL with `synchronous=NORMAL` makes every committed transaction survive a crash or
`kill -9` of the router process (the WAL is in the OS page cache once `COMMIT` returns); only an
OS crash or power loss may lose the last transactions. Feedback calls that arrive while a write
is in flight are committed together in the next transaction (group commit); every call returns
only after its records are committed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from policies.params import Param
from policies.spec import StateConfig
from policies.units import group_increments
from router.store.base import (
    MARK_FIELD,
    PROBE_KEY,
    Cells,
    FeedbackRecord,
    Fence,
    Merged,
    Store,
    StoreError,
    StoreKind,
    extra_fields,
    group_fields,
    merged_from_fields,
    record_extra,
    sum_fields,
    unit_cells,
)

T = TypeVar("T")

__all__ = ["SqliteStore", "explain"]

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
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vkv (
    key TEXT PRIMARY KEY, version INTEGER NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    key TEXT NOT NULL, part TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (key, part));
CREATE TABLE IF NOT EXISTS unit_cells (
  key TEXT NOT NULL, grp TEXT NOT NULL, bucket INTEGER NOT NULL, n REAL NOT NULL, s REAL NOT NULL,
  PRIMARY KEY (key, grp, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sums (
    key TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (key, field)
) WITHOUT ROWID;
"""


_PUT = (
    "INSERT INTO kv (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def explain(path: Path, e: BaseException) -> str:
    """One line saying what is wrong with the SQLite store at `path` and what to do about it."""
    name = getattr(e, "sqlite_errorname", "")
    where = f"state store {path}"
    if isinstance(e, OSError):
        reason = e.strerror or str(e)
        return (
            f"{where}: cannot create its directory {path.parent} ({reason}); create it with "
            "write access for the router's user, or set state.path to a writable place"
        )
    if name.startswith("SQLITE_READONLY"):
        return (
            f"{where} is not writable ({e}); give the router's user write access to the file "
            "and its directory, or set state.path to a writable place"
        )
    if name.startswith("SQLITE_CANTOPEN"):
        return (
            f"{where} cannot be opened or created ({e}); check that {path.parent} exists and "
            "the router's user may read and write there, or set state.path elsewhere"
        )
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return (
            f"{where} is corrupt or not an SQLite database ({e}); move it aside to start with "
            "empty state (rollouts restart, learned statistics are lost), or restore a backup"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return (
            f"{where} is locked by another process ({e}); stop the other router using it, or "
            "give this one its own state.path (or state.store: redis to share state)"
        )
    if name.startswith("SQLITE_FULL") or getattr(e, "errno", None) == errno.ENOSPC:
        return f"{where}: the disk is full ({e}); free space on the volume of {path.parent}"
    return f"{where}: {e}"


class SqliteStore:
    """All SQLite work runs on one thread with one connection, so async callers never race."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)
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
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), isolation_level=None)
            # first: `serve --workers` opens the file from N processes at once
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            cols = {row[1] for row in conn.execute("PRAGMA table_info(feedback)")}
            if "extra" not in cols:  # stores made before bucket/metrics were kept
                conn.execute("ALTER TABLE feedback ADD COLUMN extra TEXT")
            # a read-only file opens and reads fine: only a write shows it cannot be used
            conn.execute(_PUT, (PROBE_KEY, json.dumps({"opened": time.time()})))
        except (sqlite3.Error, OSError) as e:
            if conn is not None:
                conn.close()
            raise StoreError(explain(self.path, e)) from None
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
        self._db().execute(_PUT, (key, text))

    # ---- additive sums: one transaction adds and reads back ----

    async def merge(
        self,
        key: str,
        add: Mapping[str, Any],
        fold: Mapping[str, Any] | None = None,
        expect: int = -1,
        mark: int = -1,
        *,
        nodes: Sequence[str] = (),
        stamp: float = 0.0,
        fence: str | None = None,
        dead: Sequence[str] = (),
        units: Mapping[str, Any] | None = None,
        fold_units: Mapping[str, Any] | None = None,
    ) -> Merged:
        plain, cond = sum_fields(add), sum_fields(fold or {})
        meta = ([(f"#flushed:{n}", float(stamp)) for n in nodes], [f"#dead:{n}" for n in dead])
        # the per-bucket rows are checked in the store's thread, off the event loop
        cells = (units or {}, fold_units or {})
        return await self._run(self._merge, key, plain, cond, expect, mark, fence, meta, cells)

    def _merge(
        self,
        key: str,
        plain: list[tuple[str, float]],
        cond: list[tuple[str, float]],
        expect: int,
        mark: int,
        fence: str | None,
        meta: tuple[list[tuple[str, float]], list[str]],
        cells: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
    ) -> Merged:
        db = self._db()
        u_plain, u_cond = unit_cells(cells[0]), unit_cells(cells[1])
        upsert = (
            "INSERT INTO sums (key, field, value) VALUES (?, ?, ?) "
            "ON CONFLICT (key, field) DO UPDATE SET value = value + excluded.value"
        )
        flushed, dead = meta
        everything = "SELECT field, value FROM sums WHERE key = ?"
        if (
            not plain
            and not cond
            and mark == expect
            and not flushed
            and not dead
            and not u_plain
            and not u_cond
        ):
            # a read: one consistent snapshot is enough
            m = merged_from_fields(db.execute(everything, (key,)).fetchall(), False)
            return Merged(m.totals, m.mark, m.mark == expect, False, m.meta)
        setter = (
            "INSERT INTO sums (key, field, value) VALUES (?, ?, ?) "
            "ON CONFLICT (key, field) DO UPDATE SET value = excluded.value"
        )
        one = "SELECT value FROM sums WHERE key = ? AND field = ?"
        db.execute("BEGIN IMMEDIATE")
        try:
            fenced = fence is not None and (
                db.execute(one, (key, f"#dead:{fence}")).fetchone() is not None
            )
            applied = False
            if not fenced:
                db.executemany(upsert, [(key, f, v) for f, v in plain])
                self._add_units(db, key, u_plain, upsert)
                db.executemany(setter, [(key, f, v) for f, v in flushed])
                row = db.execute(one, (key, MARK_FIELD)).fetchone()
                applied = (-1 if row is None else int(row[0])) == expect
            if applied:
                db.executemany(upsert, [(key, f, v) for f, v in cond])
                self._add_units(db, key, u_cond, upsert)
                db.execute(setter, (key, MARK_FIELD, float(mark)))
                db.executemany(setter, [(key, f, 1.0) for f in dead])
            rows = db.execute(everything, (key,)).fetchall()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return merged_from_fields(rows, applied, fenced)

    @staticmethod
    def _add_units(db: sqlite3.Connection, key: str, todo: dict[str, Cells], upsert: str) -> None:
        """Per-bucket totals of unit groups, and their squares' change into the dense sums
        (inside the caller's transaction). Only the touched buckets are read and written."""
        for g, (idx, dn, ds) in todo.items():
            ids = idx.tolist()
            n0, s0 = np.zeros(len(ids)), np.zeros(len(ids))
            for lo in range(0, len(ids), 900):
                chunk = ids[lo : lo + 900]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    "SELECT bucket, n, s FROM unit_cells "
                    f"WHERE key = ? AND grp = ? AND bucket IN ({marks})",
                    (key, g, *chunk),
                ).fetchall()
                if rows:
                    r = np.array(rows, dtype=float)
                    pos = np.searchsorted(idx, r[:, 0].astype(np.int64))
                    n0[pos], s0[pos] = r[:, 1], r[:, 2]
            inc = group_increments(n0, s0, dn, ds)
            db.executemany(
                "INSERT INTO unit_cells (key, grp, bucket, n, s) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key, grp, bucket) DO UPDATE SET n = excluded.n, s = excluded.s",
                zip(repeat(key), repeat(g), ids, (n0 + dn).tolist(), (s0 + ds).tolist()),
            )
            db.executemany(upsert, [(key, f, v) for f, v in group_fields(g, inc)])

    async def put_if_absent(self, key: str, value: Any) -> Any:
        """Store `value` unless `key` exists; return what the key holds afterwards."""
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        return await self._run(self._put_if_absent, key, text)

    def _put_if_absent(self, key: str, text: str) -> Any:
        db = self._db()
        db.execute("INSERT OR IGNORE INTO kv (key, value) VALUES (?, ?)", (key, text))
        row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0])

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

    # ---- leases, versioned documents, parts (processes on one machine share the file) ----
    #
    # Each operation is one IMMEDIATE transaction: SQLite's write lock orders them across the
    # processes sharing the file, so a read-then-write cannot interleave with another process's.
    # Lease expiry uses the wall clock, which all processes of one machine share.

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    async def lease_acquire(self, name: str, holder: str, ttl: float) -> int | None:
        return await self._run(self._tx, lambda db: self._lease_acquire(db, name, holder, ttl))

    @staticmethod
    def _lease_acquire(db: sqlite3.Connection, name: str, holder: str, ttl: float) -> int | None:
        now = time.time()
        row = db.execute("SELECT holder, token, expires FROM lease WHERE name = ?", (name,))
        got = row.fetchone()
        if got is None:
            db.execute(
                "INSERT INTO lease (name, holder, token, expires) VALUES (?, ?, 1, ?)",
                (name, holder, now + ttl),
            )
            return 1
        who, token, expires = got
        if who == holder and expires > now:
            token = int(token)  # renewal: same token
        elif expires <= now:
            token = int(token) + 1  # free: a new holder (or the old one again) gets a new token
        else:
            return None
        db.execute(
            "UPDATE lease SET holder = ?, token = ?, expires = ? WHERE name = ?",
            (holder, token, now + ttl, name),
        )
        return token

    async def lease_release(self, name: str, holder: str) -> None:
        def release(db: sqlite3.Connection) -> None:
            # expire it in place: the token counter must survive for the next holder
            db.execute("UPDATE lease SET expires = 0 WHERE name = ? AND holder = ?", (name, holder))

        await self._run(release, self._db())

    async def vget(self, key: str, newer_than: int = 0) -> tuple[int, Any] | None:
        return await self._run(self._vget, key, newer_than)

    def _vget(self, key: str, newer_than: int) -> tuple[int, Any] | None:
        sql = "SELECT version, value FROM vkv WHERE key = ? AND version > ?"
        row = self._db().execute(sql, (key, newer_than)).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    async def vput(
        self, key: str, value: Any, expected: int, fence: Fence | None = None
    ) -> int | None:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        return await self._run(self._tx, lambda db: self._vput(db, key, text, expected, fence))

    @staticmethod
    def _vput(
        db: sqlite3.Connection, key: str, text: str, expected: int, fence: Fence | None
    ) -> int | None:
        if fence is not None:
            got = db.execute(
                "SELECT 1 FROM lease WHERE name = ? AND holder = ? AND token = ? AND expires > ?",
                (fence.name, fence.holder, fence.token, time.time()),
            ).fetchone()
            if got is None:
                return None
        if expected == 0:
            cur = db.execute(
                "INSERT OR IGNORE INTO vkv (key, version, value) VALUES (?, 1, ?)", (key, text)
            )
        else:
            cur = db.execute(
                "UPDATE vkv SET version = version + 1, value = ? WHERE key = ? AND version = ?",
                (text, key, expected),
            )
        return expected + 1 if cur.rowcount == 1 else None

    async def parts_put(self, key: str, part: str, value: Any) -> None:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))

        def put(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO parts (key, part, value) VALUES (?, ?, ?) "
                "ON CONFLICT (key, part) DO UPDATE SET value = excluded.value",
                (key, part, text),
            )

        await self._run(put, self._db())

    async def parts_get(self, key: str) -> dict[str, Any]:
        def get(db: sqlite3.Connection) -> dict[str, Any]:
            rows = db.execute("SELECT part, value FROM parts WHERE key = ?", (key,)).fetchall()
            return {p: json.loads(v) for p, v in rows}

        return await self._run(get, self._db())

    async def parts_drop(self, key: str, parts: list[str]) -> None:
        def drop(db: sqlite3.Connection) -> None:
            sql = "DELETE FROM parts WHERE key = ? AND part = ?"
            db.executemany(sql, [(key, p) for p in parts])

        if parts:
            await self._run(drop, self._db())


STATE_DIR_ENV = "MODELROUTER_STATE_DIR"


def _open(cfg: StateConfig, base_dir: Path, feedback_ttl: float) -> Store:
    # the container image sets MODELROUTER_STATE_DIR to its writable volume: a config mounted
    # read-only (ConfigMap, docker -v) still starts with the default relative path
    path = Path(cfg.path)
    state_dir = os.environ.get(STATE_DIR_ENV)
    base = Path(state_dir) if state_dir else base_dir
    return SqliteStore(path if path.is_absolute() else base / path)


KIND = StoreKind(
    _open,
    (
        Param(
            "path",
            "SQLite file; a relative path resolves against `$MODELROUTER_STATE_DIR` when set "
            "(the container image sets `/var/lib/modelrouter`), else the config file's directory.",
            type="string",
            default="modelrouter.db",
        ),
    ),
    help="one embedded file",
)
