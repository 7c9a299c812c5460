from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from app.archives import service, suspects
from app.archives.schemas import ArchiveDetail, ArchiveList
from app.backup.router import IdempotencyKey
from app.dependencies import (
    Admin,
    BackupId,
    Operator,
    ServicesDep,
    TargetName,
    Viewer,
    known_target,
)
from app.errors import STORAGE_ERRORS, problem_response
from app.jobs import service as jobs
from app.jobs.schemas import Job

router = APIRouter(prefix="/v1/targets", tags=["archives"])


@router.get("/{target}/archives", response_model=ArchiveList, responses=STORAGE_ERRORS)
async def list_archives(
    target: TargetName, services: ServicesDep, _: Viewer,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ArchiveList:
    """The target's archives from storage, newest first, with their last verification."""
    return await service.list_archives(services, known_target(services, target), cursor, limit)


@router.get("/{target}/archives/{backup_id}", response_model=ArchiveDetail,
            responses=STORAGE_ERRORS)
async def get_archive(target: TargetName, backup_id: BackupId, services: ServicesDep,
                      _: Viewer) -> ArchiveDetail:
    """One archive with its manifest."""
    return await service.get_archive(services, known_target(services, target), backup_id)


@router.delete("/{target}/archives/{backup_id}", status_code=204,
               responses={409: problem_response("retention minimums forbid it"),
                          **STORAGE_ERRORS})
async def delete_archive(target: TargetName, backup_id: BackupId, services: ServicesDep,
                         caller: Admin) -> Response:
    """Delete one archive, unless the target would keep fewer good archives than its minimum."""
    await service.delete_archive(services, caller, known_target(services, target), backup_id)
    return Response(status_code=204)


class ArchiveReview(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"suspect": False, "reason": "orders archived to cold storage on purpose (ticket 4711)"}]})
    suspect: Literal[False] = Field(description="false: the change was intended; clear the mark")
    reason: str | None = Field(None, max_length=500, description="why, for the audit log")


@router.patch("/{target}/archives/{backup_id}", response_model=ArchiveDetail,
              responses={409: problem_response("the archive is not suspect"),
                         **STORAGE_ERRORS})
async def review_archive(target: TargetName, backup_id: BackupId, body: ArchiveReview,
                         services: ServicesDep, caller: Operator) -> ArchiveDetail:
    """Clear a suspect archive: its anomalies were intended, and it counts as good again."""
    return await suspects.clear_suspect(services, caller, known_target(services, target),
                                        backup_id, body.reason)


class RetentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dry_run: bool = Field(False, description="report exactly what would be deleted, delete nothing")


RETENTION_EXAMPLES: dict[str, Any] = {
    "dry_run": {"summary": "preview: what would be deleted", "value": {"dry_run": True}},
    "apply": {"summary": "delete expired and incomplete archives", "value": {"dry_run": False}},
}


@router.post("/{target}/retention", response_model=Job, status_code=202)
async def start_retention(target: TargetName, services: ServicesDep, caller: Admin,
                          response: Response,
                          body: Annotated[RetentionRequest | None,
                                          Body(openapi_examples=RETENTION_EXAMPLES)] = None,
                          idempotency_key: IdempotencyKey = None) -> Job:
    """Apply the target's retention: expired and incomplete archives, stale uploads."""
    dry_run = body.dry_run if body else False
    job = await jobs.create(services, caller, kind="retention",
                            target=known_target(services, target), params={"dry_run": dry_run},
                            summary=f"retention of {target} queued"
                                    + (" (dry run)" if dry_run else ""),
                            idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


class ReconcileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deep: bool = Field(False, description="also read every object back and check its SHA-256 "
                                          "(reads every archive in every location); by default "
                                          "objects are checked by size, from listings")


RECONCILE_EXAMPLES: dict[str, Any] = {
    "shallow": {"summary": "check by size, repair what is missing", "value": {"deep": False}},
    "deep": {"summary": "check every object's SHA-256 too", "value": {"deep": True}},
}


@router.post("/{target}/reconcile", response_model=Job, status_code=202)
async def start_reconcile(target: TargetName, services: ServicesDep, caller: Operator,
                          response: Response,
                          body: Annotated[ReconcileRequest | None,
                                          Body(openapi_examples=RECONCILE_EXAMPLES)] = None,
                          idempotency_key: IdempotencyKey = None) -> Job:
    """Check every archive in every storage location and copy what is missing or damaged."""
    deep = body.deep if body else False
    job = await jobs.create(services, caller, kind="reconcile",
                            target=known_target(services, target), params={"deep": deep},
                            summary=f"{'deep ' if deep else ''}reconcile of {target} queued",
                            idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job
