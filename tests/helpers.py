"""Polling with a deadline, for tests that wait on a background task, a tick or another process.

    await eventually(lambda: engine.phase == "promoted", timeout=20, what="the promotion")
    await consistently(lambda: status_is_paused(), duration=1.5)

The condition may be a plain or an async callable; `eventually` returns its first truthy value.
Never sleep for a fixed time and hope a tick has happened: poll for what the tick does.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["consistently", "eventually"]


async def _value(cond: Callable[[], T | Awaitable[T]]) -> T:
    got = cond()
    if inspect.isawaitable(got):
        return await got
    return got


async def eventually(
    cond: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str | None = None,
) -> T:
    """Poll `cond` until it returns something truthy and return that; fail after `timeout` s.

    The failure names `what` (or the condition's source) and the last value it returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = await _value(cond)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what or _describe(cond)} not reached within {timeout:g}s; last value: {got!r}"
            )
        await asyncio.sleep(interval)


async def consistently(
    cond: Callable[[], T | Awaitable[T]],
    *,
    duration: float,
    interval: float = 0.05,
    what: str | None = None,
) -> None:
    """Check that `cond` stays truthy for `duration` seconds, polled every `interval`.

    For claims that something does NOT happen (a gate holds, nothing is counted twice): the
    duration must cover the period in which it would happen (e.g. more than one tick).
    """
    deadline = time.monotonic() + duration
    while True:
        got = await _value(cond)
        if not got:
            raise AssertionError(f"{what or _describe(cond)} stopped holding; value: {got!r}")
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(interval)


def _describe(cond: Callable[..., object]) -> str:
    try:
        src = inspect.getsource(cond).strip()
    except (OSError, TypeError):
        return "the condition"
    return f"condition `{src[:200]}`"
