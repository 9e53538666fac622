"""The state-store interface: rollout state, learned statistics, audit log and accepted feedback.

One small async interface with `memory`, `sqlite` (embedded default) and `redis` implementations,
so callers never know which one they talk to. Values are JSON-able documents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from policies.params import Param
from policies.spec import StateConfig
from router.errors import ModelrouterError


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


class Store(Protocol):
    """Durable state behind one interface. Every method is safe to call concurrently."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # documents: rollout state ("rollout:{route}"), learned stats ("policy:{route}"), secrets, ...
    async def get(self, key: str) -> Any | None: ...

    async def put(self, key: str, value: Any) -> None: ...

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

    # forget records received before `older_than`; a token stays a duplicate at least until
    # its record is pruned, so callers prune only records older than the feedback TTL
    async def feedback_prune(self, older_than: float) -> int: ...


@dataclass(frozen=True, slots=True)
class StoreKind:
    """One ``state.store`` choice, declared by its module and registered in `router.store`.

    ``open(cfg, base_dir, feedback_ttl)`` builds the (not yet opened) store; ``params`` are the
    ``state`` keys it reads (each a field of `StateConfig`); ``help`` explains the choice.
    """

    open: Callable[[StateConfig, Path, float], Store]
    params: tuple[Param, ...] = ()
    help: str = ""
