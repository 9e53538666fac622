"""The `modelrouter` command: serve, validate, demo, simulate, and the admin-API commands.

Exit codes: 0 ok, 1 runtime failure or an error from the admin API, 2 usage or config errors.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from router.adminclient import DEFAULT_ADMIN_URL, TOKEN_ENV, AdminClient, AdminError
from router.errors import ModelrouterError

__all__ = ["COMMANDS", "format_status", "main", "parse_weights"]

PROG = "modelrouter"


class UsageError(ModelrouterError):
    """Bad command-line input: printed as `modelrouter: message`, exit 2."""


# ---- pure helpers (tested directly) ---------------------------------------------------------


def parse_weights(pairs: Sequence[str]) -> dict[str, float]:
    """`["a=70", "b=30"]` -> `{"a": 70.0, "b": 30.0}`; raises UsageError naming the bad pair."""
    if not pairs:
        raise UsageError("set-weights needs at least one NAME=WEIGHT pair, e.g. stable=90 cand=10")
    weights: dict[str, float] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"'{pair}': expected NAME=WEIGHT, e.g. {pair}=50")
        if not name:
            raise UsageError(f"'{pair}': the backend name before '=' is empty")
        try:
            w = float(raw)
        except ValueError:
            raise UsageError(f"'{pair}': weight must be a number, got '{raw}'") from None
        if not math.isfinite(w) or w < 0:
            raise UsageError(f"'{pair}': weight must be a non-negative number, got '{raw}'")
        if name in weights:
            raise UsageError(f"'{pair}': backend '{name}' is given twice")
        weights[name] = w
    if sum(weights.values()) <= 0:
        raise UsageError("weights must not all be zero")
    return weights


def _map(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _pct(x: Any) -> str:
    return f"{x * 100:.1f}%" if isinstance(x, int | float) else "-"


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out = [indent + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for r in rows:
        out.append(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return out


def _describe_item(item: Any) -> str:
    if isinstance(item, Mapping):
        for key in ("message", "reason", "detail"):
            if isinstance(item.get(key), str):
                return str(item[key])
        reasons = item.get("reasons")
        if isinstance(reasons, list) and reasons:
            head = " ".join(
                f"{k} {item[k]}" for k in ("step", "outcome") if item.get(k) is not None
            )
            return f"{head}: {'; '.join(str(r) for r in reasons)}"
        return ", ".join(
            f"{k}={_num(v)}" for k, v in item.items() if not isinstance(v, dict | list)
        )
    return str(item)


def format_status(status: Mapping[str, Any]) -> str:
    """One route's status JSON as a readable block: header, per-backend table, test, analysis."""
    head = [f"route {status.get('route', '?')}", f"kind {status.get('kind', '?')}"]
    if status.get("phase") is not None:
        head.append(f"phase {status['phase']}")
    if status.get("step") is not None:
        step = f"step {status['step']}"
        steps = status.get("steps")
        if isinstance(steps, list) and steps:
            step += f" of {len(steps)}"
        head.append(step)
    if status.get("regret") is not None:
        regret = f"regret {_num(status['regret'])}"
        ri = status.get("regret_interval")
        if isinstance(ri, list) and len(ri) == 2 and None not in ri:
            regret += f" (95% {_num(ri[0])}-{_num(ri[1])})"
        head.append(regret)
    lines = ["  ".join(head)]
    for key in ("reason", "message"):
        if isinstance(status.get(key), str) and status[key]:
            lines.append(f"  {key}: {status[key]}")
            break
    control = _map(status.get("control"))
    if control:
        limit = status.get("inconclusive_limit")
        plan = [f"failures {status.get('failures', 0)}/{status.get('failure_limit', '-')}"]
        if status.get("phase") in ("validating", "progressing"):
            driver = "this process" if control.get("leading") else "another process"
            plan.insert(0, f"driven by {driver}")
        if limit is not None:
            plan.append(f"inconclusive {status.get('inconclusive', 0)}/{limit or 'no limit'}")
        lines.append("  rollout: " + ", ".join(plan))

    shares = _map(status.get("shares"))
    arms = _map(status.get("arms"))
    backends = _map(status.get("backends"))
    test = _map(status.get("test"))
    prob_best = _map(test.get("prob_best"))
    # A/B results are keyed by experiment arm; the table rows are backends
    arm_backend = {_map(v).get("arm"): b for b, v in arms.items() if _map(v).get("arm")}
    p_values = {
        arm_backend.get(a) or a: v
        for a, v in _map(test.get("p_value") or test.get("p_values")).items()
    }
    prob_best = {arm_backend.get(a) or a: v for a, v in prob_best.items()}
    names = list(dict.fromkeys([*shares, *arms]))
    if names:
        header = ["backend", "version", "share", "decisions", "rewards", "reward_mean"]
        if prob_best:
            header.append("prob_best")
        if p_values:
            header.append("p_value")
        if backends:
            header.append("up")
        rows = []
        for name in names:
            arm = _map(arms.get(name))
            be = _map(backends.get(name))
            version = arm.get("version") or be.get("version")
            mean = arm.get("reward_mean")
            if mean is None and arm.get("rewards"):
                mean = arm.get("reward_sum", 0.0) / arm["rewards"]
            row = [
                str(name),
                str(version) if version else "-",
                _pct(shares.get(name)),
                _num(arm.get("decisions")),
                _num(arm.get("rewards")),
                _num(mean),
            ]
            if prob_best:
                row.append(_num(prob_best.get(name), 3))
            if p_values:
                row.append(_num(p_values.get(name), 3))
            if backends:
                up = be.get("up")
                row.append("-" if up is None else ("yes" if up else "DOWN"))
            rows.append(row)
        lines.extend(_table(header, rows))
    lines.extend(_endpoint_lines(backends))
    if test:
        scalars = ", ".join(
            f"{k} {_num(v, 3)}" for k, v in test.items() if not isinstance(v, dict | list)
        )
        if scalars:
            lines.append(f"  test: {scalars}")
        srm = _map(test.get("srm"))
        if srm:
            flag = "MISMATCH: the split is broken" if srm.get("flagged") else "ok"
            lines.append(f"  sample ratio: {flag} (chi-square p {_num(srm.get('p_value'), 3)})")
        lines.extend(_format_comparisons(test))
    guard = _map(status.get("guardrails")) or _map(test.get("guardrails"))
    if guard:
        lines.extend(_format_guardrails(guard))
    contexts = status.get("contexts")
    if isinstance(contexts, list) and contexts:
        lines.append("  per context (estimate [95% interval] per backend):")
        for c in contexts[:20]:
            c = _map(c)
            ests = ", ".join(
                f"{b} {_num(_map(e).get('estimate'), 3)} "
                f"[{_num(_map(e).get('ci_low'), 3)}, {_num(_map(e).get('ci_high'), 3)}]"
                for b, e in _map(c.get("arms")).items()
            )
            lines.append(
                f"    {c.get('context')} -> {c.get('sent_to')} "
                f"({_num(c.get('decisions'))} decisions): {ests}"
            )
    dlog = _map(status.get("decision_log"))
    if dlog:
        lag = dlog.get("lag_seconds")
        lines.append(
            f"  decision log {dlog.get('path', '?')}: {_num(dlog.get('written'))} written, "
            f"{_num(dlog.get('dropped'))} dropped, {_num(dlog.get('rewards_written'))} rewards, "
            f"lag {_num(lag, 3)}s"
            + (f", {_num(dlog.get('errors'))} failed" if dlog.get("errors") else "")
        )
    analysis = status.get("analysis")
    if isinstance(analysis, list) and analysis:
        lines.append("  analysis (latest):")
        lines.extend(f"    {_describe_item(a)}" for a in analysis[-3:])
    return "\n".join(lines)


