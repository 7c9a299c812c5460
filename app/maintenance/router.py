from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, ConfigDict, Field

from app.backup.router import IdempotencyKey
from app.dependencies import Operator, ServicesDep, TargetName, known_target
from app.jobs import service as jobs
from app.jobs.schemas import Job

router = APIRouter(prefix="/v1/targets", tags=["maintenance"])


class MaintenanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: Literal["analyze", "refresh_materialized_views"] = Field(
        description="analyze: ANALYZE every table; refresh_materialized_views: REFRESH each one, "
                    "CONCURRENTLY where a unique index allows")


MAINTENANCE_EXAMPLES: dict[str, Any] = {
    "analyze": {"summary": "ANALYZE every table", "value": {"task": "analyze"}},
    "refresh": {"summary": "refresh every materialized view",
                "value": {"task": "refresh_materialized_views"}},
}


@router.post("/{target}/maintenance", response_model=Job, status_code=202)
async def start_maintenance(target: TargetName,
                            body: Annotated[MaintenanceRequest,
                                            Body(openapi_examples=MAINTENANCE_EXAMPLES)],
                            services: ServicesDep,
                            caller: Operator, response: Response,
                            idempotency_key: IdempotencyKey = None) -> Job:
    """Run a maintenance task as a job: ANALYZE every table, or refresh materialized views."""
    job = await jobs.create(services, caller, kind="maintenance",
                            target=known_target(services, target), params={"task": body.task},
                            summary=f"{body.task} of {target} queued",
                            idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job
