"""Load and validate the YAML configuration (SPEC §2) into the frozen dataclasses of policies.spec.

Every problem is reported, not only the first, as ``FILE:LINE: yaml.path[2].key: message``
(``FILE: yaml.path: message`` when no line is known), e.g.
``canary.yaml:14: routes[0].policy.steps[2]: must be greater than 25, got 10``.
"""

from __future__ import annotations

import builtins
import difflib
import io
import json
import math
import re
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final, Literal, NamedTuple, TypeVar, overload
from urllib.parse import urlsplit

import yaml

from policies.spec import (
    LEARNING_KINDS,
    POLICY_KINDS,
    ROLLOUT_KINDS,
    ABTestSpec,
    Address,
    AdminConfig,
    AnalysisSpec,
    BackendConfig,
    BanditSpec,
    BlueGreenSpec,
    CanarySpec,
    Check,
    CheckMetric,
    Config,
    ContextualSpec,
    DecisionLogSpec,
    Feature,
    FeedbackConfig,
    HealthConfig,
    Limits,
    Match,
    Mirror,
    Override,
    OverrideKind,
    PolicySpec,
    Retries,
    RewardSpec,
    Rewrite,
    RouteConfig,
    StateConfig,
    Sticky,
    StickySource,
    TestSpec,
    ValidateRequest,
    ValidateSpec,
    Webhook,
    WeightedSpec,
    policy_backends,
)

__all__ = [
    "LEARNING_KINDS",
    "POLICY_KINDS",
    "ROLLOUT_KINDS",
    "ABTestSpec",
    "Address",
    "AdminConfig",
    "AnalysisSpec",
    "BackendConfig",
    "BanditSpec",
    "BlueGreenSpec",
    "CanarySpec",
    "Check",
    "Config",
    "ConfigError",
    "ContextualSpec",
    "Feature",
    "FeedbackConfig",
    "HealthConfig",
    "Limits",
    "MapReader",
    "Match",
    "Mirror",
    "Override",
    "PolicySpec",
    "Reader",
    "Retries",
    "RewardSpec",
    "Rewrite",
    "RouteConfig",
    "StateConfig",
    "Sticky",
    "TestSpec",
    "ValidateRequest",
    "ValidateSpec",
    "Webhook",
    "WeightedSpec",
    "format_errors",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_policy",
    "parse_size",
    "policy_backends",
    "read_yaml",
    "validate_main",
]

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)

SUPPORTED_VERSION: Final = 1
WEBHOOK_EVENTS: Final = (
    "validating",
    "progressing",
    "paused",
    "promoted",
    "rolled_back",
    "switched",
    "blessed",
)
RETRY_ON: Final = ("connect-failure", "reset", "timeout", "5xx")

# Names end up in metric labels, URLs (/admin/routes/NAME) and headers: keep them plain.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_ENV_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VERSION_RE: Final = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
_DURATION_RE: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_NULL_TAG: Final = "tag:yaml.org,2002:null"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds every problem, one formatted line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def format_errors(err: ConfigError) -> str:
    """All errors of ``err``, one per line."""
    return "\n".join(err.errors)


# ---- the reader ---------------------------------------------------------------------------------


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


class _Invalid(Exception):
    """Raised by a converter: the message says what was expected and what was got."""


