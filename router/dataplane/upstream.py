"""Keep-alive connections to one backend: an httptools response parser per connection, a pool.

A connection parses responses and hands the exchange using it three events (head, body chunk,
done) plus failures; the pool hands out idle connections, opens new ones up to a cap and queues
at most `limits.max_pending` requests waiting for one (the proxy answers 503 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from typing import Any, Protocol, cast

import httptools

from policies.spec import BackendConfig, Limits
from router.dataplane.head import CLEN, CONN, RESPONSE_HEADERS, TE, connection_tokens, strip_named

__all__ = [
    "HeadTooLarge",
    "PoolFull",
    "UpstreamConnection",
    "UpstreamPool",
    "UpstreamUser",
    "rewrite_path",
]

MAX_CONNECTIONS = 512  # per backend; beyond, requests wait (up to max_pending) for a free one
IDLE_TIMEOUT = 30.0  # close idle connections before typical upstream keep-alive timeouts hit


class PoolFull(Exception):
    """More than `max_pending` requests already wait for a connection to this backend."""


class HeadTooLarge(Exception):
    """The backend's response head is larger than limits.max_upstream_header (the answer: 502)."""


class UpstreamUser(Protocol):
    """What a connection reports to the exchange using it (router.dataplane.exchange)."""

    def u_connected(self, conn: UpstreamConnection) -> None: ...
    def u_connect_failed(self, exc: BaseException) -> None: ...
    def u_head(self, conn: UpstreamConnection) -> None: ...
    def u_body(self, data: bytes) -> None: ...
    def u_done(self, conn: UpstreamConnection) -> None: ...
    def u_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None: ...
    def u_error(self, conn: UpstreamConnection, exc: BaseException) -> None: ...
    def u_activity(self) -> None: ...
    def u_flush(self) -> None: ...
    def u_pause_writing(self) -> None: ...
    def u_resume_writing(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend; parses the responses of the requests sent on it."""

    __slots__ = (
        "chunked",
        "clen",
        "closed",
        "conn_tokens",
        "counted",
        "got_bytes",
        "head_bytes",
        "headers",
        "idle_since",
        "parser",
        "pool",
        "read_paused",
        "reused",
        "skip_body",
        "status",
        "transport",
        "user",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.user: UpstreamUser | None = None
        self.closed = False
        self.counted = True  # still counted in pool.size
        self.reused = False
        self.read_paused = False
        self.idle_since = 0.0
        self.skip_body = False  # the request was HEAD: the response has no body
        self.head_bytes = 0  # bytes received while a response head (1xx ones too) was incomplete
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[bytes] = []
        self.clen: bytes | None = None
        self.chunked = False
        self.conn_tokens: list[bytes] | None = None
        self.got_bytes = False

    # ---- transport events ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        user = self.user
        if user is None:  # bytes on an idle connection: the upstream is confused, drop it
            self.close()
            return
        self.got_bytes = True
        user.u_activity()
        in_head = not self.status
        if in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            user = self.user
            if user is not None:
                user.u_error(self, e)
            self.close()
            return
        if in_head and not self.status and self.head_bytes > self.pool.max_head:
            # httptools buffers a header until it ends: stop before a huge head fills memory
            user = self.user
            if user is not None:
                user.u_error(
                    self, HeadTooLarge(f"response head larger than {self.pool.max_head} bytes")
                )
            self.close()
            return
        user = self.user
        if user is not None:
            user.u_flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        user = self.user
        if user is not None:
            self.user = None
            user.u_lost(self, exc)

    def pause_writing(self) -> None:
        if self.user is not None:
            self.user.u_pause_writing()

    def resume_writing(self) -> None:
        if self.user is not None:
            self.user.u_resume_writing()

    # ---- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # hop-by-hop headers and those re-framed by the proxy never reach the client
        kind = RESPONSE_HEADERS.get(name.lower())
        if kind is None:
            self.headers += (name, b": ", value, b"\r\n")
        elif kind == CLEN:
            self.clen = value
            self.headers += (name, b": ", value, b"\r\n")
        elif kind == TE:
            self.chunked = True  # llhttp rejects any other final coding with a body
        elif kind == CONN:
            self.conn_tokens = connection_tokens(value, self.conn_tokens)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: informational, the final response follows on the same message
            self._reset()
            return
        self.status = status
        if self.conn_tokens is not None:
            self.headers = strip_named(self.headers, self.conn_tokens)
        user = self.user
        if user is not None:
            user.u_head(self)
            if self.skip_body and self.user is user:
                # llhttp cannot be told a response has no body (HEAD): finish here and never
                # reuse this connection, so its parser state does not matter any more
                self.pool.discard(self)
                user.u_done(self)

    def on_body(self, body: bytes) -> None:
        user = self.user
        if user is not None and self.status:
            user.u_body(body)

    def on_message_complete(self) -> None:
        if not self.status:  # end of a 1xx message
            return
        user = self.user
        if user is not None:
            user.u_done(self)

    # ---- for the exchange ----------------------------------------------------------------------

    def reusable(self) -> bool:
        return not self.closed and self.parser.should_keep_alive()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        assert self.transport is not None
        # one joined write: uvloop's writelines costs far more per piece than a join
        self.transport.write(data[0] if len(data) == 1 else b"".join(data))

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self.pool._forget(self)

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.pool.cfg.name} closed={self.closed}>"


class UpstreamPool:
    """Keep-alive connections to one backend, plus the requests waiting for one."""

    def __init__(
        self,
        cfg: BackendConfig,
        limits: Limits,
        *,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.cfg = cfg
        self.max_pending = limits.max_pending
        self.max_head = limits.max_upstream_header
        self.max_connections = max_connections
        self.idle: list[UpstreamConnection] = []
        self.waiters: deque[UpstreamUser] = deque()
        self.size = 0  # open or connecting
        self._tasks: set[asyncio.Task[None]] = set()
        self._opening: dict[int, asyncio.Task[None]] = {}  # id(user) -> its connect
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # pre-encoded per backend, used by the proxy for every request
        self.name_b = cfg.name.encode()
        # the end of the request line, then Host: one piece of the upstream head
        self.host_line = f" HTTP/1.1\r\nhost: {cfg.host}:{cfg.port}\r\n".encode("idna")
        self.backend_line = b"x-modelrouter-backend: " + self.name_b + b"\r\n"
        self.base_path = cfg.base_path.encode("latin-1")
        rw = cfg.rewrite
        self.rw_from = rw.from_.encode("latin-1") if rw is not None else None
        self.rw_to = rw.to.encode("latin-1") if rw is not None else b""
        self.plain_target = rw is None and not self.base_path  # target(path) is path itself

    def target(self, path: bytes) -> bytes:
        """The upstream request path for client `path`: rewrite prefix, then base_path."""
        path = rewrite_path(self.rw_from, self.rw_to, path)
        return self.base_path + path if self.base_path else path

    def acquire(self, user: UpstreamUser, *, fresh: bool = False) -> UpstreamConnection | None:
        """An idle connection now, or None and `user.u_connected`/`u_connect_failed` later.

        Raises PoolFull when max_pending requests already wait. `fresh` skips idle connections.
        """
        if not fresh:
            idle = self.idle
            while idle:
                c = idle.pop()
                if not c.closed:
                    c.user = user
                    c.reused = True
                    return c
        if self.size < self.max_connections and not self._closed:
            self.size += 1
            self._connect(user)
            return None
        if len(self.waiters) >= self.max_pending:
            raise PoolFull(self.cfg.name)
        self.waiters.append(user)
        return None

    def cancel(self, user: UpstreamUser) -> None:
        """`user` no longer wants a connection (client gone, timeout, retried elsewhere): it
        gets no callback from this pool any more."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(user)
        task = self._opening.pop(id(user), None)
        if task is not None:
            task.cancel()

    def release(self, conn: UpstreamConnection, reusable: bool, now: float = 0.0) -> None:
        """Give back a connection after its response; closed unless `reusable`.

        `now` is the loop time if the caller knows it (saves a clock read).
        """
        conn.user = None
        conn.skip_body = False
        if not reusable or conn.closed or self._closed:
            conn.close()
            return
        conn.resume_reading()
        conn._reset()
        conn.head_bytes = 0
        if self.waiters:
            user = self.waiters.popleft()
            conn.user = user
            conn.reused = True
            user.u_connected(conn)
            return
        if not now:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            now = loop.time()
        conn.idle_since = now
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Never reuse `conn`: it is closed once its user lets go."""
        conn.user = None
        conn.close()

    def _forget(self, conn: UpstreamConnection) -> None:
        if conn.counted:
            conn.counted = False
            self.size -= 1
            if self.waiters and self.size < self.max_connections and not self._closed:
                self.size += 1
                self._connect(self.waiters.popleft())

    def _connect(self, user: UpstreamUser) -> None:
        task = asyncio.get_running_loop().create_task(self._open(user))
        self._tasks.add(task)
        key = id(user)
        self._opening[key] = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if self._opening.get(key) is t:
                del self._opening[key]

        task.add_done_callback(done)

    async def _open(self, user: UpstreamUser) -> None:
        loop = asyncio.get_running_loop()
        made: list[UpstreamConnection] = []

        def factory() -> UpstreamConnection:
            c = UpstreamConnection(self)
            made.append(c)
            return c

        try:
            async with asyncio.timeout(self.cfg.timeout):
                _, conn = await loop.create_connection(factory, self.cfg.host, self.cfg.port)
        except (OSError, TimeoutError) as e:
            self.size -= 1
            if self.waiters and self.size < self.max_connections and not self._closed:
                self.size += 1
                self._connect(self.waiters.popleft())
            user.u_connect_failed(e)
            return
        except asyncio.CancelledError:
            for c in made:  # connected just as it was cancelled: closed, counted down here
                c.counted = False
                c.close()
            self.size -= 1
            raise
        if conn.closed:  # closed between connect and now
            user.u_connect_failed(ConnectionResetError("connection closed right after connect"))
            return
        conn.user = user
        user.u_connected(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than IDLE_TIMEOUT."""
        idle = self.idle
        if idle and now - idle[0].idle_since > IDLE_TIMEOUT:
            keep = []
            for c in idle:
                if c.closed:
                    continue
                if now - c.idle_since > IDLE_TIMEOUT:
                    c.close()
                else:
                    keep.append(c)
            self.idle = keep

    def close(self) -> None:
        """Close idle connections and stop opening new ones (busy ones close on release)."""
        self._closed = True
        idle, self.idle = self.idle, []
        for c in idle:
            c.close()
        for t in self._tasks:
            t.cancel()

    def stats(self) -> dict[str, Any]:
        return {"size": self.size, "idle": len(self.idle), "waiting": len(self.waiters)}


def rewrite_path(rw_from: bytes | None, rw_to: bytes, path: bytes) -> bytes:
    """`path` with the prefix `rw_from` replaced by `rw_to` (a backend's `rewrite`)."""
    if rw_from is not None and path.startswith(rw_from):
        path = rw_to + path[len(rw_from) :]
        if not path.startswith(b"/"):
            path = b"/" + path
    return path
