"""One audit event for every mutating ``/v1`` call, accepted or refused (SPEC 2.8).

Services write the event of a call they carry out, in the transaction that does the work (a job's
insert, an archive's deletion or its refusal). Every other answer (401 and 403 from the gate,
404, 409, 413, 422, a replayed Idempotency-Key, a 500) gets its event here, written when the
response starts, so a client that reads the audit log right after its call finds it. An insert
made while the request runs marks it audited (:data:`repository.request_audited`): no call gets
two events.

The actor is the token's configured name, ``anonymous`` without a token, ``unknown-token`` for a
token that matches none; never the token. The query string is never recorded. A failure to write
the event is logged and does not change the answer.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.audit import repository
from app.config import TARGET_NAME_RE, Settings
from app.errors import Unauthorized
from app.security import authenticate

log = structlog.get_logger("pgvault.audit")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Route (endpoint) name -> the action the service records for it, so that accepted and refused
# calls share one name. A route not listed here is named after its endpoint
# (``start_reconcile`` -> ``reconcile.request``).
ACTIONS = {
    "delete_archive": "archive.delete",
    "cancel_job": "job.cancel",
    "review_archive": "archive.clear_suspect",
}

OUTCOMES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
            413: "too_large", 422: "invalid"}


def outcome(status: int) -> str:
    if status < 400:
        return "accepted"
    return OUTCOMES.get(status, "failed" if status >= 500 else "refused")


def action_of(endpoint_name: str) -> str:
    if endpoint_name in ACTIONS:
        return ACTIONS[endpoint_name]
    if endpoint_name.startswith("start_"):
        return f"{endpoint_name.removeprefix('start_')}.request"
    return endpoint_name


class AuditTrail:
    def __init__(self, app: ASGIApp, settings: Settings, routes: list[APIRoute]) -> None:
        self.app = app
        self.settings = settings
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in MUTATING
                or not scope["path"].startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        audited: list[bool] = []
        token = repository.request_audited.set(audited)
        started = False

        async def send_audited(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                if not audited:
                    await self._record(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if not started and not audited:
                await self._record(scope, 500)
            raise
        finally:
            repository.request_audited.reset(token)

    async def _record(self, scope: Scope, status: int) -> None:
        fields = self._describe(scope, status)
        resources = getattr(scope["app"].state, "resources", None)
        if resources is None:  # not started: nothing to write to
            log.warning("audit_not_written", reason="service not started", **fields)
            return
        try:
            async with asyncio.timeout(5), resources.pool.acquire() as conn:
                await repository.insert(conn, **fields)
        except Exception as exc:
            log.error("audit_write_failed", error_type=type(exc).__name__, **fields)

    def _describe(self, scope: Scope, status: int) -> dict[str, Any]:
        name, params = "unrouted", {}
        for route in self.routes:
            match, child = route.matches(scope)
            if match != Match.NONE:
                name, params = route.name, child.get("path_params", {})
                if match == Match.FULL:
                    break
        target = params.get("target")
        details: dict[str, Any] = {"status": status, "method": scope["method"]}
        job_id = None
        for key, value in params.items():
            if key == "job_id":
                job_id = _uuid(value)
            if key != "target":
                details[key] = str(value)[:100]
        if name == "unrouted":
            details["path"] = scope["path"][:200]
        return {"actor": self._actor(scope), "action": action_of(name),
                "target": target if isinstance(target, str) and TARGET_NAME_RE.match(target)
                else None,
                "outcome": outcome(status), "job_id": job_id, "details": details}

    def _actor(self, scope: Scope) -> str:
        headers = dict(scope.get("headers", []))
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "anonymous"
        try:
            return authenticate(token.strip(), self.settings.api_tokens).name
        except Unauthorized:
            return "unknown-token"


def _uuid(value: Any) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
