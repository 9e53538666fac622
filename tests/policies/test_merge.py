"""policies.merge: increments out, totals in, with updates racing the store call."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from policies.merge import Arrays, Merger, add


class Counts:
    """An additive object: named arrays it adds to."""

    def __init__(self) -> None:
        self.x: Arrays = {}

    def get(self) -> Arrays:
        return {k: v.copy() for k, v in self.x.items()}

    def put(self, totals: Arrays) -> None:
        self.x = {k: np.array(v, dtype=float) for k, v in totals.items()}

    def bump(self, name: str, i: int, by: float) -> None:
        arr = self.x.setdefault(name, np.zeros(3))
        arr[i] += by


def test_interleaved_flushes_add_up_exactly_and_provisional_effects_are_replaced() -> None:
    rnd = random.Random(7)
    store: Arrays = {}
    procs = [Counts() for _ in range(3)]
    mergers = [Merger(p.get, p.put) for p in procs]
    in_flight: list[tuple[int, Arrays, Any]] = []  # (process, increments, taken)
    local_total: Arrays = {}  # what every process learned by itself
    log: list[tuple[str, str, int, float]] = []  # durable rewards: (key, name, index, value)
    folded = 0
    for step in range(4000):
        j = rnd.randrange(3)
        u = rnd.random()
        name, i, by = rnd.choice("abc"), rnd.randrange(3), float(rnd.randrange(1, 5))
        if u < 0.5:
            procs[j].bump(name, i, by)
            local_total = add(local_total, {name: np.eye(3)[i] * by})
        elif u < 0.65:  # a durable reward, applied provisionally where it arrived
            key = f"r{step}"
            log.append((key, name, i, by))
            mergers[j].provisionally(key, lambda p=procs[j], n=name, k=i, b=by: p.bump(n, k, b))
        elif u < 0.85 and all(f[0] != j for f in in_flight):
            # a flush starts (one at a time per process, as an engine ticks): in flight
            inc, taken = mergers[j].take()
            in_flight.append((j, inc, taken))
        elif in_flight:  # one finishes: increments added, the pending log folded, totals back
            j, inc, taken = in_flight.pop(rnd.randrange(len(in_flight)))
            fold = [(k, n, x, b) for k, n, x, b in log[folded:]]
            folded = len(log)
            store = add(store, inc, *({n: np.eye(3)[x] * b} for _, n, x, b in fold))
            mergers[j].load(store, taken, [k for k, _, _, _ in log[:folded]])
    store = add(store, *({n: np.eye(3)[x] * b} for _, n, x, b in log[folded:]))
    for j, inc, taken in in_flight:
        store = add(store, inc)
        mergers[j].load(store, taken, [k for k, _, _, _ in log])
    for j in range(3):  # a last round: every process flushes and adopts the totals
        inc, taken = mergers[j].take()
        store = add(store, inc)
        mergers[j].load(store, taken, [k for k, _, _, _ in log])
    for j in range(3):
        inc, taken = mergers[j].take()
        assert not inc
        mergers[j].load(store, taken, [])
    want = add(local_total, *({n: np.eye(3)[x] * b} for _, n, x, b in log))
    for p in procs:
        got = p.get()
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
