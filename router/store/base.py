"""The state-store interface: rollout state, learned statistics, audit log and accepted feedback.

One small async interface with `memory`, `sqlite` (embedded default) and `redis` implementations,
so callers never know which one they talk to. Values are JSON-able documents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from policies.base import BUCKETS
from policies.params import Param
from policies.spec import StateConfig
from router.errors import ModelrouterError

# a document written when a store opens and by the health probe: proves that writes work
PROBE_KEY = "store:probe"


class StoreError(ModelrouterError):
    """The store cannot be used (unopenable file, unreachable server, closed)."""


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One accepted reward, durably stored before the feedback endpoint answers 202."""

    token_id: str  # unique per decision (the token's nonce); duplicates are rejected
    route: str
    arm: str
    reward: float
    decided_at: float  # unix seconds the decision was made
    received_at: float  # unix seconds the reward arrived
    context: tuple[float, ...] | None = None  # contextual features, when the route has them
    label: str | None = None  # context label for per-context regret
    seq: int = 0  # store-assigned, increasing; 0 before it is stored
    bucket: int | None = None  # sticky bucket of the decision (the A/B unit of analysis)
    metrics: dict[str, float] | None = None  # guardrail metrics sent with the reward


def record_extra(r: FeedbackRecord) -> dict[str, Any] | None:
    """The optional fields as one JSON-able object (stores keep them in one column)."""
    out: dict[str, Any] = {}
    if r.bucket is not None:
        out["bucket"] = int(r.bucket)
    if r.metrics:
        out["metrics"] = {str(k): float(v) for k, v in r.metrics.items()}
    return out or None


def extra_fields(extra: Any) -> tuple[int | None, dict[str, float] | None]:
    """(bucket, metrics) from what `record_extra` stored (None or a malformed value: none)."""
    if not isinstance(extra, dict):
        return None, None
    b = extra.get("bucket")
    bucket = int(b) if isinstance(b, int) and not isinstance(b, bool) else None
    m = extra.get("metrics")
    metrics = (
        {str(k): float(v) for k, v in m.items() if isinstance(v, int | float)}
        if isinstance(m, dict)
        else None
    )
    return bucket, metrics or None


@dataclass(frozen=True, slots=True)
class Fence:
    """A lease as held when a write was prepared: the write applies only while `holder` still
    holds lease `name` with fencing token `token` (a deposed leader's late write is refused)."""

    name: str
    holder: str
    token: int


MARK_FIELD = "#mark"  # the field of a sums hash holding its fold mark (see `Store.merge`)


@dataclass(frozen=True, slots=True)
class Merged:
    """What `Store.merge` answers: the totals after the merge, the fold mark (-1 when the sums
    were never written), whether the conditional part was added, whether the call was refused
    because its `fence` node was declared dead, and the meta fields (`#flushed:NODE`: when that
    node last flushed; `#dead:NODE`: declared dead)."""

    totals: dict[str, np.ndarray[Any, np.dtype[np.float64]]]
    mark: int
    applied: bool
    fenced: bool = False
    meta: dict[str, float] = field(default_factory=dict)


