"""Small value parsers shared by the sections: addresses, URLs, paths, ``SOURCE:NAME``
references and backend-name references."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Sequence
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

from policies.checks import parse_statuses
from policies.params import Param
from policies.spec import Address
from router.config.reader import TOKEN_RE, MapReader, Reader

_S = TypeVar("_S", bound=str)


def address(r: Reader, default: Address) -> Address:
    if not r.present:
        return default
    v = r.value()
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535:
        return Address("0.0.0.0", v)
    s = r.string(None)
    if s is None:
        return default
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9_.-]*):(\d{1,5})", s.strip())
    port = int(m.group(2) or m.group(4)) if m else -1
    if m is None or port > 65535:
        r.error(f"expected host:port (e.g. 0.0.0.0:8080, :8080 or [::1]:8080), got {s!r}")
        return default
    host = m.group(1) or m.group(3) or "0.0.0.0"
    return Address(host, port)


class _Url(NamedTuple):
    scheme: str
    host: str
    port: int | None
    path: str
    extra: bool  # user info, query or fragment


def split_url(r: Reader, s: str) -> _Url | None:
    """The parts of URL ``s``, or None after reporting why it is not one."""
    try:
        p = urlsplit(s)
        port = p.port  # raises on a non-numeric or out-of-range port
    except ValueError as e:
        r.error(f"invalid URL {s!r}: {e}")
        return None
    if re.search(r"\s", s):
        r.error(f"invalid URL {s!r}: contains whitespace")
        return None
    extra = bool(p.query or p.fragment or p.username or p.password)
    return _Url(p.scheme, p.hostname or "", port, p.path, extra)


def http_url(r: Reader, s: str | None = None) -> str | None:
    """A required http(s):// URL (webhooks, Prometheus): ``s`` when already read at ``r``."""
    if s is None:
        s = r.string()
    parts = split_url(r, s) if s else None
    if parts is None:
        return None
    if parts.scheme not in ("http", "https") or not parts.host:
        r.error(f"expected an http:// or https:// URL, got {s!r}")
        return None
    return s


def abs_path(r: Reader) -> str:
    return r.string(pattern=re.compile(r"/\S*"), what="a path starting with '/'")


def source_ref(r: Reader, sources: Sequence[_S], example: str) -> tuple[_S, str]:
    """``SOURCE:NAME`` (``header:x-user-id``, ``json:/a/0``) -> (source, name)."""
    s = r.string()
    kind, sep, key = s.partition(":")
    for src in sources:
        if sep and kind == src and key:
            if src == "json" and not key.startswith("/"):
                r.error(
                    f"a JSON pointer must start with '/', got {key!r} (e.g. json:/instances/0/age)"
                )
            elif src == "header" and not TOKEN_RE.fullmatch(key):
                r.error(f"invalid header name {key!r}")
            return src, key.lower() if src == "header" else key
    if s:
        r.error(f"expected {' | '.join(x + ':NAME' for x in sources)} (e.g. {example}), got {s!r}")
    return sources[0], ""


class Refs:
    """Checks backend names against the ``backends`` section; ``None`` skips the check."""

    def __init__(self, names: Collection[str] | None) -> None:
        self.names = names

    def check(self, r: Reader, name: str) -> str:
        if self.names is not None and name and name not in self.names:
            known = ", ".join(sorted(self.names)) or "(none)"
            close = difflib.get_close_matches(name, list(self.names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            r.error(f"unknown backend '{name}'; defined backends: {known}{hint}")
        return name

    def backend(self, r: Reader) -> str:
        return self.check(r, r.string())


def read_params(
    m: MapReader, declared: Sequence[Param], *, defaults: bool = True, optional: bool = False
) -> dict[str, float | str | None]:
    """Read each declared parameter of mapping ``m`` by its type and bounds (None when absent).

    ``defaults=False`` leaves absent params None (the implementation applies its defaults);
    ``optional=True`` reads required params as optional (the caller decides when they are due).
    """
    out: dict[str, float | str | None] = {}
    for p in declared:
        r = m[p.name]
        required = p.required and not optional
        default = p.default if defaults else None
        value: float | str | None
        if p.type == "number":
            if required:
                value = r.number(min=p.min, gt=p.gt, max=p.max)
            else:
                value = r.number(_num(default), min=p.min, gt=p.gt, max=p.max)
        elif p.type == "duration":
            value = r.duration() if required else r.duration(_num(default))
        elif p.type == "statuses":
            value = _statuses(r) if r.present else (_str(default) if defaults else None)
        else:
            pattern = re.compile(p.pattern) if p.pattern else None
            if required:
                value = r.string(pattern=pattern, what=p.what)
            else:
                value = r.string(_str(default), pattern=pattern, what=p.what)
            if p.type == "http_url":
                value = http_url(r, value) if value else None
        out[p.name] = value
    return out


def _statuses(r: Reader) -> str | None:
    """A list of status codes and classes (`[5xx, 404]`, or `"5xx,404"`), canonical text."""
    raw = r.value()
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list):
        r.error("must be a list of status codes or classes, e.g. [5xx, 404]")
        return None
    try:
        return parse_statuses(items)
    except ValueError as e:
        r.error(str(e))
        return None


def _num(x: float | str | None) -> float | None:
    return float(x) if isinstance(x, int | float) else None


def _str(x: float | str | None) -> str | None:
    return x if isinstance(x, str) else None
