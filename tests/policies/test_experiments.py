"""A/B planning simulator: A/A false-positive rates per unit, split and base rate; power."""

from __future__ import annotations

import pytest

from policies.experiments import ABScenario, run_ab, scenario_from_mapping


def rates(sc: ABScenario) -> dict[str, float]:
    r = run_ab(sc)
    out = {f"{m['method']}{'' if m['peeking'] else '@end'}": float(m["rate"]) for m in r["methods"]}
    out["srm"] = float(r["srm_rate"])
    return out


@pytest.mark.parametrize("split", [(50.0, 50.0), (90.0, 10.0), (99.0, 1.0)])
@pytest.mark.parametrize(
    ("reward", "base"), [("binary", 0.5), ("binary", 0.05), ("binary", 0.01), ("continuous", 1.0)]
)
def test_msprt_aa_false_positives_stay_under_alpha(
    split: tuple[float, float], reward: str, base: float
) -> None:
    # issue 10 deliverable 2: continuous peeking (200 looks), any split, any base rate
    small = min(split) / sum(split)
    events = min(base, 1 - base) if reward == "binary" else 0.5
    users = int(min(max(60 / (small * events), 20000), 2_000_000))
    sc = ABScenario(
        split=split,
        base=base,
        reward=reward,
        sticky=False,
        users=users,
        looks=200,
        replications=300,
        seed=1,
    )
    r = rates(sc)
    print(split, reward, base, "A/A msprt", r["msprt"], "z peeking", r["z_test"])
    assert r["msprt"] <= 0.05
    assert r["z_test"] > 0.2  # naive peeking at a fixed-horizon test inflates a lot


@pytest.mark.parametrize("requests", ["fixed", "pareto"])
def test_sticky_aa_is_nominal_per_user_and_not_per_request(requests: str) -> None:
    # issue 10 item 2: 5,000 users x 10 requests, users differ; per-request analysis flagged SRM
    # in 31% of runs (heavy tails 70%) and z false positives 0.15 (0.48)
    base = {"users": 5000, "requests": requests, "requests_mean": 10.0, "user_sd": 1.0}
    per_user = rates(ABScenario(**base, replications=150, seed=2))  # type: ignore[arg-type]
    per_request = rates(
        ABScenario(**base, unit="request", replications=150, seed=2)  # type: ignore[arg-type]
    )
    print(requests, "per user:", per_user, "per request:", per_request)
    assert per_user["srm"] <= 0.02 and per_user["z_test@end"] <= 0.09
    assert per_user["msprt"] <= 0.05
    assert per_request["srm"] > 0.15 and per_request["z_test@end"] > 0.09


def test_power_and_time_to_decision() -> None:
    r = run_ab(
        ABScenario(
            split=(50, 50),
            base=0.05,
            effect=0.2,
            sticky=False,
            users=20000,
            replications=100,
            seed=3,
        )
    )
    m = {(x["method"], x["peeking"]): x for x in r["methods"]}
    print("power at +20%:", {k: v["rate"] for k, v in m.items()})
    assert m[("z_test", False)]["rate"] > 0.75
    assert m[("msprt", True)]["rate"] > 0.4
    t = m[("msprt", True)]["median_requests_to_decision"]
    assert t is not None and t < 20000


def test_three_arms_are_holm_corrected() -> None:
    r = rates(
        ABScenario(
            split=(1, 1, 1, 1), base=0.1, sticky=False, users=30000, replications=200, seed=4
        )
    )
    print("A/A with 4 arms:", r)
    assert r["z_test@end"] <= 0.07 and r["msprt"] <= 0.05


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"split": [1]}, "split: at least two"),
        ({"base": 1.5}, "base: a binary rate"),
        ({"requests": "zipf"}, "requests: one of"),
        ({"users": 0}, "users: must be >= 1"),
        ({"users": "many"}, "scenario.users: bad value"),
        ({"bogus": 1}, "scenario.bogus: unknown key"),
        ({"reward": "ordinal"}, "reward: binary or continuous"),
    ],
)
def test_bad_scenarios(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scenario_from_mapping(mapping)
