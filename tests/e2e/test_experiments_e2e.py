"""Issue 10 through `modelrouter serve`: a sticky A/B test analysed per user (the bucket rides
in the decision token), lifts with intervals and guardrails in status, CLI and metrics."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import HEAD, Router
from tests.e2e.helpers import cli, wait_status
from tests.e2e.test_learning_e2e import wait_metric

pytestmark = pytest.mark.e2e

FEEDBACK = "/_modelrouter/feedback"


def config(a_url: str, b_url: str) -> str:
    return (
        HEAD
        + f"""
backends:
  a: {{url: "{a_url}", timeout: 5s}}
  b: {{url: "{b_url}", timeout: 5s}}
routes:
  - name: rank
    match: {{path_prefix: /rank}}
    sticky: {{key: "cookie:uid"}}
    policy:
      kind: ab_test
      arms: {{A: a, B: b}}
      test: {{method: msprt, min_samples: 50}}
      guardrails:
        - {{metric: error_rate, max: 0.05}}
        - {{metric: reward, name: revenue, min: 0.5}}
"""
    )


async def test_sticky_ab_test_by_user_with_guardrails(upstreams: Any, router: Any) -> None:
    a = await upstreams("a")
    b = await upstreams("b", fail_rate=0.25)  # every 4th answer of B is a 500
    r: Router = router(config(a.url, b.url))
    await r.wait_ready()
    rng = random.Random(5)
    users = 120
    answered = 0
    async with aiohttp.ClientSession() as s:
        for u in range(users):
            for _ in range(4):
                async with s.post(
                    r.url + "/rank", json={"q": "boots"}, cookies={"uid": f"user{u}"}
                ) as resp:
                    await resp.read()
                    token = resp.headers.get("x-modelrouter-decision")
                    backend = resp.headers.get("x-modelrouter-backend")
                if resp.status != 200 or token is None:
                    continue
                answered += 1
                reward = 1.0 if rng.random() < (0.2 if backend == "a" else 0.4) else 0.0
                body = {"decision": token, "reward": reward, "metrics": {"revenue": 1.0}}
                async with s.post(r.url + FEEDBACK, json=body) as fb:
                    assert fb.status == 202, await fb.text()
        # a metric the route has no guardrail for is refused, naming the known ones
        async with s.post(r.url + "/rank", cookies={"uid": "user0"}) as resp:
            token = resp.headers["x-modelrouter-decision"]
        body = {"decision": token, "reward": 1, "metrics": {"latency_ms": 3}}
        async with s.post(r.url + FEEDBACK, json=body) as fb:
            assert fb.status == 422 and "revenue" in await fb.text()

    def ready(st: dict[str, Any]) -> bool:
        t = st.get("test") or {}
        n = sum(x["n"] for x in (t.get("arms") or {}).values())
        g = ((t.get("guardrails") or {}).get("arms") or {}).get("B") or {}
        return n == answered and bool(g.get("failed"))

    st = await wait_status(r, "rank", ready, "per-user results with B failing its guardrail")
    t = st["test"]
    assert st["unit"] == "user" and t["unit"] == "user"
    units = sum(x["units"] for x in t["arms"].values())
    assert 100 <= units <= users, units  # users (a few share a sticky bucket), not requests
    c = t["comparisons"]["B"]
    assert c["interval"] == "confidence_sequence" and c["diff_low"] <= c["diff"] <= c["diff_high"]
    assert c["lift"] is not None and c["lift_low"] is not None
    checks = {x["guardrail"]: x for x in t["guardrails"]["arms"]["B"]["checks"]}
    assert checks["error_rate"]["failed"] and not checks["revenue"]["failed"]
    assert t["winner"] != "B"

    code, out, err = await cli("status", "rank", "--admin", r.admin)
    assert code == 0, err
    assert "unit of analysis: users" in out and "B vs A" in out and "FAILED" in out

    # metrics follow on the learning tick (every second)
    lift = await wait_metric(
        r, "modelrouter_experiment_lift", route="rank", arm="B", bound="estimate"
    )
    assert lift == pytest.approx(c["lift"], rel=0.5)
    failed = await wait_metric(
        r,
        "modelrouter_experiment_guardrail_failed",
        1.0,
        route="rank",
        arm="b",
        guardrail="error_rate",
    )
    assert failed == 1.0
