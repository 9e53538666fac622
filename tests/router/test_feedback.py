"""Decision tokens and the feedback endpoint: codes, durability, secrets, and a live route."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from policies.base import Context, Decision
from router.app import open_runtime
from router.config import parse_config
from router.feedback import SECRET_KEY, TokenError, TokenSigner, load_secret
from router.runtime import Runtime
from router.store.memory import MemoryStore
from router.store.sqlite import SqliteStore
from tests.helpers import eventually

SECRET = b"0123456789abcdef0123456789abcdef"

CONFIG = """
version: 1
feedback: {ttl: 60s}
backends:
  a: {url: "http://127.0.0.1:9"}
  b: {url: "http://127.0.0.1:9"}
routes:
  - name: bin
    match: {path_prefix: /bin}
    policy: {kind: bandit, arms: [a, b], algorithm: thompson, reward: {type: binary}}
  - name: cont
    match: {path_prefix: /cont}
    policy: {kind: bandit, arms: [a, b], algorithm: ucb1, reward: {type: continuous}}
  - name: plain
    match: {path_prefix: /plain}
    policy: {kind: weighted, weights: {a: 1, b: 1}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_token_round_trip_and_tamper() -> None:
    s = TokenSigner(SECRET)
    tok = s.issue("r", "a", 0.25, 3, (1.0, 0.5), "climate=hot", 100.0)
    d = s.verify(tok, 101.0, 60.0)
    assert (d.route, d.arm, d.propensity, d.generation, d.issued_at) == ("r", "a", 0.25, 3, 100.0)
    assert d.features == (1.0, 0.5) and d.label == "climate=hot"
    assert all(c.isalnum() or c in "-_." for c in tok)  # URL-safe, header-safe
    other = s.issue("r", "a", 0.25, 3, None, None, 100.0)
    assert s.verify(other, 100.0, 60.0).token_id != d.token_id
    body, mac = tok.split(".")
    forged = TokenSigner(SECRET).issue("r", "b", 1.0, 3, None, None, 100.0).split(".")[0]
    for bad in (
        f"{forged}.{mac}",
        tok[:-2] + ("AA" if tok[-2:] != "AA" else "BB"),
        "x",
        "",
        7,
        f"{body}",
        "!!!.???",
    ):
        with pytest.raises(TokenError) as e:
            s.verify(bad, 100.0, 60.0)
        assert e.value.status == 403
    with pytest.raises(TokenError) as e:
        TokenSigner(b"another-secret-of-32-bytes-long!").verify(tok, 100.0, 60.0)
    assert e.value.status == 403
    with pytest.raises(TokenError) as e:
        s.verify(tok, 161.0, 60.0)
    assert e.value.status == 410 and "expired" in e.value.message


async def test_load_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(CONFIG)
    store = MemoryStore()
    await store.open()
    monkeypatch.delenv("MODELROUTER_FEEDBACK_SECRET", raising=False)
    first = await load_secret(config, store)
    assert len(first) >= 32 and await store.get(SECRET_KEY) == first.decode()
    assert await load_secret(config, store) == first  # persisted: restarts keep tokens valid
    monkeypatch.setenv("MODELROUTER_FEEDBACK_SECRET", "from-the-environment-secret")
    assert await load_secret(config, store) == b"from-the-environment-secret"


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    store = MemoryStore()
    await store.open()
    runtime = await open_runtime(parse_config(textwrap.dedent(CONFIG)), store=store, clock=Clock())
    yield runtime
    await runtime.close()


def token(rt: Runtime, route: str = "bin", arm: str = "a") -> str:
    t = rt.issue_token(route, Decision(arm, 0.5), Context())
    assert t is not None
    return t


async def post(rt: Runtime, doc: Any) -> tuple[int, dict[str, Any]]:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    status, out = await rt.handle_feedback(body)
    return status, json.loads(out)


def sample(rt: Runtime, name: str, **labels: str) -> float:
    v = rt.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def test_accepted_then_duplicate(rt: Runtime) -> None:
    tok = token(rt)
    assert await post(rt, {"decision": tok, "reward": 1}) == (202, {"accepted": 1})
    engine: Any = rt.route("bin").engine
    assert engine.policy.stats()["a"].reward_sum == 1.0
    status, out = await post(rt, {"decision": tok, "reward": 1})
    assert status == 409 and "already" in out["error"]
    assert engine.policy.stats()["a"].reward_sum == 1.0  # rejected: policy untouched
    assert sample(rt, "modelrouter_feedback_total", route="bin", backend="a") == 1
    assert sample(rt, "modelrouter_feedback_rejected_total", reason="duplicate") == 1


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda rt: b"{not json", 400, "not valid JSON"),
        (lambda rt: b"[1, 2]", 400, "JSON object"),
        (lambda rt: {"decision": token(rt)}, 400, "decision.*reward"),
        (lambda rt: {"decision": token(rt), "reward": 1, "extra": 1}, 400, "unknown key 'extra'"),
        (lambda rt: {"feedback": []}, 400, "feedback: must be a list"),
        (lambda rt: {"decision": "abc.def", "reward": 1}, 403, "signature"),
        (lambda rt: {"decision": 12, "reward": 1}, 403, "token string"),
        (
            lambda rt: {
                "decision": TokenSigner(b"x" * 32).issue("bin", "a", 1, 1, None, None, 1_000_000.0),
                "reward": 1,
            },
            403,
            "signature",
        ),
        (lambda rt: {"decision": token(rt, "gone-route"), "reward": 1}, 403, "gone-route"),
        (lambda rt: {"decision": token(rt, "plain"), "reward": 1}, 403, "does not learn"),
        (lambda rt: {"decision": token(rt, "bin", "zz"), "reward": 1}, 410, "no longer part"),
        (
            lambda rt: {"decision": token(rt), "reward": 1.5},
            422,
            r"binary reward must be in \[0, 1\]",
        ),
        (lambda rt: {"decision": token(rt), "reward": -0.1}, 422, "binary reward"),
        (lambda rt: {"decision": token(rt), "reward": "1"}, 422, "must be a number, got a string"),
        (lambda rt: {"decision": token(rt), "reward": True}, 422, "got a boolean"),
        (lambda rt: {"decision": token(rt), "reward": None}, 422, "got null"),
        (
            lambda rt: b'{"decision": "%s", "reward": NaN}' % token(rt, "cont").encode(),
            422,
            "finite",
        ),
    ],
)
async def test_rejections(
    rt: Runtime, make: Callable[[Runtime], Any], code: int, message: str
) -> None:
    status, out = await post(rt, make(rt))
    assert status == code, out
    assert out["status"] == code
    import re

    assert re.search(message, out["error"]), out["error"]
    engine: Any = rt.route("bin").engine
    assert all(s.rewards == 0 for s in engine.policy.stats().values())


