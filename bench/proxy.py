"""Data-plane benchmark: direct vs nginx vs modelrouter, 90/10 weighted, wrk at c=32 and c=128.

    .venv/bin/python bench/proxy.py [--quick] [--duration S] [--rounds N]

Everything runs on 127.0.0.1 from a temp dir; only processes started here are stopped. The
backends are nginx answering ~100-byte JSON (a tiny uvloop server when nginx is missing).
Rounds are interleaved (direct, nginx, modelrouter, ...) so drift and neighbours hit all alike;
the table shows medians over rounds. CPU per request is utime+stime of the proxy process over
the run divided by the requests wrk completed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
WRK = shutil.which("wrk") or "/usr/bin/wrk"
BODY = '{"model":"%s","version":"1.0.0","predictions":[[0.12,0.88]],"latency_ms":1.5,"ok":true}'
TICK = os.sysconf("SC_CLK_TCK")

UVLOOP_BACKEND = r"""
import asyncio, sys, uvloop
body = sys.argv[2].encode()
resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(body), body)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d):
        n = d.count(b"\r\n\r\n")
        self.t.write(resp * n)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(P, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await asyncio.Event().wait()
uvloop.run(main())
"""

SERVE_INLINE = r"""
import asyncio, sys, uvloop
from router.app import open_runtime
from router.config import parse_config
from router.dataplane.proxy import start_proxy
async def main():
    cfg = parse_config(open(sys.argv[1]).read(), sys.argv[1])
    rt = await open_runtime(cfg)
    await start_proxy(rt, cfg.listen.host, cfg.listen.port)
    await asyncio.Event().wait()
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
    r.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def nginx_conf(tmp: Path, body: str) -> str:
    return f"""
worker_processes 1;
master_process off;
daemon off;
pid {tmp}/nginx-%s.pid;
error_log {tmp}/error-%s.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    {body}
}}
"""


class Bench:
    def __init__(self, duration: float, rounds: int) -> None:
        self.duration = duration
        self.rounds = rounds
        self.tmp = Path(tempfile.mkdtemp(prefix="mr-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def start_backends(self) -> tuple[int, int]:
        pa, pb = free_port(), free_port()
        if NGINX:
            servers = "\n".join(
                f"server {{ listen 127.0.0.1:{p} backlog=4096; default_type application/json;"
                f" location / {{ return 200 '{BODY % n}'; }} }}"
                for p, n in ((pa, "a"), (pb, "b"))
            )
            conf = self.tmp / "backends.conf"
            conf.write_text(nginx_conf(self.tmp, servers) % ("b", "b"))
            self.spawn([NGINX, "-p", str(self.tmp), "-c", str(conf)])
        else:
            for p, n in ((pa, "a"), (pb, "b")):
                self.spawn([sys.executable, "-c", UVLOOP_BACKEND, str(p), BODY % n])
        wait_port(pa)
        wait_port(pb)
        return pa, pb

    def start_nginx_proxy(self, pa: int, pb: int) -> tuple[subprocess.Popen[bytes], int] | None:
        if not NGINX:
            return None
        port = free_port()
        body = f"""
    upstream models {{ server 127.0.0.1:{pa} weight=9; server 127.0.0.1:{pb} weight=1;
                       keepalive 256; }}
    server {{ listen 127.0.0.1:{port} backlog=4096;
      location / {{ proxy_pass http://models; proxy_http_version 1.1;
                   proxy_set_header Connection ""; proxy_buffering on; }} }}"""
        conf = self.tmp / "proxy.conf"
        conf.write_text(nginx_conf(self.tmp, body) % ("p", "p"))
        p = self.spawn([NGINX, "-p", str(self.tmp), "-c", str(conf)])
        wait_port(port)
        return p, port

    def start_modelrouter(self, pa: int, pb: int) -> tuple[subprocess.Popen[bytes], int]:
        port, admin = free_port(), free_port()
        conf = self.tmp / "modelrouter.yaml"
        conf.write_text(
            f"""version: 1
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
state: {{store: memory}}
backends:
  a: {{url: http://127.0.0.1:{pa}}}
  b: {{url: http://127.0.0.1:{pb}}}
routes:
  - name: bench
    match: {{path_prefix: /}}
    policy: {{kind: weighted, weights: {{a: 90, b: 10}}}}
"""
        )
        cli = Path(sys.executable).parent / "modelrouter"
        env = {**os.environ, "MODELROUTER_FEEDBACK_SECRET": "bench-secret"}
        if cli.exists() and os.environ.get("BENCH_INLINE") != "1":
            args = [str(cli), "serve", str(conf)]
        else:
            args = [sys.executable, "-c", SERVE_INLINE, str(conf)]
        p = self.spawn(args, env=env, cwd=str(self.tmp))
        try:
            wait_port(port)
        except SystemExit:
            err = p.stderr.read().decode() if p.poll() is not None and p.stderr else ""
            raise SystemExit(f"modelrouter did not start: {err[-2000:]}") from None
        return p, port

    def wrk(self, port: int, conns: int, pid: int | None) -> dict[str, float]:
        u0, s0 = cpu_split(pid) if pid else (0.0, 0.0)
        out = subprocess.run(
            [
                WRK,
                "-t1",
                f"-c{conns}",
                f"-d{max(1, round(self.duration))}s",
                "--latency",
                f"http://127.0.0.1:{port}/v1/models/m:predict",
            ],
            capture_output=True,
            text=True,
            timeout=self.duration + 30,
            check=True,
        ).stdout
        u1, s1 = cpu_split(pid) if pid else (0.0, 0.0)
        cpu = (u1 - u0) + (s1 - s0)
        reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock_err = re.search(r"Socket errors: (.*)", out)
        return {
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
            "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
            "cpu_us": cpu / reqs * 1e6 if reqs and pid else float("nan"),
            "sys_us": (s1 - s0) / reqs * 1e6 if reqs and pid else float("nan"),
            "bad": float(errors.group(1)) if errors else 0.0,
            "sockerr": 1.0 if sock_err else 0.0,
        }

    def run(self) -> None:
        if not Path(WRK).exists():
            raise SystemExit("wrk is not installed (apt-get install wrk)")
        pa, pb = self.start_backends()
        targets: list[tuple[str, int, int | None]] = [("direct", pa, None)]
        ng = self.start_nginx_proxy(pa, pb)
        if ng is not None:
            targets.append(("nginx", ng[1], ng[0].pid))
        mr, mr_port = self.start_modelrouter(pa, pb)
        targets.append(("modelrouter", mr_port, mr.pid))
        for _, port, _ in targets:  # warm up: connections, pools, caches
            subprocess.run(
                [WRK, "-t1", "-c32", "-d1s", f"http://127.0.0.1:{port}/"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        self.load_before = load_average()
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for rnd in range(self.rounds):
            for conns in (32, 128):
                for name, port, pid in targets:
                    r = self.wrk(port, conns, pid)
                    results.setdefault((name, conns), []).append(r)
            print(f"round {rnd + 1}/{self.rounds} done", file=sys.stderr)
        self.report(results, [t[0] for t in targets])

    def report(
        self, results: dict[tuple[str, int], list[dict[str, float]]], names: list[str]
    ) -> None:
        def med(name: str, c: int, k: str) -> float:
            return statistics.median(r[k] for r in results[(name, c)])

        print(
            f"\nwrk -t1, {self.rounds} interleaved rounds x {self.duration}s, 90/10 weighted, "
            f"backends: {'nginx' if NGINX else 'uvloop'}; medians ({os.cpu_count()} cores, "
            f"load average {self.load_before} before, {load_average()} after)"
        )
        print(
            f"{'setup':<12} {'c':>4} {'RPS':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'CPU µs/req':>11} {'of it sys':>10} {'non-2xx':>8}"
        )
        for c in (32, 128):
            for n in names:
                cpu = med(n, c, "cpu_us")
                sys_us = med(n, c, "sys_us")
                print(
                    f"{n:<12} {c:>4} {med(n, c, 'rps'):>9.0f} {med(n, c, 'p50'):>8.2f} "
                    f"{med(n, c, 'p99'):>8.2f} {'-' if cpu != cpu else f'{cpu:.1f}':>11} "
                    f"{'-' if sys_us != sys_us else f'{sys_us:.1f}':>10} "
                    f"{sum(r['bad'] for r in results[(n, c)]):>8.0f}"
                )
        print()
        for c in (32, 128):
            mr = med("modelrouter", c, "rps")
            line = f"c={c}: "
            if "nginx" in names:
                line += f"modelrouter/nginx RPS = {mr / med('nginx', c, 'rps'):.2f}  "
            line += f"modelrouter/direct RPS = {mr / med('direct', c, 'rps'):.2f}  "
            added = med("modelrouter", c, "p99") - med("direct", c, "p99")
            line += f"added p99 vs direct = {added:.2f} ms"
            if "nginx" in names:
                cpu_ratio = med("modelrouter", c, "cpu_us") / med("nginx", c, "cpu_us")
                line += f"  CPU/req vs nginx = {cpu_ratio:.1f}x"
            print(line)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _ms(s: str) -> float:
    m = re.match(r"([\d.]+)(\w+)", s)
    assert m is not None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s (a smoke run)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    a = ap.parse_args()
    b = Bench(2.0 if a.quick else a.duration, 1 if a.quick else a.rounds)
    try:
        b.run()
    finally:
        b.close()


if __name__ == "__main__":
    main()
