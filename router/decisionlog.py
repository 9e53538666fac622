"""The decision log: every routing decision as a JSON line, rewards joined by decision id.

Writing is off the hot path. `decision()` only checks the sample and appends a tuple to a
bounded deque (when full the record is dropped and counted, the request never waits); a writer
thread drains the deque, serialises, writes, rotates and compresses. `rewards()` is different:
the feedback endpoint calls it (in a worker thread) before it answers 202, and it returns only
after the reward lines are written and fsync'ed, so a kill -9 after an accepted reward loses no
reward record. A reward record repeats what the decision token says (arm, propensity, features,
decision time), so it is usable even when its decision record was dropped or never flushed.

File format (one JSON object per line, `type` says which):

- `policy`   once per file per policy version: route, version (hash of the parameters), kind,
             algorithm, params, arms, reward type, missing_reward.
- `layout`   once per file per feature layout: id (hash), dim, features (name, from, type,
             values / scale / default) in encoding order after the bias term.
- `decision` t, route, id (the decision token's id), arm, propensity, policy (version), layout,
             features (exactly as the policy saw them, bias first) or null, unit (hashed sticky
             key) or null, request_id or null.
- `reward`   t, route, id, reward, arm, propensity, features, decided_at, layout (from the
             feedback endpoint: it repeats the token); or t, route, id, reward and
             `"source": "response"` for a route whose reward comes from the response.

Rotation: when the active file reaches `rotate_bytes` or `rotate_seconds`, it is renamed to
`NAME-YYYYmmddTHHMMSSZ.jsonl` next to it and gzip-compressed in the background
(`.jsonl.gz`); rotated files older than `retention` seconds are deleted. Sampling keeps a
decision when a hash of its id falls under `sample_rate`, so its reward is kept or dropped
with it. The reader (`read_log`) joins rewards (late ones too) to decisions by id.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router.errors import ModelrouterError

if TYPE_CHECKING:  # the router imports this module; only replay needs the estimators
    from policies.ope import LoggedData

__all__ = [
    "SNAPSHOT_FORMAT",
    "DecisionLogWriter",
    "LogContents",
    "LogError",
    "Round",
    "RouteLog",
    "layout_of",
    "log_files",
    "policy_block",
    "read_log",
    "snapshot_doc",
    "to_logged_data",
    "version_of",
    "worker_log_path",
]

log = logging.getLogger("modelrouter.decisionlog")

_FULL = 1 << 32
_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


class LogError(ModelrouterError):
    """A decision log that cannot be read or used; the message names the file and the problem."""


def version_of(doc: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable description (policy parameters, a layout)."""
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(raw, digest_size=6).hexdigest()


def layout_of(features: Sequence[Any]) -> dict[str, Any]:
    """The feature layout record of a contextual policy's `Feature` specs (bias term first)."""
    out: list[dict[str, Any]] = []
    dim = 1
    for f in features:
        d: dict[str, Any] = {"name": f.name, "from": f"{f.source}:{f.key}", "type": f.type}
        if f.type == "categorical":
            d["values"] = list(f.values)
            dim += len(f.values)
        else:
            d["scale"] = f.scale
            d["default"] = f.default
            dim += 1
        out.append(d)
    return {"dim": dim, "features": out}


def policy_block(spec: Any) -> dict[str, Any]:
    """A policy spec written back as the `policy:` mapping of a config (for snapshots, logs).

    Guardrails are left out: they cap arms of a live route, they are not part of what a frozen
    policy would choose."""
    kind = spec.kind
    out: dict[str, Any] = {"kind": kind}
    if kind == "weighted":
        out["weights"] = dict(spec.weights)
        return out
    if kind == "blue_green":
        out.update(active=spec.active, preview=spec.preview)
        return out
    if kind == "canary":
        out.update(stable=spec.stable, candidate=spec.candidate, steps=list(spec.steps))
        return out
    rw = spec.reward
    reward: dict[str, Any] = {"type": rw.type, "from": rw.source}
    if rw.source == "response":
        reward["max_status"] = rw.max_status
        if rw.max_latency is not None:
            reward["max_latency"] = rw.max_latency
    if kind == "ab_test":
        t = spec.test
        test: dict[str, Any] = {"method": t.method, "alpha": t.alpha, "min_samples": t.min_samples}
        if t.mixing_sd is not None:
            test["mixing_sd"] = t.mixing_sd
        out.update(arms=dict(spec.arms), split=dict(spec.split), reward=reward, test=test,
                   conclude=spec.conclude)  # fmt: skip
        return out
    out.update(arms=list(spec.arms), algorithm=spec.algorithm, reward=reward)
    if spec.params:
        out["params"] = dict(spec.params)
    if kind == "bandit":
        if spec.min_share:
            out["min_share"] = spec.min_share
        if spec.discount != 1.0:
            out["discount"] = spec.discount
    elif kind == "contextual_bandit":
        out["features"] = layout_of(spec.features)["features"]
    return out


