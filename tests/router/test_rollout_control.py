# ruff: noqa: F811  (the `rig` fixture is imported from test_rollout and named by the tests)
"""One rollout driven by one of several processes sharing a store (simulated in-process by
controllers with their own node names and their own SqliteStore connections to one file), and
the rollout's identity: a new candidate version or address is a new rollout."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from policies.spec import CanarySpec
from router.engines.rollout import ENGINES
from router.store import MemoryStore, SqliteStore, Store
from tests.helpers import eventually
from tests.router.test_rollout import Rig, canary_spec, phase, rig  # noqa: F401 (fixture)


async def process(rig: Rig, spec: CanarySpec, store: Store, node: str, **backends: Any) -> Any:
    """An engine as another process would build it: its own node name (and store handle)."""
    svc, route = rig.services(spec, store)
    svc.node = node
    if backends:
        svc.backends = {**svc.backends, **backends}
        svc.config = replace(svc.config, backends=dict(svc.backends))
    eng = ENGINES[spec.kind](route, svc)
    await eng.start()
    rig.engines.append(eng)
    return eng


async def test_two_processes_one_driver_each_step_once(rig: Rig) -> None:
    path = rig.tmp / "shared.db"
    s1, s2 = SqliteStore(path), SqliteStore(path)
    await s1.open()
    await s2.open()
    spec = canary_spec(steps=(20, 40, 60, 100), interval=0.3)
    a = await process(rig, spec, s1, "p1")
    b = await process(rig, spec, s2, "p2")

    async def both_promoted() -> bool:
        await rig.send(a, 10)
        await rig.send(b, 10)
        return phase(a) == phase(b) == "promoted"

    await eventually(both_promoted, timeout=30, interval=0.01)
    audit = await s1.audit_list()
    steps = [e["step"] for e in audit if e["action"] == "step"]
    assert steps == [1, 2], audit
    assert [e["action"] for e in audit].count("blessed") == 1
    assert len({e["node"] for e in audit}) == 1  # one process drove it
    # the leader judged both processes' traffic: its analyses saw more than its own requests
    assert a.controller.state == b.controller.state
    for e in (a, b):
        await e.stop()
        rig.engines.remove(e)
    await s1.close()
    await s2.close()


async def test_an_action_on_the_follower_reaches_the_leader(rig: Rig) -> None:
    store = MemoryStore()
    spec = canary_spec(interval=30.0)
    a = await process(rig, spec, store, "p1")
    b = await process(rig, spec, store, "p2")
    await eventually(lambda: phase(a) == phase(b) == "progressing", timeout=10)
    follower = b if a.controller.leading else a
    leader = a if follower is b else b
    assert leader.controller.leading and not follower.controller.leading
    await follower.action("pause", "look", "admin", {})
    await eventually(lambda: phase(leader) == "paused", timeout=2)
    await leader.action("abort", None, "admin", {})
    await eventually(lambda: phase(follower) == "rolled_back", timeout=2)
    assert follower.shares()["v1"] == 1.0
    actions = [e["action"] for e in await store.audit_list()]
    assert actions.count("pause") == 1 and actions.count("abort") == 1


async def test_a_new_candidate_version_or_address_is_a_new_rollout(rig: Rig) -> None:
    store = MemoryStore()
    spec = canary_spec(interval=30.0)
    eng = await process(rig, spec, store, "p1")
    await eventually(lambda: phase(eng) == "progressing", timeout=10)
    await eng.action("abort", None, "admin", {})
    await eng.stop()
    rig.engines.remove(eng)
    # the same config again: the rollout stays rolled back
    same = await process(rig, spec, store, "p1")
    assert phase(same) == "rolled_back"
    await same.stop()
    rig.engines.remove(same)
    v2 = same.services.backends["v2"]
    for changed in (replace(v2, version="1.2.0"), replace(v2, base_path="/v2")):
        new = await process(rig, spec, store, "p1", v2=changed)
        assert phase(new) == "validating", changed
        assert new.controller.identity() != same.controller.identity()
        await new.stop()
        rig.engines.remove(new)


async def test_a_state_stored_before_versioned_identities_is_kept(rig: Rig) -> None:
    store = MemoryStore()
    legacy = await process(rig, canary_spec(interval=30.0), store, "p1")
    await eventually(lambda: phase(legacy) == "progressing", timeout=10)
    state = legacy.controller.state.to_json()
    await legacy.stop()
    rig.engines.remove(legacy)
    old = MemoryStore()  # what an older router wrote: a plain document, three-key identity
    ident = {"kind": "canary", "stable": "v1", "candidate": "v2"}
    await old.put("rollout:clf", {"identity": ident, "state": state})
    eng = await process(rig, canary_spec(interval=30.0), old, "p1")
    assert phase(eng) == "progressing" and eng.controller.version == 1
