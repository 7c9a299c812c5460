from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.dependencies import Operator, ServicesDep, Viewer
from app.jobs import service
from app.jobs.schemas import TERMINAL, Job, JobKind, JobList, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=JobList)
async def list_jobs(
    services: ServicesDep, _: Viewer,
    target: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_-]{0,62}$")] = None,
    kind: JobKind | None = None,
    status: JobStatus | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    """Jobs, newest first; filter by target, kind and status."""
    return await service.list_jobs(services, target=target, kind=kind, status=status,
                                   cursor=cursor, limit=limit)


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: UUID, services: ServicesDep, _: Viewer) -> Job:
    """One job: status, phase, progress, result."""
    return await service.get(services, job_id)


@router.post("/{job_id}/cancel", response_model=Job, status_code=202)
async def cancel_job(job_id: UUID, services: ServicesDep, caller: Operator) -> Job:
    """Cancel a job: queued ones at once, running ones by their worker (processes killed)."""
    return await service.cancel(services, caller, job_id)


async def existing_job(job_id: UUID, services: ServicesDep, _: Viewer) -> Job:
    return await service.get(services, job_id)


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(services: ServicesDep,
                     job: Annotated[Job, Depends(existing_job)]) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: one per change of status, phase or progress, until the job ends."""
    seen = None
    while True:
        state = (job.status, job.phase, job.progress.bytes_done, job.progress.bytes_uploaded)
        if state != seen:
            seen = state
            yield ServerSentEvent(data=job.model_dump(mode="json"), event=job.status,
                                  id=f"{job.status}:{job.phase}:{job.progress.bytes_done}")
        if job.status in TERMINAL:
            return
        await asyncio.sleep(services.settings.progress_interval_s)
        job = await service.get(services, job.id)
