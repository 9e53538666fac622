"""Learning routes through `modelrouter serve`: a bandit learning from client feedback, the
feedback codes, accepted rewards surviving SIGKILL, and A/B test results in status."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from router.feedback import TokenSigner
from tests.e2e.conftest import HEAD, Router, Upstream
from tests.e2e.helpers import get_metrics, get_status, metric, wait_status
from tests.helpers import consistently, eventually

pytestmark = pytest.mark.e2e

PREDICT = "/v1/models/rec:predict"
FEEDBACK = "/_modelrouter/feedback"


def learning_config(ups: dict[str, Upstream], policy: str, head: str = HEAD) -> str:
    backends = "\n".join(
        f'  {name}: {{url: "{u.url}", version: 1.{i}.0, timeout: 5s}}'
        for i, (name, u) in enumerate(ups.items())
    )
    return (
        head
        + f"""
backends:
{backends}
routes:
  - name: rec
    match: {{path_prefix: /v1/models/rec}}
    policy: {policy}
"""
    )


async def decide(s: aiohttp.ClientSession, r: Router, path: str = PREDICT) -> tuple[str, str]:
    """One prediction: (backend, decision token)."""
    async with s.post(r.url + path, json={"instances": [[1.0]]}) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
        token = resp.headers.get("x-modelrouter-decision")
        assert token, f"no x-modelrouter-decision header: {dict(resp.headers)}"
        return resp.headers["x-modelrouter-backend"], token


async def post_feedback(
    s: aiohttp.ClientSession, r: Router, body: Any, raw: bytes | None = None
) -> tuple[int, Any]:
    kw: dict[str, Any] = (
        {"data": raw, "headers": {"content-type": "application/json"}}
        if raw is not None
        else {"json": body}
    )
    async with s.post(r.url + FEEDBACK, **kw) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def wait_metric(
    r: Router, name: str, want: float | None = None, timeout: float = 10.0, **labels: str
) -> float:
    """Poll /metrics until the sample exists (and equals `want` when given); its value."""

    async def sample() -> list[float]:  # a list: a value of 0.0 is a found sample too
        got = metric(await get_metrics(r), name, **labels)
        if got is None or (want is not None and got != want):
            return []
        return [got]

    found = await eventually(sample, timeout=timeout, interval=0.2, what=f"{name} {labels}")
    return found[0]


async def test_live_bandit_learns_the_best_arm_from_client_feedback(
    upstreams: Any, router: Any
) -> None:
    conversion = {"a": 0.2, "b": 0.5, "c": 0.8}
    ups = {name: await upstreams(name) for name in conversion}
    policy = "{kind: bandit, arms: [a, b, c], algorithm: thompson, reward: {type: binary}}"
    r: Router = router(learning_config(ups, policy))
    await r.wait_ready()

    rng = random.Random(7)
    total = 1500
    todo = iter(range(total))
    decisions: list[str] = []
    codes: Counter[int] = Counter()

    async def client(s: aiohttp.ClientSession) -> None:
        for _ in todo:
            backend, token = await decide(s, r)
            decisions.append(backend)
            reward = 1.0 if rng.random() < conversion[backend] else 0.0
            code, _ = await post_feedback(s, r, {"decision": token, "reward": reward})
            codes[code] += 1

    async with aiohttp.ClientSession() as s:
        await asyncio.wait_for(asyncio.gather(*(client(s) for _ in range(8))), 120)
    assert codes == {202: total}, codes
    last = Counter(decisions[-300:])
    assert last.most_common(1)[0][0] == "c", last
    assert last["c"] > 150, last

    st = await get_status(r, "rec")
    assert st["kind"] == "bandit" and st["phase"] == "active"
    arms = st["arms"]
    assert set(arms) == {"a", "b", "c"}
    assert sum(a["decisions"] for a in arms.values()) == total
    assert sum(a["rewards"] for a in arms.values()) == total
    for name, a in arms.items():
        assert {"decisions", "rewards", "reward_sum", "reward_mean"} <= a.keys(), a
        assert a["decisions"] == decisions.count(name)
    assert abs(arms["c"]["reward_mean"] - 0.8) < 0.06, arms["c"]
    assert st["shares"]["c"] == max(st["shares"].values()), st["shares"]
    assert isinstance(st["regret"], float) and 0 < st["regret"] < total, st["regret"]

    # reward metrics refresh on the learning tick (every second)
    want = arms["c"]["reward_sum"]
    await wait_metric(r, "modelrouter_reward_sum", want, route="rec", backend="c")
    text = await get_metrics(r)
    for name in conversion:
        assert metric(text, "modelrouter_decisions_total", route="rec", backend=name) == (
            decisions.count(name)
        )
        assert metric(text, "modelrouter_feedback_total", route="rec", backend=name) == (
            decisions.count(name)
        )
    assert (
        metric(text, "modelrouter_reward_sum", route="rec", backend="c")
        == (arms["c"]["reward_sum"])
    )
    assert (metric(text, "modelrouter_regret", route="rec") or 0) > 0


def _forge(token: str, arm: str) -> str:
    """The same token with another arm in its payload and the original signature."""
    body, _, mac = token.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert payload[2] != arm, "forge to a different arm, or the token is genuine"
    payload[2] = arm
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac


async def test_feedback_codes_through_serve(upstreams: Any, router: Any) -> None:
    ups = {name: await upstreams(name) for name in ("a", "b")}
    policy = "{kind: bandit, arms: [a, b], algorithm: thompson, reward: {type: binary}}"
    r: Router = router(learning_config(ups, policy))
    ttl_head = HEAD.replace("state.db", "ttl-state.db") + "feedback: {ttl: 1s}\n"
    r_ttl: Router = router(learning_config(ups, policy, ttl_head), name="ttl.yaml")
    await asyncio.gather(r.wait_ready(), r_ttl.wait_ready())

    async with aiohttp.ClientSession() as s:
        # expired: a token older than the 1 s ttl (taken first: the wait overlaps the rest)
        _, old_token = await decide(s, r_ttl)
        issued = time.monotonic()

        backend, token = await decide(s, r)
        assert await post_feedback(s, r, {"decision": token, "reward": 1.0}) == (
            202,
            {"accepted": 1},
        )
        code, doc = await post_feedback(s, r, {"decision": token, "reward": 1.0})
        assert code == 409 and "already credited" in doc["error"], doc
        code, doc = await post_feedback(s, r, {"decision": token, "reward": 0.0})
        assert code == 409, doc

        fresh_backend, fresh = await decide(s, r)
        other = "b" if fresh_backend == "a" else "a"
        code, doc = await post_feedback(s, r, {"decision": _forge(fresh, other), "reward": 1.0})
        assert code == 403 and "signature" in doc["error"], doc
        foreign = TokenSigner(b"another-router-secret").issue(
            "rec", "a", 0.5, 1, None, None, time.time()
        )
        code, doc = await post_feedback(s, r, {"decision": foreign, "reward": 1.0})
        assert code == 403, doc
        code, doc = await post_feedback(s, r, {"decision": "not-a-token", "reward": 1.0})
        assert code == 403, doc

        code, doc = await post_feedback(s, r, None, raw=b'{"decision": "x", "reward": ')
        assert code == 400 and "JSON" in doc["error"], doc
        code, doc = await post_feedback(s, r, {"reward": 1.0})
        assert code == 400, doc

        for bad in (1.5, -0.1, "1", None, True):
            code, doc = await post_feedback(s, r, {"decision": fresh, "reward": bad})
            assert code == 422, (bad, code, doc)
            assert "reward" in doc["error"]

        # none of the rejected rewards touched the policy: one reward so far
        st = await get_status(r, "rec")
        assert sum(a["rewards"] for a in st["arms"].values()) == 1, st["arms"]
        assert st["arms"][backend]["rewards"] == 1 and st["arms"][backend]["reward_sum"] == 1.0

        # batch: the unused fresh token and one more; a batch of only duplicates is 409
        _, t2 = await decide(s, r)
        batch = {"feedback": [{"decision": fresh, "reward": 0.0}, {"decision": t2, "reward": 1}]}
        code, doc = await post_feedback(s, r, batch)
        assert (code, doc) == (202, {"accepted": 2, "duplicates": []}), doc
        code, doc = await post_feedback(s, r, batch)
        assert code == 409, doc
        st = await get_status(r, "rec")
        assert sum(a["rewards"] for a in st["arms"].values()) == 3, st["arms"]

        while time.monotonic() - issued < 1.5:  # past the 1 s ttl
            await asyncio.sleep(0.1)
        code, doc = await post_feedback(s, r_ttl, {"decision": old_token, "reward": 1.0})
        assert code == 410 and "expired" in doc["error"], doc
        st = await get_status(r_ttl, "rec")
        assert sum(a["rewards"] for a in st["arms"].values()) == 0

    text = await get_metrics(r)
    for reason in ("duplicate", "forged", "malformed", "invalid_reward"):
        assert (metric(text, "modelrouter_feedback_rejected_total", reason=reason) or 0) >= 1, (
            reason
        )
    text = await get_metrics(r_ttl)
    assert metric(text, "modelrouter_feedback_rejected_total", reason="expired") == 1.0


async def test_accepted_feedback_survives_sigkill(upstreams: Any, router: Any) -> None:
    ups = {name: await upstreams(name) for name in ("a", "b", "c")}
    policy = "{kind: bandit, arms: [a, b, c], algorithm: thompson, reward: {type: binary}}"
    r: Router = router(learning_config(ups, policy))
    await r.wait_ready()

    n = 120
    todo = iter(range(n))
    rewards: Counter[str] = Counter()
    sums: dict[str, float] = dict.fromkeys(ups, 0.0)

    async def client(s: aiohttp.ClientSession) -> None:
        for i in todo:
            backend, token = await decide(s, r)
            reward = 1.0 if i % 3 else 0.0
            code, doc = await post_feedback(s, r, {"decision": token, "reward": reward})
            assert code == 202, doc
            rewards[backend] += 1
            sums[backend] += reward

    async with aiohttp.ClientSession() as s:
        await asyncio.wait_for(asyncio.gather(*(client(s) for _ in range(4))), 60)
    assert r.proc is not None
    r.proc.kill()  # right after the last 202: no snapshot, no clean shutdown
    await asyncio.to_thread(r.proc.wait, 10)

    r.start()
    await r.wait_ready()
    want = {b: (rewards[b], sums[b]) for b in ("a", "b", "c")}
    # the rewards whose decisions the killed process had not flushed are folded once it is
    # judged dead (a few seconds), and count those decisions back
    st = await wait_status(
        r,
        "rec",
        lambda st: {b: (a["rewards"], a["reward_sum"]) for b, a in st["arms"].items()} == want,
        "every accepted reward after the restart",
    )
    assert {b: a["decisions"] for b, a in st["arms"].items()} == rewards
    # and over more than one pull tick (1 s) nothing is counted twice

    async def unchanged() -> bool:
        st = await get_status(r, "rec")
        return {b: (a["rewards"], a["reward_sum"]) for b, a in st["arms"].items()} == want

    await consistently(unchanged, duration=1.5, interval=0.1, what="no double counting")


async def test_ab_test_status_shows_test_results(upstreams: Any, router: Any) -> None:
    ups = {name: await upstreams(name) for name in ("a", "b")}
    cfg = learning_config(
        ups,
        "{kind: ab_test, arms: {A: a, B: b}, split: {A: 50, B: 50}, reward: {type: binary}, "
        "test: {method: z_test, alpha: 0.05, min_samples: 50}}",
    ) + (
        "  - name: bayes\n"
        "    match: {path_prefix: /v1/models/bayes}\n"
        "    policy: {kind: ab_test, arms: {A: a, B: b}, reward: {type: binary}, "
        "test: {method: bayesian, min_samples: 50}}\n"
    )
    r: Router = router(cfg)
    await r.wait_ready()
    conversion = {"a": 0.3, "b": 0.6}
    rng = random.Random(3)
    async with aiohttp.ClientSession() as s:
        for path in (PREDICT, "/v1/models/bayes:predict"):
            for _ in range(200):
                backend, token = await decide(s, r, path)
                reward = 1.0 if rng.random() < conversion[backend] else 0.0
                code, doc = await post_feedback(s, r, {"decision": token, "reward": reward})
                assert code == 202, doc

    def has_test(st: dict[str, Any]) -> bool:
        t = st.get("test") or {}
        return all(v is not None for v in (t.get("means") or {"x": None}).values())

    st = await wait_status(r, "rec", has_test, "z-test results")
    t = st["test"]
    assert st["kind"] == "ab_test" and st["phase"] in ("active", "concluded")
    assert t["method"] == "z_test" and set(t["p_value"]) == {"B"}, t
    assert 0.0 <= t["p_value"]["B"] <= 1.0
    assert t["srm"]["flagged"] is False, t["srm"]
    assert sum(a["decisions"] for a in st["arms"].values()) == 200
    assert abs(st["shares"]["a"] - 0.5) < 1e-9, st["shares"]

    st = await wait_status(r, "bayes", has_test, "bayesian results")
    t = st["test"]
    assert t["method"] == "bayesian" and set(t["prob_best"]) == {"A", "B"}, t
    assert abs(sum(t["prob_best"].values()) - 1.0) < 1e-6
    assert {"expected_loss", "winner", "decided"} <= t.keys()

    # test metrics refresh on the learning tick (every second)
    p_value = await wait_metric(r, "modelrouter_experiment_p_value", route="rec", arm="B")
    assert p_value is not None and 0.0 <= p_value <= 1.0
    prob_best = await wait_metric(r, "modelrouter_experiment_prob_best", route="bayes", arm="B")
    assert prob_best is not None and 0.0 <= prob_best <= 1.0