class _Document:
    """One YAML source: its name, the loader that constructs scalars, and the issues found."""

    def __init__(self, source: str, loader: yaml.SafeLoader | None = None) -> None:
        self.source = source
        self.loader = loader if loader is not None else yaml.SafeLoader("")
        self.errors: list[tuple[int | None, str, str]] = []
        self.warnings: list[tuple[int | None, str, str]] = []

    def format(self, line: int | None, path: str, message: str) -> str:
        where = f"{self.source}:{line}" if line is not None else self.source
        return f"{where}: {path}: {message}" if path else f"{where}: {message}"

    def _lines(self, issues: list[tuple[int | None, str, str]]) -> list[str]:
        # Document order reads best; issues without a line keep their order at the end.
        ordered = sorted(issues, key=lambda i: (i[0] is None, i[0] or 0))
        return [self.format(*i) for i in ordered]

    def error_lines(self) -> list[str]:
        return self._lines(self.errors)

    def warning_lines(self) -> list[str]:
        return self._lines([(ln, p, f"warning: {m}") for ln, p, m in self.warnings])

    def raise_if_errors(self) -> None:
        if self.errors:
            raise ConfigError(self.error_lines())


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _describe_node(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a scalar"


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _check_range(
    x: _T,
    value: float,
    *,
    min: float | None = None,
    max: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    show: Callable[[float], str] = _fmt_num,
) -> _T:
    if gt is not None and not value > gt:
        raise _Invalid(f"must be greater than {show(gt)}, got {show(value)}")
    if min is not None and value < min:
        raise _Invalid(f"must be at least {show(min)}, got {show(value)}")
    if lt is not None and not value < lt:
        raise _Invalid(f"must be less than {show(lt)}, got {show(value)}")
    if max is not None and value > max:
        raise _Invalid(f"must be at most {show(max)}, got {show(value)}")
    return x


def _quote_hint(value: object) -> str:
    return " (quote it to make it a string)" if isinstance(value, int | float | bool) else ""


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_describe(value)}{_quote_hint(value)}")
    return value


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_describe(value)}")
    return value


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {_describe(value)}")
    if not math.isfinite(value):
        raise _Invalid(f"must be a finite number, got {_describe(value)}")
    return float(value)


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``5s``, ``1m``, ``1h``, ``1m30s`` or a plain number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = _as_float(value)
    elif isinstance(value, str) and _DURATION_RE.fullmatch(value.strip()):
        seconds = sum(
            float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(value.strip())
        )
    else:
        raise _Invalid(
            f"expected a duration like 250ms, 5s, 1m or 1h (or a number of seconds), "
            f"got {_describe(value)}"
        )
    if seconds < 0:
        raise _Invalid(f"must not be negative, got {_fmt_num(seconds)}s")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``16MiB``, ``64KiB``, ``1MB``, ``512B`` or a plain integer of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None or m.group(2).lower() not in _SIZE_UNITS:
        raise _Invalid(
            "expected a size like 16MiB, 64KiB, 1MB or a number of bytes "
            f"(units B, KB, MB, GB, KiB, MiB, GiB), got {_describe(value)}"
        )
    return round(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def _show_size(n: float) -> str:
    return f"{int(n)} bytes"


def _show_seconds(s: float) -> str:
    return f"{s:g}s"


class Reader:
    """A YAML node with its path in the document; typed accessors record errors, never raise.

    A missing required value is reported against the parent mapping ("missing required key").
    Readers below a value that was already reported as wrong are ``quiet``: they stay silent
    about missing keys, so one mistake gives one line.
    """

    __slots__ = ("_key", "_parent", "doc", "node", "path", "quiet")

    def __init__(
        self,
        node: yaml.Node | None,
        path: builtins.str,
        doc: _Document,
        *,
        parent: Reader | None = None,
        key: builtins.str = "",
        quiet: builtins.bool = False,
    ) -> None:
        self.node = node
        self.path = path
        self.doc = doc
        self._parent = parent
        self._key = key
        self.quiet = quiet

    # -- basics

    @property
    def present(self) -> builtins.bool:
        """Given and not null (an explicit ``null`` means "use the default")."""
        n = self.node
        return n is not None and not (isinstance(n, yaml.ScalarNode) and n.tag == _NULL_TAG)

    @property
    def line(self) -> builtins.int | None:
        if self.node is not None and self.node.start_mark is not None:
            return builtins.int(self.node.start_mark.line) + 1
        return self._parent.line if self._parent is not None else None

    def error(self, message: builtins.str, *, line: builtins.int | None = None) -> None:
        self.doc.errors.append((line if line is not None else self.line, self.path, message))

    def warn(self, message: builtins.str) -> None:
        self.doc.warnings.append((self.line, self.path, message))

    def missing(self) -> None:
        if self.quiet:
            return
        if self._parent is not None and self._key:
            self._parent.error(f"missing required key '{self._key}'")
        else:
            self.error("is required")

    def value(self) -> object:
        """The plain Python value (deep); None when absent or when YAML cannot construct it."""
        if self.node is None:
            return None
        try:
            return self.doc.loader.construct_object(self.node, deep=True)
        except yaml.YAMLError as e:
            self.error(f"cannot read value: {getattr(e, 'problem', None) or e}")
            return None

    def _read(
        self,
        default: object,
        placeholder: object,
        expected: builtins.str,
        convert: Callable[[object], object],
    ) -> object:
        required = isinstance(default, _Required)
        if not self.present:
            if required:
                self.missing()
                return placeholder
            return default
        assert self.node is not None
        if not isinstance(self.node, yaml.ScalarNode):
            self.error(f"expected {expected}, got {_describe_node(self.node)}")
            return placeholder if required else default
        try:
            return convert(self.value())
        except _Invalid as e:
            self.error(builtins.str(e))
            return placeholder if required else default

    # -- typed accessors: each has a required form (no default) and an optional form

    @overload
    def str(
        self, *, pattern: re.Pattern[builtins.str] | None = ..., what: builtins.str = ...
    ) -> builtins.str: ...
    @overload
    def str(
        self,
        default: _T,
        *,
        pattern: re.Pattern[builtins.str] | None = ...,
        what: builtins.str = ...,
    ) -> builtins.str | _T: ...
    def str(
        self,
        default: object = REQUIRED,
        *,
        pattern: re.Pattern[builtins.str] | None = None,
        what: builtins.str = "",
    ) -> object:
        """A string; with ``pattern`` it must match fully (``what`` names the expected form)."""

        def convert(v: object) -> builtins.str:
            s = _as_str(v)
            if pattern is not None and not pattern.fullmatch(s):
                raise _Invalid(
                    f"expected {what or 'a string matching ' + pattern.pattern}, got {s!r}"
                )
            return s

        return self._read(default, "", "a string", convert)

    def name(self, what: builtins.str) -> builtins.str:
        """A required name (backend, route, arm, feature): letters, digits, '_', '.', '-'."""
        return self.str(
            pattern=_NAME_RE,
            what=f"a {what} of letters, digits, '_', '.' and '-' (at most 64, starting with a "
            "letter or digit)",
        )

    @overload
    def choice(self, choices: Sequence[_S]) -> _S: ...
    @overload
    def choice(self, choices: Sequence[_S], default: _S) -> _S: ...
    @overload
    def choice(self, choices: Sequence[_S], default: None) -> _S | None: ...
    def choice(self, choices: Sequence[_S], default: object = REQUIRED) -> object:
        """One of ``choices``; the error lists them (and suggests the closest)."""

        def convert(v: object) -> _S:
            s = v if isinstance(v, builtins.str) else None
            for c in choices:
                if c == s:
                    return c
            hint = ""
            if s is not None:
                close = difflib.get_close_matches(s, list(choices), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _Invalid(f"must be one of {', '.join(choices)}; got {_describe(v)}{hint}")

        if (
            not self.present
            and isinstance(default, _Required)
            and not self.quiet
            and self._parent is not None
            and self._key
        ):
            self._parent.error(f"missing required key '{self._key}'; one of: {', '.join(choices)}")
            return choices[0]
        return self._read(default, choices[0], "one of " + ", ".join(choices), convert)

    def choice_required(self, choices: Sequence[_S]) -> _S | None:
        """A required choice that other checks depend on: None when missing or invalid."""
        if not self.present:
            self.missing_choice(choices)
            return None
        return self.choice(choices, None)

    def missing_choice(self, choices: Sequence[_S]) -> None:
        if self.quiet:
            return
        if self._parent is not None and self._key:
            self._parent.error(f"missing required key '{self._key}'; one of: {', '.join(choices)}")
        else:
            self.error(f"is required; one of: {', '.join(choices)}")

    @overload
    def bool(self) -> builtins.bool: ...
    @overload
    def bool(self, default: _T) -> builtins.bool | _T: ...
    def bool(self, default: object = REQUIRED) -> object:
        def convert(v: object) -> builtins.bool:
            if not isinstance(v, builtins.bool):
                raise _Invalid(f"expected true or false, got {_describe(v)}")
            return v

        return self._read(default, False, "true or false", convert)

    @overload
    def int(
        self, *, min: builtins.int | None = ..., max: builtins.int | None = ...
    ) -> builtins.int: ...
    @overload
    def int(
        self, default: _T, *, min: builtins.int | None = ..., max: builtins.int | None = ...
    ) -> builtins.int | _T: ...
    def int(
        self,
        default: object = REQUIRED,
        *,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> object:
        def convert(v: object) -> builtins.int:
            i = _as_int(v)
            return _check_range(i, i, min=min, max=max)

        return self._read(default, min if min is not None else 0, "an integer", convert)

    @overload
    def float(
        self,
        *,
        min: builtins.float | None = ...,
        max: builtins.float | None = ...,
        gt: builtins.float | None = ...,
        lt: builtins.float | None = ...,
    ) -> builtins.float: ...
    @overload
    def float(
        self,
        default: _T,
        *,
        min: builtins.float | None = ...,
        max: builtins.float | None = ...,
        gt: builtins.float | None = ...,
        lt: builtins.float | None = ...,
    ) -> builtins.float | _T: ...
    def float(
        self,
        default: object = REQUIRED,
        *,
        min: builtins.float | None = None,
        max: builtins.float | None = None,
        gt: builtins.float | None = None,
        lt: builtins.float | None = None,
    ) -> object:
        """A number (integers accepted); ``min``/``max`` inclusive, ``gt``/``lt`` exclusive."""

        def convert(v: object) -> builtins.float:
            x = _as_float(v)
            return _check_range(x, x, min=min, max=max, gt=gt, lt=lt)

        return self._read(default, 0.0, "a number", convert)

    @overload
    def duration(self, *, allow_zero: builtins.bool = ...) -> builtins.float: ...
    @overload
    def duration(self, default: _T, *, allow_zero: builtins.bool = ...) -> builtins.float | _T: ...
    def duration(self, default: object = REQUIRED, *, allow_zero: builtins.bool = False) -> object:
        """Seconds from ``250ms``/``5s``/``1m``/``1h`` or a number; zero only if allowed."""

        def convert(v: object) -> builtins.float:
            s = parse_duration(v)
            if not allow_zero:
                _check_range(s, s, gt=0, show=_show_seconds)
            return s

        return self._read(default, 1.0, "a duration", convert)

    @overload
    def size(self) -> builtins.int: ...
    @overload
    def size(self, default: _T) -> builtins.int | _T: ...
    def size(self, default: object = REQUIRED) -> object:
        """Bytes from ``16MiB``/``64KiB``/``1MB`` or an integer; at least 1."""

        def convert(v: object) -> builtins.int:
            n = parse_size(v)
            return _check_range(n, n, min=1, show=_show_size)

        return self._read(default, 1, "a size", convert)

    # -- containers

    def mapping(
        self, allowed: Sequence[builtins.str] | None = None, *, required: builtins.bool = False
    ) -> MapReader:
        """The mapping here (empty when absent); unknown keys are errors when ``allowed`` is set."""
        if not self.present:
            if required:
                self.missing()
            # An absent section has no keys to complain about: keep its children quiet.
            return MapReader(self, {}, quiet=True)
        node = self.node
        if not isinstance(node, yaml.MappingNode):
            assert node is not None
            self.error(f"expected a mapping, got {self._got(node)}")
            return MapReader(self, {}, quiet=True)
        seen: set[builtins.str] = set()
        for knode, _ in node.value:
            kline = builtins.int(knode.start_mark.line) + 1 if knode.start_mark else None
            if not isinstance(knode, yaml.ScalarNode):
                self.error("keys must be plain names, got a collection", line=kline)
                continue
            if knode.tag != _MERGE_TAG and knode.value in seen:
                self.error(f"duplicate key '{knode.value}'", line=kline)
            seen.add(knode.value)
        try:
            self.doc.loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        except yaml.YAMLError as e:
            self.error(f"cannot merge: {getattr(e, 'problem', None) or e}")
            return MapReader(self, {}, quiet=True)
        entries: dict[builtins.str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            # Keys are names as written: YAML 1.1 would turn the SPEC's `on:` into true.
            # Merged keys come first, so the mapping's own keys override them.
            if isinstance(knode, yaml.ScalarNode):
                entries[knode.value] = (knode, vnode)
        m = MapReader(self, entries, quiet=self.quiet)
        if allowed is not None:
            m.restrict(allowed)
        return m

    def list(
        self, *, required: builtins.bool = False, min_len: builtins.int = 0
    ) -> builtins.list[Reader]:
        """The items of the list here (empty when absent or not a list)."""
        if not self.present:
            if required:
                self.missing()
            return []
        node = self.node
        if not isinstance(node, yaml.SequenceNode):
            assert node is not None
            self.error(f"expected a list, got {self._got(node)}")
            return []
        items = [
            Reader(n, f"{self.path}[{i}]", self.doc, parent=self, quiet=self.quiet)
            for i, n in enumerate(node.value)
        ]
        if len(items) < min_len:
            self.error(
                f"must have at least {min_len} item{'s' if min_len > 1 else ''}, got {len(items)}"
            )
        return items

    def _got(self, node: yaml.Node) -> builtins.str:
        if isinstance(node, yaml.ScalarNode):
            v = self.value()
            return _describe(v)
        return _describe_node(node)


class MapReader:
    """A YAML mapping: ``m["key"]`` gives the child Reader (absent keys give an empty one)."""

    __slots__ = ("_entries", "_suggested", "_unknown", "quiet", "reader")

    def __init__(
        self, reader: Reader, entries: dict[str, tuple[yaml.Node, yaml.Node]], *, quiet: bool
    ) -> None:
        self.reader = reader
        self._entries = entries
        self.quiet = quiet
        # keys offered as "did you mean": already reported, so not also "missing"
        self._suggested: set[str] = set()
        self._unknown = False

    @property
    def path(self) -> str:
        return self.reader.path

    @property
    def line(self) -> int | None:
        return self.reader.line

    def error(self, message: str) -> None:
        self.reader.error(message)

    def __getitem__(self, key: str) -> Reader:
        entry = self._entries.get(key)
        return Reader(
            entry[1] if entry else None,
            _join(self.path, key),
            self.reader.doc,
            parent=self.reader,
            key=key,
            quiet=self.quiet or key in self._suggested,
        )

    def __contains__(self, key: str) -> bool:
        return self[key].present

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, Reader]]:
        return [(k, self[k]) for k in self._entries]

    def key_reader(self, key: str) -> Reader:
        """A Reader positioned on the key itself (for errors about the key, e.g. a bad name)."""
        knode = self._entries[key][0]
        return Reader(knode, _join(self.path, key), self.reader.doc, parent=self.reader)

    def restrict(self, allowed: Sequence[str], *, context: str = "") -> None:
        """Report every key not in ``allowed``, listing the allowed keys."""
        for key, (knode, _) in self._entries.items():
            if key in allowed:
                continue
            self._unknown = True
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            self._suggested.update(close)
            where = f" ({context})" if context else ""
            listed = ", ".join(allowed) if allowed else "(none)"
            line = int(knode.start_mark.line) + 1 if knode.start_mark else None
            self.reader.error(f"unknown key '{key}'; allowed: {listed}{where}{hint}", line=line)

    def exactly_one(self, choices: Sequence[str]) -> str | None:
        """The one key of ``choices`` present here, or None after reporting none/several."""
        found = [k for k in choices if k in self._entries]
        if not found and self._unknown:
            return None  # the unknown key was reported already
        if len(found) != 1:
            got = f"got {', '.join(found)}" if found else "got none"
            self.error(f"must have exactly one of {', '.join(choices)}; {got}")
            return None
        return found[0]


def _represent(data: object) -> yaml.Node:
    try:
        return yaml.SafeDumper(io.StringIO()).represent_data(data)
    except yaml.YAMLError as e:
        raise ConfigError([f"cannot read policy data: {e}"]) from None


def read_yaml(text: str, source: str = "<string>") -> Reader:
    """The root Reader of one YAML document; ConfigError on a syntax error or an empty document."""
    loader = yaml.SafeLoader(text)
    doc = _Document(source, loader)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = ", ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        if mark is not None:
            raise ConfigError(
                [
                    f"{source}:{mark.line + 1}: YAML syntax error: {problem} "
                    f"(line {mark.line + 1}, column {mark.column + 1})"
                ]
            ) from None
        raise ConfigError([f"{source}: YAML syntax error: {problem}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{source}: YAML error: {e}"]) from None
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError(
            [f"{source}: the file is empty; expected a mapping with backends and routes"]
        )
    return Reader(node, "", doc)


# ---- small value parsers -----------------------------------------------------------------------


def _address(r: Reader, default: Address) -> Address:
    if not r.present:
        return default
    v = r.value()
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535:
        return Address("0.0.0.0", v)
    s = r.str(None)
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


def _split_url(r: Reader, s: str) -> _Url | None:
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


def _http_url(r: Reader) -> str | None:
    """A required http(s):// URL (webhooks, Prometheus)."""
    s = r.str()
    parts = _split_url(r, s) if s else None
    if parts is None:
        return None
    if parts.scheme not in ("http", "https") or not parts.host:
        r.error(f"expected an http:// or https:// URL, got {s!r}")
        return None
    return s


def _backend(name: str, m: MapReader) -> BackendConfig:
    url_r = m["url"]
    url = url_r.str()
    host, port, base = "", 80, ""
    parts = _split_url(url_r, url) if url else None
    if parts is None:
        pass
    elif parts.scheme == "https":
        url_r.error(
            f"https upstreams are not supported yet (no TLS to backends); use http:// or a "
            f"local TLS sidecar, got {url!r}"
        )
    elif parts.scheme != "http" or not parts.host:
        url_r.error(f"expected http://host:port[/base], got {url!r}")
    elif parts.extra:
        url_r.error(f"must be http://host:port[/base] without user, query or fragment, got {url!r}")
    elif parts.port == 0:
        url_r.error(f"port must be 1-65535, got 0 in {url!r}")
    else:
        host, port, base = parts.host, parts.port or 80, parts.path.rstrip("/")
    version = _version(m["version"])
    health = None
    if m["health"].present:
        h = m["health"].mapping(("path", "interval"))
        health = HealthConfig(_abs_path(h["path"]), h["interval"].duration(5.0))
    rewrite = None
    if m["rewrite"].present:
        w = m["rewrite"].mapping(("from", "to"))
        rewrite = Rewrite(_abs_path(w["from"]), _abs_path(w["to"]))
    return BackendConfig(
        name=name,
        url=url,
        scheme="http",
        host=host,
        port=port,
        base_path=base,
        version=version,
        timeout=m["timeout"].duration(30.0),
        health=health,
        rewrite=rewrite,
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
    s = r.str(None)
    if s is not None and not _VERSION_RE.fullmatch(s):
        r.error(
            f"expected MAJOR.MINOR.PIPELINE (three non-negative integers, e.g. 1.0.0), got {s!r}"
        )
        return None
    return s


def _abs_path(r: Reader) -> str:
    return r.str(pattern=re.compile(r"/\S*"), what="a path starting with '/'")


def _header_name(r: Reader) -> str:
    return r.str(pattern=_TOKEN_RE, what="an HTTP header name").lower()


def _source_ref(r: Reader, sources: Sequence[_S], example: str) -> tuple[_S, str]:
    """``SOURCE:NAME`` (``header:x-user-id``, ``json:/a/0``) -> (source, name)."""
    s = r.str()
    kind, sep, key = s.partition(":")
    for src in sources:
        if sep and kind == src and key:
            if src == "json" and not key.startswith("/"):
                r.error(
                    f"a JSON pointer must start with '/', got {key!r} (e.g. json:/instances/0/age)"
                )
            elif src == "header" and not _TOKEN_RE.fullmatch(key):
                r.error(f"invalid header name {key!r}")
            return src, key.lower() if src == "header" else key
    if s:
        r.error(f"expected {' | '.join(x + ':NAME' for x in sources)} (e.g. {example}), got {s!r}")
    return sources[0], ""


# ---- backend references ------------------------------------------------------------------------


class _Refs:
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
        return self.check(r, r.str())


# ---- policies ----------------------------------------------------------------------------------

_REWARD_TYPES: Final[tuple[Literal["binary", "continuous"], ...]] = ("binary", "continuous")
_REWARD_FROM: Final[tuple[Literal["feedback", "response"], ...]] = ("feedback", "response")
_GATES: Final[tuple[Literal["auto", "manual"], ...]] = ("auto", "manual")
_COMPARE: Final[tuple[Literal["sequential", "none"], ...]] = ("sequential", "none")
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
_BANDIT_ALGOS: Final[
    tuple[Literal["thompson", "ucb1", "kl_ucb", "epsilon_greedy", "softmax"], ...]
] = ("thompson", "ucb1", "kl_ucb", "epsilon_greedy", "softmax")
_CONTEXTUAL_ALGOS: Final[tuple[Literal["linucb", "lin_ts", "epsilon_greedy"], ...]] = (
    "linucb",
    "lin_ts",
    "epsilon_greedy",
)
_CHECK_METRICS: Final[tuple[CheckMetric, ...]] = (
    "error_rate",
    "latency_p99",
    "reward_mean",
    "prometheus",
)
_CHECK_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "error_rate": ("metric", "max"),
    "latency_p99": ("metric", "max"),
    "reward_mean": ("metric", "min", "min_relative_to_stable", "max_relative_to_stable"),
    "prometheus": ("metric", "query", "url", "min", "max"),
}
_FEATURE_SOURCES: Final[tuple[Literal["header", "cookie", "query", "json"], ...]] = (
    "header",
    "cookie",
    "query",
    "json",
)
_FEATURE_TYPES: Final[tuple[Literal["categorical", "numeric"], ...]] = ("categorical", "numeric")
_FEATURE_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "categorical": ("name", "from", "type", "values"),
    "numeric": ("name", "from", "type", "scale", "default"),
}
_STICKY_SOURCES: Final[tuple[StickySource, ...]] = ("header", "cookie", "query")
_OVERRIDE_KINDS: Final[tuple[OverrideKind, ...]] = (
    "header",
    "header_prefix",
    "header_regex",
    "cookie",
)


class _Bound(NamedTuple):
    min: float | None = None
    gt: float | None = None
    max: float | None = None


_POSITIVE: Final = _Bound(gt=0.0)
_NONNEG: Final = _Bound(min=0.0)
_UNIT: Final = _Bound(min=0.0, max=1.0)

# Allowed params per algorithm (thompson depends on the reward type).
_BANDIT_PARAMS: Final[dict[str, dict[str, _Bound]]] = {
    "thompson/binary": {"prior_alpha": _POSITIVE, "prior_beta": _POSITIVE},
    "thompson/continuous": {},
    "ucb1": {"c": _NONNEG},
    "kl_ucb": {"c": _NONNEG},
    "epsilon_greedy": {"epsilon": _UNIT, "decay": _NONNEG},
    "softmax": {"temperature": _POSITIVE},
}
_CONTEXTUAL_PARAMS: Final[dict[str, dict[str, _Bound]]] = {
    "linucb": {"alpha": _NONNEG, "lambda": _POSITIVE},
    "lin_ts": {"alpha": _POSITIVE, "lambda": _POSITIVE},
    "epsilon_greedy": {"epsilon": _UNIT, "lambda": _POSITIVE},
}


def _params(r: Reader, allowed: dict[str, _Bound], context: str) -> dict[str, float]:
    m = r.mapping()
    m.restrict(tuple(allowed), context=context)
    out: dict[str, float] = {}
    for key, bound in allowed.items():
        v = m[key].float(None, min=bound.min, gt=bound.gt, max=bound.max)
        if v is not None:
            out[key] = v
    return out


def _reward(r: Reader) -> RewardSpec:
    if not r.present:
        return RewardSpec()
    m = r.mapping(("type", "from", "max_status", "max_latency"))
    source = m["from"].choice(_REWARD_FROM, "feedback")
    if source == "feedback":
        for key in ("max_status", "max_latency"):
            if key in m:
                m[key].error("only applies with from: response")
    return RewardSpec(
        type=m["type"].choice(_REWARD_TYPES, "binary"),
        source=source,
        max_status=m["max_status"].int(500, min=100, max=600),
        max_latency=m["max_latency"].duration(None),
    )


def _weights(r: Reader, refs: _Refs, *, what: str, keys_are_backends: bool) -> dict[str, float]:
    """A name -> non-negative weight mapping, not all zero."""
    m = r.mapping(required=True)
    out: dict[str, float] = {}
    for key, vr in m.items():
        if keys_are_backends:
            refs.check(m.key_reader(key), key)
        out[key] = vr.float(min=0)
    if r.present and not m.quiet:
        if not out:
            r.error(f"must name at least one {what}")
        elif all(w == 0 for w in out.values()) and all(w >= 0 for w in out.values()):
            r.error("weights must not all be zero")
    return out


def _arms(r: Reader, refs: _Refs) -> tuple[str, ...]:
    """A list of at least two distinct arm (backend) names."""
    arms: list[str] = []
    for item in r.list(required=True, min_len=2):
        name = item.str()
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
    for item in m["requests"].list():
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
            if not _TOKEN_RE.fullmatch(hname):
                q["headers"].error(f"invalid header name {hname!r}")
            headers.append((hname, hr.str()))
        method = q["method"].str(
            "POST" if body is not None else "GET", pattern=_TOKEN_RE, what="an HTTP method"
        )
        requests.append(
            ValidateRequest(
                method=method.upper(),
                path=_abs_path(q["path"]),
                body=body,
                headers=tuple(headers),
                expect_status=q["expect_status"].int(200, min=100, max=599),
            )
        )
    return ValidateSpec(
        requests=tuple(requests),
        timeout=m["timeout"].duration(5.0),
        attempts=m["attempts"].int(3, min=1, max=100),
    )


def _check(r: Reader) -> Check:
    m = r.mapping(required=True)
    metric = m["metric"].choice_required(_CHECK_METRICS)
    if metric is None:
        return Check("error_rate")
    m.restrict(_CHECK_KEYS[metric], context=f"metric {metric}")
    if metric == "error_rate":
        return Check(metric, max=m["max"].float(min=0, max=1))
    if metric == "latency_p99":
        return Check(metric, max=m["max"].duration())
    if metric == "reward_mean":
        check = Check(
            metric,
            min=m["min"].float(None),
            min_relative_to_stable=m["min_relative_to_stable"].float(None, gt=0),
            max_relative_to_stable=m["max_relative_to_stable"].float(None, gt=0),
        )
        if (
            check.min is None
            and check.min_relative_to_stable is None
            and (check.max_relative_to_stable is None)
            and not any(k in m for k in _CHECK_KEYS[metric][1:])
        ):
            m.error("needs min, min_relative_to_stable or max_relative_to_stable")
        return check
    query = m["query"].str()
    url = _http_url(m["url"])
    lo, hi = m["min"].float(None), m["max"].float(None)
    if "min" not in m and "max" not in m:
        m.error("needs min and/or max")
    elif lo is not None and hi is not None and lo > hi:
        m.error(f"min {lo:g} is greater than max {hi:g}")
    return Check(metric, min=lo, max=hi, query=query, url=url)


def _analysis(r: Reader) -> AnalysisSpec:
    m = r.mapping(("min_requests", "failure_limit", "checks", "compare", "alpha"))
    return AnalysisSpec(
        min_requests=m["min_requests"].int(100, min=1),
        failure_limit=m["failure_limit"].int(2, min=1),
        checks=tuple(_check(c) for c in m["checks"].list()),
        compare=m["compare"].choice(_COMPARE, "none"),
        alpha=m["alpha"].float(0.05, gt=0, max=0.5),
    )


def _webhooks(r: Reader) -> tuple[Webhook, ...]:
    hooks = []
    for item in r.list():
        m = item.mapping(("on", "url"), required=True)
        on = frozenset(e.choice(WEBHOOK_EVENTS) for e in m["on"].list(min_len=1))
        url = _http_url(m["url"]) or ""
        hooks.append(Webhook(url=url, on=on if "on" in m else frozenset(WEBHOOK_EVENTS)))
    return tuple(hooks)


def _differ(r: Reader, value: str, other_key: str, other: str) -> None:
    if value and value == other:
        r.error(f"must differ from {other_key} ('{other}')")


def _weighted(m: MapReader, refs: _Refs) -> WeightedSpec:
    return WeightedSpec(
        weights=_weights(m["weights"], refs, what="backend", keys_are_backends=True)
    )


def _blue_green(m: MapReader, refs: _Refs) -> BlueGreenSpec:
    active = refs.backend(m["active"])
    preview = refs.backend(m["preview"])
    _differ(m["preview"], preview, "active", active)
    analysis = _analysis(m["analysis"]) if m["analysis"].present else None
    validate = _validate(m["validate"])
    auto_switch = m["auto_switch"].bool(False)
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
    for item in r.list(required=True, min_len=1):
        s = item.float(None, gt=0, max=100)
        if s is None:
            continue
        if steps and s <= steps[-1]:
            item.error(f"must be greater than {steps[-1]:g}, got {s:g} (steps strictly increase)")
            continue
        steps.append(s)
    return tuple(steps)


def _canary(m: MapReader, refs: _Refs) -> CanarySpec:
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


def _ab_test(m: MapReader, refs: _Refs) -> ABTestSpec:
    arms_m = m["arms"].mapping(required=True)
    arms: dict[str, str] = {}
    for arm, br in arms_m.items():
        if not _NAME_RE.fullmatch(arm):
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
    t = m["test"].mapping(("method", "alpha", "min_samples", "tau"))
    test = TestSpec(
        method=t["method"].choice(_TESTS, "msprt"),
        alpha=t["alpha"].float(0.05, gt=0, max=0.5),
        min_samples=t["min_samples"].int(1000, min=1),
        tau=t["tau"].float(None, gt=0),
    )
    return ABTestSpec(
        arms=arms,
        split=split,
        reward=_reward(m["reward"]),
        test=test,
        conclude=m["conclude"].choice(_CONCLUDE, "none"),
    )


def _bandit(m: MapReader, refs: _Refs) -> BanditSpec:
    arms = _arms(m["arms"], refs)
    algorithm = m["algorithm"].choice(_BANDIT_ALGOS, "thompson")
    reward = _reward(m["reward"])
    key = f"thompson/{reward.type}" if algorithm == "thompson" else algorithm
    context = f"algorithm {algorithm}" + (
        f" with {reward.type} reward" if algorithm == "thompson" else ""
    )
    params = _params(m["params"], _BANDIT_PARAMS[key], context)
    limit = 1.0 / len(arms) if arms else 1.0
    min_share = m["min_share"].float(0.0, min=0)
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
        discount=m["discount"].float(1.0, gt=0, max=1),
    )


