"""Config validation: a table of bad configs with the message each must give, and good configs."""

from __future__ import annotations

import random
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from policies.spec import (
    ABTestSpec,
    Address,
    AdminConfig,
    BanditSpec,
    BlueGreenSpec,
    CanarySpec,
    Config,
    ContextualSpec,
    FeedbackConfig,
    Limits,
    Retries,
    StateConfig,
    WeightedSpec,
)
from router.config import (
    ConfigError,
    load_config,
    parse_config,
    parse_duration,
    parse_policy,
    parse_size,
    validate_main,
)

BACKENDS = """\
backends:
  a: {url: "http://127.0.0.1:9001"}
  b: {url: "http://127.0.0.1:9002"}
  c: {url: "http://127.0.0.1:9003"}
"""
WEIGHTED = "policy: {kind: weighted, weights: {a: 1}}"
CANARY = "policy: {kind: canary, stable: a, candidate: b, steps: [50], "


def route(body: str, *, backends: str = BACKENDS, top: str = "") -> str:
    """A config with backends a, b, c and one route `r` whose keys are `body`."""
    return (
        textwrap.dedent(top)
        + backends
        + "routes:\n  - name: r\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


def top(extra: str) -> str:
    """A valid one-route config plus top-level keys `extra`."""
    return route(WEIGHTED, top=extra)


def errors_of(text: str, source: str = "cfg.yaml") -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, source)
    return exc.value.errors


