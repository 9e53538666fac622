"""Backends and routes: ``backends.NAME`` and ``routes[]`` with match, overrides, sticky,
retries, mirror (the policy itself is read by `router.config.policies`)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Final

from policies.spec import (
    LEARNING_KINDS,
    ABTestSpec,
    Address,
    BackendConfig,
    DecisionLogSpec,
    HealthConfig,
    Match,
    Mirror,
    OutlierDetection,
    Override,
    OverrideKind,
    PolicySpec,
    Retries,
    RetryBudget,
    Rewrite,
    RouteConfig,
    Sticky,
    StickySource,
)
from router.config.policies import read_policy
from router.config.reader import TOKEN_RE, MapReader, Reader
from router.config.values import Refs, abs_path, source_ref, split_url

RETRY_ON: Final = ("connect-failure", "reset", "timeout", "5xx")
_VERSION_RE: Final = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")

_STICKY_SOURCES: Final[tuple[StickySource, ...]] = ("header", "cookie", "query")
_STICKY_EXAMPLE: Final = "header:x-user-id"
_OVERRIDE_KINDS: Final[tuple[OverrideKind, ...]] = (
    "header",
    "header_prefix",
    "header_regex",
    "cookie",
)


BACKEND_KEYS: Final = (
    "url",
    "endpoints",
    "version",
    "timeout",
    "health",
    "rewrite",
    "outlier_detection",
    "retry_budget",
)


def _endpoint_url(r: Reader, url: str) -> tuple[str, int, str] | None:
    """(host, port, base path) of one backend URL, or None after reporting what is wrong."""
    parts = split_url(r, url) if url else None
    if parts is None:
        return None
    if parts.scheme == "https":
        r.error(
            f"https upstreams are not supported yet (no TLS to backends); use http:// or a "
            f"local TLS sidecar, got {url!r}"
        )
    elif parts.scheme != "http" or not parts.host:
        r.error(f"expected http://host:port[/base], got {url!r}")
    elif parts.extra:
        r.error(f"must be http://host:port[/base] without user, query or fragment, got {url!r}")
    elif parts.port == 0:
        r.error(f"port must be 1-65535, got 0 in {url!r}")
    else:
        return parts.host, parts.port or 80, parts.path.rstrip("/")
    return None


def read_backend(name: str, m: MapReader) -> BackendConfig:
    url_r, eps_r = m["url"], m["endpoints"]
    if url_r.present and eps_r.present:
        m.error("give either 'url' (one endpoint) or 'endpoints' (a list of URLs), not both")
    items = eps_r.sequence(min_len=1) if eps_r.present else [url_r]
    urls: list[str] = []
    addrs: list[Address] = []
    base: str | None = None
    for r in items:
        url = r.string()
        parsed = _endpoint_url(r, url)
        if parsed is None:
            continue
        host, port, path = parsed
        if base is None:
            base = path
        elif path != base:
            r.error(f"every endpoint of a backend must have the same path: {base!r}, got {path!r}")
            continue
        if Address(host, port) in addrs:
            r.error(f"duplicate endpoint {host}:{port}")
            continue
        urls.append(url)
        addrs.append(Address(host, port))
    host, port = (addrs[0].host, addrs[0].port) if addrs else ("", 80)
    version = _version(m["version"])
    health = None
    if m["health"].present:
        h = m["health"].mapping(("path", "interval"))
        health = HealthConfig(abs_path(h["path"]), h["interval"].duration(5.0))
    rewrite = None
    if m["rewrite"].present:
        w = m["rewrite"].mapping(("from", "to"))
        rewrite = Rewrite(abs_path(w["from"]), abs_path(w["to"]))
    return BackendConfig(
        name=name,
        url=urls[0] if urls else "",
        scheme="http",
        host=host,
        port=port,
        base_path=base or "",
        version=version,
        timeout=m["timeout"].duration(30.0),
        health=health,
        rewrite=rewrite,
        endpoints=tuple(addrs) if len(addrs) > 1 else (),
        outlier=_outlier(m["outlier_detection"]),
        retry_budget=_retry_budget(m["retry_budget"]),
    )


_OUTLIER_KEYS: Final = (
    "consecutive_5xx",
    "consecutive_local_origin_failure",
    "failure_status",
    "base_ejection_time",
    "max_ejection_time",
    "max_ejection_percent",
)


def _status_code(r: Reader) -> int:
    return r.integer(min=400, max=599)


def _outlier(r: Reader) -> OutlierDetection:
    d = OutlierDetection()
    if not r.present:
        return d
    m = r.mapping(_OUTLIER_KEYS)
    base = m["base_ejection_time"].duration(d.base_ejection_time)
    max_r = m["max_ejection_time"]
    most = max_r.duration(max(d.max_ejection_time, base))
    if most < base:
        max_r.error(f"must be at least base_ejection_time ({base:g}s), got {most:g}s")
        most = base
    return OutlierDetection(
        consecutive_5xx=m["consecutive_5xx"].integer(d.consecutive_5xx, min=0),
        consecutive_local_origin_failure=m["consecutive_local_origin_failure"].integer(
            d.consecutive_local_origin_failure, min=0
        ),
        failure_status=frozenset(_status_code(x) for x in m["failure_status"].sequence()),
        base_ejection_time=base,
        max_ejection_time=most,
        max_ejection_percent=m["max_ejection_percent"].number(
            d.max_ejection_percent, min=0, max=100
        ),
    )


def _retry_budget(r: Reader) -> RetryBudget:
    d = RetryBudget()
    if not r.present:
        return d
    m = r.mapping(("budget_percent", "min_retries"))
    return RetryBudget(
        budget_percent=m["budget_percent"].number(d.budget_percent, min=0, max=100),
        min_retries=m["min_retries"].integer(d.min_retries, min=0),
    )


def _version(r: Reader) -> str | None:
    if not r.present:
        return None
    v = r.value()
    if isinstance(v, int | float) and not isinstance(v, bool):
        r.error(
            f'expected MAJOR.MINOR.PIPELINE as a quoted string like "1.0.0", got number {v}; '
            "quote it"
        )
        return None
    s = r.string(None)
    if s is not None and not _VERSION_RE.fullmatch(s):
        r.error(
            f"expected MAJOR.MINOR.PIPELINE (three non-negative integers, e.g. 1.0.0), got {s!r}"
        )
        return None
    return s


_PATH_KINDS: Final = ("path_prefix", "path_exact", "path_regex")
_URL_PATH_RE: Final = re.compile(r"/\S*")


def _match(r: Reader) -> Match:
    if not r.present:
        return Match()
    m = r.mapping(("path_prefix", "path_exact", "path_regex", "methods"))
    given = [k for k in _PATH_KINDS if k in m]
    if len(given) > 1 and not m.quiet:
        m.error(f"give one of path_prefix, path_exact, path_regex, got {' and '.join(given)}")
    prefix = m["path_prefix"].string("/", pattern=_URL_PATH_RE, what="a path starting with '/'")
    exact = m["path_exact"].string(None, pattern=_URL_PATH_RE, what="a path starting with '/'")
    regex = m["path_regex"].string(None)
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as e:
            m["path_regex"].error(f"invalid regular expression {regex!r}: {e}")
    methods: frozenset[str] | None = None
    if m["methods"].present:
        names = [
            x.string(pattern=TOKEN_RE, what="an HTTP method").upper()
            for x in m["methods"].sequence()
        ]
        if not names and not m["methods"].quiet:
            m["methods"].error("must not be empty; omit methods to match every method")
        methods = frozenset(n for n in names if n)
    return Match(path_prefix=prefix, methods=methods, path_exact=exact, path_regex=regex)


def _override(r: Reader, refs: Refs) -> Override:
    m = r.mapping(("when", "backend"), required=True)
    backend = refs.backend(m["backend"])
    when = m["when"].mapping(_OVERRIDE_KINDS, required=True)
    kind: OverrideKind = "header"
    name = value = ""
    if not when.quiet:
        found = when.exactly_one(_OVERRIDE_KINDS)
        if found is not None:
            kind = _OVERRIDE_KINDS[_OVERRIDE_KINDS.index(found)]
            inner = when[kind].mapping(required=True)
            entries = inner.items()
            what = "cookie" if kind == "cookie" else "header"
            if len(entries) != 1 and not inner.quiet:
                inner.error(
                    f"must name exactly one {what} (use one override per {what}), "
                    f"got {len(entries)}"
                )
            if entries:
                name, vr = entries[0]
                value = vr.string()
                if kind != "cookie":
                    if not TOKEN_RE.fullmatch(name):
                        inner.error(f"invalid header name {name!r}")
                    name = name.lower()
                if kind == "header_regex" and value:
                    try:
                        re.compile(value)
                    except re.error as e:
                        vr.error(f"invalid regular expression {value!r}: {e}")
    return Override(kind=kind, name=name, value=value, backend=backend)


def _sticky(r: Reader) -> Sticky | None:
    if not r.present:
        return None
    m = r.mapping(("key",))
    if m["key"].present and m["key"].value() == "ip":
        return Sticky(source="ip", name="")  # the client address (limits.trusted_hops)
    source, name = source_ref(m["key"], _STICKY_SOURCES, _STICKY_EXAMPLE)
    return Sticky(source=source, name=name)


def _retries(r: Reader) -> Retries:
    if not r.present:
        return Retries()
    m = r.mapping(("attempts", "on", "non_idempotent"))
    on = Retries().on
    status: set[int] = set()
    if "on" in m:
        words: set[str] = set()
        for x in m["on"].sequence(min_len=1):
            v = x.value()
            if isinstance(v, int) and not isinstance(v, bool):
                status.add(_status_code(x))  # a status to retry, e.g. 404 or 503
            else:
                words.add(x.choice(RETRY_ON))
        on = frozenset(words)
    return Retries(
        attempts=m["attempts"].integer(0, min=0, max=5),
        on=on,
        status=frozenset(status),
        non_idempotent=m["non_idempotent"].boolean(False),
    )


def _mirror(r: Reader, refs: Refs) -> Mirror | None:
    if not r.present:
        return None
    m = r.mapping(("backend", "percent"))
    return Mirror(
        backend=refs.backend(m["backend"]), percent=m["percent"].number(100.0, min=0, max=100)
    )


_ROUTE_KEYS: Final = (
    "name",
    "match",
    "overrides",
    "sticky",
    "retries",
    "timeout",
    "mirror",
    "policy",
    "decision_log",
    "warm_start",
)
_DECISION_LOG_KEYS: Final = (
    "path",
    "sample_rate",
    "rotate_size",
    "rotate_interval",
    "retention",
    "queue",
)
_PATH_RE: Final = re.compile(r"\S+")


def _decision_log(r: Reader, policy: PolicySpec) -> DecisionLogSpec | None:
    if not r.present:
        return None
    m = r.mapping(_DECISION_LOG_KEYS, required=True)
    if policy.kind not in LEARNING_KINDS and not m.quiet:
        r.error(
            f"a {policy.kind} route makes no logged decisions (no propensities, no rewards); "
            f"decision_log needs one of {', '.join(sorted(LEARNING_KINDS))}"
        )
    d = DecisionLogSpec(path="")
    return DecisionLogSpec(
        path=m["path"].string(pattern=_PATH_RE, what="a file path"),
        sample_rate=m["sample_rate"].number(d.sample_rate, gt=0, max=1),
        rotate_size=m["rotate_size"].size(d.rotate_size),
        rotate_interval=m["rotate_interval"].duration(d.rotate_interval),
        retention=m["retention"].duration(d.retention),
        queue=m["queue"].integer(d.queue, min=1),
    )


def _warm_start(r: Reader, policy: PolicySpec) -> str | None:
    if not r.present:
        return None
    path = r.string(pattern=_PATH_RE, what="a file path")
    if policy.kind not in ("bandit", "contextual_bandit"):
        r.error(f"a {policy.kind} route does not learn; warm_start needs a bandit")
    return path


def _route(r: Reader, refs: Refs) -> RouteConfig:
    m = r.mapping(_ROUTE_KEYS, required=True)
    policy = read_policy(m["policy"], refs)
    sticky = _sticky(m["sticky"])
    if isinstance(policy, ABTestSpec) and sticky is not None:
        policy = replace(policy, sticky=True)  # users are randomised: analyse users
    return RouteConfig(
        name=m["name"].name("route name"),
        match=_match(m["match"]),
        policy=policy,
        decision_log=_decision_log(m["decision_log"], policy),
        warm_start=_warm_start(m["warm_start"], policy),
        overrides=tuple(_override(o, refs) for o in m["overrides"].sequence()),
        sticky=sticky,
        retries=_retries(m["retries"]),
        timeout=m["timeout"].duration(None),
        mirror=_mirror(m["mirror"], refs),
    )


def read_routes(r: Reader, refs: Refs) -> tuple[RouteConfig, ...]:
    items = r.sequence(required=True, min_len=1)
    routes: list[RouteConfig] = []
    seen: dict[str, int] = {}
    same_path: dict[tuple[str, str | None, str | None], list[int]] = {}
    logs: dict[str, int] = {}
    for i, item in enumerate(items):
        route = _route(item, refs)
        if route.name and route.name in seen:
            item.mapping()["name"].error(
                f"duplicate route name '{route.name}' (also routes[{seen[route.name]}])"
            )
        seen.setdefault(route.name, i)
        if route.decision_log is not None:
            path = route.decision_log.path
            if path in logs:
                item.mapping()["decision_log"].error(
                    f"path {path} is already the decision log of routes[{logs[path]}]; "
                    "give each route its own file"
                )
            logs.setdefault(path, i)
        # only routes with the same path match can shadow each other: look at those alone
        # (a linear pass, whatever the number of routes)
        key = _path_key(route.match)
        for j in same_path.get(key, ()):
            earlier = routes[j]
            a, b = earlier.match.methods, route.match.methods
            if a is None or b is None or a & b:
                item.mapping()["match"].warn(
                    f"same {_show_path(route.match)} and overlapping methods as "
                    f"routes[{j}] ('{earlier.name}'), which matches first"
                )
                break
        same_path.setdefault(key, []).append(len(routes))
        routes.append(route)
    return tuple(routes)


def _path_key(m: Match) -> tuple[str, str | None, str | None]:
    return (m.path_prefix, m.path_exact, m.path_regex)


def _show_path(m: Match) -> str:
    if m.path_exact is not None:
        return f"path_exact {m.path_exact!r}"
    if m.path_regex is not None:
        return f"path_regex {m.path_regex!r}"
    return f"path_prefix {m.path_prefix!r}"
