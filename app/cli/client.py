"""The HTTP side of the ``pgvault`` command: one small client over the service's API.

It imports nothing from the server: it speaks only the HTTP contract (SPEC section 4), so it
works against any pgvault replica of a compatible version. Errors become :class:`CliError`, one
readable line each; the command turns them into exit code 2.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# The event stream sends a keep-alive comment every 15 s; a minute of silence is a dead server.
EVENTS_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=60.0)


class CliError(Exception):
    """A usage, connection or API error, as one line for people (exit code 2)."""


class Client:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("PGVAULT_URL") or DEFAULT_URL).rstrip("/")
        # The token comes from the environment only: an option would put it in argv (ps).
        token = token if token is not None else os.environ.get("PGVAULT_TOKEN", "")
        headers = {"Accept": "application/json", "User-Agent": "pgvault-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise CliError(self._unreachable(exc)) from None
        if resp.status_code >= 400:
            raise CliError(self._problem(resp))
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                 if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The job's events (GET /v1/jobs/{id}/events) until the stream ends."""
        try:
            with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events",
                             timeout=EVENTS_TIMEOUT) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise CliError(self._problem(source.response))
                for event in source.iter_sse():
                    if event.data:
                        yield event.json()
        except SSEError as exc:
            raise CliError(f"the service did not answer with an event stream: {exc}") from None

    def _unreachable(self, exc: httpx.TransportError) -> str:
        if isinstance(exc, httpx.ConnectError):
            return f"cannot reach pgvault at {self.url} (set PGVAULT_URL): connection failed"
        if isinstance(exc, httpx.TimeoutException):
            return f"pgvault at {self.url} did not answer in time"
        return f"the connection to pgvault at {self.url} broke: {exc or 'no detail'}"

    def _problem(self, resp: httpx.Response) -> str:
        """An error answer (problem+json) as one line."""
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        title = body.get("title") or resp.reason_phrase or "error"
        detail = body.get("detail") or ""
        line = f"{resp.status_code} {title}" + (f": {detail}" if detail else "")
        if resp.status_code == 401 and not self.http.headers.get("Authorization"):
            line += " (set PGVAULT_TOKEN)"
        return " ".join(line.split())
