"""The answers the data plane writes itself: status lines and small JSON errors.

The bytes of static answers are encoded once at import; the hot path indexes them.
"""

from __future__ import annotations

import http
import json

__all__ = ["STATUS_LINES", "error_body", "error_response", "status_line"]


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
