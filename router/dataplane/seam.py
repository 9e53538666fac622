"""The seam between a data plane and the routing runtime: all a data plane may use of it.

A data plane (the HTTP/1.1 proxy in this package; a gRPC one could be another) turns each
request into a `Request` view, asks `Router.match` for the route, `Route.select` (or
`select_plain` for a plain route) for the backend, forwards, then reports the outcome with
`Route.record`. Feedback posts go to `Router.handle_feedback`. `router.runtime.Runtime` and
`RouteRuntime` provide these protocols; nothing else of the runtime is reached from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    from policies.base import Context, Decision
    from policies.spec import BackendConfig, Config, RouteConfig
    from router.dataplane.endpoints import EndpointGroup
    from router.dataplane.mirror import Mirrorer

__all__ = ["Backend", "Metrics", "Request", "Route", "Router", "Selection"]


class Request:
    """One request as routing sees it: method, raw path and query, headers as received."""

    __slots__ = (
        "_cookies",
        "body",
        "client_ip",
        "headers",
        "method",
        "path",
        "query",
        "request_id",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        client_ip: str,
        body: bytes | None = None,
        request_id: bytes | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.client_ip = client_ip
        self.body = body
        self.request_id = request_id  # x-request-id as forwarded (the decision log records it)
        self._cookies: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (given lower-case), or None."""
        key = name.encode("latin-1")
        n = len(key)
        for k, v in self.headers:
            if len(k) == n and k.lower() == key:
                return v.decode("latin-1")
        return None

    def cookie(self, name: str) -> str | None:
        """The value of cookie `name` (first occurrence across Cookie headers), or None."""
        cookies = self._cookies
        if cookies is None:
            cookies = self._cookies = {}
            for k, v in self.headers:
                if len(k) == 6 and k.lower() == b"cookie":
                    for part in v.decode("latin-1").split(";"):
                        ck, sep, cv = part.strip().partition("=")
                        if sep and ck not in cookies:
                            cv = cv.strip()
                            if len(cv) >= 2 and cv[0] == cv[-1] == '"':
                                cv = cv[1:-1]
                            cookies[ck] = cv
        return cookies.get(name)

    def query_param(self, name: str) -> str | None:
        """The first value of query parameter `name` (percent-decoded), or None."""
        if not self.query:
            return None
        for part in self.query.split("&"):
            k, _, v = part.partition("=")
            if k == name or unquote_plus(k) == name:
                return unquote_plus(v)
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}{'?' + self.query if self.query else ''}>"


class Backend(Protocol):
    """One configured backend: its config, whether it is up, and its endpoints."""

    @property
    def name(self) -> str: ...
    @property
    def cfg(self) -> BackendConfig: ...
    @property
    def up(self) -> bool:
        """Some endpoint takes requests (healthy and not ejected)."""
        ...

    @property
    def group(self) -> EndpointGroup:
        """Its endpoints: one connection pool each, balancer, outlier detector, retry budget
        (built and closed by the runtime, which also feeds it active health checks)."""
        ...


class Selection:
    """Where one request goes and why (made by `Route.select`, handed back to `Route.record`)."""

    __slots__ = ("arm", "backend", "context", "decision", "logged", "token")

    def __init__(
        self,
        backend: Backend,
        arm: str | None,
        decision: Decision | None,
        context: Context | None,
        token: str | None,
    ) -> None:
        self.backend = backend
        self.arm = arm  # the policy arm; None when an override chose the backend
        self.decision = decision
        self.context = context
        self.token = token  # x-modelrouter-decision on learning routes
        self.logged: str | None = None  # decision id, when the decision log holds its record

    def __repr__(self) -> str:
        return f"<Selection {self.backend.name} arm={self.arm!r}>"


class Route(Protocol):
    """A matched route: choose the backend, then count the outcome."""

    @property
    def name(self) -> str: ...
    @property
    def cfg(self) -> RouteConfig: ...
    @property
    def plain(self) -> bool:
        """True when selection looks at nothing of the request: call `select_plain`."""
        ...

    @property
    def needs_body(self) -> bool:
        """True when selection needs the whole request body (`Request.body`)."""
        ...

    @property
    def mirror(self) -> Mirrorer | None: ...
    def select(self, req: Request) -> Selection: ...
    def select_plain(self) -> Selection: ...
    def record(self, sel: Selection, status: int, latency: float, error: str | None) -> None: ...
    def reselect(self, sel: Selection, req: Request | None) -> Selection | None:
        """Another backend for a retry of `sel` (whose backend failed it), chosen as the
        route's policy would without that backend; None when there is none."""
        ...

    def attempt_failed(
        self, sel: Selection, status: int, latency: float, error: str | None
    ) -> None:
        """An attempt failed and is retried: count the error and let the policy see it."""
        ...


class Metrics(Protocol):
    """The counters a data plane moves itself (everything per route goes through `record`)."""

    def request_unmatched(self, code: int) -> None: ...
    def request_feedback(self, code: int, seconds: float) -> None: ...
    def connection_refused(self) -> None: ...
    def count_connections(self, count: Callable[[], int]) -> None: ...
    def mirror(self, route: str, backend: str, result: str) -> None: ...
    def retry(self, route: str, backend: str, reason: str) -> None: ...
    def retry_budget_exhausted(self, route: str, backend: str) -> None: ...


class Router(Protocol):
    """The routing table as a data plane sees it (`router.runtime.Runtime`)."""

    @property
    def config(self) -> Config: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def backends(self) -> Mapping[str, Backend]: ...
    def match(self, method: str, path: str) -> Route | None: ...
    async def handle_feedback(self, body: bytes) -> tuple[int, bytes]: ...
