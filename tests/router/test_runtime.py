"""RouteRuntime selection: a down backend is never chosen, and learning routes count the arm
that really serves."""

from __future__ import annotations

from typing import Any

import pytest

from router.dataplane.seam import Request
from tests.helpers import eventually

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


CAPABILITIES = """\
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
    policy: {{kind: weighted, weights: {{a: 1, b: 1}}}}
  - name: ctx
    match: {{path_prefix: /c}}
    policy:
      kind: contextual_bandit
      arms: [a, b]
      features:
        - {{name: x, from: "header:x-n", type: numeric, range: [0, 10]}}
        - {{name: y, from: "json:/y", type: numeric, range: [0, 10]}}
  - name: refused
    match: {{path_prefix: /r}}
    overrides: [{{when: {{header: {{x-preview: "1"}}}}, backend: b}}]
    policy:
      kind: blue_green
      active: a
      preview: b
      validate: {{requests: [{{path: /, expect_status: 418}}], attempts: 1}}
  - name: preview
    match: {{path_prefix: /p}}
    overrides: [{{when: {{header: {{x-preview: "1"}}}}, backend: b}}]
    policy: {{kind: blue_green, active: a, preview: b}}
"""


async def test_engine_capabilities_shape_how_a_route_selects(upstreams: Any, router: Any) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    r = await router(CAPABILITIES.format(a=a.port, b=b.port))
    rt = r.runtime
    # a weighted route looks at nothing of the request; a contextual one reads it, body included
    assert rt.route("w").plain and not rt.route("w").needs_body
    ctx_route = rt.route("ctx")
    assert not ctx_route.plain and ctx_route.needs_body
    req = Request("POST", "/c", "", [(b"x-n", b"3")], "127.0.0.1", body=b'{"y": 5}')
    sel = ctx_route.select(req)
    assert sel.context is not None and sel.context.features is not None
    assert sel.context.features.tolist()[-2:] == pytest.approx([0.3, 0.5])  # range-scaled
    assert sel.token is not None  # it learns: the response carries a decision token
    # an override may not reach a preview that failed infra validation ...
    preview = [(b"x-preview", b"1")]
    refused = rt.route("refused")
    await eventually(lambda: refused.engine.status()["phase"] == "rolled_back")
    assert refused.select(Request("GET", "/r", "", preview, "127.0.0.1")).backend.name == "a"
    # ... and once blessed it does, and the preview's analysis window sees that traffic
    route = rt.route("preview")
    await eventually(lambda: route.engine.status()["phase"] == "progressing")
    sel = route.select(Request("GET", "/p", "", preview, "127.0.0.1"))
    assert sel.backend.name == "b" and sel.arm is None
    route.record(sel, 200, 0.01, None)
    assert route.engine.status()["arms"]["b"]["window"]["requests"] == 1
