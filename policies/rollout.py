"""Pure rollout logic for canary and blue-green: from (state, observations, spec, now) to the next
state and the transitions it made. No clock, no I/O: `router/engines/rollout_controller.py`
drives it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from policies.checks import CHECK_KINDS, percentile
from policies.spec import AnalysisSpec, BlueGreenSpec, CanarySpec, Check

__all__ = [
    "HISTORY_LIMIT",
    "AnalysisResult",
    "ArmObs",
    "Blessing",
    "Event",
    "EventKind",
    "Observations",
    "Phase",
    "PromResult",
    "RolloutState",
    "Totals",
    "TransitionError",
    "abort",
    "analyse",
    "analysis_due",
    "blue_green_step",
    "initial_state",
    "mark",
    "pause",
    "promote",
    "resume",
    "retry",
    "sequential_error_test",
    "step",
    "switch",
    "validated",
    "weights_for",
]

HISTORY_LIMIT = 200  # analysis results kept in the state (and the store)
TIMELINE_LIMIT = 300  # transitions (phase, step, shares) kept for the dashboard's ramp
# mSPRT mixing_sd on the error-rate difference (a standard deviation, like A/B tests'
# `test.mixing_sd`): effects of ~5 points
SEQUENTIAL_MIXING_SD = 0.05
SEQUENTIAL_MIN_REQUESTS = 10  # per side, so the normal approximation is not absurd

Outcome = Literal["pass", "fail", "inconclusive"]


class Phase(StrEnum):
    """Where a rollout is; `promoted` and `rolled_back` are final."""

    VALIDATING = "validating"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK)


class TransitionError(Exception):
    """An action that does not apply to the rollout's current state (the admin API answers 409)."""


Spec = CanarySpec | BlueGreenSpec


# ---- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """One judgement of the candidate (or preview) on the traffic of one window."""

    at: float
    step: int
    outcome: Outcome
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "step": self.step,
            "outcome": self.outcome,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AnalysisResult:
        outcome = d["outcome"]
        if outcome not in ("pass", "fail", "inconclusive"):
            raise ValueError(f"bad analysis outcome {outcome!r}")
        return cls(float(d["at"]), int(d["step"]), outcome, tuple(str(r) for r in d["reasons"]))


@dataclass(frozen=True, slots=True)
class Blessing:
    """The outcome of infra validation of the candidate / preview backend."""

    backend: str
    at: float
    ok: bool
    results: tuple[str, ...]  # one line per validation request

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "at": self.at,
            "ok": self.ok,
            "results": list(self.results),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Blessing:
        return cls(str(d["backend"]), float(d["at"]), bool(d["ok"]), tuple(map(str, d["results"])))


