"""The engine seam: one engine per route drives its policy, observes outcomes and reports status.

Engines are built by `ENGINES[kind](route_cfg, services)`; `router/runtime.py` owns their life.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from policies.base import Context, Decision
from router.errors import ActionError as ActionError  # re-exported: engines raise it

if TYPE_CHECKING:
    import aiohttp

    from policies.spec import BackendConfig, Config, RouteConfig
    from router.audit import Audit
    from router.metrics import Metrics
    from router.store.base import Store


@dataclass
class Services:
    """What engines may use; injected so tests can swap the clock, the rng or the store."""

    config: Config
    store: Store
    metrics: Metrics
    audit: Audit
    backends: Mapping[str, BackendConfig]
    clock: Callable[[], float] = time.time
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    # set once the event loop runs (router/runtime.py opens it); engines that call out use it
    http: aiohttp.ClientSession | None = None


class Engine(Protocol):
    """What the runtime needs of a route's engine (see docs/ARCHITECTURE.md)."""

    kind: str
    learns: bool

    def choose(self, ctx: Context, healthy: Callable[[str], bool] | None = None) -> Decision: ...

    def observe(
        self, arm: str, status: int, latency: float, error: str | None, ctx: Context | None = None
    ) -> None: ...

    def shares(self) -> dict[str, float]: ...

    def status(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def action(
        self, name: str, reason: str | None, actor: str, params: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    def feedback(self, arm: str, reward: float, ctx: Context) -> None: ...


EngineFactory = Callable[["RouteConfig", Services], Engine]
