"""The HTTP/1.1 data plane: `start_proxy(router, host, port)` listens and proxies every request.

`ProxyServer` owns the listening socket and the client connections (router.dataplane.listener),
checks in-flight exchanges' timeouts on a coarse tick, closes idle connections and upstream
pools on a slower sweep, and drains on shutdown. All it needs of the routing runtime is the
seam in router.dataplane.seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from typing import TYPE_CHECKING, Any, Final, cast

from router.dataplane.listener import ClientProtocol

if TYPE_CHECKING:
    from router.dataplane.exchange import Exchange
    from router.dataplane.seam import Router

__all__ = ["ProxyServer", "start_proxy"]

log = logging.getLogger("modelrouter.proxy")

KEEPALIVE_TIMEOUT: Final = 75.0  # idle client connections are closed after this
HEAD_TIMEOUT: Final = 30.0  # a request head must arrive within this (slowloris)
SWEEP_INTERVAL: Final = 5.0
TICK: Final = 0.05  # timeout resolution


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
        for b in list(self.runtime.backends.values()):
            b.group.sweep(now)
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
    srv._sweeper = loop.call_later(SWEEP_INTERVAL, srv._sweep)
    srv._ticker = loop.call_later(TICK, srv._tick)
    # What startup built (config, numpy, aiohttp, prometheus: ~70k objects) lives for good. A full
    # collection walking it costs ~65 ms here and stalls every request in flight (the p99 spikes
    # at c=128); frozen, a full collection only walks what was allocated since.
    if freeze_gc:
        gc.freeze()
    return srv
