"""`modelrouter replay LOG`: evaluate candidate policies on a decision log, fit one, export it.

- `--policy FILE` (repeatable): a candidate, as YAML or JSON `{policy: <route policy block>,
  state: <learned parameters or a file>, learn: bool, name: str}`; the output of
  `modelrouter snapshot` and of `--fit` has that shape. A frozen candidate (no learning along
  the log) gets IPS, SNIPS and DR; a learning one gets the replay method.
- `--fit OUT` trains a policy from the log (importance-weighted) and writes a candidate file
  that `warm_start:` and `--policy` accept; `--holdout F` keeps the newest share F of the log out
  of the fit and evaluates the fitted policy on it.
- `--export FILE.npz|FILE.vw`: Open Bandit Pipeline arrays, or Vowpal Wabbit `--cb` text.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from policies import ope
from policies.features import FeatureEncoder
from policies.registry import build_policy
from policies.spec import ABTestSpec, BlueGreenSpec, ContextualSpec, PolicySpec, WeightedSpec
from router.config import ConfigError, parse_policy
from router.decisionlog import SNAPSHOT_FORMAT, Extract, LogError, read_log, to_logged_data
from router.errors import ModelrouterError

__all__ = [
    "FORMAT",
    "Candidate",
    "ReplayError",
    "evaluate_candidate",
    "export_npz",
    "export_vw",
    "fit_policy",
    "load_candidate",
    "replay_main",
]

FORMAT = SNAPSHOT_FORMAT
_LEARNING = ("bandit", "contextual_bandit")


class ReplayError(ModelrouterError):
    """Bad input to replay; the message names the file and what is wrong."""


@dataclass(slots=True)
class Candidate:
    name: str
    source: str
    spec: PolicySpec
    block: dict[str, Any]  # the policy block as written (to write it back out)
    state: dict[str, Any] | None
    learn: bool


# ---- candidates ---------------------------------------------------------------------------------


def _read_doc(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ReplayError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ReplayError(
            f"{where}: invalid YAML/JSON: {getattr(e, 'problem', None) or e}"
        ) from None


def load_candidate(path: str) -> Candidate:
    """A candidate file: `policy:` block (required), optional `state:`, `learn:`, `name:`."""
    doc = _read_doc(path)
    if not isinstance(doc, dict) or "policy" not in doc:
        raise ReplayError(
            f"{path}: expected a mapping with a 'policy:' block (a route policy, as in the "
            "config), optionally 'state:' (learned parameters) and 'learn: true|false'"
        )
    allowed = {"policy", "state", "learn", "name", "format", "route", "taken_at", "fitted"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ReplayError(
            f"{path}: {unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}"
        )
    block = doc["policy"]
    try:
        spec = parse_policy(block, path, "policy", backends=None)
    except ConfigError as e:
        raise ReplayError("\n".join(e.errors)) from None
    state = doc.get("state")
    if isinstance(state, str):
        sdoc = _read_doc(str(Path(path).parent / state))
        state = sdoc.get("state", sdoc) if isinstance(sdoc, dict) else sdoc
    if state is not None and not isinstance(state, dict):
        raise ReplayError(f"{path}: state: must be a mapping of learned parameters or a file name")
    learn = doc.get("learn")
    if learn is not None and not isinstance(learn, bool):
        raise ReplayError(f"{path}: learn: must be true or false, got {learn!r}")
    if learn is None:
        learn = spec.kind in _LEARNING and state is None
    if learn and spec.kind not in _LEARNING:
        raise ReplayError(f"{path}: learn: a {spec.kind} policy does not learn")
    name = str(doc.get("name") or doc.get("route") or Path(path).stem)
    return Candidate(name, path, spec, dict(block), state, bool(learn))


def _log_arms(spec: PolicySpec) -> list[str]:
    if isinstance(spec, ABTestSpec):
        return list(spec.arms.values())
    return list(getattr(spec, "arms", ()))


def _policy_object(c: Candidate, dim: int, seed: int) -> Any:
    spec = c.spec
    if isinstance(spec, ContextualSpec):
        want = FeatureEncoder(spec.features).dim
        if want != dim:
            raise ReplayError(
                f"{c.source}: the policy's features encode to {want} values (bias included) but "
                f"the log's contexts have {dim}: the feature layouts differ"
            )
    policy: Any = build_policy(spec, np.random.default_rng(seed), dim=dim if dim > 1 else None)
    if c.state is not None:
        if isinstance(spec, ContextualSpec) and int(c.state.get("dim", -1)) != policy.dim:
            raise ReplayError(
                f"{c.source}: state: dim {c.state.get('dim')} does not match the policy's "
                f"{policy.dim} features"
            )
        try:
            policy.restore(c.state)
        except (TypeError, ValueError, KeyError) as e:
            raise ReplayError(f"{c.source}: state: unreadable learned parameters: {e}") from None
    return policy


def candidate_dist(c: Candidate, data: ope.LoggedData, seed: int = 0) -> ope.FloatArray:
    """The frozen candidate's action distribution at every logged context."""
    spec = c.spec
    arms = data.arms
    try:
        if isinstance(spec, WeightedSpec):
            return ope.fixed_dist(arms, spec.weights, data.n)
        if isinstance(spec, BlueGreenSpec):
            return ope.fixed_dist(arms, {spec.active: 1.0}, data.n)
        if isinstance(spec, ABTestSpec):
            split = {spec.arms[a]: w for a, w in spec.split.items()}
            return ope.fixed_dist(arms, split, data.n)
        if spec.kind in _LEARNING:
            policy = _policy_object(c, data.context.shape[1], seed)
            return ope.policy_dist(policy, arms, data.context)
    except ValueError as e:
        raise ReplayError(f"{c.source}: {e}") from None
    raise ReplayError(
        f"{c.source}: policy.kind: {spec.kind} is not evaluated offline; write the split to "
        "evaluate as kind: weighted"
    )


