"""Feature encoding for contextual bandits: bias, one-hot categoricals, scaled numerics.

The encoder never sees a request: it asks a getter `get(source, key)` for each raw value, so the
router supplies headers, cookies, query parameters and JSON-pointer lookups, and `simulate`
supplies synthetic contexts through the very same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policies.spec import Feature

__all__ = ["FeatureEncoder", "json_pointer"]

Getter = Callable[[str, str], "str | float | None"]
_MISSING = object()


class FeatureEncoder:
    """Encodes one context as [1.0 (bias), one-hots..., numerics...] and a short label.

    Unknown or missing categorical values encode as all zeros (the bias still carries the
    baseline); missing or unparsable numerics take `default` (already on the scaled axis).
    The label joins categorical values, e.g. "climate=hot,tier=gold", for per-context regret;
    numerics are left out of it so the label space stays small.
    """

    __slots__ = ("_plan", "dim", "features", "needs_body")

    def __init__(self, features: Sequence[Feature]) -> None:
        self.features = tuple(features)
        plan: list[tuple[Feature, int, dict[str, int]]] = []
        offset = 1
        for f in self.features:
            if f.type == "categorical":
                plan.append((f, offset, {v: offset + i for i, v in enumerate(f.values)}))
                offset += len(f.values)
            elif f.type == "numeric":
                plan.append((f, offset, {}))
                offset += 1
            else:
                raise ValueError(f"feature {f.name!r}: unknown type {f.type!r}")
        self._plan = plan
        self.dim = offset
        self.needs_body = any(f.source == "json" for f in self.features)

    def encode(self, get: Getter) -> tuple[np.ndarray, str | None]:
        x = np.zeros(self.dim)
        x[0] = 1.0
        parts: list[str] = []
        for f, off, index in self._plan:
            raw = get(f.source, f.key)
            if f.type == "categorical":
                value = None if raw is None else _as_str(raw)
                j = index.get(value) if value is not None else None
                if j is not None:
                    x[j] = 1.0
                    parts.append(f"{f.name}={value}")
                else:
                    parts.append(f"{f.name}=?")
            else:
                x[off] = _as_number(raw, f.scale, f.default)
        return x, (",".join(parts) if parts else None)


def _as_str(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def _as_number(raw: object, scale: float, default: float) -> float:
    if raw is None or isinstance(raw, bool):
        return default
    try:
        v = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return v * scale if math.isfinite(v) else default


def json_pointer(doc: Any, pointer: str) -> Any:
    """Resolve an RFC 6901 JSON pointer in a parsed document; None when it does not resolve."""
    if pointer == "":
        return doc
    if not pointer.startswith("/"):
        return None
    cur = doc
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, dict):
            cur = cur.get(token, _MISSING)
            if cur is _MISSING:
                return None
        elif isinstance(cur, list):
            if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
                return None
            i = int(token)
            if i >= len(cur):
                return None
            cur = cur[i]
        else:
            return None
    return cur
