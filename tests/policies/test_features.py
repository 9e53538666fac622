"""Feature encoding and JSON pointers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from policies.features import FeatureEncoder, json_pointer


@dataclass(frozen=True)
class F:
    name: str
    source: str
    key: str
    type: str
    values: tuple[str, ...] = ()
    scale: float = 1.0
    default: float = 0.0


FEATURES = (
    F("climate", "header", "x-climate", "categorical", ("hot", "cold", "mild")),
    F("age", "json", "/instances/0/age", "numeric", scale=0.01, default=0.3),
    F("tier", "query", "tier", "categorical", ("free", "gold")),
)


def test_encode_layout_and_label() -> None:
    enc = FeatureEncoder(FEATURES)
    assert enc.dim == 1 + 3 + 1 + 2
    assert enc.needs_body
    raw = {
        ("header", "x-climate"): "cold",
        ("json", "/instances/0/age"): 42,
        ("query", "tier"): "gold",
    }
    x, label = enc.encode(lambda s, k: raw.get((s, k)))
    assert x.tolist() == [1.0, 0.0, 1.0, 0.0, 0.42, 0.0, 1.0]
    assert label == "climate=cold,tier=gold"


def test_missing_and_unknown_values() -> None:
    enc = FeatureEncoder(FEATURES)
    raw = {("header", "x-climate"): "arctic", ("json", "/instances/0/age"): "n/a"}
    x, label = enc.encode(lambda s, k: raw.get((s, k)))
    assert x.tolist() == [1.0, 0.0, 0.0, 0.0, 0.3, 0.0, 0.0]
    assert label == "climate=?,tier=?"
    x, _ = enc.encode(lambda s, k: float("nan") if s == "json" else None)
    assert x[4] == 0.3


def test_no_features_is_bias_only() -> None:
    enc = FeatureEncoder(())
    x, label = enc.encode(lambda s, k: None)
    assert x.tolist() == [1.0] and label is None and not enc.needs_body
    with pytest.raises(ValueError, match="unknown type"):
        FeatureEncoder((F("x", "header", "x", "ordinal"),))


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", {"a/b": 1, "m~n": 2, "l": [10, 20], "o": {"k": None}}),
        ("/a~1b", 1),
        ("/m~0n", 2),
        ("/l/1", 20),
        ("/l/2", None),
        ("/l/01", None),
        ("/l/-", None),
        ("/o/k", None),
        ("/missing", None),
        ("no-slash", None),
        ("/a~1b/deeper", None),
    ],
)
def test_json_pointer(pointer: str, expected: object) -> None:
    doc = {"a/b": 1, "m~n": 2, "l": [10, 20], "o": {"k": None}}
    assert json_pointer(doc, pointer) == expected


def test_encoded_vector_dtype() -> None:
    x, _ = FeatureEncoder(FEATURES).encode(lambda s, k: None)
    assert x.dtype == np.float64
