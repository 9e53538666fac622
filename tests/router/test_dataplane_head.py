"""Pure request-head processing (router.dataplane.head), driven by tables, without sockets.

The end-to-end behaviour of the same rules is in test_proxy_headers.py and test_proxy_errors.py;
here each rule is checked on its own, including the refusals a client would see.
"""

from __future__ import annotations

import json
import re

import pytest

from router.dataplane import head
from router.dataplane.head import (
    CLEN,
    CONN,
    HOP,
    HOST,
    REQUEST_HEADERS,
    RESPONSE_HEADERS,
    RID,
    TE,
    Refused,
    check_method,
    client_address,
    connection_tokens,
    forwarded_head,
    framing,
    has_dot_segment,
    request_id,
    sane_request_id,
    split_target,
    strip_named,
)


def refusal(e: pytest.ExceptionInfo[Refused]) -> tuple[int, str]:
    body = json.loads(e.value.body)
    assert body["status"] == e.value.status
    return e.value.status, body["error"]


# ---- framing: request smuggling rules ---------------------------------------------------------

FRAMING_OK = [
    # (Transfer-Encoding values, Content-Length values, HTTP/1.0, max body) -> (chunked, clen)
    (None, None, False, 100, (False, None)),
    (None, None, True, 100, (False, None)),
    ([b"chunked"], None, False, 100, (True, None)),
    ([b" Chunked "], None, False, 100, (True, None)),
    (None, [b"0"], False, 100, (False, b"0")),
    (None, [b" 42 "], False, 100, (False, b"42")),
    (None, [b"100"], False, 100, (False, b"100")),
    (None, [b"7"], True, 100, (False, b"7")),
]


@pytest.mark.parametrize(("tes", "clens", "v10", "max_body", "want"), FRAMING_OK)
def test_framing_accepts(
    tes: list[bytes] | None,
    clens: list[bytes] | None,
    v10: bool,
    max_body: int,
    want: tuple[bool, bytes | None],
) -> None:
    assert framing(tes, clens, v10, max_body) == want


FRAMING_REFUSED = [
    ([b"chunked"], None, True, 100, 400, r"Transfer-Encoding in an HTTP/1\.0 request"),
    ([b"chunked"], [b"5"], False, 100, 400, r"both Content-Length and Transfer-Encoding"),
    ([b"gzip, chunked"], None, False, 100, 400, r"must be exactly 'chunked'"),
    ([b"chunked"] * 2, None, False, 100, 400, r"must be exactly 'chunked'"),
    ([b"identity"], None, False, 100, 400, r"must be exactly 'chunked'"),
    (None, [b"5", b"5"], False, 100, 400, r"more than one Content-Length"),
    (None, [b"5, 5"], False, 100, 400, r"invalid Content-Length"),
    (None, [b"-1"], False, 100, 400, r"invalid Content-Length"),
    (None, [b"0x10"], False, 100, 400, r"invalid Content-Length"),
    (None, [b""], False, 100, 400, r"invalid Content-Length"),
    (None, [b"1" * 19], False, 1 << 62, 400, r"invalid Content-Length"),
    (None, [b"101"], False, 100, 413, r"request body too large"),
]


@pytest.mark.parametrize(("tes", "clens", "v10", "max_body", "status", "message"), FRAMING_REFUSED)
def test_framing_refuses(
    tes: list[bytes] | None,
    clens: list[bytes] | None,
    v10: bool,
    max_body: int,
    status: int,
    message: str,
) -> None:
    with pytest.raises(Refused) as e:
        framing(tes, clens, v10, max_body)
    got_status, got_message = refusal(e)
    assert got_status == status
    assert re.search(message, got_message), got_message


def test_connect_is_refused_other_methods_pass() -> None:
    with pytest.raises(Refused) as e:
        check_method(b"CONNECT")
    assert refusal(e) == (405, "CONNECT is not supported")
    for m in (b"GET", b"POST", b"OPTIONS", b"PURGE"):
        check_method(m)


# ---- the request target ----------------------------------------------------------------------