@dataclass(frozen=True, slots=True)
class Totals:
    """Requests and errors per side over the closed windows of the rollout (sequential test)."""

    stable_requests: int = 0
    stable_errors: int = 0
    candidate_requests: int = 0
    candidate_errors: int = 0

    def plus(self, obs: Observations) -> Totals:
        return Totals(
            self.stable_requests + obs.stable.requests,
            self.stable_errors + obs.stable.errors,
            self.candidate_requests + obs.candidate.requests,
            self.candidate_errors + obs.candidate.errors,
        )


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Everything a rollout needs to resume exactly where it was after a restart.

    `step` indexes the spec's steps (-1: before the first one). The analysis window starts at
    `window_started_at`; the driver resets its per-window counters whenever that changes.
    `active` is the serving side of a blue-green route. `gate_waiting`: paused at the manual gate
    (canary) or passed analysis and waiting for `switch` (blue-green).
    """

    phase: Phase = Phase.VALIDATING
    step: int = 0
    step_started_at: float = 0.0
    window_started_at: float = 0.0
    next_analysis_at: float = 0.0
    failures: int = 0
    history: tuple[AnalysisResult, ...] = ()
    blessing: Blessing | None = None
    paused_reason: str | None = None
    active: str | None = None
    gate_waiting: bool = False
    totals: Totals = field(default_factory=Totals)
    reason: str | None = None  # why the current phase was entered
    changed_at: float = 0.0
    inconclusive: int = 0  # inconclusive analyses in a row
    # blue-green: the inactive side was switched away from (not aborted or failed), so preview
    # traffic may still reach it
    kept_ready: bool = False
    # what happened, for the dashboard: {at, phase, step, shares, event}, oldest first
    timeline: tuple[dict[str, Any], ...] = ()

    @property
    def blessed(self) -> bool:
        return self.blessing is not None and self.blessing.ok

    def to_json(self) -> dict[str, Any]:
        t = self.totals
        return {
            "phase": self.phase.value,
            "step": self.step,
            "step_started_at": self.step_started_at,
            "window_started_at": self.window_started_at,
            "next_analysis_at": self.next_analysis_at,
            "failures": self.failures,
            "history": [h.to_json() for h in self.history],
            "blessing": self.blessing.to_json() if self.blessing else None,
            "paused_reason": self.paused_reason,
            "active": self.active,
            "gate_waiting": self.gate_waiting,
            "totals": [
                t.stable_requests,
                t.stable_errors,
                t.candidate_requests,
                t.candidate_errors,
            ],
            "reason": self.reason,
            "changed_at": self.changed_at,
            "inconclusive": self.inconclusive,
            "kept_ready": self.kept_ready,
            "timeline": list(self.timeline),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RolloutState:
        """Rebuild a stored state; raises ValueError (naming the field) when the document is bad."""
        try:
            b = d.get("blessing")
            t = d.get("totals") or [0, 0, 0, 0]
            return cls(
                phase=Phase(d["phase"]),
                step=int(d["step"]),
                step_started_at=float(d["step_started_at"]),
                window_started_at=float(d["window_started_at"]),
                next_analysis_at=float(d["next_analysis_at"]),
                failures=int(d["failures"]),
                history=tuple(AnalysisResult.from_json(h) for h in d.get("history", ())),
                blessing=Blessing.from_json(b) if b else None,
                paused_reason=d.get("paused_reason"),
                active=d.get("active"),
                gate_waiting=bool(d.get("gate_waiting", False)),
                totals=Totals(*(int(x) for x in t)),
                reason=d.get("reason"),
                changed_at=float(d.get("changed_at", 0.0)),
                inconclusive=int(d.get("inconclusive", 0)),
                kept_ready=bool(d.get("kept_ready", False)),
                timeline=tuple(dict(m) for m in d.get("timeline", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"stored rollout state is unreadable: {type(e).__name__}: {e}") from e


class EventKind(StrEnum):
    """What a transition did, set by the step function that made it.

    The value is the audit action of an automatic transition (an admin's is the action's name)
    and, with the phase entered, a name webhooks may subscribe to.
    """

    BLESSED = "blessed"  # infra validation passed: the rollout starts (wherever that leads)
    VALIDATION_FAILED = "validation_failed"  # infra validation failed: rolled back
    STEP = "step"  # on to the next canary step
    ANALYSIS_FAILED = "analysis_failed"  # a failed window below the failure limit
    ANALYSIS_PASSED = "analysis_passed"  # the preview passed: waiting for switch
    PAUSED = "paused"  # by an admin, or the manual gate was reached
    RESUMED = "resumed"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    RETRIED = "retried"  # an admin restarted a rolled-back rollout from validation


@dataclass(frozen=True, slots=True)
class Event:
    """A transition: a phase change, a step change, or a failed analysis that did not roll back.

    `switched`: a blue-green switch (automatic or by an admin) changed the serving side.
    """

    kind: EventKind
    from_phase: Phase
    to_phase: Phase
    reason: str
    step: int
    switched: bool = False

    @property
    def names(self) -> frozenset[str]:
        """What a webhook's `on:` list matches: the phase entered, the kind, and `switched`."""
        names = {self.to_phase.value, self.kind.value}
        if self.switched:
            names.add("switched")
        return frozenset(names)