SNAPSHOT_FORMAT = "modelrouter-policy/1"


def snapshot_doc(
    route: str, spec: Any, state: Mapping[str, Any] | None, now: float
) -> dict[str, Any]:
    """A frozen policy as a candidate file: what `snapshot` prints and `replay --policy` reads."""
    doc: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "route": route,
        "taken_at": round(now, 3),
        "policy": policy_block(spec),
        "learn": False,
    }
    if state is not None:
        doc["state"] = dict(state)
    return doc


@dataclass(slots=True)
class RouteLog:
    """One route's handle on its writer: the policy version and layout its records name."""

    writer: DecisionLogWriter
    route: str
    version: str
    layout: str | None
    dim: int

    @classmethod
    def build(
        cls, writer: DecisionLogWriter, route: str, spec: Any, missing_reward: float | None
    ) -> RouteLog:
        block = policy_block(spec)
        reward = block.get("reward", {})
        doc = {
            "kind": spec.kind,
            "algorithm": block.get("algorithm"),
            "arms": list(block.get("arms", []))
            if not isinstance(block.get("arms"), dict)
            else list(block["arms"].values()),
            "reward_type": reward.get("type", "binary"),
            "missing_reward": missing_reward,
            "policy": block,
        }
        version = writer.register_policy(route, doc)
        layout = None
        dim = 1
        features = getattr(spec, "features", None)
        if features:
            lay = layout_of(features)
            layout = writer.register_layout(lay)
            dim = int(lay["dim"])
        return cls(writer, route, version, layout, dim)


def _js(v: str | None) -> str:
    return "null" if v is None else _encode_str(v)


