"""State stores behind one interface; `open_store` picks the one the config names.

Each store module declares its `KIND` (how to build it, the `state` keys it reads); `STORE_KINDS`
registers them, and the config validator and README reference read the same registry.
"""

from __future__ import annotations

from pathlib import Path

from policies.params import Param
from policies.spec import StateConfig
from router.store import memory, redis, sqlite
from router.store.base import FeedbackRecord, Store, StoreError, StoreKind
from router.store.memory import MemoryStore
from router.store.redis import RedisStore
from router.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_STORE",
    "LEASE",
    "STORE_KINDS",
    "FeedbackRecord",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreKind",
    "open_store",
]

# `state.store` values, in the order errors and the reference list them
STORE_KINDS: dict[str, StoreKind] = {
    "sqlite": sqlite.KIND,
    "redis": redis.KIND,
    "memory": memory.KIND,
}
DEFAULT_STORE = "sqlite"

# `state.lease`, read for every store kind: one process drives each rollout while it renews its
# lease; when it dies, another takes over at most this long after its last renewal
LEASE = Param(
    "lease",
    "How long a rollout's driving process keeps its lease without renewing it: the takeover "
    "time when it dies.",
    type="duration",
    default=10.0,
)


def open_store(cfg: StateConfig, base_dir: Path, *, feedback_ttl: float = 3600.0) -> Store:
    """Build (not yet open) the configured store; relative sqlite paths resolve against base_dir."""
    kind = STORE_KINDS.get(cfg.store)
    if kind is None:
        raise StoreError(
            f"state.store: unknown store {cfg.store!r}; allowed: {', '.join(STORE_KINDS)}"
        )
    return kind.open(cfg, base_dir, feedback_ttl)
