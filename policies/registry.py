"""Build the stateful policy object for a policy spec: the same objects serve traffic and simulate.

Specs are the frozen dataclasses of `policies.spec`, the same ones the config loader produces.
Kinds are looked up in `BUILDERS`, a dict, so adding one is a single entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from policies.abtest import ABTestPolicy
from policies.bandits import BanditPolicy
from policies.base import LearningPolicy
from policies.contextual import LinearPolicy
from policies.features import FeatureEncoder

__all__ = ["BUILDERS", "Builder", "build_encoder", "build_policy"]

# (spec, rng, feature dimension override) -> policy. A spec is one of policies.spec's learning
# specs, or anything with the same fields (each builder reads only those of its kind)
Builder = Callable[[Any, np.random.Generator, int | None], LearningPolicy]


def _bandit(spec: Any, rng: np.random.Generator, dim: int | None) -> BanditPolicy:
    return BanditPolicy(
        spec.arms,
        spec.algorithm,
        rng=rng,
        reward_type=spec.reward.type,
        params=spec.params,
        min_share=spec.min_share,
        discount=spec.discount,
    )


def _contextual(spec: Any, rng: np.random.Generator, dim: int | None) -> LinearPolicy:
    d = dim if dim is not None else FeatureEncoder(spec.features).dim
    return LinearPolicy(spec.arms, spec.algorithm, dim=d, rng=rng, params=spec.params)


def _ab(spec: Any, rng: np.random.Generator, dim: int | None) -> ABTestPolicy:
    return ABTestPolicy(
        {a: spec.split.get(a, 0.0) for a in spec.arms},
        rng=rng,
        reward_type=spec.reward.type,
        method=spec.test.method,
        alpha=spec.test.alpha,
        min_samples=spec.test.min_samples,
        mixing_sd=spec.test.mixing_sd,
        conclude=spec.conclude,
        sticky=getattr(spec, "sticky", False),
        guardrails=getattr(spec, "guardrails", ()),
    )


BUILDERS: dict[str, Builder] = {
    "bandit": _bandit,
    "contextual_bandit": _contextual,
    "ab_test": _ab,
}


def build_policy(spec: Any, rng: np.random.Generator, dim: int | None = None) -> LearningPolicy:
    """A fresh learning policy for `spec` (kinds: bandit, contextual_bandit, ab_test).

    `dim` overrides the feature dimension of a contextual policy (the `linear` simulation
    environment supplies raw feature vectors instead of encoded request features).
    """
    builder = BUILDERS.get(spec.kind)
    if builder is None:
        raise ValueError(f"no learning policy for kind {spec.kind!r}; one of {sorted(BUILDERS)}")
    return builder(spec, rng, dim)


def build_encoder(spec: Any) -> FeatureEncoder | None:
    """The feature encoder of a contextual spec, else None."""
    if spec.kind != "contextual_bandit":
        return None
    return FeatureEncoder(spec.features)
