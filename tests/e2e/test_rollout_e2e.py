"""Rollouts through `modelrouter serve`: canary steps, rollback, infra validation, manual gate,
abort, Prometheus, durability across SIGKILL and blue-green, seen through the data plane, the
admin API, /metrics and the CLI as a user sees them."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import HEAD, Router, Upstream
from tests.e2e.helpers import (
    PREDICT,
    Traffic,
    admin_post,
    cli,
    get_audit,
    get_metrics,
    get_status,
    metric,
    sequential,
    wait_status,
)
from tests.helpers import consistently, eventually

pytestmark = pytest.mark.e2e


def live_hits(up: Upstream) -> int:
    """Requests the upstream got on the prediction path (not validation or health)."""
    return sum(n for path, n in up.hits.items() if path.endswith(":predict"))


def canary_config(
    v1: Upstream,
    v2: Upstream,
    policy: str,
    extra_backends: str = "",
    extra_routes: str = "",
) -> str:
    """Route `clf` (overrides x-user-group: canary -> v2) with a canary `policy` flow mapping."""
    return (
        HEAD
        + f"""
backends:
  v1: {{url: "{v1.url}", version: 1.0.0, timeout: 5s}}
  v2: {{url: "{v2.url}", version: 1.1.0, timeout: 5s}}
{extra_backends}
routes:
  - name: clf
    match: {{path_prefix: /v1/models/clf}}
    overrides:
      - when: {{header: {{x-user-group: canary}}}}
        backend: v2
    policy: {policy}
{extra_routes}"""
    )


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda st: st.get("phase") in phases


# ---- canary --------------------------------------------------------------------------------------


async def test_healthy_candidate_walks_the_steps_to_promoted(upstreams: Any, router: Any) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [20, 50, 100], interval: 1s, "
        "analysis: {min_requests: 20, failure_limit: 1, checks: [{metric: error_rate, max: 0.05}, "
        "{metric: latency_p99, max: 2s}]}}"
    )
    r: Router = router(canary_config(v1, v2, policy))
    await r.wait_ready()
    url = r.url + PREDICT
    seen_steps: set[int] = set()

    def promoted(st: dict[str, Any]) -> bool:
        if st.get("phase") == "progressing":
            seen_steps.add(st["step"])
        return st.get("phase") == "promoted"

    async with Traffic(url) as traffic:
        st = await wait_status(r, "clf", promoted, "the healthy canary to be promoted")
    assert traffic.codes.keys() == {200}, traffic.codes
    assert traffic.backends["v2"] > 0
    assert st["shares"] == {"v1": 0.0, "v2": 1.0}
    assert st["blessed"]["ok"] is True and st["blessed"]["backend"] == "v2"
    passes = [a for a in st["analysis"] if a["outcome"] == "pass"]
    assert [a["step"] for a in passes] == [0, 1], st["analysis"]
    assert not any(a["outcome"] == "fail" for a in st["analysis"])
    assert "error_rate 0 ok (max 0.05)" in passes[0]["reasons"][0], passes[0]
    assert seen_steps <= {0, 1}

    backends, codes = await sequential(url, 100)
    assert codes == {200: 100}
    assert set(backends) == {"v2"}

    code, out, err = await cli("status", "clf", "--admin", r.admin)
    assert code == 0, err
    assert "promoted" in out and "v2" in out, out
    code, out, err = await cli("status", "clf", "--admin", r.admin, "--json")
    assert code == 0, err
    assert json.loads(out)["phase"] == "promoted"

    text = await get_metrics(r)
    assert metric(text, "modelrouter_rollout_phase", route="clf", phase="promoted") == 1.0
    assert metric(text, "modelrouter_rollout_phase", route="clf", phase="progressing") == 0.0
    assert metric(text, "modelrouter_traffic_share", route="clf", backend="v2") == 1.0
    actions = [e["action"] for e in await get_audit(r, "clf")]
    assert "blessed" in actions and "promoted" in actions, actions


async def test_failing_candidate_is_rolled_back_with_value_against_limit(
    upstreams: Any, router: Any
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2", fail_rate=0.3)
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [30, 60, 100], interval: 1s, "
        "analysis: {min_requests: 20, failure_limit: 1, checks: [{metric: error_rate, max: 0.05}]}}"
    )
    r: Router = router(canary_config(v1, v2, policy))
    await r.wait_ready()
    url = r.url + PREDICT
    async with Traffic(url):
        st = await wait_status(r, "clf", phase_is("rolled_back", "promoted"), "a rollback")
    assert st["phase"] == "rolled_back", st
    m = re.search(r"error_rate ([0-9.]+) > max 0\.05 over (\d+) requests", st["reason"])
    assert m is not None, st["reason"]
    assert 0.15 < float(m.group(1)) < 0.45, st["reason"]
    assert int(m.group(2)) >= 20
    assert st["shares"] == {"v1": 1.0, "v2": 0.0}
    assert st["analysis"][-1]["outcome"] == "fail"

    # afterwards everything goes to stable, overrides to the rolled-back candidate included
    before = live_hits(v2)
    backends, codes = await sequential(url, 100)
    assert codes == {200: 100} and set(backends) == {"v1"}
    backends, _ = await sequential(url, 20, headers={"x-user-group": "canary"})
    assert set(backends) == {"v1"}
    assert live_hits(v2) == before

    entries = [e for e in await get_audit(r, "clf") if e["action"] == "rolled_back"]
    assert len(entries) == 1, entries
    e = entries[0]
    assert e["actor"] == "controller"
    assert e["from"] == "progressing" and e["to"] == "rolled_back"
    assert re.search(r"error_rate [0-9.]+ > max 0\.05", e["reason"]), e

    text = await get_metrics(r)
    assert metric(text, "modelrouter_rollout_phase", route="clf", phase="rolled_back") == 1.0
    assert metric(text, "modelrouter_rollout_phase", route="clf", phase="progressing") == 0.0
    assert metric(text, "modelrouter_traffic_share", route="clf", backend="v1") == 1.0


async def test_candidate_failing_infra_validation_never_gets_a_live_request(
    upstreams: Any, router: Any, closed_port: int
) -> None:
    # v2 answers 500 (slowly, so live traffic runs during validation); `dead` is a closed port
    v1, v2 = await upstreams("v1"), await upstreams("v2", fail_rate=1.0, delay=0.3)
    closed = closed_port
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [50, 100], interval: 1s, "
        "validate: {requests: [{method: GET, path: /v1/models/clf/ready, expect_status: 200}], "
        "timeout: 2s, attempts: 3}, analysis: {min_requests: 5}}"
    )
    other = """\
  - name: other
    match: {path_prefix: /v1/models/other}
    overrides:
      - when: {header: {x-user-group: canary}}
        backend: dead
    policy: {kind: canary, stable: v1, candidate: dead, steps: [50, 100], interval: 1s,
             validate: {timeout: 1s, attempts: 2}}