# (id, config text, regex the single error line must match)
BAD: list[tuple[str, str, str]] = [
    (
        "ab-arms-share-a-backend",
        route("policy: {kind: ab_test, arms: {A: a, B: a}}"),
        r"routes\[0\]\.policy\.arms\.B: arms 'A' and 'B' both use backend 'a'",
    ),
    # -- unknown keys, with the allowed ones listed
    (
        "unknown-top-key",
        top("bakends: {}\n"),
        r"^cfg\.yaml:1: unknown key 'bakends'; allowed: version, listen, admin, state, limits, "
        r"feedback, backends, routes; did you mean 'backends'\?$",
    ),
    (
        "unknown-policy-key",
        route("policy: {kind: weighted, weigths: {a: 1}}"),
        r"routes\[0\]\.policy: unknown key 'weigths'; allowed: kind, weights",
    ),
    (
        "unknown-route-key",
        route(WEIGHTED + "\nretry: {attempts: 1}"),
        r"routes\[0\]: unknown key 'retry'; allowed: name, match, overrides, sticky, retries",
    ),
    (
        "unknown-backend-key",
        route(WEIGHTED, backends='backends:\n  a: {url: "http://h:1", timout: 2s}\n'),
        r"backends\.a: unknown key 'timout'; allowed: url, endpoints, version, timeout, health, "
        r"rewrite, outlier_detection, retry_budget",
    ),
    (
        "unknown-bandit-param",
        route("policy: {kind: bandit, arms: [a, b], algorithm: thompson, params: {epsilon: 0.1}}"),
        r"policy\.params: unknown key 'epsilon'; allowed: prior_alpha, prior_beta "
        r"\(algorithm thompson with binary reward\)",
    ),
    (
        "unknown-check-key",
        route(
            "policy: {kind: canary, stable: a, candidate: b, steps: [50],"
            " analysis: {checks: [{metric: error_rate, max: 0.1, min: 0}]}}"
        ),
        r"checks\[0\]: unknown key 'min'; allowed: metric, max, failure_status "
        r"\(metric error_rate\)",
    ),
    # -- values of the wrong form
    (
        "bad-duration",
        route(WEIGHTED, backends='backends:\n  a: {url: "http://h:1", timeout: 5 sec}\n'),
        r"^cfg\.yaml:2: backends\.a\.timeout: expected a duration like 250ms, 5s, 1m or 1h "
        r"\(or a number of seconds\), got string '5 sec'$",
    ),
    ("zero-duration", route(WEIGHTED + "\ntimeout: 0s"), r"timeout: must be greater than 0s"),
    ("bad-size", top("limits: {max_body: 16 MiBs}\n"), r"limits\.max_body: expected a size like"),
    (
        "bad-size-type",
        top("limits: {max_header: [1]}\n"),
        r"max_header: expected a size, got a list",
    ),
    (
        "bad-int",
        top("limits: {max_pending: 1.5}\n"),
        r"max_pending: expected an integer, got number",
    ),
    (
        "bad-listen",
        top("listen: localhost\n"),
        r"listen: expected host:port \(e\.g\. 0\.0\.0\.0:8080",
    ),
    ("bad-port", top("admin: {listen: ':99999'}\n"), r"admin\.listen: expected host:port"),
    (
        "bad-env-name",
        top("admin: {token_env: 'my token'}\n"),
        r"admin\.token_env: expected an environment variable name",
    ),
    ("version-unsupported", top("version: 2\n"), r"unsupported config version 2"),
    (
        "https-url",
        route(WEIGHTED, backends="backends:\n  a: {url: 'https://h:443'}\n"),
        r"backends\.a\.url: https upstreams are not supported yet",
    ),
    (
        "not-http-url",
        route(WEIGHTED, backends="backends:\n  a: {url: 'h:443'}\n"),
        r"backends\.a\.url: expected http://host:port\[/base\]",
    ),
    (
        "url-query",
        route(WEIGHTED, backends="backends:\n  a: {url: 'http://h:1/x?y=1'}\n"),
        r"without user, query or fragment",
    ),
    (
        "missing-url",
        route(WEIGHTED, backends="backends:\n  a: {version: 1.0.0}\n"),
        r"^cfg\.yaml:2: backends\.a: missing required key 'url'$",
    ),
    (
        "version-format",
        route(WEIGHTED, backends="backends:\n  a: {url: 'http://h:1', version: v1.2}\n"),
        r"version: expected MAJOR\.MINOR\.PIPELINE \(three non-negative integers, e\.g\. 1\.0\.0\)",
    ),
    (
        "version-number",
        route(WEIGHTED, backends="backends:\n  a: {url: 'http://h:1', version: 1.0}\n"),
        r"version: expected MAJOR\.MINOR\.PIPELINE as a quoted string .* got number 1\.0; quote it",
    ),
    (
        "bad-backend-name",
        route(
            WEIGHTED, backends="backends:\n  a: {url: 'http://h:1'}\n  'b c': {url: 'http://h:2'}\n"
        ),
        r"backends\[\"b c\"\]: invalid backend name 'b c'",
    ),
    (
        "health-path",
        route(WEIGHTED, backends="backends:\n  a: {url: 'http://h:1', health: {path: healthz}}\n"),
        r"health\.path: expected a path starting with '/', got 'healthz'",
    ),
    (
        "bad-route-name",
        route(WEIGHTED).replace("name: r", "name: 'my route'"),
        r"name: expected a route name",
    ),
    # -- unknown backend names, in every place they can appear
    (
        "unknown-backend-weights",
        route("policy: {kind: weighted, weights: {a: 1, zz: 1}}"),
        r"weights\.zz: unknown backend 'zz'; defined backends: a, b, c",
    ),
    (
        "unknown-backend-canary",
        route("policy: {kind: canary, stable: a, candidate: bb, steps: [50]}"),
        r"policy\.candidate: unknown backend 'bb'; defined backends: a, b, c; did you mean 'b'\?",
    ),
    (
        "unknown-backend-blue-green",
        route("policy: {kind: blue_green, active: zz, preview: b}"),
        r"policy\.active: unknown backend 'zz'",
    ),
    (
        "unknown-backend-ab",
        route("policy: {kind: ab_test, arms: {A: a, B: zz}, split: {A: 1, B: 1}}"),
        r"policy\.arms\.B: unknown backend 'zz'",
    ),
    (
        "unknown-backend-bandit",
        route("policy: {kind: bandit, arms: [a, zz]}"),
        r"policy\.arms\[1\]: unknown backend 'zz'",
    ),
    (
        "unknown-backend-contextual",
        route(
            "policy: {kind: contextual_bandit, arms: [zz, b],"
            " features: [{name: x, from: 'header:x', type: numeric}]}"
        ),
        r"policy\.arms\[0\]: unknown backend 'zz'",
    ),
    (
        "unknown-backend-override",
        route(WEIGHTED + "\noverrides: [{when: {header: {x-g: canary}}, backend: zz}]"),
        r"overrides\[0\]\.backend: unknown backend 'zz'",
    ),
    (
        "unknown-backend-mirror",
        route(WEIGHTED + "\nmirror: {backend: zz, percent: 5}"),
        r"mirror\.backend: unknown backend 'zz'",
    ),
    # -- cross-field and range checks
    (
        "duplicate-route",
        BACKENDS + f"routes:\n  - name: r\n    {WEIGHTED}\n  - name: r\n    {WEIGHTED}\n",
        r"^cfg\.yaml:8: routes\[1\]\.name: duplicate route name 'r' \(also routes\[0\]\)$",
    ),
    ("no-routes", BACKENDS + "routes: []\n", r"routes: must have at least 1 item, got 0"),
    (
        "no-backends",
        "routes:\n  - name: r\n    " + WEIGHTED + "\n",
        r"^cfg\.yaml:1: missing required key 'backends'$",
    ),
    (
        "steps-not-increasing",
        route("policy: {kind: canary, stable: a, candidate: b, steps: [5, 25, 10]}"),
        r"^cfg\.yaml:7: routes\[0\]\.policy\.steps\[2\]: must be greater than 25, got 10",
    ),
    (
        "step-over-100",
        route("policy: {kind: canary, stable: a, candidate: b, steps: [50, 150]}"),
        r"steps\[1\]: must be at most 100, got 150",
    ),
    (
        "step-zero",
        route("policy: {kind: canary, stable: a, candidate: b, steps: [0, 50]}"),
        r"steps\[0\]: must be greater than 0, got 0",
    ),
    (
        "stable-is-candidate",
        route("policy: {kind: canary, stable: a, candidate: a, steps: [50]}"),
        r"policy\.candidate: must differ from stable \('a'\)",
    ),
    (
        "active-is-preview",
        route("policy: {kind: blue_green, active: a, preview: a}"),
        r"policy\.preview: must differ from active \('a'\)",
    ),
    (
        "all-zero-weights",
        route("policy: {kind: weighted, weights: {a: 0, b: 0}}"),
        r"policy\.weights: weights must not all be zero",
    ),
    (
        "negative-weight",
        route("policy: {kind: weighted, weights: {a: 1, b: -1}}"),
        r"weights\.b: must be at least 0, got -1",
    ),
    (
        "split-all-zero",
        route("policy: {kind: ab_test, arms: {A: a, B: b}, split: {A: 0, B: 0}}"),
        r"policy\.split: weights must not all be zero",
    ),
    (
        "split-unknown-arm",
        route("policy: {kind: ab_test, arms: {A: a, B: b}, split: {A: 1, B: 1, C: 1}}"),
        r"split\.C: unknown arm 'C'; arms: A, B",
    ),
    (
        "split-missing-arm",
        route("policy: {kind: ab_test, arms: {A: a, B: b, C: c}, split: {A: 1, B: 1}}"),
        r"policy\.split: missing weight for arm C",
    ),
    (
        "bad-alpha",
        route("policy: {kind: ab_test, arms: {A: a, B: b}, test: {method: z_test, alpha: 0.7}}"),
        r"test\.alpha: must be at most 0\.5, got 0\.7",
    ),
    (
        "bad-test-method",
        route("policy: {kind: ab_test, arms: {A: a, B: b}, test: {method: t_test}}"),
        r"test\.method: must be one of z_test, welch_t, msprt, bayesian; got string 't_test'",
    ),
    (
        "ab-one-arm",
        route("policy: {kind: ab_test, arms: {A: a}}"),
        r"policy\.arms: an A/B test needs at least 2 arms, got 1",
    ),
    (
        "min-share-too-big",
        route("policy: {kind: bandit, arms: [a, b, c], min_share: 0.5}"),
        r"min_share: must be at most 1/3 \(0\.3333\) for 3 arms, got 0\.5",
    ),
    (
        "discount-zero",
        route("policy: {kind: bandit, arms: [a, b], discount: 0}"),
        r"discount: must be greater than 0",
    ),
    (
        "epsilon-range",
        route(
            "policy: {kind: bandit, arms: [a, b], algorithm: epsilon_greedy, params: {epsilon: 2}}"
        ),
        r"params\.epsilon: must be at most 1, got 2",
    ),
    (
        "duplicate-arm",
        route("policy: {kind: bandit, arms: [a, b, a]}"),
        r"arms\[2\]: duplicate arm 'a'",
    ),
    (
        "one-arm",
        route("policy: {kind: bandit, arms: [a]}"),
        r"arms: must have at least 2 items, got 1",
    ),
    (
        "bad-algorithm",
        route("policy: {kind: bandit, arms: [a, b], algorithm: ucb}"),
        r"algorithm: must be one of thompson, ucb1, kl_ucb, epsilon_greedy, softmax; "
        r"got string 'ucb' \(did you mean 'ucb1'\?\)",
    ),
    (
        "linucb-alpha-negative",
        route(
            "policy: {kind: contextual_bandit, arms: [a, b], params: {alpha: -1},"
            " features: [{name: x, from: 'header:x', type: numeric}]}"
        ),
        r"params\.alpha: must be at least 0, got -1",
    ),
    (
        "bad-feature-source",
        route(
            "policy: {kind: contextual_bandit, arms: [a, b],"
            " features: [{name: x, from: 'env:X', type: numeric}]}"
        ),
        r"features\[0\]\.from: expected header:NAME \| cookie:NAME \| query:NAME \| json:NAME",
    ),
    (
        "json-pointer",
        route(
            "policy: {kind: contextual_bandit, arms: [a, b],"
            " features: [{name: age, from: 'json:instances/0/age', type: numeric}]}"
        ),
        r"features\[0\]\.from: a JSON pointer must start with '/'",
    ),
    (
        "duplicate-feature",
        route(
            "policy: {kind: contextual_bandit, arms: [a, b], features: ["
            "{name: x, from: 'header:x', type: numeric},"
            " {name: x, from: 'header:y', type: numeric}]}"
        ),
        r"features\[1\]: duplicate feature name 'x'",
    ),
    (
        "categorical-duplicate-value",
        route(
            "policy: {kind: contextual_bandit, arms: [a, b],"
            " features: [{name: x, from: 'header:x', type: categorical, values: [hot, hot]}]}"
        ),
        r"values\[1\]: duplicate value 'hot'",
    ),
    (
        "numeric-with-values",
        route(
            "policy: {kind: contextual_bandit, arms: [a, b],"
            " features: [{name: x, from: 'header:x', type: numeric, values: [1]}]}"
        ),
        r"features\[0\]: unknown key 'values'; "
        r"allowed: name, from, type, scale, default, range, clip \(type numeric\)",
    ),
    (
        "bad-feature-type",
        route(
            "policy: {kind: contextual_bandit, arms: [a, b],"
            " features: [{name: x, from: 'header:x', type: text}]}"
        ),
        r"features\[0\]\.type: must be one of categorical, numeric; got string 'text'",
    ),
    (
        "routes-item-not-mapping",
        BACKENDS + "routes: [r]\n",
        r"routes\[0\]: expected a mapping, got string 'r'",
    ),
    (
        "url-bad-bracket",
        route(WEIGHTED, backends="backends:\n  a: {url: 'http://[oops]:1'}\n"),
        r"backends\.a\.url: invalid URL 'http://\[oops\]:1'",
    ),
    (
        "collection-key",
        route(WEIGHTED + "\nmatch: {[a]: 1}"),
        r"^cfg\.yaml:8: routes\[0\]\.match: keys must be plain names, got a collection$",
    ),
    (
        "bad-merge",
        route(WEIGHTED + "\nmatch: {<<: 5}"),
        r"routes\[0\]\.match: cannot merge: expected a mapping or list of mappings",
    ),
    (
        "missing-kind",
        route("policy: {weights: {a: 1}}"),
        r"policy: missing required key 'kind'; one of: weighted, blue_green",
    ),
    (
        "unknown-kind",
        route("policy: {kind: canry, weights: {a: 1}}"),
        r"policy\.kind: must be one of weighted, blue_green, canary, ab_test, bandit, "
        r"contextual_bandit; got string 'canry' \(did you mean 'canary'\?\)",
    ),
    (
        "missing-policy",
        route("match: {path_prefix: /x}"),
        r"routes\[0\]: missing required key 'policy'",
    ),
    (
        "policy-not-mapping",
        route("policy: weighted"),
        r"routes\[0\]\.policy: expected a mapping, got string 'weighted'",
    ),
    # -- route pieces
    (
        "bad-regex",
        route(WEIGHTED + "\noverrides: [{when: {header_regex: {x-g: 'a('}}, backend: b}]"),
        r"when\.header_regex\.x-g: invalid regular expression 'a\(': missing \)",
    ),
    (
        "override-two-conditions",
        route(WEIGHTED + "\noverrides: [{when: {header: {x: '1'}, cookie: {y: '2'}}, backend: b}]"),
        r"when: must have exactly one of header, header_prefix, header_regex, cookie; "
        r"got header, cookie",
    ),
    (
        "override-unknown-condition",
        route(WEIGHTED + "\noverrides: [{when: {query: {x: '1'}}, backend: b}]"),
        r"when: unknown key 'query'; allowed: header, header_prefix, header_regex, cookie",
    ),
    (
        "override-value-type",
        route(WEIGHTED + "\noverrides: [{when: {header: {x: 1}}, backend: b}]"),
        r"when\.header\.x: expected a string, got integer 1 \(quote it to make it a string\)",
    ),
    (
        "bad-sticky-key",
        route(WEIGHTED + "\nsticky: {key: 'ip:client'}"),
        r"sticky\.key: expected header:NAME \| cookie:NAME \| query:NAME "
        r"\(e\.g\. header:x-user-id\), got 'ip:client'",
    ),
    (
        "retries-too-many",
        route(WEIGHTED + "\nretries: {attempts: 6}"),
        r"retries\.attempts: must be at most 5, got 6",
    ),
    (
        "retries-on",
        route(WEIGHTED + "\nretries: {attempts: 1, on: [4xx]}"),
        r"retries\.on\[0\]: must be one of connect-failure, reset, timeout, 5xx; got string '4xx'",
    ),
    (
        "mirror-percent",
        route(WEIGHTED + "\nmirror: {backend: b, percent: 150}"),
        r"mirror\.percent: must be at most 100, got 150",
    ),
    (
        "empty-methods",
        route(WEIGHTED + "\nmatch: {methods: []}"),
        r"match\.methods: must not be empty",
    ),
    (
        "path-prefix",
        route(WEIGHTED + "\nmatch: {path_prefix: v1}"),
        r"match\.path_prefix: expected a path starting with '/'",
    ),
    # -- canary / blue-green details
    (
        "unknown-check-metric",
        route(CANARY + "analysis: {checks: [{metric: cpu}]}}"),
        r"checks\[0\]\.metric: must be one of error_rate, latency_p50, latency_p90, "
        r"latency_p95, latency_p99, reward_mean, prometheus",
    ),
    (
        "error-rate-range",
        route(CANARY + "analysis: {checks: [{metric: error_rate, max: 5}]}}"),
        r"checks\[0\]\.max: must be at most 1, got 5",
    ),
    (
        "latency-duration",
        route(CANARY + "analysis: {checks: [{metric: latency_p99, max: fast}]}}"),
        r"checks\[0\]\.max: expected a duration",
    ),
    (
        "prometheus-no-bounds",
        route(
            CANARY + "analysis: {checks:"
            " [{metric: prometheus, query: 'up', url: 'http://127.0.0.1:9090'}]}}"
        ),
        r"checks\[0\]: needs min and/or max",
    ),
    (
        "reward-mean-no-bound",
        route(CANARY + "analysis: {checks: [{metric: reward_mean}]}}"),
        r"checks\[0\]: needs min, min_relative_to_stable or max_relative_to_stable",
    ),
    (
        "min-requests",
        route(CANARY + "analysis: {min_requests: 0}}"),
        r"analysis\.min_requests: must be at least 1, got 0",
    ),
    (
        "bad-gate",
        route("policy: {kind: canary, stable: a, candidate: b, steps: [50], gate: maybe}"),
        r"gate: must be one of auto, manual",
    ),
    (
        "webhook-event",
        route(CANARY + "webhooks: [{on: [done], url: 'http://h/x'}]}"),
        r"webhooks\[0\]\.on\[0\]: must be one of validating, progressing, paused, promoted, "
        r"rolled_back",
    ),
    (
        "validate-path",
        route(CANARY + "validate: {requests: [{path: predict}]}}"),
        r"validate\.requests\[0\]\.path: expected a path starting with '/'",
    ),
    (
        "auto-switch-without-analysis",
        route("policy: {kind: blue_green, active: a, preview: b, auto_switch: true}"),
        r"auto_switch: auto_switch: true needs analysis or validate",
    ),
    # -- reward, state, feedback
    (
        "reward-max-status-feedback",
        route("policy: {kind: bandit, arms: [a, b], reward: {type: binary, max_status: 400}}"),
        r"reward\.max_status: only applies with from: response",
    ),
    (
        "reward-type",
        route("policy: {kind: bandit, arms: [a, b], reward: {type: ratio}}"),
        r"reward\.type: must be one of binary, continuous",
    ),
    ("redis-without-url", top("state: {store: redis}\n"), r"state: store: redis needs url"),
    (
        "store-kind",
        top("state: {store: postgres}\n"),
        r"state\.store: must be one of sqlite, redis, memory",
    ),
    (
        "missing-reward-type",
        top("feedback: {missing_reward: none}\n"),
        r"feedback\.missing_reward: expected a number",
    ),
    # -- YAML-level
    (
        "duplicate-yaml-key",
        top("listen: ':1'\nlisten: ':2'\n"),
        r"^cfg\.yaml:2: duplicate key 'listen'$",
    ),
    (
        "routes-not-list",
        BACKENDS + "routes: {name: r}\n",
        r"routes: expected a list, got a mapping",
    ),
]


