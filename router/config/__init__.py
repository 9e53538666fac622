"""The YAML configuration (SPEC §2), validated into the frozen dataclasses of `policies.spec`.

Every problem is reported, not only the first, as ``FILE:LINE: yaml.path[2].key: message``
(``FILE: yaml.path: message`` when no line is known), e.g.
``canary.yaml:14: routes[0].policy.steps[2]: must be greater than 25, got 10``.

Modules: `reader` (YAML nodes with lines, typed accessors, did-you-mean), `values` (addresses,
URLs, declared parameters), `policies` (``routes[].policy``), `routes` (backends and routes),
`load` (the top level). Types come from `policies.spec`, not from here.
"""

from __future__ import annotations

from router.config.load import load_config, parse_config, validate_main
from router.config.policies import parse_policy
from router.config.reader import ConfigError, parse_duration, parse_size

__all__ = [
    "ConfigError",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_policy",
    "parse_size",
    "validate_main",
]