"""
    r: Router = router(
        canary_config(
            v1,
            v2,
            policy,
            extra_backends=f'  dead: {{url: "http://127.0.0.1:{closed}", timeout: 1s}}',
            extra_routes=other,
        )
    )
    await r.wait_ready()
    canary_hdr = {"x-user-group": "canary"}
    async with (
        Traffic(r.url + PREDICT, concurrency=2) as t1,
        Traffic(r.url + PREDICT, concurrency=2, headers=canary_hdr) as t2,
        Traffic(r.url + "/v1/models/other:predict", concurrency=2, headers=canary_hdr) as t3,
    ):
        st = await wait_status(r, "clf", phase_is("rolled_back", "progressing"), "validation")
        st2 = await wait_status(r, "other", phase_is("rolled_back", "progressing"), "validation")
        # some live traffic after the verdict too
        sent = t1.sent + t2.sent + t3.sent
        await eventually(lambda: t1.sent + t2.sent + t3.sent >= sent + 100, timeout=20)
    for t in (t1, t2, t3):
        assert t.codes.keys() == {200}, t.codes
        assert set(t.backends) == {"v1"}, t.backends

    assert st["phase"] == "rolled_back", st
    assert st["blessed"]["ok"] is False
    assert "infra validation of v2 failed" in st["reason"], st["reason"]
    assert "GET /v1/models/clf/ready" in st["reason"] and "status 500" in st["reason"]
    assert st["shares"] == {"v1": 1.0, "v2": 0.0}
    assert st["analysis"] == []
    # the candidate saw only the validation request, never a live one
    assert set(v2.hits) == {"/v1/models/clf/ready"}, v2.hits
    assert v2.hits["/v1/models/clf/ready"] == 3

    assert st2["phase"] == "rolled_back", st2
    assert "infra validation of dead failed" in st2["reason"], st2["reason"]
    assert "GET / -> FAIL" in st2["reason"], st2["reason"]

    entries = [e for e in await get_audit(r) if e["action"] == "validation_failed"]
    assert {e["route"] for e in entries} == {"clf", "other"}, entries
    clf_entry = next(e for e in entries if e["route"] == "clf")
    assert "status 500" in clf_entry["reason"]


async def test_manual_gate_pauses_then_cli_promote_finishes(upstreams: Any, router: Any) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [50, 100], interval: 1s, gate: manual, "
        "analysis: {min_requests: 20, failure_limit: 1, checks: [{metric: error_rate, max: 0.05}]}}"
    )
    r: Router = router(canary_config(v1, v2, policy))
    await r.wait_ready()
    url = r.url + PREDICT
    async with Traffic(url):
        st = await wait_status(
            r, "clf", phase_is("paused", "promoted", "rolled_back"), "the manual gate"
        )
        assert st["phase"] == "paused", st
        assert st["gate"] == {"mode": "manual", "waiting": True}
        assert "manual gate" in st["paused_reason"], st
        assert st["step"] == 0 and st["shares"] == {"v1": 0.5, "v2": 0.5}
        # the gate holds: still paused through more than one interval (1 s) of traffic

        async def holds() -> bool:
            st = await get_status(r, "clf")
            return st["phase"] == "paused" and st["shares"] == {"v1": 0.5, "v2": 0.5}

        await consistently(holds, duration=1.5, interval=0.1, what="the manual gate")

        code, out, err = await cli(
            "promote", "clf", "--admin", r.admin, "--reason", "dashboards look good"
        )
    assert code == 0, err
    assert "promoted" in out, out
    st = await get_status(r, "clf")
    assert st["phase"] == "promoted" and st["shares"] == {"v1": 0.0, "v2": 1.0}, st
    backends, codes = await sequential(url, 50)
    assert codes == {200: 50} and set(backends) == {"v2"}

    entries = [e for e in await get_audit(r, "clf") if e["action"] == "promote"]
    assert len(entries) == 1, entries
    assert entries[0]["reason"] == "dashboards look good"
    assert entries[0]["actor"] == "admin"
    assert entries[0]["from"] == "paused" and entries[0]["to"] == "promoted"


async def test_cli_abort_sends_everything_to_stable_within_one_request(
    upstreams: Any, router: Any
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [50, 100], interval: 1h, "
        "analysis: {min_requests: 20, checks: [{metric: error_rate, max: 0.05}]}}"
    )
    r: Router = router(canary_config(v1, v2, policy))
    await r.wait_ready()
    url = r.url + PREDICT
    await wait_status(r, "clf", phase_is("progressing"), "the first step")
    async with Traffic(url, concurrency=4) as traffic:
        await eventually(lambda: traffic.backends["v2"] >= 50, timeout=20, what="50 on v2")
        code, _, err = await cli("abort", "clf", "--admin", r.admin, "--reason", "pager went off")
        assert code == 0, err
        # the very next requests (while the background load keeps going) all go to stable
        backends, codes = await sequential(url, 50)
        canary_backends, _ = await sequential(url, 10, headers={"x-user-group": "canary"})
    assert codes == {200: 50}
    assert backends == ["v1"] * 50, Counter(backends)
    assert canary_backends == ["v1"] * 10
    assert traffic.codes.keys() == {200}, traffic.codes

    st = await get_status(r, "clf")
    assert st["phase"] == "rolled_back"
    assert st["shares"] == {"v1": 1.0, "v2": 0.0}
    assert "abort by admin: pager went off" in st["reason"], st["reason"]
    assert st["analysis"] == []  # abort skips analysis
    entries = [e for e in await get_audit(r, "clf") if e["action"] == "abort"]
    assert len(entries) == 1 and entries[0]["reason"] == "pager went off", entries


async def test_unreachable_prometheus_is_inconclusive_then_pauses_with_the_reason(
    upstreams: Any, router: Any, closed_port: int
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    closed = closed_port
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [50, 100], interval: 1s, "
        "analysis: {min_requests: 10, failure_limit: 1, inconclusive_limit: 3, "
        "checks: [{metric: error_rate, max: 0.05}, "
        "{metric: prometheus, query: 'sum(rate(http_errors_total[1m]))', max: 5, "
        f'url: "http://127.0.0.1:{closed}"}}]}}}}'
    )
    r: Router = router(canary_config(v1, v2, policy))
    await r.wait_ready()
    async with Traffic(r.url + PREDICT) as traffic:
        st = await wait_status(r, "clf", phase_is("paused", "promoted", "rolled_back"), "paused")
    assert traffic.backends["v2"] >= 10, traffic.backends
    assert st["phase"] == "paused", st
    # never promoted on an unreachable Prometheus; the weights are held
    assert st["step"] == 0 and st["shares"] == {"v1": 0.5, "v2": 0.5}
    assert st["failures"] == 0
    assert {a["outcome"] for a in st["analysis"]} == {"inconclusive"}, st["analysis"]
    assert "3 inconclusive analyses in a row (inconclusive_limit 3)" in st["paused_reason"]
    last = " | ".join(st["analysis"][-1]["reasons"])
    assert "prometheus" in last and "cannot reach" in last, last
    paused = [e for e in await get_audit(r, "clf") if e["action"] == "paused"]
    assert len(paused) == 1 and "inconclusive_limit 3" in paused[0]["reason"], paused
    # and the log says why, once per analysis rather than silently
    assert re.search(r"prometheus check .* is inconclusive: cannot reach", r.log()), r.log()


async def test_rollout_state_survives_sigkill_exactly(upstreams: Any, router: Any) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    # two quick steps pass, then the manual gate holds the state still (step 1, with history)
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [10, 30, 60], interval: 1s, "
        "gate: manual, analysis: {min_requests: 20, failure_limit: 2, "
        "checks: [{metric: error_rate, max: 0.05}]}}"
    )
    r: Router = router(canary_config(v1, v2, policy))
    await r.wait_ready()
    async with Traffic(r.url + PREDICT):
        await wait_status(r, "clf", phase_is("paused", "rolled_back"), "the manual gate")
    before = await get_status(r, "clf")
    assert before["phase"] == "paused" and before["step"] == 1, before
    assert before["gate"]["waiting"] is True
    assert [a["outcome"] for a in before["analysis"]][-2:] == ["pass", "pass"], before
    audit_before = await get_audit(r, "clf")

    assert r.proc is not None
    r.proc.kill()
    await asyncio.to_thread(r.proc.wait, 10)
    r.start()
    await r.wait_ready()
    after = await get_status(r, "clf")
    for key in (
        "phase",
        "step",
        "shares",
        "analysis",
        "blessed",
        "reason",
        "paused_reason",
        "failures",
        "step_started_at",
        "next_analysis_at",
        "changed_at",
        "gate",
        "steps",
    ):
        assert after[key] == before[key], (key, before[key], after[key])
    assert after["shares"] == {"v1": 0.7, "v2": 0.3}
    assert (await get_audit(r, "clf"))[: len(audit_before)] == audit_before

    # the restored rollout is live: the candidate gets its share, and promote continues it
    _, codes = await sequential(r.url + PREDICT, 20)
    assert codes == {200: 20}
    st = await admin_post(r, "/admin/routes/clf/promote", {"reason": "after restart"})
    assert st["phase"] == "progressing" and st["step"] == 2, st
    assert st["shares"] == {"v1": 0.4, "v2": 0.6}


async def test_progressing_rollout_survives_sigkill_exactly(upstreams: Any, router: Any) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    # a long interval keeps the state still; promote moves to step 1 deterministically
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [10, 25, 50, 100], interval: 1h, "
        "analysis: {min_requests: 20, checks: [{metric: error_rate, max: 0.05}]}}"
    )
    r: Router = router(canary_config(v1, v2, policy))
    await r.wait_ready()
    await wait_status(r, "clf", phase_is("progressing"), "the first step")
    await admin_post(r, "/admin/routes/clf/promote", {"reason": "go"})
    _, codes = await sequential(r.url + PREDICT, 40)
    assert codes == {200: 40}
    before = await get_status(r, "clf")
    assert before["phase"] == "progressing" and before["step"] == 1, before
    assert before["next_analysis_at"] is not None

    assert r.proc is not None
    r.proc.kill()
    await asyncio.to_thread(r.proc.wait, 10)
    r.start()
    await r.wait_ready()
    after = await get_status(r, "clf")
    for key in (
        "phase",
        "step",
        "shares",
        "analysis",
        "blessed",
        "reason",
        "failures",
        "step_started_at",
        "next_analysis_at",
        "changed_at",
        "gate",
    ):
        assert after[key] == before[key], (key, before[key], after[key])
    assert after["shares"] == {"v1": 0.75, "v2": 0.25}
    backends, _ = await sequential(r.url + PREDICT, 200)
    assert 0.1 < backends.count("v2") / 200 < 0.45, Counter(backends)


# ---- blue-green ----------------------------------------------------------------------------------


async def test_blue_green_preview_only_by_override_until_cli_switch(
    upstreams: Any, router: Any
) -> None:
    blue, green = await upstreams("blue"), await upstreams("green")
    cfg = (
        HEAD
        + f"""
