"""The whole document: top-level sections, `parse_config`, `load_config` and ``validate``."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Final

import yaml

from policies.spec import (
    Address,
    AdminConfig,
    BackendConfig,
    Config,
    FeedbackConfig,
    Limits,
    StateConfig,
)
from router.config.reader import NAME_RE, ConfigError, Reader, read_yaml
from router.config.routes import BACKEND_KEYS, read_backend, read_routes
from router.config.values import Refs, address, read_params
from router.store import DEFAULT_STORE, LEASE, STORE_KINDS

SUPPORTED_VERSION: Final = 1
MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024  # a larger file is refused before it is read
_ENV_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_TOP_KEYS: Final = (
    "version",
    "listen",
    "admin",
    "state",
    "limits",
    "feedback",
    "backends",
    "routes",
)
_DEFAULT_LISTEN: Final = Address("0.0.0.0", 8080)
_LIMIT_KEYS: Final = (
    "max_body",
    "max_header",
    "max_pending",
    "trusted_hops",
    "client_header_timeout",
    "client_body_timeout",
    "keepalive_timeout",
    "max_connections",
    "max_upstream_header",
)


def _state(r: Reader) -> StateConfig:
    """``state``: the store kind, then every store kind's declared keys (see router.store)."""
    params = tuple({p.name: p for k in STORE_KINDS.values() for p in k.params}.values())
    m = r.mapping(("store", LEASE.name, *(p.name for p in params)))
    store = m["store"].choice(tuple(STORE_KINDS), DEFAULT_STORE)
    values = read_params(m, params, optional=True)
    lease = m[LEASE.name].duration(10.0)
    if lease is not None and not 0.5 <= lease <= 600:
        m[LEASE.name].error(f"must be between 0.5s and 600s, got {lease:g}s")
    if not m.quiet:
        for p in STORE_KINDS[store].params:
            if p.required and values[p.name] is None and p.name not in m:
                m.error(f"store: {store} needs {p.name} (e.g. {p.example})")
    return StateConfig(store, **values, lease=lease)  # type: ignore[arg-type]