def _feature(r: Reader) -> Feature:
    m = r.mapping(required=True)
    ftype = m["type"].choice_required(_FEATURE_TYPES)
    if ftype is not None:
        m.restrict(_FEATURE_KEYS[ftype], context=f"type {ftype}")
    name = m["name"].name("feature name")
    source, key = _source_ref(
        m["from"], _FEATURE_SOURCES, "header:x-climate or json:/instances/0/age"
    )
    values: list[str] = []
    if ftype == "categorical":
        for v in m["values"].list(required=True, min_len=1):
            s = v.str()
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
        scale=m["scale"].float(1.0),
        default=m["default"].float(0.0),
    )


def _contextual(m: MapReader, refs: _Refs) -> ContextualSpec:
    arms = _arms(m["arms"], refs)
    algorithm = m["algorithm"].choice(_CONTEXTUAL_ALGOS, "linucb")
    params = _params(m["params"], _CONTEXTUAL_PARAMS[algorithm], f"algorithm {algorithm}")
    features: list[Feature] = []
    names: set[str] = set()
    for item in m["features"].list(required=True, min_len=1):
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
    "ab_test": ("kind", "arms", "split", "reward", "test", "conclude"),
    "bandit": ("kind", "arms", "algorithm", "reward", "params", "min_share", "discount"),
    "contextual_bandit": ("kind", "arms", "algorithm", "params", "features", "reward"),
}
_POLICY_PARSERS: Final[dict[str, Callable[[MapReader, _Refs], PolicySpec]]] = {
    "weighted": _weighted,
    "blue_green": _blue_green,
    "canary": _canary,
    "ab_test": _ab_test,
    "bandit": _bandit,
    "contextual_bandit": _contextual,
}


