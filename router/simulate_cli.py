"""`modelrouter simulate SCENARIO`: load a scenario, run `policies.simulate`, print, write CSV.

The policy block is validated by the same `parse_policy` as the router config (backend names are
free here), so a scenario is a faithful rehearsal of a route.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from policies import simulate as sim
from policies.spec import LEARNING_KINDS, ABTestSpec, BanditSpec, ContextualSpec, PolicySpec
from router.config import ConfigError, parse_policy
from router.errors import ModelrouterError

__all__ = ["Scenario", "ScenarioError", "load_scenario", "simulate_main"]

_KEYS = ("policy", "environment", "horizon", "seeds", "checkpoints")


class ScenarioError(ModelrouterError):
    """A bad scenario file; `errors` are lines like `FILE: path: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Scenario:
    policy: PolicySpec
    env: sim.Env
    horizon: int
    seeds: int
    checkpoints: int = 100


def _line(node: yaml.Node | None) -> str:
    return f":{node.start_mark.line + 1}" if node is not None else ""


def load_scenario(path: str | Path) -> Scenario:
    """Parse and validate a scenario file; raises ScenarioError listing every problem."""
    src = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError([f"{src}: cannot read: {e.strerror or e}"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{src}:{mark.line + 1}" if mark is not None else src
        raise ScenarioError(
            [f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}"]
        ) from None
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise ScenarioError([f"{src}: a scenario must be a mapping with keys {', '.join(_KEYS)}"])
    nodes = {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    errors: list[str] = []

    def err(key: str, msg: str) -> None:
        errors.append(f"{src}{_line(nodes.get(key.split('.')[0]))}: {key}: {msg}")

    for k in data:
        if k not in _KEYS:
            err(str(k), f"unknown key; allowed: {', '.join(_KEYS)}")
    policy: PolicySpec | None = None
    if "policy" not in data:
        errors.append(f"{src}: policy: required")
    else:
        try:
            policy = parse_policy(nodes["policy"], src, "policy", backends=None)
        except ConfigError as e:
            errors.extend(e.errors)
        if policy is not None and policy.kind not in LEARNING_KINDS:
            err(
                "policy.kind",
                f"simulate runs learning policies ({', '.join(sorted(LEARNING_KINDS))}), "
                f"got {policy.kind}",
            )
            policy = None
    env: sim.Env | None = None
    env_data = data.get("environment")
    if env_data is None:
        errors.append(f"{src}: environment: required")
    elif not isinstance(env_data, dict):
        err("environment", "must be a mapping with a type")
    else:
        try:
            env = sim.make_env(env_data)
        except ValueError as e:
            errors.append(f"{src}{_line(nodes.get('environment'))}: environment.{e}")
    horizon = _positive(data.get("horizon", 10_000), "horizon", err)
    seeds = _positive(data.get("seeds", 10), "seeds", err)
    checkpoints = _positive(data.get("checkpoints", 100), "checkpoints", err)
    if policy is not None and env is not None:
        arms = [_env_arm(policy, a) for a in _policy_arms(policy)]
        missing = [a for a in arms if a not in env.arms]
        if missing:
            err(
                "environment",
                f"no mean for arm(s) {', '.join(missing)}; environment arms: {', '.join(env.arms)}",
            )
        if isinstance(env, sim.LinearEnv) and policy.kind != "contextual_bandit":
            err("environment.type", "a linear environment needs a contextual_bandit policy")
    if errors:
        raise ScenarioError(errors)
    assert policy is not None and env is not None
    return Scenario(policy, env, horizon, seeds, checkpoints)


def _policy_arms(p: PolicySpec) -> list[str]:
    if isinstance(p, ABTestSpec | BanditSpec | ContextualSpec):
        return list(p.arms)
    return []  # not a learning kind: already reported


def _env_arm(p: PolicySpec, arm: str) -> str:
    if p.kind == "ab_test":
        return str(p.arms[arm])
    return arm


def _positive(v: Any, key: str, err: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        err(key, f"must be a positive integer, got {v!r}")
        return 1
    return v


def _describe(s: Scenario) -> str:
    p = s.policy
    algo: str
    if isinstance(p, ABTestSpec):
        algo = p.test.method
    elif isinstance(p, BanditSpec | ContextualSpec):
        algo = p.algorithm
    else:
        algo = ""
    return f"{p.kind}/{algo} vs {s.env.type}"


def _print_table(s: Scenario, res: sim.SimResult, elapsed: float, out: TextIO) -> None:
    summ = res.summary()
    print(f"{_describe(s)}: horizon {res.horizon}, {res.seeds} seeds ({elapsed:.1f}s)", file=out)
    marks = sorted({t for _, t, _, _ in res.rows})
    show = [marks[int(i)] for i in np.linspace(0, len(marks) - 1, num=min(10, len(marks)))]
    by_t: dict[int, list[tuple[float, float]]] = {}
    for _, t, rew, reg in res.rows:
        by_t.setdefault(t, []).append((rew, reg))
    print(f"{'t':>10}  {'reward':>12}  {'regret':>10}", file=out)
    for t in dict.fromkeys(show):
        rows = by_t[t]
        reward = float(np.mean([r for r, _ in rows]))
        regret = float(np.mean([g for _, g in rows]))
        print(f"{t:>10}  {reward:>12.1f}  {regret:>10.2f}", file=out)
    line = (
        f"regret {summ['regret_mean']:.2f} ± {summ['regret_std']:.2f} (sd over seeds), "
        f"reward {summ['reward_mean']:.1f}"
    )
    if res.lai_robbins is not None:
        line += f", Lai–Robbins bound {res.lai_robbins:.2f}"
    print(line, file=out)
    if summ.get("regret_estimate_mean") is not None:
        ratio = summ["regret_estimate_ratio"]
        sd = summ["regret_estimate_sd_mean"]
        cover = summ["regret_interval_coverage"]
        print(
            f"router's regret estimate {summ['regret_estimate_mean']:.2f}"
            + (f" (sd {sd:.2f})" if sd is not None else "")
            + (f", ratio to true {ratio:.2f}" if ratio is not None else "")
            + (
                f", 95% interval covers the truth in {100 * cover:.0f}% of seeds"
                if cover is not None
                else ""
            )
            + f" [{summ['regret_estimate_method']}]",
            file=out,
        )


def simulate_main(
    path: str,
    horizon: int | None = None,
    seeds: int | None = None,
    out: str | None = None,
    as_json: bool = False,
) -> int:
    """Run a scenario; 0 on success, 2 on a bad scenario (every error printed, no traceback).

    A file with a top-level `experiment:` block is an A/B planning scenario (see
    `router.experiment_cli`); there `horizon` overrides the users and `seeds` the replications.
    """
    from router.experiment_cli import experiment_main, is_experiment_scenario

    if is_experiment_scenario(path):
        return experiment_main(path, users=horizon, replications=seeds, out=out, as_json=as_json)
    try:
        s = load_scenario(path)
    except ScenarioError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    T = horizon if horizon is not None else s.horizon
    n = seeds if seeds is not None else s.seeds
    started = time.perf_counter()
    try:
        res = sim.run(s.policy, s.env, T, n, n_checkpoints=s.checkpoints)
    except ValueError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    if out is not None:
        try:
            with open(out, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["seed", "t", "cumulative_reward", "regret"])
                for seed, t, rew, reg in res.rows:
                    w.writerow([seed, t, f"{rew:.6g}", f"{reg:.6g}"])
        except OSError as e:
            print(f"{out}: cannot write: {e.strerror or e}", file=sys.stderr)
            return 2
    if as_json:
        print(json.dumps(res.summary()))
    else:
        _print_table(s, res, elapsed, sys.stdout)
    return 0
