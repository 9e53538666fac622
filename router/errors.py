"""The errors modelrouter raises on purpose: one base class, so callers can tell them from bugs.

Each carries a `message` fit to show a person (what was wrong, where, and the fix). Errors that
become an HTTP answer carry its `status` too. The pure `policies/` package keeps its own
(`policies.canary.TransitionError`); the runtime turns those into an `ActionError`.
"""

from __future__ import annotations

__all__ = ["ActionError", "ModelrouterError"]


class ModelrouterError(Exception):
    """Base of every deliberate modelrouter error; `message` is what a person reads."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ActionError(ModelrouterError):
    """An admin API call or engine action refused: answered as `{"error": message}`, `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
