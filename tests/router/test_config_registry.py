"""One schema source: every registered algorithm, check kind and store kind is validated and
documented from its own `Param` declarations, so a new kind needs no edit in router/config or
router/reference.py. These tests walk the registries, not a list written out here."""

from __future__ import annotations

import pytest

from policies import bandits, contextual
from policies.checks import CHECK_KINDS
from policies.params import Param
from policies.spec import BanditSpec, CanarySpec, ContextualSpec
from router.config import ConfigError, parse_config
from router.reference import generate
from router.store import STORE_KINDS

HEAD = """\
backends:
  a: {url: "http://127.0.0.1:9001"}
  b: {url: "http://127.0.0.1:9002"}
routes:
  - name: r
    policy: """


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cfg.yaml")
    return exc.value.errors


def _too_low(p: Param) -> tuple[float, str] | None:
    """A value below ``p``'s lower bound and the message the validator must give for it."""
    if p.gt is not None:
        return p.gt, f"must be greater than {p.gt:g}, got {p.gt:g}"
    if p.min is not None:
        return p.min - 1, f"must be at least {p.min:g}, got {p.min - 1:g}"
    return None


BANDIT_PARAMS = [
    (name, p) for name, a in bandits.ALGORITHMS.items() for p in a.params_for("binary")
]
CONTEXTUAL_PARAMS = [(name, p) for name, a in contextual.ALGORITHMS.items() for p in a.params]


@pytest.mark.parametrize(("algo", "param"), BANDIT_PARAMS, ids=lambda x: getattr(x, "name", x))
def test_bandit_params_come_from_the_registry(algo: str, param: Param) -> None:
    policy = f"{{kind: bandit, arms: [a, b], algorithm: {algo}, params: {{{param.name}: %s}}}}"
    # a param without a fixed default (softmax temperature: relative to the reward scale)
    # declares an example value instead
    value = param.default if param.default is not None else float(param.example)
    cfg = parse_config(HEAD + policy % value)
    spec = cfg.routes[0].policy
    assert isinstance(spec, BanditSpec) and spec.params == {param.name: value}
    low = _too_low(param)
    if low is not None:
        (line,) = _errors(HEAD + policy % low[0])
        assert f"routes[0].policy.params.{param.name}: {low[1]}" in line


@pytest.mark.parametrize(("algo", "param"), CONTEXTUAL_PARAMS, ids=lambda x: getattr(x, "name", x))
def test_contextual_params_come_from_the_registry(algo: str, param: Param) -> None:
    policy = (
        f"{{kind: contextual_bandit, arms: [a, b], algorithm: {algo}, "
        "features: [{name: f, from: 'header:x-f', type: numeric}], "
        f"params: {{{param.name}: %s}}}}"
    )
    spec = parse_config(HEAD + policy % param.default).routes[0].policy
    assert isinstance(spec, ContextualSpec) and spec.params == {param.name: param.default}
    low = _too_low(param)
    if low is not None:
        (line,) = _errors(HEAD + policy % low[0])
        assert f"params.{param.name}: {low[1]}" in line


def test_unknown_algorithm_lists_the_registry() -> None:
    (line,) = _errors(HEAD + "{kind: bandit, arms: [a, b], algorithm: ucb2}")
    assert f"must be one of {', '.join(bandits.ALGORITHMS)}; got string 'ucb2'" in line
    assert "did you mean 'ucb1'?" in line


@pytest.mark.parametrize("metric", list(CHECK_KINDS))
def test_check_kinds_validate_from_their_declaration(metric: str) -> None:
    kind = CHECK_KINDS[metric]
    check = ", ".join(f"{k}: {v!r}" for k, v in kind.example.items())
    policy = "{kind: canary, stable: a, candidate: b, steps: [50], analysis: {checks: [%s]}}"
    spec = parse_config(HEAD + policy % f"{{{check}}}").routes[0].policy
    assert isinstance(spec, CanarySpec)
    assert spec.analysis.checks[0].metric == metric
    (line,) = _errors(HEAD + policy % f"{{{check}, bogus: 1}}")
    allowed = ", ".join(kind.keys)
    assert f"unknown key 'bogus'; allowed: {allowed} (metric {metric})" in line
    for p in kind.params:
        if p.required:
            rest = ", ".join(f"{k}: {v!r}" for k, v in kind.example.items() if k != p.name)
            errors = _errors(HEAD + policy % f"{{{rest}}}")
            assert any(f"missing required key '{p.name}'" in e for e in errors), errors


def test_store_kinds_validate_from_their_declaration() -> None:
    for name, kind in STORE_KINDS.items():
        required = [p for p in kind.params if p.required]
        text = HEAD + "{kind: weighted, weights: {a: 1}}\nstate: {store: " + name + "}\n"
        if not required:
            assert parse_config(text).state.store == name
            continue
        errors = _errors(text)
        for p in required:
            assert f"cfg.yaml:7: state: store: {name} needs {p.name} (e.g. {p.example})" in errors


def test_reference_documents_every_registered_kind() -> None:
    ref = generate()
    for name, a in bandits.ALGORITHMS.items():
        for p in a.params:
            shown = "—" if p.default is None else f"`{p.default:g}`"
            assert f"| `{p.name}` | number | {shown} | {p.help} |" in ref, (name, p)
    for name in contextual.ALGORITHMS:
        assert f"#### `params (contextual_bandit, algorithm: {name})`" in ref
    for metric, kind in CHECK_KINDS.items():
        assert f"#### `analysis.checks[] (metric: {metric})`" in ref
        for p in kind.params:
            assert f"| `{p.name}` | {p.shown_type} |" in ref
    for name, store in STORE_KINDS.items():
        assert f"`{name}`: {store.help}" in ref
