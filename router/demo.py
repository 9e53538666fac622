"""`modelrouter demo`: toy model servers, the real router and a synthetic client, with a live view.

Only the model servers and the client are make-believe; routing, policies, rollout analysis and
the feedback endpoint are the same code `modelrouter serve` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import aiohttp
from aiohttp import web

__all__ = ["CLIMATES", "TRUE_MEANS", "DemoOptions", "build_config_text", "demo_main", "run_demo"]

log = logging.getLogger("modelrouter.demo")

# The course's clothing recommender, with the SPEC §4 table scaled up so that learning shows
# within a minute instead of after tens of thousands of requests.
CLIMATES: dict[str, float] = {"hot": 0.4, "cold": 0.4, "mild": 0.2}
TRUE_MEANS: dict[str, dict[str, float]] = {
    "hot": {"summer_model": 0.60, "winter_model": 0.10, "allround_model": 0.35},
    "cold": {"summer_model": 0.10, "winter_model": 0.55, "allround_model": 0.35},
    "mild": {"summer_model": 0.30, "winter_model": 0.25, "allround_model": 0.45},
}
RECOMMENDERS: tuple[str, ...] = ("summer_model", "winter_model", "allround_model")
ITEMS = {
    "summer_model": "linen shirt",
    "winter_model": "wool coat",
    "allround_model": "denim jacket",
}
CANARY_STEPS: tuple[int, ...] = (10, 25, 50, 100)
BAD_CANARY_ERROR_RATE = 0.3

ADMIN_TOKEN_ENV = "MODELROUTER_ADMIN_TOKEN"
FEEDBACK_SECRET_ENV = "MODELROUTER_DEMO_FEEDBACK_SECRET"

RATE = 120.0  # requests per second the synthetic client sends, both routes together
CONCURRENCY = 8
FEEDBACK_FLUSH = 0.2  # seconds between feedback batches
ROUTING_WINDOW = 100  # recent requests per climate used to tell where the bandit sends it


class DemoArgs(Protocol):
    duration: float | None
    bad_canary: bool
    port: int | None
    admin_port: int | None


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What `modelrouter demo` was asked for."""

    duration: float | None = None
    bad_canary: bool = False
    port: int | None = None
    admin_port: int | None = None
    rate: float = RATE
    seed: int | None = None


# ---- toy model servers ------------------------------------------------------------------------