def _endpoint_lines(backends: Mapping[str, Any]) -> list[str]:
    """One line per backend with several endpoints or one that is out of rotation."""
    out = []
    for name, b in backends.items():
        eps = [_map(e) for e in (_map(b).get("endpoints") or [])]
        if len(eps) < 2 and all(e.get("up", True) for e in eps):
            continue
        parts = []
        for e in eps:
            state = "up" if e.get("up") else ("EJECTED" if e.get("ejected") else "DOWN")
            parts.append(f"{e.get('address')} {state} ({_num(e.get('in_flight'))} in flight)")
        out.append(f"  endpoints of {name}: {', '.join(parts)}")
    return out


def _signed(v: Any, pct: bool = False) -> str:
    if not isinstance(v, int | float):
        return "-"
    return f"{v:+.1%}" if pct else f"{v:+.4g}"


def _interval(lo: Any, hi: Any, pct: bool = False) -> str:
    if not isinstance(lo, int | float) and not isinstance(hi, int | float):
        return "[-]"
    return f"[{_signed(lo, pct)}, {_signed(hi, pct)}]"


def _format_comparisons(test: Mapping[str, Any]) -> list[str]:
    """Lift with its interval, raw and corrected p-value and MDE per treatment (A/B tests)."""
    comps = _map(test.get("comparisons"))
    out: list[str] = []
    unit = test.get("unit")
    if unit:
        what = "users (sticky key)" if unit == "user" else "requests"
        progress = _map(test.get("progress"))
        extra = ""
        if progress:
            extra = (
                f"; {_pct(progress.get('fraction'))} of min_samples "
                f"{_num(progress.get('min_samples'))} (fewest rewards: "
                f"{_num(progress.get('least_arm'))})"
            )
        out.append(f"  unit of analysis: {what}{extra}")
    if not comps:
        return out
    rows = []
    entries = [(f"{a} vs {_map(c).get('vs', '?')}", _map(c)) for a, c in comps.items()]
    leaders = _map(test.get("leaders"))
    if leaders and isinstance(leaders.get("arms"), list) and len(leaders["arms"]) == 2:
        a, b = leaders["arms"]
        entries.append((f"{b} vs {a}", leaders))
    kind = "interval"
    for name, c in entries:
        kind = str(c.get("interval", kind))
        mde = c.get("mde")
        rows.append(
            [
                name,
                f"{_signed(c.get('diff'))} {_interval(c.get('diff_low'), c.get('diff_high'))}",
                f"{_signed(c.get('lift'), True)} "
                f"{_interval(c.get('lift_low'), c.get('lift_high'), True)}",
                _num(c.get("p_value"), 3),
                _num(c.get("p_adjusted"), 3),
                "-" if mde is None else f"{_num(mde, 3)} ({_pct(c.get('mde_relative'))})",
                "yes" if c.get("significant") else "no",
            ]
        )
    label = "95% confidence sequence" if kind == "confidence_sequence" else "95% interval"
    if test.get("alpha") not in (None, 0.05):
        label = label.replace("95%", f"{1 - float(test['alpha']):.0%}")
    header = ["comparison", f"difference {label}", "lift", "p", "p_adj", "MDE", "signif."]
    out.extend(_table(header, rows))
    return out


