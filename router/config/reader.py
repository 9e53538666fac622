"""The YAML reader: typed accessors that record every problem with its line and path.

Errors read ``FILE:LINE: yaml.path[2].key: message`` (``FILE: yaml.path: message`` when no line
is known); a misspelt key or choice gets a "did you mean". Accessors are named for the value
they read (``string``, ``integer``, ``number``, ``boolean``, ``sequence``, ``mapping``...).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Final, TypeVar, overload

import yaml

from router.errors import ModelrouterError

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
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


class ConfigError(ModelrouterError):
    """The configuration is invalid; ``errors`` holds every problem, one formatted line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


class _Invalid(Exception):
    """Raised by a converter: the message says what was expected and what was got."""


class Document:
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
        path: str,
        doc: Document,
        *,
        parent: Reader | None = None,
        key: str = "",
        quiet: bool = False,
    ) -> None:
        self.node = node
        self.path = path
        self.doc = doc
        self._parent = parent
        self._key = key
        self.quiet = quiet

    # -- basics

    @property
    def present(self) -> bool:
        """Given and not null (an explicit ``null`` means "use the default")."""
        n = self.node
        return n is not None and not (isinstance(n, yaml.ScalarNode) and n.tag == _NULL_TAG)

    @property
    def line(self) -> int | None:
        if self.node is not None and self.node.start_mark is not None:
            return int(self.node.start_mark.line) + 1
        return self._parent.line if self._parent is not None else None

    def error(self, message: str, *, line: int | None = None) -> None:
        self.doc.errors.append((line if line is not None else self.line, self.path, message))

    def warn(self, message: str) -> None:
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
        expected: str,
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
            self.error(str(e))
            return placeholder if required else default

    # -- typed accessors: each has a required form (no default) and an optional form

    @overload
    def string(self, *, pattern: re.Pattern[str] | None = ..., what: str = ...) -> str: ...
    @overload
    def string(
        self,
        default: _T,
        *,
        pattern: re.Pattern[str] | None = ...,
        what: str = ...,
    ) -> str | _T: ...
    def string(
        self,
        default: object = REQUIRED,
        *,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> object:
        """A string; with ``pattern`` it must match fully (``what`` names the expected form)."""

        def convert(v: object) -> str:
            s = _as_str(v)
            if pattern is not None and not pattern.fullmatch(s):
                raise _Invalid(
                    f"expected {what or 'a string matching ' + pattern.pattern}, got {s!r}"
                )
            return s

        return self._read(default, "", "a string", convert)

    def name(self, what: str) -> str:
        """A required name (backend, route, arm, feature): letters, digits, '_', '.', '-'."""
        return self.string(
            pattern=NAME_RE,
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
            s = v if isinstance(v, str) else None
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
    def boolean(self) -> bool: ...
    @overload
    def boolean(self, default: _T) -> bool | _T: ...
    def boolean(self, default: object = REQUIRED) -> object:
        def convert(v: object) -> bool:
            if not isinstance(v, bool):
                raise _Invalid(f"expected true or false, got {_describe(v)}")
            return v

        return self._read(default, False, "true or false", convert)

    @overload
    def integer(self, *, min: int | None = ..., max: int | None = ...) -> int: ...
    @overload
    def integer(self, default: _T, *, min: int | None = ..., max: int | None = ...) -> int | _T: ...
    def integer(
        self,
        default: object = REQUIRED,
        *,
        min: int | None = None,
        max: int | None = None,
    ) -> object:
        def convert(v: object) -> int:
            i = _as_int(v)
            return _check_range(i, i, min=min, max=max)

        return self._read(default, min if min is not None else 0, "an integer", convert)

    @overload
    def number(
        self,
        *,
        min: float | None = ...,
        max: float | None = ...,
        gt: float | None = ...,
        lt: float | None = ...,
    ) -> float: ...
    @overload
    def number(
        self,
        default: _T,
        *,
        min: float | None = ...,
        max: float | None = ...,
        gt: float | None = ...,
        lt: float | None = ...,
    ) -> float | _T: ...
    def number(
        self,
        default: object = REQUIRED,
        *,
        min: float | None = None,
        max: float | None = None,
        gt: float | None = None,
        lt: float | None = None,
    ) -> object:
        """A number (integers accepted); ``min``/``max`` inclusive, ``gt``/``lt`` exclusive."""

        def convert(v: object) -> float:
            x = _as_float(v)
            return _check_range(x, x, min=min, max=max, gt=gt, lt=lt)

        return self._read(default, 0.0, "a number", convert)

    @overload
    def duration(self, *, allow_zero: bool = ...) -> float: ...
    @overload
    def duration(self, default: _T, *, allow_zero: bool = ...) -> float | _T: ...
    def duration(self, default: object = REQUIRED, *, allow_zero: bool = False) -> object:
        """Seconds from ``250ms``/``5s``/``1m``/``1h`` or a number; zero only if allowed."""

        def convert(v: object) -> float:
            s = parse_duration(v)
            if not allow_zero:
                _check_range(s, s, gt=0, show=_show_seconds)
            return s

        return self._read(default, 1.0, "a duration", convert)

    @overload
    def size(self) -> int: ...
    @overload
    def size(self, default: _T) -> int | _T: ...
    def size(self, default: object = REQUIRED) -> object:
        """Bytes from ``16MiB``/``64KiB``/``1MB`` or an integer; at least 1."""

        def convert(v: object) -> int:
            n = parse_size(v)
            return _check_range(n, n, min=1, show=_show_size)

        return self._read(default, 1, "a size", convert)

    # -- containers

    def mapping(self, allowed: Sequence[str] | None = None, *, required: bool = False) -> MapReader:
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
        seen: set[str] = set()
        for knode, _ in node.value:
            kline = int(knode.start_mark.line) + 1 if knode.start_mark else None
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
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            # Keys are names as written: YAML 1.1 would turn the SPEC's `on:` into true.
            # Merged keys come first, so the mapping's own keys override them.
            if isinstance(knode, yaml.ScalarNode):
                entries[knode.value] = (knode, vnode)
        m = MapReader(self, entries, quiet=self.quiet)
        if allowed is not None:
            m.restrict(allowed)
        return m

    def sequence(self, *, required: bool = False, min_len: int = 0) -> list[Reader]:
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

    def _got(self, node: yaml.Node) -> str:
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


MAX_ALIAS_NODES: Final = 100_000  # aliases may add this many nodes, or as many as the file has


def _expanded_size(root: yaml.Node, source: str) -> tuple[int, int]:
    """(nodes as written, nodes once every alias is expanded); ConfigError on a recursive alias.

    Iterative (a deep document must not exhaust the stack) and linear in the nodes as written:
    each node's expanded size is computed once and reused wherever an alias repeats it.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            n = 1
            for child in _children(node):
                n += size[id(child)]
            size[key] = n
            continue
        if key in size:
            continue
        if key in on_path:
            mark = node.start_mark
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError([f"{source}{line}: an alias refers to the node that contains it"])
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            ck = id(child)
            if ck in on_path:
                mark = child.start_mark
                line = f":{mark.line + 1}" if mark is not None else ""
                raise ConfigError([f"{source}{line}: an alias refers to the node that contains it"])
            if ck not in size:
                stack.append((child, False))
    return len(size), size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


_FAILED: Final = yaml.Node("", "", None, None)
_CLoader: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def _compose_fast(text: str) -> yaml.Node | None:
    """The node graph by libyaml (several times faster on large files), or `_FAILED` when it
    is not installed or the text does not parse."""
    if _CLoader is None:
        return _FAILED
    loader = _CLoader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
    except (yaml.YAMLError, RecursionError):
        return _FAILED
    finally:
        loader.dispose()
    return node


def _compose(text: str, source: str) -> yaml.Node | None:
    loader = yaml.SafeLoader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
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
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply to read"]) from None
    finally:
        loader.dispose()
    return node


def read_yaml(text: str, source: str = "<string>") -> Reader:
    """The root Reader of one YAML document; ConfigError on a syntax error, an empty document or
    aliases that expand it too far (a "billion laughs" bomb is refused before it is walked)."""
    doc = Document(source)
    node = _compose_fast(text)
    if node is _FAILED:
        node = _compose(text, source)  # the pure-Python parser words the error
    assert node is not _FAILED
    if node is None:
        raise ConfigError(
            [f"{source}: the file is empty; expected a mapping with backends and routes"]
        )
    written, expanded = _expanded_size(node, source)
    limit = written + max(MAX_ALIAS_NODES, written)
    if expanded > limit:
        raise ConfigError(
            [
                f"{source}: too many aliases/nodes: its aliases expand {written} nodes to "
                f"{expanded} (at most {limit}); write the repeated parts out or use fewer "
                "nested aliases"
            ]
        )
    return Reader(node, "", doc)
