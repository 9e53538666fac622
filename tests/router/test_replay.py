"""`modelrouter replay`: candidates on a decision log written by the real writer, fit, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policies import ope
from policies.logsim import context_feature, generate_log, true_value
from policies.simulate import make_env
from router.cli import main
from router.decisionlog import DecisionLogWriter, layout_of

CLIMATE = make_env(
    {
        "type": "table",
        "contexts": {"hot": 0.5, "cold": 0.3, "mild": 0.2},
        "means": {
            "hot": {"a": 0.7, "b": 0.4, "c": 0.5},
            "cold": {"a": 0.3, "b": 0.6, "c": 0.5},
            "mild": {"a": 0.5, "b": 0.5, "c": 0.6},
        },
    }
)
FEATURES = [{"name": "ctx", "from": "header:x-ctx", "type": "categorical",
             "values": ["hot", "cold", "mild"]}]  # fmt: skip


def _write_log(path: Path, logger: str, n: int, seed: int, unrewarded: int = 0) -> None:
    sim = generate_log(CLIMATE, logger, n, seed)
    w = DecisionLogWriter(path)
    version = w.register_policy(
        "clf",
        {"kind": "contextual_bandit", "algorithm": logger, "arms": list(CLIMATE.arms),
         "reward_type": "binary", "missing_reward": None},
    )  # fmt: skip
    layout = w.register_layout(layout_of((context_feature(CLIMATE),)))
    layout_doc = layout_of((context_feature(CLIMATE),))
    assert layout_doc["features"][0]["from"] == "header:x-ctx"
    w.start()
    d = sim.data
    rewards = []
    for i in range(d.n):
        arm = d.arms[d.action[i]]
        x = d.context[i]
        w.decision(1000.0 + i, "clf", f"t{i}", arm, float(d.pscore[i]), version, layout, x,
                   None, None)  # fmt: skip
        if i >= unrewarded:
            rewards.append({"t": 2000.0 + i, "route": "clf", "id": f"t{i}",
                            "reward": float(d.reward[i]), "arm": arm,
                            "propensity": float(d.pscore[i]), "features": x.tolist(),
                            "decided_at": 1000.0 + i, "layout": layout})  # fmt: skip
    w.rewards(rewards)
    w.close()


def _candidate(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def _truth_fixed(arm: str) -> float:
    return true_value(CLIMATE, lambda x: ope.fixed_dist(CLIMATE.arms, {arm: 1.0}, x.shape[0]))


def test_replay_fixed_arm_and_learning_candidate_on_a_uniform_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "decisions.jsonl"
    _write_log(log, "uniform", 6000, seed=1, unrewarded=100)
    fixed = _candidate(tmp_path / "fixed-b.json",
                       {"policy": {"kind": "weighted", "weights": {"b": 100}}})  # fmt: skip
    learner = _candidate(
        tmp_path / "learner.yaml",
        {"policy": {"kind": "contextual_bandit", "arms": ["a", "b", "c"],
                    "algorithm": "epsilon_greedy", "features": FEATURES}},
    )  # fmt: skip
    code = main(["replay", str(log), "--policy", fixed, "--policy", learner, "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["log"]["rounds"] == 5900 and doc["log"]["unrewarded"] == 100
    assert doc["log"]["uniform"] is True
    fixed_res, learn_res = doc["candidates"]
    assert fixed_res["recommended"] == "dr"
    dr = fixed_res["estimates"]["dr"]
    truth = _truth_fixed("b")
    lo, hi = dr["ci_low"], dr["ci_high"]
    print(f"fixed b: truth {truth:.3f}, DR {dr['value']:.3f} [{lo:.3f}, {hi:.3f}]")
    assert dr["ci_low"] <= truth <= dr["ci_high"]
    assert learn_res["mode"] == "learning" and learn_res["recommended"] == "replay"
    rep = learn_res["estimates"]["replay"]
    # a contextual learner beats every fixed arm: best per context is 0.7/0.6/0.6 -> 0.65
    assert rep["value"] > 0.55 and rep["valid"]
    code = main(["replay", str(log), "--policy", fixed, "--policy", learner])
    text = capsys.readouterr().out
    assert code == 0
    assert "observed reward of the logging policy" in text
    assert "dr *" in text and "replay *" in text and "uniform" in text


def test_fit_writes_a_warm_start_that_replay_evaluates_on_held_out_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "decisions.jsonl"
    _write_log(log, "epsilon_greedy", 5000, seed=2)
    out = tmp_path / "fitted.json"
    code = main(["replay", str(log), "--fit", str(out), "--holdout", "0.4", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    fitted = json.loads(out.read_text())
    assert fitted["format"] == "modelrouter-policy/1"
    assert fitted["policy"]["kind"] == "contextual_bandit"
    assert fitted["policy"]["features"] == FEATURES
    assert set(fitted["state"]["arms"]) == {"a", "b", "c"} and fitted["state"]["dim"] == 4
    assert doc["log"]["rounds"] == 2000
    res = doc["candidates"][0]
    assert res["mode"] == "frozen" and res["recommended"] == "dr"
    # the fitted lin_ts policy must beat the best fixed arm (a: 0.54) on rounds it never saw
    assert res["estimates"]["dr"]["value"] > 0.58
    # and the same file is a --policy input on its own
    assert main(["replay", str(log), "--policy", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"][0]["name"] == "fitted"


def test_export_npz_and_vw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "decisions.jsonl"
    _write_log(log, "thompson", 300, seed=3)
    fixed = _candidate(tmp_path / "c.json", {"policy": {"kind": "weighted", "weights": {"c": 1}}})
    npz = tmp_path / "log.npz"
    assert main(["replay", str(log), "--export", str(npz), "--policy", fixed, "--json"]) == 0
    capsys.readouterr()
    with np.load(npz) as z:
        b = dict(z)
    assert b["n_rounds"] == 300 and b["n_actions"] == 3
    assert b["context"].shape == (300, 4) and b["action_dist"].shape == (300, 3, 1)
    assert b["arms"].tolist() == ["a", "b", "c"] and b["position"].sum() == 0
    assert np.all((b["pscore"] > 0) & (b["pscore"] <= 1))
    assert b["feature_names"].tolist() == ["bias", "ctx=hot", "ctx=cold", "ctx=mild"]
    vw = tmp_path / "log.vw"
    assert main(["replay", str(log), "--export", str(vw)]) == 0
    lines = vw.read_text().splitlines()
    assert len(lines) == 300
    head, feats = lines[0].split(" | ")
    action, cost, prob = head.split(":")
    assert int(action) - 1 == int(b["action"][0]) and float(cost) == -b["reward"][0]
    assert float(prob) == pytest.approx(b["pscore"][0], rel=1e-5)
    assert feats.startswith("ctx=")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "{missing}"], "cannot read"),
        (["--policy", "{bad_kind}"], "policy.kind"),
        (["--policy", "{other_arm}"], r"arm\(s\) \['zz'\] never appear in the log"),
        (["--policy", "{wrong_dim}"], "feature layouts differ"),
        ([], "nothing to do"),
        (["--export", "x.csv"], "must end in .npz or .vw"),
        (["--route", "nope", "--export", "x.npz"], "route 'nope' has no decisions"),
    ],
)
def test_bad_input_gives_exit_2_and_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    log = tmp_path / "decisions.jsonl"
    _write_log(log, "uniform", 50, seed=4)
    files = {
        "missing": str(tmp_path / "nope.yaml"),
        "bad_kind": _candidate(tmp_path / "k.json", {"policy": {"kind": "roulette"}}),
        "other_arm": _candidate(tmp_path / "o.json",
                                {"policy": {"kind": "weighted", "weights": {"zz": 1}}}),
        "wrong_dim": _candidate(
            tmp_path / "d.json",
            {"policy": {"kind": "contextual_bandit", "arms": ["a", "b"],
                        "features": [dict(FEATURES[0], values=["hot"])]},
             "learn": False},
        ),
    }  # fmt: skip
    argv = ["replay", str(log), *(a.format(**files) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelrouter replay: ") or "policy" in err
    assert __import__("re").search(message, err), err


@pytest.mark.parametrize(
    "block",
    [
        {"kind": "weighted", "weights": {"a": 70, "b": 30}},
        {"kind": "bandit", "arms": ["a", "b"], "algorithm": "epsilon_greedy",
         "params": {"epsilon": 0.2}, "min_share": 0.05, "discount": 0.99,
         "reward": {"type": "continuous"}},
        {"kind": "contextual_bandit", "arms": ["a", "b", "c"], "algorithm": "lin_ts",
         "params": {"alpha": 0.5}, "features": [*FEATURES,
         {"name": "age", "from": "json:/age", "type": "numeric", "scale": 0.1}]},
        {"kind": "ab_test", "arms": {"control": "a", "treatment": "b"},
         "split": {"control": 50, "treatment": 50}, "test": {"method": "z_test"}},
    ],
)  # fmt: skip
def test_policy_block_reads_back_as_the_same_spec(block: dict) -> None:
    from router.config import parse_policy
    from router.decisionlog import policy_block

    spec = parse_policy(block)
    assert parse_policy(policy_block(spec)) == spec


def test_a_fitted_file_is_a_valid_warm_start_and_mismatches_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from policies.contextual import LinearPolicy
    from router.config import parse_policy
    from router.warmstart import WarmStartError, load_warm_start

    log = tmp_path / "decisions.jsonl"
    _write_log(log, "uniform", 600, seed=5)
    out = tmp_path / "fitted.json"
    assert main(["replay", str(log), "--fit", str(out)]) == 0
    capsys.readouterr()
    spec = parse_policy(json.loads(out.read_text())["policy"])
    state = load_warm_start(out, spec)
    policy = LinearPolicy(spec.arms, "lin_ts", dim=4, rng=np.random.default_rng(0))
    policy.restore(state)
    assert policy.stats()["a"].rewards > 100  # it starts from the log, not from zero
    hot = np.array([1.0, 1.0, 0.0, 0.0])
    assert policy.predict(hot)["a"] > policy.predict(hot)["b"]  # a is best when hot
    other = parse_policy({"kind": "contextual_bandit", "arms": ["a", "b", "c"],
                          "features": [dict(FEATURES[0], values=["hot", "cold"])]})  # fmt: skip
    with pytest.raises(WarmStartError, match=r"fitted on 4 features .* encode to 3"):
        load_warm_start(out, other)
    two = parse_policy({"kind": "contextual_bandit", "arms": ["a", "b"], "features": FEATURES})
    with pytest.raises(WarmStartError, match=r"arm\(s\) c are not arms of the route"):
        load_warm_start(out, two)
    bandit = parse_policy({"kind": "bandit", "arms": ["a", "b", "c"]})
    with pytest.raises(WarmStartError, match="holds a contextual_bandit policy"):
        load_warm_start(out, bandit)
    with pytest.raises(WarmStartError, match="cannot read"):
        load_warm_start(tmp_path / "nope.json", bandit)