def _format_guardrails(guard: Mapping[str, Any]) -> list[str]:
    out = ["  guardrails:"]
    for arm, g in _map(guard.get("arms")).items():
        for c in _map(g).get("checks", []):
            c = _map(c)
            state = "FAILED" if c.get("failed") else "ok"
            out.append(
                f"    {arm}: {c.get('guardrail')} {_num(c.get('value'), 4)} vs "
                f"{c.get('limit')} over {_num(c.get('n'))}: {state} "
                f"(p {_num(c.get('p_value'), 3)})"
            )
    return out


def format_audit(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "(no audit entries)"
    rows = []
    for e in entries:
        ts = e.get("ts")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
            if isinstance(ts, int | float)
            else "-"
        )
        extra = ", ".join(
            f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
            for k, v in e.items()
            if k not in ("ts", "route", "action", "actor", "reason")
        )
        rows.append(
            [
                when,
                str(e.get("route") or "-"),
                str(e.get("action") or "-"),
                str(e.get("actor") or "-"),
                str(e.get("reason") or "-"),
                extra,
            ]
        )
    return "\n".join(_table(["time", "route", "action", "actor", "reason", "details"], rows, ""))


def _summary(status: Mapping[str, Any]) -> str:
    parts = [str(status.get("route", "?"))]
    if status.get("phase") is not None:
        parts.append(f"phase {status['phase']}")
    if status.get("step") is not None:
        parts.append(f"step {status['step']}")
    shares = status.get("shares")
    if isinstance(shares, Mapping) and shares:
        parts.append("shares " + " ".join(f"{k} {_pct(v)}" for k, v in shares.items()))
    return ", ".join(parts)


