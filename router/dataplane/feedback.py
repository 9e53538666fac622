"""The feedback endpoint: `POST /_modelrouter/feedback` answered by the router itself.

It belongs to the router whatever the routes' prefixes say. The listener calls `begin` when
the head of a request for FEEDBACK_PATH is complete and `run` once its body is; the body goes
to `Router.handle_feedback` (router.feedback checks the decision token and updates the policy)
on a task, and the answer is written when it is this exchange's turn.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from router.dataplane.answers import error_body
from router.dataplane.exchange import ERR_500, S_DONE

if TYPE_CHECKING:
    from router.dataplane.exchange import Exchange

__all__ = ["FEEDBACK_PATH", "begin", "run", "waiting"]

log = logging.getLogger("modelrouter.proxy")

FEEDBACK_PATH: Final = "/_modelrouter/feedback"

_ERR_405: Final = error_body(405, f"{FEEDBACK_PATH} accepts only POST")


def begin(ex: Exchange, method: str) -> None:
    """A feedback request's head is complete: refuse other methods, else hold its body."""
    ex.feedback = True
    if method != "POST":
        ex.pending = (405, _ERR_405)
        return
    ex.needs_body = True
    ex.out_up = []


def waiting(ex: Exchange) -> bool:
    """True for a feedback exchange whose body is complete and not yet handed over."""
    req = ex.req
    return ex.sel is None and ex.pending is None and req is not None and req.path == FEEDBACK_PATH


def run(ex: Exchange) -> None:
    """The body is complete: handle it off the request path, then answer in turn."""
    out = ex.out_up or []
    body = b"".join(out[1::3]) if ex.chunked_in else b"".join(out)
    ex.out_up = None
    server = ex.proto.server
    task = ex.loop.create_task(_handle(ex, body))
    server.tasks.add(task)
    task.add_done_callback(server.tasks.discard)


async def _handle(ex: Exchange, body: bytes) -> None:
    proto = ex.proto
    try:
        status, answer = await proto.runtime.handle_feedback(body)
    except Exception:
        log.exception("feedback handling failed")
        status, answer = 500, ERR_500
    ex.pending = (status, answer)
    if ex is proto.active and ex.state != S_DONE and not proto.lost:
        ex.respond(status, answer)
    # else: Exchange.go() answers it when its turn comes
