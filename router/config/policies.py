"""Policy sections (``routes[].policy``): one reader per policy kind, and `parse_policy`.

Algorithm parameters and check kinds are read from the registries next to their implementations
(`policies.bandits.ALGORITHMS`, `policies.contextual.ALGORITHMS`, `policies.checks.CHECK_KINDS`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Collection
from typing import Final, Literal

import yaml

from policies import bandits, contextual
from policies.checks import CHECK_KINDS
from policies.guardrails import GUARDRAIL_METRICS, GuardrailSpec
from policies.params import Param
from policies.spec import (
    POLICY_KINDS,
    ABTestSpec,
    AnalysisSpec,
    BanditSpec,
    BlueGreenSpec,
    CanarySpec,
    Check,
    ContextualSpec,
    Feature,
    PolicySpec,
    RewardSpec,
    TestSpec,
    ValidateRequest,
    ValidateSpec,
    Webhook,
    WeightedSpec,
)
from router.config.reader import NAME_RE, TOKEN_RE, ConfigError, Document, MapReader, Reader
from router.config.values import Refs, abs_path, http_url, read_params, source_ref

WEBHOOK_EVENTS: Final = (
    "validating",
    "progressing",
    "paused",
    "promoted",
    "rolled_back",
    "switched",
    "blessed",
    "retried",
)


_REWARD_TYPES: Final[tuple[Literal["binary", "continuous"], ...]] = ("binary", "continuous")
_REWARD_FROM: Final[tuple[Literal["feedback", "response"], ...]] = ("feedback", "response")
_GATES: Final[tuple[Literal["auto", "manual"], ...]] = ("auto", "manual")
_COMPARE: Final[tuple[Literal["sequential", "none"], ...]] = ("sequential", "none")
_ON_INCONCLUSIVE: Final[tuple[Literal["pause", "rollback"], ...]] = ("pause", "rollback")
_TESTS: Final[tuple[Literal["z_test", "welch_t", "msprt", "bayesian"], ...]] = (
    "z_test",
    "welch_t",
    "msprt",
    "bayesian",
)
_CONCLUDE: Final[tuple[Literal["route_winner", "stop", "none"], ...]] = (
    "route_winner",
    "stop",
    "none",
)
_FEATURE_SOURCES: Final[tuple[Literal["header", "cookie", "query", "json"], ...]] = (
    "header",
    "cookie",
    "query",
    "json",
)
_FEATURE_TYPES: Final[tuple[Literal["categorical", "numeric"], ...]] = ("categorical", "numeric")
_FEATURE_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "categorical": ("name", "from", "type", "values"),
    "numeric": ("name", "from", "type", "scale", "default", "range", "clip"),
}


def _range(r: Reader) -> tuple[float, float] | None:
    """An optional ``[low, high]`` pair of numbers with low < high."""
    if not r.present:
        return None
    items = r.sequence(required=True, min_len=2)
    if len(items) != 2:
        if items:
            r.error("must be a list of two numbers [low, high]")
        return None
    low, high = items[0].number(), items[1].number()
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        r.error(f"must be [low, high] with low < high, got [{low:g}, {high:g}]")
        return None
    return (low, high)


def _params(r: Reader, declared: tuple[Param, ...], context: str) -> dict[str, float]:
    """An algorithm's ``params`` mapping: only its declared keys, each within its bounds."""
    m = r.mapping()
    m.restrict(tuple(p.name for p in declared), context=context)
    given = read_params(m, declared, defaults=False)
    return {k: v for k, v in given.items() if isinstance(v, float)}


def _reward(r: Reader) -> RewardSpec:
    if not r.present:
        return RewardSpec()
    m = r.mapping(("type", "from", "max_status", "max_latency", "range"))
    source = m["from"].choice(_REWARD_FROM, "feedback")
    if source == "feedback":
        for key in ("max_status", "max_latency"):
            if key in m:
                m[key].error("only applies with from: response")
    rtype = m["type"].choice(_REWARD_TYPES, "binary")
    bounds = _range(m["range"])
    if bounds is not None and (rtype != "continuous" or source != "feedback"):
        m["range"].error("only applies to type: continuous rewards from feedback")
        bounds = None
    return RewardSpec(
        type=rtype,
        source=source,
        max_status=m["max_status"].integer(500, min=100, max=600),
        max_latency=m["max_latency"].duration(None),
        range=bounds,
    )