class DecisionLogWriter:
    """Appends decision and reward records to one JSON-lines file; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sample_rate: float = 1.0,
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_seconds: float = 86_400.0,
        retention: float = 7 * 86_400.0,
        queue_max: int = 65_536,
        flush_interval: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        if queue_max < 1:
            raise ValueError(f"queue_max must be >= 1, got {queue_max}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._threshold = int(sample_rate * _FULL)
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.retention = retention
        self._max = queue_max
        self._interval = flush_interval
        self._clock = clock
        self._q: collections.deque[tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()  # the file: writer thread, rewards() and rotation
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._fh: Any = None
        self._opened_at = 0.0
        self._size = 0
        self._in_file: set[str] = set()  # policy versions and layout ids written to this file
        self._policies: dict[str, dict[str, Any]] = {}
        self._layouts: dict[str, dict[str, Any]] = {}
        self._compressors: list[threading.Thread] = []
        self._heads: dict[tuple[Any, ...], str] = {}
        self._feats: dict[bytes, str] = {}
        self._props: dict[float, str] = {}
        self.written = 0
        self.rewards_written = 0
        self.dropped = 0
        self.errors = 0
        self.last_write = 0.0

    # ---- setup ---------------------------------------------------------------------------------

    def register_policy(self, route: str, doc: Mapping[str, Any]) -> str:
        """Describe a route's policy (kind, params, ...); returns its version hash."""
        version = version_of({"route": route, **doc})
        self._policies[version] = {"type": "policy", "route": route, "version": version, **doc}
        return version

    def register_layout(self, layout: Mapping[str, Any]) -> str:
        lid = version_of(layout)
        self._layouts[lid] = {"type": "layout", "id": lid, **layout}
        return lid

    def start(self) -> None:
        with self._lock:
            self._open()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, stop the thread, fsync and close the file."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._drain()
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
        for t in self._compressors:
            t.join()

    # ---- hot path ------------------------------------------------------------------------------

    def sampled(self, token_id: str) -> bool:
        return self._threshold >= _FULL or zlib.crc32(token_id.encode()) < self._threshold

    def decision(
        self,
        t: float,
        route: str,
        token_id: str,
        arm: str,
        propensity: float,
        version: str,
        layout: str | None,
        features: Any,
        unit: str | None,
        request_id: str | bytes | None,
    ) -> bool:
        """Queue one decision record; never blocks (a full queue drops it and counts it).

        True when the record was queued (sampled in and not dropped)."""
        if self._threshold < _FULL and zlib.crc32(token_id.encode()) >= self._threshold:
            return False
        q = self._q
        if len(q) >= self._max:
            self.dropped += 1
            return False
        q.append((t, route, token_id, arm, propensity, version, layout, features, unit, request_id))
        return True

    def response_reward(self, t: float, route: str, token_id: str, reward: float) -> None:
        """Queue the reward a route took from the response (`reward: {from: response}`).

        Off the hot path like decisions (no fsync: nothing was acknowledged to anyone); the
        reader joins it to its decision, which was queued before it."""
        q = self._q
        if len(q) >= self._max:
            self.dropped += 1
            return
        q.append((t, route, token_id, reward))

    # ---- rewards (durable before the feedback answer) -------------------------------------------

    def rewards(self, items: Iterable[Mapping[str, Any]]) -> int:
        """Write reward records and fsync before returning; returns how many were kept.

        Each item: route, id, reward, arm, propensity, features, decided_at, layout, t.
        Rewards of decisions outside the sample are skipped like their decisions.
        """
        lines = []
        for it in items:
            if not self.sampled(str(it["id"])):
                continue
            lines.append(json.dumps({"type": "reward", **it}, separators=(",", ":")) + "\n")
        if not lines:
            return 0
        data = "".join(lines)
        with self._lock:
            if self._fh is None:
                self._open()
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._size += len(data)
            self.rewards_written += len(lines)
        return len(lines)

    # ---- health --------------------------------------------------------------------------------

    def lag(self) -> float:
        """Age in seconds of the oldest record still waiting to be written (0 when none)."""
        try:
            oldest = self._q[0][0]
        except IndexError:
            return 0.0
        return max(0.0, self._clock() - float(oldest))

    def health(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sample_rate": self.sample_rate,
            "written": self.written,
            "rewards_written": self.rewards_written,
            "dropped": self.dropped,
            "queued": len(self._q),
            "lag_seconds": round(self.lag(), 3),
            "errors": self.errors,
            "last_write": self.last_write or None,
        }

    # ---- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # a full disk must not kill the thread; records count as errors
                log.exception("decision log %s: write failed", self.path)

    def _drain(self) -> None:
        q = self._q
        if not q:
            return
        # take what is there now (a bounded batch: the deque is bounded)
        batch = [q.popleft() for _ in range(len(q))]
        with self._lock:
            try:
                if self._fh is None:
                    self._open()
                if self._due():
                    self._rotate()
                parts: list[str] = []
                add = parts.append
                line = self._line
                seen = self._in_file
                rewards = 0
                for rec in batch:
                    if len(rec) == 4:
                        add(self._reward_line(rec))
                        rewards += 1
                        continue
                    if rec[5] not in seen or (rec[6] is not None and rec[6] not in seen):
                        parts.extend(self._header(rec[5], rec[6]))
                    add(line(rec))
                data = "".join(parts)
                self._fh.write(data)
                self._fh.flush()
                self._size += len(data)
                self.written += len(batch) - rewards
                self.rewards_written += rewards
                self.last_write = self._clock()
            except OSError as e:
                self.errors += len(batch)
                log.error("decision log %s: %s; %d records lost", self.path, e, len(batch))

    def _header(self, version: str, layout: str | None) -> list[str]:
        out = []
        if version not in self._in_file and version in self._policies:
            self._in_file.add(version)
            out.append(json.dumps(self._policies[version], separators=(",", ":")) + "\n")
        if layout is not None and layout not in self._in_file and layout in self._layouts:
            self._in_file.add(layout)
            out.append(json.dumps(self._layouts[layout], separators=(",", ":")) + "\n")
        return out

    @staticmethod
    def _reward_line(rec: tuple[Any, ...]) -> str:
        t, route, tid, reward = rec
        ident = f'"{tid}"' if tid.isalnum() else _js(tid)
        return (
            f'{{"type":"reward","t":{t:.6f},"route":{_js(route)},"id":{ident},'
            f'"reward":{float(reward)!r},"source":"response"}}\n'
        )

    def _line(self, rec: tuple[Any, ...]) -> str:
        """One decision as JSON, formatted by hand: json.dumps of a dict costs several times
        more, and this thread shares the interpreter lock with the data plane. The part that
        is the same for every record of a route (route, policy, layout) is encoded once."""
        t, route, tid, arm, p, version, layout, x, unit, rid = rec
        key = (route, version, layout, arm)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (
                f'{{"type":"decision","route":{_js(route)},"policy":{_js(version)},'
                f'"layout":{_js(layout)},"arm":{_js(arm)},"t":'
            )
        if x is None:
            feats = "null"
        elif isinstance(x, np.ndarray):
            # categorical contexts repeat: their text is cached (bounded) by the raw bytes
            raw = x.tobytes()
            cached = self._feats.get(raw)
            if cached is None:
                cached = "[" + ",".join(map(repr, x.tolist())) + "]"
                if len(self._feats) >= 4096:
                    self._feats.clear()
                self._feats[raw] = cached
            feats = cached
        else:
            feats = "[" + ",".join(map(repr, x)) + "]"
        ident = f'"{tid}"' if tid.isalnum() else _js(tid)
        prop = self._props.get(p)
        if prop is None:
            prop = repr(float(p))
            if len(self._props) >= 4096:
                self._props.clear()
            self._props[p] = prop
        if isinstance(rid, bytes):  # as forwarded: the data plane checked it is plain ASCII
            rid = rid.decode("latin-1")
        tail = (
            'null,"request_id":null}\n'
            if unit is None and rid is None
            else f'{_js(unit)},"request_id":{_js(rid)}}}\n'
        )
        return f'{head}{t:.6f},"id":{ident},"propensity":{prop},"features":{feats},"unit":{tail}'

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (kept open until close)
        size = fh.tell()
        if size:
            # a kill -9 may have left half a line: end it so the next record starts clean
            fh.seek(size - 1)
            if fh.read(1) != "\n":
                fh.write("\n")
                size += 1
        self._fh = fh
        self._size = size
        self._in_file = set()
        try:
            self._opened_at = self.path.stat().st_ctime if size else self._clock()
        except OSError:
            self._opened_at = self._clock()

    def _due(self) -> bool:
        if self._size <= 0:
            return False
        return self._size >= self.rotate_bytes or self._clock() - self._opened_at >= (
            self.rotate_seconds
        )

    def _rotate(self) -> None:
        """Close the active file, rename it with a timestamp, compress it in the background."""
        fh = self._fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._fh = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        stem = self.path.name.removesuffix(".jsonl")
        target = self.path.with_name(f"{stem}-{stamp}.jsonl")
        n = 1
        while target.exists() or target.with_suffix(".jsonl.gz").exists():
            n += 1
            target = self.path.with_name(f"{stem}-{stamp}-{n}.jsonl")
        os.replace(self.path, target)
        self._open()
        t = threading.Thread(target=self._compress, args=(target,), name="decision-log-gzip")
        self._compressors = [c for c in self._compressors if c.is_alive()]
        self._compressors.append(t)
        t.start()

    def _compress(self, src: Path) -> None:
        dst = src.with_name(src.name + ".gz")
        tmp = src.with_name(src.name + ".gz.tmp")
        try:
            with open(src, "rb") as fin, gzip.open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dst)
            src.unlink()
        except OSError as e:
            log.error("decision log: compressing %s failed: %s (left uncompressed)", src, e)
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._expire()

    def _expire(self) -> None:
        cutoff = self._clock() - self.retention
        stem = self.path.name.removesuffix(".jsonl")
        for f in _one_log(self.path, stem):
            if f == self.path:  # never the active file
                continue
            try:
                if f.stat().st_mtime < cutoff:
                    f.unlink()
            except OSError:
                continue