def _policy(r: Reader, refs: _Refs) -> PolicySpec:
    m = r.mapping(required=True)
    if m.quiet:
        return WeightedSpec(weights={})
    kind = m["kind"].choice_required(POLICY_KINDS)
    if kind is None:
        return WeightedSpec(weights={})
    m.restrict(_POLICY_KEYS[kind], context=f"kind {kind}")
    return _POLICY_PARSERS[kind](m, refs)


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
        doc = _Document(source)
        reader = Reader(node, path, doc)
    spec = _policy(reader, _Refs(backends))
    doc.raise_if_errors()
    return spec


# ---- routes ------------------------------------------------------------------------------------


def _match(r: Reader) -> Match:
    if not r.present:
        return Match()
    m = r.mapping(("path_prefix", "methods"))
    prefix = m["path_prefix"].str("/", pattern=re.compile(r"/\S*"), what="a path starting with '/'")
    methods: frozenset[str] | None = None
    if m["methods"].present:
        names = [
            x.str(pattern=_TOKEN_RE, what="an HTTP method").upper() for x in m["methods"].list()
        ]
        if not names and not m["methods"].quiet:
            m["methods"].error("must not be empty; omit methods to match every method")
        methods = frozenset(n for n in names if n)
    return Match(path_prefix=prefix, methods=methods)


