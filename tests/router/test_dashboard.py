"""The dashboard page in a real headless browser, fed by an evolving fake `/dashboard/data`.

This checks the page, not the router: the JSON follows the SPEC §3 status shape and the audit
entry shape, and the browser must turn it into charts that hold data.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

PAGE = Path(__file__).resolve().parents[2] / "router" / "static" / "dashboard.html"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)

needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)


async def run_chromium(
    url: str, *, screenshot: Path | None = None, budget_ms: int = 8000, timeout: float = 90.0
) -> str:
    """Load `url` in headless chromium, let ~budget_ms of page time pass; return the DOM.

    Runs as an asyncio subprocess so the test's own aiohttp server keeps answering meanwhile.
    """
    with tempfile.TemporaryDirectory(prefix="mr-chromium-") as profile:
        args = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        if screenshot is not None:
            args += ["--window-size=1400,1000", f"--screenshot={screenshot}"]
        else:
            args += ["--dump-dom"]
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *args,
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        return out.decode(errors="replace")


def chart_points(dom: str) -> dict[str, int]:
    """`{element id: data-points}` for every chart element in a dumped DOM."""
    found: dict[str, int] = {}
    for tag in re.finditer(r"<svg\b[^>]*>", dom):
        text = tag.group(0)
        ident = re.search(r'\bid="([^"]+)"', text)
        points = re.search(r'\bdata-points="(\d+)"', text)
        if ident and points and 'class="chart' in text:
            found[ident.group(1)] = int(points.group(1))
    return found


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


class FakeRouter:
    """Status JSON that evolves like a real router's: a bandit learning, a canary walking."""

    def __init__(self) -> None:
        self.k = 0
        self.t0 = 1_760_000_000.0
        self.audit: list[dict[str, Any]] = []

    def snapshot(self) -> dict[str, Any]:
        self.k += 1
        k, ts = self.k, self.t0 + self.k
        learnt = 1 - math.exp(-k / 6)
        shares = {
            "summer_model": 1 / 3 + 0.2 * learnt,
            "winter_model": 1 / 3 + 0.1 * learnt,
            "allround_model": 1 / 3 - 0.3 * learnt,
        }
        arms = {
            name: {
                "version": "1.0.0",
                "decisions": int(40 * k * s),
                "rewards": int(40 * k * s),
                "reward_sum": 40 * k * s * m,
                "reward_mean": m,
            }
            for (name, s), m in zip(shares.items(), (0.5, 0.45, 0.3), strict=True)
        }
        bandit = {
            "route": "recommend",
            "kind": "contextual_bandit",
            "phase": "active",
            "step": None,
            "shares": shares,
            "arms": arms,
            "regret": 3.0 * math.log1p(k),
            "regret_interval": [2.0 * math.log1p(k), 4.0 * math.log1p(k)],
            "regret_uniform": 2.5 * k,
            "analysis": [],
            "test": None,
            "contexts": [
                {
                    "context": f"climate={c}",
                    "sent_to": best,
                    "decisions": 20 * k,
                    "arms": {
                        a: {"estimate": m, "ci_low": m - 0.1, "ci_high": m + 0.1, "share": 0.3}
                        for a, m in zip(shares, (0.5, 0.45, 0.3), strict=True)
                    },
                }
                for c, best in (("hot", "summer_model"), ("cold", "winter_model"))
            ],
            "decision_log": {"written": 40 * k, "dropped": 3, "lag_seconds": 0.01, "errors": 0},
        }
        step = min(3, k // 3)
        pct = (10, 25, 50, 100)[step]
        phase = "promoted" if pct == 100 else "progressing"
        if k % 3 == 0 and k // 3 <= 3:
            prev = "validating" if step == 0 else "progressing"
            self.audit.append(
                {
                    "ts": ts,
                    "route": "classifier",
                    "action": "transition",
                    "actor": "controller",
                    "from": prev,
                    "to": phase,
                    "step": step,
                    "reason": f"analysis passed: error_rate 0.00 <= max 0.05 ({20 * k} requests)",
                }
            )
        canary = {
            "route": "classifier",
            "kind": "canary",
            "phase": phase,
            "step": step,
            "shares": {"classifier_v1": 1 - pct / 100, "classifier_v2": pct / 100},
            "arms": {
                "classifier_v1": {
                    "version": "1.0.0",
                    "decisions": 30 * k,
                    "window": {"requests": 30, "errors": 0, "error_rate": 0.0},
                },
                "classifier_v2": {
                    "version": "1.1.0",
                    "decisions": 10 * k,
                    "window": {"requests": 10, "errors": k % 2, "error_rate": (k % 2) / 10},
                },
            },
            "regret": None,
            "analysis": [{"check": "error_rate", "value": 0.0, "max": 0.05, "result": "pass"}],
            "test": None,
        }
        ab = {
            "route": "checkout",
            "kind": "ab_test",
            "phase": "active",
            "shares": {"model_a": 0.5, "model_b": 0.5},
            "arms": {
                "model_a": {"decisions": 50 * k, "rewards": 50 * k, "reward_sum": 5.0 * k},
                "model_b": {"decisions": 50 * k, "rewards": 50 * k, "reward_sum": 6.0 * k},
            },
            "regret": 0.5 * k,
            "test": {
                "method": "bayesian",
                "prob_best": {"A": 1 - learnt * 0.9, "B": learnt * 0.9},
                "winner": None,
                "decided": False,
                "srm": {"p_value": 0.0004, "flagged": True},
            },
        }
        # An msprt A/B test on a sticky route: lifts with confidence sequences, corrected
        # p-values, progress, guardrails (issue 10)
        seq = {
            "route": "ranking",
            "kind": "ab_test",
            "phase": "active",
            "shares": {"ranker_a": 0.34, "ranker_b": 0.33, "ranker_c": 0.33},
            "arms": {"ranker_a": {"decisions": 10 * k, "rewards": 10 * k, "reward_sum": 1.0 * k}},
            "test": {
                "method": "msprt",
                "unit": "user",
                "correction": "holm",
                "progress": {"min_samples": 1000, "least_arm": 420, "fraction": 0.42},
                "comparisons": {
                    "B": {
                        "vs": "A",
                        "diff": 0.021,
                        "diff_low": 0.004,
                        "diff_high": 0.038,
                        "lift": 0.21,
                        "lift_low": 0.041,
                        "lift_high": 0.379,
                        "p_value": 0.004,
                        "p_adjusted": 0.008,
                        "significant": True,
                        "interval": "confidence_sequence",
                        "mde": 0.012,
                        "mde_relative": 0.12,
                    },
                    "C": {
                        "vs": "A",
                        "diff": 0.002,
                        "diff_low": -0.02,
                        "diff_high": 0.024,
                        "lift": 0.02,
                        "lift_low": -0.2,
                        "lift_high": 0.24,
                        "p_value": 0.8,
                        "p_adjusted": 0.8,
                        "significant": False,
                        "interval": "confidence_sequence",
                        "mde": 0.012,
                        "mde_relative": 0.12,
                    },
                },
                "leaders": {"arms": ["C", "B"], "diff": 0.019, "p_value": 0.02, "p_adjusted": 0.04},
                "guardrails": {
                    "metrics": ["error_rate"],
                    "arms": {
                        "B": {
                            "failed": True,
                            "checks": [
                                {
                                    "guardrail": "error_rate",
                                    "value": 0.06,
                                    "limit": "<= 0.02",
                                    "p_value": 1e-5,
                                    "failed": True,
                                }
                            ],
                        }
                    },
                },
                "winner": None,
                "decided": False,
                "srm": {"p_value": 0.5, "flagged": False},
            },
        }
        # A route with almost nothing in it: the page must not break on missing fields.
        sparse = {"route": "legacy", "kind": "weighted"}
        return {
            "ts": ts,
            "routes": [bandit, canary, ab, seq, sparse],
            "audit": self.audit[-100:],
        }


DASH_TOKEN = "dash-token-1"


@pytest.fixture(params=[None])
async def dashboard_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The page and a fake `/dashboard/data`; parametrised with a token, the data needs it
    (as the admin listener does when an admin token is configured)."""
    fake = FakeRouter()
    token: str | None = request.param

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html", charset="utf-8")

    async def data(req: web.Request) -> web.Response:
        if token is not None and req.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "missing admin token"}, status=401)
        return web.json_response(fake.snapshot())

    app = web.Application()
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/data", data)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/dashboard"
    finally:
        await runner.cleanup()


def test_page_is_self_contained() -> None:
    html = PAGE.read_text()
    # No CDN, no external script or stylesheet: the machines it runs on may have no internet.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script>" in html and "<style>" in html


@needs_chromium
async def test_dashboard_charts_hold_data(dashboard_url: str) -> None:
    dom = await run_chromium(dashboard_url)
    points = chart_points(dom)
    for chart in (
        "chart-share-recommend",
        "chart-reward-recommend",
        "chart-regret-recommend",
        "chart-share-classifier",
        "chart-errors-classifier",
        "chart-share-checkout",
    ):
        assert points.get(chart, 0) > 2, (chart, points)
    assert 'id="conn-status" class="badge ok"' in dom
    # Uniform-random baseline is drawn next to the policy's regret.
    assert 'data-series="regret_uniform"' in dom
    # Rollout timeline shows the canary's transitions with their reasons.
    timeline = re.search(
        r'<ol class="timeline" id="timeline-classifier"[^>]*>(.*?)</ol>', dom, re.S
    )
    assert timeline and "analysis passed" in timeline.group(1)
    # A/B status: probability to be best and the SRM flag.
    assert "P(B best)" in dom and 'data-flagged="true"' in dom
    # Lifts with intervals, corrected p-values, unit of analysis, progress, guardrails.
    assert 'data-unit="user"' in dom and "users (sticky key)" in dom
    assert "confidence sequence" in dom and 'data-significant="true"' in dom
    assert "+21.0%" in dom and "[+4.1%, +37.9%]" in dom and "B vs C" in dom
    assert 'class="num p-adjusted">0.008' in dom and "42.0% of 1000" in dom
    assert 'class="guardrail" data-failed="true"' in dom
    assert 'id="route-legacy"' in dom
    # A contextual route shows where each context is sent, with estimates and intervals.
    ctx = re.search(r'<div class="contexts" data-rows="2">(.*?)</div>', dom, re.S)
    assert ctx, "per-context table missing"
    assert 'data-context="climate=cold"' in ctx.group(1) and "winter_model" in ctx.group(1)
    assert "[0.400, 0.600]" in ctx.group(1)
    assert "(95% " in dom
    # decision-log health of a logging route
    assert re.search(r"decision log \d+ written, 3 dropped, lag 0\.01s", dom)


@needs_chromium
@pytest.mark.parametrize("dashboard_url", [DASH_TOKEN], indirect=True)
async def test_dashboard_with_admin_token(dashboard_url: str) -> None:
    # without the token the page says what is missing and offers the token form
    dom = await run_chromium(dashboard_url, budget_ms=3000)
    assert 'id="conn-status" class="badge bad"' in dom
    assert re.search(r'<form id="token-form"(?![^>]*hidden)', dom), "token form not shown"
    # with it (in the URL fragment, which is never sent to the server) the charts fill
    dom = await run_chromium(f"{dashboard_url}#token={DASH_TOKEN}")
    assert 'id="conn-status" class="badge ok"' in dom
    assert chart_points(dom).get("chart-share-recommend", 0) > 2


@needs_chromium
async def test_dashboard_screenshot(dashboard_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    await run_chromium(dashboard_url, screenshot=shot)
    assert shot.exists()
    assert png_size(shot) == (1400, 1000)
    # A blank page compresses to a few KB; charts, tables and text make it much larger.
    assert shot.stat().st_size > 30_000
    if os.environ.get("MODELROUTER_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["MODELROUTER_KEEP_SCREENSHOT"])


@needs_chromium
async def test_dashboard_shows_disconnected(tmp_path: Path) -> None:
    # The page is served but its data endpoint is gone: it must say so, not hang or go blank.
    async def page(_: web.Request) -> web.Response:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_get("/dashboard", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        dom = await run_chromium(
            f"http://127.0.0.1:{runner.addresses[0][1]}/dashboard", budget_ms=3000
        )
    finally:
        await runner.cleanup()
    assert 'id="conn-status" class="badge bad"' in dom
    assert ">disconnected<" in dom
