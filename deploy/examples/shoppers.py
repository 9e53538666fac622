"""Simulated shoppers for the decision-log walkthrough: requests, then rewards, known truth.

    python deploy/examples/shoppers.py [--n 3000] [--router http://127.0.0.1:8080] [--seed 1]

Each shopper has a climate (hot 40%, cold 35%, mild 25%), asks the clothing route, and buys
(reward 1) with the probability below for the model that answered; 10% never report back.
Standard library only; talks to 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import argparse
import json
import random
import urllib.request

CLIMATES = {"hot": 0.40, "cold": 0.35, "mild": 0.25}
BUY = {
    "hot": {"summer_model": 0.70, "winter_model": 0.10, "allround_model": 0.40},
    "cold": {"summer_model": 0.10, "winter_model": 0.60, "allround_model": 0.40},
    "mild": {"summer_model": 0.30, "winter_model": 0.30, "allround_model": 0.50},
}


def truth(weights: dict[str, float]) -> float:
    """Expected purchase rate of always choosing models in these proportions."""
    total = sum(weights.values())
    return sum(
        p * sum(BUY[c][m] * w / total for m, w in weights.items()) for c, p in CLIMATES.items()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--router", default="http://127.0.0.1:8080")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    batch: list[dict[str, object]] = []
    accepted = 0

    def flush() -> None:
        nonlocal accepted, batch
        if batch:
            req = urllib.request.Request(
                a.router + "/_modelrouter/feedback",
                data=json.dumps({"feedback": batch}).encode(),
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                accepted += json.load(resp)["accepted"]
            batch = []

    for _ in range(a.n):
        climate = rng.choices(list(CLIMATES), list(CLIMATES.values()))[0]
        req = urllib.request.Request(
            a.router + "/v1/models/clothing:predict",
            data=b'{"instances": [{"user": "u"}]}',
            headers={"x-climate": climate, "content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            model = resp.headers["x-modelrouter-backend"]
            token = resp.headers["x-modelrouter-decision"]
        if rng.random() < 0.10:
            continue  # this shopper never reports back
        batch.append({"decision": token, "reward": 1 if rng.random() < BUY[climate][model] else 0})
        if len(batch) == 100:
            flush()
    flush()
    print(f"{a.n} requests, {accepted} rewards accepted")
    print(
        "true purchase rate of each fixed model: "
        + ", ".join(f"{m} {truth({m: 1.0}):.3f}" for m in BUY["hot"])
    )
    print(
        f"best model per climate (the most any policy can get): "
        f"{sum(p * max(BUY[c].values()) for c, p in CLIMATES.items()):.3f}"
    )


if __name__ == "__main__":
    main()
