"""Shadow traffic: copy a share of a route's requests to a mirror backend and compare answers.

The mirrored call runs off the request path on the runtime's aiohttp session; its answer is
never returned to the client. Only requests whose body the proxy holds in full (up to
`MAX_MIRROR_BODY`) are mirrored, so mirroring never makes the proxy buffer a large body.
`Mirrorer` is the route's mirror (built by the runtime); the functions below are the exchange's
side: sample and remember the request (`start`), send the copy once the body is complete
(`send_copy`), collect the served answer (`capture_primary`, `resolve_primary`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import aiohttp

from policies.spec import BackendConfig, Mirror
from router.dataplane.upstream import rewrite_path

if TYPE_CHECKING:
    from router.dataplane.exchange import Exchange
    from router.metrics import Metrics

log = logging.getLogger("modelrouter.mirror")

MAX_MIRROR_BODY: Final = 64 * 1024
MAX_IN_FLIGHT: Final = 64  # beyond this, mirrored copies are dropped (result "dropped")
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})


class Mirrorer:
    """Sends copies of sampled requests to one mirror backend and counts how answers compare."""

    def __init__(
        self,
        route: str,
        spec: Mirror,
        backend: BackendConfig,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        rng_random: Callable[[], float],
    ) -> None:
        self.route = route
        self.backend = backend
        self._threshold = spec.percent / 100.0
        self._metrics = metrics
        self._session = session
        self._random = rng_random
        self._tasks: set[asyncio.Task[None]] = set()
        self._timeout = aiohttp.ClientTimeout(total=backend.timeout)

    def sample(self) -> bool:
        """Whether this request is mirrored (call once per request, before forwarding)."""
        return len(self._tasks) < MAX_IN_FLIGHT and self._random() < self._threshold

    def send(
        self,
        method: str,
        path_qs: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        primary: asyncio.Future[tuple[int, bytes | None]],
    ) -> None:
        """Start the mirrored call; `primary` resolves to the served (status, body or None)."""
        if len(body) > MAX_MIRROR_BODY:
            self._metrics.mirror(self.route, self.backend.name, "skipped")
            return
        task = asyncio.create_task(self._run(method, path_qs, headers, body, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        method: str,
        path_qs: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        primary: asyncio.Future[tuple[int, bytes | None]],
    ) -> None:
        b = self.backend
        url = f"http://{b.host}:{b.port}{b.base_path}{path_qs}"
        hdrs = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in headers
            if k.lower().decode("latin-1") not in _SKIP_HEADERS
        ]
        hdrs.append(("x-modelrouter-mirror", "1"))
        try:
            async with self._session.request(
                method,
                url,
                data=body,
                headers=hdrs,
                timeout=self._timeout,
                auto_decompress=False,
            ) as resp:
                shadow_body = await resp.read()
                shadow_status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.debug("mirror to %s failed: %s", b.name, e)
            self._metrics.mirror(self.route, b.name, "error")
            return
        try:
            status, served = await asyncio.wait_for(asyncio.shield(primary), b.timeout + 30)
        except (TimeoutError, asyncio.CancelledError):
            self._metrics.mirror(self.route, b.name, "error")
            return
        same = status == shadow_status and (served is None or served == shadow_body)
        self._metrics.mirror(self.route, b.name, "match" if same else "mismatch")

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ---- the exchange's side ----------------------------------------------------------------------


def start(ex: Exchange, mirror: Mirrorer, method: str, headers: list[tuple[bytes, bytes]]) -> None:
    """Decide whether this request of a mirrored route is copied; if so, remember it on `ex`."""
    try:
        if not mirror.sample():
            return
    except Exception:
        log.exception("route %r: mirror sampling failed", mirror.route)
        return
    rw = mirror.backend.rewrite
    target = ex.target
    if rw is not None:
        target = rewrite_path(rw.from_.encode("latin-1"), rw.to.encode("latin-1"), target)
    ex.primary = ex.loop.create_future()
    ex.mirror_body = []
    ex.mirror_req = (mirror, method, target.decode("latin-1"), headers)


def send_copy(ex: Exchange) -> None:
    """The request body is complete: send the copy, if the whole body was held."""
    assert ex.mirror_req is not None
    mirror, method, path_qs, headers = ex.mirror_req
    ex.mirror_req = None
    kept = ex.kept
    if kept is None:  # the body outgrew what is kept for retries: too big to mirror
        ex.proto.runtime.metrics.mirror(mirror.route, mirror.backend.name, "skipped")
        if ex.primary is not None:
            ex.primary.cancel()
            ex.primary = None
        return
    body = b"".join(kept[1::3] if ex.chunked_in else kept)
    assert ex.primary is not None
    try:
        mirror.send(method, path_qs, headers, body, ex.primary)
    except Exception:
        log.exception("route %r: mirroring failed", mirror.route)


def capture_primary(ex: Exchange, data: bytes) -> None:
    """A piece of the served body, kept for the comparison up to MAX_MIRROR_BODY."""
    body = ex.mirror_body
    if body is not None:
        ex.mirror_size += len(data)
        if ex.mirror_size <= MAX_MIRROR_BODY:
            body.append(data)
        else:
            ex.mirror_body = None  # too big to compare: the status only


def resolve_primary(ex: Exchange) -> None:
    """The served answer is complete: hand (status, body or None) to the mirrored call."""
    primary = ex.primary
    ex.primary = None
    if primary is not None and not primary.done():
        body = ex.mirror_body
        primary.set_result((ex.status, b"".join(body) if body is not None else None))