def _weights(r: Reader, refs: Refs, *, what: str, keys_are_backends: bool) -> dict[str, float]:
    """A name -> non-negative weight mapping, not all zero."""
    m = r.mapping(required=True)
    out: dict[str, float] = {}
    for key, vr in m.items():
        if keys_are_backends:
            refs.check(m.key_reader(key), key)
        out[key] = vr.number(min=0)
    if r.present and not m.quiet:
        if not out:
            r.error(f"must name at least one {what}")
        elif all(w == 0 for w in out.values()) and all(w >= 0 for w in out.values()):
            r.error("weights must not all be zero")
    return out


def _arms(r: Reader, refs: Refs) -> tuple[str, ...]:
    """A list of at least two distinct arm (backend) names."""
    arms: list[str] = []
    for item in r.sequence(required=True, min_len=2):
        name = item.string()
        if name in arms:
            item.error(f"duplicate arm '{name}'")
        elif name:
            refs.check(item, name)
            arms.append(name)
    return tuple(arms)


def _validate(r: Reader) -> ValidateSpec | None:
    if not r.present:
        return None
    m = r.mapping(("requests", "timeout", "attempts"))
    requests = []
    for item in m["requests"].sequence():
        q = item.mapping(("method", "path", "body", "headers", "expect_status"), required=True)
        body = q["body"].value() if q["body"].present else None
        if body is not None:
            try:
                json.dumps(body)
            except (TypeError, ValueError):
                q["body"].error("must be JSON data (mappings, lists, strings, numbers, booleans)")
                body = None
        headers = []
        for hname, hr in q["headers"].mapping().items():
            if not TOKEN_RE.fullmatch(hname):
                q["headers"].error(f"invalid header name {hname!r}")
            headers.append((hname, hr.string()))
        method = q["method"].string(
            "POST" if body is not None else "GET", pattern=TOKEN_RE, what="an HTTP method"
        )
        requests.append(
            ValidateRequest(
                method=method.upper(),
                path=abs_path(q["path"]),
                body=body,
                headers=tuple(headers),
                expect_status=q["expect_status"].integer(200, min=100, max=599),
            )
        )
    return ValidateSpec(
        requests=tuple(requests),
        timeout=m["timeout"].duration(5.0),
        attempts=m["attempts"].integer(3, min=1, max=100),
    )


def _check(r: Reader) -> Check:
    """One ``analysis.checks[]`` entry: the kind's declared params, then its cross-param rule."""
    m = r.mapping(required=True)
    metric = m["metric"].choice_required(tuple(CHECK_KINDS))
    if metric is None:
        return Check("error_rate")
    kind = CHECK_KINDS[metric]
    m.restrict(kind.keys, context=f"metric {metric}")
    values = read_params(m, kind.params)
    if kind.requires is not None:
        problem = kind.requires(values, [p.name for p in kind.params if p.name in m])
        if problem:
            m.error(problem)
    return Check(metric, **values)  # type: ignore[arg-type]


def _analysis(r: Reader) -> AnalysisSpec:
    m = r.mapping(
        (
            "min_requests",
            "failure_limit",
            "checks",
            "compare",
            "alpha",
            "confidence",
            "inconclusive_limit",
            "on_inconclusive",
            "progress_deadline",
        )
    )
    return AnalysisSpec(
        min_requests=m["min_requests"].integer(100, min=1),
        failure_limit=m["failure_limit"].integer(2, min=1),
        checks=tuple(_check(c) for c in m["checks"].sequence()),
        compare=m["compare"].choice(_COMPARE, "none"),
        alpha=m["alpha"].number(0.05, gt=0, max=0.5),
        confidence=m["confidence"].number(0.95, min=0.5, max=0.9999),
        inconclusive_limit=m["inconclusive_limit"].integer(5, min=0),
        on_inconclusive=m["on_inconclusive"].choice(_ON_INCONCLUSIVE, "pause"),
        progress_deadline=m["progress_deadline"].duration(None),
    )


