"""The request view the data plane hands to routing, and the small JSON answers it sends itself.

Everything here is built for the per-request hot path: lookups are lazy linear scans over the
raw header list, and the bytes of static answers are encoded once at import.
"""

from __future__ import annotations

import http
import json
import os
from itertools import count
from urllib.parse import unquote, unquote_plus

__all__ = [
    "STATUS_LINES",
    "Request",
    "error_body",
    "error_response",
    "new_request_id",
    "sane_request_id",
    "status_line",
]


class Request:
    """One request as routing sees it: method, raw path and query, headers as received."""

    __slots__ = ("_cookies", "body", "client_ip", "headers", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        client_ip: str,
        body: bytes | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.client_ip = client_ip
        self.body = body
        self._cookies: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (given lower-case), or None."""
        key = name.encode("latin-1")
        n = len(key)
        for k, v in self.headers:
            if len(k) == n and k.lower() == key:
                return v.decode("latin-1")
        return None

    def cookie(self, name: str) -> str | None:
        """The value of cookie `name` (first occurrence across Cookie headers), or None."""
        cookies = self._cookies
        if cookies is None:
            cookies = self._cookies = {}
            for k, v in self.headers:
                if len(k) == 6 and k.lower() == b"cookie":
                    for part in v.decode("latin-1").split(";"):
                        ck, sep, cv = part.strip().partition("=")
                        if sep and ck not in cookies:
                            cv = cv.strip()
                            if len(cv) >= 2 and cv[0] == cv[-1] == '"':
                                cv = cv[1:-1]
                            cookies[ck] = cv
        return cookies.get(name)

    def query_param(self, name: str) -> str | None:
        """The first value of query parameter `name` (percent-decoded), or None."""
        if not self.query:
            return None
        for part in self.query.split("&"):
            k, _, v = part.partition("=")
            if k == name or unquote_plus(k) == name:
                return unquote_plus(v)
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}{'?' + self.query if self.query else ''}>"


# ---- status lines and JSON error answers ------------------------------------------------------


def _make_status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {code} {phrase}\r\n".encode("latin-1")


# `HTTP/1.1 200 OK\r\n` for every code below 600; the hot path indexes it directly
STATUS_LINES: tuple[bytes, ...] = tuple(_make_status_line(c) for c in range(600))


def status_line(code: int) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n` for `code` (pre-encoded for 0..599)."""
    if 0 <= code < 600:
        return STATUS_LINES[code]
    return _make_status_line(code)


_BODY_CACHE: dict[tuple[int, str], bytes] = {}


def error_body(status: int, message: str) -> bytes:
    """`{"error": message, "status": status}` as bytes; static messages are encoded once."""
    key = (status, message)
    body = _BODY_CACHE.get(key)
    if body is None:
        body = json.dumps({"error": message, "status": status}).encode()
        if len(_BODY_CACHE) < 256:  # dynamic messages (paths) must not grow the cache unbounded
            _BODY_CACHE[key] = body
    return body


def error_response(
    status: int,
    body: bytes,
    request_id: bytes,
    *,
    close: bool,
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A complete HTTP/1.1 answer carrying a JSON `body` with a correct Content-Length."""
    return b"".join(
        (
            status_line(status),
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nx-request-id: ",
            request_id,
            b"\r\n",
            extra,
            b"connection: close\r\n\r\n" if close else b"\r\n",
            b"" if head_only else body,
        )
    )


# ---- request ids ------------------------------------------------------------------------------

_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
_ID_PREFIX = os.urandom(6).hex().encode()
_ID_COUNTER = count(1)


def sane_request_id(value: bytes) -> bool:
    """True for 1..128 characters of [A-Za-z0-9._:-] (a client id we keep and pass on)."""
    return 0 < len(value) <= 128 and not value.translate(None, _ID_CHARS)


def new_request_id() -> bytes:
    """A process-unique id: a random per-process prefix and a counter (no syscall per call)."""
    return b"%s-%x" % (_ID_PREFIX, next(_ID_COUNTER))


def has_dot_segment(path: bytes) -> bool:
    """True when `path` holds a `.` or `..` segment, also percent-encoded (path traversal)."""
    if b"%" in path:
        path = unquote(path.decode("latin-1"), encoding="latin-1").encode("latin-1")
    if b"/." not in path:
        return False
    return any(seg in (b".", b"..") for seg in path.split(b"/"))
