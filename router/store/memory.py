"""In-process state store: for tests and for `store: memory` (nothing survives a restart)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import BUCKETS
from policies.spec import StateConfig
from policies.units import group_increments
from router.store.base import (
    MARK_FIELD,
    Cells,
    FeedbackRecord,
    Fence,
    Merged,
    Store,
    StoreKind,
    group_fields,
    merged_from_fields,
    sum_fields,
    unit_cells,
)


def _copy(value: Any) -> Any:
    # a JSON round trip: the same documents (and the same errors) as the durable stores
    return json.loads(json.dumps(value, allow_nan=False))


class MemoryStore:
    """Dictionaries and lists behind the Store interface."""

    def __init__(self) -> None:
        self._kv: dict[str, Any] = {}
        self._audit: list[dict[str, Any]] = []
        self._feedback: list[FeedbackRecord] = []
        self._tokens: set[str] = set()
        self._seq = 0
        self._lock = asyncio.Lock()
        self._leases: dict[str, tuple[str, int, float]] = {}  # name -> holder, token, expires
        self._fences: dict[str, int] = {}
        self._vkv: dict[str, tuple[int, Any]] = {}
        self._parts: dict[str, dict[str, Any]] = {}
        self._sums: dict[str, dict[str, float]] = {}
        # per-bucket totals of unit groups, beside the sums (see `Store.merge`)
        self._units: dict[str, dict[str, np.ndarray[Any, np.dtype[np.float64]]]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get(self, key: str) -> Any | None:
        v = self._kv.get(key)
        return None if v is None else _copy(v)

    async def put(self, key: str, value: Any) -> None:
        self._kv[key] = _copy(value)

    async def put_if_absent(self, key: str, value: Any) -> Any:
        if key not in self._kv:
            self._kv[key] = _copy(value)
        return _copy(self._kv[key])

    async def audit_append(self, entry: dict[str, Any]) -> None:
        self._audit.append(_copy(entry))

    async def audit_list(self, limit: int = 200, route: str | None = None) -> list[dict[str, Any]]:
        rows = [e for e in self._audit if route is None or e.get("route") == route]
        return [_copy(e) for e in rows[-limit:]] if limit > 0 else []

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
        u_plain, u_cond = unit_cells(units), unit_cells(fold_units)
        h = self._sums.setdefault(key, {})
        cells = self._units.setdefault(key, {})
        if fence is not None and f"#dead:{fence}" in h:
            return merged_from_fields(h.items(), False, fenced=True)

        def add_units(todo: dict[str, Cells]) -> None:
            for g, (idx, dn, ds) in todo.items():
                ns = cells.get(g)
                if ns is None:
                    ns = cells[g] = np.zeros((2, BUCKETS))
                inc = group_increments(ns[0, idx], ns[1, idx], dn, ds)
                ns[0, idx] += dn
                ns[1, idx] += ds
                for f, v in group_fields(g, inc):
                    h[f] = h.get(f, 0.0) + v

        for f, v in plain:
            h[f] = h.get(f, 0.0) + v
        add_units(u_plain)
        for n in nodes:
            h[f"#flushed:{n}"] = float(stamp)
        applied = int(h.get(MARK_FIELD, -1)) == expect
        if applied:
            for f, v in cond:
                h[f] = h.get(f, 0.0) + v
            add_units(u_cond)
            h[MARK_FIELD] = float(mark)
            for n in dead:
                h[f"#dead:{n}"] = 1.0
        return merged_from_fields(h.items(), applied)

    async def feedback_add(self, records: list[FeedbackRecord]) -> list[bool]:
        out: list[bool] = []
        async with self._lock:
            for r in records:
                if r.token_id in self._tokens:
                    out.append(False)
                    continue
                self._seq += 1
                self._tokens.add(r.token_id)
                self._feedback.append(_with_seq(r, self._seq))
                out.append(True)
        return out

    async def feedback_since(self, route: str, after_seq: int) -> list[FeedbackRecord]:
        return [r for r in self._feedback if r.route == route and r.seq > after_seq]

    async def feedback_prune(self, older_than: float) -> int:
        async with self._lock:
            keep = [r for r in self._feedback if r.received_at >= older_than]
            gone = len(self._feedback) - len(keep)
            # a pruned token is past its ttl, so the feedback endpoint rejects it as expired
            self._tokens = {r.token_id for r in keep}
            self._feedback = keep
        return gone

    # ---- leases, versioned documents, parts ----

    def _held(self, name: str) -> tuple[str, int, float] | None:
        held = self._leases.get(name)
        return held if held is not None and held[2] > time.monotonic() else None

    async def lease_acquire(self, name: str, holder: str, ttl: float) -> int | None:
        held = self._held(name)
        if held is not None and held[0] != holder:
            return None
        if held is None:
            token = self._fences[name] = self._fences.get(name, 0) + 1
        else:
            token = held[1]
        self._leases[name] = (holder, token, time.monotonic() + ttl)
        return token

    async def lease_release(self, name: str, holder: str) -> None:
        held = self._held(name)
        if held is not None and held[0] == holder:
            del self._leases[name]

    async def vget(self, key: str, newer_than: int = 0) -> tuple[int, Any] | None:
        got = self._vkv.get(key)
        if got is None or got[0] <= newer_than:
            return None
        return got[0], _copy(got[1])

    async def vput(
        self, key: str, value: Any, expected: int, fence: Fence | None = None
    ) -> int | None:
        doc = _copy(value)
        version = self._vkv.get(key, (0, None))[0]
        if version != expected:
            return None
        if fence is not None:
            held = self._held(fence.name)
            if held is None or held[:2] != (fence.holder, fence.token):
                return None
        self._vkv[key] = (version + 1, doc)
        return version + 1

    async def parts_put(self, key: str, part: str, value: Any) -> None:
        self._parts.setdefault(key, {})[part] = _copy(value)

    async def parts_get(self, key: str) -> dict[str, Any]:
        return _copy(self._parts.get(key, {}))  # type: ignore[no-any-return]

    async def parts_drop(self, key: str, parts: list[str]) -> None:
        held = self._parts.get(key, {})
        for p in parts:
            held.pop(p, None)


def _with_seq(r: FeedbackRecord, seq: int) -> FeedbackRecord:
    return replace(r, seq=seq)


def _open(cfg: StateConfig, base_dir: Path, feedback_ttl: float) -> Store:
    return MemoryStore()


KIND = StoreKind(_open, help="lost on exit")
