"""What the contract promised and the router did not do yet (issue 9, deliverable 7).

Whole-segment path prefixes with exact and regex kinds, `limits.trusted_hops` deciding the
client address (X-Forwarded-For and `ip` sticky keys), the feedback endpoint counted under its
own route label, and `decisions_total` for weighted and rollout routes.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from router.config import ConfigError, parse_config


def paths_config(a: int, b: int, c: int) -> str:
    return f"""\
    version: 1
    state: {{store: memory}}
    backends:
      a: {{url: "http://127.0.0.1:{a}"}}
      b: {{url: "http://127.0.0.1:{b}"}}
      c: {{url: "http://127.0.0.1:{c}"}}
    routes:
      - name: exact
        match: {{path_exact: /v2/models/iris/ready}}
        policy: {{kind: weighted, weights: {{c: 1}}}}
      - name: iris
        match: {{path_prefix: /v2/models/iris}}
        policy: {{kind: weighted, weights: {{a: 1}}}}
      - name: resnet
        match: {{path_prefix: /v1/models/resnet50}}
        policy: {{kind: weighted, weights: {{a: 1}}}}
      - name: rx
        match: {{path_regex: "/v3/models/[a-z]+/infer"}}
        policy: {{kind: weighted, weights: {{c: 1}}}}
      - name: rest
        match: {{path_prefix: /}}
        policy: {{kind: weighted, weights: {{b: 1}}}}
    """


@pytest.mark.parametrize(
    ("path", "backend"),
    [
        ("/v2/models/iris", "a"),
        ("/v2/models/iris/infer", "a"),
        ("/v2/models/iris-v2/infer", "b"),  # not a segment of /v2/models/iris
        ("/v2/models/irisx", "b"),
        ("/v1/models/resnet50:predict", "a"),  # TF Serving's verb suffix
        ("/v1/models/resnet50/versions/2:predict", "a"),
        ("/v1/models/resnet501:predict", "b"),
        ("/v2/models/iris/ready", "c"),  # exact, listed first
        ("/v3/models/abc/infer", "c"),
        ("/v3/models/abc/infer/x", "b"),  # the regex must match the whole path
        ("/v3/models/ABC/infer", "b"),
    ],
)
async def test_path_match_kinds(path: str, backend: str, upstreams: Any, router: Any) -> None:
    a, b, c = await upstreams("a"), await upstreams("b"), await upstreams("c")
    r = await router(paths_config(a.port, b.port, c.port))
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}{path}") as resp:
        assert resp.status == 200
        assert resp.headers["x-modelrouter-backend"] == backend


def test_path_match_config_errors() -> None:
    base = """\
version: 1
backends: {a: {url: "http://127.0.0.1:1"}}
routes:
  - name: r
    match: MATCH
    policy: {kind: weighted, weights: {a: 1}}
