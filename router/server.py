"""`modelrouter serve`: build the store, metrics, runtime, data plane and admin listener; run them.

SIGTERM/SIGINT drain (stop accepting, finish in-flight requests, persist, exit 0); SIGHUP reloads
the config file with the same all-or-nothing path as `POST /admin/reload`. With `--workers N`
the process is a supervisor of N such servers (router/workers.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from policies.spec import Config

log = logging.getLogger("modelrouter")

DRAIN_TIMEOUT = 30.0


class Server:
    """One router process: data plane + admin listener over one Runtime."""

    def __init__(
        self,
        config: Config,
        config_path: str | Path | None = None,
        *,
        proxy_port: int | None = None,
        admin_port: int | None = None,
        worker: int | None = None,
    ) -> None:
        self.config = config
        # one of `serve --workers N`: both listeners share their port (SO_REUSEPORT)
        self.worker = worker
        self.config_path = config_path
        self._proxy_port_override = proxy_port
        self._admin_port_override = admin_port
        self.runtime: Any = None
        self.proxy: Any = None
        self._admin_runner: web.AppRunner | None = None
        self._admin_site: web.TCPSite | None = None
        self.proxy_port = 0
        self.admin_port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        import router.dataplane.proxy as proxy_module
        from router.admin import create_admin_app
        from router.app import open_runtime
        from router.dataplane.proxy import start_proxy

        cfg = self.config
        self.runtime = await open_runtime(cfg, config_path=self.config_path)
        port = cfg.listen.port if self._proxy_port_override is None else self._proxy_port_override
        reuse = self.worker is not None
        self.proxy = await start_proxy(self.runtime, cfg.listen.host, port, reuse_port=reuse)
        self.proxy_port = self.proxy.port
        token = os.environ.get(cfg.admin.token_env) or None
        app = create_admin_app(self.runtime, token=token)
        self._admin_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._admin_runner.setup()
        aport = self._admin_port_override
        if aport is None:
            aport = cfg.admin.listen.port
        self._admin_site = web.TCPSite(
            self._admin_runner, cfg.admin.listen.host, aport, reuse_port=reuse or None
        )
        await self._admin_site.start()
        server = self._admin_site._server
        sockets = getattr(server, "sockets", None) or []
        self.admin_port = sockets[0].getsockname()[1] if sockets else aport
        if token is None:
            log.warning(
                "no admin token: set %s to allow admin actions (read-only admin API until then)",
                cfg.admin.token_env,
            )
        # the data plane is compiled with mypyc by a regular install, pure Python otherwise
        build = "pure Python" if proxy_module.__file__.endswith(".py") else "compiled"
        log.info(
            "modelrouter %sserving on %s:%d (admin %s:%d), %d routes, %s data plane",
            "" if self.worker is None else f"worker {self.worker} (pid {os.getpid()}) ",
            cfg.listen.host,
            self.proxy_port,
            cfg.admin.listen.host,
            self.admin_port,
            len(cfg.routes),
            build,
        )

    async def reload(self, follow: bool = False) -> None:
        """Reload the config file (SIGHUP). `follow`: another worker reloaded and recorded it;
        this one applies the same file without a second audit entry (SIGUSR2)."""
        from router.config import ConfigError

        try:
            changes = await self.runtime.reload_from_file(
                actor="signal", reason="SIGHUP", record=not follow
            )
        except ConfigError as e:
            log.error("reload rejected, the old config keeps serving:\n%s", "\n".join(e.errors))
            if follow:
                return  # the file changed again since; the worker that reloaded says so
            await self.runtime.audit.record(
                "*", "reload_rejected", "signal", "SIGHUP", errors=len(e.errors)
            )
            return
        except Exception:
            log.exception("reload failed, the old config keeps serving")
            return
        log.info("reloaded config: %s", changes)

    async def drain_and_stop(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Refuse new connections, let in-flight requests finish, persist state, close."""
        if self.runtime is not None:
            self.runtime.draining = True
        if self.proxy is not None:
            await self.proxy.drain(timeout)
        if self.runtime is not None:
            self.runtime.metrics.sync_files()  # --workers: the drained requests count too
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.runtime is not None:
            from router.app import close_runtime

            await close_runtime(self.runtime)
        self._stopped.set()

    async def run(self) -> None:
        """Start, then serve until SIGTERM/SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        await self.start()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        sigs = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
        chores: list[asyncio.Task[None]] = []
        if self.worker is not None:
            from router.workers import worker_chores

            loop.add_signal_handler(
                signal.SIGUSR2, lambda: asyncio.ensure_future(self.reload(follow=True))
            )
            sigs.append(signal.SIGUSR2)
            chores = worker_chores(self, stop)
        await stop.wait()
        log.info("draining: finishing in-flight requests (up to %.0fs)", DRAIN_TIMEOUT)
        for sig in sigs:
            loop.remove_signal_handler(sig)
        for t in chores:
            t.cancel()
        await self.drain_and_stop()
        log.info("stopped")


def setup_logging() -> None:
    level = os.environ.get("MODELROUTER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_server(server: Server) -> None:
    """Run a server on uvloop until it is told to stop."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.run())


def serve_main(config_path: str, workers: int = 1) -> int:
    """Entry point of `modelrouter serve`; returns the process exit code."""
    from router.config import ConfigError, load_config
    from router.store import StoreError

    setup_logging()
    try:
        config = load_config(config_path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    if workers != 1:
        from router.workers import supervise

        return supervise(config, config_path, workers)
    try:
        run_server(Server(config, config_path))
    except StoreError as e:
        # unusable state store at start: one line saying which and what to do, no traceback
        print(f"modelrouter: cannot start: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"modelrouter: cannot start: {e}", file=sys.stderr)
        return 1
    return 0
