"""Data-plane benchmark: direct vs nginx vs modelrouter, measured side by side in one run.

    .venv/bin/python bench/proxy.py [--quick] [--conns 32,128,512] [--only SECTIONS] [--readme]

Sections (all by default; `--only latency,bodies` picks some):
  latency   90/10 weighted route, wrk -t1 at each --conns: RPS and its run-to-run spread, p50,
            p99, max latency, CPU µs per request per process (utime+stime / requests)
  bodies    POST bodies of 1 KB, 64 KB, 1 MB (small answers) and GETs answered with 1 KB, 64 KB,
            1 MB: RPS and payload MB/s against nginx
  learning  the same JSON POST on a weighted, a bandit (decision tokens), the same bandit with a
            decision log, and a contextual-bandit route reading a JSON body feature: the added
            CPU per request of a learning decision and of logging it
  routes    1, 100 and 1,000 routes (one per model name), the request hitting the last or the
            middle one: RPS and CPU per request against 1 route
  memory    RSS at idle, per 10,000 idle keep-alive connections, and over an hour-equivalent
            of mixed traffic (360,000 requests: an hour at 100 requests/s) in 10 s wrk runs
  workers   modelrouter `serve --workers 1|2` against nginx `worker_processes 1|2` at c=128,
            wrk pinned to the last CPU with taskset ("skipped: --workers not available" while
            serve refuses N > 1; --workers rows use a sqlite store, which they require)

Time: the full run takes 8-10 minutes and is bounded by ~15 (every wrk run is bounded by its
duration, the mixed traffic by 12 runs, startups and the memory client by timeouts); --quick
(1 round, 1-2 s runs, 2,000 idle connections, a tenth of the mixed traffic in 3 s runs) takes
under 2 minutes on a quiet machine.

Everything runs on 127.0.0.1 from a temp dir; only processes started here are stopped. Backends
are nginx (a tiny uvloop server for the latency section when nginx is missing). Rounds are
interleaved (direct, nginx, modelrouter, ...) so drift and neighbours hit all alike; tables show
medians over rounds, and "spread" is (max - min) / median of RPS over the rounds. The results
go to bench/out/proxy-latest.json; --readme rewrites README.md's generated performance block
from this run, --readme-only from the latest saved one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "proxy-latest.json"
README = ROOT / "README.md"
START = "<!-- PERF:START -->"
END = "<!-- PERF:END -->"

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TASKSET = shutil.which("taskset")
BODY = '{"model":"%s","version":"1.0.0","predictions":[[0.12,0.88]],"latency_ms":1.5,"ok":true}'
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SIZES = (("1 KB", 1024), ("64 KB", 65536), ("1 MB", 1 << 20))
SECTIONS = ("latency", "bodies", "learning", "routes", "memory", "workers")
HOUR_REQUESTS = 360_000  # an hour at 100 requests/s

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

# Holds N keep-alive connections, each after one answered request; prints how many it opened,
# then waits for a line on stdin and exits. Bounded: connects time out after 10 s each.
IDLE_CLIENT = r"""
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n = int(sys.argv[1]), int(sys.argv[2])
REQ = b"GET /v1/models/m:predict HTTP/1.1\r\nHost: bench\r\n\r\n"
async def one(sem):
    async with sem:
        async with asyncio.timeout(10):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(REQ)
            head = await r.readuntil(b"\r\n\r\n")
            clen = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    clen = int(line.split(b":", 1)[1])
            await r.readexactly(clen)
            if not head.startswith(b"HTTP/1.1 200 "):  # refused (a connection limit): not held
                w.close()
                raise ConnectionRefusedError(head[:12])
            return w