def _config(root: Reader) -> Config:
    if not isinstance(root.node, yaml.MappingNode):
        assert root.node is not None
        root.error(
            f"the top level must be a mapping with backends and routes, got {root._got(root.node)}"
        )
        return Config(backends={}, routes=(), source=root.doc.source)
    m = root.mapping(_TOP_KEYS)
    version = m["version"].integer(SUPPORTED_VERSION)
    if version != SUPPORTED_VERSION:
        m["version"].error(
            f"unsupported config version {version}; this modelrouter reads version 1"
        )

    a = m["admin"].mapping(("listen", "token_env"))
    admin = AdminConfig(
        listen=address(a["listen"], AdminConfig().listen),
        token_env=a["token_env"].string(
            AdminConfig().token_env, pattern=_ENV_RE, what="an environment variable name"
        ),
    )
    lm = m["limits"].mapping(_LIMIT_KEYS)
    d = Limits()
    limits = Limits(
        max_body=lm["max_body"].size(d.max_body),
        max_header=lm["max_header"].size(d.max_header),
        max_pending=lm["max_pending"].integer(d.max_pending, min=1),
        trusted_hops=lm["trusted_hops"].integer(d.trusted_hops, min=0, max=16),
        client_header_timeout=lm["client_header_timeout"].duration(d.client_header_timeout),
        client_body_timeout=lm["client_body_timeout"].duration(d.client_body_timeout),
        keepalive_timeout=lm["keepalive_timeout"].duration(d.keepalive_timeout),
        max_connections=lm["max_connections"].integer(d.max_connections, min=1, max=1_000_000),
        max_upstream_header=lm["max_upstream_header"].size(d.max_upstream_header),
    )
    for key, floor in (("max_header", 1024), ("max_upstream_header", 1024)):
        if getattr(limits, key) < floor and not lm.quiet:
            lm[key].error(f"must be at least 1KiB, got {getattr(limits, key)} bytes")
    fm = m["feedback"].mapping(("secret_env", "ttl", "missing_reward"))
    fd = FeedbackConfig()
    feedback = FeedbackConfig(
        secret_env=fm["secret_env"].string(
            fd.secret_env, pattern=_ENV_RE, what="an environment variable name"
        ),
        ttl=fm["ttl"].duration(fd.ttl),
        missing_reward=fm["missing_reward"].number(None),
    )

    bm = m["backends"].mapping(required=True)
    backends: dict[str, BackendConfig] = {}
    for name, br in bm.items():
        if not NAME_RE.fullmatch(name):
            bm.key_reader(name).error(
                f"invalid backend name {name!r}: use letters, digits, '_', '.', '-' "
                "(at most 64, starting with a letter or digit)"
            )
        bmap = br.mapping(BACKEND_KEYS, required=True)
        backends[name] = read_backend(name, bmap)
    if m["backends"].present and not bm.quiet and not backends:
        m["backends"].error("must define at least one backend")
    # With no usable backends section, every reference would be a second error for one mistake.
    refs = Refs(backends if m["backends"].present and not bm.quiet else None)

    return Config(
        backends=backends,
        routes=read_routes(m["routes"], refs),
        version=version,
        listen=address(m["listen"], _DEFAULT_LISTEN),
        admin=admin,
        state=_state(m["state"]),
        limits=limits,
        feedback=feedback,
        source=root.doc.source,
    )


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate YAML text; ConfigError lists every problem. ``source`` names it in messages.

    Bounded: aliases may not expand the document much (`read_yaml`), and running out of memory
    or stack is a ConfigError too, never a traceback.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([_too_big(source, len(text))])
    try:
        root = read_yaml(text, source)
        cfg = _config(root)
    except MemoryError:
        raise ConfigError(
            [f"{source}: ran out of memory reading the config; it is too large"]
        ) from None
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply to read"]) from None
    root.doc.raise_if_errors()
    return replace(cfg, warnings=tuple(root.doc.warning_lines()))


def _too_big(source: str, size: int) -> str:
    return (
        f"{source}: {size} bytes; a config may have at most {MAX_CONFIG_BYTES} "
        f"({MAX_CONFIG_BYTES >> 20} MiB)"
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; ConfigError (never OSError) when it cannot be used."""
    source = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([_too_big(source, size)])
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{source}: is a directory, expected a YAML file"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{source}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except OSError as e:
        raise ConfigError([f"{source}: cannot read: {e.strerror or e}"]) from None
    cfg = parse_config(text, source)
    errors = _check_warm_starts(cfg, Path(path).resolve().parent)
    if errors:
        raise ConfigError(errors)
    return cfg


def _check_warm_starts(cfg: Config, base: Path) -> list[str]:
    """Each `warm_start:` file (relative to the config file) must fit its route."""
    from router.warmstart import WarmStartError, load_warm_start

    errors = []
    for i, route in enumerate(cfg.routes):
        if route.warm_start is None:
            continue
        try:
            load_warm_start(base / route.warm_start, route.policy)
        except WarmStartError as e:
            errors.append(f"{cfg.source}: routes[{i}].warm_start: {e}")
    return errors


def validate_main(path: str | Path) -> int:
    """``modelrouter validate``: one summary line and 0, or every error on stderr and 2."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{path}: ran out of memory reading the config; it is too large", file=sys.stderr)
        return 2
    for line in cfg.warnings:
        print(line, file=sys.stderr)
    n_b, n_r = len(cfg.backends), len(cfg.routes)
    routes = ", ".join(f"{r.name}: {r.policy.kind}" for r in cfg.routes)
    print(
        f"OK: {path}: {n_b} backend{'s' if n_b != 1 else ''}, "
        f"{n_r} route{'s' if n_r != 1 else ''} ({routes})"
    )
    return 0
