"""Seeded ground truth: logs from known environments, estimates against the true value.

Bernoulli, climate (a table of contexts) and linear environments are served by uniform,
epsilon-greedy and Thompson logging policies (the route's own policy objects, learning as they
go); a fixed arm and a frozen contextual policy are evaluated. Figures are printed (`-s`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from policies import ope
from policies.logsim import LOGGERS, generate_log, true_value
from policies.simulate import Env, make_env

RUNS = 60
ROUNDS = 1000

ENVS: dict[str, Env] = {
    "bernoulli": make_env({"type": "bernoulli", "means": {"a": 0.5, "b": 0.55, "c": 0.6}}),
    "climate": make_env(
        {
            "type": "table",
            "contexts": {"hot": 0.5, "cold": 0.3, "mild": 0.2},
            "means": {
                "hot": {"a": 0.7, "b": 0.4, "c": 0.5},
                "cold": {"a": 0.3, "b": 0.6, "c": 0.5},
                "mild": {"a": 0.5, "b": 0.5, "c": 0.6},
            },
        }
    ),
    "linear": make_env(
        {
            "type": "linear",
            "theta": {"a": [0.5, 0.2, 0.0], "b": [0.1, 0.6, 0.2], "c": [0.3, 0.3, 0.4]},
            "noise": 0.5,
        }
    ),
}


def _targets(env: Env) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "fixed_c": lambda x: ope.fixed_dist(env.arms, {"c": 1.0}, x.shape[0])
    }
    if env.type != "bernoulli":
        dim = 3 if env.type == "linear" else 4
        theta = np.random.default_rng(3).normal(size=(3, dim)) * 0.3
        a_inv = np.stack([np.eye(dim) * 0.05] * 3)
        out["frozen_lin_eg"] = lambda x: ope.linear_dist(
            theta, a_inv, x, "epsilon_greedy", epsilon=0.2
        )
    return out


def test_intervals_cover_the_truth_and_dr_beats_ips() -> None:
    cover: dict[str, list[bool]] = {e: [] for e in ope.ESTIMATORS}
    sq: dict[str, list[float]] = {e: [] for e in ope.ESTIMATORS}
    signed: dict[str, list[float]] = {e: [] for e in ope.ESTIMATORS}
    heavy_flagged: list[bool] = []
    lines = []
    for env_name, env in ENVS.items():
        for logger in LOGGERS:
            logs = [generate_log(env, logger, ROUNDS, seed) for seed in range(RUNS)]
            for t_name, dist in _targets(env).items():
                truth = true_value(env, dist)
                case_cov = {e: 0 for e in ope.ESTIMATORS}
                case_sq = {e: 0.0 for e in ope.ESTIMATORS}
                for log in logs:
                    rep = ope.evaluate(log.data, dist(log.data.context))
                    for est in rep.estimates:
                        hit = est.ci_low <= truth <= est.ci_high
                        err = (est.value - truth) ** 2
                        case_cov[est.estimator] += hit
                        case_sq[est.estimator] += err
                        if not (env_name == "linear" and logger == "thompson"):
                            cover[est.estimator].append(hit)
                            sq[est.estimator].append(err)
                            signed[est.estimator].append(est.value - truth)
                    if env_name == "linear" and logger == "thompson":
                        heavy_flagged.append(
                            any(("heavy-tailed" in n or "weak overlap" in n) for n in rep.notes)
                        )
                lines.append(
                    f"{env_name:9} {logger:14} {t_name:13} truth {truth:+.3f}  "
                    + "  ".join(
                        f"{e} cover {case_cov[e] / RUNS:.2f} rmse {np.sqrt(case_sq[e] / RUNS):.3f}"
                        for e in ope.ESTIMATORS
                    )
                )
    print(f"\n{RUNS} seeded runs of {ROUNDS} rounds per case, 95% intervals")
    print("\n".join(lines))
    summary = {e: (float(np.mean(cover[e])), float(np.sqrt(np.mean(sq[e])))) for e in cover}
    print(
        "pooled (without linear/thompson): "
        + ", ".join(f"{e} coverage {c:.3f} rmse {r:.4f}" for e, (c, r) in summary.items())
    )
    flagged = float(np.mean(heavy_flagged))
    print(
        "pooled bias (mean estimate - truth): "
        + ", ".join(f"{e} {np.mean(signed[e]):+.4f}" for e in ope.ESTIMATORS)
    )
    print(f"linear/thompson runs flagged (weak overlap or heavy tails): {flagged:.2f}")
    for e, (c, _) in summary.items():
        assert 0.91 <= c <= 0.985, f"{e}: pooled coverage {c:.3f} is not about 95%"
    assert summary["dr"][1] <= summary["ips"][1] * 1.02, "DR's error is worse than IPS's"
    # Thompson on the linear environment concentrates to propensities near 1e-3: rare rounds
    # carry the estimate and the CLT interval under-covers there; the report must say so
    assert np.mean(heavy_flagged) >= 0.9