# ---- observations --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArmObs:
    """What one side saw in the current analysis window."""

    requests: int = 0
    errors: int = 0  # status >= 500 or a transport error
    latency_p99: float | None = None  # seconds; None without samples
    rewards: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
    latency_hist: tuple[int, ...] = ()  # policies.checks buckets; empty: only latency_p99 known
    statuses: tuple[tuple[int, int], ...] = ()  # (status, count) of answered requests
    transport_errors: int = 0  # requests with no status from the backend (refused, timed out)

    def latency(self, q: float) -> float | None:
        """The q-quantile of the window's latencies (seconds)."""
        if self.latency_hist:
            return percentile(self.latency_hist, q)
        return self.latency_p99 if q == 0.99 else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def reward_mean(self) -> float | None:
        return self.reward_sum / self.rewards if self.rewards else None


@dataclass(frozen=True, slots=True)
class PromResult:
    """One Prometheus query answer: a value, or why there is none."""

    query: str
    value: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Observations:
    """The window's traffic: stable (blue-green: the serving side) and candidate (preview)."""

    stable: ArmObs = field(default_factory=ArmObs)
    candidate: ArmObs = field(default_factory=ArmObs)
    prometheus: tuple[PromResult, ...] = ()
    # why the candidate cannot be judged on traffic (down, failing validation): a failed analysis
    candidate_down: str | None = None


# ---- analysis ------------------------------------------------------------------------------------


def _check(check: Check, obs: Observations, analysis: AnalysisSpec) -> tuple[Outcome, str]:
    kind = CHECK_KINDS.get(check.metric)
    if kind is None:
        return "inconclusive", f"unknown check metric {check.metric!r}"
    return kind.judge(check, obs, analysis)


def sequential_error_test(
    stable_n: int,
    stable_e: int,
    cand_n: int,
    cand_e: int,
    alpha: float,
    mixing_sd: float = SEQUENTIAL_MIXING_SD,
) -> tuple[bool, str]:
    """Always-valid mSPRT (normal mixture, Johari et al.) on the error-rate difference.

    Returns (candidate significantly worse at level alpha, message). It only ever fails a
    candidate: an insignificant result is not a pass. Valid under continuous monitoring, so the
    controller may look at every tick.
    """
    if stable_n < SEQUENTIAL_MIN_REQUESTS or cand_n < SEQUENTIAL_MIN_REQUESTS:
        return False, (
            f"sequential: too few requests (stable {stable_n}, candidate {cand_n}; "
            f"need {SEQUENTIAL_MIN_REQUESTS} each)"
        )
    ps, pc = stable_e / stable_n, cand_e / cand_n
    d = pc - ps
    # smoothed rates keep the variance positive when a side has no (or only) errors
    qs, qc = (stable_e + 0.5) / (stable_n + 1), (cand_e + 0.5) / (cand_n + 1)
    v = qs * (1 - qs) / stable_n + qc * (1 - qc) / cand_n
    t2 = mixing_sd * mixing_sd
    log_lambda = 0.5 * math.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    threshold = math.log(1 / alpha)
    msg = (
        f"error_rate {pc:.4g} vs stable {ps:.4g} over {cand_n}/{stable_n} requests, "
        f"mSPRT likelihood ratio {math.exp(min(log_lambda, 700)):.3g}"
    )
    if d > 0 and log_lambda >= threshold:
        return True, f"{msg} >= {1 / alpha:.3g} (candidate worse at alpha {alpha:g})"
    return False, f"{msg} < {1 / alpha:.3g}"


