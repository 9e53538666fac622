"""The router's regret estimate against the true regret of `simulate`, per environment (issue 10).

    .venv/bin/python bench/regret_estimate.py            # horizon 20000, 5 seeds per row
    .venv/bin/python bench/regret_estimate.py --quick    # horizon 4000, 2 seeds

Each row runs the serving policy in `policies.simulate` with the router's own `RegretTracker`
fed exactly as the engine feeds it, next to the exact regret from the known means. "before"
is the estimate as it was before issue 10 (today's per-label means, no model), computed on the
same runs; the anchor is what issue 10 measured. `bench/experiments.py` prints this table after
the A/A tables through `regret_table()`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from policies import simulate as sim
from policies.spec import BanditSpec, ContextualSpec, Feature

CLIMATE = {
    "type": "table",
    "contexts": {"hot": 0.4, "cold": 0.4, "mild": 0.2},
    "means": {
        "hot": {"summer": 0.12, "winter": 0.02, "allround": 0.07},
        "cold": {"summer": 0.02, "winter": 0.11, "allround": 0.07},
        "mild": {"summer": 0.06, "winter": 0.05, "allround": 0.08},
    },
}
THETA = {"a": [0.5, -0.2, 0.1], "b": [-0.3, 0.4, 0.2], "c": [0.1, 0.1, -0.4]}
NUMERIC = tuple(Feature(f"f{i}", "header", f"x-f{i}", "numeric") for i in range(3))
CLIMATE_FEATURE = (
    Feature("climate", "header", "x-climate", "categorical", ("hot", "cold", "mild")),
)


def _switching(horizon: int, delay: float = 0.0) -> dict[str, Any]:
    return {
        "type": "switching",
        "phases": [
            {"start": 1, "means": {"a": 0.6, "b": 0.4, "c": 0.3}},
            {"start": horizon // 2, "means": {"a": 0.3, "b": 0.5, "c": 0.4}},
        ],
        "delay": delay,
    }


def rows(horizon: int) -> list[tuple[str, Any, dict[str, Any], str]]:
    """(name, policy spec, environment, anchor from issue 10)."""
    bern = {"type": "bernoulli", "means": {"a": 0.05, "b": 0.04, "c": 0.045, "d": 0.03}}
    lin = {"type": "linear", "theta": THETA, "mean": [1, 1, 1]}
    thompson = BanditSpec(arms=("a", "b", "c", "d"), algorithm="thompson")
    discounted = BanditSpec(arms=("a", "b", "c"), algorithm="thompson", discount=0.99)
    return [
        ("bernoulli / thompson", thompson, bern, ""),
        (
            "climate / linucb",
            ContextualSpec(
                arms=("summer", "winter", "allround"), algorithm="linucb", features=CLIMATE_FEATURE
            ),
            CLIMATE,
            "",
        ),
        (
            "linear-numeric / linucb",
            ContextualSpec(arms=("a", "b", "c"), algorithm="linucb", features=NUMERIC),
            lin,
            "true 65, reported 5035",
        ),
        (
            "linear-numeric / lin_ts",
            ContextualSpec(arms=("a", "b", "c"), algorithm="lin_ts", features=NUMERIC),
            lin,
            "true 201, reported 4997",
        ),
        ("switching / thompson 0.99", discounted, _switching(horizon), "true 337, reported 713"),
        (
            "drifting / thompson 0.99",
            discounted,
            {"type": "drifting", "means": {"a": 0.5, "b": 0.45, "c": 0.4}, "drift": 0.003},
            "",
        ),
        ("switching+delay 20 / thompson 0.99", discounted, _switching(horizon, 20.0), ""),
    ]


def regret_table(quick: bool = False) -> list[str]:
    """The table as lines (for bench/experiments.py and this script)."""
    horizon, seeds = (4000, 2) if quick else (20000, 5)
    out = [
        f"Regret estimate vs true regret (horizon {horizon}, {seeds} seeds, means over seeds)",
        f"{'environment / policy':36s} {'true':>8s} {'estimate':>9s} {'ratio':>6s} "
        f"{'est. sd':>8s} {'95% covers':>10s} {'before':>8s}  anchor (issue 10, before)",
    ]
    for name, spec, env, anchor in rows(horizon):
        started = time.perf_counter()
        s = sim.run(spec, sim.make_env(env), horizon, seeds, n_checkpoints=2).summary()
        cover = s["regret_interval_coverage"]
        sd = s["regret_estimate_sd_mean"]
        out.append(
            f"{name:36s} {s['regret_mean']:8.1f} {s['regret_estimate_mean']:9.1f} "
            f"{s['regret_estimate_ratio']:6.2f} {sd if sd is not None else float('nan'):8.1f} "
            f"{'-' if cover is None else f'{100 * cover:.0f}%':>10s} "
            f"{s['regret_label_means_estimate']:8.1f}  {anchor}"
            f"   ({time.perf_counter() - started:.0f}s)"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="horizon 4000, 2 seeds")
    args = ap.parse_args(argv)
    for line in regret_table(args.quick):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
