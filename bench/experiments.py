"""Experiment statistics you can trust: A/A false positives, power, regret-estimate ratios.

    python bench/experiments.py            # full tables (a few minutes on one core)
    python bench/experiments.py --quick    # fewer replications, for a smoke run

Every figure comes from `policies.experiments.run_ab`, which evaluates the same test functions
`ABTestPolicy.result()` uses. Peeking means looking at ~60-200 points spread geometrically over
the experiment (the sequential test is meant to be looked at any time; the fixed-horizon tests
are shown both looked at once at the end and "peeked" at every look, which is what inflates
them). The anchors are the figures issue 10 measured before the fix.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.experiments import ABScenario, run_ab

SPLITS = ((50.0, 50.0), (90.0, 10.0), (99.0, 1.0))
BASES = (0.5, 0.05, 0.01)

# issue 10, before the fix (A/A, alpha 0.05)
ANCHORS = {
    ("request", (90.0, 10.0), 0.05, "binary"): "msprt 0.139",
    ("request", (90.0, 10.0), 0.01, "binary"): "msprt 0.320",
    ("user", (50.0, 50.0), 0.05, "binary"): "SRM 0.31, z 0.15 (per request)",
    ("user-heavy", (50.0, 50.0), 0.05, "binary"): "SRM 0.70, z 0.48, msprt 0.21 (per request)",
}


def _users(unit: str, split: tuple[float, ...], base: float) -> int:
    """Enough users that the small arm sees a few dozen events of the rarest outcome."""
    small = min(split) / sum(split)
    events = 60.0
    need = events / (small * min(base, 1 - base))
    if unit == "request":
        return int(min(max(need, 20000), 2_000_000))
    return int(min(max(need / 10, 5000), 60000))  # ~10 requests per user


def _scenario(
    unit: str, split: tuple[float, ...], base: float, reward: str, reps: int, effect: float = 0.0
) -> ABScenario:
    kw: dict[str, Any] = {
        "split": split,
        "base": base if reward == "binary" else 1.0,
        "reward": reward,
        "effect": effect,
        "replications": reps,
        "users": _users(unit, split, base),
        "seed": 7,
    }
    if unit == "request":
        kw.update(sticky=False, looks=200)
    else:
        kw.update(
            sticky=True,
            requests="pareto" if unit.endswith("heavy") else "fixed",
            requests_mean=10.0,
            user_sd=0.5,
            looks=60,
        )
        if unit.startswith("per-request"):
            kw["unit"] = "request"
    return ABScenario(**kw)


def aa_table(reps: int, units: tuple[str, ...]) -> list[str]:
    head = (
        f"{'unit':<22}{'reward':<11}{'split':<8}{'base':>6}  {'msprt':>6} {'z@end':>6} "
        f"{'z peek':>6} {'welch@end':>9} {'welch peek':>10} {'SRM':>6}   anchor (before)"
    )
    out = [head, "-" * len(head)]
    for unit in units:
        for reward in ("binary", "continuous"):
            for split in SPLITS:
                for base in BASES if reward == "binary" else (0.5,):
                    t0 = time.perf_counter()
                    r = run_ab(_scenario(unit, split, base, reward, reps))
                    m = {(x["method"], x["peeking"]): x["rate"] for x in r["methods"]}
                    key = ("user-heavy" if unit == "per-request-heavy" else unit, split, base)
                    anchor = ANCHORS.get((*key, reward), "") if "per-request" not in unit else ""
                    if unit.startswith("per-request"):
                        anchor = "(the old analysis, shown for contrast)"
                    label = f"{split[0]:g}/{split[1]:g}"
                    b = f"{base:g}" if reward == "binary" else "-"
                    out.append(
                        f"{unit:<22}{reward:<11}{label:<8}{b:>6}  {m[('msprt', True)]:>6.3f} "
                        f"{m[('z_test', False)]:>6.3f} {m[('z_test', True)]:>6.3f} "
                        f"{m[('welch_t', False)]:>9.3f} {m[('welch_t', True)]:>10.3f} "
                        f"{r['srm_rate']:>6.3f}   {anchor}"
                    )
                    print(out[-1], f"  [{time.perf_counter() - t0:.1f}s]", file=sys.stderr)
    return out


def power_table(reps: int, effect: float) -> list[str]:
    head = (
        f"{'unit':<12}{'split':<8}{'base':>6}  {'users':>8}  {'msprt':>6} {'t(msprt)':>10} "
        f"{'z@end':>6}  (power at relative lift {effect:+.0%}; t = median requests to decision)"
    )
    out = [head, "-" * len(head)]
    for unit in ("request", "user"):
        for split in SPLITS[:2]:
            for base in (0.5, 0.05):
                sc = _scenario(unit, split, base, "binary", reps, effect=effect)
                # a horizon that gives the fixed test about 80% power at this effect
                sc = _sized(sc, effect)
                r = run_ab(sc)
                m = {(x["method"], x["peeking"]): x for x in r["methods"]}
                ms = m[("msprt", True)]
                t = ms["median_requests_to_decision"]
                out.append(
                    f"{unit:<12}{split[0]:g}/{split[1]:g}{'':<3}{base:>6g}  {sc.users:>8}  "
                    f"{ms['rate']:>6.3f} {t if t is None else round(t):>10} "
                    f"{m[('z_test', False)]['rate']:>6.3f}"
                )
    return out


def _sized(sc: ABScenario, effect: float) -> ABScenario:
    w = min(sc.split) / sum(sc.split)
    p = sc.base
    d = p * effect
    var = p * (1 - p) * (1 / w + 1 / (1 - w))
    n = var * (1.96 + 0.84) ** 2 / (d * d)  # requests for 80% power (fixed horizon, per request)
    deff = 1.0 if not sc.sticky else 1.0 + (sc.requests_mean - 1) * (sc.user_sd**2) * p / (1 - p)
    users = int(n * deff / (sc.requests_mean if sc.sticky else 1.0))
    kw = {f: getattr(sc, f) for f in sc.__dataclass_fields__}
    kw["users"] = max(users, 1000)
    return ABScenario(**kw)


def regret_table(quick: bool = False) -> list[str] | None:
    """Regret estimate / true regret per bandit environment, with the issue's anchors
    (`bench/regret_estimate.py`, the bandit half of issue 10)."""
    from bench.regret_estimate import regret_table as table

    return table(quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer replications (smoke run)")
    ap.add_argument("--reps", type=int, default=None, help="replications per cell")
    ap.add_argument("--effect", type=float, default=0.1, help="relative lift for the power table")
    args = ap.parse_args(argv)
    reps = args.reps or (60 if args.quick else 400)
    print(f"A/A false-positive rates, alpha 0.05, {reps} replications per cell")
    print("units: request = non-sticky route; user = sticky route, 10 requests per user;")
    print("user-heavy = Pareto(2.5) requests per user (mean 10); per-request-* = the same")
    print("sticky traffic analysed per request, as before the fix.")
    units = ("request", "user", "user-heavy", "per-request", "per-request-heavy")
    for line in aa_table(reps, units):
        print(line)
    print()
    for line in power_table(max(reps // 2, 30), args.effect):
        print(line)
    regret = regret_table(args.quick)
    if regret:
        print()
        for line in regret:
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
