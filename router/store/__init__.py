"""State stores behind one interface; `open_store` picks the one the config names."""

from __future__ import annotations

from pathlib import Path

from policies.spec import StateConfig
from router.store.base import FeedbackRecord, Store, StoreError
from router.store.memory import MemoryStore
from router.store.redis import RedisStore
from router.store.sqlite import SqliteStore

__all__ = [
    "FeedbackRecord",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "open_store",
]


def open_store(cfg: StateConfig, base_dir: Path, *, feedback_ttl: float = 3600.0) -> Store:
    """Build (not yet open) the configured store; relative sqlite paths resolve against base_dir."""
    if cfg.store == "memory":
        return MemoryStore()
    if cfg.store == "sqlite":
        path = Path(cfg.path)
        return SqliteStore(path if path.is_absolute() else base_dir / path)
    if cfg.store == "redis":
        if not cfg.url:
            raise StoreError("state.url: required for store: redis (e.g. redis://127.0.0.1:6379/0)")
        # duplicate detection must outlive the window in which rewards are accepted
        return RedisStore(cfg.url, dedup_ttl=max(7200.0, 2 * feedback_ttl))
    raise StoreError(f"state.store: unknown store {cfg.store!r}; allowed: sqlite, redis, memory")