def sum_fields(arrays: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Flat store fields ``name#i`` of named float arrays, zeros left out; rejects non-finite
    values (a NaN added to a shared total would poison every process)."""
    out: list[tuple[str, float]] = []
    for name, arr in arrays.items():
        if "#" in name:
            raise ValueError(f"sum name {name!r} must not contain '#'")
        for i, v in enumerate(np.asarray(arr, dtype=float).ravel().tolist()):
            if v != 0.0:
                if not math.isfinite(v):
                    raise ValueError(f"sum {name}[{i}] is not finite: {v}")
                out.append((f"{name}#{i}", v))
    return out


# one unit group's increments after `unit_cells`: distinct buckets (sorted), dN, dS
Cells = tuple[
    np.ndarray[Any, np.dtype[np.int64]],
    np.ndarray[Any, np.dtype[np.float64]],
    np.ndarray[Any, np.dtype[np.float64]],
]


def unit_cells(units: Mapping[str, Any] | None) -> dict[str, Cells]:
    """Sparse per-bucket increments (`policies.units.Units`: rows of bucket, dN, dS per group)
    checked and combined per bucket; rejects a bad group name, bucket or a non-finite value
    (like `sum_fields`: one NaN in a shared total would poison every process)."""
    out: dict[str, Cells] = {}
    for group, rows in (units or {}).items():
        if "#" in group:
            raise ValueError(f"unit group {group!r} must not contain '#'")
        r = np.asarray(rows, dtype=float).reshape(-1, 3)
        if not bool(np.isfinite(r).all()):
            raise ValueError(f"unit group {group}: a non-finite increment")
        b = r[:, 0]
        if bool(((b < 0) | (b >= BUCKETS) | (b != np.floor(b))).any()):
            raise ValueError(f"unit group {group}: bucket out of range 0..{BUCKETS - 1}")
        idx, inv = np.unique(b.astype(np.int64), return_inverse=True)
        dn, ds = np.zeros(len(idx)), np.zeros(len(idx))
        np.add.at(dn, inv, r[:, 1])
        np.add.at(ds, inv, r[:, 2])
        keep = (dn != 0.0) | (ds != 0.0)
        if bool(keep.any()):
            out[group] = (idx[keep], dn[keep], ds[keep])
    return out


def group_fields(group: str, inc: np.ndarray[Any, np.dtype[np.float64]]) -> list[tuple[str, float]]:
    """The `name#i` fields a group's dense-sum increments go to (zeros left out)."""
    return [(f"{group}#{i}", float(v)) for i, v in enumerate(inc.tolist()) if v != 0.0]


def merged_from_fields(
    fields: Iterable[tuple[str, Any]], applied: bool, fenced: bool = False
) -> Merged:
    """Reassemble `name#i` fields into arrays (missing indexes are zeros)."""
    cells: dict[str, dict[int, float]] = {}
    meta: dict[str, float] = {}
    mark = -1
    for key, value in fields:
        if key == MARK_FIELD:
            mark = int(float(value))
            continue
        if key.startswith("#"):
            meta[key] = float(value)
            continue
        name, sep, idx = key.rpartition("#")
        if not sep or not idx.isdigit():
            continue
        cells.setdefault(name, {})[int(idx)] = float(value)
    totals: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
    for name, c in cells.items():
        arr = np.zeros(max(c) + 1)
        for i, v in c.items():
            arr[i] = v
        totals[name] = arr
    return Merged(totals, mark, applied, fenced, meta)


class Store(Protocol):
    """Durable state behind one interface. Every method is safe to call concurrently."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # documents: rollout state ("rollout:{route}"), learned stats ("policy:{route}"), secrets, ...
    async def get(self, key: str) -> Any | None: ...

    async def put(self, key: str, value: Any) -> None: ...

    # store `value` unless `key` exists; answer what it holds afterwards (processes racing to
    # create one document, such as the generated feedback secret, all end with the same one)
    async def put_if_absent(self, key: str, value: Any) -> Any: ...

    # audit log: append-only, newest last
    async def audit_append(self, entry: dict[str, Any]) -> None: ...

    async def audit_list(
        self, limit: int = 200, route: str | None = None
    ) -> list[dict[str, Any]]: ...

    # feedback: durable before return; returns, per record, True if stored or False if its
    # token_id was already stored (duplicate). Records older than `ttl` may be pruned.
    async def feedback_add(self, records: list[FeedbackRecord]) -> list[bool]: ...

    # records of a route with seq > after_seq, oldest first (replay after a restart)
    async def feedback_since(self, route: str, after_seq: int) -> list[FeedbackRecord]: ...

    # additive learning state (`policies.merge`), all in one atomic step: refuse everything if
    # `fence` is a node declared dead (`#dead:NODE`); else add `add` to the sums under `key`, set
    # `#flushed:N` = `stamp` for each of `nodes`, and, if the stored mark equals `expect` (-1:
    # never set), also add `fold`, set the mark to `mark` and declare `dead` nodes dead. Answers
    # the totals after it. `merge(key, {})` only reads. `units` (with `add`) and `fold_units`
    # (with `fold`) are sparse per-bucket increments {group: {bucket: (dN, dS)}}: added to
    # per-bucket totals kept beside the sums (never read back), while the change of the squares
    # they imply goes to the group's six dense sums (`policies.units.unit_increments`), all in
    # the same atomic step.
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
    ) -> Merged: ...

    # forget records received before `older_than`; a token stays a duplicate at least until
    # its record is pruned, so callers prune only records older than the feedback TTL
    async def feedback_prune(self, older_than: float) -> int: ...

    # leases: at most one holder per name. Take the lease (free or expired) or renew it (held by
    # `holder`) for `ttl` seconds; returns the fencing token while held, None when another holder
    # has it. The token grows every time the lease changes hands, never on a renewal.
    async def lease_acquire(self, name: str, holder: str, ttl: float) -> int | None: ...

    # give the lease up early (clean shutdown) if `holder` still holds it
    async def lease_release(self, name: str, holder: str) -> None: ...

    # versioned documents (compare-and-set; a separate key space from get/put). Returns
    # (version, document) when the stored version is greater than `newer_than`, else None, so a
    # poll of an unchanged document moves no data. Versions start at 1.
    async def vget(self, key: str, newer_than: int = 0) -> tuple[int, Any] | None: ...

    # write `value` only if the stored version is `expected` (0: the key is absent) and, with a
    # fence, the fence's lease is still held by its holder with its token. Returns the new
    # version, or None when either condition failed (nothing was written).
    async def vput(
        self, key: str, value: Any, expected: int, fence: Fence | None = None
    ) -> int | None: ...

    # parts: one JSON document per writer under a key (each process's running totals of the
    # current analysis window); a reader sums them. parts_put replaces that writer's part.
    async def parts_put(self, key: str, part: str, value: Any) -> None: ...

    async def parts_get(self, key: str) -> dict[str, Any]: ...

    async def parts_drop(self, key: str, parts: list[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreKind:
    """One ``state.store`` choice, declared by its module and registered in `router.store`.

    ``open(cfg, base_dir, feedback_ttl)`` builds the (not yet opened) store; ``params`` are the
    ``state`` keys it reads (each a field of `StateConfig`); ``help`` explains the choice.
    """

    open: Callable[[StateConfig, Path, float], Store]
    params: tuple[Param, ...] = ()
    help: str = ""