@pytest.mark.parametrize(
    ("text", "pattern"), [(t, p) for _, t, p in BAD], ids=[i for i, _, _ in BAD]
)
def test_bad_config_gives_one_clear_error(text: str, pattern: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert re.search(pattern, errors[0]), errors[0]
    assert errors[0].startswith("cfg.yaml")


def test_table_is_large_and_distinct() -> None:
    assert len(BAD) >= 30
    assert len({i for i, _, _ in BAD}) == len(BAD)
    assert len({p for _, _, p in BAD}) == len(BAD)


def test_every_error_is_reported_with_its_line() -> None:
    text = textwrap.dedent(
        """\
        backends:
          a: {url: "http://127.0.0.1:9001", timeout: soon}
          b: {url: "http://127.0.0.1:9002"}
        routes:
          - name: r
            policy:
              kind: canary
              stable: a
              candidate: zz
              steps: [5, 25, 10]
        """
    )
    errors = errors_of(text, "deploy/canary.yaml")
    assert errors == [
        "deploy/canary.yaml:2: backends.a.timeout: expected a duration like 250ms, 5s, 1m or 1h "
        "(or a number of seconds), got string 'soon'",
        "deploy/canary.yaml:9: routes[0].policy.candidate: unknown backend 'zz'; "
        "defined backends: a, b",
        "deploy/canary.yaml:10: routes[0].policy.steps[2]: must be greater than 25, got 10 "
        "(steps strictly increase)",
    ]


def test_errors_across_routes_all_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BACKENDS + textwrap.dedent(
        """\
        routes:
          - name: one
            policy: {kind: weighted, weights: {a: 1, b: -2}}
          - name: two
            policy: {kind: bandit, arms: [a, b], params: {c: 1}}
          - name: three
            sticky: {key: "ip:x"}
            policy: {kind: contextual_bandit, arms: [a, b], features: []}
        """
    )
    path = tmp_path / "multi.yaml"
    path.write_text(text)
    assert validate_main(path) == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert out.out == ""
    assert len(lines) == 4, lines
    assert all(line.startswith(f"{path}:") for line in lines)
    assert "weights.b: must be at least 0, got -2" in lines[0]
    assert "params: unknown key 'c'; allowed: prior_alpha, prior_beta" in lines[1]
    assert "sticky.key" in lines[2]
    assert "features: must have at least 1 item, got 0" in lines[3]


# -- file-level problems: always one clean line, never a traceback


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", r"^{f}: the file is empty; expected a mapping with backends and routes$"),
        (b"# nothing\n\n", r"^{f}: the file is empty"),
        (
            b"backends:\n  a: {url: http://h:1\nroutes: []\n",
            r"^{f}:3: YAML syntax error: .*expected ',' or '}}', but got ':' \(line 3, column 7\)$",
        ),
        (
            b"a: b: c\n",
            r"^{f}:1: YAML syntax error: mapping values are not allowed here \(line 1, column 5\)$",
        ),
        (b"x: 1\n\tbad: 2\n", r"^{f}:2: YAML syntax error"),
        (
            b"- a\n- b\n",
            r"^{f}:1: the top level must be a mapping with backends and routes, got a list$",
        ),
        (b"hello\n", r"^{f}:1: the top level must be a mapping .*, got string 'hello'$"),
        (
            b"a: 1\n---\nb: 2\n",
            r"^{f}:2: YAML syntax error: expected a single document in the stream, "
            r"but found another document",
        ),
        (b"\xff\xfe\x00", r"^{f}: not UTF-8 text"),
        (b"x: !!python/object:os.system {}\n", r"^{f}:1: unknown key 'x'"),
    ],
)
def test_file_problems(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert re.search(pattern.format(f=re.escape(str(path))), exc.value.errors[0]), exc.value.errors


def test_missing_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main(tmp_path / "nope.yaml") == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nope.yaml'}: no such file\n"
    assert validate_main(tmp_path) == 2
    assert "is a directory" in capsys.readouterr().err


def test_unsafe_tag_is_an_error_not_code(tmp_path: Path) -> None:
    errors = errors_of(top("feedback: {missing_reward: !!python/object:os.system {}}\n"))
    assert len(errors) == 1
    assert "feedback.missing_reward" in errors[0]


# -- good configs


def test_defaults() -> None:
    cfg = parse_config(route(WEIGHTED))
    assert isinstance(cfg, Config)
    assert cfg.version == 1
    assert cfg.listen == Address("0.0.0.0", 8080)
    assert cfg.admin == AdminConfig(Address("127.0.0.1", 9901), "MODELROUTER_ADMIN_TOKEN")
    assert cfg.state == StateConfig("sqlite", "modelrouter.db", None)
    assert cfg.limits == Limits(16 * 1024 * 1024, 64 * 1024, 1024, 0)
    assert cfg.feedback == FeedbackConfig("MODELROUTER_FEEDBACK_SECRET", 3600.0, None)
    assert cfg.source == "<string>"
    r = cfg.routes[0]
    assert r.match.path_prefix == "/" and r.match.methods is None
    assert r.retries == Retries() and r.sticky is None and r.mirror is None and r.timeout is None
    assert r.overrides == ()
    b = cfg.backends["a"]
    assert (b.scheme, b.host, b.port, b.base_path, b.timeout) == (
        "http",
        "127.0.0.1",
        9001,
        "",
        30.0,
    )
    assert b.version is None and b.health is None and b.rewrite is None


def test_top_level_values() -> None:
    cfg = parse_config(
        top(
            """\
            version: 1
            listen: ":8081"
            admin: {listen: "[::1]:9902", token_env: MY_TOKEN}
            state: {store: redis, url: "redis://127.0.0.1:6379/0"}
            limits: {max_body: 1MB, max_header: 8KiB, max_pending: 10, trusted_hops: 1}
            feedback: {secret_env: S, ttl: 30m, missing_reward: 0}
            """
        )
    )
    assert cfg.listen == Address("0.0.0.0", 8081)
    assert cfg.admin == AdminConfig(Address("::1", 9902), "MY_TOKEN")
    assert cfg.state == StateConfig("redis", "modelrouter.db", "redis://127.0.0.1:6379/0")
    assert cfg.limits == Limits(1_000_000, 8192, 10, 1)
    assert cfg.feedback == FeedbackConfig("S", 1800.0, 0.0)


def test_backend_and_route_fields() -> None:
    cfg = parse_config(
        textwrap.dedent(
            """\
            backends:
              m1:
                url: http://10.0.0.5:8501/api/
                version: 1.0.0
                timeout: 250ms
                health: {path: /v1/models/m, interval: 2s}
                rewrite: {from: /v1/models/clf, to: /v1/models/m1}
              m2: {url: "http://[::1]"}
            routes:
              - name: clf
                match: {path_prefix: /v1/models/clf, methods: [post, GET]}
                overrides:
                  - {when: {header: {X-User-Group: canary}}, backend: m2}
                  - {when: {header_prefix: {x-tenant: beta-}}, backend: m2}
                  - {when: {header_regex: {x-user: '^qa-[0-9]+$'}}, backend: m2}
                  - {when: {cookie: {Group: canary}}, backend: m2}
                sticky: {key: "cookie:uid"}
                retries: {attempts: 2, on: [connect-failure, 5xx]}
                timeout: 1m30s
                mirror: {backend: m2, percent: 10}
                policy: {kind: weighted, weights: {m1: 70, m2: 30}}
            """
        )
    )
    m1, m2 = cfg.backends["m1"], cfg.backends["m2"]
    assert (m1.host, m1.port, m1.base_path, m1.version, m1.timeout) == (
        "10.0.0.5",
        8501,
        "/api",
        "1.0.0",
        0.25,
    )
    assert m1.health is not None and m1.health.interval == 2.0
    assert m1.rewrite is not None and (m1.rewrite.from_, m1.rewrite.to) == (
        "/v1/models/clf",
        "/v1/models/m1",
    )
    assert (m2.host, m2.port) == ("::1", 80)
    r = cfg.routes[0]
    assert r.match.methods == frozenset({"POST", "GET"})
    assert [(o.kind, o.name, o.value) for o in r.overrides] == [
        ("header", "x-user-group", "canary"),
        ("header_prefix", "x-tenant", "beta-"),
        ("header_regex", "x-user", "^qa-[0-9]+$"),
        ("cookie", "Group", "canary"),
    ]
    assert r.sticky is not None and (r.sticky.source, r.sticky.name) == ("cookie", "uid")
    assert r.retries == Retries(2, frozenset({"connect-failure", "5xx"}))
    assert r.timeout == 90.0
    assert r.mirror is not None and (r.mirror.backend, r.mirror.percent) == ("m2", 10.0)
    assert isinstance(r.policy, WeightedSpec)
    assert r.policy.weights == {"m1": 70.0, "m2": 30.0}
    assert r.backends == ("m1", "m2")


def test_canary_with_defaults_and_on_key() -> None:
    cfg = parse_config(
        route(
            """\
            policy:
              kind: canary
              stable: a
              candidate: b
              steps: [5, 50, 100]
              analysis:
                checks: [{metric: latency_p99, max: 500ms}]
              webhooks:
                - {on: [promoted], url: "http://127.0.0.1:9/x"}
                - {url: "http://127.0.0.1:9/all"}
            """
        )
    )
    p = cfg.routes[0].policy
    assert isinstance(p, CanarySpec)
    assert p.steps == (5.0, 50.0, 100.0) and p.interval == 60.0 and p.gate == "auto"
    assert p.validate is None
    assert (p.analysis.min_requests, p.analysis.failure_limit, p.analysis.compare) == (
        100,
        2,
        "none",
    )
    assert p.analysis.checks[0].max == 0.5
    assert p.webhooks[0].on == frozenset({"promoted"})  # YAML 1.1 must not turn `on` into true
    assert "rolled_back" in p.webhooks[1].on


def test_blue_green() -> None:
    p = parse_config(route("policy: {kind: blue_green, active: a, preview: b}")).routes[0].policy
    assert isinstance(p, BlueGreenSpec)
    assert (p.active, p.preview, p.auto_switch, p.analysis, p.interval) == (
        "a",
        "b",
        False,
        None,
        60.0,
    )


def test_ab_test_default_split() -> None:
    p = parse_config(route("policy: {kind: ab_test, arms: {A: a, B: b}}")).routes[0].policy
    assert isinstance(p, ABTestSpec)
    assert p.split == {"A": 1.0, "B": 1.0}
    assert (p.test.method, p.test.alpha, p.test.min_samples, p.test.mixing_sd) == (
        "msprt",
        0.05,
        1000,
        None,
    )
    assert p.conclude == "none" and p.reward.type == "binary"


def test_bandit_params_and_reward_from_response() -> None:
    p = (
        parse_config(
            route(
                "policy: {kind: bandit, arms: [a, b], algorithm: epsilon_greedy,"
                " params: {epsilon: 0.1, decay: 0.5},"
                " reward: {from: response, max_status: 400, max_latency: 200ms}}"
            )
        )
        .routes[0]
        .policy
    )
    assert isinstance(p, BanditSpec)
    assert p.params == {"epsilon": 0.1, "decay": 0.5}
    assert (p.reward.source, p.reward.max_status, p.reward.max_latency) == ("response", 400, 0.2)
    p2 = (
        parse_config(
            route(
                "policy: {kind: bandit, arms: [a, b], algorithm: thompson,"
                " params: {prior_alpha: 1, prior_beta: 19}}"
            )
        )
        .routes[0]
        .policy
    )
    assert isinstance(p2, BanditSpec) and p2.params == {"prior_alpha": 1.0, "prior_beta": 19.0}
    # continuous Thompson learns its Normal posterior from data alone: no params
    with pytest.raises(ConfigError, match="unknown key 'prior_mean'"):
        parse_config(
            route(
                "policy: {kind: bandit, arms: [a, b], reward: {type: continuous},"
                " params: {prior_mean: 0}}"
            )
        )


def test_contextual_features() -> None:
    p = (
        parse_config(
            route(
                """\
            policy:
              kind: contextual_bandit
              arms: [a, b, c]
              algorithm: lin_ts
              params: {alpha: 0.5, lambda: 1}
              features:
                - {name: climate, from: "header:X-Climate", type: categorical, values: [hot, cold]}
                - {name: age, from: "json:/instances/0/age", type: numeric,
                   scale: 0.01, default: 0.3}
                - {name: tier, from: "query:tier", type: categorical, values: [free, paid]}
            """
            )
        )
        .routes[0]
        .policy
    )
    assert isinstance(p, ContextualSpec)
    assert p.algorithm == "lin_ts" and p.params == {"alpha": 0.5, "lambda": 1.0}
    f = p.features
    assert (f[0].source, f[0].key, f[0].values) == ("header", "x-climate", ("hot", "cold"))
    assert (f[1].source, f[1].key, f[1].scale, f[1].default) == (
        "json",
        "/instances/0/age",
        0.01,
        0.3,
    )
    assert (f[2].source, f[2].key) == ("query", "tier")


def test_merge_keys_and_anchors() -> None:
    cfg = parse_config(
        textwrap.dedent(
            """\
            backends:
              a: &d {url: "http://h:1", timeout: 2s, health: {path: /h}}
              b: {<<: *d, url: "http://h:2", timeout: 3s}
            routes:
              - {name: r, policy: {kind: weighted, weights: {a: 1, b: 1}}}
            """
        )
    )
    a, b = cfg.backends["a"], cfg.backends["b"]
    assert (a.timeout, a.port, b.timeout, b.port) == (2.0, 1, 3.0, 2)
    assert b.health is not None and b.health.path == "/h"


def test_overlapping_routes_warn() -> None:
    text = BACKENDS + textwrap.dedent(
        f"""\
        routes:
          - {{name: one, match: {{path_prefix: /x, methods: [POST]}}, {WEIGHTED}}}
          - {{name: two, match: {{path_prefix: /x}}, {WEIGHTED}}}
        """
    )
    cfg = parse_config(text, "cfg.yaml")
    assert len(cfg.warnings) == 1
    assert re.match(
        r"cfg\.yaml:7: routes\[1\]\.match: warning: same path_prefix '/x'", cfg.warnings[0]
    )


def test_parse_policy_plain_data_without_backends() -> None:
    spec = parse_policy({"kind": "bandit", "arms": ["x", "y"], "algorithm": "ucb1"})
    assert isinstance(spec, BanditSpec) and spec.arms == ("x", "y")
    with pytest.raises(ConfigError) as exc:
        parse_policy({"kind": "bandit", "arms": ["x"]}, "scenario.yaml", "policy")
    assert exc.value.errors == ["scenario.yaml: policy.arms: must have at least 2 items, got 1"]
    with pytest.raises(ConfigError) as exc:
        parse_policy({"kind": "weighted", "weights": {"x": 1}}, backends=["a"])
    assert "unknown backend 'x'" in exc.value.errors[0]


def test_parse_policy_node_has_lines() -> None:
    node = yaml.compose("horizon: 10\npolicy:\n  kind: bandit\n  arms: [a, b]\n  discount: 2\n")
    assert isinstance(node, yaml.MappingNode)
    policy = next(v for k, v in node.value if k.value == "policy")
    with pytest.raises(ConfigError) as exc:
        parse_policy(policy, "sc.yaml")
    assert exc.value.errors == ["sc.yaml:5: policy.discount: must be at most 1, got 2"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        (2, 2.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16MiB", 16 << 20),
        ("64KiB", 64 << 10),
        ("1MB", 10**6),
        ("512B", 512),
        (1000, 1000),
        ("2 kib", 2048),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_validate_main_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(route(WEIGHTED))
    assert validate_main(path) == 0
    out = capsys.readouterr()
    assert out.out == f"OK: {path}: 3 backends, 1 route (r: weighted)\n"
    assert out.err == ""


def test_mangled_configs_never_crash() -> None:
    """Random edits of the examples give a Config or a ConfigError, never another exception."""
    rng = random.Random(0)
    examples = sorted((Path(__file__).resolve().parents[2] / "deploy" / "examples").glob("*.yaml"))
    junk = ["", "-1", "0", "[]", "{}", "null", "x", "1.5", "'a('", "true", "{a: 1}", "[a, b]"]
    for n in range(400):
        lines = examples[n % len(examples)].read_text().splitlines()
        i = rng.randrange(len(lines))
        op = rng.randrange(3)
        if op == 0:
            del lines[i]
        elif op == 1 and ":" in lines[i]:
            key, _, _ = lines[i].partition(":")
            lines[i] = f"{key}: {rng.choice(junk)}"
        else:
            lines.insert(i, lines[rng.randrange(len(lines))])
        try:
            parse_config("\n".join(lines), "m.yaml")
        except ConfigError as e:
            assert e.errors and all(line.startswith("m.yaml") for line in e.errors)
