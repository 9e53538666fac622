"""Generate the Markdown reference of every config key and every metric from the code itself.

Allowed keys, required keys, choices and defaults are read by probing `router.config` (the
validator is the schema). Sections for registered kinds (bandit and contextual algorithm
parameters, analysis check kinds, store kinds) are built from the registries that declare their
parameters (`policies.params.Param`), so a new kind documents itself. Metrics come from a fresh
`router.metrics.Metrics()` registry.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policies import bandits, contextual
from policies.checks import CHECK_KINDS
from policies.params import Param
from policies.spec import Address, Config
from router.config import ConfigError, parse_config
from router.errors import ModelrouterError
from router.metrics import DURATION_BUCKETS, Metrics
from router.store import LEASE, STORE_KINDS

__all__ = ["END", "SECTIONS", "START", "ReferenceError", "generate", "main", "splice"]

START = "<!-- REFERENCE:START -->"
END = "<!-- REFERENCE:END -->"
_PROBE = "zz_probe"
_ALLOWED_RE = re.compile(rf"unknown key '{_PROBE}'; allowed: ([^ ,(;]+(?:, [^ ,(;]+)*)")
_CHOICES_RE = re.compile(r"must be one of (.+?); got")


class ReferenceError(ModelrouterError):
    """The documentation table below and the validator disagree; the message says how."""


@dataclass(frozen=True, slots=True)
class Key:
    """How one config key is documented; the default is read from the parsed config."""

    type: str  # duration, size, int, number, string, bool, choice, choices, mapping, list, ...
    doc: str
    attr: str | None = None  # attribute of the parsed object (default: the key itself)
    default: str | None = None  # shown verbatim instead of a parsed default


@dataclass(frozen=True, slots=True)
class Section:
    """One mapping of the config: where it sits, its smallest valid content, and its keys."""

    title: str
    path: tuple[str | int, ...]  # where the mapping sits in a probe document
    minimal: Mapping[str, Any]  # smallest valid content of the mapping
    keys: Mapping[str, Key]
    get: Callable[[Config], Any] | None = None  # the parsed object holding the defaults
    policy: Mapping[str, Any] | None = None  # the route's policy, when the section is inside it
    note: str = ""
    defaults: Callable[[], Mapping[str, str]] | None = None  # defaults not kept by config.py


_A = "http://127.0.0.1:9001"
_B = "http://127.0.0.1:9002"
_WEIGHTED: dict[str, Any] = {"kind": "weighted", "weights": {"a": 1}}
_CANARY: dict[str, Any] = {"kind": "canary", "stable": "a", "candidate": "b", "steps": [50, 100]}
_BLUE_GREEN: dict[str, Any] = {"kind": "blue_green", "active": "a", "preview": "b"}
_AB: dict[str, Any] = {"kind": "ab_test", "arms": {"A": "a", "B": "b"}}
_BANDIT: dict[str, Any] = {"kind": "bandit", "arms": ["a", "b"]}
_CONTEXTUAL: dict[str, Any] = {
    "kind": "contextual_bandit",
    "arms": ["a", "b"],
    "features": [{"name": "f", "from": "header:x-f", "type": "numeric"}],
}
_POLICY = ("routes", 0, "policy")


def _route(c: Config) -> Any:
    return c.routes[0]


def _pol(c: Config) -> Any:
    return c.routes[0].policy


def _param_keys(params: Sequence[Param]) -> dict[str, Key]:
    return {p.name: Key(p.shown_type, p.help) for p in params}


def _state_keys() -> dict[str, Key]:
    """``state``: the store choice and the keys every registered store kind declares."""
    store = "; ".join(f"`{name}`: {kind.help}" for name, kind in STORE_KINDS.items()) + "."
    params = {p.name: p for kind in STORE_KINDS.values() for p in kind.params}
    return {"store": Key("choice", store), **_param_keys((*params.values(), LEASE))}


def _check_sections() -> tuple[Section, ...]:
    """One table per registered check kind (`policies.checks.CHECK_KINDS`)."""
    return tuple(
        Section(
            f"analysis.checks[] (metric: {name})",
            (*_POLICY, "analysis", "checks", 0),
            kind.example,
            {"metric": Key("kind", kind.help), **_param_keys(kind.params)},
            policy=_CANARY,
            note=kind.note,
        )
        for name, kind in CHECK_KINDS.items()
    )


def _guardrail_sections() -> tuple[Section, ...]:
    """`guardrails[]` items, one table per metric (ab_test and bandit routes)."""
    path = (*_POLICY, "guardrails", 0)
    limit_abs = "Absolute limit; give exactly one limit key."
    return (
        Section(
            "guardrails[] (metric: error_rate)",
            path,
            {"metric": "error_rate", "max": 0.02},
            {
                "metric": Key("kind", "Share of requests answered 5xx or failed (per arm)."),
                "name": Key("string", "Shown in status; default: the metric.", default="metric"),
                "max": Key("number", limit_abs + " A fraction in (0, 1).", default="—"),
                "max_increase": Key(
                    "number", "Limit relative to the control arm, in points.", default="—"
                ),
            },
            policy=_AB,
            note="Fails an arm once an always-valid one-sided test (alpha of the route's "
            "test, 0.05 on bandits) shows it above the limit.",
        ),
        Section(
            "guardrails[] (metric: latency)",
            path,
            {"metric": "latency", "max": "500ms"},
            {
                "metric": Key("kind", "A latency percentile of the arm's answers."),
                "name": Key("string", "Default: `latency_pNN`.", default="latency_pNN"),
                "percentile": Key("number", "In (0, 100).", default="99"),
                "max": Key(
                    "duration",
                    "pNN must stay at or below this: tested as the share of answers slower "
                    "than `max` being at most 1 - NN/100.",
                    default="—",
                ),
            },
            policy=_AB,
        ),
        Section(
            "guardrails[] (metric: reward)",
            path,
            {"metric": "reward", "name": "revenue", "min": 0},
            {
                "metric": Key(
                    "kind",
                    "A second reward, sent with feedback as "
                    '`"metrics": {"NAME": value}` next to `reward`.',
                ),
                "name": Key("string", "The key in feedback's `metrics` (required)."),
                "type": Key("choice", "`binary` or `continuous`.", default="continuous"),
                "min": Key("number", limit_abs, default="—"),
                "max": Key("number", limit_abs, default="—"),
                "max_decrease": Key(
                    "number", "Limit relative to the control arm (mean units).", default="—"
                ),
                "max_increase": Key(
                    "number", "Limit relative to the control arm (mean units).", default="—"
                ),
            },
            policy=_AB,
        ),
    )


# Every key the validator accepts must be described here; `generate()` fails otherwise.
_SECTIONS: tuple[Section, ...] = (
    Section(
        "top level",
        (),
        {
            "backends": {"a": {"url": _A}, "b": {"url": _B}},
            "routes": [{"name": "r", "policy": _WEIGHTED}],
        },
        {
            "version": Key("int", "Config format version; only `1` is read."),
            "listen": Key("host:port", "Data-plane listener (predictions and feedback)."),
            "admin": Key("mapping", "Admin listener and its token, see `admin`.", default="—"),
            "state": Key("mapping", "Where durable state lives, see `state`.", default="—"),
            "limits": Key("mapping", "Request limits, see `limits`.", default="—"),
            "feedback": Key("mapping", "Decision tokens and rewards, see `feedback`.", default="—"),
            "backends": Key("mapping", "Model servers by name, see `backends.NAME`."),
            "routes": Key("list", "Routes, matched in order, see `routes[]`."),
        },
        get=lambda c: c,
    ),
    Section(
        "admin",
        ("admin",),
        {},
        {
            "listen": Key(
                "host:port",
                "Admin listener: `/metrics`, `/healthz`, `/readyz`, `/admin/*`, `/dashboard`.",
            ),
            "token_env": Key(
                "env var name",
                "Environment variable holding the admin bearer token; unset "
                "means reads stay open and every mutating call answers 403.",
            ),
        },
        get=lambda c: c.admin,
    ),
    Section(
        "state",
        ("state",),
        {},
        _state_keys(),
        get=lambda c: c.state,
    ),
    Section(
        "limits",
        ("limits",),
        {},
        {
            "max_body": Key(
                "size",
                "Larger request bodies get 413 (checked from Content-Length and while streaming).",
            ),
            "max_header": Key("size", "Larger request heads get 431."),
            "max_pending": Key("int", "Requests per backend waiting for a connection; 503 beyond."),
            "trusted_hops": Key(
                "int",
                "Proxies in front of the router (0-16): the last this many `X-Forwarded-For` "
                "entries are kept and the first kept one is the client address (`ip` sticky "
                "keys); 0 keeps none, the peer is the client.",
            ),
            "client_header_timeout": Key(
                "duration",
                "A request head (and a new connection's first byte) must arrive within this; "
                "408 and close (a silent new connection is just closed).",
            ),
            "client_body_timeout": Key(
                "duration",
                "Longest wait for the next bytes of a request body (any route, the feedback "
                "endpoint too); 408 and close.",
            ),
            "keepalive_timeout": Key(
                "duration", "An idle keep-alive client connection is closed after this."
            ),
            "max_connections": Key(
                "int",
                "Open client connections; more get `503` (`Retry-After: 1`) and a close, counted "
                "in `connections_refused_total`. Capped by the open-file limit (a warning says "
                "so).",
            ),
            "max_upstream_header": Key(
                "size", "A backend response head larger than this is answered 502."
            ),
        },
        get=lambda c: c.limits,
    ),
    Section(
        "feedback",
        ("feedback",),
        {},
        {
            "secret_env": Key(
                "env var name",
                "Environment variable with the HMAC key of decision "
                "tokens; unset: one is generated and kept in the state store.",
            ),
            "ttl": Key(
                "duration", "Rewards are accepted this long after the decision (410 after)."
            ),
            "missing_reward": Key(
                "number or null",
                "`null`: only rewarded decisions count; a number (usually "
                "`0`): every decision counts as a trial with this reward until feedback "
                "arrives.",
            ),
        },
        get=lambda c: c.feedback,
    ),
    Section(
        "backends.NAME",
        ("backends", "a"),
        {"url": _A},
        {
            "url": Key(
                "http URL",
                "`http://host:port[/base]`; the base path prefixes every "
                "forwarded path (no https to backends yet). One endpoint; or `endpoints`.",
            ),
            "endpoints": Key(
                "list",
                "Several URLs of the same model version (same path), instead of `url`: "
                "requests go to the one with the fewest in flight; each has its own "
                "connections, health and ejections.",
                default="—",
            ),
            "version": Key("string", "`MAJOR.MINOR.PIPELINE`, shown in status; quote it."),
            "timeout": Key("duration", "Per-attempt deadline for the backend's answer (504)."),
            "health": Key(
                "mapping",
                "Active health check, see `backends.NAME.health`; "
                "without it the backend counts as up.",
                default="—",
            ),
            "rewrite": Key(
                "mapping", "Path prefix rewrite, see `backends.NAME.rewrite`.", default="—"
            ),
            "outlier_detection": Key(
                "mapping",
                "Passive ejection of failing endpoints, see `backends.NAME.outlier_detection`.",
                default="on",
            ),
            "retry_budget": Key(
                "mapping",
                "How many retries the backend takes, see `backends.NAME.retry_budget`.",
                default="on",
            ),
        },
        get=lambda c: c.backends["a"],
    ),
    Section(
        "backends.NAME.outlier_detection",
        ("backends", "a", "outlier_detection"),
        {},
        {
            "consecutive_5xx": Key(
                "int",
                "Failing answers in a row (5xx, or a `failure_status`) that eject an endpoint; "
                "0: off.",
            ),
            "consecutive_local_origin_failure": Key(
                "int", "Connect failures, resets or timeouts in a row that eject it; 0: off."
            ),
            "failure_status": Key(
                "list",
                "More statuses counted as failing, e.g. `[404]` for a model server that lost "
                "its model.",
                default="`[]`",
            ),
            "base_ejection_time": Key(
                "duration", "First ejection; the n-th recent one lasts n times as long."
            ),
            "max_ejection_time": Key("duration", "Longest ejection."),
            "max_ejection_percent": Key(
                "number",
                "Most of the backend's endpoints out at once (one may always go); 100: a "
                "backend whose endpoints all fail is down at once and its route fails over.",
            ),
        },
        get=lambda c: c.backends["a"].outlier,
    ),
    Section(
        "backends.NAME.retry_budget",
        ("backends", "a", "retry_budget"),
        {},
        {
            "budget_percent": Key(
                "number",
                "Retries that may reach the backend, as a percentage of its requests in the "
                "last 10 s.",
            ),
            "min_retries": Key("int", "Retries allowed on top, so a quiet backend can retry."),
        },
        get=lambda c: c.backends["a"].retry_budget,
    ),
    Section(
        "backends.NAME.health",
        ("backends", "a", "health"),
        {"path": "/healthz"},
        {
            "path": Key("path", "GET this path; a status below 400 counts as healthy."),
            "interval": Key("duration", "Time between checks."),
        },
        get=lambda c: c.backends["a"].health,
    ),
    Section(
        "backends.NAME.rewrite",
        ("backends", "a", "rewrite"),
        {"from": "/v1/models/x", "to": "/v1/models/y"},
        {
            "from": Key("path", "Path prefix as clients send it.", attr="from_"),
            "to": Key("path", "What the backend gets instead."),
        },
        get=lambda c: c.backends["a"].rewrite,
    ),
    Section(
        "routes[]",
        ("routes", 0),
        {"name": "r", "policy": _WEIGHTED},
        {
            "name": Key("name", "Route name: in `/admin/routes/NAME`, metrics and tokens."),
            "match": Key(
                "mapping", "Which requests, see `routes[].match`; absent: all.", default="—"
            ),
            "overrides": Key(
                "list",
                "Focused routing before the policy, first match wins, see `routes[].overrides[]`.",
                default="`[]`",
            ),
            "sticky": Key(
                "mapping",
                "Sticky assignment key, see `routes[].sticky`; absent: random per request.",
                default="—",
            ),
            "retries": Key("mapping", "See `routes[].retries`.", default="—"),
            "timeout": Key(
                "duration",
                "Whole-request deadline over all attempts; absent: the backend timeouts only.",
            ),
            "mirror": Key("mapping", "Shadow traffic, see `routes[].mirror`.", default="—"),
            "policy": Key("mapping", "Exactly one policy kind, see `routes[].policy`."),
            "decision_log": Key(
                "mapping",
                "Learning routes: record every decision for off-policy evaluation, see "
                "`routes[].decision_log`.",
                default="—",
            ),
            "warm_start": Key(
                "path",
                "Bandit routes: a `modelrouter replay --fit` or `snapshot` file the policy "
                "starts from when the store has no state for the route (relative to this file).",
                default="—",
            ),
        },
        get=_route,
    ),
    Section(
        "routes[].decision_log",
        ("routes", 0, "decision_log"),
        {"path": "decisions.jsonl"},
        {
            "path": Key(
                "path",
                "JSON-lines file, relative to `$MODELROUTER_STATE_DIR` when set (the image's "
                "volume), else to this file; rotated files sit next to it, gzipped.",
            ),
            "sample_rate": Key(
                "number", "Share of decisions logged (by a hash of the decision id), in (0, 1]."
            ),
            "rotate_size": Key("size", "Rotate when the file reaches this size."),
            "rotate_interval": Key("duration", "Rotate when the file is this old."),
            "retention": Key("duration", "Delete rotated files older than this."),
            "queue": Key(
                "int",
                "Records waiting for the writer thread; beyond this they are dropped and "
                "counted, never waited for.",
            ),
        },
        get=lambda c: c.routes[0].decision_log,
        policy=_BANDIT,
    ),
    Section(
        "routes[].match",
        ("routes", 0, "match"),
        {},
        {
            "path_prefix": Key(
                "path",
                "Path prefix matched on whole segments: `/v2/models/iris` matches "
                "`/v2/models/iris`, `/v2/models/iris/infer` and `/v2/models/iris:predict`, not "
                "`/v2/models/iris-v2/infer`; a prefix ending in `/` or `:` matches anything "
                "after it.",
            ),
            "path_exact": Key(
                "path", "Only this exact path (instead of `path_prefix`).", default="—"
            ),
            "path_regex": Key(
                "regex",
                "A regular expression the whole path must match (instead of `path_prefix`).",
                default="—",
            ),
            "methods": Key("list", "HTTP methods; absent: any method.", default="any"),
        },
        get=lambda c: c.routes[0].match,
    ),
    Section(
        "routes[].overrides[]",
        ("routes", 0, "overrides", 0),
        {"when": {"header": {"x-a": "1"}}, "backend": "a"},
        {
            "when": Key(
                "mapping",
                "Exactly one of `header: {NAME: VALUE}` (exact), "
                "`header_prefix`, `header_regex` (regex search), `cookie: {NAME: VALUE}`.",
            ),
            "backend": Key("backend", "Backend that serves matching requests."),
        },
    ),
    Section(
        "routes[].sticky",
        ("routes", 0, "sticky"),
        {"key": "header:x-user-id"},
        {
            "key": Key(
                "source:name",
                "`header:NAME`, `cookie:NAME`, `query:NAME` or `ip` (the client address, see "
                "`limits.trusted_hops`); the same key always lands in the same bucket.",
            ),
        },
    ),
    Section(
        "routes[].retries",
        ("routes", 0, "retries"),
        {},
        {
            "attempts": Key("int", "Extra attempts after the first (0-5)."),
            "on": Key(
                "choices",
                "When to retry; status codes (e.g. `503`, `404`) may be listed too.",
            ),
            "non_idempotent": Key(
                "bool",
                "Also re-send POST and PATCH requests whose bytes may have reached an "
                "upstream (see Operations: when a request is sent twice).",
            ),
        },
        get=lambda c: c.routes[0].retries,
    ),
    Section(
        "routes[].mirror",
        ("routes", 0, "mirror"),
        {"backend": "b"},
        {
            "backend": Key("backend", "Shadow backend; its answers are compared, never returned."),
            "percent": Key("number", "Share of requests mirrored (0-100)."),
        },
        get=lambda c: c.routes[0].mirror,
    ),
    Section(
        "routes[].policy (kind: weighted)",
        _POLICY,
        _WEIGHTED,
        {
            "kind": Key("kind", "The policy kind."),
            "weights": Key(
                "mapping",
                "Backend → relative weight; zero allowed, not all zero. "
                "Changed live by `modelrouter set-weights`.",
            ),
        },
    ),
    Section(
        "routes[].policy (kind: canary)",
        _POLICY,
        _CANARY,
        {
            "kind": Key("kind", "The policy kind."),
            "stable": Key("backend", "Serves everything the candidate does not."),
            "candidate": Key("backend", "The new version."),
            "steps": Key(
                "list",
                "Candidate percent per step, strictly increasing; passing the "
                "last step promotes (100%).",
            ),
            "interval": Key("duration", "Bake time per step; analysis runs at its end."),
            "validate": Key(
                "mapping",
                "Infra validation before any traffic, see `validate`; "
                "absent: the candidate's health path (or `/`).",
                default="—",
            ),
            "analysis": Key("mapping", "See `analysis`.", default="—"),
            "gate": Key("choice", "`manual`: pause before the final step until `promote`."),
            "webhooks": Key("list", "See `webhooks[]`.", default="`[]`"),
        },
        get=_pol,
    ),
    Section(
        "routes[].policy (kind: blue_green)",
        _POLICY,
        _BLUE_GREEN,
        {
            "kind": Key("kind", "The policy kind."),
            "active": Key("backend", "Serves all traffic."),
            "preview": Key("backend", "Reached only through overrides until `switch`."),
            "analysis": Key(
                "mapping", "Optional analysis of preview traffic, see `analysis`.", default="—"
            ),
            "auto_switch": Key(
                "bool",
                "Switch by itself once validation/analysis passes "
                "(needs `analysis` or `validate`).",
            ),
            "validate": Key(
                "mapping", "Infra validation of the preview, see `validate`.", default="—"
            ),
            "webhooks": Key("list", "See `webhooks[]`.", default="`[]`"),
            "interval": Key("duration", "How often the preview analysis runs."),
        },
        get=_pol,
    ),
    Section(
        "validate (canary, blue_green)",
        (*_POLICY, "validate"),
        {},
        {
            "requests": Key(
                "list",
                "Requests the new version must answer, see "
                "`validate.requests[]`; empty: GET its health path.",
                default="`[]`",
            ),
            "timeout": Key("duration", "Per request."),
            "attempts": Key("int", "Tries per request before validation fails (1-100)."),
        },
        get=lambda c: _pol(c).validate,
        policy=_CANARY,
    ),
    Section(
        "validate.requests[]",
        (*_POLICY, "validate", "requests", 0),
        {"path": "/v1/models/x"},
        {
            "method": Key("string", "HTTP method.", default="`GET`, `POST` with a body"),
            "path": Key("path", "Path as clients send it; the backend's `rewrite` applies."),
            "body": Key("JSON", "Sent as `application/json`.", default="—"),
            "headers": Key("mapping", "Extra request headers.", default="—"),
            "expect_status": Key("int", "Status the answer must have."),
        },
        get=lambda c: _pol(c).validate.requests[0],
        policy=_CANARY,
    ),
    Section(
        "analysis (canary, blue_green)",
        (*_POLICY, "analysis"),
        {},
        {
            "min_requests": Key(
                "int", "Per arm per step; fewer is *inconclusive*: wait, never pass."
            ),
            "failure_limit": Key("int", "Failed analyses before automatic rollback."),
            "checks": Key("list", "See `analysis.checks[]`.", default="`[]`"),
            "compare": Key(
                "choice",
                "`sequential`: also an always-valid mSPRT of candidate vs "
                "stable error rate, checked every interval.",
            ),
            "alpha": Key("number", "Significance of `compare: sequential`."),
            "confidence": Key(
                "number",
                "Threshold checks fail only when the confidence bound nearest the limit is "
                "past it (a point estimate past it without that is inconclusive).",
            ),
            "inconclusive_limit": Key(
                "int",
                "Inconclusive analyses in a row before `on_inconclusive` applies; 0: wait forever.",
            ),
            "on_inconclusive": Key(
                "choice", "`pause` (with the reason; resume, promote or abort) or `rollback`."
            ),
            "progress_deadline": Key(
                "duration",
                "Longest time progressing without a transition; then `on_inconclusive` applies.",
                default="off",
            ),
        },
        get=lambda c: _pol(c).analysis,
        policy=_CANARY,
    ),
    *_check_sections(),
    Section(
        "webhooks[] (canary, blue_green)",
        (*_POLICY, "webhooks", 0),
        {"url": "http://127.0.0.1:9000/hook"},
        {
            "on": Key("choices", "Events that trigger a POST.", default="every event"),
            "url": Key(
                "http URL",
                "Receives JSON `{route, from, to, reason, shares}`; "
                "failures are retried with backoff and never block a rollback.",
            ),
        },
        policy=_CANARY,
    ),
    Section(
        "routes[].policy (kind: ab_test)",
        _POLICY,
        _AB,
        {
            "kind": Key("kind", "The policy kind."),
            "arms": Key("mapping", "Experiment arm name → backend; the first arm is the control."),
            "split": Key("mapping", "Arm → relative weight.", default="equal"),
            "reward": Key("mapping", "See `reward`.", default="—"),
            "test": Key("mapping", "See `test`.", default="—"),
            "conclude": Key(
                "choice",
                "`route_winner`: send 100% to the winner once decided "
                "(phase `concluded`); `stop`/`none`: keep the split, report the "
                "winner.",
            ),
            "guardrails": Key(
                "list",
                "Metrics an arm must not break, tested sequentially per arm; see "
                "`guardrails[]`. A failing arm is never concluded winner.",
                default="—",
            ),
        },
        get=_pol,
    ),
    *_guardrail_sections(),
    Section(
        "test (ab_test)",
        (*_POLICY, "test"),
        {},
        {
            "method": Key(
                "choice",
                "`msprt`: always-valid p-values (look any time); `z_test`, "
                "`welch_t`: fixed-horizon; `bayesian`: probability to be best.",
            ),
            "alpha": Key("number", "Significance (or 1 - required probability to be best)."),
            "min_samples": Key("int", "Rewards per arm before the test may decide."),
            "mixing_sd": Key(
                "number",
                "mSPRT: standard deviation of the effect prior (the normal mixing distribution "
                "over the true difference), in reward units — the same meaning as the canary's "
                "sequential test. Absent: 0.1 × the pooled standard deviation of one "
                "observation.",
                default="0.1 × pooled sd",
            ),
            "tau": Key(
                "number",
                "Deprecated: the old name, a *variance*; read as `mixing_sd: sqrt(tau)` with a "
                "warning. Giving both is an error.",
                default="—",
            ),
        },
        get=lambda c: _pol(c).test,
        policy=_AB,
    ),
    Section(
        "reward (ab_test, bandit, contextual_bandit)",
        (*_POLICY, "reward"),
        {},
        {
            "type": Key("choice", "`binary` (0/1, Beta-Bernoulli) or `continuous` (Gaussian)."),
            "from": Key(
                "choice",
                "`feedback`: the feedback API; `response`: 1 for an answer "
                "below `max_status` (and within `max_latency`), else 0.",
                attr="source",
            ),
            "max_status": Key("int", "With `from: response`."),
            "max_latency": Key("duration", "With `from: response`; absent: latency ignored."),
            "range": Key(
                "list",
                "`[low, high]` of a `continuous` reward from feedback: a reward outside is "
                "refused with 422 and never reaches the model. Absent: any finite reward of "
                "magnitude up to 1e15.",
                default="—",
            ),
        },
        get=lambda c: _pol(c).reward,
        policy=_BANDIT,
    ),
    Section(
        "routes[].policy (kind: bandit)",
        _POLICY,
        _BANDIT,
        {
            "kind": Key("kind", "The policy kind."),
            "arms": Key("list", "Backends (at least two)."),
            "algorithm": Key("choice", "Bandit algorithm."),
            "reward": Key("mapping", "See `reward`.", default="—"),
            "params": Key("mapping", "Algorithm parameters, see `params`.", default="—"),
            "min_share": Key("number", "Exploration floor per arm, at most 1/arms."),
            "discount": Key("number", "In (0, 1]; below 1 forgets old rewards (drifting traffic)."),
            "guardrails": Key(
                "list",
                "See `guardrails[]`; an arm failing one gets at most `min_share` of traffic.",
                default="—",
            ),
        },
        get=_pol,
    ),
    Section(
        "routes[].policy (kind: contextual_bandit)",
        _POLICY,
        _CONTEXTUAL,
        {
            "kind": Key("kind", "The policy kind."),
            "arms": Key("list", "Backends (at least two)."),
            "algorithm": Key("choice", "Linear contextual bandit."),
            "params": Key("mapping", "Algorithm parameters, see `params`.", default="—"),
            "features": Key("list", "Context features, see `features[]`; a bias term is added."),
            "reward": Key("mapping", "See `reward`.", default="—"),
        },
        get=_pol,
    ),
    Section(
        "features[] (type: categorical)",
        (*_POLICY, "features", 0),
        {"name": "f", "from": "header:x-f", "type": "categorical", "values": ["x"]},
        {
            "name": Key("name", "Feature name."),
            "from": Key(
                "source:name",
                "`header:NAME`, `cookie:NAME`, `query:NAME` or "
                "`json:/pointer` into the request body.",
            ),
            "type": Key("kind", "Feature type."),
            "values": Key("list", "One-hot values; anything else encodes as all zeros."),
        },
        policy=_CONTEXTUAL,
    ),
    Section(
        "features[] (type: numeric)",
        (*_POLICY, "features", 0),
        {"name": "f", "from": "json:/instances/0/age", "type": "numeric"},
        {
            "name": Key("name", "Feature name."),
            "from": Key(
                "source:name",
                "`header:NAME`, `cookie:NAME`, `query:NAME` or "
                "`json:/pointer` into the request body.",
            ),
            "type": Key("kind", "Feature type."),
            "scale": Key(
                "number",
                "The value is multiplied by this, then clipped to +-`clip`. With neither "
                "`scale` nor `range` the value is standardised online (running mean and sd, "
                "winsorised) and clipped to +-`clip`.",
            ),
            "range": Key(
                "list",
                "`[low, high]` of the (scaled) value: encodes as (v - low) / (high - low), "
                "clipped to [0, 1].",
                default="—",
            ),
            "clip": Key("number", "Bound of the encoded value without a `range`."),
            "default": Key(
                "number", "Encoded value when the value is missing or not a finite number."
            ),
        },
        get=lambda c: _pol(c).features[0],
        policy=_CONTEXTUAL,
    ),
)


def _defaults(params: Sequence[Param]) -> Callable[[], Mapping[str, str]]:
    def read() -> Mapping[str, str]:
        return {p.name: _fmt(p.default, "number") for p in params}

    return read


def _params_sections() -> tuple[Section, ...]:
    """One table per registered algorithm with parameters, from the algorithm registries."""
    out: list[Section] = []
    for algo, entry in bandits.ALGORITHMS.items():
        reward = "binary"  # reward-dependent parameters are documented for binary rewards
        params = entry.params_for(reward)
        if not params:
            continue
        policy = {**_BANDIT, "algorithm": algo, "reward": {"type": reward}}
        title = f"params (bandit, algorithm: {algo}" + (
            f", reward: {reward})" if entry.reward_dependent else ")"
        )
        out.append(
            Section(
                title,
                (*_POLICY, "params"),
                {},
                _param_keys(params),
                policy=policy,
                defaults=_defaults(params),
            )
        )
    for algo, lin in contextual.ALGORITHMS.items():
        if not lin.params:
            continue
        out.append(
            Section(
                f"params (contextual_bandit, algorithm: {algo})",
                (*_POLICY, "params"),
                {},
                _param_keys(lin.params),
                policy={**_CONTEXTUAL, "algorithm": algo},
                defaults=_defaults(lin.params),
            )
        )
    return tuple(out)


SECTIONS: tuple[Section, ...] = _SECTIONS + _params_sections()


# ---- probing the validator ---------------------------------------------------------------------


def _document(section: Section, content: Mapping[str, Any]) -> dict[str, Any]:
    """A whole config with `content` at `section.path`."""
    doc: dict[str, Any] = {
        "backends": {"a": {"url": _A}, "b": {"url": _B}},
        "routes": [{"name": "r", "policy": copy.deepcopy(dict(section.policy or _WEIGHTED))}],
    }
    if not section.path:
        return copy.deepcopy(dict(content))
    node: Any = doc
    for step, nxt in zip(section.path, (*section.path[1:], None), strict=True):
        if nxt is None:
            if isinstance(node, list):
                node[:] = [copy.deepcopy(dict(content))]
            else:
                node[step] = copy.deepcopy(dict(content))
            break
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            while len(node) <= int(step):
                node.append(empty)
        elif step not in node or not isinstance(node[step], type(empty)):
            node[step] = empty
        node = node[step]
    return doc


def _parse(doc: Mapping[str, Any]) -> tuple[Config | None, list[str]]:
    try:
        return parse_config(yaml.safe_dump(dict(doc), sort_keys=False), "<probe>"), []
    except ConfigError as e:
        return None, e.errors


def _must_parse(section: Section, content: Mapping[str, Any]) -> Config:
    cfg, errors = _parse(_document(section, content))
    if cfg is None:
        raise ReferenceError(
            f"router/reference.py: the minimal '{section.title}' no longer validates:\n"
            + "\n".join(errors)
        )
    return cfg


def _allowed(section: Section) -> list[str]:
    _, errors = _parse(_document(section, {**section.minimal, _PROBE: 1}))
    for line in errors:
        m = _ALLOWED_RE.search(line)
        if m:
            return m.group(1).split(", ")
    raise ReferenceError(
        f"router/reference.py: cannot read the allowed keys of '{section.title}':\n"
        + "\n".join(errors)
    )


def _required(section: Section, key: str) -> bool:
    if key not in section.minimal:
        return False
    rest = {k: v for k, v in section.minimal.items() if k != key}
    _, errors = _parse(_document(section, rest))
    return any(f"missing required key '{key}'" in e for e in errors)


def _choices(section: Section, key: str, many: bool) -> list[str]:
    value: Any = [_PROBE] if many else _PROBE
    _, errors = _parse(_document(section, {**section.minimal, key: value}))
    for line in errors:
        m = _CHOICES_RE.search(line)
        if m:
            return m.group(1).split(", ")
    raise ReferenceError(f"router/reference.py: '{section.title}.{key}' is not a choice")


def _fmt_duration(s: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if s >= size and s % size == 0:
            return f"{s / size:g}{unit}"
    return f"{s * 1000:g}ms"


def _fmt_size(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _fmt(value: object, kind: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif kind == "duration" and isinstance(value, int | float):
        text = _fmt_duration(float(value))
    elif kind == "size" and isinstance(value, int):
        text = _fmt_size(value)
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() and math.isfinite(value) else f"{value:g}"
    elif isinstance(value, frozenset | set):
        text = "[" + ", ".join(sorted(str(v) for v in value)) + "]"
    elif isinstance(value, tuple | list):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    elif isinstance(value, Address):
        text = str(value)
    else:
        text = str(value)
    return f"`{text}`"


def _default(section: Section, key: str, spec: Key, extra: Mapping[str, str]) -> str:
    if spec.default is not None:
        return spec.default
    if key in extra:
        return extra[key]
    if section.get is None:
        return "—"
    content = {k: v for k, v in section.minimal.items() if k != key}
    obj = section.get(_must_parse(section, content))
    return _fmt(getattr(obj, spec.attr or key), spec.type)


@dataclass(slots=True)
class _Row:
    key: str
    type: str
    default: str
    doc: str


@dataclass(slots=True)
class _Table:
    title: str
    note: str
    rows: list[_Row] = field(default_factory=list)


def config_tables() -> list[_Table]:
    """Every documented section with its keys, checked against what the validator accepts."""
    tables: list[_Table] = []
    problems: list[str] = []
    for section in SECTIONS:
        allowed = _allowed(section)
        missing = [k for k in allowed if k not in section.keys]
        stale = [k for k in section.keys if k not in allowed]
        if missing:
            problems.append(f"'{section.title}': undocumented key(s) {', '.join(missing)}")
        if stale:
            problems.append(f"'{section.title}': key(s) no longer accepted: {', '.join(stale)}")
        if missing or stale:
            continue
        extra = section.defaults() if section.defaults else {}
        table = _Table(section.title, section.note)
        for key in allowed:
            spec = section.keys[key]
            kind = spec.type
            if kind == "kind":  # the discriminator of this section
                kind = f"`{section.minimal[key]}`"
            elif kind in ("choice", "choices"):
                options = _choices(section, key, many=kind == "choices")
                kind = ("list of " if kind == "choices" else "") + " \\| ".join(
                    f"`{o}`" for o in options
                )
            required = spec.type == "kind" or _required(section, key)
            default = "*required*" if required else _default(section, key, spec, extra)
            table.rows.append(_Row(key, kind, default, spec.doc))
        tables.append(table)
    if problems:
        raise ReferenceError(
            "router/reference.py is out of step with router/config: "
            + "; ".join(problems)
            + ". Describe the key in SECTIONS."
        )
    return tables


def metric_rows() -> list[tuple[str, str, str, str]]:
    """(exposed series, type, labels, help) of every metric a fresh `Metrics()` registers."""
    registry = Metrics().registry
    rows: list[tuple[str, str, str, str]] = []
    # prometheus_client keeps no public list of collectors; this mapping is stable across 0.x
    for collector in list(registry._collector_to_names):
        labels_of: tuple[str, ...] = tuple(getattr(collector, "_labelnames", ()))
        describe: Callable[[], Any] = getattr(collector, "describe")  # noqa: B009
        for family in describe():
            labels = tuple(getattr(family, "_labelnames", ())) or labels_of
            name = family.name
            series = {
                "counter": [f"{name}_total"],
                "histogram": [f"{name}_bucket", f"{name}_sum", f"{name}_count"],
                "summary": [f"{name}_sum", f"{name}_count"],
            }.get(family.type, [name])
            rows.append(
                (
                    ", ".join(f"`{s}`" for s in series),
                    family.type,
                    ", ".join(labels) or "—",
                    family.documentation,
                )
            )
    return sorted(rows)


@functools.lru_cache(maxsize=1)
def generate() -> str:
    """The Markdown reference (without the START/END markers); the code does not change at run
    time, so it is computed once."""
    out = [
        "<!-- generated by `python -m router.reference`; edit router/reference.py, not this -->",
        "",
        "### Configuration keys",
        "",
        "Durations are `250ms`, `5s`, `1m`, `1h` (or seconds); sizes are `16MiB`, `64KiB`, `1MB`"
        " (or bytes). Unknown keys are errors that list the allowed ones. *required* marks keys"
        " without a default; `—` means absent/off.",
    ]
    for t in config_tables():
        out += ["", f"#### `{t.title}`", ""]
        if t.note:
            out += [t.note, ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{r.key}` | {r.type} | {r.default} | {r.doc} |" for r in t.rows]
    out += [
        "",
        "### Metrics",
        "",
        "Served at `GET /metrics` on the admin listener. Label values come only from configured"
        ' names; `route=""` counts requests no route matched and `route="_feedback"` the'
        " feedback endpoint's.",
        "",
        "| series | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    out += [f"| {s} | {t} | {lb} | {h} |" for s, t, lb, h in metric_rows()]
    buckets = ", ".join(f"{b:g}" for b in DURATION_BUCKETS)
    out += ["", f"Latency histogram buckets (seconds): {buckets}."]
    return "\n".join(out) + "\n"


def splice(text: str, reference: str) -> str:
    """`text` with everything between the START and END markers replaced by `reference`."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ReferenceError(f"no '{START}' ... '{END}' block found")
    return text[: start + len(START)] + "\n" + reference + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m router.reference", description="Print the config and metric reference."
    )
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="FILE", help="replace the block between the markers")
    g.add_argument("--check", metavar="FILE", help="exit 1 when FILE's block is out of date")
    args = parser.parse_args(argv)
    try:
        reference = generate()
        if args.write or args.check:
            path = Path(args.write or args.check)
            text = path.read_text(encoding="utf-8")
            new = splice(text, reference)
            if args.check:
                if new != text:
                    print(
                        f"{path}: reference is out of date; run: python -m router.reference "
                        f"--write {path}",
                        file=sys.stderr,
                    )
                    return 1
                return 0
            if new != text:
                path.write_text(new, encoding="utf-8")
            return 0
    except (ReferenceError, OSError) as e:
        print(f"router.reference: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
