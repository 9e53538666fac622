"""Pure request-head processing: plain functions over the bytes the parser collected.

The listener's header callback sorts each request header by `REQUEST_HEADERS` (forwarded as
received, or special) and each response header by `RESPONSE_HEADERS`; when the head is
complete these functions decide: the body framing (anything ambiguous is refused, so no second
request can hide in a body), the request target, the client address routing sees, the request
id, and the head that goes upstream. Headers named in `Connection` are hop-by-hop in both
directions (`connection_tokens`, `strip_named`). Refusals raise `Refused(status, body)`.
No sockets, no clock: tests/router/test_dataplane_head.py drives them with tables.
"""

from __future__ import annotations

import os
from itertools import count
from typing import Any, Final
from urllib.parse import unquote

import httptools

from router.dataplane.answers import error_body

__all__ = [
    "REQUEST_HEADERS",
    "RESPONSE_HEADERS",
    "Refused",
    "check_method",
    "client_address",
    "connection_tokens",
    "forwarded_head",
    "framing",
    "has_dot_segment",
    "new_request_id",
    "request_id",
    "sane_request_id",
    "split_target",
    "strip_named",
    "trusted_chain",
]

CRLF: Final = b"\r\n"
_XFP: Final = b"\r\nx-forwarded-proto: http\r\n"

# kinds of headers that are not forwarded as they are
HOP: Final = 1  # hop-by-hop: dropped
CLEN: Final = 2  # Content-Length: re-framed
TE: Final = 3  # Transfer-Encoding: re-framed
CONN: Final = 4  # Connection: dropped, and so is every header it names
HOST: Final = 5  # request only: the backend's Host is sent; the client's as X-Forwarded-Host
XFF: Final = 6  # request only: the peer is appended
RID: Final = 7  # request only: kept when sane, else a generated id
EXPECT: Final = 8  # request only: the proxy answers 100-continue itself

# hop-by-hop in both directions (RFC 9110 7.6.1 and the usual proxy extras)
_HOP_BY_HOP = (
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
)


def _table(extra: dict[bytes, int]) -> dict[bytes, int]:
    table = dict.fromkeys(_HOP_BY_HOP, HOP)
    table[b"connection"] = CONN
    table[b"transfer-encoding"] = TE
    table[b"content-length"] = CLEN
    table.update(extra)
    return table


# lower-case request header name -> kind; absent: forwarded as received
REQUEST_HEADERS: Final = _table(
    {
        b"host": HOST,
        b"x-forwarded-for": XFF,
        b"x-forwarded-proto": HOP,  # replaced
        b"x-forwarded-host": HOP,  # replaced
        b"x-request-id": RID,
        b"expect": EXPECT,
    }
)
# lower-case response header name -> kind; absent: passed to the client as received
RESPONSE_HEADERS: Final = _table(
    {b"x-request-id": HOP}  # the proxy sets its own (the client's, or a generated one)
)


