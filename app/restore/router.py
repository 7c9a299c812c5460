from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from app.backup.router import IdempotencyKey
from app.dependencies import Admin, BackupId, Operator, ServicesDep, TargetName, known_target
from app.errors import STORAGE_ERRORS, problem_response
from app.jobs.schemas import Job
from app.restore import service
from app.restore.schemas import RESTORE_EXAMPLES, VERIFY_EXAMPLES, RestoreRequest, VerifyRequest

router = APIRouter(prefix="/v1/targets", tags=["restores"])


@router.post("/{target}/restores", response_model=Job, status_code=202,
             responses={409: problem_response(
                 "the archive is unreadable, or the database already exists"),
                 **STORAGE_ERRORS})
async def start_restore(target: TargetName,
                        body: Annotated[RestoreRequest, Body(openapi_examples=RESTORE_EXAMPLES)],
                        services: ServicesDep,
                        caller: Admin, response: Response,
                        idempotency_key: IdempotencyKey = None) -> Job:
    """Restore an archive into a new database (default) or in place; the result has a checklist."""
    job = await service.start_restore(services, caller, known_target(services, target), body,
                                       idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.post("/{target}/archives/{backup_id}/verify", response_model=Job, status_code=202,
             responses={409: problem_response("the archive is unreadable"),
                        **STORAGE_ERRORS})
async def start_verify(target: TargetName, backup_id: BackupId, services: ServicesDep,
                       caller: Operator, response: Response,
                       body: Annotated[VerifyRequest | None,
                                       Body(openapi_examples=VERIFY_EXAMPLES)] = None,
                       idempotency_key: IdempotencyKey = None) -> Job:
    """Verify an archive: checksum (hash, decrypt, TOC) or restore (into a scratch database)."""
    job = await service.start_verify(services, caller, known_target(services, target), backup_id,
                                      body or VerifyRequest(), idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job