def _webhooks(r: Reader) -> tuple[Webhook, ...]:
    hooks = []
    for item in r.sequence():
        m = item.mapping(("on", "url"), required=True)
        on = frozenset(e.choice(WEBHOOK_EVENTS) for e in m["on"].sequence(min_len=1))
        url = http_url(m["url"]) or ""
        hooks.append(Webhook(url=url, on=on if "on" in m else frozenset(WEBHOOK_EVENTS)))
    return tuple(hooks)


def _differ(r: Reader, value: str, other_key: str, other: str) -> None:
    if value and value == other:
        r.error(f"must differ from {other_key} ('{other}')")


def _weighted(m: MapReader, refs: Refs) -> WeightedSpec:
    return WeightedSpec(
        weights=_weights(m["weights"], refs, what="backend", keys_are_backends=True)
    )


def _blue_green(m: MapReader, refs: Refs) -> BlueGreenSpec:
    active = refs.backend(m["active"])
    preview = refs.backend(m["preview"])
    _differ(m["preview"], preview, "active", active)
    analysis = _analysis(m["analysis"]) if m["analysis"].present else None
    validate = _validate(m["validate"])
    auto_switch = m["auto_switch"].boolean(False)
    if auto_switch and analysis is None and validate is None:
        m["auto_switch"].error(
            "auto_switch: true needs analysis or validate to decide when to switch"
        )
    return BlueGreenSpec(
        active=active,
        preview=preview,
        analysis=analysis,
        auto_switch=auto_switch,
        validate=validate,
        webhooks=_webhooks(m["webhooks"]),
        interval=m["interval"].duration(60.0),
    )


def _steps(r: Reader) -> tuple[float, ...]:
    steps: list[float] = []
    for item in r.sequence(required=True, min_len=1):
        s = item.number(None, gt=0, max=100)
        if s is None:
            continue
        if steps and s <= steps[-1]:
            item.error(f"must be greater than {steps[-1]:g}, got {s:g} (steps strictly increase)")
            continue
        steps.append(s)
    return tuple(steps)


def _canary(m: MapReader, refs: Refs) -> CanarySpec:
    stable = refs.backend(m["stable"])
    candidate = refs.backend(m["candidate"])
    _differ(m["candidate"], candidate, "stable", stable)
    return CanarySpec(
        stable=stable,
        candidate=candidate,
        steps=_steps(m["steps"]),
        interval=m["interval"].duration(60.0),
        validate=_validate(m["validate"]),
        analysis=_analysis(m["analysis"]),
        gate=m["gate"].choice(_GATES, "auto"),
        webhooks=_webhooks(m["webhooks"]),
    )


def _ab_test(m: MapReader, refs: Refs) -> ABTestSpec:
    arms_m = m["arms"].mapping(required=True)
    arms: dict[str, str] = {}
    for arm, br in arms_m.items():
        if not NAME_RE.fullmatch(arm):
            arms_m.key_reader(arm).error(
                f"invalid arm name {arm!r}: use letters, digits, '_', '.', '-'"
            )
        backend = refs.backend(br)
        # the serving backend identifies the arm in metrics, tokens and feedback
        same = [a for a, b in arms.items() if b == backend and backend]
        if same:
            br.error(
                f"arms '{same[0]}' and '{arm}' both use backend '{backend}'; each arm needs its "
                "own backend (for an A/A test, declare the same url twice under two names)"
            )
        arms[arm] = backend
    if m["arms"].present and not arms_m.quiet and len(arms) < 2:
        m["arms"].error(f"an A/B test needs at least 2 arms, got {len(arms)}")
    if m["split"].present:
        split = _weights(m["split"], refs, what="arm", keys_are_backends=False)
        split_m = m["split"].mapping()
        for arm in split:
            if arm not in arms and arms:
                split_m[arm].error(f"unknown arm '{arm}'; arms: {', '.join(arms)}")
        missing = [a for a in arms if a not in split]
        if missing and split:
            m["split"].error(
                f"missing weight for arm{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            )
    else:
        split = dict.fromkeys(arms, 1.0)
    t = m["test"].mapping(("method", "alpha", "min_samples", "mixing_sd", "tau"))
    mixing_sd = t["mixing_sd"].number(None, gt=0)
    tau = t["tau"].number(None, gt=0)
    if tau is not None:
        if mixing_sd is not None:
            t["tau"].error(
                "give mixing_sd only: tau is the old name (a variance) of the same setting"
            )
        else:
            mixing_sd = math.sqrt(tau)
            t["tau"].warn(
                f"tau is deprecated: it was a variance here but a standard deviation on "
                f"canaries; read as mixing_sd: {mixing_sd:.6g} (a standard deviation in reward "
                "units) - write that instead"
            )
    test = TestSpec(
        method=t["method"].choice(_TESTS, "msprt"),
        alpha=t["alpha"].number(0.05, gt=0, max=0.5),
        min_samples=t["min_samples"].integer(1000, min=1),
        mixing_sd=mixing_sd,
    )
    return ABTestSpec(
        arms=arms,
        split=split,
        reward=_reward(m["reward"]),
        test=test,
        conclude=m["conclude"].choice(_CONCLUDE, "none"),
        guardrails=_guardrails(m["guardrails"]),
    )


_GUARDRAIL_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "error_rate": ("metric", "name", "max", "max_increase"),
    "latency": ("metric", "name", "max", "percentile"),
    "reward": ("metric", "name", "max", "min", "max_increase", "max_decrease", "type"),
}


