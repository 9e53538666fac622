"""Cross-check against Open Bandit Pipeline on the same arrays (test-only, when `obp` imports)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import ope
from policies.logsim import generate_log
from policies.simulate import make_env

obp_ope = pytest.importorskip(
    "obp.ope",
    reason="Open Bandit Pipeline (pip install obp) is not installed: cross-check skipped",
)


def test_ips_snips_dr_agree_with_open_bandit_pipeline() -> None:
    env = make_env({"type": "linear", "theta": {"a": [0.5, 0.2], "b": [0.1, 0.6]}})
    d = generate_log(env, "epsilon_greedy", 2000, seed=0).data
    dist = ope.linear_dist(
        np.array([[0.3, 0.1], [0.0, 0.4]]), np.stack([np.eye(2)] * 2), d.context, "lin_ts"
    )
    q = ope.cross_fit_q(d)
    kw = {
        "reward": d.reward,
        "action": d.action,
        "position": np.zeros(d.n, dtype=int),
        "pscore": d.pscore,
        "action_dist": dist[:, :, None],
    }
    assert obp_ope.InverseProbabilityWeighting().estimate_policy_value(**kw) == pytest.approx(
        ope.ips(d, dist).value
    )
    assert obp_ope.SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(
        **kw
    ) == pytest.approx(ope.snips(d, dist).value)
    assert obp_ope.DoublyRobust().estimate_policy_value(
        **kw, estimated_rewards_by_reg_model=q[:, :, None]
    ) == pytest.approx(ope.dr(d, dist, q_hat=q).value)
