"""All SQL for audit events."""

from __future__ import annotations

from contextvars import ContextVar
from datetime import datetime
from typing import Any
from uuid import UUID

# Set by the audit trail (app/audit/trail.py) while a mutating request runs; an event written
# meanwhile is that request's event, and the trail writes no second one.
request_audited: ContextVar[list[bool] | None] = ContextVar("request_audited", default=None)


async def insert(conn: Any, *, actor: str, action: str, target: str | None, outcome: str,
                 job_id: UUID | None = None, details: dict[str, Any] | None = None) -> None:
    await conn.execute(
        """INSERT INTO audit_events (actor, action, target, outcome, job_id, details)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        actor, action, target, outcome, job_id, details or {})
    audited = request_audited.get()
    if audited is not None:
        audited.append(True)


async def list_page(conn: Any, *, target: str | None, action: str | None,
                    after: tuple[datetime, int] | None, limit: int) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        """SELECT id, at, actor, action, target, outcome, job_id, details FROM audit_events
           WHERE ($1::text IS NULL OR target = $1) AND ($2::text IS NULL OR action = $2)
             AND ($3::timestamptz IS NULL OR (at, id) < ($3, $4::bigint))
           ORDER BY at DESC, id DESC LIMIT $5""",
        target, action, after[0] if after else None, after[1] if after else None, limit)
    return rows


async def purge(conn: Any, retention_days: int) -> int:
    status: str = await conn.execute(
        "DELETE FROM audit_events WHERE at < now() - make_interval(days => $1)", retention_days)
    return int(status.split()[-1])
