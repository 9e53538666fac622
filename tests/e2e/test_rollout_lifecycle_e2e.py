"""The rollout lifecycle through `modelrouter serve` and the CLI: a new candidate version starts
a new rollout, `retry` restarts a rolled-back one, a candidate that goes down is rolled back."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import ADMIN_TOKEN, Router
from tests.e2e.helpers import PREDICT, Traffic, cli, get_audit, wait_status
from tests.e2e.test_rollout_e2e import canary_config, phase_is
from tests.router.test_dashboard import chart_points, needs_chromium, run_chromium

pytestmark = pytest.mark.e2e

ABORTABLE = (
    "{kind: canary, stable: v1, candidate: v2, steps: [10, 50, 100], interval: 60s, "
    "analysis: {min_requests: 10, checks: [{metric: error_rate, max: 0.2}]}}"
)


async def test_retry_restarts_and_a_new_version_starts_a_new_rollout(
    upstreams: Any, router: Any
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    r: Router = router(canary_config(v1, v2, ABORTABLE))
    await r.wait_ready()
    await wait_status(r, "clf", phase_is("progressing"), "progressing")
    admin = ["--admin", r.admin]
    code, out, err = await cli("abort", "clf", *admin, "--reason", "bad build")
    assert code == 0, err
    await wait_status(r, "clf", phase_is("rolled_back"), "rolled back")
    code, out, err = await cli("resume", "clf", *admin)
    assert code != 0 and "only a paused rollout" in err, (out, err)
    code, out, err = await cli("retry", "clf", *admin, "--reason", "fixed")
    assert code == 0, err
    st = await wait_status(r, "clf", phase_is("progressing"), "validated again")
    assert st["step"] == 0 and st["failures"] == 0 and st["shares"]["v2"] == 0.1
    audit = await get_audit(r, "clf")
    assert [e["action"] for e in audit].count("retry") == 1
    assert [e["action"] for e in audit].count("blessed") == 2  # validation ran again
    # roll it back again, then ship a new version: a reload starts a new rollout from step 0
    code, _, err = await cli("abort", "clf", *admin)
    assert code == 0, err
    await wait_status(r, "clf", phase_is("rolled_back"), "rolled back again")
    r.config_path.write_text(r.config_path.read_text().replace("version: 1.1.0", "version: 1.2.0"))
    code, out, err = await cli("reload", *admin)
    assert code == 0, err
    st = await wait_status(
        r, "clf", lambda s: s["phase"] == "progressing" and s["blessed"] is not None, "new"
    )
    assert st["step"] == 0 and st["arms"]["v2"]["version"] == "1.2.0"


async def test_a_candidate_that_goes_down_is_rolled_back(
    upstreams: Any, router: Any, closed_port: int
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [30, 60, 100], interval: 1s, "
        "analysis: {min_requests: 10, failure_limit: 2, inconclusive_limit: 0, "
        "checks: [{metric: error_rate, max: 0.2}]}}"
    )
    text = canary_config(v1, v2, policy).replace(
        f'url: "{v2.url}", version: 1.1.0',
        f'url: "{v2.url}", version: 1.1.0, health: {{path: /healthz, interval: 200ms}}',
    )
    r: Router = router(text)
    await r.wait_ready()
    async with Traffic(r.url + PREDICT, 2, 20_000, 60):
        await wait_status(r, "clf", phase_is("progressing"), "progressing")
        assert v2.runner is not None
        await v2.runner.cleanup()  # the candidate goes down mid-rollout
        st = await wait_status(r, "clf", phase_is("rolled_back", "promoted"), "rolled back", 40)
    assert st["phase"] == "rolled_back", st
    assert "candidate v2 is down" in st["reason"] or "fails validation" in st["reason"], st
    assert st["shares"] == {"v1": 1.0, "v2": 0.0}


@needs_chromium
async def test_dashboard_opened_after_a_promotion_shows_the_ramp(
    upstreams: Any, router: Any
) -> None:
    v1, v2 = await upstreams("v1"), await upstreams("v2")
    policy = (
        "{kind: canary, stable: v1, candidate: v2, steps: [20, 50, 100], interval: 1s, "
        "analysis: {min_requests: 10, checks: [{metric: error_rate, max: 0.2}]}}"
    )
    r: Router = router(canary_config(v1, v2, policy))
    await r.wait_ready()
    async with Traffic(r.url + PREDICT, 2, 20_000, 60):
        await wait_status(r, "clf", phase_is("promoted"), "promoted", 40)
    # a page that was not open during the rollout: the ramp comes from the router
    # (with an admin token configured the page sends it: it reads it from the fragment)
    dom = await run_chromium(f"{r.admin}/dashboard#token={ADMIN_TOKEN}", budget_ms=1500)
    points = chart_points(dom)
    assert points.get("chart-share-clf", 0) >= 4, points  # new, blessed, 2 steps, promoted
    assert "steps 20% → 50% → [100%]" in dom or "promoted" in dom
    card = re.search(r'<section class="route-card" id="route-clf".*?</section>', dom, re.S)
    assert card, dom[-2000:]
    html = card.group(0)
    for action in ("promote", "abort", "pause", "resume", "retry"):
        assert f'data-action="{action}"' in html
    assert "failures 0/2" in html and "inconclusive 0/5" in html
    assert re.search(r"p50 \d+ms", html) and "200:" in html, html[-3000:]
