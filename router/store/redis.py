"""The shared store on Redis (`state: {store: redis, url: ...}`): many router replicas share rollout
state, learned statistics, the audit log and accepted feedback through one Redis database.

Durability: a write is as durable as the server's persistence settings. Accepted feedback survives
a `kill -9` of any router replica as soon as `feedback_add` returns (it is in Redis), but it only
survives a crash of Redis itself with `appendonly yes`: `appendfsync always` loses nothing that was
acknowledged, `appendfsync everysec` (the usual trade-off) may lose the last second. `open()` logs
a WARNING when it can see that the AOF is off. Single-node Redis (or a primary with replicas) only:
the Lua scripts touch keys they compute, so they are not Redis Cluster slot-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from policies.params import Param
from policies.spec import StateConfig
from router.store.base import (
    PROBE_KEY,
    Cells,
    FeedbackRecord,
    Fence,
    Merged,
    Store,
    StoreError,
    StoreKind,
    extra_fields,
    merged_from_fields,
    record_extra,
    sum_fields,
    unit_cells,
)

__all__ = ["RedisStore", "StoreUnavailable"]

log = logging.getLogger(__name__)

# Records per script call: each call is atomic and blocks Redis while it runs, so keep it short.
_ADD_CHUNK = 256
_PRUNE_BATCH = 1000

# KEYS: seq counter, received-at index, then (dedup id key, route zset) per record.
# ARGV: dedup ttl seconds, call nonce, then (doc, received_at, route) per record.
# Returns per record: the new seq, -1 when this very call stored it on an earlier attempt (a
# client retry after a lost reply must not turn an accepted reward into a duplicate), 0 for a
# duplicate. INCR and ZADD in one script: a reader never sees seq N+1 before seq N, which the
# learning engine's `feedback_since(route, watermark)` replay relies on.
_ADD = """
local out = {}
local n = (#KEYS - 2) / 2
for i = 1, n do
  local id_key, route_key = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local doc, recv, route = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local mark = ARGV[2] .. ':' .. i
  if redis.call('SET', id_key, mark, 'NX', 'EX', ARGV[1]) then
    local seq = redis.call('INCR', KEYS[1])
    redis.call('ZADD', route_key, seq, doc)
    redis.call('ZADD', KEYS[2], recv, seq .. ':' .. route)
    out[i] = seq
  elseif redis.call('GET', id_key) == mark then
    out[i] = -1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: received-at index. ARGV: exclusive bound, route zset key prefix, batch size.
_PRUNE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1],
                         'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(items) do
  local c = string.find(m, ':', 1, true)
  local seq = string.sub(m, 1, c - 1)
  redis.call('ZREMRANGEBYSCORE', ARGV[2] .. string.sub(m, c + 1), seq, seq)
  redis.call('ZREM', KEYS[1], m)
end
return #items
"""


# Leases. KEYS: lease key, fencing counter. ARGV: holder, ttl ms. The lease key holds
# "token|holder" with PX expiry (SET NX PX semantics); the holder renews it (compare-and-renew);
# a new holder takes a fresh token from INCR on the counter, which never expires.
_LEASE_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if string.sub(cur, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, 1, sep - 1))
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2], 'NX')
return token
"""

# KEYS: lease key. ARGV: holder.
_LEASE_RELEASE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if string.sub(cur, sep + 1) == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
end
return 0
"""

# Versioned documents: a hash {v: version, d: json}. KEYS: doc hash, fence lease key (or the doc
# key again without a fence). ARGV: expected version, document, "token|holder" or ''.
_VPUT = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return false end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return false end
redis.call('HSET', KEYS[1], 'v', v + 1, 'd', ARGV[2])
return v + 1
"""

