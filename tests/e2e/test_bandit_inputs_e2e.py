"""Issue 10 through `modelrouter serve`: rewards outside the declared range or beyond 1e15 are
refused (422) and nothing is learned or replayed; a token issued under the previous feature
layout is refused (409) after a reload; the contextual route's status shows, per context, the
arm it is sent to with estimates and intervals; the regret estimate comes with an interval."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import HEAD, Router, fill_ports
from tests.e2e.helpers import get_status
from tests.e2e.test_learning_e2e import post_feedback

pytestmark = pytest.mark.e2e

PREDICT = "/v1/models/rec:predict"
CONVERSION = {("hot", "a"): 0.8, ("hot", "b"): 0.2, ("cold", "a"): 0.15, ("cold", "b"): 0.7}


def config(ups: dict[str, Any], values: str = "[hot, cold]") -> str:
    backends = "\n".join(f'  {n}: {{url: "{u.url}", timeout: 5s}}' for n, u in ups.items())
    return (
        HEAD
        + f"""
backends:
{backends}
routes:
  - name: rec
    match: {{path_prefix: /v1/models/rec}}
    policy:
      kind: contextual_bandit
      arms: [a, b]
      reward: {{type: continuous, range: [0, 10]}}
      features:
        - {{name: climate, from: "header:x-climate", type: categorical, values: {values}}}
  - name: rev
    match: {{path_prefix: /v1/models/rev}}
    policy: {{kind: bandit, arms: [a, b], reward: {{type: continuous}}}}
"""
    )


async def decide(
    s: aiohttp.ClientSession, r: Router, path: str = PREDICT, climate: str = "hot"
) -> tuple[str, str]:
    async with s.post(
        r.url + path, json={"instances": [[1.0]]}, headers={"x-climate": climate}
    ) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
        return resp.headers["x-modelrouter-backend"], resp.headers["x-modelrouter-decision"]


async def test_poisoning_input_is_refused_and_contexts_are_shown(
    upstreams: Any, router: Any
) -> None:
    ups = {n: await upstreams(n) for n in ("a", "b")}
    r: Router = router(config(ups))
    await r.wait_ready()
    rng = random.Random(3)
    async with aiohttp.ClientSession() as s:
        # 1e308 on a route without a declared range, 11 on a route declaring [0, 10]
        _, tok = await decide(s, r, "/v1/models/rev:predict")
        code, doc = await post_feedback(s, r, {"decision": tok, "reward": 1e308})
        assert code == 422 and "1e+15" in doc["error"], doc
        _, tok = await decide(s, r)
        code, doc = await post_feedback(s, r, {"decision": tok, "reward": 11})
        assert code == 422 and "declared range [0, 10]" in doc["error"], doc
        st = await get_status(r, "rev")
        assert all(a["rewards"] == 0 for a in st["arms"].values()), st["arms"]

        # learn two contexts
        for i in range(300):
            climate = "hot" if i % 2 else "cold"
            backend, tok = await decide(s, r, climate=climate)
            reward = float(rng.random() < CONVERSION[(climate, backend)])
            code, doc = await post_feedback(s, r, {"decision": tok, "reward": reward})
            assert code == 202, doc
        st = await get_status(r, "rec")
        view = {c["context"]: c for c in st["contexts"]}
        assert view["climate=hot"]["sent_to"] == "a", view
        assert view["climate=cold"]["sent_to"] == "b", view
        for c in view.values():
            for e in c["arms"].values():
                assert e["ci_low"] <= e["estimate"] <= e["ci_high"], c
        assert st["regret_method"] == "contextual"
        lo, hi = st["regret_interval"]
        assert lo <= st["regret"] <= hi, st
        assert st["reward"]["range"] == [0, 10]

        # the features change (same dimension, other order): a token of the old layout is 409
        _, old = await decide(s, r, climate="hot")
        r.config_path.write_text(fill_ports(config(ups, "[cold, hot]"), r.port, r.admin_port))
        async with s.post(f"{r.admin}/admin/reload", headers=r.headers) as resp:
            assert resp.status == 200, await resp.text()
        before = await get_status(r, "rec")
        code, doc = await post_feedback(s, r, {"decision": old, "reward": 10})
        assert code == 409 and "layout" in doc["error"], doc
        after = await get_status(r, "rec")
        assert sum(a["rewards"] for a in after["arms"].values()) == sum(
            a["rewards"] for a in before["arms"].values()
        )
        # a fresh decision under the new layout is credited
        _, tok = await decide(s, r, climate="cold")
        code, doc = await post_feedback(s, r, {"decision": tok, "reward": 10})
        assert code == 202, doc
