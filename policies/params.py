"""Parameter declarations: each algorithm, check kind and store kind states its parameters once.

A `Param` (name, type, default, bounds, help) sits next to the implementation that reads it. The
config validator (`router/config`), the spec literals and the generated README reference all
read these declarations, so adding an algorithm or a check kind touches its own module and its
test only. Pure data: no I/O, no `router` imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["Algorithm", "Param", "ParamType", "param_values"]

ParamType = Literal["number", "duration", "string", "http_url", "statuses"]
_F = TypeVar("_F")


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: how the validator reads it and how the reference documents it.

    Bounds: ``min``/``max`` inclusive, ``gt`` exclusive. ``default`` None means absent (off);
    ``required`` params have no default. ``reward`` limits the param to one reward type.
    ``pattern``/``what`` constrain a string (``what`` names the expected form in errors);
    ``example`` is shown when a required value is missing; ``doc_type`` overrides the type
    shown in the reference.
    """

    name: str
    help: str
    type: ParamType = "number"
    default: float | str | None = None
    required: bool = False
    min: float | None = None
    gt: float | None = None
    max: float | None = None
    reward: Literal["binary", "continuous"] | None = None
    pattern: str | None = None
    what: str = ""
    example: str = ""
    doc_type: str = ""

    @property
    def shown_type(self) -> str:
        shown = {"http_url": "http URL", "statuses": "list of status codes"}
        return self.doc_type or shown.get(self.type, self.type)


@dataclass(frozen=True, slots=True)
class Algorithm(Generic[_F]):
    """A learning algorithm: its implementation (``make``) and the parameters it reads."""

    make: _F
    params: tuple[Param, ...] = ()
    help: str = ""

    def params_for(self, reward_type: str) -> tuple[Param, ...]:
        """The parameters accepted with ``reward_type`` rewards."""
        return tuple(p for p in self.params if p.reward in (None, reward_type))

    @property
    def reward_dependent(self) -> bool:
        return any(p.reward is not None for p in self.params)


def param_values(declared: Sequence[Param], given: Mapping[str, float]) -> dict[str, float]:
    """The numeric parameters an implementation runs with: ``given`` over the declared defaults."""
    out = {p.name: float(p.default) for p in declared if isinstance(p.default, int | float)}
    out.update((k, float(v)) for k, v in given.items())
    return out
