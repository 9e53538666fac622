"""Feature encoding for contextual bandits: bias, one-hot categoricals, scaled numerics.

The encoder never sees a request: it asks a getter `get(source, key)` for each raw value, so the
router supplies headers, cookies, query parameters and JSON-pointer lookups, and `simulate`
supplies synthetic contexts through the very same code.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from policies.spec import Feature

__all__ = ["FeatureEncoder", "json_pointer"]

Getter = Callable[[str, str], "str | float | None"]
_MISSING = object()


_WARMUP = 20  # observations before online standardisation winsorises what it learns from


class _Running:
    """Welford running mean / variance of one numeric feature (online standardisation)."""

    __slots__ = ("m2", "mean", "n")

    def __init__(self) -> None:
        self.n = 0.0
        self.mean = 0.0
        self.m2 = 0.0

    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1.0)) if self.n > 1.0 else 0.0

    def add(self, v: float) -> None:
        self.n += 1.0
        d = v - self.mean
        self.mean += d / self.n
        self.m2 += d * (v - self.mean)


class FeatureEncoder:
    """Encodes one context as [1.0 (bias), one-hots..., numerics...] and a short label.

    Unknown or missing categorical values encode as all zeros (the bias still carries the
    baseline); missing or unparsable numerics take `default` (already on the encoded axis).
    Numerics are scaled and bounded, so one wild value cannot dominate a ridge regression:

    - with a declared `range: [low, high]`: (v - low) / (high - low), clipped to [0, 1];
    - with an explicit `scale`: v * scale, clipped to [-clip, clip];
    - otherwise standardised online, (v - mean) / sd with a running Welford mean and sd,
      clipped to [-clip, clip]; after a short warm-up the running statistics learn from the
      value winsorised to mean +- clip * sd, so an outlier barely moves them either.

    The label joins categorical values, e.g. "climate=hot,tier=gold", for per-context views;
    numerics are left out of it so the label space stays small. `layout` is a short digest of
    everything that decides what each position of the vector means; a decision made under
    another layout must not update a model built for this one.
    """

    __slots__ = ("_plan", "_running", "dim", "features", "layout", "needs_body")

    def __init__(self, features: Sequence[Feature]) -> None:
        self.features = tuple(features)
        plan: list[tuple[Feature, int, dict[str, int], int, float, float, float]] = []
        offset = 1
        running: list[_Running] = []
        shape: list[object] = []
        for f in self.features:
            if f.type == "categorical":
                plan.append(
                    (f, offset, {v: offset + i for i, v in enumerate(f.values)}, 0, 0.0, 0.0, 0.0)
                )
                offset += len(f.values)
                shape.append((f.name, f.type, f.source, f.key, tuple(f.values)))
            elif f.type == "numeric":
                rng = getattr(f, "range", None)
                clip = float(getattr(f, "clip", 4.0))
                if rng is not None:
                    low, high = float(rng[0]), float(rng[1])
                    if not high > low:
                        raise ValueError(f"feature {f.name!r}: range needs low < high")
                    plan.append((f, offset, {}, 1, low, high, clip))
                    shape.append((f.name, f.type, f.source, f.key, "range", low, high))
                elif f.scale != 1.0:
                    plan.append((f, offset, {}, 2, 0.0, 0.0, clip))
                    shape.append((f.name, f.type, f.source, f.key, "scale", f.scale, clip))
                else:
                    plan.append((f, offset, {}, 3 + len(running), 0.0, 0.0, clip))
                    running.append(_Running())
                    shape.append((f.name, f.type, f.source, f.key, "standardised", clip))
                offset += 1
            else:
                raise ValueError(f"feature {f.name!r}: unknown type {f.type!r}")
        self._plan = plan
        self._running = running
        self.dim = offset
        self.needs_body = any(f.source == "json" for f in self.features)
        self.layout = hashlib.sha256(repr((self.dim, shape)).encode()).hexdigest()[:12]

    def encode(self, get: Getter) -> tuple[np.ndarray, str | None]:
        x = np.zeros(self.dim)
        x[0] = 1.0
        parts: list[str] = []
        for f, off, index, mode, low, high, clip in self._plan:
            raw = get(f.source, f.key)
            if mode == 0:
                value = None if raw is None else _as_str(raw)
                j = index.get(value) if value is not None else None
                if j is not None:
                    x[j] = 1.0
                    parts.append(f"{f.name}={value}")
                else:
                    parts.append(f"{f.name}=?")
                continue
            v = _as_number(raw, f.scale)
            if v is None:
                x[off] = f.default
            elif mode == 1:
                x[off] = (min(max(v, low), high) - low) / (high - low)
            elif mode == 2:
                x[off] = min(max(v, -clip), clip)
            else:
                x[off] = self._standardise(self._running[mode - 3], v, clip)
        return x, (",".join(parts) if parts else None)

    @staticmethod
    def _standardise(run: _Running, v: float, clip: float) -> float:
        sd = run.sd()
        z = (v - run.mean) / sd if sd > 0.0 else 0.0
        z = min(max(z, -clip), clip)
        run.add(run.mean + z * sd if run.n >= _WARMUP and sd > 0.0 else v)
        return z

    def label_vector(self, label: str) -> np.ndarray | None:
        """The encoded vector of a categorical label ("climate=hot,tier=gold") with every
        numeric at its typical value (the running mean, mid-range, or 0), else None when the
        label does not parse under this layout."""
        values: dict[str, str] = {}
        for part in label.split(","):
            name, eq, value = part.partition("=")
            if not eq:
                return None
            values[name] = value
        x = np.zeros(self.dim)
        x[0] = 1.0
        for f, off, index, mode, _low, _high, _clip in self._plan:
            if mode == 0:
                wanted = values.get(f.name)
                if wanted is None:
                    return None
                j = index.get(wanted)
                if j is not None:
                    x[j] = 1.0
            elif mode == 1:
                x[off] = 0.5
            # scale mode: 0 is as typical as anything; standardised: the running mean is 0
        return x

    def state(self) -> dict[str, object]:
        """The online-standardisation statistics (they belong with the model they feed)."""
        return {
            "layout": self.layout,
            "running": [[r.n, r.mean, r.m2] for r in self._running],
        }

    def restore(self, state: Mapping[str, object]) -> None:
        """Load `state()`; statistics of another layout are ignored."""
        if state.get("layout") != self.layout:
            return
        rows = state.get("running")
        if not isinstance(rows, list) or len(rows) != len(self._running):
            return
        for r, row in zip(self._running, rows, strict=True):
            n, mean, m2 = (float(v) for v in row)
            if all(math.isfinite(v) for v in (n, mean, m2)) and n >= 0.0 and m2 >= 0.0:
                r.n, r.mean, r.m2 = n, mean, m2


def _as_str(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def _as_number(raw: object, scale: float) -> float | None:
    if raw is None or isinstance(raw, bool):
        return None
    try:
        v = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    v *= scale
    return v if math.isfinite(v) else None


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
