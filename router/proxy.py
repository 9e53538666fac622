"""The data-plane listener: an asyncio.Protocol with httptools that forwards to pooled upstreams.

The per-request path is callbacks only (no task per request): the client parser builds the
upstream request head, bytes flow both ways as they arrive with pause/resume backpressure, and
the upstream parser's events are re-framed straight onto the client transport.

Choices: `Expect: 100-continue` is answered by the proxy itself
with `100 Continue` when it starts forwarding the body (the Expect header is not forwarded and
upstream 1xx answers are dropped). X-Forwarded-For gets the peer address appended to the chain
the client sent, like nginx's `$proxy_add_x_forwarded_for`; `limits.trusted_hops` only decides
which address counts as the client IP for routing (Request.client_ip). X-Forwarded-Proto and
X-Forwarded-Host are replaced, never appended. A request whose client goes away is recorded with
status 499.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools

from router.http import (
    STATUS_LINES,
    Request,
    error_body,
    error_response,
    has_dot_segment,
    new_request_id,
    sane_request_id,
    status_line,
)
from router.mirror import MAX_MIRROR_BODY
from router.upstream import PoolFull, UpstreamConnection, UpstreamPool, pool_for, rewrite_path

if TYPE_CHECKING:
    from policies.spec import Limits
    from router.mirror import Mirrorer

__all__ = ["ProxyServer", "start_proxy"]

log = logging.getLogger("modelrouter.proxy")

FEEDBACK_PATH = "/_modelrouter/feedback"
KEEPALIVE_TIMEOUT = 75.0  # idle client connections are closed after this
HEAD_TIMEOUT = 30.0  # a request head must arrive within this (slowloris)
SWEEP_INTERVAL = 5.0
TICK = 0.05  # timeout resolution
BUFFER_HIGH = 256 * 1024  # request body buffered before the upstream connection: pause beyond
KEEP_MAX = 64 * 1024  # request bodies up to this are kept for a retry
WARN_INTERVAL = 10.0
LINGER_TIME = 2.0  # after refusing a request, read and discard input this long before closing
LINGER_MAX = 1 << 20  # ... or this many bytes

# client request headers that are not forwarded as they are
_HOP = 1
_CLEN = 2
_TE = 3
_HOST = 4
_XFF = 5
_RID = 6
_EXPECT = 7
_CONN = 8
_REQ_SPECIAL: dict[bytes, int] = {
    b"connection": _CONN,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"upgrade": _HOP,
    b"proxy-authorization": _HOP,
    b"proxy-authenticate": _HOP,
    b"transfer-encoding": _TE,
    b"content-length": _CLEN,
    b"host": _HOST,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _HOP,
    b"x-forwarded-host": _HOP,
    b"x-request-id": _RID,
    b"expect": _EXPECT,
}

_METHODS: dict[bytes, str] = {
    m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
}

# pause reasons of the client transport (a bit mask: reading resumes when all are gone)
_P_PIPE = 1  # a pipelined request waits for the one before it
_P_UPSTREAM = 2  # the upstream transport's write buffer is full
_P_BUFFER = 4  # body buffered while waiting for an upstream connection
_P_DEAD = 8  # the parser failed: nothing more is read

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_END = b"0\r\n\r\n"
_CRLF = b"\r\n"
_XFP = b"\r\nx-forwarded-proto: http\r\n"
_NO_BODY_STATUS = frozenset({204, 304})

_ERR_502 = error_body(502, "upstream unavailable")
_ERR_502_PROTO = error_body(502, "upstream sent an invalid response")
_ERR_503_DOWN = error_body(503, "no healthy backend")
_ERR_503_FULL = error_body(503, "too many requests waiting for the backend")
_ERR_504 = error_body(504, "upstream timeout")
_ERR_413 = error_body(413, "request body too large")
_ERR_431 = error_body(431, "request headers too large")
_ERR_400 = error_body(400, "bad request")
_ERR_500 = error_body(500, "internal error")

_RETRY_ON = {"connect": "connect-failure", "reset": "reset", "timeout": "timeout"}

# states of an exchange
_S_WAIT = 0  # created; waiting for its turn (pipelining) or for the body (needs_body)
_S_CONNECTING = 1  # waiting for an upstream connection
_S_SENDING = 2  # bound to an upstream connection
_S_DONE = 3  # response finished (request body, if any left, is discarded)

_last_warn: dict[str, float] = {}


def _warn(key: str, msg: str, *args: object) -> None:
    """WARNING at most once per WARN_INTERVAL per key; DEBUG otherwise."""
    now = time.monotonic()
    if now - _last_warn.get(key, -WARN_INTERVAL) >= WARN_INTERVAL:
        _last_warn[key] = now
        log.warning(msg, *args)
    elif log.isEnabledFor(logging.DEBUG):
        log.debug(msg, *args)


class _Reject(Exception):
    """Raised from a parser callback to stop parsing; the status is on the protocol."""


class Exchange:
    """One request and its response through the proxy."""

    # No __slots__: the class-level defaults below let __init__ set only what differs per
    # request, which is most of the cost of creating one exchange per request.
    req: Request | None = None
    route: Any = None
    sel: Any = None
    pool: UpstreamPool | None = None
    conn: UpstreamConnection | None = None
    state = _S_WAIT
    pending: tuple[int, bytes] | None = None  # an answer of our own, instead of proxying
    keep_alive = True
    version10 = False
    close_after = False
    chunked_in = False
    clen_in: bytes | None = None
    expect = False
    needs_body = False
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
        self.kept = []
        # the time the request's bytes arrived (set by data_received: no clock read here)
        self.start = self.last_io = proto.last_active

    # ---- request side (from the client parser) -------------------------------------------------

    def body(self, data: bytes) -> None:
        n = len(data)
        self.body_seen += n
        if self.state == _S_DONE:
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
            if conn is not None and self.state == _S_SENDING:
                conn.writelines(framed)
                return
            out = self.out_up = []
        out += framed
        self.out_up_size += size
        if self.state != _S_SENDING and self.out_up_size > BUFFER_HIGH and not self.needs_body:
            self.proto.pause(_P_BUFFER)

    def body_done(self) -> None:
        self.req_done = True
        if self.mirror_req is not None:
            self._send_mirror()
        if self.state == _S_DONE:
            self.maybe_finish()
            return
        if self.chunked_in:
            if self.kept is not None:
                self.kept.append(_CHUNK_END)
            if self.out_up is not None:
                self.out_up.append(_CHUNK_END)
            elif self.conn is not None and self.state == _S_SENDING:
                self.conn.write(_CHUNK_END)
            else:
                self.out_up = [_CHUNK_END]
        if self.needs_body and self.sel is None and self.pending is None and self.route is not None:
            self._select_buffered()

    def flush_up(self) -> None:
        out = self.out_up
        if out is not None and self.state == _S_SENDING and self.conn is not None:
            self.out_up = None
            self.out_up_size = 0
            self.conn.writelines(out)
            if self.proto.paused & _P_BUFFER:
                self.proto.resume(_P_BUFFER)

    # ---- routing -------------------------------------------------------------------------------

    def select(self) -> None:
        """Pick the backend (route.select) and build the upstream request head."""
        req = self.req
        route = self.route
        try:
            sel = self.sel = route.select_plain() if req is None else route.select(req)
        except Exception:
            log.exception("route %r: select failed", getattr(route, "name", "?"))
            self.pending = (500, _ERR_500)
            return
        backend = sel.backend
        if not backend.up:
            self.pending = (503, _ERR_503_DOWN)
            return
        pool = backend.pool
        if pool is None or pool.cfg is not backend.cfg:
            pool = pool_for(backend, self.proto.limits)
        self.pool = pool
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
        if self.state == _S_CONNECTING:  # it was its turn already: go
            self.state = _S_WAIT
            self.go()

    # ---- mirroring (routes with `mirror:` only) -------------------------------------------------

    def _send_mirror(self) -> None:
        """The request body is complete: send the copy, if the whole body was held."""
        assert self.mirror_req is not None
        mirror, method, path_qs, headers = self.mirror_req
        self.mirror_req = None
        kept = self.kept
        if kept is None:  # the body outgrew what is kept for retries: too big to mirror
            self.proto.runtime.metrics.mirror(mirror.route, mirror.backend.name, "skipped")
            if self.primary is not None:
                self.primary.cancel()
                self.primary = None
            return
        body = b"".join(kept[1::3] if self.chunked_in else kept)
        assert self.primary is not None
        try:
            mirror.send(method, path_qs, headers, body, self.primary)
        except Exception:
            log.exception("route %r: mirroring failed", mirror.route)

    def _mirror_capture(self, data: bytes) -> None:
        body = self.mirror_body
        if body is not None:
            self.mirror_size += len(data)
            if self.mirror_size <= MAX_MIRROR_BODY:
                body.append(data)
            else:
                self.mirror_body = None  # too big to compare: the status only

    def _resolve_primary(self) -> None:
        primary = self.primary
        self.primary = None
        if primary is not None and not primary.done():
            body = self.mirror_body
            primary.set_result((self.status, b"".join(body) if body is not None else None))

    # ---- running -------------------------------------------------------------------------------

    def go(self) -> None:
        """It is this exchange's turn to answer (everything before it on the connection is done)."""
        if self.pending is not None:
            status, body = self.pending
            self.respond_error(status, body)
            return
        if self.sel is None:  # needs_body: waiting for the whole body before selecting
            self.state = _S_CONNECTING
            if self.expect and not self.req_done:
                self.proto.write(_CONTINUE)
                self.expect = False
            return
        self._arm_timer()
        self.attempts = self.route.cfg.retries.attempts
        self._attempt(fresh=False)

    def _attempt(self, fresh: bool) -> None:
        self.state = _S_CONNECTING
        pool = self.pool
        assert pool is not None
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

    def _send_request(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.state = _S_SENDING
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
            proto.resume(_P_BUFFER)
        if self.expect and not self.req_done:
            self.expect = False
            self.proto.write(_CONTINUE)

    def _arm_timer(self) -> None:
        # timeouts are checked by the server's coarse tick (TICK), not a loop timer per request:
        # creating and cancelling a TimerHandle per request costs more than the whole check
        bt = self.sel.backend.cfg.timeout
        rt = self.route.cfg.timeout
        at = self.last_io + bt
        if rt is not None and self.start + rt < at:
            at = self.start + rt
        self.check_at = at
        self.proto.server.inflight.add(self)

    def on_tick(self, now: float) -> None:
        """Called by the server tick once `now >= check_at`."""
        if self.state == _S_DONE:
            self.proto.server.inflight.discard(self)
            return
        bt = self.sel.backend.cfg.timeout
        rt = self.route.cfg.timeout
        deadline = self.start + rt if rt is not None else None
        if (deadline is None or now < deadline) and now - self.last_io < bt:
            at = self.last_io + bt
            if deadline is not None and deadline < at:
                at = deadline
            self.check_at = at
            return
        self.proto.server.inflight.discard(self)
        self._fail("timeout", retryable=deadline is None or now < deadline)

    # ---- upstream events (router.upstream.UpstreamUser) ----------------------------------------

    def u_connected(self, conn: UpstreamConnection) -> None:
        if self.state != _S_CONNECTING or self.proto.lost:
            self.pool.release(conn, True) if self.pool is not None else conn.close()
            return
        self.last_io = self.loop.time()
        self._send_request(conn)

    def u_connect_failed(self, exc: BaseException) -> None:
        if self.state != _S_CONNECTING:
            return
        _warn(
            "connect:" + self.sel.backend.name,
            "cannot connect to backend %s: %s",
            self.sel.backend.name,
            exc,
        )
        self._fail("connect")

    def u_activity(self) -> None:
        self.last_io = self.loop.time()

    def u_head(self, conn: UpstreamConnection) -> None:
        status = conn.status
        if (
            status >= 500
            and self.attempts > 0
            and self.kept is not None
            and "5xx" in self.route.cfg.retries.on
        ):
            self.attempts -= 1
            self._retry(fresh=False)
            return
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
        token = self.sel.token
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
            self._mirror_capture(data)
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
        if proto.paused & _P_UPSTREAM:
            proto.resume(_P_UPSTREAM)
        pool = self.pool
        assert pool is not None
        end = self.last_io  # when the last bytes of the answer arrived (and left, just now)
        pool.release(conn, self.req_done and not self.is_head and conn.reusable(), end)
        self.state = _S_DONE
        if self.primary is not None:
            self._resolve_primary()
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
        if (
            conn.reused
            and not conn.got_bytes
            and self.stale_retry
            and self.kept is not None
            and not self.resp_started
        ):
            self.stale_retry = False  # a stale keep-alive connection: once more, on a fresh one
            self._retry(fresh=True, drop=False)
            return
        _warn(
            "reset:" + self.sel.backend.name,
            "backend %s closed the connection%s: %s",
            self.sel.backend.name,
            " mid-response" if self.resp_started else "",
            exc or "EOF",
        )
        self._fail("reset")

    def u_error(self, conn: UpstreamConnection, exc: BaseException) -> None:
        if self.conn is not conn:
            return
        _warn("proto:" + self.sel.backend.name, "backend %s: %s", self.sel.backend.name, exc)
        self._fail("protocol", retryable=False)

    def u_pause_writing(self) -> None:
        self.proto.pause(_P_UPSTREAM)

    def u_resume_writing(self) -> None:
        self.proto.resume(_P_UPSTREAM)

    # ---- failure and retry ---------------------------------------------------------------------

    def _drop_conn(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.user = None
            conn.close()
        self.proto.resume(_P_UPSTREAM)

    def _retry(self, *, fresh: bool, drop: bool = True) -> None:
        if drop:
            self._drop_conn()
        else:
            self.conn = None
            self.proto.resume(_P_UPSTREAM)
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
        if self.state == _S_DONE:
            return
        if self.state == _S_CONNECTING and self.pool is not None:
            self.pool.cancel(self)
        if (
            retryable
            and not self.resp_started
            and self.attempts > 0
            and self.kept is not None
            and _RETRY_ON.get(kind) in self.route.cfg.retries.on
        ):
            self.attempts -= 1
            self._retry(fresh=True)
            return
        self._drop_conn()
        self.error = kind
        if self.resp_started:
            # the answer is half sent: closing is the only honest way to say it broke
            self.u_flush()
            if self.primary is not None:
                self.primary.cancel()
                self.primary = None
            self.state = _S_DONE
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
        if self.conn is not None:
            self._drop_conn()
        if self.state == _S_CONNECTING and self.pool is not None:
            self.pool.cancel(self)
        proto = self.proto
        if not self.req_done and (self.state != _S_WAIT or self.body_seen or self.expect):
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
        self.state = _S_DONE
        if self.primary is not None:
            self.mirror_body = None  # our own answer: compare the status only
            self._resolve_primary()
        self.out_up = None
        self.maybe_finish()

    def respond(self, status: int, body: bytes) -> None:
        """A 2xx-5xx answer of our own with a JSON body (the feedback endpoint)."""
        self.respond_error(status, body)

    def maybe_finish(self) -> None:
        if self.state != _S_DONE:
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
            elif status:
                self.proto.runtime.metrics.request_unmatched(status)
        except Exception:
            log.exception("recording a request failed")

    def abort(self) -> None:
        """The client went away: stop everything, record 499 unless the answer was complete."""
        if self.primary is not None:
            self.primary.cancel()  # the mirror counts it as an error
            self.primary = None
        if self.state == _S_CONNECTING and self.pool is not None:
            self.pool.cancel(self)
        if self.state != _S_DONE:
            self._drop_conn()
            if not self.resp_started:
                self.status = 499
            self.state = _S_DONE
        if not self.recorded and self.status:
            self._record()
        elif self.check_at:
            self.proto.server.inflight.discard(self)


class ClientProtocol(asyncio.Protocol):
    """One client connection: parses requests, keeps their answers in order."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.runtime = server.runtime
        self.loop = server.loop
        self.limits: Limits = server.runtime.config.limits
        self.max_header = self.limits.max_header
        self.max_body = self.limits.max_body
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_b = b""
        self.active: Exchange | None = None
        self.ex_in: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.paused = 0
        self.write_paused = False
        self.lost = False
        self.lingering = False
        self._lingered = 0
        self.in_feed = False
        self.draining = False
        self.dead = False
        self.last_active = self.loop.time()
        self._reject: tuple[int, bytes] | None = None
        self._in_head = False
        self._head_started = 0.0
        self._head_pending = 0
        self._seq = 0
        self._done = 0
        self._reset_head()

    def _reset_head(self) -> None:
        self._url = b""
        self._hsize = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._fwd: list[bytes] = []
        self._clens: list[bytes] | None = None
        self._tes: list[bytes] | None = None
        self._host: bytes | None = None
        self._xff: list[bytes] | None = None
        self._rid: bytes | None = None
        self._expect = False
        self._conn_tokens: list[bytes] | None = None
        self._conn_seen = False

    # ---- transport events ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast("asyncio.Transport", transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        self.peer_b = self.peer.encode()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        if self.server.draining:
            self.draining = True

    def data_received(self, data: bytes) -> None:
        if self.dead:
            if self.lingering and self.transport is not None:
                self._lingered += len(data)
                if self._lingered > LINGER_MAX:
                    self.transport.close()
            return
        self.last_active = self.loop.time()
        seq = self._seq
        done = self._done
        was_in_head = self._in_head
        self.in_feed = True
        try:
            self.parser.feed_data(data)
        except _Reject:
            self._fail_parse()
            return
        except httptools.HttpParserCallbackError as e:
            if self._reject is None:
                log.exception("request parser callback failed", exc_info=e.__context__)
                self._reject = (500, _ERR_500)
            self._fail_parse()
            return
        except httptools.HttpParserUpgrade as e:
            # the request was handled as plain HTTP (Upgrade is hop-by-hop and stripped); go on
            # parsing what follows it with a fresh parser
            offset = int(e.args[0]) if e.args else len(data)
            self.parser = httptools.HttpRequestParser(self)
            self._flush_in()
            if offset < len(data) and not self.dead:
                self.data_received(data[offset:])
            return
        except httptools.HttpParserError as e:
            if self._reject is None:
                self._reject = (400, error_body(400, f"bad request: {_parser_message(e)}"))
            self._fail_parse()
            return
        finally:
            self.in_feed = False
        ex = self.ex_in
        if ex is not None and ex.out_up is not None:
            ex.flush_up()
        if self._in_head:
            if was_in_head and seq == self._seq:
                self._head_pending += len(data)
                if self._head_pending > self.max_header:
                    self._reject = (431, _ERR_431)
                    self._fail_parse()
            else:
                # the head began in this chunk: all of it is head unless a request ended in it
                # (then the partial head is counted from the next chunk on)
                self._head_pending = len(data) if done == self._done else 0
                self._head_started = self.last_active
                if self._head_pending > self.max_header:
                    self._reject = (431, _ERR_431)
                    self._fail_parse()

    def _flush_in(self) -> None:
        ex = self.ex_in
        if ex is not None and ex.out_up is not None:
            ex.flush_up()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        for ex in (self.active, self.ex_in, *self.queue):
            if ex is not None:
                ex.abort()
        self.active = None
        self.ex_in = None
        self.queue.clear()
        self.server.connection_gone()

    def eof_received(self) -> bool | None:
        if self.lingering and self.transport is not None:
            self.transport.close()
            return None
        # like nginx: a client that stops sending has given up on its answers; close, and the
        # exchanges in flight are aborted (recorded as 499) in connection_lost
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.active
        if ex is not None and ex.conn is not None:
            ex.conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None:
            ex.last_io = self.loop.time()
            if ex.conn is not None:
                ex.conn.resume_reading()

    # ---- helpers for exchanges -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.lost:
            t.write(data)

    def writelines(self, data: list[bytes]) -> None:
        t = self.transport
        if t is not None and not self.lost:
            # one joined write: uvloop's writelines costs far more per piece than a join
            t.write(data[0] if len(data) == 1 else b"".join(data))

    def pause(self, reason: int) -> None:
        if not self.paused:
            t = self.transport
            if t is not None and not t.is_closing():
                t.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused:
                t = self.transport
                if t is not None and not t.is_closing():
                    t.resume_reading()

    def finished(self, ex: Exchange) -> None:
        """`ex` answered completely: close, or let the next pipelined request answer."""
        if ex is not self.active:
            return
        self.active = None
        if ex is self.ex_in and ex.req_done:
            self.ex_in = None
        t = self.transport
        if ex.close_after or t is None or self.lost:
            if t is not None and self.dead and not t.is_closing() and t.can_write_eof():
                self._linger(t)
                return
            self.dead = True
            if t is not None:
                t.close()
            return
        if self.queue:
            nxt = self.active = self.queue.popleft()
            if not self.queue:
                self.resume(_P_PIPE)
            nxt.go()
        elif self.draining and self.ex_in is None and not self._in_head:
            self.dead = True
            t.close()

    def _linger(self, t: asyncio.Transport) -> None:
        # the client may still be sending what we refused: closing now would reset the
        # connection and could destroy our answer in flight, so send FIN and read on (discarding)
        # for a little while, like nginx's lingering close
        self.lingering = True
        t.write_eof()
        self.paused = 0
        t.resume_reading()
        self.loop.call_later(LINGER_TIME, t.close)

    def _enqueue(self, ex: Exchange) -> None:
        if self.active is None:
            self.active = ex
            ex.go()
        else:
            self.queue.append(ex)
            self.pause(_P_PIPE)

    def _fail_parse(self) -> None:
        """The request stream is broken: answer in turn with the error, then close."""
        self.dead = True
        self.pause(_P_DEAD)
        status, body = self._reject or (400, _ERR_400)
        ex = self.ex_in
        if ex is not None and not ex.req_done:
            self.ex_in = None
            ex.req_done = True
            ex.close_after = True
            if ex.state == _S_DONE:
                self.finished(ex)
                return
            if ex.resp_started:
                ex._drop_conn()
                ex.error = "protocol" if ex.error is None else ex.error
                ex.state = _S_DONE
                ex.maybe_finish()
                return
            ex.pending = (status, body)  # answered (and recorded) when its turn comes
            if ex is self.active:
                ex.respond_error(status, body)
            return
        rid = self._rid if self._rid is not None and sane_request_id(self._rid) else None
        err = Exchange(self, b"GET", rid or new_request_id())
        err.req_done = True
        err.close_after = True
        err.pending = (status, body)
        self._enqueue(err)

    @property
    def busy(self) -> bool:
        return self.active is not None or self.ex_in is not None or self._in_head

    def start_drain(self) -> None:
        self.draining = True
        if not self.busy and self.transport is not None:
            self.dead = True
            self.transport.close()

    # ---- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._seq += 1
        self._head_started = self.last_active

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._hsize += len(url)
        if self._hsize > self.max_header:
            self._reject = (431, _ERR_431)
            raise _Reject

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hsize += len(name) + len(value) + 4
        if self._hsize > self.max_header:
            self._reject = (431, _ERR_431)
            raise _Reject
        if not self._in_head:
            return  # chunked trailers: dropped (they are hop-by-hop for us)
        self._headers.append((name, value))
        lname = name.lower()
        kind = _REQ_SPECIAL.get(lname)
        if kind is None:
            self._fwd += (name, b": ", value, _CRLF)
        elif kind == _CLEN:
            if self._clens is None:
                self._clens = [value]
            else:
                self._clens.append(value)
        elif kind == _TE:
            if self._tes is None:
                self._tes = [value]
            else:
                self._tes.append(value)
        elif kind == _HOST:
            if self._host is not None:
                self._reject = (400, error_body(400, "bad request: more than one Host header"))
                raise _Reject
            self._host = value
        elif kind == _XFF:
            if self._xff is None:
                self._xff = [value]
            else:
                self._xff.append(value)
        elif kind == _RID:
            self._rid = value
        elif kind == _EXPECT:
            if value.lower() == b"100-continue":
                self._expect = True
        elif kind == _CONN:
            self._conn_seen = True
            for tok in value.lower().split(b","):
                tok = tok.strip()
                if tok and tok not in (b"close", b"keep-alive"):
                    if self._conn_tokens is None:
                        self._conn_tokens = []
                    self._conn_tokens.append(tok)

    def _bad(self, status: int, message: str) -> None:
        self._reject = (status, error_body(status, message))
        raise _Reject

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_pending = 0
        p = self.parser
        method = p.get_method()
        keep_alive = p.should_keep_alive()
        tes = self._tes
        clens = self._clens
        # get_http_version() formats a string: skip it when the answer is known (an HTTP/1.0
        # request without a Connection header never keeps alive)
        if keep_alive and not self._conn_seen and tes is None:
            version10 = False
        else:
            version10 = p.get_http_version() == "1.0"
        # ---- framing: anything ambiguous is refused, so no second request can hide in a body
        chunked = False
        clen: bytes | None = None
        if tes is not None:
            if version10:
                self._bad(400, "bad request: Transfer-Encoding in an HTTP/1.0 request")
            if clens is not None:
                self._bad(400, "bad request: both Content-Length and Transfer-Encoding")
            if len(tes) != 1 or tes[0].strip().lower() != b"chunked":
                self._bad(400, "bad request: Transfer-Encoding must be exactly 'chunked'")
            chunked = True
        elif clens is not None:
            if len(clens) != 1:
                self._bad(400, "bad request: more than one Content-Length")
            clen = clens[0].strip()
            if not clen.isdigit() or len(clen) > 18:
                self._bad(400, "bad request: invalid Content-Length")
            if int(clen) > self.max_body:
                self._reject = (413, _ERR_413)
                raise _Reject
        if method == b"CONNECT":
            self._bad(405, "CONNECT is not supported")
        # ---- request target
        url = self._url
        if url[:1] != b"/":
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._bad(400, "bad request: invalid request target")
            path_b: bytes = parsed.path or b"/"
            query_b: bytes = parsed.query or b""
        else:
            qi = url.find(b"?")
            if qi < 0:
                path_b, query_b = url, b""
            else:
                path_b, query_b = url[:qi], url[qi + 1 :]
            if b"#" in path_b:
                path_b = path_b[: path_b.find(b"#")]
        if (b"/." in path_b or b"%" in path_b) and has_dot_segment(path_b):
            self._bad(400, "bad request: '.' or '..' segment in the path")
        # ---- the exchange
        rid = self._rid
        if rid is None or not sane_request_id(rid):
            rid = new_request_id()
        ms = _METHODS.get(method) or method.decode("latin-1")
        ex = Exchange(self, method, rid)
        self.ex_in = ex
        if not keep_alive or self.draining:
            ex.keep_alive = False
        if version10:
            ex.version10 = True
        if chunked:
            ex.chunked_in = True
        ex.clen_in = clen
        if self._expect:
            ex.expect = True
        path = path_b.decode("latin-1")
        if self._conn_tokens is not None:
            self._strip_connection_named()
        # the feedback endpoint belongs to the router, whatever the routes' prefixes say
        route = None if path == FEEDBACK_PATH else self.runtime.match(ms, path)
        if route is None or not route.plain:
            # the Request view: only routes that look at the request (and our own answers) need it
            client_ip = self.peer
            trusted = self.limits.trusted_hops
            if trusted and self._xff is not None:
                chain = [a.strip() for v in self._xff for a in v.split(b",") if a.strip()]
                chain.append(self.peer_b)
                client_ip = chain[max(0, len(chain) - 1 - trusted)].decode("latin-1")
            ex.req = Request(ms, path, query_b.decode("latin-1"), self._headers, client_ip)
            if route is None:
                if path == FEEDBACK_PATH:
                    self._feedback(ex, ms)
                else:
                    ex.pending = (404, error_body(404, f"no route for {ms} {path}"))
                self._reset_head()
                self._enqueue(ex)
                return
        ex.route = route
        # the forwarded head, minus start line and Host (the backend's, added by select)
        fwd = self._fwd
        if chunked:
            fwd.append(b"transfer-encoding: chunked\r\n")
        elif clen is not None:
            fwd += (b"content-length: ", clen, _CRLF)
        xff = self._xff
        if xff is None:
            fwd += (b"x-forwarded-for: ", self.peer_b, b"\r\nx-forwarded-proto: http\r\n")
        else:
            fwd += (b"x-forwarded-for: ", b", ".join(xff), b", ", self.peer_b, _XFP)
        if self._host is not None:
            fwd += (b"x-forwarded-host: ", self._host, _CRLF)
        fwd += (b"x-request-id: ", rid, b"\r\n\r\n")
        ex.head_pieces = fwd
        ex.target = path_b + b"?" + query_b if query_b else path_b
        if route.mirror is not None:
            self._mirror(ex, route, ms)
        if route.needs_body and (chunked or clen not in (None, b"0")):
            ex.needs_body = True
            ex.out_up = []
        else:
            if ex.req is not None and route.needs_body:
                ex.req.body = b""
            ex.select()
        self._reset_head()
        self._enqueue(ex)

    def _mirror(self, ex: Exchange, route: Any, method: str) -> None:
        """Decide whether this request of a mirrored route is copied to the mirror backend."""
        mirror: Mirrorer = route.mirror
        try:
            if not mirror.sample():
                return
        except Exception:
            log.exception("route %r: mirror sampling failed", route.name)
            return
        rw = mirror.backend.rewrite
        target = ex.target
        if rw is not None:
            target = rewrite_path(rw.from_.encode("latin-1"), rw.to.encode("latin-1"), target)
        ex.primary = self.loop.create_future()
        ex.mirror_body = []
        ex.mirror_req = (mirror, method, target.decode("latin-1"), self._headers)

    def _strip_connection_named(self) -> None:
        drop = set(self._conn_tokens or ())
        f = self._fwd
        kept: list[bytes] = []
        for i in range(0, len(f), 4):
            if f[i].lower() not in drop:
                kept += f[i : i + 4]
        self._fwd = kept

    def on_body(self, body: bytes) -> None:
        ex = self.ex_in
        if ex is None:
            return
        if ex.body_seen + len(body) > self.max_body:
            self._reject = (413, _ERR_413)
            raise _Reject
        ex.body(body)

    def on_message_complete(self) -> None:
        self._in_head = False
        self._done += 1
        ex = self.ex_in
        if ex is None:
            return
        if ex.out_up is not None and not ex.needs_body:
            ex.flush_up()
        self.ex_in = None
        ex.body_done()
        if (
            ex.sel is None
            and ex.pending is None
            and ex.req is not None
            and ex.req.path == (FEEDBACK_PATH)
        ):
            self._run_feedback(ex)
        if ex.state == _S_DONE:
            ex.maybe_finish()
        elif self.draining and ex.state == _S_WAIT:
            ex.keep_alive = False

    # ---- the feedback endpoint -----------------------------------------------------------------

    def _feedback(self, ex: Exchange, method: str) -> None:
        if method != "POST":
            ex.pending = (405, error_body(405, f"{FEEDBACK_PATH} accepts only POST"))
            return
        ex.needs_body = True
        ex.out_up = []

    def _run_feedback(self, ex: Exchange) -> None:
        out = ex.out_up or []
        body = b"".join(out[1::3]) if ex.chunked_in else b"".join(out)
        ex.out_up = None
        task = self.loop.create_task(self._feedback_task(ex, body))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _feedback_task(self, ex: Exchange, body: bytes) -> None:
        try:
            status, answer = await self.runtime.handle_feedback(body)
        except Exception:
            log.exception("feedback handling failed")
            status, answer = 500, _ERR_500
        ex.pending = (status, answer)
        if ex is self.active and ex.state != _S_DONE and not self.lost:
            ex.respond(status, answer)
        # else: go() answers it when its turn comes

    # ---- the server ----------------------------------------------------------------------------


def _parser_message(e: BaseException) -> str:
    msg = str(e.args[0]) if e.args else type(e).__name__
    return msg.strip()[:120] or type(e).__name__


class ProxyServer:
    """The listening data plane: `.port`, `drain(timeout)`, `close()`."""

    def __init__(self, runtime: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.loop = loop
        self.connections: set[ClientProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight: set[Exchange] = set()  # exchanges whose timeouts the tick checks
        self._ticker: asyncio.TimerHandle | None = None
        self.draining = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._gone: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def protocol(self) -> ClientProtocol:
        return ClientProtocol(self)

    def connection_gone(self) -> None:
        if self._gone is not None and not self.connections:
            self._gone.set()

    def _tick(self) -> None:
        now = self.loop.time()
        if self.inflight:
            for ex in [e for e in self.inflight if e.check_at <= now]:
                try:
                    ex.on_tick(now)
                except Exception:
                    log.exception("timeout handling failed")
                    self.inflight.discard(ex)
        self._ticker = self.loop.call_later(TICK, self._tick)

    def _sweep(self) -> None:
        now = self.loop.time()
        for c in list(self.connections):
            if c.active is None and c.ex_in is None:
                if c._in_head:
                    if now - c._head_started > HEAD_TIMEOUT and c.transport is not None:
                        c.transport.close()
                elif now - c.last_active > KEEPALIVE_TIMEOUT and c.transport is not None:
                    c.transport.close()
        for b in list(getattr(self.runtime, "backends", {}).values()):
            pool = getattr(b, "pool", None)
            if pool is not None:
                pool.sweep(now)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish, close idle connections; bounded."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        self._gone = asyncio.Event()
        for c in list(self.connections):
            c.start_drain()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), timeout)
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.abort()
        self.close()

    def close(self) -> None:
        """Close the listener and every connection at once."""
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()
        for t in list(self.tasks):
            t.cancel()


async def start_proxy(
    runtime: Any,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    sock: socket.socket | None = None,
    freeze_gc: bool = True,
) -> ProxyServer:
    """Listen on host:port (or `sock`) and proxy every request through `runtime`.

    `freeze_gc` moves every object alive now out of the garbage collector's reach (once the
    process has started up; tests that start many proxies in one process turn it off).
    """
    loop = asyncio.get_running_loop()
    srv = ProxyServer(runtime, loop)
    if sock is not None:
        server = await loop.create_server(srv.protocol, sock=sock, backlog=2048)
    else:
        server = await loop.create_server(
            srv.protocol, host, port, reuse_port=reuse_port or None, backlog=2048
        )
    srv._server = server
    # uvloop's Server.sockets is a list, not the tuple typeshed says (compiled code checks)
    socks: Any = cast(Any, server).sockets
    srv.port = socks[0].getsockname()[1] if socks else port
    srv._sweeper = loop.call_later(SWEEP_INTERVAL, srv._sweep)
    srv._ticker = loop.call_later(TICK, srv._tick)
    # What startup built (config, numpy, aiohttp, prometheus: ~70k objects) lives for good. A full
    # collection walking it costs ~65 ms here and stalls every request in flight (the p99 spikes
    # at c=128); frozen, a full collection only walks what was allocated since.
    if freeze_gc:
        gc.freeze()
    return srv
