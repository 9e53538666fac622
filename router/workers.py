"""`modelrouter serve --workers N`: one supervisor and N worker processes on one machine.

Each worker is a whole router (`router.server.Server`): data plane and admin listener. All of
them bind the same two ports with SO_REUSEPORT, so the kernel spreads connections over them; the
supervisor reserves the ports first (which also turns a configured port 0 into one real port)
and never accepts on them. The admin port is shared the same way rather than served by one
worker only: whichever worker answers, `status`, the dashboard and `/metrics` describe the whole
router, because

- learned statistics are merged through the state store (`policies.merge`), so every worker
  reports the same totals (at most one tick, 1 s, apart);
- `/metrics` is rendered from every worker's files in PROMETHEUS_MULTIPROC_DIR
  (prometheus_client's multiprocess mode, see router/metrics.py): counters add up;
- admin actions and reloads reach every worker: a reload made on one worker (SIGHUP or
  `POST /admin/reload`) is recorded by that worker, which tells the supervisor (SIGUSR1); the
  supervisor has every other worker re-read the same file without a second audit entry
  (SIGUSR2). Rollout actions go through the shared rollout state (the rollout lease).

The supervisor forwards SIGTERM/SIGINT (every worker drains), sends SIGHUP to one worker (which
reloads and passes the reload on, as above), and restarts a worker that dies, with a backoff; it
gives up (exit 1) when a worker keeps dying right after it starts (port taken, store unusable).
A worker whose supervisor disappears (kill -9) drains and exits by itself.

The state store is the coordination point: the embedded SQLite file (every worker opens it; WAL
mode lets them read while one writes) or Redis when configured. `store: memory` is refused:
nothing would be shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from policies.spec import Config

if TYPE_CHECKING:
    from router.server import Server

__all__ = ["ENV_WORKER", "supervise", "worker_chores", "worker_main"]

log = logging.getLogger("modelrouter.workers")

ENV_WORKER = "MODELROUTER_WORKER"  # "index:proxy_port:admin_port:supervisor_pid", set per worker
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD}
_QUICK = 10.0  # a worker that dies sooner than this after its start "failed to start"
_GIVE_UP = 5  # consecutive quick deaths of one worker before the supervisor gives up
_DRAIN_GRACE = 15.0  # beyond the workers' own drain timeout, before SIGKILL


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0
    exit_codes: list[int] = field(default_factory=list)


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (never listen on) host:port with SO_REUSEPORT: holds the port for the workers."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def _refusal(config: Config) -> str | None:
    """Why this config cannot run under --workers, or None."""
    if config.state.store == "memory":
        return (
            "state.store: memory cannot be shared by --workers processes; use the default "
            "sqlite store (one file on this machine) or redis"
        )
    # rollouts are fine: one worker drives each (the lease), the others follow its state
    return None


def supervise(config: Config, config_path: str, n: int) -> int:
    """Run `n` workers until SIGTERM/SIGINT; returns the process exit code."""
    why = _refusal(config)
    if why is not None:
        print(f"modelrouter: --workers {n}: {why}", file=sys.stderr)
        return 2
    own_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None
    metrics_dir = (
        tempfile.mkdtemp(prefix="modelrouter-metrics-")
        if own_dir
        else os.environ["PROMETHEUS_MULTIPROC_DIR"]
    )
    # values of an earlier run would add to this one's counters
    for stale in glob.glob(os.path.join(metrics_dir, "*.db")):
        os.remove(stale)
    try:
        held = [
            _reserve(config.listen.host, config.listen.port),
            _reserve(config.admin.listen.host, config.admin.listen.port),
        ]
    except OSError as e:
        print(f"modelrouter: cannot start: {e}", file=sys.stderr)
        return 1
    ports = (held[0].getsockname()[1], held[1].getsockname()[1])
    try:
        return _Supervisor(config_path, n, ports, metrics_dir).run()
    finally:
        for s in held:
            s.close()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, config_path: str, n: int, ports: tuple[int, int], metrics_dir: str):
        self.config_path = config_path
        self.ports = ports
        self.metrics_dir = metrics_dir
        self.workers = [_Worker(i) for i in range(n)]
        self.stopping = False
        self.deadline = 0.0
        self.failed = False

    def spawn(self, w: _Worker) -> None:
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            ENV_WORKER: f"{w.index}:{self.ports[0]}:{self.ports[1]}:{os.getpid()}",
        }
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "router.workers", self.config_path],
            env=env,
            # its own session: a terminal's Ctrl-C reaches the supervisor only, which forwards
            # one SIGTERM (a second signal mid-drain would kill the worker)
            start_new_session=True,
            preexec_fn=_unblock,  # safe: the supervisor has one thread
        )
        w.started = time.monotonic()

    def live(self) -> list[_Worker]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def send(self, sig: int, workers: list[_Worker]) -> None:
        for w in workers:
            if w.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, sig)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for w in self.workers:
                self.spawn(w)
            log.info(
                "supervisor (pid %d): %d workers on ports %d (proxy) and %d (admin)",
                os.getpid(),
                len(self.workers),
                *self.ports,
            )
            while True:
                info = signal.sigtimedwait(_SIGNALS, 0.25)
                if info is not None:
                    self.on_signal(info.si_signo, info.si_pid)
                self.reap()
                if self.stopping:
                    if not self.live():
                        break
                    if time.monotonic() > self.deadline:
                        log.error("workers still running after the drain timeout: SIGKILL")
                        self.send(signal.SIGKILL, self.live())
                        self.deadline = float("inf")
        finally:
            self.send(signal.SIGKILL, self.live())
            for w in self.workers:
                if w.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        w.proc.wait(5)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        log.info("supervisor: every worker stopped")
        return 1 if self.failed else 0

    def on_signal(self, sig: int, sender: int) -> None:
        from router.server import DRAIN_TIMEOUT

        if sig in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            log.info("supervisor: draining every worker")
            self.stopping = True
            self.deadline = time.monotonic() + DRAIN_TIMEOUT + _DRAIN_GRACE
            self.send(signal.SIGTERM, self.live())
        elif sig == signal.SIGHUP and not self.stopping:
            # one worker reloads and records it; it then asks (SIGUSR1) for the others to follow
            self.send(signal.SIGHUP, self.live()[:1])
        elif sig == signal.SIGUSR1 and not self.stopping:
            others = [w for w in self.live() if w.proc is not None and w.proc.pid != sender]
            self.send(signal.SIGUSR2, others)

    def reap(self) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        now = time.monotonic()
        for w in self.workers:
            proc = w.proc
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                # its live gauges leave the merged /metrics; its counts keep counting
                mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                w.proc = None
                if self.stopping:
                    continue
                quick = now - w.started < _QUICK
                w.quick_deaths = w.quick_deaths + 1 if quick else 0
                if w.quick_deaths >= _GIVE_UP:
                    log.error(
                        "worker %d died %d times right after starting (last exit %s); stopping",
                        w.index,
                        w.quick_deaths,
                        code,
                    )
                    self.failed = True
                    self.on_signal(signal.SIGTERM, 0)
                    continue
                delay = min(30.0, 0.5 * 2**w.quick_deaths) if quick else 0.0
                log.error(
                    "worker %d (pid %d) exited with %s; restarting in %.1fs",
                    w.index,
                    proc.pid,
                    code,
                    delay,
                )
                w.restart_at = now + delay
            if w.proc is None and not self.stopping and now >= w.restart_at:
                self.spawn(w)


def _unblock() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


# ---- the worker side ----------------------------------------------------------------------


def worker_chores(server: Server, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Background duties of a worker: publish its request counters for the others' `/metrics`,
    pass reloads on to the supervisor, and stop when the supervisor is gone."""
    spec = os.environ.get(ENV_WORKER, "")
    parent = int(spec.split(":")[3]) if spec.count(":") == 3 else os.getppid()

    def reloaded(actor: str, recorded: bool) -> None:
        if recorded:  # made here (admin API or SIGHUP): the other workers follow it
            with contextlib.suppress(ProcessLookupError):
                os.kill(parent, signal.SIGUSR1)

    server.runtime.reload_listeners.append(reloaded)

    async def metrics_files() -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                server.runtime.metrics.sync_files()
            except Exception:
                log.exception("worker %s: cannot write its metrics files", server.worker)

    async def orphan_watch() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.error("worker %s: the supervisor is gone; draining", server.worker)
        stop.set()

    return [asyncio.create_task(metrics_files()), asyncio.create_task(orphan_watch())]


def worker_main(argv: list[str]) -> int:
    """Entry point of one worker process (started by the supervisor, never by hand)."""
    from router.config import ConfigError, load_config
    from router.server import Server, run_server, setup_logging

    spec = os.environ.get(ENV_WORKER, "")
    parts = spec.split(":")
    if len(argv) != 1 or len(parts) != 4 or not all(p.isdigit() for p in parts):
        print("router.workers: started by `modelrouter serve --workers N` only", file=sys.stderr)
        return 2
    index, proxy_port, admin_port = int(parts[0]), int(parts[1]), int(parts[2])
    setup_logging()
    try:
        config = load_config(argv[0])
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    server = Server(config, argv[0], proxy_port=proxy_port, admin_port=admin_port, worker=index)
    try:
        run_server(server)
    except OSError as e:
        print(f"modelrouter worker {index}: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