TARGETS = [
    (b"/", (b"/", b"")),
    (b"/v1/predict", (b"/v1/predict", b"")),
    (b"/v1/predict?x=1&y=2", (b"/v1/predict", b"x=1&y=2")),
    (b"/a?", (b"/a", b"")),
    (b"/a#frag", (b"/a", b"")),
    (b"/a?q=1#frag", (b"/a", b"q=1#frag")),  # the query is passed on as the client sent it
    (b"/.well-known/x", (b"/.well-known/x", b"")),
    (b"/a/.hidden/b", (b"/a/.hidden/b", b"")),
    (b"/a%20b", (b"/a%20b", b"")),
    (b"http://example.com/v1/p?q=1", (b"/v1/p", b"q=1")),
    (b"http://example.com", (b"/", b"")),
]


@pytest.mark.parametrize(("url", "want"), TARGETS)
def test_split_target(url: bytes, want: tuple[bytes, bytes]) -> None:
    assert split_target(url) == want


BAD_TARGETS = [
    (b"/a/../etc/passwd", r"'\.' or '\.\.' segment"),
    (b"/a/./b", r"'\.' or '\.\.' segment"),
    (b"/..", r"'\.' or '\.\.' segment"),
    (b"/a/%2e%2e/b", r"'\.' or '\.\.' segment"),
    (b"/a/%2E/b", r"'\.' or '\.\.' segment"),
    (b"/a/.%2e?x=1", r"'\.' or '\.\.' segment"),
    (b"http://example.com/a/../b", r"'\.' or '\.\.' segment"),
    (b"http://[bad", r"invalid request target"),
]


@pytest.mark.parametrize(("url", "message"), BAD_TARGETS)
def test_split_target_refuses(url: bytes, message: str) -> None:
    with pytest.raises(Refused) as e:
        split_target(url)
    status, got = refusal(e)
    assert status == 400
    assert re.search(message, got), got


@pytest.mark.parametrize(
    ("path", "dot"),
    [(b"/a/b", False), (b"/a..b/c", False), (b"/a/...", False), (b"/a/..", True), (b"/%2e", True)],
)
def test_has_dot_segment(path: bytes, dot: bool) -> None:
    assert has_dot_segment(path) is dot


# ---- the client address routing sees --------------------------------------------------------

CLIENT = [
    # (peer, X-Forwarded-For values, trusted hops) -> client IP
    ("10.0.0.9", None, 0, "10.0.0.9"),
    ("10.0.0.9", None, 2, "10.0.0.9"),
    ("10.0.0.9", [b"1.1.1.1"], 0, "10.0.0.9"),  # nothing trusted: the peer, whatever XFF says
    ("10.0.0.9", [b"1.1.1.1"], 1, "1.1.1.1"),
    ("10.0.0.9", [b"6.6.6.6, 1.1.1.1"], 1, "1.1.1.1"),  # spoofed entries further left: ignored
    ("10.0.0.9", [b"6.6.6.6, 1.1.1.1"], 2, "6.6.6.6"),
    ("10.0.0.9", [b"6.6.6.6", b"1.1.1.1"], 2, "6.6.6.6"),  # several headers form one chain
    ("10.0.0.9", [b"1.1.1.1"], 5, "1.1.1.1"),  # more hops trusted than the chain: its start
    ("10.0.0.9", [b" , ,2.2.2.2 ,"], 1, "2.2.2.2"),  # empty entries do not count
]


@pytest.mark.parametrize(("peer", "xff", "trusted", "want"), CLIENT)
def test_client_address(peer: str, xff: list[bytes] | None, trusted: int, want: str) -> None:
    assert client_address(peer, xff, trusted) == want


# ---- request ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rid", "kept"),
    [
        (b"abc-123", True),
        (b"A.b:c_d-9", True),
        (b"a/b", False),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (b"has space", False),
        (b"new\r\nline", False),
    ],
)
def test_request_id_keeps_only_sane_client_ids(rid: bytes, kept: bool) -> None:
    assert sane_request_id(rid) is kept
    got = request_id(rid)
    if kept:
        assert got == rid
    else:
        assert got != rid and sane_request_id(got)