def analyse(
    obs: Observations, analysis: AnalysisSpec, step: int, now: float, need_stable: bool = True
) -> AnalysisResult:
    """Judge one window. Too little traffic, or any inconclusive check without a failure, is
    inconclusive: never a pass. A candidate that is down fails."""
    if obs.candidate_down is not None:
        return AnalysisResult(now, step, "fail", (obs.candidate_down,))
    n = analysis.min_requests
    short = []
    if obs.candidate.requests < n:
        short.append(f"candidate {obs.candidate.requests}")
    if need_stable and obs.stable.requests < n:
        short.append(f"stable {obs.stable.requests}")
    if short:
        reason = f"too few requests ({', '.join(short)} < min_requests {n})"
        return AnalysisResult(now, step, "inconclusive", (reason,))
    results = [_check(c, obs, analysis) for c in analysis.checks]
    reasons = tuple(r for _, r in results)
    outcomes = {o for o, _ in results}
    if "fail" in outcomes:
        failed = tuple(r for o, r in results if o == "fail")
        return AnalysisResult(
            now, step, "fail", failed + tuple(r for o, r in results if o != "fail")
        )
    if "inconclusive" in outcomes:
        return AnalysisResult(now, step, "inconclusive", reasons)
    if not reasons:
        reasons = (f"{obs.candidate.requests} requests, no checks configured",)
    return AnalysisResult(now, step, "pass", reasons)


# ---- canary --------------------------------------------------------------------------------------


def initial_state(spec: Spec, now: float) -> RolloutState:
    """A new rollout: validating, no candidate (preview) traffic."""
    active = spec.active if spec.kind == "blue_green" else None
    return RolloutState(
        phase=Phase.VALIDATING,
        step=0,
        step_started_at=now,
        window_started_at=now,
        next_analysis_at=now + spec.interval,
        active=active,
        reason="infra validation of the new version",
        changed_at=now,
    )


def weights_for(state: RolloutState, spec: Spec) -> dict[str, float]:
    """Relative weights for the route's WeightedPolicy (stable / active first)."""
    if spec.kind == "blue_green":
        bg: BlueGreenSpec = spec
        active = state.active or bg.active
        other = bg.preview if active == bg.active else bg.active
        return {active: 1.0, other: 0.0}
    c: CanarySpec = spec
    if state.phase is Phase.PROMOTED:
        pct = 100.0
    elif state.phase in (Phase.VALIDATING, Phase.ROLLED_BACK) or not state.blessed:
        pct = 0.0  # an unblessed backend never gets live traffic
    elif state.step < 0:
        pct = 0.0  # paused at the manual gate before the only step
    else:
        pct = float(c.steps[min(state.step, len(c.steps) - 1)])
    return {c.stable: 100.0 - pct, c.candidate: pct}


def analysis_due(state: RolloutState, spec: Spec, now: float) -> bool:
    """Whether the next analysis window has closed (the driver then queries Prometheus)."""
    if state.phase is not Phase.PROGRESSING or state.gate_waiting:
        return False
    if spec.kind == "blue_green" and spec.analysis is None:
        return False
    return now >= state.next_analysis_at


def _new_window(state: RolloutState, obs: Observations, spec: Spec, now: float) -> RolloutState:
    return replace(
        state,
        window_started_at=now,
        next_analysis_at=now + spec.interval,
        totals=state.totals.plus(obs),
    )


def _with_result(state: RolloutState, result: AnalysisResult) -> RolloutState:
    return replace(state, history=(*state.history, result)[-HISTORY_LIMIT:])


def _pct(spec: CanarySpec, i: int) -> str:
    return f"step {i} ({spec.steps[i]:g}%)"


