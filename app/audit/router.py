from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, ValidationError

from app import pagination
from app.audit import repository
from app.dependencies import Admin, ServicesDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditEvent(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    job_id: UUID | None
    details: dict[str, Any]


class AuditList(BaseModel):
    items: list[AuditEvent]
    next_cursor: str | None
    skipped: list[pagination.Skipped] = Field(default_factory=list, description=(
        "events on this page that could not be shown, with the reason; the page goes on "
        "without them"))


@router.get("", response_model=AuditList)
async def list_audit(
    services: ServicesDep, _: Admin,
    target: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_-]{0,62}$")] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditList:
    """Who did what, when, to which target, with what outcome; newest first."""
    key = pagination.decode_time_key(cursor, int)
    async with services.pool.acquire() as conn:
        rows = await repository.list_page(conn, target=target, action=action, after=key,
                                          limit=limit + 1)
    items: list[AuditEvent] = []
    skipped: list[pagination.Skipped] = []
    for row in rows[:limit]:
        event = dict(row)
        if not isinstance(event["details"], dict):  # damaged: show the event, say so
            event["details"] = {"unreadable": "the stored details are not a JSON object"}
        try:
            items.append(AuditEvent(**event))
        except ValidationError as exc:
            skipped.append(pagination.skipped(row["id"], exc))
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]  # the last row read, shown or skipped
        next_cursor = pagination.encode_time_key(last["at"], last["id"])
    return AuditList(items=items, next_cursor=next_cursor, skipped=skipped)
