"""The validated configuration as frozen dataclasses: what `router/config` produces, all else reads.

Dicts never leave `router/config/`; the rest of the code sees only these types. Names chosen from
a registry (bandit and contextual algorithms, check kinds, store kinds) are plain `str`: the
registry next to the implementation is the one list of them. Durations are float
seconds, sizes are int bytes, percents/weights are floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from policies.guardrails import GuardrailSpec

POLICY_KINDS: tuple[str, ...] = (
    "weighted",
    "blue_green",
    "canary",
    "ab_test",
    "bandit",
    "contextual_bandit",
)
LEARNING_KINDS: frozenset[str] = frozenset({"ab_test", "bandit", "contextual_bandit"})


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Address = Address("127.0.0.1", 9901)
    token_env: str = "MODELROUTER_ADMIN_TOKEN"


@dataclass(frozen=True, slots=True)
class StateConfig:
    store: str = "sqlite"  # a key of router.store.STORE_KINDS
    path: str = "modelrouter.db"  # relative paths resolve against the config file's directory
    url: str | None = None  # store: redis
    lease: float = 10.0  # seconds a rollout's driver holds its lease without renewing it


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = 16 * 1024 * 1024
    max_header: int = 64 * 1024
    max_pending: int = 1024
    trusted_hops: int = 0
    client_header_timeout: float = 30.0  # a request head (or a new connection's first) arrives
    client_body_timeout: float = 60.0  # longest pause between two reads of a request body
    keepalive_timeout: float = 75.0  # an idle client connection is closed after this
    max_connections: int = 4096  # open client connections; more are answered 503 and closed
    max_upstream_header: int = 64 * 1024  # a larger upstream response head is a 502


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    secret_env: str = "MODELROUTER_FEEDBACK_SECRET"
    ttl: float = 3600.0
    missing_reward: float | None = None


@dataclass(frozen=True, slots=True)
class HealthConfig:
    path: str
    interval: float = 5.0


@dataclass(frozen=True, slots=True)
class Rewrite:
    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive ejection of a backend's failing endpoints; Envoy's names and defaults, except
    `max_ejection_percent` (a backend is one model version: the route fails over to others)."""

    consecutive_5xx: int = 5  # failing answers in a row (5xx or failure_status); 0: off
    consecutive_local_origin_failure: int = 5  # connect failures, resets, timeouts; 0: off
    failure_status: frozenset[int] = frozenset()  # more statuses that count as failures (404)
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 100.0


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries to a backend: at most `budget_percent` of its requests in the last 10 s, plus
    `min_retries` (so that a quiet backend can retry at all)."""

    budget_percent: float = 20.0
    min_retries: int = 3


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    url: str  # the first endpoint's URL
    scheme: str  # "http" only for now
    host: str  # the first endpoint (health checks and mirrors of a one-endpoint backend)
    port: int
    base_path: str  # path of url without trailing slash, prefixed to every request path, or ""
    version: str | None = None
    timeout: float = 30.0
    health: HealthConfig | None = None
    rewrite: Rewrite | None = None
    # every endpoint, the first being (host, port); empty means just (host, port)
    endpoints: tuple[Address, ...] = ()
    outlier: OutlierDetection = OutlierDetection()
    retry_budget: RetryBudget = RetryBudget()

    def addresses(self) -> tuple[Address, ...]:
        """The endpoints requests are balanced across."""
        return self.endpoints or (Address(self.host, self.port),)


@dataclass(frozen=True, slots=True)
class Match:
    path_prefix: str = "/"  # whole segments: "/a" matches /a, /a/b and /a:predict, not /ab
    methods: frozenset[str] | None = None  # upper-case; None = any method
    path_exact: str | None = None  # set: only this path (path_prefix is ignored)
    path_regex: str | None = None  # set: the whole path must match (path_prefix is ignored)


OverrideKind = Literal["header", "header_prefix", "header_regex", "cookie"]


@dataclass(frozen=True, slots=True)
class Override:
    kind: OverrideKind
    name: str  # header name lower-case, or cookie name
    value: str  # exact value, prefix, or regex source
    backend: str


StickySource = Literal["header", "cookie", "query", "ip"]


@dataclass(frozen=True, slots=True)
class Sticky:
    source: StickySource
    name: str  # header names lower-case; "" for ip (the client address, see limits.trusted_hops)


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int = 0  # extra attempts after the first
    on: frozenset[str] = frozenset({"connect-failure"})
    status: frozenset[int] = frozenset()  # answers with these statuses are retried too
    # re-send non-idempotent requests (POST, PATCH) whose bytes may have reached an upstream
    non_idempotent: bool = False


@dataclass(frozen=True, slots=True)
class Mirror:
    backend: str
    percent: float


# ---- policy specs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RewardSpec:
    type: Literal["binary", "continuous"] = "binary"
    source: Literal["feedback", "response"] = "feedback"
    # source == "response": reward = 1 when status < max_status (and latency <= max_latency if set)
    max_status: int = 500
    max_latency: float | None = None
    # continuous rewards: the declared [low, high]; feedback outside it is refused with 422
    range: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class ValidateRequest:
    method: str = "GET"
    path: str = "/"
    body: object | None = None  # JSON-serialisable, sent as application/json
    headers: tuple[tuple[str, str], ...] = ()
    expect_status: int = 200


@dataclass(frozen=True, slots=True)
class ValidateSpec:
    requests: tuple[ValidateRequest, ...]  # empty -> the backend's health path (or "/")
    timeout: float = 5.0
    attempts: int = 3


@dataclass(frozen=True, slots=True)
class Check:
    metric: str  # a key of policies.checks.CHECK_KINDS; its params are the fields below
    max: float | None = None  # latency_p99: seconds
    min: float | None = None
    min_relative_to_stable: float | None = None  # reward_mean
    max_relative_to_stable: float | None = None
    query: str | None = None  # prometheus
    url: str | None = None  # prometheus base URL
    failure_status: str | None = None  # error_rate: "5xx,404" (canonical, see checks.statuses)


@dataclass(frozen=True, slots=True)
class AnalysisSpec:
    min_requests: int = 100
    failure_limit: int = 2
    checks: tuple[Check, ...] = ()
    compare: Literal["sequential", "none"] = "none"
    alpha: float = 0.05  # for compare: sequential
    confidence: float = 0.95  # threshold checks fail only when the bound is past the limit
    inconclusive_limit: int = 5  # inconclusive analyses in a row before on_inconclusive; 0: never
    on_inconclusive: Literal["pause", "rollback"] = "pause"
    progress_deadline: float | None = None  # seconds progressing without a transition


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    on: frozenset[str]  # phases / events: progressing, paused, promoted, rolled_back, ...


@dataclass(frozen=True, slots=True)
class WeightedSpec:
    weights: dict[str, float]  # backend -> weight, insertion order = bucket order
    kind: Literal["weighted"] = "weighted"


@dataclass(frozen=True, slots=True)
class BlueGreenSpec:
    active: str
    preview: str
    analysis: AnalysisSpec | None = None
    auto_switch: bool = False
    validate: ValidateSpec | None = None
    webhooks: tuple[Webhook, ...] = ()
    interval: float = 60.0  # how often the preview analysis runs
    kind: Literal["blue_green"] = "blue_green"


@dataclass(frozen=True, slots=True)
class CanarySpec:
    stable: str
    candidate: str
    steps: tuple[float, ...]
    interval: float = 60.0
    validate: ValidateSpec | None = None
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    gate: Literal["auto", "manual"] = "auto"
    webhooks: tuple[Webhook, ...] = ()
    kind: Literal["canary"] = "canary"


@dataclass(frozen=True, slots=True)
class TestSpec:
    method: Literal["z_test", "welch_t", "msprt", "bayesian"] = "msprt"
    alpha: float = 0.05
    min_samples: int = 1000  # per arm, before the test may decide
    # msprt: standard deviation of the normal mixing distribution over the true difference, in
    # reward units (the same meaning as the canary's sequential test); None = 0.1 x pooled sd.
    # The old key `tau` (a variance) is read as mixing_sd = sqrt(tau) with a warning.
    mixing_sd: float | None = None


@dataclass(frozen=True, slots=True)
class ABTestSpec:
    arms: dict[str, str]  # experiment arm name -> backend
    split: dict[str, float]
    reward: RewardSpec = field(default_factory=RewardSpec)
    test: TestSpec = field(default_factory=TestSpec)
    conclude: Literal["route_winner", "stop", "none"] = "none"
    guardrails: tuple[GuardrailSpec, ...] = ()
    # the route has a sticky key: users are randomised, so users are the unit of analysis
    # (set by the config loader from routes[].sticky)
    sticky: bool = False
    kind: Literal["ab_test"] = "ab_test"


@dataclass(frozen=True, slots=True)
class BanditSpec:
    arms: tuple[str, ...]  # backend names
    algorithm: str = "thompson"  # a key of policies.bandits.ALGORITHMS
    reward: RewardSpec = field(default_factory=RewardSpec)
    params: dict[str, float] = field(default_factory=dict)
    min_share: float = 0.0
    discount: float = 1.0
    guardrails: tuple[GuardrailSpec, ...] = ()
    kind: Literal["bandit"] = "bandit"


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    source: Literal["header", "cookie", "query", "json"]
    key: str  # header name (lower-case), cookie/query name, or JSON pointer ("/instances/0/age")
    type: Literal["categorical", "numeric"]
    values: tuple[str, ...] = ()  # categorical
    scale: float = 1.0  # numeric: multiplies the raw value (then clipped to +-clip)
    default: float = 0.0  # numeric, when missing or unparsable (on the encoded axis)
    # numeric: declared range of the (scaled) value; encodes as (v - low) / (high - low) clipped
    # to [0, 1]. With neither range nor scale the value is standardised online.
    range: tuple[float, float] | None = None
    clip: float = 4.0  # numeric: bound of the encoded value without a range (+-clip)


@dataclass(frozen=True, slots=True)
class ContextualSpec:
    arms: tuple[str, ...]
    algorithm: str = "linucb"  # a key of policies.contextual.ALGORITHMS
    params: dict[str, float] = field(default_factory=dict)
    features: tuple[Feature, ...] = ()
    reward: RewardSpec = field(default_factory=RewardSpec)
    kind: Literal["contextual_bandit"] = "contextual_bandit"


PolicySpec = WeightedSpec | BlueGreenSpec | CanarySpec | ABTestSpec | BanditSpec | ContextualSpec


@dataclass(frozen=True, slots=True)
class DecisionLogSpec:
    """`routes[].decision_log`: where and how a learning route records its decisions."""

    path: str  # relative paths resolve against the config file's directory
    sample_rate: float = 1.0
    rotate_size: int = 64 * 1024 * 1024
    rotate_interval: float = 86_400.0
    retention: float = 7 * 86_400.0
    queue: int = 65_536  # records waiting for the writer; more are dropped and counted


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    match: Match
    policy: PolicySpec
    overrides: tuple[Override, ...] = ()
    sticky: Sticky | None = None
    retries: Retries = field(default_factory=Retries)
    timeout: float | None = None  # whole-request deadline; None = backend timeout only
    mirror: Mirror | None = None
    decision_log: DecisionLogSpec | None = None
    warm_start: str | None = None  # a replay --fit / snapshot file the policy starts from

    @property
    def backends(self) -> tuple[str, ...]:
        """Every backend this route may send a request to (policy arms, overrides), in order."""
        names: list[str] = list(policy_backends(self.policy))
        for o in self.overrides:
            if o.backend not in names:
                names.append(o.backend)
        return tuple(names)


def policy_backends(p: PolicySpec) -> tuple[str, ...]:
    """The backends a policy chooses among, in a stable order."""
    if isinstance(p, WeightedSpec):
        return tuple(p.weights)
    if isinstance(p, BlueGreenSpec):
        return (p.active, p.preview)
    if isinstance(p, CanarySpec):
        return (p.stable, p.candidate)
    if isinstance(p, ABTestSpec):
        return tuple(dict.fromkeys(p.arms.values()))
    return tuple(p.arms)


@dataclass(frozen=True, slots=True)
class Config:
    backends: dict[str, BackendConfig]
    routes: tuple[RouteConfig, ...]
    version: int = 1
    listen: Address = Address("0.0.0.0", 8080)
    admin: AdminConfig = field(default_factory=AdminConfig)
    state: StateConfig = field(default_factory=StateConfig)
    limits: Limits = field(default_factory=Limits)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    source: str = "<string>"  # the file it was read from
    # non-fatal findings (e.g. a route shadowed by an earlier one), formatted like errors
    warnings: tuple[str, ...] = field(default=(), compare=False)