# KEYS: doc hash. ARGV: newer_than. Returns {version, doc} or nil; the doc moves only when newer.
_VGET = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v <= tonumber(ARGV[1]) then return false end
return {v, redis.call('HGET', KEYS[1], 'd')}
"""

# KEYS: the sums hash, the per-bucket hash of unit groups. ARGV: fence ('' for none), stamp,
# number of flushed nodes, the nodes, number of dead nodes, the nodes, number of plain fields,
# (field, increment) pairs, number of plain unit groups, per group (name, rows, packed rows),
# expect, mark, number of conditional unit groups, theirs, then the conditional (field,
# increment) pairs. A packed row is little-endian uint32 bucket, float64 dN, float64 dS. All
# in one script, so every process sees each flush whole: counts and sums of one update never
# part. A unit row adds to its bucket's totals (`group#bucket#n|s` in KEYS[2], never read back)
# and the change of the squares to the group's dense sums (`group#0..5`, see
# policies.units.unit_increments). Returns {applied, fenced, fields}.
_MERGE = """
local h = KEYS[1]
local u = KEYS[2]
local function units(j, ngroups)
  for _ = 1, ngroups do
    local g, m, blob = ARGV[j], tonumber(ARGV[j + 1]), ARGV[j + 2]
    j = j + 3
    local acc = {0, 0, 0, 0, 0, 0}
    local pos = 1
    local lo = 0
    while lo < m do
      local cnt = math.min(m - lo, 1000)
      local names, dns, dss = {}, {}, {}
      for k = 1, cnt do
        local b, dn, ds
        b, dn, ds, pos = struct.unpack('<Idd', blob, pos)
        names[2 * k - 1] = g .. '#' .. b .. '#n'
        names[2 * k] = g .. '#' .. b .. '#s'
        dns[k], dss[k] = dn, ds
      end
      local old = redis.call('HMGET', u, unpack(names))
      local set = {}
      for k = 1, cnt do
        local xn, xs = old[2 * k - 1], old[2 * k]
        local n0 = xn and tonumber(xn) or 0
        local s0 = xs and tonumber(xs) or 0
        local n, s = n0 + dns[k], s0 + dss[k]
        acc[1] = acc[1] + dns[k]
        acc[2] = acc[2] + dss[k]
        acc[3] = acc[3] + (n * n - n0 * n0)
        acc[4] = acc[4] + (s * s - s0 * s0)
        acc[5] = acc[5] + (s * n - s0 * n0)
        if n > 0 then acc[6] = acc[6] + 1 end
        if n0 > 0 then acc[6] = acc[6] - 1 end
        set[4 * k - 3], set[4 * k - 2] = names[2 * k - 1], n
        set[4 * k - 1], set[4 * k] = names[2 * k], s
      end
      redis.call('HSET', u, unpack(set))
      lo = lo + cnt
    end
    for q = 1, 6 do
      if acc[q] ~= 0 then redis.call('HINCRBYFLOAT', h, g .. '#' .. (q - 1), acc[q]) end
    end
  end
  return j
end
if ARGV[1] ~= '' and redis.call('HEXISTS', h, '#dead:' .. ARGV[1]) == 1 then
  return {0, 1, redis.call('HGETALL', h)}
end
local stamp = ARGV[2]
local i = 3
local nodes = tonumber(ARGV[i])
for k = 1, nodes do redis.call('HSET', h, '#flushed:' .. ARGV[i + k], stamp) end
i = i + nodes + 1
local ndead = tonumber(ARGV[i])
local dead_at = i + 1
i = i + ndead + 1
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HINCRBYFLOAT', h, ARGV[i], ARGV[i + 1])
  i = i + 2
