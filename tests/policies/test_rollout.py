"""The pure rollout step: every transition and every inconclusive case, with a fake clock."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

from policies import rollout
from policies.rollout import (
    ArmObs,
    EventKind,
    Observations,
    Phase,
    PromResult,
    RolloutState,
    TransitionError,
)
from policies.spec import AnalysisSpec, BlueGreenSpec, CanarySpec, Check

T0 = 1_000.0
Q = "sum(rate(errors[1m]))"


def spec(
    checks: tuple[Check, ...] = (Check("error_rate", max=0.05),),
    steps: tuple[float, ...] = (10, 50, 100),
    gate: str = "auto",
    compare: str = "none",
    min_requests: int = 100,
    failure_limit: int = 2,
) -> CanarySpec:
    return CanarySpec(
        stable="v1",
        candidate="v2",
        steps=steps,
        interval=60.0,
        analysis=AnalysisSpec(
            min_requests=min_requests,
            failure_limit=failure_limit,
            checks=checks,
            compare=compare,  # type: ignore[arg-type]
        ),
        gate=gate,  # type: ignore[arg-type]
    )


def obs(
    cand: tuple[int, int] = (200, 0),
    stable: tuple[int, int] = (2000, 0),
    p99: float | None = 0.1,
    stable_p99: float | None = 0.1,
    rewards: tuple[int, float] = (0, 0.0),
    stable_rewards: tuple[int, float] = (0, 0.0),
    prom: tuple[PromResult, ...] = (),
) -> Observations:
    return Observations(
        stable=ArmObs(stable[0], stable[1], stable_p99, stable_rewards[0], stable_rewards[1], 0.0),
        candidate=ArmObs(cand[0], cand[1], p99, rewards[0], rewards[1], 0.0),
        prometheus=prom,
    )


def progressing(s: CanarySpec, step: int = 0) -> RolloutState:
    st, _ = rollout.validated(rollout.initial_state(s, T0), s, T0, "v2", True, ["GET / -> 200"])
    assert st.phase is Phase.PROGRESSING
    return replace(st, step=step)


DUE = T0 + 60.0


# ---- validation ----------------------------------------------------------------------------------


def test_new_rollout_validates_before_any_traffic() -> None:
    s = spec()
    st = rollout.initial_state(s, T0)
    assert st.phase is Phase.VALIDATING
    assert rollout.weights_for(st, s) == {"v1": 100.0, "v2": 0.0}
    # the timer does nothing while validating
    assert rollout.step(st, obs(), s, DUE * 10) == (st, [])


def test_blessed_candidate_enters_first_step() -> None:
    s = spec()
    st, events = rollout.validated(rollout.initial_state(s, T0), s, T0 + 1, "v2", True, ["ok"])
    assert st.phase is Phase.PROGRESSING and st.step == 0 and st.blessed
    assert st.blessing is not None and st.blessing.at == T0 + 1
    assert rollout.weights_for(st, s) == {"v1": 90.0, "v2": 10.0}
    assert [(e.from_phase, e.to_phase) for e in events] == [(Phase.VALIDATING, Phase.PROGRESSING)]
    assert events[0].kind is EventKind.BLESSED and events[0].names == {"blessed", "progressing"}
    assert st.next_analysis_at == T0 + 1 + 60


def test_failed_validation_rolls_back_with_the_failing_answer() -> None:
    s = spec()
    results = ["GET /health -> 200 (3ms)", "POST /predict -> FAIL: status 500, body: 'boom'"]
    st, events = rollout.validated(rollout.initial_state(s, T0), s, T0, "v2", False, results)
    assert st.phase is Phase.ROLLED_BACK and not st.blessed
    assert "POST /predict -> FAIL: status 500" in events[0].reason
    assert events[0].kind is EventKind.VALIDATION_FAILED
    assert rollout.weights_for(st, s) == {"v1": 100.0, "v2": 0.0}


def test_validation_result_after_abort_is_ignored() -> None:
    s = spec()
    st, _ = rollout.abort(rollout.initial_state(s, T0), s, T0)
    assert rollout.validated(st, s, T0, "v2", True, ["ok"]) == (st, [])


# ---- waiting and inconclusive --------------------------------------------------------------------


def test_nothing_happens_before_the_interval() -> None:
    s = spec()
    st = progressing(s)
    new, events = rollout.step(st, obs(cand=(10_000, 5_000)), s, DUE - 0.001)
    assert new is st and events == []


INCONCLUSIVE = [
    (
        "candidate short",
        spec(),
        obs(cand=(99, 0)),
        r"too few requests \(candidate 99 < min_requests 100\)",
    ),
    ("stable short", spec(), obs(stable=(5, 0)), r"stable 5 < min_requests 100"),
    ("no data at all", spec(), Observations(), r"candidate 0, stable 0"),
    (
        "no latency samples",
        spec((Check("latency_p99", max=0.5),)),
        obs(p99=None),
        r"latency_p99: no latency samples",
    ),
    (
        "too few rewards",
        spec((Check("reward_mean", min_relative_to_stable=0.98),)),
        obs(rewards=(3, 3.0), stable_rewards=(500, 400.0)),
        r"reward_mean: too few rewards \(candidate 3, stable 500; need 30 per arm\)",
    ),
    (
        "stable has no latency",
        spec((Check("latency_p99", max_relative_to_stable=1.5),)),
        obs(stable_p99=None),
        r"stable has no data",
    ),
    (
        "prometheus error",
        spec((Check("prometheus", query=Q, max=5, url="http://x"),)),
        obs(prom=(PromResult(Q, None, "cannot reach http://x"),)),
        r"prometheus .*: cannot reach",
    ),
    (
        "prometheus empty",
        spec((Check("prometheus", query=Q, max=5, url="http://x"),)),
        obs(prom=(PromResult(Q, None, "empty result"),)),
        r"empty result",
    ),
    (
        "prometheus NaN",
        spec((Check("prometheus", query=Q, max=5, url="http://x"),)),
        obs(prom=(PromResult(Q, math.nan),)),
        r"no usable value \(nan\)",
    ),
    (
        "prometheus not queried",
        spec((Check("prometheus", query=Q, max=5, url="http://x"),)),
        obs(),
        r"not queried",
    ),
]


@pytest.mark.parametrize(
    ("name", "s", "o", "message"), INCONCLUSIVE, ids=[c[0] for c in INCONCLUSIVE]
)
def test_inconclusive_waits_and_never_passes(
    name: str, s: CanarySpec, o: Observations, message: str
) -> None:
    st = progressing(s)
    new, events = rollout.step(st, o, s, DUE)
    assert events == []
    assert new.phase is Phase.PROGRESSING and new.step == 0 and new.failures == 0
    assert new.history[-1].outcome == "inconclusive"
    assert any(re.search(message, r) for r in new.history[-1].reasons), new.history
    # the window keeps its traffic; the next look is one interval later
    assert new.window_started_at == st.window_started_at
    assert new.next_analysis_at == DUE + 60
    assert rollout.weights_for(new, s) == rollout.weights_for(st, s)
    # looking again without data never promotes; at inconclusive_limit (5) the rollout pauses
    # with the reason instead of waiting forever
    assert s.analysis is not None and s.analysis.inconclusive_limit == 5
    for k in range(2, 5):
        new, events = rollout.step(new, o, s, DUE + 60 * k)
        assert new.phase is Phase.PROGRESSING and new.step == 0 and events == []
    new, events = rollout.step(new, o, s, DUE + 60 * 5)
    assert new.phase is Phase.PAUSED and new.step == 0
    assert [e.kind for e in events] == [rollout.EventKind.PAUSED]
    assert "5 inconclusive analyses in a row (inconclusive_limit 5)" in (new.paused_reason or "")
    assert re.search(message, new.paused_reason or "")
    assert rollout.weights_for(new, s) == rollout.weights_for(st, s)  # holds its weights
    # a resume gives the analysis a fresh count
    resumed, _ = rollout.resume(new, s, DUE + 400)
    assert resumed.phase is Phase.PROGRESSING and resumed.inconclusive == 0


def test_inconclusive_limit_zero_waits_forever_and_rollback_is_configurable() -> None:
    s = spec()
    assert s.analysis is not None
    forever = replace(s, analysis=replace(s.analysis, inconclusive_limit=0))
    short = obs(stable=(500, 0), cand=(3, 0))
    new = progressing(forever)
    for k in range(1, 30):
        new, _ = rollout.step(new, short, forever, DUE + 60 * k)
        assert new.phase is Phase.PROGRESSING
    back = replace(
        s, analysis=replace(s.analysis, inconclusive_limit=2, on_inconclusive="rollback")
    )
    new = progressing(back)
    new, _ = rollout.step(new, short, back, DUE)
    new, events = rollout.step(new, short, back, DUE + 60)
    assert new.phase is Phase.ROLLED_BACK
    assert [e.kind for e in events] == [rollout.EventKind.ROLLED_BACK]
    assert "2 inconclusive analyses in a row" in events[0].reason


def test_progress_deadline_pauses_a_rollout_that_does_not_move() -> None:
    s = spec()
    assert s.analysis is not None
    s = replace(s, analysis=replace(s.analysis, inconclusive_limit=0, progress_deadline=150.0))
    short = obs(stable=(500, 0), cand=(3, 0))
    new = progressing(s)
    new, _ = rollout.step(new, short, s, DUE)
    assert new.phase is Phase.PROGRESSING
    new, _ = rollout.step(new, short, s, new.changed_at + 151)
    assert new.phase is Phase.PAUSED
    assert "progress deadline 150s exceeded" in (new.paused_reason or "")


def test_a_down_candidate_fails_the_analysis_instead_of_waiting() -> None:
    s = spec()
    down = Observations(ArmObs(500, 0), ArmObs(0, 0), candidate_down="candidate v2 is down")
    new, events = rollout.step(progressing(s), down, s, DUE)
    assert new.history[-1].outcome == "fail"
    assert new.history[-1].reasons == ("candidate v2 is down",)
    assert new.failures == 1 and [e.kind for e in events] == [rollout.EventKind.ANALYSIS_FAILED]
    new, events = rollout.step(new, down, s, DUE + 60)
    assert new.phase is Phase.ROLLED_BACK


def test_retry_restarts_a_rolled_back_rollout_from_validation() -> None:
    s = spec()
    with pytest.raises(rollout.TransitionError, match="only a rolled-back rollout"):
        rollout.retry(progressing(s), s, DUE)
    back, _ = rollout.abort(progressing(s), s, DUE)
    back = rollout.mark(back, s, DUE, "abort")
    new, events = rollout.retry(back, s, DUE + 5, "fixed", "alice")
    assert new.phase is Phase.VALIDATING and new.step == 0 and new.failures == 0
    assert not new.blessed and new.history == ()
    assert rollout.weights_for(new, s)[s.candidate] == 0.0
    assert new.timeline == back.timeline  # the route's history is kept
    assert [e.kind for e in events] == [rollout.EventKind.RETRIED]
    assert events[0].reason == "retry by alice: fixed"


# ---- checks --------------------------------------------------------------------------------------

CHECKS = [
    (
        "error_rate ok",
        Check("error_rate", max=0.05),
        obs(cand=(312, 3)),
        "pass",
        r"error_rate 0.009615 ok \(max 0.05\) over 312 requests",
    ),
    (
        "error_rate high",
        Check("error_rate", max=0.05),
        obs(cand=(312, 22)),
        "fail",
        r"^error_rate 0.07051 > max 0.05 over 312 requests \(95% lower bound 0.05018\)$",
    ),
    (
        "error_rate rel",
        Check("error_rate", max_relative_to_stable=2.0),
        obs(cand=(200, 10), stable=(2000, 20)),
        "fail",
        r"error_rate 0.05 > max 2 x stable 0.01 = 0.02",
    ),
    (
        "latency ok",
        Check("latency_p99", max=0.5),
        obs(p99=0.2),
        "pass",
        r"latency_p99 200ms ok \(max 500ms\)",
    ),
    (
        "latency high",
        Check("latency_p99", max=0.5),
        obs(p99=0.62),
        "fail",
        r"latency_p99 620ms > max 500ms over 200 requests",
    ),
    (
        "reward ok",
        Check("reward_mean", min_relative_to_stable=0.98),
        obs(rewards=(100, 80.0), stable_rewards=(1000, 800.0)),
        "pass",
        r"reward_mean 0.8 ok",
    ),
    (
        "reward low",
        Check("reward_mean", min_relative_to_stable=0.98),
        obs(rewards=(100, 70.0), stable_rewards=(1000, 800.0)),
        "fail",
        r"reward_mean 0.7 < min 0.98 x stable 0.8 = 0.784 over 100 rewards",
    ),
    (
        "reward abs min",
        Check("reward_mean", min=0.5),
        obs(rewards=(100, 40.0)),
        "fail",
        r"reward_mean 0.4 < min 0.5",
    ),
    (
        "prom ok",
        Check("prometheus", query=Q, max=5, url="u"),
        obs(prom=(PromResult(Q, 4.0),)),
        "pass",
        r"prometheus .* 4 ok \(max 5\)",
    ),
    (
        "prom high",
        Check("prometheus", query=Q, max=5, url="u"),
        obs(prom=(PromResult(Q, 7.5),)),
        "fail",
        r"prometheus .* 7.5 > max 5",
    ),
]


@pytest.mark.parametrize(
    ("name", "check", "o", "outcome", "message"), CHECKS, ids=[c[0] for c in CHECKS]
)
def test_checks(name: str, check: Check, o: Observations, outcome: str, message: str) -> None:
    result = rollout.analyse(o, spec((check,)).analysis, 0, DUE)
    assert result.outcome == outcome
    assert re.search(message, result.reasons[0]), result.reasons


def test_a_failure_among_inconclusive_checks_is_a_failure() -> None:
    s = spec((Check("latency_p99", max=0.5), Check("error_rate", max=0.05)))
    result = rollout.analyse(obs(p99=None, cand=(200, 100)), s.analysis, 0, DUE)
    assert result.outcome == "fail"
    assert result.reasons[0].startswith("error_rate 0.5 > max 0.05")


# ---- progress, failure, rollback, promotion ------------------------------------------------------


def test_pass_moves_to_next_step_and_resets_window() -> None:
    s = spec()
    st = progressing(s)
    new, events = rollout.step(st, obs(), s, DUE)
    assert new.phase is Phase.PROGRESSING and new.step == 1
    assert new.step_started_at == DUE and new.window_started_at == DUE
    assert new.next_analysis_at == DUE + 60
    assert new.totals.candidate_requests == 200 and new.totals.stable_requests == 2000
    assert rollout.weights_for(new, s) == {"v1": 50.0, "v2": 50.0}
    assert events[0].to_phase is Phase.PROGRESSING and "now at step 1 (50%)" in events[0].reason
    assert events[0].kind is EventKind.STEP
    assert new.history[-1].outcome == "pass"


def test_failures_count_then_roll_back_with_value_against_limit() -> None:
    s = spec(failure_limit=2)
    st = progressing(s)
    st1, ev1 = rollout.step(st, obs(cand=(312, 22)), s, DUE)
    assert st1.phase is Phase.PROGRESSING and st1.failures == 1 and st1.step == 0
    assert st1.window_started_at == DUE  # a judged window is closed
    assert ev1[0].from_phase is ev1[0].to_phase is Phase.PROGRESSING
    assert "analysis failed 1/2" in ev1[0].reason and ev1[0].kind is EventKind.ANALYSIS_FAILED
    st2, ev2 = rollout.step(st1, obs(cand=(312, 22)), s, DUE + 60)
    assert st2.phase is Phase.ROLLED_BACK and ev2[0].kind is EventKind.ROLLED_BACK
    assert ev2[0].reason == (
        "step 0 (10%): analysis failed 2/2: error_rate 0.07051 > max 0.05 over 312 requests "
        "(95% lower bound 0.05018)"
    )
    assert rollout.weights_for(st2, s) == {"v1": 100.0, "v2": 0.0}
    # a rolled back rollout stays put
    assert rollout.step(st2, obs(), s, DUE + 600) == (st2, [])


def test_final_100_step_is_promotion() -> None:
    s = spec(steps=(10, 50, 100))
    st = progressing(s, step=1)
    new, events = rollout.step(st, obs(), s, DUE)
    assert new.phase is Phase.PROMOTED
    assert rollout.weights_for(new, s) == {"v1": 0.0, "v2": 100.0}
    assert events[0].to_phase is Phase.PROMOTED and events[0].kind is EventKind.PROMOTED


def test_last_step_below_100_passed_is_promotion() -> None:
    s = spec(steps=(10, 50))
    st = progressing(s, step=1)
    new, _ = rollout.step(st, obs(), s, DUE)
    assert new.phase is Phase.PROMOTED
    assert rollout.weights_for(new, s)["v2"] == 100.0


def test_walks_every_step_to_promoted() -> None:
    s = spec(steps=(5, 10, 25, 50, 100))
    st = progressing(s)
    now = T0
    seen = []
    while not st.phase.terminal:
        now += 60
        st, _ = rollout.step(st, obs(), s, now)
        seen.append(rollout.weights_for(st, s)["v2"])
    assert seen == [10.0, 25.0, 50.0, 100.0]
    assert st.phase is Phase.PROMOTED


def test_manual_gate_pauses_before_final_step_and_promote_finishes() -> None:
    s = spec(steps=(10, 50, 100), gate="manual")
    st = progressing(s, step=1)
    paused, events = rollout.step(st, obs(), s, DUE)
    assert paused.phase is Phase.PAUSED and paused.gate_waiting and paused.step == 1
    assert "manual gate" in (paused.paused_reason or "") and events[0].kind is EventKind.PAUSED
    assert rollout.weights_for(paused, s) == {"v1": 50.0, "v2": 50.0}
    # the timer does not move it
    assert rollout.step(paused, obs(), s, DUE + 600) == (paused, [])
    with pytest.raises(TransitionError, match="manual gate: use promote"):
        rollout.resume(paused, s, DUE)
    done, events = rollout.promote(paused, s, DUE + 1, reason="looks good")
    assert done.phase is Phase.PROMOTED
    assert events[0].reason == "promote by admin: looks good"
    assert events[0].kind is EventKind.PROMOTED and not events[0].switched


def test_manual_gate_with_final_step_below_100_enters_it() -> None:
    s = spec(steps=(10, 50), gate="manual")
    paused, _ = rollout.step(progressing(s), obs(), s, DUE)
    assert paused.phase is Phase.PAUSED and paused.gate_waiting
    st, _ = rollout.promote(paused, s, DUE + 1)
    assert st.phase is Phase.PROGRESSING and st.step == 1
    st, _ = rollout.step(st, obs(), s, DUE + 61)
    assert st.phase is Phase.PROMOTED


def test_single_step_with_manual_gate_waits_at_zero() -> None:
    s = spec(steps=(100,), gate="manual")
    st, events = rollout.validated(rollout.initial_state(s, T0), s, T0, "v2", True, ["ok"])
    assert st.phase is Phase.PAUSED and st.gate_waiting
    assert events[0].kind is EventKind.BLESSED and events[0].names == {"blessed", "paused"}
    assert rollout.weights_for(st, s) == {"v1": 100.0, "v2": 0.0}
    st, _ = rollout.promote(st, s, T0 + 1)
    assert st.phase is Phase.PROMOTED


# ---- sequential comparison -----------------------------------------------------------------------


def test_sequential_fails_a_much_worse_candidate_before_the_interval() -> None:
    s = spec(compare="sequential", failure_limit=5)
    st = progressing(s)
    new, events = rollout.step(st, obs(cand=(60, 18), stable=(1000, 5)), s, T0 + 5)
    assert new.phase is Phase.ROLLED_BACK
    assert "sequential test failed" in events[0].reason and events[0].kind is EventKind.ROLLED_BACK
    assert "candidate worse at alpha 0.05" in events[0].reason


def test_sequential_never_passes_without_data_and_ignores_noise() -> None:
    s = spec(checks=(), compare="sequential")
    st = progressing(s)
    new, _ = rollout.step(st, obs(cand=(3, 0), stable=(5, 0)), s, DUE)
    assert new.phase is Phase.PROGRESSING and new.step == 0
    assert new.history[-1].outcome == "inconclusive"
    # equal error rates: no failure
    new, _ = rollout.step(st, obs(cand=(200, 2), stable=(2000, 20)), s, T0 + 1)
    assert new is st


def test_sequential_uses_data_of_the_whole_rollout() -> None:
    # each window alone is too small to be significant; together they are
    totals = rollout.Totals(4000, 20, 400, 60)
    assert rollout.sequential_error_test(4000, 20, 400, 60, 0.05)[0]
    s = spec(compare="sequential", failure_limit=9)
    st = replace(progressing(s), totals=totals)
    new, _ = rollout.step(st, obs(cand=(10, 1), stable=(100, 0)), s, T0 + 1)
    assert new.phase is Phase.ROLLED_BACK


def test_sequential_false_alarm_rate_stays_below_alpha_under_continuous_looks() -> None:
    rng = np.random.default_rng(0)
    alpha, runs, looks, p = 0.05, 300, 40, 0.05
    alarms = 0
    for _ in range(runs):
        ns = es = nc = ec = 0
        for _ in range(looks):
            ns += 200
            es += int(rng.binomial(200, p))
            nc += 20
            ec += int(rng.binomial(20, p))
            if rollout.sequential_error_test(ns, es, nc, ec, alpha)[0]:
                alarms += 1
                break
    assert alarms / runs <= alpha


# ---- actions -------------------------------------------------------------------------------------


def test_promote_next_step_and_full() -> None:
    s = spec(steps=(10, 50, 100))
    st = progressing(s)
    nxt, _ = rollout.promote(st, s, T0 + 1)
    assert nxt.phase is Phase.PROGRESSING and nxt.step == 1
    full, _ = rollout.promote(st, s, T0 + 1, full=True)
    assert full.phase is Phase.PROMOTED


ACTION_ERRORS = [
    ("promote rolled back", "rolled_back", rollout.promote, r"rolled back; promote does not apply"),
    ("promote promoted", "promoted", rollout.promote, r"already promoted"),
    ("promote validating", "validating", rollout.promote, r"not passed infra validation"),
    ("abort twice", "rolled_back", rollout.abort, r"already rolled back"),
    (
        "pause paused",
        "paused",
        rollout.pause,
        r"only a progressing rollout can be paused; it is paused",
    ),
    ("pause promoted", "promoted", rollout.pause, r"it is promoted"),
    ("resume progressing", "progressing", rollout.resume, r"only a paused rollout can be resumed"),
    ("switch on canary", "progressing", rollout.switch, r"switch applies to blue_green"),
]


@pytest.mark.parametrize(
    ("name", "phase", "fn", "message"), ACTION_ERRORS, ids=[c[0] for c in ACTION_ERRORS]
)
def test_invalid_actions(name: str, phase: str, fn: object, message: str) -> None:
    s = spec()
    st = replace(progressing(s), phase=Phase(phase))
    if phase == "validating":
        st = rollout.initial_state(s, T0)
    with pytest.raises(TransitionError, match=message):
        fn(st, s, T0)  # type: ignore[operator]


def test_abort_from_any_live_phase_sends_everything_to_stable() -> None:
    s = spec()
    for st in (
        rollout.initial_state(s, T0),
        progressing(s, 1),
        replace(progressing(s, 1), phase=Phase.PAUSED),
        replace(progressing(s, 2), phase=Phase.PROMOTED),
    ):
        new, events = rollout.abort(st, s, T0 + 5, reason="bad", actor="admin")
        assert new.phase is Phase.ROLLED_BACK
        assert rollout.weights_for(new, s) == {"v1": 100.0, "v2": 0.0}
        assert events[0].reason == "abort by admin: bad"


def test_pause_then_resume_starts_a_fresh_window() -> None:
    s = spec()
    st = progressing(s, 1)
    paused, events = rollout.pause(st, s, T0 + 10, reason="investigating")
    assert events[0].kind is EventKind.PAUSED
    assert paused.phase is Phase.PAUSED and paused.paused_reason == "pause by admin: investigating"
    assert rollout.weights_for(paused, s) == rollout.weights_for(st, s)
    assert rollout.step(paused, obs(), s, DUE * 2) == (paused, [])
    resumed, events = rollout.resume(paused, s, T0 + 100)
    assert events[0].kind is EventKind.RESUMED
    assert resumed.phase is Phase.PROGRESSING and resumed.step == 1
    assert resumed.window_started_at == T0 + 100 and resumed.next_analysis_at == T0 + 160


# ---- durability of the document ------------------------------------------------------------------


def test_state_round_trips_through_json() -> None:
    import json

    s = spec()
    st, _ = rollout.step(progressing(s), obs(cand=(312, 22)), s, DUE)
    back = RolloutState.from_json(json.loads(json.dumps(st.to_json())))
    assert back == st


def test_unreadable_state_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="stored rollout state is unreadable"):
        RolloutState.from_json({"phase": "sideways"})


def test_phase_terminal() -> None:
    assert [p.value for p in Phase if p.terminal] == ["promoted", "rolled_back"]


# ---- blue-green ----------------------------------------------------------------------------------


def bg(analysis: AnalysisSpec | None = None, auto_switch: bool = False) -> BlueGreenSpec:
    return BlueGreenSpec(
        active="blue", preview="green", analysis=analysis, auto_switch=auto_switch, interval=60.0
    )


def bg_live(s: BlueGreenSpec) -> RolloutState:
    st, _ = rollout.validated(rollout.initial_state(s, T0), s, T0, "green", True, ["ok"])
    return st


def test_blue_green_preview_gets_nothing_until_switch_and_back() -> None:
    s = bg()
    st = rollout.initial_state(s, T0)
    assert rollout.weights_for(st, s) == {"blue": 1.0, "green": 0.0}
    with pytest.raises(TransitionError, match="preview has not passed infra validation"):
        rollout.switch(st, s, T0)
    st = bg_live(s)
    assert st.phase is Phase.PROGRESSING
    assert rollout.blue_green_step(st, obs(), s, DUE * 5) == (st, [])
    on, events = rollout.switch(st, s, T0 + 1, reason="release")
    assert on.phase is Phase.PROMOTED and on.active == "green"
    assert rollout.weights_for(on, s) == {"green": 1.0, "blue": 0.0}
    assert "green now serves, blue kept ready" in events[0].reason
    assert events[0].names == {"promoted", "switched"}
    back, events = rollout.switch(on, s, T0 + 2)
    assert back.phase is Phase.ROLLED_BACK and back.active == "blue"
    assert events[0].names == {"rolled_back", "switched"}
    assert rollout.weights_for(back, s) == {"blue": 1.0, "green": 0.0}
    again, _ = rollout.switch(back, s, T0 + 3)
    assert again.active == "green"


def test_blue_green_auto_switch_without_analysis_switches_once_blessed() -> None:
    s = bg(auto_switch=True)
    st, events = rollout.validated(rollout.initial_state(s, T0), s, T0, "green", True, ["ok"])
    assert st.phase is Phase.PROMOTED and st.active == "green"
    assert events[0].kind is EventKind.BLESSED and events[0].switched


def test_blue_green_analysis_pass_waits_for_switch_or_switches_itself() -> None:
    a = AnalysisSpec(min_requests=50, checks=(Check("error_rate", max=0.05),))
    manual = bg(a)
    st, events = rollout.blue_green_step(
        bg_live(manual), obs(cand=(60, 0), stable=(0, 0)), manual, DUE
    )
    assert st.phase is Phase.PROGRESSING and st.gate_waiting and st.active == "blue"
    assert "waiting for switch" in events[0].reason
    assert events[0].kind is EventKind.ANALYSIS_PASSED
    auto = bg(a, auto_switch=True)
    st, events = rollout.blue_green_step(bg_live(auto), obs(cand=(60, 0), stable=(0, 0)), auto, DUE)
    assert st.phase is Phase.PROMOTED and st.active == "green"
    assert events[0].names == {"promoted", "switched"}


def test_blue_green_failing_preview_is_rolled_back_and_abort() -> None:
    a = AnalysisSpec(min_requests=50, failure_limit=1, checks=(Check("error_rate", max=0.05),))
    s = bg(a, auto_switch=True)
    st, events = rollout.blue_green_step(bg_live(s), obs(cand=(60, 30)), s, DUE)
    assert st.phase is Phase.ROLLED_BACK and st.active == "blue"
    assert "preview green: analysis failed 1/1: error_rate 0.5 > max 0.05" in events[0].reason
    on, _ = rollout.switch(bg_live(bg()), bg(), T0)
    off, _ = rollout.abort(on, bg(), T0 + 1)
    assert off.active == "blue" and off.phase is Phase.ROLLED_BACK
    with pytest.raises(TransitionError, match="already rolled back"):
        rollout.abort(off, bg(), T0 + 2)