def _override(r: Reader, refs: _Refs) -> Override:
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
                value = vr.str()
                if kind != "cookie":
                    if not _TOKEN_RE.fullmatch(name):
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
    source, name = _source_ref(m["key"], _STICKY_SOURCES, "header:x-user-id")
    return Sticky(source=source, name=name)


def _retries(r: Reader) -> Retries:
    if not r.present:
        return Retries()
    m = r.mapping(("attempts", "on"))
    on = (
        frozenset(x.choice(RETRY_ON) for x in m["on"].list(min_len=1))
        if "on" in m
        else Retries().on
    )
    return Retries(attempts=m["attempts"].int(0, min=0, max=5), on=on)


def _mirror(r: Reader, refs: _Refs) -> Mirror | None:
    if not r.present:
        return None
    m = r.mapping(("backend", "percent"))
    return Mirror(
        backend=refs.backend(m["backend"]), percent=m["percent"].float(100.0, min=0, max=100)
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
        path=m["path"].str(pattern=re.compile(r"\S+"), what="a file path"),
        sample_rate=m["sample_rate"].float(d.sample_rate, gt=0, max=1),
        rotate_size=m["rotate_size"].size(d.rotate_size),
        rotate_interval=m["rotate_interval"].duration(d.rotate_interval),
        retention=m["retention"].duration(d.retention),
        queue=m["queue"].int(d.queue, min=1),
    )