end
i = units(i + 1, tonumber(ARGV[i]))
local expect, mark = ARGV[i], ARGV[i + 1]
i = i + 2
local nuc = tonumber(ARGV[i])
local cond_units = i + 1
i = i + 1 + 3 * nuc
local cur = redis.call('HGET', h, '#mark')
local applied = 0
if tonumber(cur or '-1') == tonumber(expect) then
  units(cond_units, nuc)
  while i <= #ARGV do
    redis.call('HINCRBYFLOAT', h, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('HSET', h, '#mark', mark)
  for k = 0, ndead - 1 do redis.call('HSET', h, '#dead:' .. ARGV[dead_at + k], 1) end
  applied = 1
end
return {applied, 0, redis.call('HGETALL', h)}
"""


_ROW = np.dtype([("b", "<u4"), ("n", "<f8"), ("s", "<f8")])


def _unit_args(cells: Mapping[str, Cells]) -> list[str | int | bytes]:
    """Unit groups as the merge script reads them: count, then name, rows, packed rows."""
    out: list[str | int | bytes] = [len(cells)]
    for g, (idx, dn, ds) in cells.items():
        rows = np.empty(len(idx), dtype=_ROW)
        rows["b"], rows["n"], rows["s"] = idx, dn, ds
        out += [g, len(idx), rows.tobytes()]
    return out


def _pack_units(
    units: Mapping[str, Any] | None, fold_units: Mapping[str, Any] | None
) -> tuple[list[str | int | bytes], list[str | int | bytes]]:
    return _unit_args(unit_cells(units)), _unit_args(unit_cells(fold_units))


class StoreUnavailable(StoreError):
    """Redis cannot be reached (refused, timed out, dropped); the message names the URL."""


def redact(url: str) -> str:
    """The URL with any password replaced by `***`, fit for logs and error messages."""
    url = re.sub(r"(://[^/@:]*:)[^/]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def _check_url(url: str) -> None:
    parse_url(url)  # scheme, port, query options
    parts = urlsplit(url)
    # redis-py silently reads a malformed database path as db 0: a shared db by accident
    if parts.scheme in ("redis", "rediss") and parts.path not in ("", "/"):
        db = parts.path.lstrip("/")
        if not db.isdigit():
            raise ValueError(f"database must be a number, got {db!r}")


class RedisStore:
    """The Store interface on one Redis database; every key starts with `prefix`."""

    _add: AsyncScript  # registered by open()
    _prune: AsyncScript
    _lease_acquire: AsyncScript
    _lease_release: AsyncScript
    _vput: AsyncScript
    _vget: AsyncScript
    _merge: AsyncScript

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "modelrouter:",
        dedup_ttl: float = 7200.0,
        audit_maxlen: int = 100_000,
        timeout: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self.where = redact(url)
        try:
            _check_url(url)
        except (ValueError, TypeError) as e:
            raise StoreError(f"state.url: not a usable Redis URL {self.where}: {e}") from None
        if not (math.isfinite(dedup_ttl) and dedup_ttl >= 1):
            raise ValueError(f"dedup_ttl must be at least 1 second, got {dedup_ttl}")
        self.prefix = prefix
        # feedback ids outlive the feedback ttl (keep them >= 2x) so late duplicates are caught
        self.dedup_ttl = math.ceil(dedup_ttl)
        self.audit_maxlen = audit_maxlen
        self._timeout = timeout
        self._max_connections = max_connections
        self._r: aioredis.Redis | None = None
        self._seq_key = f"{prefix}fb:seq"
        self._recv_key = f"{prefix}fb:recv"
        self._audit_key = f"{prefix}audit"

    # ---- lifecycle ----

    async def open(self) -> None:
        if self._r is not None:
            return
        # a blocking pool: a burst of callers waits for a connection instead of opening hundreds
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._max_connections,
            timeout=self._timeout,
            decode_responses=True,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout,
            health_check_interval=30,
        )
        r = aioredis.Redis.from_pool(pool)
        try:
            await r.ping()
            # a replica or a primary refusing writes (MISCONF) answers PING: only a write tells
            await r.set(f"{self.prefix}kv:{PROBE_KEY}", json.dumps({"opened": time.time()}))
            await self._check_persistence(r)
        except RedisError as e:
            await r.aclose()
            raise self._explain(e) from None
        except BaseException:
            await r.aclose()
            raise
        self._add = r.register_script(_ADD)
        self._prune = r.register_script(_PRUNE)
        self._lease_acquire = r.register_script(_LEASE_ACQUIRE)
        self._lease_release = r.register_script(_LEASE_RELEASE)
        self._vput = r.register_script(_VPUT)
        self._vget = r.register_script(_VGET)
        self._merge = r.register_script(_MERGE)
        self._r = r

    def _explain(self, e: RedisError) -> StoreError:
        """A one-line error for a store that cannot be used at start, saying what to do."""
        where = f"state store {self.where}"
        if isinstance(e, (AuthenticationError, AuthorizationError)):
            return StoreError(
                f"{where} refused the credentials ({e}); put the right user and password in "
                "state.url (redis://user:password@host:port/db)"
            )
        if isinstance(e, BusyLoadingError):
            return StoreUnavailable(
                f"{where} is still loading its data set ({e}); start the router again when "
                "Redis has finished loading"
            )
        if isinstance(e, (RedisConnectionError, RedisTimeoutError)):
            return StoreUnavailable(
                f"cannot reach {where} ({e}); check that Redis is running and reachable at "
                "that address and that state.url is right"
            )
        if isinstance(e, ReadOnlyError):
            return StoreError(
                f"{where} does not accept writes ({e}); point state.url at the primary, not "
                "a replica"
            )
        return StoreError(f"{where} cannot be used ({e}); check the Redis server's log")

    async def _check_persistence(self, r: aioredis.Redis) -> None:
        try:
            conf: Any = await r.config_get("append*")
        except ResponseError:
            return  # CONFIG renamed away or denied by an ACL: nothing to check
        if conf.get("appendonly") == "no":
            log.warning(
                "state store %s: Redis runs with appendonly no, so accepted feedback is lost if "
                "Redis crashes; set appendonly yes and appendfsync everysec (or always)",
                self.where,
            )
        elif conf.get("appendfsync") == "no":
            log.warning(
                "state store %s: Redis runs with appendfsync no; set everysec or always so "
                "accepted feedback survives a Redis crash",
                self.where,
            )

    async def close(self) -> None:
        r, self._r = self._r, None
        if r is not None:
            await r.aclose()  # from_pool: closes the pool too

    def _db(self) -> aioredis.Redis:
        if self._r is None:
            raise StoreError(f"state store {self.where} is not open")
        return self._r

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise StoreUnavailable(f"cannot reach state store {self.where}: {e}") from e
        except RedisError as e:
            raise StoreError(f"state store {self.where}: {e}") from e

    # ---- documents ----

    async def get(self, key: str) -> Any | None:
        db = self._db()
        with self._errors():
            text = await db.get(f"{self.prefix}kv:{key}")
        return None if text is None else json.loads(text)

    async def put(self, key: str, value: Any) -> None:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        db = self._db()
        with self._errors():
            await db.set(f"{self.prefix}kv:{key}", text)

    async def put_if_absent(self, key: str, value: Any) -> Any:
        """Store `value` unless `key` exists; return what the key holds afterwards."""
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        db = self._db()
        with self._errors():
            old: Any = await db.set(f"{self.prefix}kv:{key}", text, nx=True, get=True)
        return json.loads(text) if old is None else json.loads(old)

    # ---- additive sums: HINCRBYFLOAT in one script, then the totals ----

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
        if units or fold_units:  # checking and packing thousands of rows: off the event loop
            packed = await asyncio.to_thread(_pack_units, units, fold_units)
        else:
            packed = ([0], [0])
        hkey = f"{self.prefix}sums:{key}"
        ukey = f"{self.prefix}units:{key}"
        db = self._db()
        quiet = not plain and not cond and packed == ([0], [0])
        if quiet and mark == expect and not nodes and not dead:  # a read
            with self._errors():
                h: Any = await db.hgetall(hkey)
            m = merged_from_fields(h.items(), False)
            return Merged(m.totals, m.mark, m.mark == expect, False, m.meta)
        args: list[str | int | bytes] = [fence or "", repr(float(stamp)), len(nodes), *nodes]
        args += [len(dead), *dead, len(plain)]
        for f, v in plain:
            args += [f, repr(v)]
        args += packed[0]
        args += [int(expect), int(mark), *packed[1]]
        for f, v in cond:
            args += [f, repr(v)]
        with self._errors():
            applied, fenced, flat = await self._merge(keys=[hkey, ukey], args=args)
        pairs = zip(flat[0::2], flat[1::2], strict=True)
        return merged_from_fields(pairs, bool(int(applied)), bool(int(fenced)))

    # ---- audit ----

    async def audit_append(self, entry: dict[str, Any]) -> None:
        text = json.dumps(entry, allow_nan=False, separators=(",", ":"))
        route = entry.get("route")
        db = self._db()
        with self._errors():
            # one stream for all, one per route so a filtered read costs O(limit), not a scan
            async with db.pipeline(transaction=True) as pipe:
                pipe.xadd(self._audit_key, {"j": text}, maxlen=self.audit_maxlen, approximate=True)
                if isinstance(route, str):
                    pipe.xadd(
                        f"{self._audit_key}:route:{route}",
                        {"j": text},
                        maxlen=self.audit_maxlen,
                        approximate=True,
                    )
                await pipe.execute()

    async def audit_list(self, limit: int = 200, route: str | None = None) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        key = self._audit_key if route is None else f"{self._audit_key}:route:{route}"
        db = self._db()
        with self._errors():
            rows: Any = await db.xrevrange(key, count=limit)
        return [json.loads(fields["j"]) for _, fields in reversed(rows)]

    # ---- feedback ----

    async def feedback_add(self, records: list[FeedbackRecord]) -> list[bool]:
        out: list[bool] = []
        for i in range(0, len(records), _ADD_CHUNK):
            out += await self._add_chunk(records[i : i + _ADD_CHUNK], uuid.uuid4().hex)
        return out

    async def _add_chunk(self, records: list[FeedbackRecord], nonce: str) -> list[bool]:
        keys = [self._seq_key, self._recv_key]
        args: list[str | int] = [self.dedup_ttl, nonce]
        for r in records:
            keys += [f"{self.prefix}fb:id:{r.token_id}", f"{self.prefix}fb:route:{r.route}"]
            doc = [
                r.token_id,
                r.arm,
                float(r.reward),
                float(r.decided_at),
                float(r.received_at),
                None if r.context is None else [float(x) for x in r.context],
                r.label,
            ]
            extra = record_extra(r)
            if extra is not None:
                doc.append(extra)
            args += [
                json.dumps(doc, allow_nan=False, separators=(",", ":")),
                repr(float(r.received_at)),
                r.route,
            ]
        self._db()
        with self._errors():
            result = await self._add(keys=keys, args=args)
        return [int(x) != 0 for x in result]

    async def feedback_since(self, route: str, after_seq: int) -> list[FeedbackRecord]:
        db = self._db()
        with self._errors():
            rows: Any = await db.zrangebyscore(
                f"{self.prefix}fb:route:{route}", f"({int(after_seq)}", "+inf", withscores=True
            )
        out: list[FeedbackRecord] = []
        for text, score in rows:
            token_id, arm, reward, decided_at, received_at, ctx, label, *rest = json.loads(text)
            out.append(
                FeedbackRecord(
                    token_id,
                    route,
                    arm,
                    float(reward),
                    float(decided_at),
                    float(received_at),
                    None if ctx is None else tuple(float(x) for x in ctx),
                    label,
                    int(score),
                    *extra_fields(rest[0] if rest else None),
                )
            )
        return out

    async def feedback_prune(self, older_than: float) -> int:
        # records only: the dedup ids expire on their own after dedup_ttl, so a pruned reward's
        # token stays a duplicate until then
        self._db()
        bound = repr(float(older_than))
        total = 0
        while True:
            with self._errors():
                n = int(
                    await self._prune(
                        keys=[self._recv_key],
                        args=[bound, f"{self.prefix}fb:route:", _PRUNE_BATCH],
                    )
                )
            total += n
            if n < _PRUNE_BATCH:
                return total

    # ---- leases, versioned documents, parts ----

    def _lease_keys(self, name: str) -> list[str]:
        return [f"{self.prefix}lease:{name}", f"{self.prefix}lease:{name}:fence"]

    async def lease_acquire(self, name: str, holder: str, ttl: float) -> int | None:
        self._db()
        ms = max(1, int(ttl * 1000))
        with self._errors():
            got = await self._lease_acquire(keys=self._lease_keys(name), args=[holder, ms])
        return None if got is None else int(got)

    async def lease_release(self, name: str, holder: str) -> None:
        self._db()
        with self._errors():
            await self._lease_release(keys=self._lease_keys(name)[:1], args=[holder])

    async def vget(self, key: str, newer_than: int = 0) -> tuple[int, Any] | None:
        self._db()
        with self._errors():
            got: Any = await self._vget(keys=[f"{self.prefix}vkv:{key}"], args=[int(newer_than)])
        return None if got is None else (int(got[0]), json.loads(got[1]))

    async def vput(
        self, key: str, value: Any, expected: int, fence: Fence | None = None
    ) -> int | None:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        doc_key = f"{self.prefix}vkv:{key}"
        keys = [doc_key, self._lease_keys(fence.name)[0] if fence else doc_key]
        mark = f"{fence.token}|{fence.holder}" if fence else ""
        self._db()
        with self._errors():
            got = await self._vput(keys=keys, args=[int(expected), text, mark])
        return None if got is None else int(got)

    async def parts_put(self, key: str, part: str, value: Any) -> None:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        db = self._db()
        with self._errors():
            await db.hset(f"{self.prefix}parts:{key}", part, text)

    async def parts_get(self, key: str) -> dict[str, Any]:
        db = self._db()
        with self._errors():
            rows: Any = await db.hgetall(f"{self.prefix}parts:{key}")
        return {p: json.loads(v) for p, v in rows.items()}

    async def parts_drop(self, key: str, parts: list[str]) -> None:
        if not parts:
            return
        db = self._db()
        with self._errors():
            await db.hdel(f"{self.prefix}parts:{key}", *parts)


def _open(cfg: StateConfig, base_dir: Path, feedback_ttl: float) -> Store:
    if not cfg.url:
        raise StoreError("state.url: required for store: redis (e.g. redis://127.0.0.1:6379/0)")
    # duplicate detection must outlive the window in which rewards are accepted
    return RedisStore(cfg.url, dedup_ttl=max(7200.0, 2 * feedback_ttl))


KIND = StoreKind(
    _open,
    (
        Param(
            "url",
            "Redis server, required with `store: redis`.",
            type="string",
            required=True,
            pattern=r"(redis|rediss|unix)://\S+",
            what="a redis:// URL",
            example="redis://127.0.0.1:6379/0",
            doc_type="redis:// URL",
        ),
    ),
    help="shared by replicas",
)
