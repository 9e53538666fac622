"""The engine seam: one engine per route drives its policy, observes outcomes and reports status.

Engines are built by `ENGINES[kind](route_cfg, services)`; `router/runtime.py` owns their life.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from policies.base import Context, Decision
from policies.spec import policy_backends
from router.errors import ActionError as ActionError  # re-exported: engines raise it

if TYPE_CHECKING:
    import aiohttp

    from policies.spec import BackendConfig, Config, RouteConfig
    from router.audit import Audit
    from router.dataplane.seam import Request
    from router.metrics import Metrics
    from router.store.base import Store


_NODE: tuple[int, str] | None = None


def node_id() -> str:
    """This process's name in leases and window parts: stable across reloads, new after a fork
    (each `serve --workers` process is its own node)."""
    global _NODE
    pid = os.getpid()
    if _NODE is None or _NODE[0] != pid:
        _NODE = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _NODE[1]


def _always_up(backend: str) -> bool:
    return True


class Decider(Protocol):
    """Which process decides: token ids start with `prefix` (router.feedback.TokenSigner)."""

    @property
    def prefix(self) -> str: ...

    def renew_prefix(self) -> str: ...


@dataclass
class Services:
    """What engines may use; injected so tests can swap the clock, the rng or the store."""

    config: Config
    store: Store
    metrics: Metrics
    audit: Audit
    backends: Mapping[str, BackendConfig]
    clock: Callable[[], float] = time.time
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    # set once the event loop runs (router/runtime.py opens it); engines that call out use it
    http: aiohttp.ClientSession | None = None
    # backend name -> passing health checks (the runtime's view); rollouts fail a down candidate
    backend_up: Callable[[str], bool] = _always_up
    node: str = field(default_factory=node_id)
    # the token signer: learning engines tell the decisions of this process by its prefix
    decider: Decider | None = None


class Engine(Protocol):
    """What the runtime, the feedback endpoint and the admin API need of a route's engine.

    Engines derive from `EngineBase`, which supplies the optional capabilities below with their
    plain-route defaults; an engine overrides only what it does differently.
    """

    kind: str
    route: str  # the route's name
    arms: tuple[str, ...]  # backends the policy chooses among (a decision token names one)
    learns: bool  # issues decision tokens (x-modelrouter-decision) and takes feedback
    reward_type: str  # "binary" | "continuous": what feedback may carry (when it learns)
    reward_range: tuple[float, float] | None  # declared [low, high] of a continuous reward
    layout: str | None  # digest of the feature layout decision tokens must match (contextual)
    reads_request: bool  # make_context looks at the request (features): never a plain route
    needs_body: bool  # make_context needs the request body (json: features)
    observes_overrides: bool  # observe() also sees traffic an override sent (rollout analysis)
    counts_decisions: bool  # choose() counts decisions_total itself (else the runtime does)

    def admits(self, backend: str) -> bool:
        """Whether an override may send a request to `backend` now."""
        ...

    def override_backend(self, backend: str) -> str:
        """Where an override naming `backend` sends its request (blue-green: the preview
        override follows the inactive side)."""
        ...

    def make_context(self, req: Request, bucket: int | None) -> Context:
        """The policy's view of one request (called when `reads_request`)."""
        ...

    def choose(self, ctx: Context, healthy: Callable[[str], bool] | None = None) -> Decision: ...

    def observe(
        self, arm: str, status: int, latency: float, error: str | None, ctx: Context | None = None
    ) -> None: ...

    def feedback(
        self,
        arm: str,
        reward: float,
        ctx: Context,
        token_id: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None: ...

    def shares(self) -> dict[str, float]: ...

    def status(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def action(
        self, name: str, reason: str | None, actor: str, params: Mapping[str, Any]
    ) -> dict[str, Any]: ...


class EngineBase:
    """Defaults for an engine's optional capabilities: a route that learns nothing from the
    request or its outcome. Subclasses implement choose, shares, status and action."""

    kind: str = ""
    learns: bool = False
    reward_type: str = "continuous"
    reward_range: tuple[float, float] | None = None
    layout: str | None = None
    reads_request: bool = False
    needs_body: bool = False
    observes_overrides: bool = False
    counts_decisions: bool = False

    def __init__(self, route: RouteConfig, services: Services) -> None:
        self.route = route.name
        self.services = services
        self.arms: tuple[str, ...] = policy_backends(route.policy)

    def admits(self, backend: str) -> bool:
        return True

    def override_backend(self, backend: str) -> str:
        return backend

    def make_context(self, req: Request, bucket: int | None) -> Context:
        return Context(bucket=bucket)

    def observe(
        self, arm: str, status: int, latency: float, error: str | None, ctx: Context | None = None
    ) -> None:
        return None

    def feedback(
        self,
        arm: str,
        reward: float,
        ctx: Context,
        token_id: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        # the feedback endpoint only hands rewards to engines that learn
        raise TypeError(f"route '{self.route}' ({self.kind}) does not take feedback")

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


EngineFactory = Callable[["RouteConfig", Services], Engine]
