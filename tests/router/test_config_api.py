"""The public API of `router.config` (httpx-style): exactly these names, and nothing else leaks.

Types live in `policies.spec`; `router.config` only reads and validates. A name added to or
removed from the package's `__all__` must be a deliberate change to this list.
"""

from __future__ import annotations

import importlib

import router.config

PUBLIC = {
    "ConfigError",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_policy",
    "parse_size",
    "validate_main",
}


def test_all_is_the_public_api() -> None:
    assert set(router.config.__all__) == PUBLIC
    assert len(router.config.__all__) == len(PUBLIC)  # no duplicates


def test_every_public_name_is_defined() -> None:
    for name in router.config.__all__:
        assert getattr(router.config, name) is not None, name


def test_spec_types_are_not_re_exported() -> None:
    spec = importlib.import_module("policies.spec")
    types = {
        n for n, v in vars(spec).items() if isinstance(v, type) and v.__module__ == spec.__name__
    }
    leaked = sorted(types & set(dir(router.config)))
    assert leaked == []


def test_reader_accessors_do_not_shadow_builtins() -> None:
    from router.config.reader import MapReader, Reader

    for cls in (Reader, MapReader):
        shadowing = {"str", "int", "float", "bool", "list", "dict"} & set(vars(cls))
        assert shadowing == set(), (cls.__name__, shadowing)


def test_every_package_is_installed() -> None:
    """A non-editable install ships only the listed packages: a new subpackage (router.config)
    missing from pyproject.toml would install a router that cannot import its config."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(root).parts)
        for top in ("router", "policies")
        for p in (root / top).rglob("__init__.py")
    }
    assert found - listed == set()
