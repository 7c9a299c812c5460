from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from app import pagination
from app.audit import repository
from app.dependencies import Admin, ServicesDep
from app.errors import InvalidRequest

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


@router.get("", response_model=AuditList)
async def list_audit(
    services: ServicesDep, _: Admin,
    target: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_-]{0,62}$")] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditList:
    """Who did what, when, to which target, with what outcome; newest first."""
    after = pagination.decode(cursor, 2)
    key = None
    if after is not None:
        try:
            key = (datetime.fromisoformat(after[0]), int(after[1]))
        except (TypeError, ValueError):
            raise InvalidRequest("cursor is not one this service issued") from None
    async with services.pool.acquire() as conn:
        rows = await repository.list_page(conn, target=target, action=action, after=key,
                                          limit=limit + 1)
    items = [AuditEvent(**dict(r)) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = pagination.encode([items[-1].at.isoformat(), items[-1].id])
    return AuditList(items=items, next_cursor=next_cursor)
