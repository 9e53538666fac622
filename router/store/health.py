"""A store that knows whether it works: failures at run time turn `/readyz` 503 and a metric 0.

`MonitoredStore` wraps any store. Every call that fails marks it failing (with the error, for
`/readyz` and the log); a write that succeeds, or the probe write it makes every few seconds,
marks it working again. Proxying never waits on it: only the admin side and the learning and
rollout engines call the store, and they already carry on (or retry) when a call fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from router.store.base import PROBE_KEY, FeedbackRecord, Fence, Merged, Store

__all__ = ["PROBE_EVERY", "PROBE_EVERY_FAILING", "MonitoredStore", "StoreMonitor"]

log = logging.getLogger("modelrouter.store")

T = TypeVar("T")

PROBE_EVERY = 5.0  # seconds between probe writes while the store works
PROBE_EVERY_FAILING = 1.0  # ... and while it fails, so recovery shows quickly
PROBE_TIMEOUT = 5.0


class StoreMonitor(Protocol):
    """What the metrics owner offers: store up/down and errors by operation."""

    def set_store_up(self, up: bool) -> None: ...

    def store_error(self, operation: str) -> None: ...


class MonitoredStore:
    """The Store interface over `inner`, tracking whether the store works (`problem`)."""

    def __init__(
        self,
        inner: Store,
        *,
        where: str,
        monitor: StoreMonitor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.where = where  # the store as the log and /readyz name it: path or redacted URL
        self.problem: str | None = None  # the last error while failing; None while it works
        self._monitor = monitor
        self._clock = clock
        self._probe: asyncio.Task[None] | None = None

    # ---- health -------------------------------------------------------------------------------

    def _failed(self, operation: str, e: Exception) -> None:
        text = " ".join(str(e).split())[:300] or type(e).__name__
        if self._monitor is not None:
            self._monitor.store_error(operation)
        if self.problem is None:
            log.error(
                "state store %s failing (%s: %s); /readyz answers 503 until it works again, "
                "proxying goes on",
                self.where,
                operation,
                text,
            )
            if self._monitor is not None:
                self._monitor.set_store_up(False)
        self.problem = f"{operation}: {text}"

    def _worked(self) -> None:
        if self.problem is not None:
            self.problem = None
            log.warning("state store %s works again", self.where)
            if self._monitor is not None:
                self._monitor.set_store_up(True)

    async def _call(self, operation: str, aw: Awaitable[T], write: bool) -> T:
        try:
            result = await aw
        except Exception as e:
            self._failed(operation, e)
            raise
        if write:
            self._worked()
        return result

    async def probe(self) -> bool:
        """Write the probe document once; True when the store took it."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self._call("probe", self.inner.put(PROBE_KEY, {"ts": self._clock()}), True)
        except TimeoutError:
            self._failed("probe", TimeoutError(f"no answer within {PROBE_TIMEOUT:g}s"))
            return False
        except Exception:
            return False
        return True

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY if self.problem is None else PROBE_EVERY_FAILING)
            await self.probe()

    def start_probe(self) -> None:
        """Probe the store in the background until `close`."""
        if self._probe is None:
            self._probe = asyncio.create_task(self._probe_loop(), name="store-probe")

    # ---- the Store interface ----------------------------------------------------------------

    async def open(self) -> None:
        await self.inner.open()
        if self._monitor is not None:
            self._monitor.set_store_up(True)

    async def close(self) -> None:
        task, self._probe = self._probe, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.inner.close()

    async def get(self, key: str) -> Any | None:
        return await self._call("get", self.inner.get(key), False)

    async def put(self, key: str, value: Any) -> None:
        await self._call("put", self.inner.put(key, value), True)

    async def put_if_absent(self, key: str, value: Any) -> Any:
        return await self._call("put_if_absent", self.inner.put_if_absent(key, value), True)

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
        aw = self.inner.merge(
            key,
            add,
            fold,
            expect,
            mark,
            nodes=nodes,
            stamp=stamp,
            fence=fence,
            dead=dead,
            units=units,
            fold_units=fold_units,
        )
        return await self._call("merge", aw, True)

    async def audit_append(self, entry: dict[str, Any]) -> None:
        await self._call("audit_append", self.inner.audit_append(entry), True)

    async def audit_list(self, limit: int = 200, route: str | None = None) -> list[dict[str, Any]]:
        return await self._call("audit_list", self.inner.audit_list(limit, route), False)

    async def feedback_add(self, records: list[FeedbackRecord]) -> list[bool]:
        return await self._call("feedback_add", self.inner.feedback_add(records), True)

    async def feedback_since(self, route: str, after_seq: int) -> list[FeedbackRecord]:
        return await self._call(
            "feedback_since", self.inner.feedback_since(route, after_seq), False
        )

    async def feedback_prune(self, older_than: float) -> int:
        return await self._call("feedback_prune", self.inner.feedback_prune(older_than), True)

    async def lease_acquire(self, name: str, holder: str, ttl: float) -> int | None:
        return await self._call("lease_acquire", self.inner.lease_acquire(name, holder, ttl), True)

    async def lease_release(self, name: str, holder: str) -> None:
        await self._call("lease_release", self.inner.lease_release(name, holder), True)

    async def vget(self, key: str, newer_than: int = 0) -> tuple[int, Any] | None:
        return await self._call("vget", self.inner.vget(key, newer_than), False)

    async def vput(
        self, key: str, value: Any, expected: int, fence: Fence | None = None
    ) -> int | None:
        return await self._call("vput", self.inner.vput(key, value, expected, fence), True)

    async def parts_put(self, key: str, part: str, value: Any) -> None:
        await self._call("parts_put", self.inner.parts_put(key, part, value), True)

    async def parts_get(self, key: str) -> dict[str, Any]:
        return await self._call("parts_get", self.inner.parts_get(key), False)

    async def parts_drop(self, key: str, parts: list[str]) -> None:
        await self._call("parts_drop", self.inner.parts_drop(key, parts), True)