def _guardrails(r: Reader) -> tuple[GuardrailSpec, ...]:
    """`guardrails:` a list of {metric, limit}; see policies.guardrails."""
    out: list[GuardrailSpec] = []
    names: set[str] = set()
    for item in r.sequence():
        m = item.mapping(required=True)
        metric = m["metric"].choice_required(GUARDRAIL_METRICS)
        if metric is None:
            continue
        m.restrict(_GUARDRAIL_KEYS[metric], context=f"metric {metric}")
        if "name" in m:
            name = m["name"].name("guardrail name")
        elif metric == "reward":
            m.error("metric reward: needs name (the key in feedback's `metrics` object)")
            continue
        else:
            name = ""
        is_latency = metric == "latency"
        kwargs = {
            "max": m["max"].duration(None) if is_latency else m["max"].number(None),
            "min": m["min"].number(None),
            "max_increase": m["max_increase"].number(None, min=0),
            "max_decrease": m["max_decrease"].number(None, min=0),
        }
        try:
            g = GuardrailSpec(
                metric,
                name=name,
                percentile=m["percentile"].number(99.0, gt=0, lt=100),
                binary=m["type"].choice(("binary", "continuous"), "continuous") == "binary",
                **kwargs,
            )
        except ValueError as e:
            m.error(str(e))
            continue
        if g.label in names:
            m.error(f"duplicate guardrail '{g.label}'; give each a distinct name")
        names.add(g.label)
        out.append(g)
    return tuple(out)


def _bandit(m: MapReader, refs: Refs) -> BanditSpec:
    arms = _arms(m["arms"], refs)
    algorithm = m["algorithm"].choice(tuple(bandits.ALGORITHMS), bandits.DEFAULT_ALGORITHM)
    reward = _reward(m["reward"])
    algo = bandits.ALGORITHMS[algorithm]
    context = f"algorithm {algorithm}" + (
        f" with {reward.type} reward" if algo.reward_dependent else ""
    )
    params = _params(m["params"], algo.params_for(reward.type), context)
    limit = 1.0 / len(arms) if arms else 1.0
    min_share = m["min_share"].number(0.0, min=0)
    if min_share > limit + 1e-12:
        m["min_share"].error(
            f"must be at most 1/{len(arms)} ({limit:.4g}) for {len(arms)} arms, got {min_share:g}"
        )
    return BanditSpec(
        arms=arms,
        algorithm=algorithm,
        reward=reward,
        params=params,
        min_share=min_share,
        discount=m["discount"].number(1.0, gt=0, max=1),
        guardrails=_guardrails(m["guardrails"]),
    )


