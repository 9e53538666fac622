"""Decision tokens (HMAC-signed, URL-safe) and the `POST /_modelrouter/feedback` endpoint.

A token is `base64url(payload) "." base64url(mac)` where payload is a compact JSON array
`[1, route, arm, propensity, generation, issued_at, token_id, features|null, label|null]`, plus
the sticky bucket as a tenth element when the route has a sticky key (the A/B unit), and
mac is the first 16 bytes of HMAC-SHA256(secret, payload). Any replica holding the secret can
credit a decision; nobody without it can make one up.

Batch semantics (`{"feedback": [...]}`): every item is validated first and the whole batch is
refused with the first bad item's code if any is invalid (nothing stored). Valid items are then
stored in one durable write; items whose decision was already credited are skipped. The answer
is 202 `{"accepted": n, "duplicates": [indexes]}` when at least one item was new, 409 when all
were duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import json
import logging
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from policies.base import Context, reward_problem
from router.errors import ModelrouterError
from router.store.base import FeedbackRecord

if TYPE_CHECKING:
    from policies.spec import Config
    from router.engines.base import Engine
    from router.metrics import Metrics
    from router.store.base import Store

__all__ = [
    "SECRET_KEY",
    "FeedbackHandler",
    "TokenData",
    "TokenError",
    "TokenSigner",
    "load_secret",
]

log = logging.getLogger("modelrouter.feedback")

SECRET_KEY = "secret:feedback"
_MAC_BYTES = 16
_VERSION = 1
_MAX_BATCH = 10_000
DECIDER_CHARS = 12  # token ids start with the issuing process's random prefix (hex)


class TokenError(ModelrouterError):
    """A feedback item that cannot be credited: `status` is the HTTP answer, `reason` the
    `feedback_rejected_total` label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenData:
    """What a verified decision token says."""

    route: str
    arm: str
    propensity: float
    generation: int
    issued_at: float
    token_id: str
    features: tuple[float, ...] | None
    label: str | None
    bucket: int | None = None  # sticky bucket of the decision, when the route has a sticky key
    layout: str | None = None  # feature layout digest of a contextual decision
    clock: float | None = None  # the policy clock at the decision (discounted bandits)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and verifies decision tokens with one HMAC-SHA256 key."""

    __slots__ = ("_counter", "_mac", "_prefix")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the feedback secret must be at least 16 bytes")
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)
        # unique ids without a syscall per request: a random per-process prefix and a counter
        self._prefix = secrets.token_hex(DECIDER_CHARS // 2)
        self._counter = itertools.count(1)

    @property
    def prefix(self) -> str:
        """The first DECIDER_CHARS characters of every token id this signer issues: they name
        the process that made (and counted) the decision."""
        return self._prefix

    def renew_prefix(self) -> str:
        """Issue further tokens under a new prefix (the old one was declared dead)."""
        self._prefix = secrets.token_hex(DECIDER_CHARS // 2)
        return self._prefix

    def _sign(self, payload: bytes) -> bytes:
        h = self._mac.copy()
        h.update(payload)
        return h.digest()[:_MAC_BYTES]

    def issue(
        self,
        route: str,
        arm: str,
        propensity: float,
        generation: int,
        features: tuple[float, ...] | None,
        label: str | None,
        now: float,
        bucket: int | None = None,
        layout: str | None = None,
        clock: float | None = None,
    ) -> str:
        return self.issue_with_id(
            route, arm, propensity, generation, features, label, now, bucket, layout, clock
        )[0]

    def issue_with_id(
        self,
        route: str,
        arm: str,
        propensity: float,
        generation: int,
        features: tuple[float, ...] | None,
        label: str | None,
        now: float,
        bucket: int | None = None,
        layout: str | None = None,
        clock: float | None = None,
    ) -> tuple[str, str]:
        """A token and its id (the decision id the decision log records)."""
        token_id = f"{self._prefix}{next(self._counter):x}"
        fields: list[Any] = [
            _VERSION,
            route,
            arm,
            float(f"{propensity:.9g}"),  # significant digits: small propensities stay exact
            generation,
            round(now, 3),
            token_id,
            None if features is None else list(features),
            label,
        ]
        # optional tail: [bucket] or [bucket, layout, clock] (9-field tokens stay valid)
        if layout is not None or clock is not None:
            fields += [bucket, layout, clock]
        elif bucket is not None:
            fields.append(bucket)
        payload = json.dumps(fields, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}", token_id

    def verify(self, token: object, now: float, ttl: float) -> TokenData:
        """The token's content, or TokenError: 403 forged/malformed, 410 older than `ttl`."""
        if not isinstance(token, str) or len(token) > 8192:
            raise TokenError(403, "forged", "decision: must be a decision token string")
        body, dot, mac = token.partition(".")
        try:
            payload = _unb64(body)
            given = _unb64(mac)
        except (binascii.Error, ValueError):
            raise TokenError(403, "forged", "decision: malformed token") from None
        if not dot or not hmac.compare_digest(given, self._sign(payload)):
            raise TokenError(
                403, "forged", "decision: bad signature (forged or from another router)"
            )
        try:
            v, route, arm, prop, gen, issued, tid, feats, label, *rest = json.loads(payload)
            if len(rest) not in (0, 1, 3):
                raise ValueError("bad token tail")
            bucket = rest[0] if rest else None
            if bucket is not None and (not isinstance(bucket, int) or bucket < 0):
                raise ValueError("bad bucket")
            layout, clock = (rest[1], rest[2]) if len(rest) == 3 else (None, None)
            data = TokenData(
                str(route),
                str(arm),
                float(prop),
                int(gen),
                float(issued),
                str(tid),
                None if feats is None else tuple(float(x) for x in feats),
                None if label is None else str(label),
                bucket,
                None if layout is None else str(layout),
                None if clock is None else float(clock),
            )
        except (ValueError, TypeError):
            raise TokenError(403, "forged", "decision: malformed token payload") from None
        if v != _VERSION:
            raise TokenError(403, "forged", f"decision: unsupported token version {v!r}")
        if now - data.issued_at > ttl:
            raise TokenError(
                410,
                "expired",
                f"decision: expired {now - data.issued_at:.0f}s after it was made (ttl {ttl:g}s)",
            )
        return data


async def load_secret(config: Config, store: Store) -> bytes:
    """The HMAC key: from `feedback.secret_env`, else the one in the store, else a new one.

    A generated key is stored under `secret:feedback` so restarts and replicas sharing the
    store keep accepting tokens; a warning says how to set one explicitly.
    """
    env = config.feedback.secret_env
    value = os.environ.get(env, "")
    if value:
        raw = value.encode()
        if len(raw) < 16:
            log.warning("%s is shorter than 16 bytes; padding it with a hash", env)
            raw = hashlib.sha256(raw).digest()
        return raw
    stored = await store.get(SECRET_KEY)
    if isinstance(stored, str) and len(stored) >= 32:
        return stored.encode()
    fresh = secrets.token_hex(32)
    # atomic: workers and replicas starting together all keep the one that won
    again = await store.put_if_absent(SECRET_KEY, fresh)
    log.warning(
        "%s is not set: generated a feedback secret and stored it in the state store; "
        "set %s to share one secret across routers with different stores",
        env,
        env,
    )
    return (again if isinstance(again, str) and len(again) >= 32 else fresh).encode()


class _Route(Protocol):
    @property
    def engine(self) -> Engine: ...


class RuntimeLike(Protocol):
    """What the handler reads from the runtime at call time (routes and config change on reload)."""

    store: Store
    metrics: Metrics
    signer: Any  # TokenSigner, set before the runtime builds this handler
    config: Config
    clock: Callable[[], float]

    def route(self, name: str) -> _Route: ...


@dataclass(slots=True)
class _Item:
    data: TokenData
    reward: float
    engine: Engine
    metrics: dict[str, float] | None = None


def _json(status: int, doc: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(doc, separators=(",", ":")).encode()


def _error(status: int, message: str) -> tuple[int, bytes]:
    return _json(status, {"error": message, "status": status})


class FeedbackHandler:
    """SPEC §3 feedback: verify, validate, store durably, then (and only then) learn."""

    def __init__(self, runtime: RuntimeLike) -> None:
        self._rt = runtime

    async def handle(self, body: bytes) -> tuple[int, bytes]:
        metrics = self._rt.metrics
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            metrics.feedback_rejected("malformed")
            return _error(400, "body is not valid JSON")
        if not isinstance(doc, dict):
            metrics.feedback_rejected("malformed")
            return _error(400, 'body must be a JSON object: {"decision": TOKEN, "reward": R}')
        if "feedback" in doc:
            raw = doc["feedback"]
            if not isinstance(raw, list) or not raw or len(raw) > _MAX_BATCH:
                metrics.feedback_rejected("malformed")
                return _error(400, f"feedback: must be a list of 1 to {_MAX_BATCH} items")
            items, prefix = raw, "feedback[{}]: "
        else:
            items, prefix = [doc], ""
        now = self._rt.clock()
        valid: list[_Item] = []
        seen: set[str] = set()
        for i, raw_item in enumerate(items):
            where = prefix.format(i)
            try:
                item = self._validate(raw_item, now)
            except TokenError as e:
                metrics.feedback_rejected(e.reason)
                return _error(e.status, where + e.message)
            if item.data.token_id in seen:
                metrics.feedback_rejected("duplicate")
                return _error(409, f"{where}decision: appears twice in this batch")
            seen.add(item.data.token_id)
            valid.append(item)
        records = [
            FeedbackRecord(
                token_id=it.data.token_id,
                route=it.data.route,
                arm=it.data.arm,
                reward=it.reward,
                decided_at=it.data.issued_at,
                received_at=now,
                context=it.data.features,
                label=it.data.label,
                bucket=it.data.bucket,
                metrics=it.metrics,
            )
            for it in valid
        ]
        try:
            stored = await self._rt.store.feedback_add(records)
        except Exception as e:
            log.error("feedback store write failed: %s", e)
            return _error(503, "the state store is unavailable; the reward was not recorded")
        accepted = 0
        duplicates: list[int] = []
        for i, (it, ok) in enumerate(zip(valid, stored, strict=True)):
            if not ok:
                duplicates.append(i)
                metrics.feedback_rejected("duplicate")
                continue
            accepted += 1
            ctx = Context(
                bucket=it.data.bucket,
                features=None if it.data.features is None else np.asarray(it.data.features),
                label=it.data.label,
                clock=it.data.clock,
            )
            # durable already: the policy learns only from what a restart would replay
            it.engine.feedback(
                it.data.arm, it.reward, ctx, token_id=it.data.token_id, metrics=it.metrics
            )
            metrics.feedback(it.data.route, it.data.arm)
        if accepted:
            await self._log_rewards([it for it, ok in zip(valid, stored, strict=True) if ok], now)
        if accepted == 0:
            return _error(
                409,
                "decision: already credited" if not prefix else "every item was already credited",
            )
        out: dict[str, Any] = {"accepted": accepted}
        if prefix:
            out["duplicates"] = duplicates
        return _json(202, out)

    async def _log_rewards(self, items: list[_Item], now: float) -> None:
        """Append accepted rewards to their routes' decision logs, fsync'ed before the 202.

        A failed write is logged and counted (`errors` in the log's health); the reward itself
        is already durable in the state store, so the answer stays 202.
        """
        get = getattr(self._rt, "decision_log", None)
        if get is None:
            return
        groups: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
        for it in items:
            d = it.data
            rl = get(d.route)
            if rl is None:
                continue
            layout = rl.layout if d.features is not None and len(d.features) == rl.dim else None
            groups.setdefault(id(rl.writer), (rl.writer, []))[1].append(
                {
                    "t": round(now, 6),
                    "route": d.route,
                    "id": d.token_id,
                    "reward": it.reward,
                    "arm": d.arm,
                    "propensity": d.propensity,
                    "features": None if d.features is None else list(d.features),
                    "label": d.label,
                    "decided_at": d.issued_at,
                    "layout": layout,
                }
            )
        for writer, records in groups.values():
            try:
                await asyncio.to_thread(writer.rewards, records)
            except OSError as e:
                writer.errors += len(records)
                log.error("decision log %s: reward records not written: %s", writer.path, e)

    def _validate(self, raw: object, now: float) -> _Item:
        if not isinstance(raw, dict) or "decision" not in raw or "reward" not in raw:
            raise TokenError(400, "malformed", 'must be an object {"decision": TOKEN, "reward": R}')
        extra = sorted(set(raw) - {"decision", "reward", "metrics"})
        if extra:
            raise TokenError(
                400, "malformed", f"unknown key '{extra[0]}'; allowed: decision, reward, metrics"
            )
        signer = self._rt.signer
        data = signer.verify(raw["decision"], now, self._rt.config.feedback.ttl)
        try:
            route = self._rt.route(data.route)
        except KeyError:
            raise TokenError(
                403, "foreign", f"decision: route '{data.route}' is not served by this router"
            ) from None
        engine = route.engine
        if not engine.learns:
            raise TokenError(403, "foreign", f"decision: route '{data.route}' does not learn")
        if data.arm not in engine.arms:
            raise TokenError(
                410, "gone", f"decision: arm '{data.arm}' is no longer part of route '{data.route}'"
            )
        layout = engine.layout
        if layout is not None:
            # a decision made under other features: its vector means something else to the
            # model now, so it is refused before anything is stored (and changes nothing)
            stale = (
                data.layout != layout
                if data.layout is not None
                else data.features is None or len(data.features) != _dim(engine)
            )
            if stale:
                raise TokenError(
                    409,
                    "stale_layout",
                    f"decision: made under feature layout {data.layout or 'of an older router'};"
                    f" route '{data.route}' now uses layout {layout} (its features changed), so"
                    " the reward cannot be credited",
                )
        reward = raw["reward"]
        if isinstance(reward, bool) or not isinstance(reward, int | float):
            raise TokenError(
                422, "invalid_reward", f"reward: must be a number, got {_kind(reward)}"
            )
        problem = reward_problem(reward, engine.reward_type, engine.reward_range)
        if problem is not None:
            raise TokenError(422, "invalid_reward", f"reward: {problem}")
        return _Item(data, float(reward), engine, _metrics(raw.get("metrics"), engine, data.route))


def _dim(engine: object) -> int:
    encoder = getattr(engine, "encoder", None)
    return int(getattr(encoder, "dim", -1))


def _metrics(raw: object, engine: Engine, route: str) -> dict[str, float] | None:
    """`metrics`: {name: number} for the route's reward guardrails (422 otherwise)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TokenError(422, "invalid_reward", f"metrics: must be an object, got {_kind(raw)}")
    known: frozenset[str] = getattr(engine, "guardrail_metrics", frozenset())
    out: dict[str, float] = {}
    for name, v in raw.items():
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise TokenError(
                422,
                "invalid_reward",
                f"metrics.{name}: route '{route}' has no reward guardrail of that name "
                f"(its reward guardrails: {allowed})",
            )
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise TokenError(
                422, "invalid_reward", f"metrics.{name}: must be a finite number, got {v!r}"
            )
        out[name] = float(v)
    return out or None


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    return type(v).__name__
