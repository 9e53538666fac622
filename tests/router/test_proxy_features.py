"""A contextual route whose feature lives in the JSON body: the proxy holds the body, the policy
reads it, and the upstream still receives it byte for byte (Content-Length and chunked)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

CONFIG = """\
version: 1
listen: 127.0.0.1:1
admin: {{listen: "127.0.0.1:2"}}
state: {{store: memory}}
feedback: {{missing_reward: null}}
backends:
  young: {{url: "http://127.0.0.1:{a}"}}
  old: {{url: "http://127.0.0.1:{b}"}}
routes:
  - name: rec
    match: {{path_prefix: /recommend}}
    policy:
      kind: contextual_bandit
      arms: [young, old]
      algorithm: linucb
      params: {{alpha: 0.2}}
      features:
        - {{name: age, from: "json:/user/age", type: numeric, scale: 0.01, default: 0.5}}
        - {{name: climate, from: "header:x-climate", type: categorical, values: [hot, cold]}}
"""


async def test_json_feature_body_reaches_upstream_and_the_route_learns_from_it(
    upstreams: Any, router: Any
) -> None:
    a, b = await upstreams("young"), await upstreams("old")
    r = await router(CONFIG.format(a=a.port, b=b.port))
    route = r.runtime.route("rec")
    assert route.needs_body
    url = f"{r.url}/recommend"
    async with aiohttp.ClientSession() as s:
        # the body is forwarded unchanged, framed by Content-Length or re-chunked
        body = json.dumps({"user": {"age": 23}, "pad": "x" * 3000}).encode()
        async with s.post(url, data=body, headers={"x-climate": "hot"}) as resp:
            assert resp.status == 200
            assert resp.headers["x-modelrouter-decision"]
        seen = (a.seen + b.seen)[-1]
        assert seen.body == body

        async def chunks() -> Any:
            yield b'{"user": {"age": '
            yield b"71}}"

        async with s.post(url, data=chunks(), headers={"x-climate": "cold"}) as resp:
            assert resp.status == 200
        assert (a.seen + b.seen)[-1].body == b'{"user": {"age": 71}}'

        # teach it: young users -> "young", old users -> "old"; rewards through the feedback API
        for i in range(400):
            age = 20 if i % 2 else 80
            payload = json.dumps({"user": {"age": age}}).encode()
            async with s.post(url, data=payload) as resp:
                await resp.read()
                backend = resp.headers["x-modelrouter-backend"]
                token = resp.headers["x-modelrouter-decision"]
            reward = 1.0 if (backend == "young") == (age < 50) else 0.0
            async with s.post(
                f"{r.url}/_modelrouter/feedback", json={"decision": token, "reward": reward}
            ) as fb:
                assert fb.status == 202, await fb.text()

        picks = {"young": 0, "old": 0}
        for age, want in ((18, "young"), (90, "old")):
            for _ in range(20):
                payload = json.dumps({"user": {"age": age}}).encode()
                async with s.post(url, data=payload) as resp:
                    await resp.read()
                    picks[want] += resp.headers["x-modelrouter-backend"] == want
    # the feature came from the body: each age group is sent to its own model
    assert picks["young"] >= 16 and picks["old"] >= 16, picks
