"""RouteRuntime selection: a down backend is never chosen, and learning routes count the arm
that really serves."""

from __future__ import annotations

from typing import Any

from router.dataplane.seam import Request

CONFIG = """\
version: 1
listen: 127.0.0.1:1
admin: {{listen: "127.0.0.1:2"}}
state: {{store: memory}}
backends:
  a: {{url: "http://127.0.0.1:{a}"}}
  b: {{url: "http://127.0.0.1:{b}"}}
routes:
  - name: w
    match: {{path_prefix: /w}}
    policy: {{kind: weighted, weights: {{a: 90, b: 10}}}}
  - name: bandit
    match: {{path_prefix: /b}}
    policy: {{kind: bandit, arms: [a, b], algorithm: epsilon_greedy, params: {{epsilon: 0.5}}}}
"""


async def test_down_backend_is_skipped_and_learning_counts_the_serving_arm(
    upstreams: Any, router: Any
) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    r = await router(CONFIG.format(a=a.port, b=b.port))
    rt = r.runtime
    rt.backends["a"].up = False
    req = Request("POST", "/b", "", [], "127.0.0.1")
    bandit = rt.route("bandit")
    served = {bandit.select(req).backend.name for _ in range(200)}
    assert served == {"b"}
    stats = bandit.engine.policy.stats()
    assert stats["a"].decisions == 0 and stats["b"].decisions == 200
    weighted = rt.route("w")
    assert {weighted.select_plain().backend.name for _ in range(200)} == {"b"}
    rt.backends["b"].up = False  # nothing healthy: the proxy answers 503 for this selection
    assert not weighted.select_plain().backend.up
