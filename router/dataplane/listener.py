"""The listener: one client connection as an asyncio.Protocol with httptools callbacks.

The per-request path is callbacks only (no task per request): the client parser's callbacks
collect the request head, pure functions (router.dataplane.head) judge it, and an `Exchange`
(router.dataplane.exchange) forwards it to a pooled upstream; bytes flow both ways as they
arrive with pause/resume backpressure. This class keeps the answers of pipelined requests in
order, enforces the head limits, and closes (or lingers) when a request stream breaks.

Choices: `Expect: 100-continue` is answered by the proxy itself
with `100 Continue` when it starts forwarding the body (the Expect header is not forwarded and
upstream 1xx answers are dropped). X-Forwarded-For gets the peer address appended to the part
of the chain the client sent that `limits.trusted_hops` trusts (the last N entries, written by
the proxies in front of us; nothing with the default 0), so its first entry is the client
address routing sees (Request.client_ip, `ip` sticky keys) and a client cannot forge it.
X-Forwarded-Proto and X-Forwarded-Host are replaced, never appended. A request whose client goes
away is recorded with status 499.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from router.dataplane import feedback, mirror
from router.dataplane.answers import error_body, error_response
from router.dataplane.exchange import (
    ERR_500,
    P_DEAD,
    P_PIPE,
    S_DONE,
    S_WAIT,
    Exchange,
)
from router.dataplane.head import (
    CLEN,
    CONN,
    EXPECT,
    HOST,
    REQUEST_HEADERS,
    RID,
    TE,
    XFF,
    Refused,
    check_method,
    connection_tokens,
    forwarded_head,
    framing,
    request_id,
    split_target,
    strip_named,
    trusted_chain,
)
from router.dataplane.seam import Request, Router

if TYPE_CHECKING:
    from policies.spec import Limits
    from router.dataplane.proxy import ProxyServer

__all__ = ["ClientProtocol"]

log = logging.getLogger("modelrouter.proxy")

# Lingering close (nginx's lingering_close): after answering a request we refused (413, 400,
# 408...), send FIN and read on, discarding, so a client still sending its body reads our answer
# instead of a reset. Bounded: LINGER_TIME in all, LINGER_IDLE without a byte, LINGER_MIN bytes
# or four times limits.max_body (whichever is larger), then close.
LINGER_TIME: Final = 30.0
LINGER_IDLE: Final = 5.0
LINGER_MIN: Final = 64 << 20
REFUSE_LINGER: Final = 1.0  # a connection over limits.max_connections: its 503, then this long
REFUSING_MAX: Final = 256  # connections refused and still closing; beyond, refuse by reset

_METHODS: Final = {
    m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
}

_ERR_413: Final = error_body(413, "request body too large")
_ERR_431: Final = error_body(431, "request headers too large")
_ERR_400: Final = error_body(400, "bad request")
_ERR_408_HEAD: Final = error_body(408, "request head not received in time")
_ERR_408_BODY: Final = error_body(408, "request body not received in time")
_REFUSED: Final = error_response(
    503, error_body(503, "too many connections"), b"-", close=True, extra=b"retry-after: 1\r\n"
)


def _parser_message(e: BaseException) -> str:
    msg = str(e.args[0]) if e.args else type(e).__name__
    return msg.strip()[:120] or type(e).__name__


class _Reject(Exception):
    """Raised from a parser callback to stop parsing; the status is on the protocol."""


class ClientProtocol(asyncio.Protocol):
    """One client connection: parses requests, keeps their answers in order."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.runtime: Router = server.runtime
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
        # pipelined requests waiting for their turn; created on the first one (an empty deque
        # is 760 bytes: a quarter of what an idle keep-alive connection costs)
        self.queue: deque[Exchange] | None = None
        self.paused = 0
        self.write_paused = False
        self.lost = False
        self.lingering = False
        self.refused = False  # over limits.max_connections: answered 503, closing
        self._lingered = 0
        self._linger_seen = 0
        self._linger_max = 0
        self._linger_end = 0.0
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
        server = self.server
        if len(server.connections) >= server.max_connections():
            self._refuse()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.connections.add(self)
        if self.server.draining:
            self.draining = True

    def _refuse(self) -> None:
        """Over limits.max_connections: answer 503 (Retry-After) at once and close soon."""
        t = self.transport
        assert t is not None
        server = self.server
        server.refused += 1
        try:
            server.runtime.metrics.connection_refused()
        except Exception:
            log.exception("counting a refused connection failed")
        self.dead = True
        if server.refusing >= REFUSING_MAX or not t.can_write_eof():
            t.abort()
            return
        self.refused = True
        server.refusing += 1
        t.write(_REFUSED)
        self._linger(t, REFUSE_LINGER, 64 << 10)

    def data_received(self, data: bytes) -> None:
        if self.dead:
            if self.lingering and self.transport is not None:
                self._lingered += len(data)
                if self._lingered > self._linger_max:
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
                self._reject = (500, ERR_500)
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
        if self.refused:
            self.server.refusing -= 1
            return
        self.server.connections.discard(self)
        for ex in (self.active, self.ex_in, *(self.queue or ())):
            if ex is not None:
                ex.abort()
        self.active = None
        self.ex_in = None
        self.queue = None
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
                # the client was not the one waiting: its read timeouts count from now
                self.last_active = self.loop.time()
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
        queue = self.queue
        if queue:
            nxt = self.active = queue.popleft()
            if not queue:
                self.resume(P_PIPE)
            nxt.go()
        elif self.draining and self.ex_in is None and not self._in_head:
            self.dead = True
            t.close()

    def _linger(self, t: asyncio.Transport, seconds: float = LINGER_TIME, cap: int = 0) -> None:
        # the client may still be sending what we refused: closing now would reset the
        # connection and could destroy our answer in flight, so send FIN and read on (discarding)
        # for a while, like nginx's lingering close
        self.lingering = True
        self._linger_max = cap or max(LINGER_MIN, 4 * self.max_body)
        self._linger_end = self.loop.time() + seconds
        t.write_eof()
        self.paused = 0
        t.resume_reading()
        self.loop.call_later(min(seconds, LINGER_IDLE), self._linger_check)

    def _linger_check(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        now = self.loop.time()
        if now >= self._linger_end or self._lingered == self._linger_seen:
            t.close()  # the time is up, or nothing came for LINGER_IDLE
            return
        self._linger_seen = self._lingered
        self.loop.call_later(min(LINGER_IDLE, self._linger_end - now), self._linger_check)

    def timed_out(self, body: bool) -> None:
        """The request head or body did not arrive in time (ProxyServer's sweep): answer 408 in
        turn and close."""
        if self.dead or self.transport is None:
            return
        self._reject = (408, _ERR_408_BODY if body else _ERR_408_HEAD)
        self._fail_parse()

    def _enqueue(self, ex: Exchange) -> None:
        if self.active is None:
            self.active = ex
            ex.go()
        else:
            queue = self.queue
            if queue is None:
                queue = self.queue = deque()
            queue.append(ex)
            self.pause(P_PIPE)

    def _fail_parse(self) -> None:
        """The request stream is broken: answer in turn with the error, then close."""
        self.dead = True
        self.pause(P_DEAD)
        status, body = self._reject or (400, _ERR_400)
        ex = self.ex_in
        if ex is not None and not ex.req_done:
            self.ex_in = None
            ex.req_done = True
            ex.close_after = True
            if ex.state == S_DONE:
                self.finished(ex)
                return
            if ex.resp_started:
                ex._drop_conn()
                ex.error = "protocol" if ex.error is None else ex.error
                ex.state = S_DONE
                ex.maybe_finish()
                return
            ex.pending = (status, body)  # answered (and recorded) when its turn comes
            if ex is self.active:
                ex.respond_error(status, body)
            return
        err = Exchange(self, b"GET", request_id(self._rid))
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
        kind = REQUEST_HEADERS.get(name.lower())
        if kind is None:
            self._fwd += (name, b": ", value, b"\r\n")
        elif kind == CLEN:
            if self._clens is None:
                self._clens = [value]
            else:
                self._clens.append(value)
        elif kind == TE:
            if self._tes is None:
                self._tes = [value]
            else:
                self._tes.append(value)
        elif kind == HOST:
            if self._host is not None:
                self._reject = (400, error_body(400, "bad request: more than one Host header"))
                raise _Reject
            self._host = value
        elif kind == XFF:
            if self._xff is None:
                self._xff = [value]
            else:
                self._xff.append(value)
        elif kind == RID:
            self._rid = value
        elif kind == EXPECT:
            if value.lower() == b"100-continue":
                self._expect = True
        elif kind == CONN:
            self._conn_seen = True
            self._conn_tokens = connection_tokens(value, self._conn_tokens)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_pending = 0
        p = self.parser
        method = p.get_method()
        keep_alive = p.should_keep_alive()
        tes = self._tes
        # get_http_version() formats a string: skip it when the answer is known (an HTTP/1.0
        # request without a Connection header never keeps alive)
        if keep_alive and not self._conn_seen and tes is None:
            version10 = False
        else:
            version10 = p.get_http_version() == "1.0"
        try:
            chunked, clen = framing(tes, self._clens, version10, self.max_body)
            check_method(method)
            path_b, query_b = split_target(self._url)
        except Refused as e:
            self._reject = (e.status, e.body)
            raise _Reject from e
        rid = request_id(self._rid)
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
            self._fwd = strip_named(self._fwd, self._conn_tokens)
        xff = self._xff
        if xff is not None:
            xff = trusted_chain(xff, self.limits.trusted_hops)
        route = None if path == feedback.FEEDBACK_PATH else self.runtime.match(ms, path)
        if route is None or not route.plain:
            # the Request view: only routes that look at the request (and our own answers) need it
            client_ip = self.peer if xff is None else xff[0].decode("latin-1")
            ex.req = Request(
                ms, path, query_b.decode("latin-1"), self._headers, client_ip, request_id=rid
            )
            if route is None:
                self._unrouted(ex, ms, path)
                return
        ex.route = route
        ex.head_pieces = forwarded_head(
            self._fwd,
            chunked=chunked,
            clen=clen,
            xff=xff,
            peer=self.peer_b,
            host=self._host,
            rid=rid,
        )
        ex.target = path_b + b"?" + query_b if query_b else path_b
        if route.mirror is not None:
            mirror.start(ex, route.mirror, ms, self._headers)
        if route.needs_body and (chunked or clen not in (None, b"0")):
            ex.needs_body = True
            ex.out_up = []
        else:
            if ex.req is not None and route.needs_body:
                ex.req.body = b""
            ex.select()
        self._reset_head()
        self._enqueue(ex)

    def _unrouted(self, ex: Exchange, method: str, path: str) -> None:
        """A request no route takes: the feedback endpoint, or 404."""
        if path == feedback.FEEDBACK_PATH:
            feedback.begin(ex, method)
        else:
            ex.pending = (404, error_body(404, f"no route for {method} {path}"))
        self._reset_head()
        self._enqueue(ex)

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
        if feedback.waiting(ex):
            feedback.run(ex)
        if ex.state == S_DONE:
            ex.maybe_finish()
        elif self.draining and ex.state == S_WAIT:
            ex.keep_alive = False