class Refused(Exception):
    """The request head is refused: answer `status` with the JSON `body`, then close."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _bad(message: str, status: int = 400) -> Refused:
    return Refused(status, error_body(status, message))


_ERR_413: Final = error_body(413, "request body too large")


# ---- Connection: the headers it names are hop-by-hop (both directions) ------------------------


def connection_tokens(value: bytes, tokens: list[bytes] | None) -> list[bytes] | None:
    """`tokens` plus the header names one `Connection` value lists (lower-case).

    `close` and `keep-alive` are connection options, not header names. Returns None while
    nothing is named (the common case allocates nothing).
    """
    for tok in value.lower().split(b","):
        tok = tok.strip()
        if tok and tok not in (b"close", b"keep-alive"):
            if tokens is None:
                tokens = []
            tokens.append(tok)
    return tokens


def strip_named(pieces: list[bytes], tokens: list[bytes]) -> list[bytes]:
    """`pieces` (name, `: `, value, CRLF quadruples) without the headers named in `tokens`."""
    drop = set(tokens)
    kept: list[bytes] = []
    for i in range(0, len(pieces), 4):
        if pieces[i].lower() not in drop:
            kept += pieces[i : i + 4]
    return kept


# ---- framing ----------------------------------------------------------------------------------


def framing(
    tes: list[bytes] | None, clens: list[bytes] | None, version10: bool, max_body: int
) -> tuple[bool, bytes | None]:
    """(chunked, Content-Length) of a request body from its Transfer-Encoding and
    Content-Length values; refuses ambiguous framing (request smuggling) and bodies over
    `max_body`."""
    if tes is not None:
        if version10:
            raise _bad("bad request: Transfer-Encoding in an HTTP/1.0 request")
        if clens is not None:
            raise _bad("bad request: both Content-Length and Transfer-Encoding")
        if len(tes) != 1 or tes[0].strip().lower() != b"chunked":
            raise _bad("bad request: Transfer-Encoding must be exactly 'chunked'")
        return True, None
    if clens is None:
        return False, None
    if len(clens) != 1:
        raise _bad("bad request: more than one Content-Length")
    clen = clens[0].strip()
    if not clen.isdigit() or len(clen) > 18:
        raise _bad("bad request: invalid Content-Length")
    if int(clen) > max_body:
        raise Refused(413, _ERR_413)
    return False, clen


def check_method(method: bytes) -> None:
    """Refuse methods a reverse proxy does not forward (CONNECT)."""
    if method == b"CONNECT":
        raise _bad("CONNECT is not supported", 405)


# ---- the request target -----------------------------------------------------------------------


def split_target(url: bytes) -> tuple[bytes, bytes]:
    """(path, query) of a request target (origin or absolute form), fragment dropped;
    refuses targets that do not parse and paths with `.`/`..` segments."""
    if url[:1] != b"/":
        try:
            # the stub says bytes, but absent parts are None: Any keeps mypyc from checking
            parsed: Any = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise _bad("bad request: invalid request target") from None
        path: bytes = parsed.path or b"/"
        query: bytes = parsed.query or b""
    else:
        qi = url.find(b"?")
        if qi < 0:
            path, query = url, b""
        else:
            path, query = url[:qi], url[qi + 1 :]
        if b"#" in path:
            path = path[: path.find(b"#")]
    if (b"/." in path or b"%" in path) and has_dot_segment(path):
        raise _bad("bad request: '.' or '..' segment in the path")
    return path, query


def has_dot_segment(path: bytes) -> bool:
    """True when `path` holds a `.` or `..` segment, also percent-encoded (path traversal)."""
    if b"%" in path:
        path = unquote(path.decode("latin-1"), encoding="latin-1").encode("latin-1")
    if b"/." not in path:
        return False
    return any(seg in (b".", b"..") for seg in path.split(b"/"))


# ---- who asked --------------------------------------------------------------------------------


def trusted_chain(xff: list[bytes] | None, trusted_hops: int) -> list[bytes] | None:
    """The X-Forwarded-For entries added by the `trusted_hops` proxies in front of us (the
    last ones; a client can write anything before them), or None when none are trusted."""
    if not trusted_hops or xff is None:
        return None
    chain = [a.strip() for v in xff for a in v.split(b",") if a.strip()]
    return chain[-trusted_hops:] or None


def client_address(peer: str, xff: list[bytes] | None, trusted_hops: int) -> str:
    """The client IP routing sees: the peer, or with `trusted_hops` proxies in front of us the
    X-Forwarded-For entry that many hops back (the chain ends with the peer); the first entry
    of the X-Forwarded-For sent upstream (`forwarded_head` with `trusted_chain`)."""
    chain = trusted_chain(xff, trusted_hops)
    if chain is None:
        return peer
    return chain[0].decode("latin-1")


_ID_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
_ID_PREFIX: Final = os.urandom(6).hex().encode()
_ID_COUNTER = count(1)


def sane_request_id(value: bytes) -> bool:
    """True for 1..128 characters of [A-Za-z0-9._:-] (a client id we keep and pass on)."""
    return 0 < len(value) <= 128 and not value.translate(None, _ID_CHARS)


def new_request_id() -> bytes:
    """A process-unique id: a random per-process prefix and a counter (no syscall per call)."""
    return b"%s-%x" % (_ID_PREFIX, next(_ID_COUNTER))


def request_id(client: bytes | None) -> bytes:
    """The client's X-Request-Id when it is sane, else a new one."""
    if client is None or not sane_request_id(client):
        return new_request_id()
    return client


# ---- the head that goes upstream --------------------------------------------------------------


def forwarded_head(
    fwd: list[bytes],
    *,
    chunked: bool,
    clen: bytes | None,
    xff: list[bytes] | None,
    peer: bytes,
    host: bytes | None,
    rid: bytes,
) -> list[bytes]:
    """The upstream request head after its start line and Host (the backend's, added per
    attempt): `fwd`, the client's forwardable headers, extended in place with the framing,
    X-Forwarded-For (the trusted part of the client's chain, see `trusted_chain`, plus `peer`),
    -Proto, -Host and X-Request-Id."""
    if chunked:
        fwd.append(b"transfer-encoding: chunked\r\n")
    elif clen is not None:
        fwd += (b"content-length: ", clen, CRLF)
    if xff is None:
        fwd += (b"x-forwarded-for: ", peer, _XFP)
    else:
        fwd += (b"x-forwarded-for: ", b", ".join(xff), b", ", peer, _XFP)
    if host is not None:
        fwd += (b"x-forwarded-host: ", host, CRLF)
    fwd += (b"x-request-id: ", rid, b"\r\n\r\n")
    return fwd
