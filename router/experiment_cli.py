"""`modelrouter simulate` for A/B test planning: a scenario file with an `experiment:` block.

    experiment:
      split: [90, 10]          # control first
      base: 0.05               # control conversion rate (binary) or mean (continuous)
      effect: 0.0              # relative lift of the treatment(s); 0 = A/A
      users: 5000              # randomisation units (requests on non-sticky routes)
      requests: pareto         # requests per user: fixed | geometric | pareto (heavy-tailed)
      requests_mean: 10
      user_sd: 0.5             # how much users differ (relative sd of their own rate)
      sticky: true             # randomise users (sticky key) or requests
      looks: 60                # peeking schedule (geometric), the last at the end
      replications: 300

prints, per method, the false-positive rate (effect 0) or power, and the median number of
requests to a decision; `policies.experiments` does the work with the policy's own tests.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from policies.experiments import ABScenario, run_ab, scenario_from_mapping

__all__ = ["experiment_main", "is_experiment_scenario"]


def is_experiment_scenario(path: str) -> bool:
    """Whether the scenario file is an A/B planning one (top-level `experiment:`)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False  # the regular loader reports it
    return isinstance(data, dict) and "experiment" in data


def experiment_main(
    path: str,
    users: int | None = None,
    replications: int | None = None,
    out: str | None = None,
    as_json: bool = False,
) -> int:
    """Run an A/B planning scenario; 0 on success, 2 on a bad scenario (clear message)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        print(f"{path}: cannot read: {e.strerror or e}", file=sys.stderr)
        return 2
    unknown = sorted(set(data) - {"experiment"})
    if unknown:
        print(f"{path}: {unknown[0]}: unknown key next to experiment", file=sys.stderr)
        return 2
    block = data["experiment"]
    if not isinstance(block, Mapping):
        print(f"{path}: experiment: must be a mapping of scenario keys", file=sys.stderr)
        return 2
    block = dict(block)
    if users is not None:
        block["users"] = users
    if replications is not None:
        block["replications"] = replications
    try:
        sc = scenario_from_mapping(block, "experiment")
    except ValueError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    res = run_ab(sc)
    elapsed = time.perf_counter() - started
    if out is not None:
        try:
            with open(out, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["method", "peeking", "rate", "median_requests_to_decision"])
                for m in res["methods"]:
                    w.writerow(
                        [m["method"], m["peeking"], m["rate"], m["median_requests_to_decision"]]
                    )
        except OSError as e:
            print(f"{out}: cannot write: {e.strerror or e}", file=sys.stderr)
            return 2
    if as_json:
        print(json.dumps(res))
    else:
        print(format_result(sc, res, elapsed))
    return 0


def format_result(sc: ABScenario, res: Mapping[str, Any], elapsed: float) -> str:
    s = res["scenario"]
    split = "/".join(f"{w:g}" for w in s["split"])
    who = (
        f"{s['users']} users ({s['requests']} requests, mean {s['requests_mean']:g}), sticky"
        if s["sticky"]
        else f"{s['users']} requests, not sticky"
    )
    lines = [
        f"A/B {'A/A' if sc.effect == 0 else f'lift {sc.effect:+.1%}'}: split {split}, "
        f"base {sc.base:g} ({sc.reward}), {who}; unit of analysis: {s['unit']}; "
        f"{s['looks']} looks; {s['replications']} replications ({elapsed:.1f}s)"
    ]
    what = "false positives" if sc.effect == 0 else "power"
    lines.append(f"  {'method':<9} {'looks':<12} {what:>15}  {'median requests to decision':>28}")
    for m in res["methods"]:
        looks = "every look" if m["peeking"] else "at the end"
        if m["method"] == "msprt":
            looks = "every look"
        t = m["median_requests_to_decision"]
        note = ""
        if sc.effect == 0 and m["peeking"] and m["method"] != "msprt":
            note = "  (peeking at a fixed-horizon test)"
        lines.append(
            f"  {m['method']:<9} {looks:<12} {m['rate']:>15.3f}  "
            f"{'-' if t is None else f'{t:.0f}':>28}{note}"
        )
    lines.append(
        f"  sample-ratio mismatch flagged: {res['srm_rate']:.3f} (the router's sequential test, "
        f"any look); a chi-square at p < 0.001 would flag {res['srm_rate_chi2_end']:.3f} at the "
        f"end, {res['srm_rate_chi2_any_look']:.3f} at any look"
    )
    return "\n".join(lines)
