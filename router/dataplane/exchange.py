"""One request and its response through the proxy: the exchange.

An `Exchange` is created by the listener when a request head is complete. It asks the route
for a backend (`select`), takes a pooled upstream connection, writes the request head and body
as they arrive, re-frames the upstream's answer onto the client connection, retries what the
route allows, answers errors of its own, and finally records the outcome with `Route.record`.
Upstream events arrive as the `UpstreamUser` callbacks (`u_*`); timeouts are checked by the
server's coarse tick (`on_tick`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from router.dataplane.answers import STATUS_LINES, error_body, error_response, status_line
from router.dataplane.mirror import capture_primary, resolve_primary, send_copy
from router.dataplane.retry import IDEMPOTENT_METHODS
from router.dataplane.upstream import PoolFull, UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from router.dataplane.balance import Endpoint
    from router.dataplane.endpoints import EndpointGroup
    from router.dataplane.listener import ClientProtocol
    from router.dataplane.mirror import Mirrorer
    from router.dataplane.seam import Request, Route, Selection

log = logging.getLogger("modelrouter.proxy")

BUFFER_HIGH: Final = 256 * 1024  # request body buffered before the upstream connection: pause
KEEP_MAX: Final = 64 * 1024  # request bodies up to this are kept for a retry
WARN_INTERVAL: Final = 10.0

# pause reasons of the client transport (a bit mask: reading resumes when all are gone)
P_PIPE: Final = 1  # a pipelined request waits for the one before it
P_UPSTREAM: Final = 2  # the upstream transport's write buffer is full
P_BUFFER: Final = 4  # body buffered while waiting for an upstream connection
P_DEAD: Final = 8  # the parser failed: nothing more is read

# states of an exchange
S_WAIT: Final = 0  # created; waiting for its turn (pipelining) or for the body (needs_body)
S_CONNECTING: Final = 1  # waiting for an upstream connection
S_SENDING: Final = 2  # bound to an upstream connection
S_DONE: Final = 3  # response finished (request body, if any left, is discarded)

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_END: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"
_NO_BODY_STATUS: Final = frozenset({204, 304})

_ERR_502: Final = error_body(502, "upstream unavailable")
_ERR_502_PROTO: Final = error_body(502, "upstream sent an invalid response")
_ERR_503_DOWN: Final = error_body(503, "no healthy backend")
_ERR_503_FULL: Final = error_body(503, "too many requests waiting for the backend")
_ERR_504: Final = error_body(504, "upstream timeout")
ERR_500: Final = error_body(500, "internal error")

_RETRY_ON: Final = {"connect": "connect-failure", "reset": "reset", "timeout": "timeout"}
_LOCAL_ERROR: Final = {v: k for k, v in _RETRY_ON.items()}  # retry reason -> upstream error
_IDEMPOTENT: Final = frozenset(m.encode() for m in IDEMPOTENT_METHODS)

_last_warn: dict[str, float] = {}


def _warn(key: str, msg: str, *args: object) -> None:
    """WARNING at most once per WARN_INTERVAL per key; DEBUG otherwise."""
    now = time.monotonic()
    if now - _last_warn.get(key, -WARN_INTERVAL) >= WARN_INTERVAL:
        _last_warn[key] = now
        log.warning(msg, *args)
    elif log.isEnabledFor(logging.DEBUG):
        log.debug(msg, *args)


class Exchange:
    """One request and its response through the proxy."""

    # No __slots__: the class-level defaults below let __init__ set only what differs per
    # request, which is most of the cost of creating one exchange per request.
    req: Request | None = None
    route: Route | None  # set in __init__: mypyc drops class-level defaults of protocol type
    sel: Selection | None = None
    pool: UpstreamPool | None = None  # the pool of the current attempt's endpoint
    group: EndpointGroup | None = None  # the endpoints of sel.backend
    ep: Endpoint | None = None  # the current attempt's endpoint
    counting = False  # the current attempt counts in ep.outstanding
    sent = False  # some byte of the current attempt may have reached the upstream
    conn: UpstreamConnection | None = None
    state = S_WAIT
    pending: tuple[int, bytes] | None = None  # an answer of our own, instead of proxying
    keep_alive = True
    version10 = False
    close_after = False
    chunked_in = False
    clen_in: bytes | None = None
    expect = False
    needs_body = False
    feedback = False  # a POST to the feedback endpoint (counted under its own route label)
    req_done = False
    resp_started = False
    recorded = False
    body_seen = 0
    head_pieces: list[bytes] = []  # noqa: RUF012 - replaced, never mutated in place
    target = b""
    up_head = b""
    out_up: list[bytes] | None = None  # bytes for the upstream not written yet
    out_up_size = 0
    out_down: list[bytes] | None = None
    kept: list[bytes] | None  # framed body sent so far, for a retry
    kept_size = 0
    attempts = 0
    stale_retry = True
    down_chunked = False
    status = 0
    error: str | None = None
    check_at = 0.0  # when the server tick looks at this exchange's timeouts next
    primary: asyncio.Future[tuple[int, bytes | None]] | None = None  # a mirror compares with it
    mirror_body: list[bytes] | None = None  # the primary's body for the mirror comparison
    mirror_size = 0
    mirror_req: tuple[Mirrorer, str, str, list[tuple[bytes, bytes]]] | None = None

    def __init__(self, proto: ClientProtocol, method: bytes, rid: bytes) -> None:
        self.proto = proto
        self.loop = proto.loop
        self.method = method
        self.is_head = method == b"HEAD"
        self.rid = rid
        self.route = None
        self.kept = []
        # the time the request's bytes arrived (set by data_received: no clock read here)
        self.start = self.last_io = proto.last_active

    # ---- request side (from the client parser) -------------------------------------------------

    def body(self, data: bytes) -> None:
        n = len(data)
        self.body_seen += n
        if self.state == S_DONE:
            return  # response already finished: the rest of the body is discarded
        if self.chunked_in:
            framed: list[bytes] = [b"%x\r\n" % n, data, _CRLF]
            size = n + 8
        else:
            framed = [data]
            size = n
        kept = self.kept
        if kept is not None:
            if self.kept_size + size <= KEEP_MAX:
                kept += framed
                self.kept_size += size
            else:
                self.kept = None
        out = self.out_up
        if out is None:
            conn = self.conn
            if conn is not None and self.state == S_SENDING:
                conn.writelines(framed)
                return
            out = self.out_up = []
        out += framed
        self.out_up_size += size
        if self.state != S_SENDING and self.out_up_size > BUFFER_HIGH and not self.needs_body:
            self.proto.pause(P_BUFFER)

    def body_done(self) -> None:
        self.req_done = True
        if self.mirror_req is not None:
            send_copy(self)
        if self.state == S_DONE:
            self.maybe_finish()
            return
        if self.chunked_in:
            if self.kept is not None:
                self.kept.append(_CHUNK_END)
            if self.out_up is not None:
                self.out_up.append(_CHUNK_END)
            elif self.conn is not None and self.state == S_SENDING:
                self.conn.write(_CHUNK_END)
            else:
                self.out_up = [_CHUNK_END]
        if self.needs_body and self.sel is None and self.pending is None and self.route is not None:
            self._select_buffered()

    def flush_up(self) -> None:
        out = self.out_up
        if out is not None and self.state == S_SENDING and self.conn is not None:
            self.out_up = None
            self.out_up_size = 0
            self.conn.writelines(out)
            if self.proto.paused & P_BUFFER:
                self.proto.resume(P_BUFFER)

    # ---- routing -------------------------------------------------------------------------------

    def select(self) -> None:
        """Pick the backend (route.select) and build the upstream request head."""
        req = self.req
        route = self.route
        assert route is not None
        try:
            sel = self.sel = route.select_plain() if req is None else route.select(req)
        except Exception:
            log.exception("route %r: select failed", route.name)
            self.pending = (500, ERR_500)
            return
        backend = sel.backend
        group = backend.group
        ep = group.balancer.pick() if backend.up else None
        if ep is None:
            self.pending = (503, _ERR_503_DOWN)
            return
        self.group = group
        self._use(ep)

    def _use(self, ep: Endpoint) -> None:
        """Send the next attempt to `ep` (of self.group): its pool, its request head."""
        self.ep = ep
        group = self.group
        assert group is not None
        pool = self.pool = group.pools[ep.index]
        target = self.target if pool.plain_target else pool.target(self.target)
        parts = [self.method, b" ", target, pool.host_line]
        parts += self.head_pieces
        self.up_head = b"".join(parts)

    def _select_buffered(self) -> None:
        req = self.req
        assert req is not None and self.out_up is not None
        out = self.out_up
        if self.chunked_in:  # un-frame: the body for features is the payload itself
            req.body = b"".join(out[1::3])
        else:
            req.body = b"".join(out)
        self.select()
        if self.state == S_CONNECTING:  # it was its turn already: go
            self.state = S_WAIT
            self.go()

    # ---- running -------------------------------------------------------------------------------

    def go(self) -> None:
        """It is this exchange's turn to answer (everything before it on the connection is done)."""
        if self.pending is not None:
            status, body = self.pending
            self.respond_error(status, body)
            return
        route = self.route
        if self.sel is None or route is None:  # needs_body: waiting for the whole body
            self.state = S_CONNECTING
            if self.expect and not self.req_done:
                self.proto.write(_CONTINUE)
                self.expect = False
            return
        self._arm_timer()
        self.attempts = route.cfg.retries.attempts
        if self.attempts:
            group = self.group
            assert group is not None
            group.budget.request(self.start)
        self._attempt(fresh=False)

    def _attempt(self, fresh: bool) -> None:
        self.state = S_CONNECTING
        pool = self.pool
        assert pool is not None
        ep = self.ep
        assert ep is not None
        ep.outstanding += 1
        self.counting = True
        self.sent = False
        try:
            conn = pool.acquire(self, fresh=fresh)
        except PoolFull:
            self.respond_error(503, _ERR_503_FULL)
            return
        if conn is not None:  # an idle pooled connection: no time has passed
            if self.proto.lost:
                pool.release(conn, True)
                return
            self._send_request(conn)

    def _end_attempt(self) -> None:
        if self.counting:
            self.counting = False
            ep = self.ep
            assert ep is not None
            ep.outstanding -= 1

    def _send_request(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.state = S_SENDING
        self.sent = True
        if self.is_head:
            conn.skip_body = True
        if self.proto.write_paused:
            conn.pause_reading()
        out = self.out_up
        proto = self.proto
        if proto.in_feed and proto.ex_in is self:
            # the client parser is still running on this request: its body (if any) follows in
            # this same feed, so the head and the body leave in one write (flush_up)
            if out is None:
                self.out_up = [self.up_head]
            else:
                out.insert(0, self.up_head)
        elif out is None:
            conn.write(self.up_head)
        else:
            self.out_up = None
            self.out_up_size = 0
            out.insert(0, self.up_head)
            conn.writelines(out)
            proto.resume(P_BUFFER)
        if self.expect and not self.req_done:
            self.expect = False
            self.proto.write(_CONTINUE)

    def _arm_timer(self) -> None:
        # timeouts are checked by the server's coarse tick (TICK), not a loop timer per request:
        # creating and cancelling a TimerHandle per request costs more than the whole check
        sel, route = self.sel, self.route
        assert sel is not None and route is not None
        bt = sel.backend.cfg.timeout
        rt = route.cfg.timeout
        at = self.last_io + bt
        if rt is not None and self.start + rt < at:
            at = self.start + rt
        self.check_at = at
        self.proto.server.inflight.add(self)

    def on_tick(self, now: float) -> None:
        """Called by the server tick once `now >= check_at`."""
        if self.state == S_DONE:
            self.proto.server.inflight.discard(self)
            return
        sel, route = self.sel, self.route
        assert sel is not None and route is not None
        bt = sel.backend.cfg.timeout
        rt = route.cfg.timeout
        deadline = self.start + rt if rt is not None else None
        if (deadline is None or now < deadline) and now - self.last_io < bt:
            at = self.last_io + bt
            if deadline is not None and deadline < at:
                at = deadline
            self.check_at = at
            return
        self.proto.server.inflight.discard(self)
        if self.ep is not None and self.group is not None and not self.resp_started:
            self.group.local_failure(self.ep, "timeout", now)
        self._fail("timeout", retryable=deadline is None or now < deadline)

    # ---- upstream events (upstream.UpstreamUser) ------------------------------------------------

    def u_connected(self, conn: UpstreamConnection) -> None:
        if self.state != S_CONNECTING or self.proto.lost or conn.pool is not self.pool:
            conn.pool.release(conn, True)  # (a pool this exchange has left: back to it)
            return
        self.last_io = self.loop.time()
        self._send_request(conn)

    def u_connect_failed(self, exc: BaseException) -> None:
        if self.state != S_CONNECTING:
            return
        name = self._backend_name()
        ep, group = self.ep, self.group
        assert ep is not None and group is not None
        _warn("connect:" + name, "cannot connect to backend %s at %s: %s", name, ep.address, exc)
        group.local_failure(ep, "connect-failure", self.loop.time())
        self._fail("connect")

    def u_activity(self) -> None:
        self.last_io = self.loop.time()

    def u_head(self, conn: UpstreamConnection) -> None:
        status = conn.status
        sel, route, group, ep = self.sel, self.route, self.group, self.ep
        assert sel is not None and route is not None and group is not None and ep is not None
        group.answered(ep, status, self.last_io)
        if status >= 400 and self.attempts > 0:
            rc = route.cfg.retries
            reason = None
            if status >= 500 and "5xx" in rc.on:
                reason = "5xx"
            elif status in rc.status:
                reason = "retriable-status"
            if reason is not None and self._maybe_retry(reason, status):
                return
            sel = self.sel
            assert sel is not None
        self.status = status
        self.resp_started = True
        proto = self.proto
        parts = [STATUS_LINES[status] if status < 600 else status_line(status)]
        parts += conn.headers
        if not (self.is_head or status in _NO_BODY_STATUS):
            if conn.chunked or conn.clen is None:
                if self.version10:
                    self.close_after = True  # HTTP/1.0: the end of the body is the close
                else:
                    self.down_chunked = True
                    parts.append(b"transfer-encoding: chunked\r\n")
        elif conn.chunked and self.is_head and not self.version10:
            parts.append(b"transfer-encoding: chunked\r\n")
        assert self.pool is not None
        parts.append(self.pool.backend_line)
        token = sel.token
        if token is not None:
            parts += (b"x-modelrouter-decision: ", token.encode("latin-1"), _CRLF)
        parts += (b"x-request-id: ", self.rid, _CRLF)
        if not self.req_done:
            self.close_after = True  # the upstream answered early: don't read on for a body
        if self.close_after or not self.keep_alive or proto.draining:
            self.close_after = True
            parts.append(b"connection: close\r\n\r\n")
        elif self.version10:
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(_CRLF)
        self.out_down = parts

    def u_body(self, data: bytes) -> None:
        if self.primary is not None:
            capture_primary(self, data)
        out = self.out_down
        if out is None:
            out = self.out_down = []
        if self.down_chunked:
            out += (b"%x\r\n" % len(data), data, _CRLF)
        else:
            out.append(data)

    def u_done(self, conn: UpstreamConnection) -> None:
        out = self.out_down
        if self.down_chunked:
            if out is None:
                out = [_CHUNK_END]
            else:
                out.append(_CHUNK_END)
        proto = self.proto
        if out is not None:
            self.out_down = None
            proto.writelines(out)
        self.conn = None
        if proto.paused & P_UPSTREAM:
            proto.resume(P_UPSTREAM)
        pool = self.pool
        assert pool is not None
        end = self.last_io  # when the last bytes of the answer arrived (and left, just now)
        pool.release(conn, self.req_done and not self.is_head and conn.reusable(), end)
        self._end_attempt()
        self.state = S_DONE
        if self.primary is not None:
            resolve_primary(self)
        if not self.recorded:
            self._record(end)
        if self.req_done or self.close_after:
            proto.finished(self)

    def u_flush(self) -> None:
        out = self.out_down
        if out is not None:
            self.out_down = None
            self.proto.writelines(out)

    def u_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        if self.conn is not conn:
            return
        self.conn = None
        if self.resp_started and not conn.chunked and conn.clen is None and not self.is_head:
            self.u_done(conn)  # body delimited by the close: this is its end
            return
        route = self.route
        assert route is not None
        if (
            conn.reused
            and not conn.got_bytes
            and self.stale_retry
            and self.kept is not None
            and not self.resp_started
            and (self.method in _IDEMPOTENT or route.cfg.retries.non_idempotent)
        ):
            # a kept-alive connection closed as the request went out (the upstream's idle
            # timeout, or it died): once more on a fresh connection to the same endpoint. Only
            # for requests that may be sent twice: the upstream may have read this one.
            self.stale_retry = False
            self.proto.runtime.metrics.retry(route.name, self._backend_name(), "connection-closed")
            self._end_attempt()
            self._retry(fresh=True, drop=False)
            return
        name = self._backend_name()
        ep, group = self.ep, self.group
        assert ep is not None and group is not None
        _warn(
            "reset:" + name,
            "backend %s at %s closed the connection%s: %s",
            name,
            ep.address,
            " mid-response" if self.resp_started else " without answering",
            exc or "EOF",
        )
        if not self.resp_started:  # a cut-off body is the client's loss, not counted twice
            group.local_failure(ep, "reset", self.loop.time())
        self._fail("reset")

    def u_error(self, conn: UpstreamConnection, exc: BaseException) -> None:
        if self.conn is not conn:
            return
        name = self._backend_name()
        _warn("proto:" + name, "backend %s: %s", name, exc)
        self._fail("protocol", retryable=False)

    def _backend_name(self) -> str:
        sel = self.sel
        return sel.backend.name if sel is not None else "?"

    def u_pause_writing(self) -> None:
        self.proto.pause(P_UPSTREAM)

    def u_resume_writing(self) -> None:
        self.proto.resume(P_UPSTREAM)

    # ---- failure and retry ---------------------------------------------------------------------

    def _drop_conn(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.user = None
            conn.close()
        self.proto.resume(P_UPSTREAM)

    def _maybe_retry(self, reason: str, status: int) -> bool:
        """Send the request again (elsewhere if possible) if the rules allow; False if not.

        Rules: attempts left, the body still held, nothing sent to the client yet, a method
        that may be sent twice if bytes may have reached the upstream (or the route's
        `non_idempotent`), somewhere to send it, and — if bytes may have reached the
        upstream — the backend's retry budget.
        """
        route = self.route
        if self.attempts <= 0 or self.kept is None or self.resp_started or route is None:
            return False
        if self.sent and not (self.method in _IDEMPOTENT or route.cfg.retries.non_idempotent):
            return False
        failed, group, sel = self.ep, self.group, self.sel
        assert failed is not None and group is not None and sel is not None
        metrics = self.proto.runtime.metrics
        ep = group.balancer.pick(avoid=failed)
        # the budget bounds the load retries add upstream: a connect that failed added none
        if self.sent and not group.budget.try_retry(self.loop.time()):
            metrics.retry_budget_exhausted(route.name, sel.backend.name)
            return False
        if ep is None or ep is failed:
            # no other endpoint of this backend: another arm, as the route's policy chooses
            new = route.reselect(sel, self.req)
            other = new.backend.group.balancer.pick() if new is not None else None
            if new is not None and other is not None:
                self.sel, self.group, ep = new, new.backend.group, other
        if ep is None:
            return False
        self.attempts -= 1
        metrics.retry(route.name, sel.backend.name, reason)
        try:
            route.attempt_failed(
                sel, status, self.loop.time() - self.start, _LOCAL_ERROR.get(reason)
            )
        except Exception:
            log.exception("route %r: recording a failed attempt failed", route.name)
        self._end_attempt()
        if self.state == S_CONNECTING and self.pool is not None:
            self.pool.cancel(self)
        self._drop_conn()
        # the same endpoint again after a connection failure: not on another pooled connection
        fresh = ep is failed and reason in ("connect-failure", "reset", "timeout")
        self._use(ep)
        self._retry(fresh=fresh, drop=False)
        return True

    def _retry(self, *, fresh: bool, drop: bool = True) -> None:
        if drop:
            self._drop_conn()
        else:
            self.conn = None
            self.proto.resume(P_UPSTREAM)
        self.out_down = None
        self.down_chunked = False
        if self.primary is not None:
            self.mirror_body, self.mirror_size = [], 0
        kept = self.kept
        assert kept is not None
        self.out_up = list(kept) if kept else None
        self.out_up_size = self.kept_size
        self.last_io = self.loop.time()
        self._arm_timer()
        self._attempt(fresh=fresh)

    def _fail(self, kind: str, retryable: bool = True) -> None:
        if self.state == S_DONE:
            return
        if self.state == S_CONNECTING and self.pool is not None:
            self.pool.cancel(self)
        reason = _RETRY_ON.get(kind)
        if (
            retryable
            and reason is not None
            and self.route is not None
            and reason in self.route.cfg.retries.on
            and self._maybe_retry(reason, 504 if kind == "timeout" else 502)
        ):
            return
        self._drop_conn()
        self.error = kind
        if self.resp_started:
            # the answer is half sent: closing is the only honest way to say it broke
            self.u_flush()
            if self.primary is not None:
                self.primary.cancel()
                self.primary = None
            self.state = S_DONE
            self.close_after = True
            self.req_done = True
            self.maybe_finish()
            return
        self.respond_error(
            504 if kind == "timeout" else 502,
            _ERR_504 if kind == "timeout" else (_ERR_502_PROTO if kind == "protocol" else _ERR_502),
        )

    # ---- our own answers and the end ---------------------------------------------------------

    def respond_error(self, status: int, body: bytes) -> None:
        self.status = status
        self.resp_started = True
        self._end_attempt()
        if self.conn is not None:
            self._drop_conn()
        if self.state == S_CONNECTING and self.pool is not None:
            self.pool.cancel(self)
        proto = self.proto
        if not self.req_done and (self.state != S_WAIT or self.body_seen or self.expect):
            self.close_after = True  # part of the body may be upstream already, or never comes
        close = self.close_after or not self.keep_alive or proto.draining
        self.close_after = close
        extra = b""
        if self.pool is not None and self.sel is not None:
            extra = self.pool.backend_line
        if self.version10 and not close:
            extra += b"connection: keep-alive\r\n"
        proto.write(
            error_response(status, body, self.rid, close=close, head_only=self.is_head, extra=extra)
        )
        self.state = S_DONE
        if self.primary is not None:
            self.mirror_body = None  # our own answer: compare the status only
            resolve_primary(self)
        self.out_up = None
        self.maybe_finish()

    def respond(self, status: int, body: bytes) -> None:
        """A 2xx-5xx answer of our own with a JSON body (the feedback endpoint)."""
        self.respond_error(status, body)

    def maybe_finish(self) -> None:
        if self.state != S_DONE:
            return
        if not self.recorded:
            self._record()
        if self.req_done or self.close_after:
            self.proto.finished(self)

    def _record(self, end: float = 0.0) -> None:
        """Count the request; `end` is when its answer completed (0: now)."""
        self.recorded = True
        if self.check_at:
            self.proto.server.inflight.discard(self)
        route = self.route
        status = self.status
        try:
            if route is not None and self.sel is not None:
                route.record(self.sel, status, (end or self.loop.time()) - self.start, self.error)
            elif self.feedback:
                self.proto.runtime.metrics.request_feedback(
                    status, (end or self.loop.time()) - self.start
                )
            elif status:
                self.proto.runtime.metrics.request_unmatched(status)
        except Exception:
            log.exception("recording a request failed")

    def abort(self) -> None:
        """The client went away: stop everything, record 499 unless the answer was complete."""
        if self.primary is not None:
            self.primary.cancel()  # the mirror counts it as an error
            self.primary = None
        if self.state == S_CONNECTING and self.pool is not None:
            self.pool.cancel(self)
        if self.state != S_DONE:
            self._drop_conn()
            self._end_attempt()
            if not self.resp_started:
                self.status = 499
            self.state = S_DONE
        if not self.recorded and self.status:
            self._record()
        elif self.check_at:
            self.proto.server.inflight.discard(self)
