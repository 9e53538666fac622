"""Wiring of one router: store, metrics, audit and Runtime from a Config, in one call.

Every place that needs a live Runtime (the server, the tests, the benchmark) goes through
`open_runtime`, so adding a service touches this module only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from router.audit import Audit
from router.metrics import Metrics
from router.runtime import Runtime
from router.store import open_store
from router.store.health import MonitoredStore

if TYPE_CHECKING:
    import numpy as np
    from prometheus_client import CollectorRegistry

    from policies.spec import Config
    from router.store.base import Store

__all__ = ["close_runtime", "open_runtime"]


async def open_runtime(
    config: Config,
    *,
    config_path: str | Path | None = None,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    rng: np.random.Generator | None = None,
) -> Runtime:
    """Open the configured store (unless `store` is given, already open), build and start a Runtime.

    A store opened here is checked (a probe write: StoreError if it cannot be used) and watched
    while the router runs (`router.store.health.MonitoredStore`).

    `registry` defaults to a fresh CollectorRegistry (one per router, so tests never share
    series); `clock` stamps tokens and audit entries; `rng` seeds every policy.
    Relative sqlite paths resolve against the config file's directory (the cwd without one).
    """
    owned = store is None
    metrics = Metrics(registry)
    if store is None:
        base_dir = Path(config_path).resolve().parent if config_path else Path.cwd()
        inner = open_store(config.state, base_dir, feedback_ttl=config.feedback.ttl)
        # failures at run time turn /readyz 503 and modelrouter_store_up 0 (router.store.health)
        monitored = MonitoredStore(
            inner, where=getattr(inner, "where", config.state.store), monitor=metrics
        )
        await monitored.open()  # StoreError: `serve` prints it as one line and exits 2
        monitored.start_probe()
        store = monitored
    try:
        return await Runtime.create(
            config,
            store=store,
            metrics=metrics,
            audit=Audit(store, clock),
            config_path=config_path,
            clock=clock,
            rng=rng,
        )
    except BaseException:
        if owned:
            await store.close()
        raise


async def close_runtime(runtime: Runtime) -> None:
    """Stop the runtime (engines persist their state), then close its store."""
    await runtime.close()
    await runtime.store.close()
