"""Learning-policy benchmarks: choose latency, throughput, regret and A/A peeking (issue 4).

    .venv/bin/python bench/policies.py            # full: T=100000 x 20 seeds, 1000 A/A runs
    .venv/bin/python bench/policies.py --quick    # minutes -> seconds, same tables

Anchors are the figures quoted in the issue (MABWiser, plain numpy, Vowpal Wabbit).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from policies import simulate as sim
from policies.abtest import ABTestPolicy
from policies.bandits import BanditPolicy
from policies.base import Context
from policies.contextual import LinearPolicy
from policies.stats import Welford

BERNOULLI = {"a": 0.05, "b": 0.04, "c": 0.045, "d": 0.03}
ANCHORS = {
    "thompson": "MABWiser 81.4 ± 7.7, numpy TS 93.2; target ≤ 85",
    "kl_ucb": "170.6",
    "ucb1": "577",
    "epsilon_greedy": "109.9 (ε=0.1)",
    "softmax": "-",
}
LIN_ANCHORS = {
    "linucb": "MABWiser 67.7; target ≤ 68",
    # MABWiser 2.7.4 deep-copies one generator into every arm, so all arms draw the same normal
    # vector each round (common random numbers: far less exploration). Rerun here: 92.0 as
    # shipped, 212.6 with one generator per arm, the textbook LinTS that lin_ts implements.
    "lin_ts": "MABWiser 90.1 (shared draws); 212.6 independent",
}
AA_ANCHORS = {"z_test": "0.38", "bayesian": "0.59", "msprt": "0.021; must be ≤ α"}


@dataclass(frozen=True)
class _Reward:
    type: str = "binary"


@dataclass(frozen=True)
class _Spec:
    arms: tuple[str, ...]
    algorithm: str
    params: dict[str, float] = field(default_factory=dict)
    reward: _Reward = field(default_factory=_Reward)
    min_share: float = 0.0
    discount: float = 1.0
    kind: str = "bandit"


def _pcts(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


def bench_choose(n: int) -> None:
    print("## choose latency (µs) and choose+update throughput\n")
    print(f"{'policy':<26} {'p50':>7} {'p99':>7} {'choose+update/s':>16}")
    clock = time.perf_counter_ns
    for k in (2, 4):
        arms = [f"arm{i}" for i in range(k)]
        for algo, params in (
            ("thompson", {}),
            ("ucb1", {}),
            ("kl_ucb", {}),
            ("epsilon_greedy", {"epsilon": 0.1}),
            ("softmax", {"temperature": 0.1}),
        ):
            p = BanditPolicy(arms, algo, rng=np.random.default_rng(0), params=params)
            env = np.random.default_rng(1)
            for _ in range(2000):  # warm: realistic posteriors, not the cold start
                a = p.choose().arm
                p.update(a, float(env.random() < 0.05))
            ctx = Context()
            lat = []
            for _ in range(n):
                t0 = clock()
                p.choose(ctx)
                lat.append((clock() - t0) / 1000)
            u = env.random(n).tolist()
            t0 = clock()
            for i in range(n):
                a = p.choose(ctx).arm
                p.update(a, 1.0 if u[i] < 0.05 else 0.0)
            rate = n / ((clock() - t0) / 1e9)
            p50, p99 = _pcts(lat)
            print(f"{algo + f' ({k} arms)':<26} {p50:>7.1f} {p99:>7.1f} {rate:>16,.0f}")
    d = 10
    for algo in ("linucb", "lin_ts", "epsilon_greedy"):
        lp = LinearPolicy([f"arm{i}" for i in range(4)], algo, dim=d, rng=np.random.default_rng(0))
        g = np.random.default_rng(2)
        xs = [Context(features=g.normal(size=d)) for _ in range(256)]
        for i in range(2000):
            c = xs[i % 256]
            lp.update(lp.choose(c).arm, float(g.normal()), c)
        lat = []
        for i in range(n):
            c = xs[i % 256]
            t0 = clock()
            lp.choose(c)
            lat.append((clock() - t0) / 1000)
        t0 = clock()
        for i in range(n):
            c = xs[i % 256]
            lp.update(lp.choose(c).arm, 0.5, c)
        rate = n / ((clock() - t0) / 1e9)
        p50, p99 = _pcts(lat)
        print(f"{algo + ' (d=10, 4 arms)':<26} {p50:>7.1f} {p99:>7.1f} {rate:>16,.0f}")
    print()


def _bernoulli_one(args: tuple[str, dict[str, float], int, int]) -> float:
    algo, params, horizon, seed = args
    spec = _Spec(tuple(BERNOULLI), algo, params)
    return sim.run(spec, sim.BernoulliEnv(BERNOULLI), horizon, [seed], n_checkpoints=2).regret[0]


def bench_bernoulli(horizon: int, seeds: int, pool: ProcessPoolExecutor) -> None:
    print(f"## Bernoulli regret, p={list(BERNOULLI.values())}, T={horizon}, {seeds} seeds\n")
    from policies.stats import lai_robbins

    bound = lai_robbins(list(BERNOULLI.values()), horizon)
    print(f"Lai–Robbins c·ln T = {bound:.1f} (asymptotic; finite-T regret may be below it)\n")
    print(f"{'algorithm':<16} {'regret mean':>12} {'± sd':>8} {'± se':>7}   anchor (T=100000)")
    for algo, params in (
        ("thompson", {}),
        ("kl_ucb", {}),
        ("ucb1", {}),
        ("epsilon_greedy", {"epsilon": 0.1}),
        ("softmax", {"temperature": 0.01}),
    ):
        regs = list(pool.map(_bernoulli_one, [(algo, params, horizon, s) for s in range(seeds)]))
        sd = statistics.stdev(regs) if len(regs) > 1 else 0.0
        se = sd / math.sqrt(len(regs))
        print(f"{algo:<16} {statistics.mean(regs):>12.1f} {sd:>8.1f} {se:>7.1f}   {ANCHORS[algo]}")
    print()


def _linear_one(args: tuple[str, dict[str, float], int, int]) -> float:
    algo, params, horizon, seed = args
    g = np.random.default_rng(1000 + seed)
    theta = g.normal(size=(4, 10)) / math.sqrt(10)
    arms = ["a", "b", "c", "d"]
    p = LinearPolicy(arms, algo, dim=10, rng=np.random.default_rng(seed), params=params)
    regret = 0.0
    for t in range(horizon):
        x = g.normal(size=10)
        ctx = Context(features=x)
        mu = theta @ x
        i = t if t < 4 else arms.index(p.choose(ctx).arm)  # first 4 rounds round-robin
        regret += float(mu.max() - mu[i])
        p.update(arms[i], float(mu[i] + g.normal(0.0, 0.5)), ctx)
    return regret


def bench_linear(horizon: int, seeds: int, pool: ProcessPoolExecutor) -> None:
    print(f"## Linear contextual regret, 4 arms, d=10, T={horizon}, seeds 0-{seeds - 1}\n")
    print(f"{'algorithm':<24} {'regret mean':>12} {'± sd':>8}   anchor (T=20000)")
    for name, algo, params in (
        ("linucb (α=1, λ=1)", "linucb", {"alpha": 1.0, "lambda": 1.0}),
        ("lin_ts (α=1)", "lin_ts", {"alpha": 1.0}),
        ("lin_ts (α=0.5)", "lin_ts", {"alpha": 0.5}),
        ("lin_ts (α=0.25)", "lin_ts", {"alpha": 0.25}),
    ):
        regs = list(pool.map(_linear_one, [(algo, params, horizon, s) for s in range(seeds)]))
        sd = statistics.stdev(regs) if len(regs) > 1 else 0.0
        print(f"{name:<24} {statistics.mean(regs):>12.1f} {sd:>8.1f}   {LIN_ANCHORS[algo]}")
    print()


def _aa_one(args: tuple[str, int, int, int, int]) -> int:
    """How many of `reps` A/A tests (Bernoulli 0.1) a method decides while peeking."""
    method, reps, looks, step, seed = args
    g = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        p = ABTestPolicy(
            {"A": 1, "B": 1},
            rng=np.random.default_rng(int(g.integers(1 << 31))),
            method=method,
            min_samples=1,
        )
        sa = sb = 0
        for k in range(1, looks + 1):
            sa += int(g.binomial(step, 0.1))
            sb += int(g.binomial(step, 0.1))
            n = k * step
            # 0/1 rewards: n observations with `s` ones have mean s/n and M2 s - s^2/n
            for arm, s in (("A", sa), ("B", sb)):
                p._obs[arm].all = Welford(n, s / n, s - s * s / n)
            if p.result()["decided"]:
                hits += 1
                break
    return hits


def bench_aa(reps: int, pool: ProcessPoolExecutor, jobs: int) -> None:
    step, upto = 200, 20000
    looks = upto // step
    print(
        f"## A/A false positives, α=0.05, Bernoulli(0.1), a look every {step} users per arm "
        f"up to {upto}\n"
    )
    print(f"{'method':<20} {'runs':>6} {'false positive rate':>20}   anchor")
    for method, label, n in (
        ("z_test", "naive z (peeking)", reps),
        ("bayesian", "bayesian > 0.95", max(reps // 5, 20)),
        ("msprt", "msprt", reps),
    ):
        chunks = [
            (method, n // jobs + (1 if i < n % jobs else 0), looks, step, 7 + i)
            for i in range(jobs)
        ]
        hits = sum(pool.map(_aa_one, chunks))
        print(f"{label:<20} {n:>6} {hits / n:>20.3f}   {AA_ANCHORS[method]}")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller horizons, fewer seeds and runs")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", choices=("choose", "bernoulli", "linear", "aa"), action="append")
    args = ap.parse_args(argv)
    q = args.quick
    only = set(args.only or ("choose", "bernoulli", "linear", "aa"))
    started = time.perf_counter()
    print(
        f"# bench/policies.py {'(quick)' if q else '(full)'} — python {sys.version.split()[0]}, "
        f"numpy {np.__version__}, {args.jobs} worker process(es)\n"
    )
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        if "choose" in only:
            bench_choose(5000 if q else 50000)
        if "bernoulli" in only:
            bench_bernoulli(20000 if q else 100000, 4 if q else 20, pool)
        if "linear" in only:
            bench_linear(5000 if q else 20000, 5, pool)
        if "aa" in only:
            bench_aa(200 if q else 1000, pool, args.jobs)
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
