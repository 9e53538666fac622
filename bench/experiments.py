"""Experiment statistics you can trust (issue 10): regret-estimate ratios per environment.

    .venv/bin/python bench/experiments.py            # full tables
    .venv/bin/python bench/experiments.py --quick    # smaller horizons, a smoke run

This file holds the bandit half; the A/B half (A/A false-positive table, power) lands from the
i10-stats branch, whose `regret_table()` hook calls `bench.regret_estimate.regret_table`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.regret_estimate import regret_table as _regret_table


def regret_table(quick: bool = False) -> list[str] | None:
    """Regret estimate / true regret per bandit environment, with the issue's anchors."""
    return _regret_table(quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller horizons (smoke run)")
    args = ap.parse_args(argv)
    for line in regret_table(args.quick) or []:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