def _enter(
    state: RolloutState,
    spec: CanarySpec,
    idx: int,
    now: float,
    reason: str,
    via_gate: bool,
    kind: EventKind | None = None,
) -> tuple[RolloutState, list[Event]]:
    """Move to step `idx`: the manual gate pauses before the final step; a final 100% step (or
    passing the last one) is promotion. `kind` overrides the event kind the move implies
    (validation: blessed, wherever the rollout lands)."""
    last = len(spec.steps) - 1
    before = state.phase
    if idx > last or (
        idx == last and spec.steps[last] >= 100 and (via_gate or spec.gate != "manual")
    ):
        new = replace(
            state,
            phase=Phase.PROMOTED,
            paused_reason=None,
            gate_waiting=False,
            reason=reason,
            changed_at=now,
        )
        return new, [Event(kind or EventKind.PROMOTED, before, Phase.PROMOTED, reason, new.step)]
    if idx == last and spec.gate == "manual" and not via_gate:
        why = f"{reason}; manual gate: waiting for promote before {_pct(spec, idx)}"
        new = replace(
            state,
            phase=Phase.PAUSED,
            gate_waiting=True,
            paused_reason=why,
            reason=why,
            changed_at=now,
        )
        return new, [Event(kind or EventKind.PAUSED, before, Phase.PAUSED, why, new.step)]
    new = replace(
        state,
        phase=Phase.PROGRESSING,
        step=idx,
        step_started_at=now,
        window_started_at=now,
        next_analysis_at=now + spec.interval,
        paused_reason=None,
        gate_waiting=False,
        reason=reason,
        changed_at=now,
    )
    why = f"{reason}; now at {_pct(spec, idx)}"
    return new, [Event(kind or EventKind.STEP, before, Phase.PROGRESSING, why, idx)]


def _roll_back(
    state: RolloutState, now: float, reason: str, kind: EventKind = EventKind.ROLLED_BACK
) -> tuple[RolloutState, list[Event]]:
    new = replace(
        state,
        phase=Phase.ROLLED_BACK,
        paused_reason=None,
        gate_waiting=False,
        reason=reason,
        changed_at=now,
        kept_ready=False,
    )
    return new, [Event(kind, state.phase, Phase.ROLLED_BACK, reason, state.step)]


def _sequential(state: RolloutState, obs: Observations, analysis: AnalysisSpec) -> tuple[bool, str]:
    t = state.totals.plus(obs)
    return sequential_error_test(
        t.stable_requests, t.stable_errors, t.candidate_requests, t.candidate_errors, analysis.alpha
    )


def _judge_window(
    state: RolloutState, obs: Observations, analysis: AnalysisSpec, now: float, need_stable: bool
) -> tuple[RolloutState, AnalysisResult | None, str | None]:
    """Shared by canary and blue-green: (state with history, this window's result, rollback
    reason). The result is None when nothing was due."""
    if analysis.compare == "sequential":
        worse, msg = _sequential(state, obs, analysis)
        if worse:
            result = AnalysisResult(now, state.step, "fail", (msg,))
            return _with_result(state, result), result, f"sequential test failed: {msg}"
    if now < state.next_analysis_at:
        return state, None, None
    result = analyse(obs, analysis, state.step, now, need_stable)
    if analysis.compare == "sequential" and result.outcome != "inconclusive":
        result = replace(result, reasons=(*result.reasons, _sequential(state, obs, analysis)[1]))
    state = _with_result(state, result)
    if result.outcome == "fail":
        failures = state.failures + 1
        state = replace(state, failures=failures)
        if failures >= analysis.failure_limit:
            why = f"analysis failed {failures}/{analysis.failure_limit}: {result.reasons[0]}"
            return state, result, why
    return state, result, None


def step(
    state: RolloutState, obs: Observations, spec: CanarySpec, now: float
) -> tuple[RolloutState, list[Event]]:
    """Advance a canary by one tick: the sequential test may fail it at any tick; every
    `interval` the window is judged and the rollout advances, waits, or rolls back."""
    if state.phase is not Phase.PROGRESSING:
        return state, []
    label = _pct(spec, state.step)
    closed, events, passed = _analysis_tick(state, obs, spec, spec.analysis, now, True, label)
    if passed is None:
        return closed, events
    return _enter(closed, spec, state.step + 1, now, f"{label} passed: {passed}", via_gate=False)


