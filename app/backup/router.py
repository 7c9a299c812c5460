from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response
from pydantic import BaseModel, ConfigDict, Field

from app.backup import service
from app.dependencies import Operator, ServicesDep, TargetName, known_target
from app.errors import problem_response
from app.jobs.schemas import Job

router = APIRouter(prefix="/v1/targets", tags=["backups"])

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                               pattern=r"^[\x21-\x7e]+$")]


class BackupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(None, max_length=100, pattern=r"^[\w .:@/+-]*$",
                              description="free text shown in the archive listing")


BACKUP_EXAMPLES: dict[str, Any] = {
    "plain": {"summary": "a backup with no label", "value": {}},
    "labelled": {"summary": "a backup labelled for the archive listing",
                 "value": {"label": "before release 4.2 migration"}},
}


@router.post("/{target}/backups", response_model=Job, status_code=202,
             responses={409: problem_response("a backup of this target is already running")})
async def start_backup(target: TargetName, services: ServicesDep, caller: Operator,
                       response: Response, idempotency_key: IdempotencyKey = None,
                       body: Annotated[BackupRequest | None,
                                       Body(openapi_examples=BACKUP_EXAMPLES)] = None) -> Job:
    """Start a backup of the target; follow it at the job's Location."""
    known_target(services, target)
    job = await service.start_backup(services, caller, target,
                                     label=body.label if body else None,
                                     idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job