def _warm_start(r: Reader, policy: PolicySpec) -> str | None:
    if not r.present:
        return None
    path = r.str(pattern=re.compile(r"\S+"), what="a file path")
    if policy.kind not in ("bandit", "contextual_bandit"):
        r.error(f"a {policy.kind} route does not learn; warm_start needs a bandit")
    return path


def _route(r: Reader, refs: _Refs) -> RouteConfig:
    m = r.mapping(_ROUTE_KEYS, required=True)
    policy = _policy(m["policy"], refs)
    return RouteConfig(
        name=m["name"].name("route name"),
        match=_match(m["match"]),
        policy=policy,
        decision_log=_decision_log(m["decision_log"], policy),
        warm_start=_warm_start(m["warm_start"], policy),
        overrides=tuple(_override(o, refs) for o in m["overrides"].list()),
        sticky=_sticky(m["sticky"]),
        retries=_retries(m["retries"]),
        timeout=m["timeout"].duration(None),
        mirror=_mirror(m["mirror"], refs),
    )


def _routes(r: Reader, refs: _Refs) -> tuple[RouteConfig, ...]:
    items = r.list(required=True, min_len=1)
    routes: list[RouteConfig] = []
    seen: dict[str, int] = {}
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
        for j, earlier in enumerate(routes):
            same = earlier.match.path_prefix == route.match.path_prefix
            a, b = earlier.match.methods, route.match.methods
            if same and (a is None or b is None or a & b):
                item.mapping()["match"].warn(
                    f"same path_prefix {route.match.path_prefix!r} and overlapping methods as "
                    f"routes[{j}] ('{earlier.name}'), which matches first"
                )
                break
        routes.append(route)
    return tuple(routes)


