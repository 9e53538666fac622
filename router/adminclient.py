"""A small synchronous client of the admin API for the CLI (stdlib urllib, short timeouts).

Every failure becomes an `AdminError` whose message a person can act on; nothing else escapes.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from router.errors import ModelrouterError

__all__ = ["DEFAULT_ADMIN_URL", "TOKEN_ENV", "AdminClient", "AdminError", "normalize_url"]

DEFAULT_ADMIN_URL = "http://127.0.0.1:9901"
TOKEN_ENV = "MODELROUTER_ADMIN_TOKEN"


class AdminError(ModelrouterError):
    """The admin API could not be reached or refused the call; `message` says what to do."""

    def __init__(
        self, message: str, status: int | None = None, errors: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status  # HTTP status, None when there was no answer
        self.errors = errors  # every config error of a rejected reload


def normalize_url(url: str) -> str:
    """`host:port` or `http://host:port/` -> `http://host:port`; raises ValueError when unusable."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"admin URL must look like http://127.0.0.1:9901, got '{url}'")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"admin URL has an invalid port: '{url}'") from None
    return url.rstrip("/")


class AdminClient:
    """Calls the admin API at `base_url`, with `Authorization: Bearer <token>` when one is set."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = normalize_url(base_url)
        self.token = token or None
        self.timeout = timeout

    # ---- endpoints ------------------------------------------------------------------------------

    def routes(self) -> list[dict[str, Any]]:
        data = self.request("GET", "/admin/routes")
        if isinstance(data, dict) and isinstance(data.get("routes"), list):
            data = data["routes"]
        if not isinstance(data, list):
            raise AdminError(f"unexpected answer from {self.base_url}/admin/routes: {data!r:.200}")
        return data

    def route(self, name: str) -> dict[str, Any]:
        data = self.request("GET", "/admin/routes/" + _quote(name))
        if not isinstance(data, dict):
            raise AdminError(f"unexpected answer for route '{name}': {data!r:.200}")
        return data

    def snapshot(self, name: str) -> dict[str, Any]:
        data = self.request("GET", "/admin/routes/" + _quote(name) + "/snapshot")
        if not isinstance(data, dict):
            raise AdminError(f"unexpected snapshot answer for route '{name}': {data!r:.200}")
        return data

    def action(
        self, route: str, action: str, reason: str | None = None, full: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if reason:
            body["reason"] = reason
        if full:
            body["full"] = True
        data = self.request("POST", f"/admin/routes/{_quote(route)}/{action}", body)
        return data if isinstance(data, dict) else {}

    def set_weights(
        self, route: str, weights: Mapping[str, float], reason: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"weights": dict(weights)}
        if reason:
            body["reason"] = reason
        data = self.request("PUT", f"/admin/routes/{_quote(route)}/weights", body)
        return data if isinstance(data, dict) else {}

    def reload(self, reason: str | None = None) -> dict[str, Any]:
        data = self.request("POST", "/admin/reload", {"reason": reason} if reason else {})
        return data if isinstance(data, dict) else {}

    def audit(self, route: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = {"limit": str(limit)}
        if route:
            query["route"] = route
        data = self.request("GET", "/admin/audit?" + urllib.parse.urlencode(query))
        if isinstance(data, dict) and isinstance(data.get("entries"), list):
            data = data["entries"]
        if not isinstance(data, list):
            raise AdminError(f"unexpected answer from {self.base_url}/admin/audit: {data!r:.200}")
        return data

    # ---- transport ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any | None = None) -> Any:
        """One call; returns the decoded JSON answer or raises AdminError."""
        url = self.base_url + path
        headers = {"Accept": "application/json", "User-Agent": "modelrouter-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise self._http_error(e, method, path) from None
        except TimeoutError:
            raise AdminError(
                f"the admin API at {self.base_url} did not answer within {self.timeout:g}s"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, OSError) and reason.strerror:
                reason = reason.strerror
            if isinstance(reason, TimeoutError | socket.timeout):
                raise AdminError(
                    f"the admin API at {self.base_url} did not answer within {self.timeout:g}s"
                ) from None
            raise AdminError(
                f"cannot reach the admin API at {self.base_url} (is modelrouter serve running? "
                f"pass --admin URL): {reason}"
            ) from None
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise AdminError(
                f"{url} answered something that is not JSON (is it the modelrouter admin listener?)"
            ) from None

    def _http_error(self, e: urllib.error.HTTPError, method: str, path: str) -> AdminError:
        try:
            payload = json.loads(e.read() or b"null")
        except (ValueError, OSError):
            payload = None
        message = payload.get("error") if isinstance(payload, dict) else None
        errors: tuple[str, ...] = ()
        if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
            errors = tuple(str(x) for x in payload["errors"])
        if e.code == 401:
            hint = (
                f"{TOKEN_ENV} is not set"
                if not self.token
                else f"the token in {TOKEN_ENV} was refused"
            )
            message = f"the admin API wants a token: {hint}; set it to the router's admin token"
        elif e.code == 404 and message is None:
            message = f"{method} {path} is not an endpoint of the admin API at {self.base_url}"
        elif message is None:
            message = f"the admin API answered {e.code} {e.reason} to {method} {path}"
        return AdminError(str(message), e.code, errors)


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
