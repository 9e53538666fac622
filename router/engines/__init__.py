"""Route engines by policy kind: the registry the runtime builds routes from."""

from __future__ import annotations

from router.engines.base import ActionError, Engine, EngineFactory, Services
from router.engines.learning import ENGINES as _LEARNING
from router.engines.rollout import ENGINES as _ROLLOUT
from router.engines.weighted import WeightedEngine

__all__ = ["ENGINES", "ActionError", "Engine", "EngineFactory", "Services", "engine_for"]

ENGINES: dict[str, EngineFactory] = {"weighted": WeightedEngine, **_ROLLOUT, **_LEARNING}


def engine_for(kind: str) -> EngineFactory:
    try:
        return ENGINES[kind]
    except KeyError:
        raise ValueError(f"no engine for policy kind '{kind}'") from None