# ---- reading ------------------------------------------------------------------------------------


def worker_log_path(path: str | os.PathLike[str], worker: str) -> Path:
    """Under `serve --workers N` each worker writes its own file, `NAME.wI.jsonl` (worker
    index I, from MODELROUTER_WORKER "I:..."), so no two processes append to or rotate one
    file; `log_files(NAME.jsonl)` reads them all."""
    p = Path(path)
    index = worker.split(":", 1)[0]
    if not index.isdigit():
        return p
    return p.with_name(f"{p.name.removesuffix('.jsonl')}.w{index}.jsonl")


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files of one log, oldest first: rotated (compressed or not) then the active file,
    and the same for each worker's file (`NAME.wI.jsonl`) when `serve --workers` wrote them.

    A path to a single rotated file (`.jsonl.gz`) is read alone.
    """
    p = Path(path)
    if p.name.endswith(".gz"):
        return [p]
    stem = p.name.removesuffix(".jsonl")
    stems = [stem]
    if p.parent.is_dir():
        for f in p.parent.iterdir():
            rest = f.name.removeprefix(stem + ".w")
            if rest != f.name and rest.endswith(".jsonl") and rest[: -len(".jsonl")].isdigit():
                stems.append(f.name.removesuffix(".jsonl"))
    files: list[Path] = []
    for s in sorted(stems):
        files.extend(_one_log(p.parent / f"{s}.jsonl", s))
    return files


def _one_log(p: Path, stem: str) -> list[Path]:
    rotated: dict[str, Path] = {}
    if p.parent.is_dir():
        for f in p.parent.iterdir():
            name = f.name
            if not name.startswith(stem + "-") or name.endswith(".tmp"):
                continue
            if name.endswith(".jsonl.gz"):
                rotated[name.removesuffix(".gz")] = f
            elif name.endswith(".jsonl"):
                rotated.setdefault(name, f)  # the .gz wins once compression finished
    files = [rotated[k] for k in sorted(rotated)]
    if p.exists():
        files.append(p)
    return files


def _lines(f: Path) -> Iterator[str]:
    if f.name.endswith(".gz"):
        with gzip.open(f, "rt", encoding="utf-8", errors="replace") as fh:
            yield from fh
    else:
        with open(f, encoding="utf-8", errors="replace") as fh:
            yield from fh


@dataclass(slots=True)
class Round:
    """One decision, joined with its reward when one arrived."""

    t: float
    route: str
    id: str
    arm: str
    propensity: float
    features: list[float] | None
    layout: str | None
    policy: str | None
    reward: float | None = None


@dataclass(slots=True)
class LogContents:
    rounds: dict[str, Round] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    layouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    bad_lines: int = 0
    duplicate_rewards: int = 0
    rewards_without_decision: int = 0  # decision record missing: rebuilt from the reward record
    orphan_rewards: int = 0  # response rewards whose decision record is missing: unusable

    def routes(self) -> list[str]:
        return sorted({r.route for r in self.rounds.values()})


def read_log(path: str | os.PathLike[str]) -> LogContents:
    """Read every file of a log and join rewards to decisions by id (late rewards included)."""
    files = log_files(path)
    if not files:
        raise LogError(f"{path}: no decision log here (no such file, no rotated files)")
    out = LogContents(files=[str(f) for f in files])
    rewards: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            for line in _lines(f):
                _ingest(line, out, rewards)
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise LogError(f"{f}: cannot read: {e}") from None
    for tid, rec in rewards.items():
        r = out.rounds.get(tid)
        if r is None and "arm" not in rec:
            out.orphan_rewards += 1  # its decision record was dropped; nothing to join to
            continue
        if r is None:
            out.rewards_without_decision += 1
            feats = rec.get("features")
            r = Round(
                float(rec.get("decided_at") or rec.get("t") or 0.0),
                str(rec["route"]),
                tid,
                str(rec["arm"]),
                float(rec["propensity"]),
                None if feats is None else [float(x) for x in feats],
                rec.get("layout"),
                None,
            )
            out.rounds[tid] = r
        r.reward = float(rec["reward"])
    return out


def _ingest(line: str, out: LogContents, rewards: dict[str, dict[str, Any]]) -> None:
    line = line.strip()
    if not line:
        return
    try:
        rec = json.loads(line)
        kind = rec["type"]
        if kind == "decision":
            feats = rec.get("features")
            out.rounds[str(rec["id"])] = Round(
                float(rec["t"]),
                str(rec["route"]),
                str(rec["id"]),
                str(rec["arm"]),
                float(rec["propensity"]),
                None if feats is None else [float(x) for x in feats],
                rec.get("layout"),
                rec.get("policy"),
            )
        elif kind == "reward":
            tid = str(rec["id"])
            float(rec["reward"]), str(rec["route"])
            if "arm" in rec:  # feedback rewards repeat the token; response rewards do not
                str(rec["arm"]), float(rec["propensity"])
            if tid in rewards:
                out.duplicate_rewards += 1
            else:
                rewards[tid] = rec
        elif kind == "policy":
            out.policies[str(rec["version"])] = rec
        elif kind == "layout":
            out.layouts[str(rec["id"])] = rec
        else:
            out.bad_lines += 1
    except (ValueError, KeyError, TypeError):
        out.bad_lines += 1  # e.g. the half line a kill -9 left behind


@dataclass(slots=True)
class Extract:
    """A route's rounds as arrays, with what was left out and why."""

    data: LoggedData
    rounds: list[Round]
    route: str
    layout: dict[str, Any] | None
    policy: dict[str, Any] | None
    unrewarded: int  # decisions with no reward (and no missing_reward): left out
    filled: int  # decisions with no reward that got missing_reward
    other_layout: int  # rounds under another feature layout: left out
    notes: list[str]


