"""MonitoredStore: failing calls mark the store failing (metric, /readyz reason), writes heal it."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from router.metrics import Metrics
from router.store.base import PROBE_KEY, StoreError
from router.store.health import MonitoredStore
from router.store.sqlite import SqliteStore


async def test_failures_and_recovery_show_in_problem_and_metrics(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    inner = SqliteStore(tmp_path / "s.db")
    store = MonitoredStore(inner, where=inner.where, monitor=metrics)
    await store.open()
    assert store.problem is None
    assert reg.get_sample_value("modelrouter_store_up") == 1.0
    await store.put("k", {"v": 1})
    assert await store.get("k") == {"v": 1}

    await inner.close()  # the database goes away underneath the router
    with pytest.raises(StoreError):
        await store.put("k", {"v": 2})
    assert store.problem is not None and store.problem.startswith("put: ")
    assert reg.get_sample_value("modelrouter_store_up") == 0.0
    assert reg.get_sample_value("modelrouter_store_errors_total", {"operation": "put"}) == 1.0
    assert not await store.probe()
    assert store.problem.startswith("probe: ")

    await inner.open()
    with pytest.raises(StoreError):  # reads keep it failing...
        await MonitoredStore(SqliteStore(tmp_path / "x.db"), where="x").get("k")
    assert await store.get("k") == {"v": 1}
    assert store.problem is not None  # ...a successful read proves nothing about writes
    assert await store.probe()
    assert store.problem is None
    assert reg.get_sample_value("modelrouter_store_up") == 1.0
    assert (await store.get(PROBE_KEY))["ts"] > 0
    await store.close()