async def test_continuous_reward_any_finite_number(rt: Runtime) -> None:
    assert (await post(rt, {"decision": token(rt, "cont", "b"), "reward": 42.5}))[0] == 202
    engine: Any = rt.route("cont").engine
    assert engine.policy.stats()["b"].reward_sum == 42.5


async def test_expired(rt: Runtime) -> None:
    tok = token(rt)
    clock: Any = rt.clock
    clock.now += 61
    status, out = await post(rt, {"decision": tok, "reward": 1})
    assert status == 410 and "ttl 60s" in out["error"]
    assert sample(rt, "modelrouter_feedback_rejected_total", reason="expired") == 1


async def test_batch_all_or_nothing_validation(rt: Runtime) -> None:
    good = [{"decision": token(rt), "reward": 1} for _ in range(3)]
    bad = [*good, {"decision": token(rt), "reward": 7}]
    status, out = await post(rt, {"feedback": bad})
    assert status == 422 and out["error"].startswith("feedback[3]: reward")
    engine: Any = rt.route("bin").engine
    assert engine.policy.stats()["a"].rewards == 0
    assert await rt.store.feedback_since("bin", 0) == []
    status, out = await post(rt, {"feedback": [good[0], good[0]]})
    assert status == 409 and "twice" in out["error"]
    assert await post(rt, {"feedback": good[:2]}) == (202, {"accepted": 2, "duplicates": []})
    assert await post(rt, {"feedback": good}) == (202, {"accepted": 1, "duplicates": [0, 1]})
    status, _ = await post(rt, {"feedback": good})
    assert status == 409
    assert engine.policy.stats()["a"].rewards == 3


