"""A model server that misbehaves on demand, for the fault-injection tests.

It speaks HTTP/1.1 with keep-alive like a model server, answers health checks on `/health`, and
records every request that reached it (method, path, x-request-id, connection). What it does with
the other requests is its `mode`, set at start or at any time with `GET /_fault/mode?set=MODE`:

    ok                 200 {"upstream": NAME, "n": SEQ}
    delay:MS           ok after MS milliseconds
    status:CODE        CODE with a JSON error (status:404 is "model not found"); health stays 200
    burst:CODE:K       the next K requests answer CODE, then ok again
    hang               read the request, never answer (connections stay open)
    reset-mid-body     send the head and part of the body, then reset the connection
    close-after-read   read the request, close the connection without answering
    close-on-reuse     answer the first request of a connection, close on the next one unanswered
    drip:MS            200 whose 16-byte body leaves one byte every MS milliseconds
    huge-head:BYTES    200 with BYTES of response headers
    down               like hang, and /health answers 503

Run in-process (`FaultServer`), or as its own process (`python -m tests.faults.upstream --port P
--log FILE`) so a test can SIGKILL or SIGTERM it; then every received request and every
finished answer is one JSON line in FILE, written unbuffered so a SIGKILL loses none. SIGTERM
drains like a well-behaved server: stop accepting, finish the requests in flight, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools

HEALTH = "/health"
CONTROL = "/_fault/"


@dataclass
class Received:
    """One request that reached the upstream."""

    method: str
    path: str
    request_id: str
    conn: int  # connection number on this server
    answered: bool = False


class FaultServer:
    """The misbehaving upstream: an asyncio server whose answers follow `mode`."""

    def __init__(self, name: str, mode: str = "ok", log_path: str | None = None) -> None:
        self.name = name
        self.mode = mode
        self.burst_left = 0
        self.received: list[Received] = []
        self.port = 0
        self.connections = 0
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if log_path else -1

    # ---- what reached it -------------------------------------------------------------------

    def count(self, method: str | None = None) -> int:
        return sum(1 for r in self.received if method is None or r.method == method)

    def unanswered(self) -> int:
        return sum(1 for r in self.received if not r.answered)

    def _log(self, event: dict[str, Any]) -> None:
        if self._log_fd >= 0:
            os.write(self._log_fd, (json.dumps(event) + "\n").encode())

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        kind, _, arg = mode.partition(":")
        if kind not in _MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if kind == "burst":
            self.burst_left = int(arg.split(":")[1])
        self.mode = mode

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish, close the rest (what SIGTERM does)."""
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while any(c.busy for c in self._conns):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1


_MODES = {
    "ok",
    "delay",
    "status",
    "burst",
    "hang",
    "reset-mid-body",
    "close-after-read",
    "close-on-reuse",
    "drip",
    "huge-head",
    "down",
}


class _Conn(asyncio.Protocol):
    """One client connection of the fault server."""

    def __init__(self, server: FaultServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.answered = 0  # requests answered on this connection
        self.busy = False
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.n = self.server.connections
        self.server._conns.add(self)
        self.server._log({"ev": "open", "conn": self.n})

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._conns.discard(self)
        self.server._log({"ev": "close", "conn": self.n})
        for t in self.tasks:
            t.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashing process does."""
        if self.transport is None or self.closed:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed = True
        self.transport.abort()

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        target = self.url.decode("latin-1")
        path = urlsplit(target).path
        self.busy = True
        task = asyncio.get_running_loop().create_task(self._answer(method, path, target))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- answers ----

    def _send(self, status: int, body: bytes, extra: bytes = b"") -> None:
        assert self.transport is not None
        head = (
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
        ).encode()
        self.transport.write(head + extra + b"\r\n" + body)

    async def _answer(self, method: str, path: str, target: str) -> None:
        srv = self.server
        mode = srv.mode
        if path.startswith(CONTROL):
            q = parse_qs(urlsplit(target).query)
            if "set" in q:
                srv.set_mode(q["set"][0])
            stats = {"mode": srv.mode, "received": len(srv.received)}
            self._send(200, json.dumps(stats).encode())
            self.busy = False
            return
        if path == HEALTH:
            self._send(503 if mode == "down" else 200, b'{"ok": true}')
            self.busy = False
            return
        rec = Received(method, path, self.headers.get(b"x-request-id", b"").decode(), self.n)
        srv.received.append(rec)
        srv._log({"ev": "recv", "method": method, "path": path, "rid": rec.request_id})
        kind, _, arg = mode.partition(":")
        if kind == "close-on-reuse":
            kind = "close-after-read" if self.answered else "ok"
        if kind == "burst":
            burst_code, _ = arg.split(":")
            if srv.burst_left > 0:
                srv.burst_left -= 1
                kind, arg = "status", burst_code
            else:
                kind = "ok"
        if kind in ("hang", "down"):
            await asyncio.Event().wait()  # until the connection goes (cancelled)
        if kind == "close-after-read":
            self.close()
            return
        if kind == "delay":
            await asyncio.sleep(int(arg) / 1000)
        if self.closed:
            return
        body = json.dumps({"upstream": srv.name, "n": len(srv.received)}).encode()
        if kind == "status":
            code = int(arg)
            err = "model not found" if code == 404 else "boom"
            self._send(code, json.dumps({"error": err, "upstream": srv.name}).encode())
        elif kind == "reset-mid-body":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100)
            await asyncio.sleep(0.05)  # let the partial body leave before the reset
            self.reset()
            return
        elif kind == "drip":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n")
            for i in range(16):
                await asyncio.sleep(int(arg) / 1000)
                if self.closed:
                    return
                self.transport.write(b"0123456789abcdef"[i : i + 1])
        elif kind == "huge-head":
            size = int(arg)
            line = b"x-filler: " + b"a" * 990 + b"\r\n"
            self._send(200, body, line * max(1, -(-size // len(line))))
        else:
            self._send(200, body)
        rec.answered = True
        srv._log({"ev": "sent", "method": method, "rid": rec.request_id})
        self.answered += 1
        self.busy = False
        if not self.parser.should_keep_alive():
            self.close()


async def _main(args: argparse.Namespace) -> None:
    srv = FaultServer(args.name, args.mode, args.log)
    await srv.start(args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(srv.port, flush=True)  # the parent reads the port from the first line
    await stop.wait()
    await srv.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.upstream")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--name", default="fault")
    p.add_argument("--mode", default="ok")
    p.add_argument("--log", default=None, help="append one JSON line per request event")
    asyncio.run(_main(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