def evaluate_candidate(
    c: Candidate,
    data: ope.LoggedData,
    *,
    clip: float = math.inf,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """The candidate's estimates, diagnostics and which estimator to trust, as JSON-able data."""
    out: dict[str, Any] = {"name": c.name, "file": c.source, "kind": c.spec.kind}
    algo = getattr(c.spec, "algorithm", None)
    if algo:
        out["algorithm"] = algo
    if c.learn:
        policy = _policy_object(c, data.context.shape[1], seed)
        est = ope.replay(data, policy, alpha=alpha)
        valid = ope.validity(data, learning=True)
        out.update(
            mode="learning",
            estimates={"replay": est.to_json()},
            diagnostics=None,
            validity={k: {"valid": v.valid, "reason": v.reason} for k, v in valid.items()},
            recommended="replay" if valid["replay"].valid else None,
            notes=[],
        )
        return out
    rep = ope.evaluate(data, candidate_dist(c, data, seed), clip=clip, alpha=alpha, seed=seed)
    out.update(mode="frozen", **{k: v for k, v in rep.to_json().items() if k != "observed"})
    return out


# ---- fitting ------------------------------------------------------------------------------------


def default_template(ext: Extract) -> dict[str, Any]:
    """The policy block `--fit` trains when no --policy is given: from the log's own layout."""
    arms = list(ext.data.arms)
    if ext.layout is not None and ext.layout.get("features"):
        return {
            "kind": "contextual_bandit",
            "arms": arms,
            "algorithm": "lin_ts",
            "features": [dict(f) for f in ext.layout["features"]],
            "reward": {"type": ext.data.reward_type},
        }
    if ext.data.context.shape[1] > 1:
        raise ReplayError(
            "the log has context features but no layout record to name them; give the policy "
            "to fit with --policy FILE"
        )
    return {
        "kind": "bandit",
        "arms": arms,
        "algorithm": "thompson",
        "reward": {"type": ext.data.reward_type},
    }


def fit_policy(
    template: Candidate, data: ope.LoggedData, *, lam: float | None = None
) -> dict[str, Any]:
    """Learned parameters for `template` from the log, in the format its `restore()` reads.

    Contextual: per arm A = lambda I + sum w x x', b = sum w r x, where w is the inverse
    propensity normalised to average 1 over the arm's rounds (so the model describes every
    context, not just those the logging policy favoured, and its confidence matches the real
    number of rounds). Context-free: trials, reward sums and squares per arm.
    """
    spec = template.spec
    arms = _log_arms(spec)
    index = {a: i for i, a in enumerate(data.arms)}
    missing = [a for a in arms if a not in index]
    if missing:
        raise ReplayError(f"{template.source}: arm(s) {missing} never appear in the log")
    if isinstance(spec, ContextualSpec):
        d = data.context.shape[1]
        want = FeatureEncoder(spec.features).dim
        if want != d:
            raise ReplayError(
                f"{template.source}: the policy's features encode to {want} values but the log's "
                f"contexts have {d}: the feature layouts differ"
            )
        lam_ = float(spec.params.get("lambda", 1.0)) if lam is None else lam
        out_arms: dict[str, Any] = {}
        for a in arms:
            mask = data.action == index[a]
            x = data.context[mask]
            r = data.reward[mask]
            inv = 1.0 / data.pscore[mask]
            w = inv * (len(inv) / inv.sum()) if len(inv) else inv
            A = lam_ * np.eye(d) + (x * w[:, None]).T @ x
            b = (x * (w * r)[:, None]).sum(axis=0) if len(r) else np.zeros(d)
            out_arms[a] = {
                "A": A.tolist(),
                "b": b.tolist(),
                "decisions": int(mask.sum()),
                "rewards": int(mask.sum()),
                "reward_sum": float(r.sum()),
                "reward_sq_sum": float((r * r).sum()),
            }
        return {"algorithm": spec.algorithm, "dim": d, "arms": out_arms}
    if spec.kind == "bandit":
        out_b: dict[str, Any] = {}
        for a in arms:
            r = data.reward[data.action == index[a]]
            n = float(len(r))
            out_b[a] = {
                "n": n,
                "s": float(r.sum()),
                "ss": float((r * r).sum()),
                "decisions": int(n),
                "rewards": int(n),
                "reward_sum": float(r.sum()),
                "reward_sq_sum": float((r * r).sum()),
            }
        return {"algorithm": getattr(spec, "algorithm", None), "version": 0, "arms": out_b}
    raise ReplayError(f"{template.source}: --fit trains bandit or contextual_bandit policies")


# ---- export -------------------------------------------------------------------------------------


def export_npz(path: str, ext: Extract, action_dist: ope.FloatArray | None = None) -> None:
    """Open Bandit Pipeline's bandit-feedback arrays (plus the arm names and decision times)."""
    data = ext.data
    arrays: dict[str, Any] = {
        "n_rounds": np.int64(data.n),
        "n_actions": np.int64(data.n_actions),
        "action": data.action.astype(np.int64),
        "reward": data.reward,
        "pscore": data.pscore,
        "context": data.context,
        "position": np.zeros(data.n, dtype=np.int64),
        "arms": np.array(data.arms, dtype=str),
        "timestamp": np.array([r.t for r in ext.rounds], dtype=float),
        "decision_id": np.array([r.id for r in ext.rounds], dtype=str),
    }
    if action_dist is not None:
        arrays["action_dist"] = action_dist[:, :, None]
    if ext.layout is not None:
        arrays["feature_names"] = np.array(_feature_names(ext.layout, data.context.shape[1]))
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _feature_names(layout: Mapping[str, Any] | None, dim: int) -> list[str]:
    names = ["bias"]
    for f in (layout or {}).get("features", []):
        if f.get("type") == "categorical":
            names.extend(f"{f['name']}={v}" for v in f.get("values", []))
        else:
            names.append(str(f["name"]))
    if len(names) != dim:
        names = ["bias", *(f"x{i}" for i in range(1, dim))]
    return names


_VW_BAD = re.compile(r"[\s:|]")


def export_vw(path: str, ext: Extract) -> None:
    """Vowpal Wabbit `--cb K` lines: `action:cost:probability | features` (cost = -reward)."""
    data = ext.data
    names = [_VW_BAD.sub("_", n) for n in _feature_names(ext.layout, data.context.shape[1])]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(data.n):
            x = data.context[i]
            feats = " ".join(f"{names[j]}:{x[j]:.6g}" for j in range(1, len(x)) if x[j] != 0.0)
            cost = 0.0 - float(data.reward[i])  # VW minimises cost; 0.0 - 0.0 is +0
            fh.write(
                f"{int(data.action[i]) + 1}:{cost:.6g}:{float(data.pscore[i]):.6g} | {feats}\n"
            )


# ---- the command --------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _print_report(doc: Mapping[str, Any], out: TextIO) -> None:
    lg = doc["log"]
    print(
        f"log {lg['path']}: route {lg['route']}, {lg['rounds']} rounds with a reward"
        + (f" ({lg['unrewarded']} without one, left out)" if lg["unrewarded"] else "")
        + (f" ({lg['filled']} got missing_reward {lg['missing_reward']})" if lg["filled"] else ""),
        file=out,
    )
    print(
        f"arms {', '.join(lg['arms'])}; logging policy {lg['logging_policy'] or 'unknown'}"
        f" ({'uniform' if lg['uniform'] else 'not uniform'}, smallest propensity "
        f"{_fmt(lg['min_pscore'], 4)})",
        file=out,
    )
    ob = doc["observed"]
    print(
        f"observed reward of the logging policy: {_fmt(ob['value'])} "
        f"[{_fmt(ob['ci_low'])}, {_fmt(ob['ci_high'])}]",
        file=out,
    )
    header = ("candidate", "estimator", "value", f"{doc['level']:.0%} interval", "valid")
    rows: list[tuple[str, ...]] = []
    for c in doc["candidates"]:
        first = True
        for name, e in c["estimates"].items():
            mark = " *" if name == c.get("recommended") else ""
            rows.append(
                (
                    c["name"] if first else "",
                    name + mark,
                    _fmt(e["value"]),
                    f"[{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}]",
                    "yes" if e["valid"] else "no",
                )
            )
            first = False
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    print("", file=out)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), file=out)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    print("(* = the estimator to trust for this candidate)", file=out)
    for c in doc["candidates"]:
        lines = []
        diag = c.get("diagnostics")
        if diag:
            lines.append(
                f"effective sample size {_fmt(diag['ess'], 0)} of {diag['n']}, max weight "
                f"{_fmt(diag['max_weight'], 1)}, clipped {diag['clipped_share'] * 100:.1f}%"
            )
        if c.get("recommended") is None:
            reasons = {
                v["reason"]
                for k, v in c["validity"].items()
                if not v["valid"] and k in c["estimates"]
            }
            lines.append("no valid estimator: " + "; ".join(sorted(reasons)))
        else:
            lines.append(f"{c['recommended']}: {c['validity'][c['recommended']]['reason']}")
        lines.extend(c.get("notes", []))
        print(f"\n{c['name']} ({c['mode']}):", file=out)
        for line in lines:
            print(f"  {line}", file=out)
    for note in doc.get("notes", []):
        print(f"\nnote: {note}", file=out)