def _analysis_tick(
    state: RolloutState,
    obs: Observations,
    spec: Spec,
    analysis: AnalysisSpec,
    now: float,
    relative: bool,
    label: str,
) -> tuple[RolloutState, list[Event], str | None]:
    """Judge the window when it is due: roll back, wait, count a failure, or report a pass.

    The third value is the first reason of a passing analysis (the caller decides what a pass
    means), else None and the first two are the outcome.
    """
    analysed, result, rollback = _judge_window(state, obs, analysis, now, relative)
    if rollback is not None:
        rolled, events = _roll_back(analysed, now, f"{label}: {rollback}")
        return rolled, events, None
    deadline = analysis.progress_deadline
    if deadline is not None and now - state.changed_at > deadline:
        why = (
            f"{label}: progress deadline {deadline:g}s exceeded "
            f"(no transition since {now - state.changed_at:.0f}s ago)"
        )
        if result is not None:
            why += f"; last analysis {result.outcome}: {result.reasons[0]}"
        stuck, events = _stuck(analysed, analysis, now, why)
        return stuck, events, None
    if result is None:
        return state, [], None
    if result.outcome == "inconclusive":
        n = analysed.inconclusive + 1
        limit = analysis.inconclusive_limit
        if limit and n >= limit:
            why = (
                f"{label}: {n} inconclusive analyses in a row (inconclusive_limit {limit}): "
                f"{result.reasons[0]}"
            )
            stuck, events = _stuck(replace(analysed, inconclusive=n), analysis, now, why)
            return stuck, events, None
        # keep the window's traffic and look again one interval later
        return replace(analysed, next_analysis_at=now + spec.interval, inconclusive=n), [], None
    analysed = replace(analysed, inconclusive=0)
    closed = _new_window(analysed, obs, spec, now)
    if result.outcome == "fail":
        why = (
            f"{label}: analysis failed {closed.failures}/{analysis.failure_limit}: "
            f"{result.reasons[0]}"
        )
        event = Event(EventKind.ANALYSIS_FAILED, state.phase, state.phase, why, state.step)
        return closed, [event], None
    return closed, [], result.reasons[0]


def _stuck(
    state: RolloutState, analysis: AnalysisSpec, now: float, why: str
) -> tuple[RolloutState, list[Event]]:
    """The analysis cannot decide: pause (an admin resumes, promotes or aborts) or roll back."""
    if analysis.on_inconclusive == "rollback":
        return _roll_back(state, now, why)
    new = replace(
        state, phase=Phase.PAUSED, paused_reason=why, reason=why, changed_at=now, inconclusive=0
    )
    return new, [Event(EventKind.PAUSED, state.phase, Phase.PAUSED, why, state.step)]


def validated(
    state: RolloutState, spec: Spec, now: float, backend: str, ok: bool, results: Sequence[str]
) -> tuple[RolloutState, list[Event]]:
    """Record infra validation: blessed -> first step (blue-green: preview ready), else rollback."""
    if state.phase is not Phase.VALIDATING:
        return state, []  # aborted meanwhile
    blessing = Blessing(backend, now, ok, tuple(results))
    state = replace(state, blessing=blessing)
    if not ok:
        failing = next((r for r in results if "FAIL" in r), results[-1] if results else "no answer")
        why = f"infra validation of {backend} failed: {failing}"
        return _roll_back(state, now, why, EventKind.VALIDATION_FAILED)
    reason = f"{backend} blessed: {len(results)} validation request(s) passed"
    if spec.kind == "blue_green":
        bg: BlueGreenSpec = spec
        if bg.auto_switch and bg.analysis is None:
            why = f"{reason}; auto_switch without analysis"
            return _do_switch(state, bg, now, why, EventKind.BLESSED)
        new = replace(
            state,
            phase=Phase.PROGRESSING,
            window_started_at=now,
            next_analysis_at=now + bg.interval,
            reason=reason,
            changed_at=now,
        )
        return new, [
            Event(EventKind.BLESSED, Phase.VALIDATING, Phase.PROGRESSING, reason, new.step)
        ]
    c: CanarySpec = spec
    if len(c.steps) == 1 and c.gate == "manual":
        state = replace(state, step=-1)
    return _enter(state, c, 0, now, reason, via_gate=False, kind=EventKind.BLESSED)