async def test_store_failure_answers_503_and_learns_nothing(rt: Runtime) -> None:
    async def broken(records: Any) -> list[bool]:
        raise OSError("disk full")

    rt.store.feedback_add = broken  # type: ignore[method-assign]
    status, out = await post(rt, {"decision": token(rt), "reward": 1})
    assert status == 503 and "not recorded" in out["error"]
    engine: Any = rt.route("bin").engine
    assert engine.policy.stats()["a"].rewards == 0


_CRASH = r"""
import asyncio, json, os, signal, sys
from policies.base import Context, Decision
from router.app import open_runtime
from router.config import parse_config
from router.store.sqlite import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    rt = await open_runtime(parse_config(sys.argv[2]), store=store)
    for i in range(5):
        tok = rt.issue_token("bin", Decision("b", 0.5), Context())
        status, _ = await rt.handle_feedback(json.dumps({"decision": tok, "reward": 1}).encode())
        assert status == 202, status
    print("accepted", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no stop(), no snapshot: only the store has them

asyncio.run(main())
"""


async def test_accepted_feedback_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    env = {**os.environ, "MODELROUTER_FEEDBACK_SECRET": "crash-test-secret-32-bytes-long!!"}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, str(db), textwrap.dedent(CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "accepted" in proc.stdout
    store = SqliteStore(db)
    await store.open()
    try:
        rt = await open_runtime(parse_config(textwrap.dedent(CONFIG)), store=store)
        engine: Any = rt.route("bin").engine
        engine.dead_after = 1.0  # the killed process never flushed: judged dead after this
        # the rewards are folded once their decider is known dead, and their decisions (lost
        # with it) are counted from them, so decisions and rewards stay consistent
        st = await eventually(
            lambda: engine.policy.stats()["b"].rewards == 5 and engine.policy.stats()["b"],
            timeout=30,
            what="the five accepted rewards, after their decider is judged dead",
        )
        assert st.reward_sum == 5.0 and st.decisions == 5
        await rt.close()
        # and after a clean restart nothing is counted twice (the sums and their mark)
        rt = await open_runtime(parse_config(textwrap.dedent(CONFIG)), store=store)
        engine = rt.route("bin").engine
        assert engine.policy.stats()["b"].rewards == 5
        assert engine.policy.stats()["b"].decisions == 5
        await rt.close()
    finally:
        await store.close()


LIVE = """
version: 1
backends:
  a: {{url: "http://127.0.0.1:{a}"}}
  b: {{url: "http://127.0.0.1:{b}"}}
routes:
  - name: learn
    match: {{path_prefix: /v1}}
    policy: {{kind: bandit, arms: [a, b], algorithm: thompson, reward: {{type: binary}}}}
"""


async def test_live_route_learns_from_feedback(
    upstreams: Callable[..., Awaitable[Any]], router: Callable[..., Awaitable[Any]]
) -> None:
    a = await upstreams("a", record=False)
    b = await upstreams("b", record=False)
    r = await router(LIVE.format(a=a.port, b=b.port))
    served = {"a": 0, "b": 0}
    async with aiohttp.ClientSession() as http:
        for i in range(300):
            async with http.post(f"{r.url}/v1/predict", json={"x": i}) as resp:
                assert resp.status == 200
                backend = resp.headers["x-modelrouter-backend"]
                tok = resp.headers["x-modelrouter-decision"]
                await resp.read()
            served[backend] += 1
            reward = 1.0 if backend == "b" else 0.0
            async with http.post(
                f"{r.url}/_modelrouter/feedback", json={"decision": tok, "reward": reward}
            ) as fb:
                assert fb.status == 202, await fb.text()
                assert await fb.json() == {"accepted": 1}
            async with http.post(
                f"{r.url}/_modelrouter/feedback", json={"decision": tok, "reward": reward}
            ) as fb:
                assert fb.status == 409
    assert served["b"] > 200
    status = r.runtime.status("learn")
    assert status["shares"]["b"] > 0.9
    assert status["arms"]["b"]["reward_mean"] == 1.0
    assert r.sample("modelrouter_decisions_total", route="learn", backend="b") == served["b"]