backends:
  blue: {{url: "{blue.url}", version: 1.0.0}}
  green: {{url: "{green.url}", version: 2.0.0}}
routes:
  - name: web
    match: {{path_prefix: /v1/models/clf}}
    overrides:
      - when: {{header: {{x-preview: "1"}}}}
        backend: green
    policy: {{kind: blue_green, active: blue, preview: green}}
"""
    )
    r: Router = router(cfg)
    await r.wait_ready()
    url = r.url + PREDICT
    preview = {"x-preview": "1"}
    st = await wait_status(r, "web", lambda s: bool(s.get("blessed")), "preview validation")
    assert st["phase"] == "progressing" and st["blessed"]["ok"] is True, st
    assert st["active"] == "blue" and st["preview"] == "green"

    backends, codes = await sequential(url, 100)
    assert codes == {200: 100} and set(backends) == {"blue"}
    backends, _ = await sequential(url, 20, headers=preview)
    assert set(backends) == {"green"}

    async with Traffic(url, concurrency=4) as traffic:
        code, _, err = await cli("switch", "web", "--admin", r.admin, "--reason", "go live")
        assert code == 0, err
        after_switch, _ = await sequential(url, 50)
    assert traffic.codes.keys() == {200}, traffic.codes
    assert after_switch == ["green"] * 50, Counter(after_switch)
    # the preview header follows the inactive colour: blue, kept ready
    backends, _ = await sequential(url, 20, headers=preview)
    assert set(backends) == {"blue"}, Counter(backends)

    # the switch is durable: after SIGKILL and restart green still serves
    assert r.proc is not None
    r.proc.kill()
    await asyncio.to_thread(r.proc.wait, 10)
    r.start()
    await r.wait_ready()
    after_restart, _ = await sequential(url, 20)
    assert after_restart == ["green"] * 20, Counter(after_restart)

    async with Traffic(url, concurrency=4) as traffic:
        code, _, err = await cli("switch", "web", "--admin", r.admin, "--reason", "back")
        assert code == 0, err
        after_back, _ = await sequential(url, 50)
    assert traffic.codes.keys() == {200}, traffic.codes
    assert after_back == ["blue"] * 50, Counter(after_back)
    # after the switch back the preview header reaches the inactive colour again: green
    backends, _ = await sequential(url, 20, headers=preview)
    assert set(backends) == {"green"}, Counter(backends)

    st = await get_status(r, "web")
    assert st["active"] == "blue" and st["shares"] == {"blue": 1.0, "green": 0.0}, st
    switches = [e for e in await get_audit(r, "web") if e["action"] == "switch"]
    assert [e["reason"] for e in switches] == ["go live", "back"], switches
    assert [e["to"] for e in switches] == ["promoted", "rolled_back"]
