"""`modelrouter demo` end to end: the real router learns and rolls out; the dashboard shows it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from router.config import parse_config
from router.demo import (
    CLIMATES,
    TRUE_MEANS,
    DemoOptions,
    Tally,
    build_config_text,
    one_line,
    render_view,
    summary,
)
from tests.router.test_dashboard import chart_points, needs_chromium, png_size, run_chromium


def demo_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("modelrouter")
    if script.exists():
        return [str(script), "demo", *args]
    return [sys.executable, "-m", "router.cli", "demo", *args]


def demo_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MODELROUTER_ADMIN_TOKEN", None)
    return env


def read_summary(out: str) -> dict[str, str]:
    assert "modelrouter demo summary" in out, out[-3000:]
    tail = out[out.index("modelrouter demo summary") :]
    found = {}
    for key, pattern in (
        ("matches", r"best arm per climate matches the truth: (\d)/3"),
        ("true", r"regret: true ([\d.]+)"),
        ("uniform", r"uniform random ([\d.]+)"),
        ("phase", r"canary phase: (\w+)"),
    ):
        m = re.search(pattern, tail)
        assert m, f"summary lacks {key!r}:\n{tail}"
        found[key] = m.group(1)
    return found


def test_embedded_config_is_valid() -> None:
    urls = {n: f"http://127.0.0.1:{9000 + i}" for i, n in enumerate(TRUE_MEANS["hot"])}
    urls |= {"classifier_v1": "http://127.0.0.1:9101", "classifier_v2": "http://127.0.0.1:9102"}
    cfg = parse_config(build_config_text(urls, 8080, 9901), "<demo>")
    assert [r.name for r in cfg.routes] == ["recommend", "classifier"]
    assert sorted(CLIMATES) == sorted(TRUE_MEANS)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"routes": "nonsense", "audit": None},
        {"routes": [{"route": "recommend"}, {"route": "classifier", "step": 7, "shares": None}]},
        {
            "routes": [
                {
                    "route": "recommend",
                    "kind": "contextual_bandit",
                    "phase": "active",
                    "shares": {"summer_model": 0.5, "winter_model": 0.3, "allround_model": 0.2},
                    "arms": {"summer_model": {"decisions": 10, "rewards": 9, "reward_mean": 0.5}},
                    "regret": 1.25,
                },
                {"route": "classifier", "kind": "canary", "phase": "promoted", "step": 2},
            ],
            "audit": [{"ts": 1.0, "route": "classifier", "action": "promoted", "to": "promoted"}],
        },
    ],
)
def test_views_tolerate_partial_status(data: dict[str, object]) -> None:
    tally = Tally()
    tally.recent["hot"].extend(["summer_model"] * 3)
    view = "\n".join(render_view(data, tally, 3.0, DemoOptions(duration=10), "http://x/dashboard"))
    assert "recommend" in view and "classifier" in view and "http://x/dashboard" in view
    assert "recommend:" in one_line(data, tally, 3.0)
    text = "\n".join(summary(data, tally, 3.0))
    assert "best arm per climate matches the truth: 1/3" in text
    assert "canary phase:" in text


def test_demo_learns_and_promotes_the_canary() -> None:
    r = subprocess.run(
        demo_command("--duration", "20"),
        capture_output=True,
        text=True,
        timeout=90,
        env=demo_env(),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/dashboard#token=\S+$", r.stdout, re.M)
    s = read_summary(r.stdout)
    # The contextual bandit found each climate's best model, and lost far less than uniform.
    assert int(s["matches"]) >= 2, r.stdout[-2000:]
    assert float(s["true"]) < 0.6 * float(s["uniform"]), r.stdout[-2000:]
    # The healthy candidate walked its steps; on a loaded machine it may still be on its way.
    assert s["phase"] in ("promoted", "progressing"), r.stdout[-2000:]
    if s["phase"] == "progressing":
        assert re.search(r"classifier: step progressing -> progressing", r.stdout)


async def _wait_for_line(stream: asyncio.StreamReader, pattern: str, deadline: float) -> str:
    seen = []
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.monotonic()))
        if not raw:
            break
        line = raw.decode(errors="replace").rstrip()
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m.group(1)
    raise AssertionError(f"no line matching {pattern!r}; saw:\n" + "\n".join(seen[-20:]))


@needs_chromium
async def test_dashboard_on_the_running_demo_then_ctrl_c(tmp_path: Path) -> None:
    # --duration only bounds the test if SIGINT were ignored; the demo is stopped by SIGINT.
    proc = await asyncio.create_subprocess_exec(
        *demo_command("--duration", "60", "--bad-canary"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=demo_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        deadline = time.monotonic() + 45
        url = await _wait_for_line(proc.stdout, r"^dashboard: (http://\S+)$", deadline)
        # the link carries the admin token in its fragment: the page sends it with its polls
        page, _, fragment = url.partition("#")
        auth = {"Authorization": "Bearer " + fragment.removeprefix("token=")}
        # Keep reading the demo's output meanwhile, so its pipes never fill up.
        rest = asyncio.create_task(proc.stdout.read())
        errs = asyncio.create_task(proc.stderr.read())
        # Wait until the bandit has data and the bad canary has been rolled back, then look.
        data: dict[str, object] = {}
        async with aiohttp.ClientSession() as session:
            while True:
                assert time.monotonic() < deadline, f"demo never got there: {data}"
                async with session.get(page + "/data", headers=auth) as resp:
                    data = await resp.json()
                routes = {r["route"]: r for r in data["routes"]}
                decisions = sum(
                    a.get("decisions", 0) for a in routes["recommend"].get("arms", {}).values()
                )
                if decisions > 50 and routes["classifier"].get("phase") == "rolled_back":
                    break
                await asyncio.sleep(0.2)
        dom = await run_chromium(url, budget_ms=6000)
        shot = tmp_path / "demo-dashboard.png"
        await run_chromium(url, screenshot=shot, budget_ms=6000)
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
        out = (await asyncio.wait_for(rest, 10)).decode(errors="replace")
        stderr = (await asyncio.wait_for(errs, 10)).decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    points = chart_points(dom)
    for chart in (
        "chart-share-recommend",
        "chart-reward-recommend",
        "chart-regret-recommend",
        "chart-share-classifier",
        "chart-errors-classifier",
    ):
        assert points.get(chart, 0) > 2, (chart, points)
    assert 'id="conn-status" class="badge ok"' in dom
    assert png_size(shot) == (1400, 1000) and shot.stat().st_size > 30_000
    if os.environ.get("MODELROUTER_KEEP_SCREENSHOT"):
        (Path(os.environ["MODELROUTER_KEEP_SCREENSHOT"]).with_suffix(".demo.png")).write_bytes(
            shot.read_bytes()
        )

    assert code == 0, out[-3000:] + stderr[-3000:]
    assert "Traceback" not in stderr, stderr
    s = read_summary(out)
    # 30% of the bad candidate's answers are 500s: analysis failed twice and it rolled back.
    assert s["phase"] == "rolled_back", out[-2000:]
