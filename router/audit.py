"""The audit log: who did what, when and why, for admin actions and automatic transitions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from router.store.base import Store

log = logging.getLogger("modelrouter.audit")


class Audit:
    """Appends entries to the store and logs each at INFO."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def record(
        self, route: str | None, action: str, actor: str, reason: str | None, **details: Any
    ) -> dict[str, Any]:
        """Append one entry; `actor` is "admin", "controller" or "reload"."""
        entry: dict[str, Any] = {
            "ts": self._clock(),
            "route": route,
            "action": action,
            "actor": actor,
            "reason": reason,
        }
        entry.update(details)
        log.info("audit route=%s action=%s actor=%s reason=%s", route, action, actor, reason or "-")
        await self._store.audit_append(entry)
        return entry

    async def list(self, limit: int = 200, route: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` entries (of one route, when given), oldest first."""
        return await self._store.audit_list(limit, route)