"""
    for match, message in (
        ("{path_prefix: /a, path_exact: /a}", "give one of path_prefix, path_exact, path_regex"),
        ("{path_regex: '/a/(['}", "invalid regular expression"),
        ("{path_exact: nope}", "a path starting with '/'"),
    ):
        with pytest.raises(ConfigError) as e:
            parse_config(base.replace("MATCH", match), "m.yaml")
        assert message in str(e.value), (match, e.value.errors)


def sticky_ip_config(a: int, b: int, hops: int) -> str:
    return f"""\
    version: 1
    state: {{store: memory}}
    limits: {{trusted_hops: {hops}}}
    backends:
      a: {{url: "http://127.0.0.1:{a}"}}
      b: {{url: "http://127.0.0.1:{b}"}}
    routes:
      - name: r
        sticky: {{key: ip}}
        policy: {{kind: weighted, weights: {{a: 1, b: 1}}}}
    """


async def test_trusted_hops_decide_xff_and_ip_sticky_keys(upstreams: Any, router: Any) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    ups = {"a": a, "b": b}
    r = await router(sticky_ip_config(a.port, b.port, hops=1))
    clients = [f"203.0.113.{i}" for i in range(1, 41)]
    async with aiohttp.ClientSession() as s:
        first: dict[str, str] = {}
        for rnd in range(3):
            for ip in clients:
                # a client-written entry before the one our (trusted) proxy appended: ignored
                xff = f"6.6.6.{rnd}, {ip}"
                async with s.get(f"{r.url}/p", headers={"X-Forwarded-For": xff}) as resp:
                    assert resp.status == 200
                    backend = resp.headers["x-modelrouter-backend"]
                    assert first.setdefault(ip, backend) == backend, f"{ip} moved"
                seen = ups[backend].seen[-1]
                sent = {k.lower(): v for k, v in seen.headers}["x-forwarded-for"]
                assert sent == f"{ip}, 127.0.0.1"  # the trusted part of the chain, then the peer
    assert set(first.values()) == {"a", "b"}  # different clients, different arms


async def test_no_trusted_hops_the_peer_is_the_client(upstreams: Any, router: Any) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    ups = {"a": a, "b": b}
    r = await router(sticky_ip_config(a.port, b.port, hops=0))
    async with aiohttp.ClientSession() as s:
        got = set()
        for i in range(20):
            hdrs = {"X-Forwarded-For": f"198.51.100.{i}"}  # forged: must not move the client
            async with s.get(f"{r.url}/p", headers=hdrs) as resp:
                backend = resp.headers["x-modelrouter-backend"]
                got.add(backend)
            sent = {k.lower(): v for k, v in ups[backend].seen[-1].headers}["x-forwarded-for"]
            assert sent == "127.0.0.1"
    assert len(got) == 1  # one peer, one sticky key


def test_sticky_ip_config() -> None:
    text = """\
version: 1
backends: {a: {url: "http://127.0.0.1:1"}}
routes:
  - {name: r, sticky: {key: ip}, policy: {kind: weighted, weights: {a: 1}}}
"""
    cfg = parse_config(text, "s.yaml")
    assert cfg.routes[0].sticky is not None and cfg.routes[0].sticky.source == "ip"


async def test_feedback_counted_under_its_own_route(upstreams: Any, router: Any) -> None:
    a = await upstreams("a")
    r = await router(
        f"""\
        version: 1
        state: {{store: memory}}
        backends: {{a: {{url: "http://127.0.0.1:{a.port}"}}}}
        routes:
          - {{name: r, policy: {{kind: weighted, weights: {{a: 1}}}}}}
        """
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{r.url}/_modelrouter/feedback", data=b"not json") as resp:
            assert resp.status == 400
        async with s.get(f"{r.url}/_modelrouter/feedback") as resp:
            assert resp.status == 405
    total = "modelrouter_requests_total"
    assert r.sample(total, route="_feedback", backend="", code="400") == 1
    assert r.sample(total, route="_feedback", backend="", code="405") == 1
    assert r.sample(total, route="", backend="", code="400") == 0


async def test_decisions_total_for_weighted_and_rollout_routes(upstreams: Any, router: Any) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    r = await router(
        f"""\
        version: 1
        state: {{store: memory}}
        backends:
          a: {{url: "http://127.0.0.1:{a.port}"}}
          b: {{url: "http://127.0.0.1:{b.port}"}}
        routes:
          - name: w
            match: {{path_prefix: /w}}
            overrides: [{{when: {{header: {{x-force: b}}}}, backend: b}}]
            policy: {{kind: weighted, weights: {{a: 1, b: 1}}}}
          - name: c
            match: {{path_prefix: /c}}
            policy:
              kind: canary
              stable: a
              candidate: b
              steps: [50]
        """
    )
    async with aiohttp.ClientSession() as s:
        for path in ["/w"] * 30 + ["/c"] * 30:
            async with s.get(f"{r.url}{path}") as resp:
                assert resp.status == 200
        async with s.get(f"{r.url}/w", headers={"x-force": "b"}) as resp:
            assert resp.headers["x-modelrouter-backend"] == "b"  # an override: no decision
    name = "modelrouter_decisions_total"
    for route in ("w", "c"):
        n = sum(r.sample(name, route=route, backend=x) for x in ("a", "b"))
        assert n == 30, route