def replay_main(args: Any) -> int:
    """Run `modelrouter replay`; 0 ok, 2 bad input (every message names its file)."""
    try:
        return _replay(args, sys.stdout)
    except (ReplayError, LogError) as e:
        print(f"modelrouter replay: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"modelrouter replay: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


def _replay(args: Any, out: TextIO) -> int:
    policies: Sequence[str] = args.policy or []
    if not policies and not args.fit and not args.export:
        raise ReplayError("nothing to do: give --policy FILE, --fit OUT or --export FILE")
    if args.holdout is not None and not args.fit:
        raise ReplayError("--holdout applies to --fit")
    contents = read_log(args.log)
    ext = to_logged_data(contents, args.route, missing_reward=args.missing_reward)
    if ext.data.n == 0:
        raise LogError(
            f"{args.log}: route '{ext.route}' has no decision with a reward "
            f"({ext.unrewarded} without one; --missing-reward R counts them as R)"
        )
    candidates = [load_candidate(p) for p in policies]
    data = ext.data
    notes = list(ext.notes)
    if contents.bad_lines:
        notes.append(f"{contents.bad_lines} unreadable line(s) skipped (e.g. a torn last line)")
    eval_data = data
    if args.fit:
        template = candidates.pop(0) if candidates else None
        if template is None:
            block = default_template(ext)
            spec = parse_policy(block, "<log layout>", "policy", backends=None)
            template = Candidate("fitted", "<log layout>", spec, block, None, False)
        fit_data = data
        if args.holdout is not None:
            cut = round(data.n * (1.0 - args.holdout))
            if cut < 1 or cut >= data.n:
                raise ReplayError(f"--holdout {args.holdout}: leaves no rounds to fit or to test")
            fit_data = data.subset(slice(0, cut))
            eval_data = data.subset(slice(cut, data.n))
            notes.append(
                f"fitted on the oldest {cut} rounds; estimates below use the newest "
                f"{data.n - cut} only"
            )
        else:
            notes.append(
                "the fitted policy is evaluated on the rounds it was fitted on, which flatters "
                "it; --holdout 0.3 keeps the newest 30% out of the fit for an honest estimate"
            )
        state = fit_policy(template, fit_data)
        doc: dict[str, Any] = {
            "format": FORMAT,
            "name": Path(args.fit).stem,
            "policy": template.block,
            "state": state,
            "fitted": {
                "log": str(args.log),
                "route": ext.route,
                "rounds": fit_data.n,
                "weighting": "inverse propensity, normalised per arm",
            },
        }
        Path(args.fit).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.fit} (fitted on {fit_data.n} rounds)", file=sys.stderr)
        candidates.insert(0, Candidate(doc["name"], args.fit, template.spec, template.block,
                                       state, False))  # fmt: skip
    if args.export:
        dist = (
            candidate_dist(candidates[0], data) if candidates and not candidates[0].learn else None
        )
        if args.export.endswith(".npz"):
            export_npz(args.export, ext, dist)
        elif args.export.endswith((".vw", ".txt")):
            export_vw(args.export, ext)
        else:
            raise ReplayError(f"--export {args.export}: the name must end in .npz or .vw")
        print(f"wrote {args.export} ({data.n} rounds)", file=sys.stderr)
        if not candidates:
            return 0
    results = [
        evaluate_candidate(c, eval_data, clip=args.clip, alpha=args.alpha, seed=args.seed)
        for c in candidates
    ]
    policy = ext.policy or {}
    logging = "/".join(str(x) for x in (policy.get("kind"), policy.get("algorithm")) if x)
    doc = {
        "log": {
            "path": str(args.log),
            "files": len(contents.files),
            "route": ext.route,
            "rounds": eval_data.n,
            "unrewarded": ext.unrewarded,
            "filled": ext.filled,
            "missing_reward": args.missing_reward
            if args.missing_reward is not None
            else policy.get("missing_reward"),
            "arms": list(data.arms),
            "logging_policy": logging or None,
            "uniform": eval_data.uniform,
            "min_pscore": float(eval_data.pscore.min()),
            "reward_type": data.reward_type,
        },
        "level": 1.0 - args.alpha,
        "observed": ope.observed(eval_data, alpha=args.alpha).to_json(),
        "candidates": results,
        "notes": notes,
    }
    if args.json:
        print(json.dumps(doc), file=out)
    else:
        _print_report(doc, out)
    return 0