# ---- top level ---------------------------------------------------------------------------------

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
_STORES: Final[tuple[Literal["sqlite", "redis", "memory"], ...]] = ("sqlite", "redis", "memory")


def _state(r: Reader) -> StateConfig:
    m = r.mapping(("store", "path", "url"))
    store = m["store"].choice(_STORES, "sqlite")
    url = m["url"].str(
        None, pattern=re.compile(r"(redis|rediss|unix)://\S+"), what="a redis:// URL"
    )
    if store == "redis" and url is None and "url" not in m and not m.quiet:
        m.error("store: redis needs url (e.g. redis://127.0.0.1:6379/0)")
    return StateConfig(store=store, path=m["path"].str("modelrouter.db"), url=url)


def _config(root: Reader) -> Config:
    if not isinstance(root.node, yaml.MappingNode):
        assert root.node is not None
        root.error(
            f"the top level must be a mapping with backends and routes, got {root._got(root.node)}"
        )
        return Config(backends={}, routes=(), source=root.doc.source)
    m = root.mapping(_TOP_KEYS)
    version = m["version"].int(SUPPORTED_VERSION)
    if version != SUPPORTED_VERSION:
        m["version"].error(
            f"unsupported config version {version}; this modelrouter reads version 1"
        )

    a = m["admin"].mapping(("listen", "token_env"))
    admin = AdminConfig(
        listen=_address(a["listen"], AdminConfig().listen),
        token_env=a["token_env"].str(
            AdminConfig().token_env, pattern=_ENV_RE, what="an environment variable name"
        ),
    )
    lm = m["limits"].mapping(("max_body", "max_header", "max_pending", "trusted_hops"))
    d = Limits()
    limits = Limits(
        max_body=lm["max_body"].size(d.max_body),
        max_header=lm["max_header"].size(d.max_header),
        max_pending=lm["max_pending"].int(d.max_pending, min=1),
        trusted_hops=lm["trusted_hops"].int(d.trusted_hops, min=0, max=16),
    )
    fm = m["feedback"].mapping(("secret_env", "ttl", "missing_reward"))
    fd = FeedbackConfig()
    feedback = FeedbackConfig(
        secret_env=fm["secret_env"].str(
            fd.secret_env, pattern=_ENV_RE, what="an environment variable name"
        ),
        ttl=fm["ttl"].duration(fd.ttl),
        missing_reward=fm["missing_reward"].float(None),
    )

    bm = m["backends"].mapping(required=True)
    backends: dict[str, BackendConfig] = {}
    for name, br in bm.items():
        if not _NAME_RE.fullmatch(name):
            bm.key_reader(name).error(
                f"invalid backend name {name!r}: use letters, digits, '_', '.', '-' "
                "(at most 64, starting with a letter or digit)"
            )
        bmap = br.mapping(("url", "version", "timeout", "health", "rewrite"), required=True)
        backends[name] = _backend(name, bmap)
    if m["backends"].present and not bm.quiet and not backends:
        m["backends"].error("must define at least one backend")
    # With no usable backends section, every reference would be a second error for one mistake.
    refs = _Refs(backends if m["backends"].present and not bm.quiet else None)

    return Config(
        backends=backends,
        routes=_routes(m["routes"], refs),
        version=version,
        listen=_address(m["listen"], _DEFAULT_LISTEN),
        admin=admin,
        state=_state(m["state"]),
        limits=limits,
        feedback=feedback,
        source=root.doc.source,
    )


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate YAML text; ConfigError lists every problem. ``source`` names it in messages."""
    root = read_yaml(text, source)
    cfg = _config(root)
    root.doc.raise_if_errors()
    return replace(cfg, warnings=tuple(root.doc.warning_lines()))


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; ConfigError (never OSError) when it cannot be used."""
    source = str(path)
    try:
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
    for line in cfg.warnings:
        print(line, file=sys.stderr)
    n_b, n_r = len(cfg.backends), len(cfg.routes)
    routes = ", ".join(f"{r.name}: {r.policy.kind}" for r in cfg.routes)
    print(
        f"OK: {path}: {n_b} backend{'s' if n_b != 1 else ''}, "
        f"{n_r} route{'s' if n_r != 1 else ''} ({routes})"
    )
    return 0
