"""Route engines by policy kind: the registry the runtime builds routes from."""

from __future__ import annotations

from router.engines.base import ActionError, Engine, EngineFactory, Services

__all__ = ["ENGINES", "ActionError", "Engine", "EngineFactory", "Services", "engine_for"]


def _registry() -> dict[str, EngineFactory]:
    from router.engines.weighted import WeightedEngine

    engines: dict[str, EngineFactory] = {"weighted": WeightedEngine}
    try:
        from router.engines.rollout import ENGINES as rollout
    except ImportError:  # pragma: no cover - while the module is being written
        rollout = {}
    try:
        from router.engines.learning import ENGINES as learning
    except ImportError:  # pragma: no cover
        learning = {}
    engines.update(rollout)
    engines.update(learning)
    return engines


ENGINES: dict[str, EngineFactory] = {}


def engine_for(kind: str) -> EngineFactory:
    if not ENGINES:
        ENGINES.update(_registry())
    try:
        return ENGINES[kind]
    except KeyError:
        raise ValueError(f"no engine for policy kind '{kind}'") from None
