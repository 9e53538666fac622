"""The HTTP/1.1 data plane: `start_proxy(router, host, port)` listens and proxies every request.

`ProxyServer` owns the listening socket and the client connections (router.dataplane.listener),
checks in-flight exchanges' timeouts on a coarse tick, and on a slower sweep enforces the
client-side limits (`limits.client_header_timeout`, `client_body_timeout`, `keepalive_timeout`:
408 or close) and closes idle upstream connections; it drains on shutdown. Client connections
beyond `limits.max_connections` (capped by the open-file limit) are answered 503 and closed.
All it needs of the routing runtime is the seam in router.dataplane.seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import socket
from typing import TYPE_CHECKING, Any, Final, cast

from router.dataplane.listener import ClientProtocol

if TYPE_CHECKING:
    from router.dataplane.exchange import Exchange
    from router.dataplane.seam import Router

__all__ = ["ProxyServer", "start_proxy"]

log = logging.getLogger("modelrouter.proxy")

SWEEP_INTERVAL: Final = 5.0  # at most; a quarter of the shortest client timeout when smaller
TICK: Final = 0.05  # timeout resolution
FD_RESERVE: Final = 256  # open files kept for upstream connections, the admin listener, stores


def fd_connection_cap(wanted: int) -> int:
    """How many client connections the open-file limit allows, raising the soft limit toward
    the hard one when `wanted` needs it (like nginx's worker_rlimit_nofile)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    # small limits (tests, tight containers) keep half the files for the rest
    return max(1, min(wanted, soft - FD_RESERVE if soft > 2 * FD_RESERVE else soft // 2))


class ProxyServer:
    """The listening data plane: `.port`, `drain(timeout)`, `close()`."""

    def __init__(self, runtime: Router, loop: asyncio.AbstractEventLoop) -> None:
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
        self.refused = 0  # connections refused over max_connections, ever
        self.refusing = 0  # refused connections still closing
        self._fd_cap = 0
        self._fd_for = 0
        metrics = runtime.metrics
        metrics.count_connections(lambda: len(self.connections))

    def max_connections(self) -> int:
        """limits.max_connections (read on every accept: a reload changes it), capped by the
        open-file limit; a warning says when the cap is lower than the config."""
        wanted = self.runtime.config.limits.max_connections
        if wanted != self._fd_for:
            self._fd_for = wanted
            self._fd_cap = fd_connection_cap(wanted)
            if self._fd_cap < wanted:
                log.warning(
                    "limits.max_connections is %d but the open-file limit allows %d client "
                    "connections; more are refused (raise `ulimit -n`)",
                    wanted,
                    self._fd_cap,
                )
        return self._fd_cap

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
        limits = self.runtime.config.limits
        head_t = limits.client_header_timeout
        body_t = limits.client_body_timeout
        idle_t = limits.keepalive_timeout
        for c in list(self.connections):
            t = c.transport
            if t is None or c.dead:
                continue
            ex = c.ex_in
            if ex is not None:
                # reading a request body: the client must send on (unless we paused it)
                if not c.paused and not ex.req_done and now - c.last_active > body_t:
                    c.timed_out(body=True)
            elif c.active is None:
                if c._in_head:
                    if now - c._head_started > head_t:
                        c.timed_out(body=False)
                elif c._seq == 0:
                    # a new connection: its first request head is due like any other
                    if now - c.last_active > head_t:
                        t.close()
                elif now - c.last_active > idle_t:
                    t.close()
        for b in list(self.runtime.backends.values()):
            b.group.sweep(now)
        interval = min(SWEEP_INTERVAL, head_t / 4, body_t / 4, idle_t / 4)
        self._sweeper = self.loop.call_later(max(TICK, interval), self._sweep)

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
    runtime: Router,
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
    srv.max_connections()  # raise the open-file limit now, not on the first accept
    srv._sweeper = loop.call_later(TICK, srv._sweep)
    srv._ticker = loop.call_later(TICK, srv._tick)
    # What startup built (config, numpy, aiohttp, prometheus: ~70k objects) lives for good. A full
    # collection walking it costs ~65 ms here and stalls every request in flight (the p99 spikes
    # at c=128); frozen, a full collection only walks what was allocated since.
    if freeze_gc:
        gc.freeze()
    return srv