# ---- actions (pure; the engine maps TransitionError to 409) --------------------------------------


def _by(actor: str, action: str, reason: str | None) -> str:
    return f"{action} by {actor}" + (f": {reason}" if reason else "")


def promote(
    state: RolloutState,
    spec: Spec,
    now: float,
    full: bool = False,
    reason: str | None = None,
    actor: str = "admin",
) -> tuple[RolloutState, list[Event]]:
    """Canary: next step without analysis (or straight to 100% with `full`); blue-green: switch."""
    if state.phase is Phase.ROLLED_BACK and spec.kind == "canary":
        raise TransitionError(
            "the rollout was rolled back; promote does not apply. Use retry to start it again "
            "from validation, or change the candidate's version and reload"
        )
    if state.phase is Phase.PROMOTED:
        raise TransitionError("the rollout is already promoted")
    if state.phase is Phase.VALIDATING or not state.blessed:
        raise TransitionError(
            "the new version has not passed infra validation yet; it may not receive traffic"
        )
    if spec.kind == "blue_green":
        return switch(state, spec, now, reason, actor)
    c: CanarySpec = spec
    why = _by(actor, "promote --full" if full else "promote", reason)
    if full:
        return _enter(state, c, len(c.steps), now, why, via_gate=True)
    return _enter(state, c, state.step + 1, now, why, via_gate=True)


def abort(
    state: RolloutState, spec: Spec, now: float, reason: str | None = None, actor: str = "admin"
) -> tuple[RolloutState, list[Event]]:
    """Everything to stable (blue-green: the original active side) at once, no analysis."""
    if state.phase is Phase.ROLLED_BACK and (
        spec.kind == "canary" or state.active in (None, spec.active)
    ):
        raise TransitionError("the rollout is already rolled back")
    if spec.kind == "blue_green":
        state = replace(state, active=spec.active)
    return _roll_back(state, now, _by(actor, "abort", reason))


def pause(
    state: RolloutState, spec: Spec, now: float, reason: str | None = None, actor: str = "admin"
) -> tuple[RolloutState, list[Event]]:
    """Hold the current weights and suspend analysis until resume."""
    if state.phase is not Phase.PROGRESSING:
        raise TransitionError(
            f"only a progressing rollout can be paused; it is {state.phase.value}"
        )
    why = _by(actor, "pause", reason)
    new = replace(state, phase=Phase.PAUSED, paused_reason=why, reason=why, changed_at=now)
    return new, [Event(EventKind.PAUSED, state.phase, Phase.PAUSED, why, state.step)]


def resume(
    state: RolloutState, spec: Spec, now: float, reason: str | None = None, actor: str = "admin"
) -> tuple[RolloutState, list[Event]]:
    """Continue a paused rollout with a fresh analysis window."""
    if state.phase is not Phase.PAUSED:
        raise TransitionError(f"only a paused rollout can be resumed; it is {state.phase.value}")
    if state.gate_waiting:
        raise TransitionError("the rollout waits at the manual gate: use promote to continue")
    why = _by(actor, "resume", reason)
    new = replace(
        state,
        phase=Phase.PROGRESSING,
        paused_reason=None,
        inconclusive=0,
        window_started_at=now,
        next_analysis_at=now + spec.interval,
        reason=why,
        changed_at=now,
    )
    return new, [Event(EventKind.RESUMED, Phase.PAUSED, Phase.PROGRESSING, why, state.step)]