# ---- commands ---------------------------------------------------------------------------------


def _admin_url(args: argparse.Namespace) -> tuple[str, str]:
    """The admin URL and token variable: --admin, else admin.listen of --config, else default."""
    if args.admin:
        return args.admin, TOKEN_ENV
    if args.config:
        from router.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            raise UsageError(
                f"--config {args.config} is not valid:\n" + "\n".join(e.errors)
            ) from None
        host = cfg.admin.listen.host
        # a wildcard listen address is reached through loopback
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{cfg.admin.listen.port}", cfg.admin.token_env
    return DEFAULT_ADMIN_URL, TOKEN_ENV


def _client(args: argparse.Namespace) -> AdminClient:
    url, token_env = _admin_url(args)
    token = os.environ.get(token_env) or os.environ.get(TOKEN_ENV)
    try:
        return AdminClient(url, token, timeout=args.timeout)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    statuses = [client.route(args.route)] if args.route else client.routes()
    if args.json:
        _print_json(statuses[0] if args.route else statuses)
        return 0
    if not statuses:
        print("(no routes configured)")
    print("\n\n".join(format_status(s) for s in statuses))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    client = _client(args)
    status = client.action(args.route, args.command, args.reason, getattr(args, "full", False))
    if args.json:
        _print_json(status)
    else:
        print(f"{args.command}: {_summary(status)}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """The route's frozen model as JSON on stdout (a `replay --policy` / `warm_start:` file)."""
    doc = _client(args).snapshot(args.route)
    print(json.dumps(doc, indent=1))
    return 0


def cmd_set_weights(args: argparse.Namespace) -> int:
    weights = parse_weights(args.weights)
    client = _client(args)
    status = client.set_weights(args.route, weights, args.reason)
    if args.json:
        _print_json(status)
    else:
        print(f"set-weights: {_summary(status)}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        changes = client.reload(args.reason)
    except AdminError as e:
        if e.status == 400 and e.errors:
            print(f"{PROG}: reload rejected, the old config keeps serving:", file=sys.stderr)
            for line in e.errors:
                print(line, file=sys.stderr)
            return 2
        raise
    if args.json:
        _print_json(changes)
        return 0
    parts = []
    for key in ("added", "removed", "changed", "unchanged"):
        v = changes.get(key)
        if isinstance(v, list):
            parts.append(f"{key}: {', '.join(map(str, v)) or '-'}")
    gen = changes.get("generation")
    print(
        "reloaded" + (f" (generation {gen})" if gen is not None else "") + ": " + "; ".join(parts)
    )
    restart = changes.get("restart_required")
    if isinstance(restart, list) and restart:
        print(f"note: changes to {', '.join(map(str, restart))} take effect after a restart")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    client = _client(args)
    entries = client.audit(args.route, args.limit)
    if args.json:
        _print_json(entries)
    else:
        print(format_audit(entries))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from router.server import serve_main

    code: int = serve_main(args.config, args.workers)
    return code


def cmd_validate(args: argparse.Namespace) -> int:
    from router.config import validate_main

    code: int = validate_main(args.config)
    return code


def cmd_simulate(args: argparse.Namespace) -> int:
    from router.simulate_cli import simulate_main

    code: int = simulate_main(
        args.scenario, horizon=args.horizon, seeds=args.seeds, out=args.out, as_json=args.json
    )
    return code


def cmd_replay(args: argparse.Namespace) -> int:
    from router.replay import replay_main

    code: int = replay_main(args)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from router.demo import demo_main

    code: int = demo_main(args)
    return code


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "validate": cmd_validate,
    "status": cmd_status,
    "promote": cmd_action,
    "abort": cmd_action,
    "pause": cmd_action,
    "resume": cmd_action,
    "switch": cmd_action,
    "retry": cmd_action,
    "set-weights": cmd_set_weights,
    "snapshot": cmd_snapshot,
    "reload": cmd_reload,
    "audit": cmd_audit,
    "simulate": cmd_simulate,
    "replay": cmd_replay,
    "demo": cmd_demo,
}


# ---- parser -----------------------------------------------------------------------------------


def _positive_int(raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{raw}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{raw}'")
    return v


def _positive_float(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got '{raw}'") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got '{raw}'")
    return v


def _fraction(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got '{raw}'") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got '{raw}'")
    return v


def _port(raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got '{raw}'") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got '{raw}'")
    return v


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("modelrouter")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Async reverse proxy for model servers: canary, blue-green, A/B tests, "
        "bandits, with reward, regret and Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    admin = argparse.ArgumentParser(add_help=False)
    g = admin.add_argument_group("admin API")
    g.add_argument(
        "--admin",
        metavar="URL",
        help=f"admin API base URL (default: admin.listen of --config, else {DEFAULT_ADMIN_URL})",
    )
    g.add_argument("--config", metavar="CONFIG", help="take the admin URL from this config file")
    g.add_argument(
        "--timeout", type=_positive_float, default=10.0, metavar="S", help="seconds (default 10)"
    )
    g.add_argument("--json", action="store_true", help="print the raw JSON answer")

    p = sub.add_parser("serve", help="run the proxy and the admin listener")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="N processes sharing the ports (SO_REUSEPORT) and the state store (default 1)",
    )

    p = sub.add_parser("validate", help="check a config file; exit 2 with every error")
    p.add_argument("config", metavar="CONFIG")

    p = sub.add_parser(
        "status",
        parents=[admin],
        help="phase, step, shares, arm statistics, regret and tests of the routes",
        epilog=f"The admin token is read from {TOKEN_ENV}.",
    )
    p.add_argument("route", nargs="?", metavar="ROUTE")

    for name, what in (
        ("promote", "advance a rollout one step (--full: to 100%%)"),
        ("abort", "roll back at once: 100%% to stable, no analysis"),
        ("pause", "hold a rollout at its current step"),
        ("resume", "continue a paused rollout"),
        ("switch", "blue-green: make preview the active side"),
        ("retry", "start a rolled-back rollout again from validation and step 0"),
    ):
        p = sub.add_parser(
            name, parents=[admin], help=what, epilog=f"The admin token is read from {TOKEN_ENV}."
        )
        p.add_argument("route", metavar="ROUTE")
        p.add_argument("--reason", metavar="TEXT", help="recorded in the audit log")
        if name == "promote":
            p.add_argument("--full", action="store_true", help="promote to 100%% at once")

    p = sub.add_parser(
        "set-weights",
        parents=[admin],
        help="change the weights of a weighted route",
        epilog=f"Example: {PROG} set-weights clf resnet50=70 resnet101=30",
    )
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("weights", nargs="*", metavar="NAME=W")
    p.add_argument("--reason", metavar="TEXT", help="recorded in the audit log")

    p = sub.add_parser(
        "snapshot",
        parents=[admin],
        help="print a route's learned model as JSON (for replay --policy and warm_start:)",
        epilog=f"Example: {PROG} snapshot clothing > model.json",
    )
    p.add_argument("route", metavar="ROUTE")

    p = sub.add_parser("reload", parents=[admin], help="re-read the config file of the router")
    p.add_argument("--reason", metavar="TEXT", help="recorded in the audit log")

    p = sub.add_parser("audit", parents=[admin], help="admin actions and automatic transitions")
    p.add_argument("--route", metavar="ROUTE")
    p.add_argument("--limit", type=_positive_int, default=50, metavar="N")

    p = sub.add_parser("simulate", help="offline policy run against a simulated environment")
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--horizon", type=_positive_int, metavar="T")
    p.add_argument("--seeds", type=_positive_int, metavar="N")
    p.add_argument("--out", metavar="FILE.csv")
    p.add_argument("--json", action="store_true", help="print one JSON line of results")

    p = sub.add_parser(
        "replay",
        help="estimate candidate policies on a decision log (IPS, SNIPS, DR, replay)",
        epilog="A candidate file holds 'policy:' (a route policy block), optionally 'state:' "
        "(learned parameters) and 'learn: true|false'; snapshot and --fit write such files.",
    )
    p.add_argument("log", metavar="LOG", help="the decision log (its rotated files are read too)")
    p.add_argument(
        "--policy", action="append", metavar="FILE", help="a candidate policy (repeatable)"
    )
    p.add_argument("--route", metavar="ROUTE", help="the route to evaluate (when several logged)")
    p.add_argument("--fit", metavar="OUT", help="train a policy from the log, write it to OUT")
    p.add_argument(
        "--holdout", type=_fraction, metavar="F", help="with --fit: evaluate on the newest F"
    )
    p.add_argument("--export", metavar="FILE", help="write FILE.npz (Open Bandit Pipeline) or .vw")
    p.add_argument(
        "--missing-reward",
        type=float,
        metavar="R",
        help="reward of decisions without feedback (default: the route's missing_reward)",
    )
    p.add_argument(
        "--clip", type=_positive_float, default=math.inf, metavar="W", help="cap on the weights"
    )
    p.add_argument(
        "--alpha", type=_fraction, default=0.05, metavar="A", help="1 - interval level (0.05)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed (cross-fitting folds)")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("demo", help="toy model servers + router + synthetic client, live view")
    p.add_argument("--duration", type=_positive_float, metavar="S")
    p.add_argument("--bad-canary", action="store_true", help="the candidate fails often")
    p.add_argument("--port", type=_port, default=None, metavar="P")
    p.add_argument("--admin-port", type=_port, default=None, metavar="P")
    return parser


def _unknown_command(argv: Sequence[str]) -> str | None:
    """The message for a mistyped command, with a suggestion; None when the command is known."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        if arg in COMMANDS:
            return None
        close = difflib.get_close_matches(arg, list(COMMANDS), n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return (
            f"{PROG}: unknown command '{arg}'.{hint}\n"
            f"commands: {', '.join(COMMANDS)}\n"
            f"run '{PROG} COMMAND --help' for the options of one command"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 runtime/API error, 2 usage/config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    message = _unknown_command(argv)
    if message is not None:
        print(parser.format_usage().rstrip(), file=sys.stderr)
        print(message, file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, usage errors exit 2
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"{PROG} {args.command}: {e}", file=sys.stderr)
        return 2
    except AdminError as e:
        print(f"{PROG}: {e.message}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("router."):
            print(f"{PROG}: '{args.command}' is not available in this build ({e})", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `modelrouter status --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