async def main():
    sem = asyncio.Semaphore(256)
    got = await asyncio.gather(*(one(sem) for _ in range(n)), return_exceptions=True)
    print(sum(not isinstance(g, BaseException) for g in got), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"""

LUA_POST = """
wrk.method = "POST"
wrk.body = string.rep("x", {n})
wrk.headers["Content-Type"] = "application/octet-stream"
"""

# the learning rows: the same JSON bodies (three climates, an age) on every route
LUA_JSON = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{}}
for i, c in ipairs({{"hot", "cold", "mild"}}) do
  bodies[i] = wrk.format(nil, nil, nil, '{{"climate":"' .. c .. '","age":' .. (20 + 7 * i) ..
    ',"instances":[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]]}}')
end
local i = 0
request = function()
  i = i % 3 + 1
  return bodies[i]
end
"""

# the memory section's mixed traffic: every kind of request in turn, a reward posted for every
# other decision token, a connection closed now and then
LUA_MIXED = """
local json = '{{"climate":"cold","age":41,"instances":[[0.1,0.2,0.3,0.4]]}}'
local h = {{["Content-Type"] = "application/json"}}
local reqs = {{
  wrk.format("GET", "/v1/models/w:predict"),
  wrk.format("POST", "/v1/models/bandit:predict", h, json),
  wrk.format("POST", "/v1/models/ctx:predict", h, json),
  wrk.format("POST", "/up/x", {{["Content-Type"] = "application/octet-stream"}},
             string.rep("x", 65536)),
  wrk.format("GET", "/r/64k"),
  wrk.format("GET", "/nowhere"),
  wrk.format("POST", "/_modelrouter/feedback", h, '{{"decision":"forged","reward":1}}'),
  wrk.format("GET", "/v1/models/w:predict", {{["Connection"] = "close"}}),
}}
local i, n, token = 0, 0, nil
request = function()
  if token then
    local t = token
    token = nil
    return wrk.format("POST", "/_modelrouter/feedback", h,
                      '{{"decision":"' .. t .. '","reward":1}}')
  end
  i = i % #reqs + 1
  return reqs[i]
end
response = function(status, headers, body)
  n = n + 1
  local t = headers["x-modelrouter-decision"] or headers["X-Modelrouter-Decision"]
  if t and n % 2 == 0 then token = t end
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Failed(f"exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise Failed(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Failed(Exception):
    """A process did not come up."""


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (workers)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far (0, 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


def rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
    return total * PAGE / 1e6


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def nginx_conf(tmp: Path, tag: str, body: str, workers: int = 1) -> str:
    master = "off" if workers == 1 else "on"
    return f"""
worker_processes {workers};
worker_rlimit_nofile 20000;
master_process {master};
daemon off;
pid {tmp}/nginx-{tag}.pid;
error_log {tmp}/error-{tag}.log error;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body-{tag}; proxy_temp_path {tmp}/proxy-{tag};
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_max_body_size 4m;
    {body}
}}
"""


def mr_config(port: int, admin: int, pa: int, pb: int, routes: str, state: str = "") -> str:
    return f"""version: 1
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
state: {state or "{store: memory}"}
backends:
  a: {{url: http://127.0.0.1:{pa}}}
  b: {{url: http://127.0.0.1:{pb}}}
routes:
{routes}"""


WEIGHTED_ALL = """  - name: bench
    match: {path_prefix: /}
    policy: {kind: weighted, weights: {a: 90, b: 10}}
"""

LEARNING_ROUTES = """  - name: weighted
    match: {path_prefix: /v1/models/w}
    policy: {kind: weighted, weights: {a: 90, b: 10}}
  - name: bandit
    match: {path_prefix: /v1/models/bandit}
    policy: {kind: bandit, arms: [a, b], algorithm: thompson, reward: {type: binary}}
  - name: logged
    match: {path_prefix: /v1/models/logged}
    policy: {kind: bandit, arms: [a, b], algorithm: thompson, reward: {type: binary}}
    decision_log: {path: decisions.jsonl}
  - name: ctx
    match: {path_prefix: /v1/models/ctx}
    policy:
      kind: contextual_bandit
      arms: [a, b]
      algorithm: linucb
      features:
        - {name: climate, from: "json:/climate", type: categorical, values: [hot, cold, mild]}
        - {name: age, from: "json:/age", type: numeric, scale: 0.01}
      reward: {type: binary}
  - name: files
    match: {path_prefix: /r/}
    policy: {kind: weighted, weights: {a: 90, b: 10}}
  - name: upload
    match: {path_prefix: /up}
    policy: {kind: weighted, weights: {a: 90, b: 10}}
"""


def many_routes(n: int) -> str:
    return "".join(
        f'  - name: m{i:04d}\n    match: {{path_prefix: "/v1/models/m{i:04d}:"}}\n'
        f"    policy: {{kind: weighted, weights: {{a: 90, b: 10}}}}\n"
        for i in range(n)
    )


class Target:
    """Something wrk loads: a port, and the process (tree) whose CPU and memory count."""

    def __init__(self, name: str, port: int, pid: int | None) -> None:
        self.name, self.port, self.pid = name, port, pid

    def pids(self) -> list[int]:
        return tree(self.pid) if self.pid else []


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.quick: bool = a.quick
        self.duration = 2 if a.quick else max(1, round(a.duration))
        self.short = 1 if a.quick else max(1, self.duration // 2)
        self.rounds = 1 if a.quick else a.rounds
        self.conns: list[int] = a.conns
        self.sections: list[str] = a.only
        self.cli: Path | None = Path(a.modelrouter) if a.modelrouter else None
        self.tmp = Path(tempfile.mkdtemp(prefix="mr-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.results: dict[str, Any] = {}
        self.startup: dict[str, float] = {}  # seconds until modelrouter listened, by name

    # ---- processes ---------------------------------------------------------------------------

    def spawn(self, args: list[str], name: str, **kw: Any) -> subprocess.Popen[bytes]:
        # stderr to a file: a pipe nobody reads would block a chatty process
        with open(self.tmp / f"{name.replace(' ', '-')}.log", "wb") as log:
            p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def start_backends(self) -> tuple[int, int]:
        pa, pb = free_port(), free_port()
        files = self.tmp / "files" / "r"
        files.mkdir(parents=True)
        for label, n in SIZES:
            (files / label.replace(" KB", "k").replace(" MB", "m")).write_bytes(b"x" * n)
        if NGINX:
            servers = "\n".join(
                f"server {{ listen 127.0.0.1:{p} backlog=4096; default_type application/json;"
                f" location / {{ return 200 '{BODY % n}'; }}"
                f" location /up {{ return 200 '{BODY % n}'; }}"
                f" location /r/ {{ root {self.tmp}/files; }} }}"
                for p, n in ((pa, "a"), (pb, "b"))
            )
            conf = self.tmp / "backends.conf"
            conf.write_text(nginx_conf(self.tmp, "b", servers))
            self.spawn([NGINX, "-p", str(self.tmp), "-c", str(conf)], "nginx-backends")
        else:
            for p, n in ((pa, "a"), (pb, "b")):
                self.spawn([sys.executable, "-c", UVLOOP_BACKEND, str(p), BODY % n], f"backend-{n}")
        wait_port(pa)
        wait_port(pb)
        return pa, pb

    def start_nginx_proxy(self, pa: int, pb: int, workers: int = 1) -> Target | None:
        if not NGINX:
            return None
        port = free_port()
        body = f"""
    upstream models {{ server 127.0.0.1:{pa} weight=9; server 127.0.0.1:{pb} weight=1;
                       keepalive 256; }}
    server {{ listen 127.0.0.1:{port} backlog=4096;
      location / {{ proxy_pass http://models; proxy_http_version 1.1;
                   proxy_set_header Connection ""; proxy_buffering on;
                   proxy_request_buffering off; proxy_max_temp_file_size 0; }} }}"""
        tag = f"p{workers}"
        conf = self.tmp / f"proxy-{tag}.conf"
        conf.write_text(nginx_conf(self.tmp, tag, body, workers))
        p = self.spawn([NGINX, "-p", str(self.tmp), "-c", str(conf)], f"nginx-{tag}")
        wait_port(port, proc=p)
        time.sleep(0.2 if workers > 1 else 0)  # let every worker start
        return Target("nginx" if workers == 1 else f"nginx w{workers}", port, p.pid)

    def mr_args(self, conf: Path, workers: int) -> list[str]:
        cli = self.cli or Path(sys.executable).parent / "modelrouter"
        if cli.exists() and os.environ.get("BENCH_INLINE") != "1":
            return [str(cli), "serve", str(conf)] + (
                [f"--workers={workers}"] if workers > 1 else []
            )
        if workers > 1:
            raise Failed("--workers needs the modelrouter command")
        return [sys.executable, "-c", SERVE_INLINE, str(conf)]

    def start_modelrouter(
        self, name: str, pa: int, pb: int, routes: str, workers: int = 1
    ) -> Target:
        return self.ready(self.launch_modelrouter(name, pa, pb, routes, workers))

    def launch_modelrouter(
        self, name: str, pa: int, pb: int, routes: str, workers: int = 1
    ) -> tuple[str, subprocess.Popen[bytes], int, int, float]:
        """Start modelrouter without waiting for it (`ready` waits): startups overlap."""
        port, admin = free_port(), free_port()
        conf = self.tmp / f"{name.replace(' ', '-')}.yaml"
        # --workers processes share their state: not in memory (one sqlite file per setup)
        state = f"{{store: sqlite, path: {conf.stem}.db}}" if workers > 1 else ""
        conf.write_text(mr_config(port, admin, pa, pb, routes, state))
        env = {**os.environ, "MODELROUTER_FEEDBACK_SECRET": "bench-secret-0123456789abcdef"}
        p = self.spawn(self.mr_args(conf, workers), name, env=env, cwd=str(self.tmp))
        return name, p, port, workers, time.monotonic()

    def ready(self, launched: tuple[str, subprocess.Popen[bytes], int, int, float]) -> Target:
        name, p, port, workers, t0 = launched
        try:
            wait_port(port, timeout=120, proc=p)  # 1,000 routes take a while on a busy machine
        except Failed as e:
            self.stop(p)
            err = self.log_tail(name)
            raise Failed(f"modelrouter did not start ({e}): {err}") from None
        if workers > 1:
            deadline = time.monotonic() + 10
            while len(tree(p.pid)) <= workers and time.monotonic() < deadline:
                time.sleep(0.1)
        self.startup[name] = round(time.monotonic() - t0, 1)
        return Target(name, port, p.pid)

    def log_tail(self, name: str) -> str:
        path = self.tmp / f"{name.replace(' ', '-')}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text.strip()[-600:]

    # ---- load ----------------------------------------------------------------------------------

    def lua(self, name: str, text: str) -> str:
        path = self.tmp / f"{name}.lua"
        path.write_text(text)
        return str(path)

    def wrk(
        self,
        t: Target,
        conns: int,
        *,
        path: str = "/v1/models/m:predict",
        script: str | None = None,
        duration: int | None = None,
        pin: bool = False,
        payload: int = 0,
    ) -> dict[str, Any]:
        d = duration or self.duration
        pids = t.pids()
        before = {p: cpu_split(p) for p in pids}
        args = [WRK, "-t1", f"-c{conns}", f"-d{d}s", "--timeout", "10s", "--latency"]
        if script:
            args += ["-s", script]
        args.append(f"http://127.0.0.1:{t.port}{path}")
        if pin and TASKSET:
            args = [TASKSET, "-c", str((os.cpu_count() or 1) - 1), *args]
        out = subprocess.run(
            args, capture_output=True, text=True, timeout=d + 60, check=True
        ).stdout
        cpu: list[float] = []
        sys_s = 0.0
        for p in pids:
            u1, s1 = cpu_split(p)
            u0, s0 = before[p]
            cpu.append(u1 - u0 + s1 - s0)
            sys_s += s1 - s0
        reqs = int(_find(r"(\d+) requests in", out))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        lat = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
        rps = float(_find(r"Requests/sec:\s+([\d.]+)", out))
        return {
            "rps": rps,
            "mbps": rps * payload / 1e6
            if payload
            else _bytes(_find(r"Transfer/sec:\s+(\S+)", out)) / 1e6,
            "p50": _ms(_find(r"(?m)^\s*50%\s+(\S+)", out)),
            "p99": _ms(_find(r"(?m)^\s*99%\s+(\S+)", out)),
            "max": _ms(lat.group(3)) if lat else float("nan"),
            "cpu_us": sum(cpu) / reqs * 1e6 if reqs and pids else None,
            "sys_us": sys_s / reqs * 1e6 if reqs and pids else None,
            "per_proc_us": sorted((c / reqs * 1e6 for c in cpu if c > 0), reverse=True)
            if reqs
            else [],
            "bad": int(errors.group(1)) if errors else 0,
            "sockerr": sum(int(x) for x in sock.groups()) if sock else 0,
            "requests": reqs,
        }

    def warm(self, targets: list[Target]) -> None:
        for t in targets:  # connections, pools, caches
            subprocess.run(
                [WRK, "-t1", "-c32", "-d1s", f"http://127.0.0.1:{t.port}/"],
                capture_output=True,
                timeout=30,
                check=False,
            )

    def rounds_of(
        self, rows: list[tuple[str, Target, dict[str, Any]]]
    ) -> dict[str, list[dict[str, Any]]]:
        """Run every (key, target, wrk kwargs) once per round, interleaved."""
        out: dict[str, list[dict[str, Any]]] = {}
        for _ in range(self.rounds):
            for key, t, kw in rows:
                out.setdefault(key, []).append(self.wrk(t, **kw))
        return out

    # ---- sections ------------------------------------------------------------------------------

    def run(self) -> None:
        if not Path(WRK).exists():
            raise SystemExit("wrk is not installed (apt-get install wrk)")
        t0 = time.monotonic()
        self.results["meta"] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(),
            "load_before": load_average(),
            "quick": self.quick,
            "rounds": self.rounds,
            "duration": self.duration,
            "short": self.short,
            "backends": "nginx" if NGINX else "uvloop",
            "build": self.build(),
        }
        pa, pb = self.start_backends()
        self.pa, self.pb = pa, pb
        steps: dict[str, Callable[[], None]] = {
            "latency": self.s_latency,
            "bodies": self.s_bodies,
            "learning": self.s_learning,
            "routes": self.s_routes,
            "memory": self.s_memory,
            "workers": self.s_workers,
        }
        for name in self.sections:
            s0 = time.monotonic()
            print(f"[{name}] load average {load_average()}", file=sys.stderr, flush=True)
            try:
                steps[name]()
            except Failed as e:
                self.results[name] = {"skipped": str(e)}
                print(f"[{name}] skipped: {e}", file=sys.stderr)
            print(f"[{name}] {time.monotonic() - s0:.0f} s", file=sys.stderr, flush=True)
        self.results["meta"]["load_after"] = load_average()
        self.results["meta"]["seconds"] = round(time.monotonic() - t0)
        self.results["meta"]["startup"] = self.startup

    def build(self) -> str:
        cli = self.cli or Path(sys.executable).parent / "modelrouter"
        py = cli.parent / "python"
        if not py.exists():
            return "unknown"
        probe = (
            "import importlib.util as u; s = u.find_spec('router.dataplane.exchange');"
            "print('compiled' if s and s.origin and not s.origin.endswith('.py') else 'pure')"
        )
        r = subprocess.run(
            [str(py), "-c", probe], capture_output=True, text=True, timeout=30, cwd=self.tmp
        )
        return r.stdout.strip() or "unknown"

    def plain_targets(self) -> list[Target]:
        if not hasattr(self, "_plain"):
            ts = [Target("direct", self.pa, None)]
            ng = self.start_nginx_proxy(self.pa, self.pb)
            if ng is not None:
                ts.append(ng)
            ts.append(self.start_modelrouter("modelrouter", self.pa, self.pb, WEIGHTED_ALL))
            self.warm(ts)
            self._plain = ts
        return self._plain

    def s_latency(self) -> None:
        ts = self.plain_targets()
        rows = [(f"{t.name}|{c}", t, {"conns": c}) for c in self.conns for t in ts]
        self.results["latency"] = {"conns": self.conns, "rows": self.rounds_of(rows)}

    def s_bodies(self) -> None:
        if not NGINX:
            raise Failed("nginx is not installed (the body rows need nginx backends)")
        ts = self.plain_targets()
        rows = []
        for label, n in SIZES:
            script = self.lua(f"post{n}", LUA_POST.format(n=n))
            for t in ts:
                kw = {"conns": 32, "path": "/up/x", "script": script, "duration": self.short}
                rows.append((f"POST {label}|{t.name}", t, {**kw, "payload": n}))
        for label, n in SIZES:
            path = "/r/" + label.replace(" KB", "k").replace(" MB", "m")
            for t in ts:
                kw = {"conns": 32, "path": path, "duration": self.short, "payload": n}
                rows.append((f"GET {label}|{t.name}", t, kw))
        self.results["bodies"] = {"conns": 32, "rows": self.rounds_of(rows)}

    def mixed(self) -> Target:
        if not hasattr(self, "_mixed"):
            self._mixed = self.start_modelrouter("learning", self.pa, self.pb, LEARNING_ROUTES)
        return self._mixed

    def s_learning(self) -> None:
        t = self.mixed()
        script = self.lua("json", LUA_JSON.format())
        self.warm([t])
        rows = [
            (name, t, {"conns": 32, "path": path, "script": script, "duration": self.short})
            for name, path in (
                ("weighted", "/v1/models/w:predict"),
                ("bandit", "/v1/models/bandit:predict"),
                ("bandit + decision log", "/v1/models/logged:predict"),
                ("contextual", "/v1/models/ctx:predict"),
            )
        ]
        self.results["learning"] = {"conns": 32, "rows": self.rounds_of(rows)}

    def s_routes(self) -> None:
        one, hundred, thousand = (
            self.ready(launched)
            for launched in [
                self.launch_modelrouter(f"routes-{n}", self.pa, self.pb, many_routes(n))
                for n in (1, 100, 1000)
            ]
        )
        self.warm([one, hundred, thousand])
        rows = [
            (name, t, {"conns": 32, "path": f"/v1/models/m{i:04d}:predict", "duration": self.short})
            for name, t, i in (
                ("1 route", one, 0),
                ("100 routes, middle", hundred, 50),
                ("100 routes, last", hundred, 99),
                ("1000 routes, middle", thousand, 500),
                ("1000 routes, last", thousand, 999),
            )
        ]
        self.results["routes"] = {"conns": 32, "rows": self.rounds_of(rows)}
        for t in (one, hundred, thousand):
            self.stop(next(p for p in self.procs if p.pid == t.pid))

    def idle_conns(self, t: Target, n: int) -> dict[str, Any]:
        pids = t.pids()
        before = rss_mb(pids)
        client = subprocess.Popen(
            [sys.executable, "-c", IDLE_CLIENT, str(t.port), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert client.stdout is not None and client.stdin is not None
            line = client.stdout.readline().decode().strip()
            opened = int(line) if line.isdigit() else 0
            time.sleep(0.5)
            held = rss_mb(pids)
            client.stdin.write(b"\n")
            client.stdin.flush()
            client.wait(30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(5)
        per = (held - before) / opened * 10_000 if opened else float("nan")
        return {"before": before, "held": held, "opened": opened, "per_10k": per}

    def s_memory(self) -> None:
        ts = [t for t in self.plain_targets() if t.pid]
        n = 2000 if self.quick else 10_000
        idle = {}
        for t in ts:
            idle[t.name] = self.idle_conns(t, n)
            print(f"[memory] {t.name}: {idle[t.name]}", file=sys.stderr)
        m = self.mixed()
        start = rss_mb(m.pids())
        total = HOUR_REQUESTS // 10 if self.quick else HOUR_REQUESTS
        script = self.lua("mixed", LUA_MIXED.format())
        chunks: list[dict[str, Any]] = []
        done = 0
        # wrk runs for its duration whatever the script does: run chunks until `total` answers,
        # at most 12 of them
        chunk_s = 3 if self.quick else 10
        while done < total and len(chunks) < 12:
            r = self.wrk(m, 32, path="/", script=script, duration=chunk_s)
            done += r["requests"]
            chunks.append({"rss": rss_mb(m.pids()), "requests": done, "rps": r["rps"]})
            print(
                f"[memory] {done} mixed requests, RSS {chunks[-1]['rss']:.1f} MB", file=sys.stderr
            )
        self.results["memory"] = {
            "idle_rss": {t.name: idle[t.name]["before"] for t in ts},
            "idle_conns": idle,
            "conns": n,
            "mixed_start": start,
            "mixed": chunks,
            "mixed_total": total,
        }

    def s_workers(self) -> None:
        cli = self.cli or Path(sys.executable).parent / "modelrouter"
        help_text = ""
        if cli.exists():
            help_text = subprocess.run(
                [str(cli), "serve", "--help"], capture_output=True, text=True, timeout=30
            ).stdout
        ts: list[Target] = []
        skipped = None
        if "--workers" not in help_text:
            skipped = "skipped: --workers not available"
        else:
            try:
                ts.append(
                    self.start_modelrouter("modelrouter w2", self.pa, self.pb, WEIGHTED_ALL, 2)
                )
            except Failed as e:
                why = str(e) if len(str(e)) <= 160 else str(e)[:160] + "…"
                skipped = f"skipped: --workers not available ({why})"
        if skipped:
            print(f"[workers] {skipped}", file=sys.stderr)
        w1 = [t for t in self.plain_targets() if t.pid]
        ng2 = self.start_nginx_proxy(self.pa, self.pb, workers=2)
        all_ts = [*w1, *([ng2] if ng2 else []), *ts]
        self.warm(all_ts)
        rows = [(t.name, t, {"conns": 128, "pin": True}) for t in all_ts]
        self.results["workers"] = {
            "conns": 128,
            "pinned": bool(TASKSET),
            "rows": self.rounds_of(rows),
            "skipped": skipped,
        }

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- report ----------------------------------------------------------------------------------


def med(runs: list[dict[str, Any]], k: str) -> float:
    vals = [r[k] for r in runs if r.get(k) is not None]
    return statistics.median(vals) if vals else float("nan")


def spread(runs: list[dict[str, Any]]) -> float:
    rps = [r["rps"] for r in runs]
    m = statistics.median(rps)
    return (max(rps) - min(rps)) / m * 100 if m and len(rps) > 1 else float("nan")


def f(v: float, fmt: str = ".1f") -> str:
    return "–" if v != v else format(v, fmt)


def errs(runs: list[dict[str, Any]]) -> int:
    """Non-2xx answers and socket errors over all rounds."""
    return sum(int(r["bad"] + r["sockerr"]) for r in runs)


def per_proc(runs: list[dict[str, Any]]) -> str:
    procs = [r["per_proc_us"] for r in runs if r["per_proc_us"]]
    if not procs or len(procs[0]) < 2:
        return ""
    n = min(len(p) for p in procs)
    return " (" + " + ".join(f(statistics.median(p[i] for p in procs)) for i in range(n)) + ")"


def render(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = [
        f"Measured {meta['date']} by `bench/proxy.py{' --quick' if meta['quick'] else ''}`"
        f" on {meta['cores']} cores, load average {meta['load_before']} before and "
        f"{meta.get('load_after', '?')} after ({meta.get('seconds', '?')} s); data plane "
        f"{meta['build']}, backends {meta['backends']}; medians of {meta['rounds']} interleaved "
        f"round(s) of {meta['duration']} s (body, learning and route rows: {meta['short']} s).",
        "",
    ]
    lat = res.get("latency")
    if lat and "rows" in lat:
        rows = lat["rows"]
        names = list(dict.fromkeys(k.split("|")[0] for k in rows))
        lines += [
            "| c | setup | RPS | spread % | p50 ms | p99 ms | max ms | CPU µs/req | of it sys |"
            " errors |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in lat["conns"]:
            for n in names:
                r = rows[f"{n}|{c}"]
                lines.append(
                    f"| {c} | {n} | {med(r, 'rps'):.0f} | {f(spread(r), '.0f')} | "
                    f"{med(r, 'p50'):.2f} | {med(r, 'p99'):.2f} | {med(r, 'max'):.1f} | "
                    f"{f(med(r, 'cpu_us'))} | {f(med(r, 'sys_us'))} | "
                    f"{errs(r)} |"
                )
        if "nginx" in names:
            lines += [
                "",
                "| c | RPS vs nginx | CPU/req vs nginx | p99 vs nginx | spread (nginx / ours) |",
                "|---|---|---|---|---|",
            ]
            for c in lat["conns"]:
                ng, mr = rows[f"nginx|{c}"], rows[f"modelrouter|{c}"]
                lines.append(
                    f"| {c} | {med(mr, 'rps') / med(ng, 'rps'):.2f} | "
                    f"{med(mr, 'cpu_us') / med(ng, 'cpu_us'):.2f}× | "
                    f"{med(mr, 'p99') / med(ng, 'p99'):.2f}× | "
                    f"{f(spread(ng), '.0f')}% / {f(spread(mr), '.0f')}% |"
                )
        cs = lat["conns"]
        if len(cs) > 1:
            lo, hi = rows[f"modelrouter|{cs[0]}"], rows[f"modelrouter|{cs[-1]}"]
            lines += [
                "",
                f"modelrouter CPU per request at c={cs[-1]} vs c={cs[0]}: "
                f"{med(hi, 'cpu_us') / med(lo, 'cpu_us'):.2f}×.",
            ]
        lines.append("")
    elif lat:
        lines += [f"latency: skipped: {lat['skipped']}", ""]
    bod = res.get("bodies")
    if bod and "rows" in bod:
        rows = bod["rows"]
        kinds = list(dict.fromkeys(k.split("|")[0] for k in rows))
        names = list(dict.fromkeys(k.split("|")[1] for k in rows))
        head = " | ".join(f"{n} RPS | {n} MB/s" for n in names)
        lines += [
            f"Bodies (c={bod['conns']}; MB/s counts the payload):",
            "",
            f"| request | {head} | ours / nginx | CPU µs/req (nginx / ours) |",
            "|---|" + "---|---|" * len(names) + "---|---|",
        ]
        for k in kinds:
            cells = " | ".join(
                f"{med(rows[f'{k}|{n}'], 'rps'):.0f} | {med(rows[f'{k}|{n}'], 'mbps'):.1f}"
                for n in names
            )
            ratio = cpu = "–"
            if "nginx" in names:
                ng, mr = rows[f"{k}|nginx"], rows[f"{k}|modelrouter"]
                ratio = f"{med(mr, 'rps') / med(ng, 'rps'):.2f}"
                cpu = f"{f(med(ng, 'cpu_us'))} / {f(med(mr, 'cpu_us'))}"
            lines.append(f"| {k} | {cells} | {ratio} | {cpu} |")
        lines.append("")
    elif bod:
        lines += [f"bodies: skipped: {bod['skipped']}", ""]
    lrn = res.get("learning")
    if lrn and "rows" in lrn:
        rows = lrn["rows"]
        base = med(rows["weighted"], "cpu_us")
        lines += [
            f"Learning routes (the same ~100-byte JSON POST, c={lrn['conns']}):",
            "",
            "| route | RPS | p99 ms | CPU µs/req | added vs weighted | errors |",
            "|---|---|---|---|---|---|",
        ]
        for k, r in rows.items():
            added = "–" if k == "weighted" else f"{med(r, 'cpu_us') - base:+.1f} µs"
            lines.append(
                f"| {k} | {med(r, 'rps'):.0f} | {med(r, 'p99'):.2f} | {f(med(r, 'cpu_us'))} | "
                f"{added} | {errs(r)} |"
            )
        lines.append("")
    rts = res.get("routes")
    if rts and "rows" in rts:
        rows = rts["rows"]
        b_rps, b_cpu = med(rows["1 route"], "rps"), med(rows["1 route"], "cpu_us")
        lines += [
            f"Route count (c={rts['conns']}):",
            "",
            "| routes | RPS | CPU µs/req | RPS vs 1 route | CPU vs 1 route | errors |",
            "|---|---|---|---|---|---|",
        ]
        for k, r in rows.items():
            lines.append(
                f"| {k} | {med(r, 'rps'):.0f} | {f(med(r, 'cpu_us'))} | "
                f"{med(r, 'rps') / b_rps:.2f} | {med(r, 'cpu_us') / b_cpu:.2f} | {errs(r)} |"
            )
        up = meta.get("startup", {})
        if "routes-1000" in up:
            lines += [
                "",
                f"Startup until listening: {up.get('routes-1', '?')} s with 1 route, "
                f"{up.get('routes-100', '?')} s with 100, {up['routes-1000']} s with 1,000.",
            ]
        lines.append("")
    mem = res.get("memory")
    if mem and "mixed" in mem:
        idle = mem["idle_conns"]
        q = mem["mixed"]
        lines += [
            "Memory (RSS, MB):",
            "",
            f"| setup | idle | holding {mem['conns']} idle keep-alive connections | "
            "per 10,000 connections |",
            "|---|---|---|---|",
        ]
        for n, v in idle.items():
            lines.append(
                f"| {n} | {v['before']:.1f} | {v['held']:.1f} ({v['opened']} opened) | "
                f"{f(v['per_10k'])} |"
            )
        reqs = q[-1]["requests"]
        lines += [
            "",
            f"Mixed traffic on the learning config ({reqs} requests ="
            f" {reqs / HOUR_REQUESTS:.2g} hour-equivalent at 100 requests/s, in {len(q)} runs"
            f" of wrk; weighted, bandit and contextual routes, rewards for half the decision"
            f" tokens, forged tokens, 404s, 64 KB bodies both ways, closed connections): RSS"
            f" {mem['mixed_start']:.1f} MB before, then "
            + ", ".join(f"{x['rss']:.1f}" for x in q)
            + f" MB after each run (from the first run to the last: "
            f"{q[-1]['rss'] - q[0]['rss']:+.1f} MB; the state store keeps every accepted"
            " reward for twice feedback.ttl, so some growth within an hour is by design).",
            "",
        ]
    wk = res.get("workers")
    if wk and "rows" in wk:
        rows = wk["rows"]
        lines += [
            f"Workers (c={wk['conns']}, wrk pinned to the last CPU"
            f"{'' if wk['pinned'] else ' — taskset missing, not pinned'}):",
            "",
            "| setup | RPS | p99 ms | CPU µs/req (per process) |",
            "|---|---|---|---|",
        ]
        for k, r in rows.items():
            lines.append(
                f"| {k} | {med(r, 'rps'):.0f} | {med(r, 'p99'):.2f} | "
                f"{f(med(r, 'cpu_us'))}{per_proc(r)} |"
            )
        notes = []
        if "nginx w2" in rows and "nginx" in rows:
            notes.append(
                "nginx 1 → 2 workers: "
                f"{med(rows['nginx w2'], 'rps') / med(rows['nginx'], 'rps'):.2f}×"
            )
        if "modelrouter w2" in rows:
            notes.append(
                "modelrouter 1 → 2 workers: "
                f"{med(rows['modelrouter w2'], 'rps') / med(rows['modelrouter'], 'rps'):.2f}×"
            )
            if "nginx w2" in rows:
                notes.append(
                    "modelrouter / nginx at 2 workers: "
                    f"{med(rows['modelrouter w2'], 'rps') / med(rows['nginx w2'], 'rps'):.2f}"
                )
        if "nginx" in rows and "modelrouter" in rows:
            notes.append(
                f"at 1 worker: {med(rows['modelrouter'], 'rps') / med(rows['nginx'], 'rps'):.2f}"
            )
        if wk.get("skipped"):
            # a process's message may hold Markdown (a stray backtick would open code)
            notes.append(f"modelrouter --workers 2 {wk['skipped'].replace('`', chr(39))}")
        lines += ["", "; ".join(notes) + ".", ""]
    for name in ("learning", "routes", "memory"):
        s = res.get(name)
        if s and "skipped" in s:
            lines += [f"{name}: skipped: {s['skipped']}", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_readme(text: str) -> None:
    doc = README.read_text(encoding="utf-8")
    start, end = doc.find(START), doc.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"README.md lacks the {START} ... {END} markers")
    README.write_text(doc[: start + len(START)] + "\n" + text + doc[end:], encoding="utf-8")
    print(f"README.md performance block rewritten from {OUT.relative_to(ROOT)}", file=sys.stderr)


def _find(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    if m is None:
        raise SystemExit(f"unexpected wrk output (no {pattern!r}):\n{text[-1500:]}")
    return m.group(1)


def _ms(s: str) -> float:
    m = re.match(r"([\d.]+)(\w+)", s)
    assert m is not None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def _bytes(s: str) -> float:
    m = re.match(r"([\d.]+)(\w+)", s)
    assert m is not None
    return float(m.group(1)) * {"B": 1, "KB": 1024, "MB": 1 << 20, "GB": 1 << 30}[m.group(2)]


def _conns(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--conns wants numbers like 32,128,512, not {s!r}"
        ) from None
    if not out or min(out) < 1 or max(out) > 10_000:
        raise argparse.ArgumentTypeError(f"--conns: each between 1 and 10000, got {s!r}")
    return out


def _sections(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in SECTIONS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"--only: unknown {bad}; choose from {','.join(SECTIONS)}")
    return [x for x in SECTIONS if x in out]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1 round of short runs (under 2 minutes)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument(
        "--conns", type=_conns, default=[32, 128, 512], help="concurrencies (default 32,128,512)"
    )
    ap.add_argument(
        "--only", type=_sections, default=list(SECTIONS), help=f"sections ({','.join(SECTIONS)})"
    )
    ap.add_argument("--modelrouter", help="the modelrouter command to run (default: this venv's)")
    ap.add_argument("--readme", action="store_true", help="rewrite README.md's block afterwards")
    ap.add_argument(
        "--readme-only", action="store_true", help=f"rewrite README.md's block from {OUT.name}"
    )
    a = ap.parse_args()
    if a.readme_only:
        write_readme(render(json.loads(OUT.read_text())))
        return
    if a.rounds < 1 or a.duration < 1 or a.duration > 60:
        ap.error("--rounds must be >= 1 and --duration between 1 and 60")
    # stopped (timeout, Ctrl-C): still stop what was started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = Bench(a)
    try:
        b.run()
    finally:
        b.close()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(b.results, indent=1))
    print(render(b.results))
    if a.readme:
        write_readme(render(b.results))


if __name__ == "__main__":
    main()
