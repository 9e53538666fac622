"""Route matching: the indexed table picks what a scan in configuration order picks, at any
number of routes, and a reload re-indexes."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from policies.spec import Config
from router.config import parse_config
from router.dataplane.routing import LINEAR_MAX, RouteTable


@dataclass(frozen=True)
class R:
    name: str
    prefix: str
    methods: frozenset[str] | None
    exact: bool = False
    regex: re.Pattern[str] | None = None

    @property
    def open_end(self) -> bool:
        return self.prefix[-1:] in ("/", ":")


def first_match(routes: list[R], method: str, path: str) -> R | None:
    """The specification: the first route in order whose path match and methods take it."""
    for r in routes:
        if r.methods is not None and method not in r.methods:
            continue
        if r.regex is not None:
            if r.regex.fullmatch(path):
                return r
        elif r.exact:
            if path == r.prefix:
                return r
        elif path.startswith(r.prefix) and (
            r.open_end or len(path) == len(r.prefix) or path[len(r.prefix)] in "/:"
        ):
            return r
    return None


def random_route(rng: random.Random, i: int, alphabet: str) -> R:
    p = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
    methods = rng.choice([None, frozenset({"GET"}), frozenset({"POST", "PUT"})])
    kind = rng.random()
    if kind < 0.1:
        return R(f"r{i}", p, methods, regex=re.compile(re.escape(p) + "[ab]*"))
    if kind < 0.2:
        return R(f"r{i}", p, methods, exact=True)
    return R(f"r{i}", p, methods)


def test_index_agrees_with_a_scan_in_configuration_order() -> None:
    rng = random.Random(12)
    alphabet = "/ab:"
    checked = 0
    for n in (1, 2, LINEAR_MAX, LINEAR_MAX + 1, 40, 300):
        for _ in range(20):
            routes = [random_route(rng, i, alphabet) for i in range(n)]
            table = RouteTable(routes)
            for _ in range(200):
                path = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))
                method = rng.choice(["GET", "POST", "DELETE"])
                assert table.match(method, path) == first_match(routes, method, path), (
                    n,
                    method,
                    path,
                )
                checked += 1
    assert checked == 6 * 20 * 200


def many(n: int, a: int, b: int, head: str = "") -> str:
    routes = "".join(
        f"  - name: m{i:04d}\n"
        f'    match: {{path_prefix: "/v1/models/m{i:04d}:"}}\n'
        f"    policy: {{kind: weighted, weights: {{{'a' if i % 2 else 'b'}: 1}}}}\n"
        for i in range(n)
    )
    return f"""\
version: 1
listen: 127.0.0.1:1
admin: {{listen: "127.0.0.1:2"}}
state: {{store: memory}}
backends:
  a: {{url: "http://127.0.0.1:{a}"}}
  b: {{url: "http://127.0.0.1:{b}"}}
routes:
{head}{routes}"""


# an earlier route with a shorter prefix wins for its method, whatever comes after it
POST_FIRST = """\
  - name: posts
    match: {path_prefix: /v1/, methods: [POST]}
    policy: {kind: weighted, weights: {a: 1}}
"""


async def test_many_routes_through_the_proxy_and_a_reload(upstreams: Any, router: Any) -> None:
    a, b = await upstreams("a"), await upstreams("b")
    r = await router(many(300, a.port, b.port, head=POST_FIRST))
    rt = r.runtime
    assert rt.match("GET", "/v1/models/m0299:predict").name == "m0299"
    assert rt.match("GET", "/v1/models/m0150:predict").name == "m0150"
    assert rt.match("POST", "/v1/models/m0150:predict").name == "posts"
    assert rt.match("GET", "/v1/models/m0300:predict") is None
    assert rt.match("GET", "/v1/models/m0299") is None  # the prefix ends with ':'
    async with aiohttp.ClientSession() as s:
        for i, backend in ((299, "a"), (150, "b")):
            async with s.get(f"{r.url}/v1/models/m{i:04d}:predict") as resp:
                assert resp.status == 200
                assert resp.headers["x-modelrouter-backend"] == backend
        async with s.post(f"{r.url}/v1/models/m0150:predict", data=b"{}") as resp:
            assert resp.headers["x-modelrouter-backend"] == "a"
        async with s.get(f"{r.url}/v1/models/m0300:predict") as resp:
            assert resp.status == 404

    new: Config = parse_config(many(400, a.port, b.port), "test.yaml")
    await rt.reload(new)
    assert rt.match("GET", "/v1/models/m0399:predict").name == "m0399"
    assert rt.match("POST", "/v1/models/m0150:predict").name == "m0150"  # "posts" is gone