def _feature(r: Reader) -> Feature:
    m = r.mapping(required=True)
    ftype = m["type"].choice_required(_FEATURE_TYPES)
    if ftype is not None:
        m.restrict(_FEATURE_KEYS[ftype], context=f"type {ftype}")
    name = m["name"].name("feature name")
    source, key = source_ref(
        m["from"], _FEATURE_SOURCES, "header:x-climate or json:/instances/0/age"
    )
    values: list[str] = []
    if ftype == "categorical":
        for v in m["values"].sequence(required=True, min_len=1):
            s = v.string()
            if s in values:
                v.error(f"duplicate value {s!r}")
            elif s == "" and v.present:
                v.error("must not be empty")
            elif s:
                values.append(s)
    return Feature(
        name=name,
        source=source,
        key=key,
        type=ftype or "numeric",
        values=tuple(values),
        scale=m["scale"].number(1.0),
        default=m["default"].number(0.0),
        range=_range(m["range"]),
        clip=m["clip"].number(4.0, gt=0),
    )


def _contextual(m: MapReader, refs: Refs) -> ContextualSpec:
    arms = _arms(m["arms"], refs)
    algorithm = m["algorithm"].choice(tuple(contextual.ALGORITHMS), contextual.DEFAULT_ALGORITHM)
    params = _params(m["params"], contextual.ALGORITHMS[algorithm].params, f"algorithm {algorithm}")
    features: list[Feature] = []
    names: set[str] = set()
    for item in m["features"].sequence(required=True, min_len=1):
        f = _feature(item)
        if f.name and f.name in names:
            item.error(f"duplicate feature name '{f.name}'")
        names.add(f.name)
        features.append(f)
    return ContextualSpec(
        arms=arms,
        algorithm=algorithm,
        params=params,
        features=tuple(features),
        reward=_reward(m["reward"]),
    )


_POLICY_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "weighted": ("kind", "weights"),
    "blue_green": (
        "kind",
        "active",
        "preview",
        "analysis",
        "auto_switch",
        "validate",
        "webhooks",
        "interval",
    ),
    "canary": (
        "kind",
        "stable",
        "candidate",
        "steps",
        "interval",
        "validate",
        "analysis",
        "gate",
        "webhooks",
    ),
    "ab_test": ("kind", "arms", "split", "reward", "test", "conclude", "guardrails"),
    "bandit": (
        "kind",
        "arms",
        "algorithm",
        "reward",
        "params",
        "min_share",
        "discount",
        "guardrails",
    ),
    "contextual_bandit": ("kind", "arms", "algorithm", "params", "features", "reward"),
}
_POLICY_PARSERS: Final[dict[str, Callable[[MapReader, Refs], PolicySpec]]] = {
    "weighted": _weighted,
    "blue_green": _blue_green,
    "canary": _canary,
    "ab_test": _ab_test,
    "bandit": _bandit,
    "contextual_bandit": _contextual,
}


def read_policy(r: Reader, refs: Refs) -> PolicySpec:
    m = r.mapping(required=True)
    if m.quiet:
        return WeightedSpec(weights={})
    kind = m["kind"].choice_required(POLICY_KINDS)
    if kind is None:
        return WeightedSpec(weights={})
    m.restrict(_POLICY_KEYS[kind], context=f"kind {kind}")
    return _POLICY_PARSERS[kind](m, refs)


def _represent(data: object) -> yaml.Node:
    try:
        return yaml.SafeDumper(io.StringIO()).represent_data(data)
    except yaml.YAMLError as e:
        raise ConfigError([f"cannot read policy data: {e}"]) from None


def parse_policy(
    data: object,
    source: str = "<policy>",
    path: str = "policy",
    backends: Collection[str] | None = None,
) -> PolicySpec:
    """Validate one ``policy:`` mapping (a composed yaml.Node for line numbers, or plain data).

    ``backends=None`` skips the backend-name checks (simulation scenarios name arms freely).
    Raises ConfigError with every problem, formatted like the config file's.
    """
    if isinstance(data, Reader):
        doc, reader = data.doc, data
    else:
        node = data if isinstance(data, yaml.Node) else _represent(data)
        doc = Document(source)
        reader = Reader(node, path, doc)
    spec = read_policy(reader, Refs(backends))
    doc.raise_if_errors()
    return spec