def to_logged_data(
    contents: LogContents,
    route: str | None = None,
    *,
    missing_reward: float | None = None,
    use_policy_missing: bool = True,
) -> Extract:
    """Arrays for one route: rounds in time order, rewards joined, `missing_reward` applied.

    `missing_reward=None` takes the value the route's policy record names (the router's
    `feedback.missing_reward`) unless `use_policy_missing` is false; decisions still without a
    reward are left out and counted.
    """
    routes = contents.routes()
    if route is None:
        if len(routes) != 1:
            raise LogError(
                "the log holds routes " + ", ".join(routes) + "; choose one with --route"
                if routes
                else "the log holds no decisions"
            )
        route = routes[0]
    elif route not in routes:
        raise LogError(
            f"route '{route}' has no decisions in the log (routes: {', '.join(routes) or 'none'})"
        )
    rounds = sorted((r for r in contents.rounds.values() if r.route == route), key=lambda r: r.t)
    policies = [p for p in contents.policies.values() if p.get("route") == route]
    policy = policies[-1] if policies else None
    if missing_reward is None and use_policy_missing and policy is not None:
        mr = policy.get("missing_reward")
        missing_reward = None if mr is None else float(mr)
    notes: list[str] = []
    # the layout of the newest round decides; older rounds with another layout cannot be mixed
    layout_id = next((r.layout for r in reversed(rounds)), None)
    dims = {len(r.features) for r in rounds if r.features is not None}
    target_dim = len(rounds[-1].features) if rounds and rounds[-1].features is not None else None
    kept: list[Round] = []
    other = unrewarded = filled = 0
    for r in rounds:
        if target_dim is not None and (r.features is None or len(r.features) != target_dim):
            other += 1
            continue
        if r.reward is None:
            if missing_reward is None:
                unrewarded += 1
                continue
            r = Round(r.t, r.route, r.id, r.arm, r.propensity, r.features, r.layout, r.policy,
                      missing_reward)  # fmt: skip
            filled += 1
        kept.append(r)
    if len(dims) > 1:
        notes.append(f"{other} rounds under an older feature layout were left out")
    arms: list[str] = []
    for p in policies:
        for a in p.get("arms", []):
            if a not in arms:
                arms.append(str(a))
    for r in kept:
        if r.arm not in arms:
            arms.append(r.arm)
    index = {a: i for i, a in enumerate(arms)}
    n = len(kept)
    reward_type = str(policy.get("reward_type", "binary")) if policy else "binary"
    if reward_type == "binary" and any(not 0.0 <= (r.reward or 0.0) <= 1.0 for r in kept):
        reward_type = "continuous"
    ctx = (
        np.array([r.features for r in kept], dtype=float).reshape(n, target_dim)
        if target_dim is not None
        else np.ones((n, 1))
    )
    from policies.ope import LoggedData

    data = LoggedData(
        tuple(arms),
        np.array([index[r.arm] for r in kept], dtype=np.intp),
        np.array([float(r.reward) for r in kept if r.reward is not None], dtype=float),
        np.array([min(1.0, max(r.propensity, 1e-12)) for r in kept], dtype=float),
        ctx,
        reward_type,
    )
    layout = contents.layouts.get(layout_id) if layout_id else None
    return Extract(data, kept, route, layout, policy, unrewarded, filled, other, notes)