def _recommender_app(name: str, rng: random.Random) -> web.Application:
    """A clothing recommender; its shopper converts with the table's probability for her climate."""

    async def predict(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response({"model": name, "state": "AVAILABLE"})
        await request.read()
        climate = request.headers.get("x-climate", "mild")
        p = TRUE_MEANS.get(climate, TRUE_MEANS["mild"])[name]
        return web.json_response(
            {"model": name, "recommendation": ITEMS[name], "converted": rng.random() < p}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", predict)
    return app


def _classifier_app(version: str, error_rate: float, rng: random.Random) -> web.Application:
    """A TF-Serving-shaped classifier; a bad version fails `error_rate` of its predictions."""

    async def handle(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response(
                {"model_version_status": [{"version": version, "state": "AVAILABLE"}]}
            )
        await request.read()
        if error_rate and rng.random() < error_rate:
            return web.json_response({"error": f"classifier {version}: out of memory"}, status=500)
        return web.json_response({"predictions": [[0.1, 0.9]], "model_version": version})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class ToyServers:
    """The in-process model servers, each on its own free loopback port."""

    def __init__(self, bad_canary: bool, rng: random.Random) -> None:
        self.apps: dict[str, web.Application] = {
            name: _recommender_app(name, rng) for name in RECOMMENDERS
        }
        self.apps["classifier_v1"] = _classifier_app("1", 0.0, rng)
        self.apps["classifier_v2"] = _classifier_app(
            "2", BAD_CANARY_ERROR_RATE if bad_canary else 0.0, rng
        )
        self.urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        for name, app in self.apps.items():
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            self._runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()


def build_config_text(
    urls: Mapping[str, str], port: int, admin_port: int, canary_interval: str = "4s"
) -> str:
    """The demo's router config: a contextual bandit and a canary, as a user would write it."""
    backends = "\n".join(
        f"  {name}: {{url: {urls[name]}, version: 1.0.0, timeout: 2s}}" for name in RECOMMENDERS
    )
    return f"""\
version: 1
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin_port}, token_env: {ADMIN_TOKEN_ENV}}}
state: {{store: memory}}
feedback: {{secret_env: {FEEDBACK_SECRET_ENV}, ttl: 10m}}

backends:
{backends}
  classifier_v1:
    url: {urls["classifier_v1"]}
    version: 1.0.0
    timeout: 2s
    health: {{path: /v1/models/classifier, interval: 2s}}
  classifier_v2:
    url: {urls["classifier_v2"]}
    version: 1.1.0
    timeout: 2s
    health: {{path: /v1/models/classifier, interval: 2s}}

routes:
  - name: recommend
    match: {{path_prefix: /recommend, methods: [POST]}}
    policy:
      kind: contextual_bandit
      arms: [{", ".join(RECOMMENDERS)}]
      algorithm: linucb
      params: {{alpha: 1.0}}
      features:
        - {{name: climate, from: "header:x-climate", type: categorical, values: [hot, cold, mild]}}
      reward: {{type: binary}}

  - name: classifier
    match: {{path_prefix: /v1/models/classifier}}
    sticky: {{key: "header:x-user-id"}}
    policy:
      kind: canary
      stable: classifier_v1
      candidate: classifier_v2
      steps: [{", ".join(str(s) for s in CANARY_STEPS)}]
      interval: {canary_interval}
      validate:
        requests:
          - {{method: GET, path: /v1/models/classifier, expect_status: 200}}
      analysis:
        min_requests: 10
        failure_limit: 2
        checks:
          - {{metric: error_rate, max: 0.05}}
"""


# ---- the synthetic client ---------------------------------------------------------------------


def _best(climate: str) -> str:
    means = TRUE_MEANS[climate]
    return max(means, key=means.__getitem__)


@dataclass
class Tally:
    """What the client saw; true and uniform-random regret come from the known toy means."""

    requests: int = 0
    errors: int = 0  # transport errors and 5xx seen by the client
    by_route: Counter[str] = field(default_factory=Counter)
    by_backend: Counter[tuple[str, str]] = field(default_factory=Counter)
    status: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    conversions: Counter[str] = field(default_factory=Counter)
    feedback_sent: int = 0
    feedback_accepted: int = 0
    true_regret: float = 0.0
    uniform_regret: float = 0.0
    recent: dict[str, deque[str]] = field(
        default_factory=lambda: {c: deque(maxlen=ROUTING_WINDOW) for c in CLIMATES}
    )

    def routed_to(self, climate: str) -> str | None:
        """The backend that served most of the climate's recent requests."""
        seen = Counter(self.recent[climate])
        return seen.most_common(1)[0][0] if seen else None


class Pacer:
    """Spaces requests to a steady rate shared by every worker."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(self.next, now)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Client:
    """Sends prediction requests with random climates and users, and posts the rewards."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, rng: random.Random, tally: Tally
    ) -> None:
        self.session = session
        self.base = base
        self.rng = rng
        self.tally = tally
        self.pending: list[dict[str, Any]] = []
        self._climates = list(CLIMATES)
        self._weights = list(CLIMATES.values())
        self._uniform_loss = {
            c: max(m.values()) - sum(m.values()) / len(m) for c, m in TRUE_MEANS.items()
        }

    async def recommend(self) -> None:
        t = self.tally
        climate = self.rng.choices(self._climates, self._weights)[0]
        user = f"shopper-{self.rng.randrange(100_000)}"
        async with self.session.post(
            self.base + "/recommend",
            json={"user": user, "page": "home"},
            headers={"x-climate": climate, "x-user-id": user},
        ) as resp:
            body = await resp.json(content_type=None) if resp.status == 200 else {}
            backend = resp.headers.get("x-modelrouter-backend", "?")
            token = resp.headers.get("x-modelrouter-decision")
        t.by_route["recommend"] += 1
        t.status[("recommend", backend, resp.status)] += 1
        if resp.status != 200 or backend not in RECOMMENDERS:
            t.errors += 1
            return
        t.by_backend[("recommend", backend)] += 1
        t.recent[climate].append(backend)
        t.true_regret += TRUE_MEANS[climate][_best(climate)] - TRUE_MEANS[climate][backend]
        t.uniform_regret += self._uniform_loss[climate]
        converted = bool(body.get("converted")) if isinstance(body, dict) else False
        if converted:
            t.conversions[backend] += 1
        if token:
            self.pending.append({"decision": token, "reward": 1.0 if converted else 0.0})

    async def classify(self) -> None:
        t = self.tally
        async with self.session.post(
            self.base + "/v1/models/classifier:predict",
            json={"instances": [[1.0, 2.0, 5.0]]},
            headers={"x-user-id": f"user-{self.rng.randrange(5_000)}"},
        ) as resp:
            await resp.read()
            backend = resp.headers.get("x-modelrouter-backend", "?")
        t.by_route["classifier"] += 1
        t.by_backend[("classifier", backend)] += 1
        t.status[("classifier", backend, resp.status)] += 1
        if resp.status >= 500:
            t.errors += 1

    async def worker(self, pacer: Pacer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pacer.wait()
            if stop.is_set():
                return
            self.tally.requests += 1
            try:
                if self.rng.random() < 0.5:
                    await self.recommend()
                else:
                    await self.classify()
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                self.tally.errors += 1
                log.debug("client request failed: %s", e)

    async def flush_feedback(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending[:200], self.pending[200:]
        self.tally.feedback_sent += len(batch)
        try:
            async with self.session.post(
                self.base + "/_modelrouter/feedback", json={"feedback": batch}
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 202 and isinstance(body, dict):
                    self.tally.feedback_accepted += int(body.get("accepted", 0))
                else:
                    log.warning("feedback answered %d: %s", resp.status, body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("feedback post failed: %s", e)

    async def feedback_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FEEDBACK_FLUSH)
            await self.flush_feedback()


# ---- the terminal view ------------------------------------------------------------------------


def _num(v: object, fmt: str = "{:.3f}") -> str:
    return fmt.format(v) if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _pct(v: object) -> str:
    return f"{100 * v:5.1f}%" if isinstance(v, int | float) else "    -"


def _routes(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    routes = data.get("routes")
    if not isinstance(routes, list):
        return {}
    return {str(r.get("route")): r for r in routes if isinstance(r, dict)}


def _canary_line(st: Mapping[str, Any]) -> str:
    phase = st.get("phase", "?")
    step = st.get("step")
    shares = st.get("shares") or {}
    cand = shares.get("classifier_v2")
    where = ""
    if isinstance(step, int) and phase not in ("promoted", "rolled_back"):
        pct = CANARY_STEPS[step] if 0 <= step < len(CANARY_STEPS) else "?"
        where = f" step {step} ({pct}%)"
    return f"{phase}{where}, classifier_v2 gets {_pct(cand).strip()}"


def render_view(
    data: Mapping[str, Any],
    tally: Tally,
    elapsed: float,
    opts: DemoOptions,
    dashboard: str,
    tip: str = "",
) -> list[str]:
    """The live view as lines: traffic shares, reward per arm, regret, rollout phase and step."""
    routes = _routes(data)
    rate = tally.requests / elapsed if elapsed > 0 else 0.0
    until = f" of {opts.duration:.0f} s" if opts.duration else " (Ctrl-C to stop)"
    lines = [
        f"modelrouter demo   {elapsed:5.1f} s{until}   dashboard: {dashboard}",
        f"requests {tally.requests} ({rate:.0f}/s)   client errors {tally.errors}   "
        f"rewards posted {tally.feedback_sent}, accepted {tally.feedback_accepted}",
    ]
    if tip:
        lines.append(tip)
    lines.append("")
    rec = routes.get("recommend", {})
    lines.append(f"recommend  contextual bandit (linucb) on x-climate   {rec.get('phase', '-')}")
    lines.append(
        f"  {'arm':<16}{'share':>7}{'decisions':>11}{'rewards':>9}{'reward mean':>13}"
        f"{'true hot/cold/mild':>22}"
    )
    shares = rec.get("shares") or {}
    arms = rec.get("arms") or {}
    for arm in RECOMMENDERS:
        a = arms.get(arm) or {}
        truth = "/".join(f"{TRUE_MEANS[c][arm]:.2f}" for c in CLIMATES)
        lines.append(
            f"  {arm:<16}{_pct(shares.get(arm)):>7}{_num(a.get('decisions'), '{:d}'):>11}"
            f"{_num(a.get('rewards'), '{:d}'):>9}{_num(a.get('reward_mean')):>13}{truth:>22}"
        )
    saved = 1 - tally.true_regret / tally.uniform_regret if tally.uniform_regret else 0.0
    lines.append(
        f"  regret: router's estimate {_num(rec.get('regret'), '{:.1f}')}   "
        f"true {tally.true_regret:.1f}   uniform random routing would have lost "
        f"{tally.uniform_regret:.1f}  ({100 * saved:.0f}% saved)"
    )
    routed = "   ".join(
        f"{c} -> {tally.routed_to(c) or '-'}{' ok' if tally.routed_to(c) == _best(c) else ''}"
        for c in CLIMATES
    )
    lines.append(f"  now routing (last {ROUTING_WINDOW} per climate): {routed}")
    lines.append("")
    clf = routes.get("classifier", {})
    lines.append(f"classifier  canary v1 -> v2   {_canary_line(clf)}")
    lines.append(f"  {'arm':<16}{'share':>7}{'requests':>10}{'5xx':>6}")
    for arm in ("classifier_v1", "classifier_v2"):
        n = tally.by_backend[("classifier", arm)]
        bad = sum(
            v
            for (r, b, s), v in tally.status.items()
            if r == "classifier" and b == arm and s >= 500
        )
        lines.append(f"  {arm:<16}{_pct((clf.get('shares') or {}).get(arm)):>7}{n:>10}{bad:>6}")
    reason = clf.get("reason")
    if reason:
        lines.append(f"  {str(reason)[:110]}")
    audit = data.get("audit")
    if isinstance(audit, list) and audit:
        lines += ["", "recent transitions:"]
        for e in audit[-5:]:
            lines.append("  " + _audit_line(e))
    return lines


def _audit_line(e: Mapping[str, Any]) -> str:
    ts = e.get("ts")
    when = time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "--"
    move = f" {e.get('from')} -> {e.get('to')}" if "to" in e else ""
    step = f" step {e['step']}" if isinstance(e.get("step"), int) else ""
    why = e.get("reason") or e.get("transition") or ""
    return f"{when} {e.get('route', '')}: {e.get('action', '')}{move}{step}  {why}"[:140]


def one_line(data: Mapping[str, Any], tally: Tally, elapsed: float) -> str:
    """The view squeezed into one line, for logs and pipes."""
    routes = _routes(data)
    rec = routes.get("recommend", {})
    shares = rec.get("shares") or {}
    share = " ".join(f"{a.split('_')[0]} {_pct(shares.get(a)).strip()}" for a in RECOMMENDERS)
    return (
        f"[{elapsed:5.1f}s] recommend: {share}; regret est {_num(rec.get('regret'), '{:.1f}')} "
        f"true {tally.true_regret:.1f} uniform {tally.uniform_regret:.1f} | "
        f"classifier: {_canary_line(routes.get('classifier', {}))}"
    )


def summary(data: Mapping[str, Any], tally: Tally, elapsed: float) -> list[str]:
    """The final summary; its key lines are stable so scripts and tests can read them."""
    routes = _routes(data)
    lines = [
        f"modelrouter demo summary after {elapsed:.1f} s",
        f"  requests {tally.requests}, client errors {tally.errors}, rewards accepted "
        f"{tally.feedback_accepted} of {tally.feedback_sent}",
        "  recommend (contextual bandit, linucb):",
    ]
    matches = 0
    for c in CLIMATES:
        got = tally.routed_to(c)
        ok = got == _best(c)
        matches += ok
        lines.append(
            f"    {c:<5} best model {_best(c):<15} routed to {got or '-':<15} "
            f"{'match' if ok else 'not yet'}"
        )
    lines.append(f"  best arm per climate matches the truth: {matches}/{len(CLIMATES)}")
    est = routes.get("recommend", {}).get("regret")
    lines.append(
        f"  regret: true {tally.true_regret:.1f}, uniform random {tally.uniform_regret:.1f}, "
        f"router's estimate {_num(est, '{:.1f}')}"
    )
    clf = routes.get("classifier", {})
    lines.append(f"  classifier (canary): {_canary_line(clf)}")
    lines.append(f"  canary phase: {clf.get('phase', 'unknown')}")
    audit = data.get("audit")
    if isinstance(audit, list):
        for e in audit:
            if isinstance(e, dict) and e.get("route") == "classifier":
                lines.append("    " + _audit_line(e))
    return lines


# ---- orchestration ----------------------------------------------------------------------------


class _KeepRecent(logging.Handler):
    """Keeps the last warnings for the full-screen view instead of scribbling over it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=3)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}"[:140])


async def _fetch(session: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}  # /dashboard/data is an admin read
    limit = aiohttp.ClientTimeout(total=2)
    try:
        async with session.get(url, headers=headers, timeout=limit) as resp:
            body = await resp.json(content_type=None)
            return body if isinstance(body, dict) else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}


async def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run toy servers, router and client until `opts.duration` passes or SIGINT/SIGTERM."""
    from router.config import ConfigError, parse_config
    from router.server import Server

    rng = random.Random(opts.seed)
    tty = out.isatty()
    recent = _KeepRecent()
    root = logging.getLogger()
    if tty:
        root.handlers[:] = [recent]
    elif not root.handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    root.setLevel(logging.WARNING)

    # The demo's own secrets, in this process only: a token so that `modelrouter status/abort/...`
    # can be tried against the demo, and a feedback key (else the router warns it made one up).
    os.environ.setdefault(FEEDBACK_SECRET_ENV, secrets.token_hex(32))
    token = os.environ.get(ADMIN_TOKEN_ENV) or secrets.token_urlsafe(18)
    os.environ[ADMIN_TOKEN_ENV] = token

    toys = ToyServers(opts.bad_canary, rng)
    await toys.start()
    # Ports the user did not choose are picked by the OS when the listeners bind.
    text = build_config_text(toys.urls, opts.port or 8080, opts.admin_port or 9901)
    try:
        config = parse_config(text, "<demo>")
    except ConfigError as e:  # pragma: no cover - the embedded config is tested
        await toys.stop()
        print("modelrouter demo: embedded config is invalid:\n" + "\n".join(e.errors), file=out)
        return 1
    server = Server(config, None, proxy_port=opts.port or 0, admin_port=opts.admin_port or 0)
    try:
        await server.start()
    except OSError as e:
        await toys.stop()
        print(f"modelrouter demo: cannot start the router: {e}", file=out)
        return 1

    base = f"http://127.0.0.1:{server.proxy_port}"
    admin = f"http://127.0.0.1:{server.admin_port}"
    # the page reads the admin token from the fragment (never sent to the server)
    dashboard = f"{admin}/dashboard#token={token}"
    print(f"modelrouter demo: router on {base}, admin on {admin}", file=out, flush=True)
    print(f"dashboard: {dashboard}", file=out, flush=True)
    tip = f"try: {ADMIN_TOKEN_ENV}={token} modelrouter abort classifier --admin {admin}"
    print(tip, file=out, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    tally = Tally()
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    timeout = aiohttp.ClientTimeout(total=5)
    data: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, base, rng, tally)
        pacer = Pacer(opts.rate)
        tasks = [asyncio.create_task(client.worker(pacer, stop)) for _ in range(CONCURRENCY)]
        tasks.append(asyncio.create_task(client.feedback_loop(stop)))
        if tty:
            out.write("\x1b[?25l")  # hide the cursor while the view redraws
        try:
            while not stop.is_set():
                elapsed = time.monotonic() - started
                if opts.duration is not None and elapsed >= opts.duration:
                    break
                data = await _fetch(session, f"{admin}/dashboard/data", token) or data
                elapsed = time.monotonic() - started
                if tty:
                    lines = render_view(data, tally, elapsed, opts, dashboard, tip)
                    lines += ["", *recent.lines] if recent.lines else []
                    out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
                    out.flush()
                else:
                    print(one_line(data, tally, elapsed), file=out, flush=True)
                wait = 1.0
                if opts.duration is not None:
                    wait = min(wait, max(0.0, opts.duration - elapsed))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            stop.set()
            if tty:
                out.write("\x1b[?25h")
            await _settle(tasks)
            await client.flush_feedback()
            data = await _fetch(session, f"{admin}/dashboard/data", token) or data
    elapsed = time.monotonic() - started
    print("\n".join(summary(data, tally, elapsed)), file=out, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    await server.drain_and_stop(timeout=5.0)
    await toys.stop()
    return 0


async def _settle(tasks: list[asyncio.Task[None]], grace: float = 3.0) -> None:
    """Let the workers finish the request in hand, then cancel whatever is still waiting."""
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def demo_main(args: DemoArgs) -> int:
    """Entry point of `modelrouter demo`; returns the exit code."""
    opts = DemoOptions(
        duration=getattr(args, "duration", None),
        bad_canary=bool(getattr(args, "bad_canary", False)),
        port=getattr(args, "port", None),
        admin_port=getattr(args, "admin_port", None),
    )
    try:
        return _run(lambda: run_demo(opts))
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 130