def retry(
    state: RolloutState, spec: Spec, now: float, reason: str | None = None, actor: str = "admin"
) -> tuple[RolloutState, list[Event]]:
    """Start a rolled-back rollout again from infra validation and step 0 (Argo's retry)."""
    if state.phase is not Phase.ROLLED_BACK:
        raise TransitionError(
            f"only a rolled-back rollout can be retried; it is {state.phase.value}"
        )
    why = _by(actor, "retry", reason)
    new = replace(initial_state(spec, now), reason=why, timeline=state.timeline)
    return new, [Event(EventKind.RETRIED, state.phase, Phase.VALIDATING, why, 0)]


def mark(state: RolloutState, spec: Spec, now: float, event: str) -> RolloutState:
    """The state with one more timeline entry (phase, step, traffic shares), bounded."""
    weights = weights_for(state, spec)
    total = sum(weights.values()) or 1.0
    entry = {
        "at": now,
        "phase": state.phase.value,
        "step": state.step,
        "shares": {b: w / total for b, w in weights.items()},
        "event": event,
    }
    return replace(state, timeline=(*state.timeline, entry)[-TIMELINE_LIMIT:])


def _do_switch(
    state: RolloutState,
    spec: BlueGreenSpec,
    now: float,
    reason: str,
    kind: EventKind | None = None,
) -> tuple[RolloutState, list[Event]]:
    current = state.active or spec.active
    target = spec.preview if current == spec.active else spec.active
    phase = Phase.PROMOTED if target == spec.preview else Phase.ROLLED_BACK
    why = f"{reason}; {target} now serves, {current} kept ready"
    new = replace(
        state,
        phase=phase,
        active=target,
        gate_waiting=False,
        paused_reason=None,
        reason=why,
        changed_at=now,
        kept_ready=True,
    )
    if kind is None:
        kind = EventKind.PROMOTED if phase is Phase.PROMOTED else EventKind.ROLLED_BACK
    return new, [Event(kind, state.phase, phase, why, state.step, switched=True)]


def switch(
    state: RolloutState, spec: Spec, now: float, reason: str | None = None, actor: str = "admin"
) -> tuple[RolloutState, list[Event]]:
    """Blue-green: swap the serving side atomically; switching back is the same action."""
    if spec.kind != "blue_green":
        raise TransitionError("switch applies to blue_green routes; a canary uses promote")
    if state.phase is Phase.VALIDATING or not state.blessed:
        raise TransitionError(
            "the preview has not passed infra validation; it may not receive traffic"
        )
    bg: BlueGreenSpec = spec
    return _do_switch(state, bg, now, _by(actor, "switch", reason))


# ---- blue-green ----------------------------------------------------------------------------------


def blue_green_step(
    state: RolloutState, obs: Observations, spec: BlueGreenSpec, now: float
) -> tuple[RolloutState, list[Event]]:
    """Judge the preview on its (override) traffic; pass -> switch (auto_switch) or wait."""
    a = spec.analysis
    if state.phase is not Phase.PROGRESSING or state.gate_waiting or a is None:
        return state, []
    relative = a.compare == "sequential" or any(
        c.min_relative_to_stable is not None or c.max_relative_to_stable is not None
        for c in a.checks
    )
    label = f"preview {spec.preview}"
    closed, events, passed = _analysis_tick(state, obs, spec, a, now, relative, label)
    if passed is None:
        return closed, events
    why = f"{label} passed analysis: {passed}"
    if spec.auto_switch:
        return _do_switch(closed, spec, now, f"{why}; auto_switch")
    why = f"{why}; waiting for switch"
    new = replace(closed, gate_waiting=True, reason=why, changed_at=now)
    return new, [Event(EventKind.ANALYSIS_PASSED, state.phase, state.phase, why, state.step)]
