"""Every shipped example config validates, and the simulate scenarios hold valid policies."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from policies.simulate import make_env
from policies.spec import (
    BanditSpec,
    CanarySpec,
    ContextualSpec,
    WeightedSpec,
)
from router.config import (
    load_config,
    parse_policy,
    validate_main,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))
SCENARIOS = sorted((EXAMPLES / "scenarios").glob("*.yaml"))


def test_examples_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {
        "weighted.yaml",
        "tfserving-canary-lab.yaml",
        "canary.yaml",
        "blue-green.yaml",
        "canary-prometheus.yaml",
        "ab-test.yaml",
        "bandit.yaml",
        "contextual-climate.yaml",
    } <= names
    assert {p.name for p in SCENARIOS} >= {"bernoulli.yaml", "climate.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.routes and cfg.backends
    assert cfg.warnings == ()
    for route in cfg.routes:
        assert set(route.backends) <= set(cfg.backends)


def test_validate_main_on_example(capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / "canary.yaml"
    assert validate_main(path) == 0
    out = capsys.readouterr()
    assert out.out == f"OK: {path}: 2 backends, 1 route (image-classifier: canary)\n"


def test_tfserving_lab() -> None:
    cfg = load_config(EXAMPLES / "tfserving-canary-lab.yaml")
    r50, r101 = cfg.backends["resnet50"], cfg.backends["resnet101"]
    assert (r50.host, r50.port, r50.version) == ("127.0.0.1", 8501, "1.0.0")
    assert (r101.host, r101.port, r101.version) == ("127.0.0.1", 8502, "1.1.0")
    assert r50.rewrite is not None and r50.rewrite.to == "/v1/models/resnet50"
    assert r101.rewrite is not None and r101.rewrite.to == "/v1/models/resnet101"
    (route,) = cfg.routes
    assert route.match.path_prefix == "/v1/models/image_classifier"
    assert isinstance(route.policy, WeightedSpec)
    assert route.policy.weights == {"resnet50": 100.0, "resnet101": 0.0}
    (o,) = route.overrides
    assert (o.kind, o.name, o.value, o.backend) == ("header", "user-group", "canary", "resnet101")


def test_canary_example() -> None:
    p = load_config(EXAMPLES / "canary.yaml").routes[0].policy
    assert isinstance(p, CanarySpec)
    assert p.steps == (5.0, 10.0, 25.0, 50.0, 100.0) and p.gate == "manual"
    assert p.validate is not None and len(p.validate.requests) == 2
    assert [c.metric for c in p.analysis.checks] == ["error_rate", "latency_p99", "reward_mean"]


def test_prometheus_example() -> None:
    p = load_config(EXAMPLES / "canary-prometheus.yaml").routes[0].policy
    assert isinstance(p, CanarySpec)
    prom = [c for c in p.analysis.checks if c.metric == "prometheus"]
    assert prom and all(c.query and c.url for c in prom)


def test_contextual_example() -> None:
    p = load_config(EXAMPLES / "contextual-climate.yaml").routes[0].policy
    assert isinstance(p, ContextualSpec)
    assert p.arms == ("summer_model", "winter_model", "allround_model")
    (f,) = p.features
    assert (f.name, f.source, f.key, f.type, f.values) == (
        "climate",
        "header",
        "x-climate",
        "categorical",
        ("hot", "cold", "mild"),
    )


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_scenario_shape_and_policy(path: Path) -> None:
    node = yaml.compose(path.read_text())
    assert isinstance(node, yaml.MappingNode)
    keys = [k.value for k, _ in node.value]
    assert keys == ["policy", "environment", "horizon", "seeds"]
    policy = parse_policy(next(v for k, v in node.value if k.value == "policy"), str(path))
    assert isinstance(policy, BanditSpec | ContextualSpec)
    env = yaml.safe_load(path.read_text())["environment"]
    assert set(make_env(env).arms) == set(policy.arms)  # every environment type validates