def test_generated_request_ids_are_unique_and_sane() -> None:
    ids = {request_id(None) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(sane_request_id(i) for i in ids)


# ---- Connection: one rule for both directions ------------------------------------------------


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([b"close"], None),
        ([b"keep-alive"], None),
        ([b"Keep-Alive, close"], None),
        ([b"X-Secret"], [b"x-secret"]),
        ([b"close, X-A ,x-b"], [b"x-a", b"x-b"]),
        ([b"x-a", b"X-B, keep-alive"], [b"x-a", b"x-b"]),
        ([b" , "], None),
    ],
)
def test_connection_tokens(values: list[bytes], want: list[bytes] | None) -> None:
    tokens: list[bytes] | None = None
    for v in values:
        tokens = connection_tokens(v, tokens)
    assert tokens == want


def quads(*headers: tuple[bytes, bytes]) -> list[bytes]:
    out: list[bytes] = []
    for k, v in headers:
        out += (k, b": ", v, b"\r\n")
    return out


def test_strip_named_drops_every_header_connection_names() -> None:
    pieces = quads(
        (b"Accept", b"*/*"), (b"X-Secret", b"1"), (b"x-other", b"2"), (b"X-SECRET", b"3")
    )
    assert strip_named(pieces, [b"x-secret"]) == quads((b"Accept", b"*/*"), (b"x-other", b"2"))
    assert strip_named(pieces, [b"nothing"]) == pieces


@pytest.mark.parametrize(
    "name",
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"transfer-encoding",
        b"content-length",
    ],
)
def test_hop_by_hop_headers_are_special_in_both_directions(name: bytes) -> None:
    assert REQUEST_HEADERS[name] == RESPONSE_HEADERS[name]
    assert REQUEST_HEADERS[name] in (HOP, CONN, TE, CLEN)


def test_direction_specific_headers() -> None:
    # the client's X-Request-Id may be kept; the upstream's is never passed on (we set ours)
    assert REQUEST_HEADERS[b"x-request-id"] == RID
    assert RESPONSE_HEADERS[b"x-request-id"] == HOP
    # Host and X-Forwarded-* are rewritten on the way up; on the way down they are content
    assert REQUEST_HEADERS[b"host"] == HOST
    assert REQUEST_HEADERS[b"x-forwarded-proto"] == HOP
    for name in (b"host", b"x-forwarded-for", b"accept", b"content-type"):
        assert name not in RESPONSE_HEADERS
    assert b"accept" not in REQUEST_HEADERS


# ---- the head that goes upstream ------------------------------------------------------------

XFP = b"x-forwarded-proto: http\r\n"

FORWARDED = [
    # (chunked, clen, xff, host) -> the bytes after the client's own headers
    (
        False,
        None,
        None,
        None,
        b"x-forwarded-for: 10.0.0.9\r\n" + XFP + b"x-request-id: r1\r\n\r\n",
    ),
    (
        True,
        None,
        None,
        b"api.example",
        b"transfer-encoding: chunked\r\nx-forwarded-for: 10.0.0.9\r\n"
        + XFP
        + b"x-forwarded-host: api.example\r\nx-request-id: r1\r\n\r\n",
    ),
    (
        False,
        b"12",
        [b"1.1.1.1", b"2.2.2.2, 3.3.3.3"],
        None,
        b"content-length: 12\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\n"
        + XFP
        + b"x-request-id: r1\r\n\r\n",
    ),
]


@pytest.mark.parametrize(("chunked", "clen", "xff", "host", "tail"), FORWARDED)
def test_forwarded_head(
    chunked: bool, clen: bytes | None, xff: list[bytes] | None, host: bytes | None, tail: bytes
) -> None:
    own = quads((b"Accept", b"*/*"))
    out = forwarded_head(
        list(own), chunked=chunked, clen=clen, xff=xff, peer=b"10.0.0.9", host=host, rid=b"r1"
    )
    assert b"".join(out) == b"Accept: */*\r\n" + tail


def test_public_api() -> None:
    for name in head.__all__:
        assert hasattr(head, name), name
