"""`warm_start:` files: learned parameters a route's policy starts from instead of zero.

A warm-start file is what `modelrouter replay LOG --fit OUT` and `modelrouter snapshot ROUTE`
write: `{format, policy: <policy block>, state: <the policy's learned parameters>}`. It must
fit the route it is given to: same kind, arms known to the route, and for contextual routes
the same feature dimension (the same features in the same order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from policies.features import FeatureEncoder
from policies.spec import PolicySpec
from router.errors import ModelrouterError

__all__ = ["WarmStartError", "load_warm_start"]

_KINDS = ("bandit", "contextual_bandit")


class WarmStartError(ModelrouterError):
    """A warm-start file that cannot be used for a route; the message says why."""


def load_warm_start(path: str | Path, spec: PolicySpec) -> dict[str, Any]:
    """The learned state in `path`, checked against the route's policy `spec`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise WarmStartError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise WarmStartError(f"{p} is not JSON/YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), dict):
        raise WarmStartError(
            f"{p} has no 'state' mapping (write one with `modelrouter replay LOG --fit {p.name}` "
            "or `modelrouter snapshot ROUTE`)"
        )
    if spec.kind not in _KINDS:
        raise WarmStartError(f"a {spec.kind} route does not learn; warm_start needs a bandit")
    block = doc.get("policy")
    kind = block.get("kind") if isinstance(block, dict) else None
    if kind is not None and kind != spec.kind:
        raise WarmStartError(f"{p} holds a {kind} policy, the route is {spec.kind}")
    state: dict[str, Any] = doc["state"]
    arms = state.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise WarmStartError(f"{p}: state.arms must map arm names to learned parameters")
    route_arms = set(getattr(spec, "arms", ()))
    unknown = sorted(set(arms) - route_arms)
    if unknown:
        raise WarmStartError(
            f"{p}: arm(s) {', '.join(unknown)} are not arms of the route "
            f"({', '.join(sorted(route_arms))})"
        )
    if spec.kind == "contextual_bandit":
        want = FeatureEncoder(spec.features).dim
        got = state.get("dim")
        if got != want:
            raise WarmStartError(
                f"{p}: fitted on {got} features (bias included), the route's features encode "
                f"to {want}: the feature layouts differ"
            )
        for a, d in arms.items():
            A, b = (
                d.get("A") if isinstance(d, dict) else None,
                d.get("b") if isinstance(d, dict) else None,
            )
            if not (
                isinstance(A, list) and len(A) == want and isinstance(b, list) and len(b) == want
            ):
                raise WarmStartError(f"{p}: state.arms.{a} needs A ({want}x{want}) and b ({want})")
    else:
        for a, d in arms.items():
            if not isinstance(d, dict) or not all(
                isinstance(d.get(k, 0.0), int | float) for k in ("n", "s", "ss")
            ):
                raise WarmStartError(f"{p}: state.arms.{a} needs numbers n, s and ss")
    return state
