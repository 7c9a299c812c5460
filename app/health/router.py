from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from app.dependencies import ServicesDep
from app.errors import problem, problem_response
from app.health import service

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


READY_EXAMPLE = {"status": "ok", "checks": {
    "metadata_db": {"ok": True}, "storage": {"ok": True},
    "gpg": {"ok": True, "recipients": 1, "private_key": True}}}


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={
    200: {"description": "every dependency is usable",
          "content": {"application/json": {"example": READY_EXAMPLE}}},
    503: problem_response("a dependency is not usable; the problem's `checks` say which")})
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when the metadata database, storage and gpg keys are usable, else 503 with what fails."""
    checks = await service.readiness(services)
    if all(c["ok"] for c in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    return problem(503, "Not ready", service.unready_detail(checks), "not-ready", checks=checks)


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition format",
    "content": {"text/plain": {"example": (
        "# HELP pgvault_backup_last_success_timestamp_seconds Finish time of the last "
        "successful backup\n"
        "# TYPE pgvault_backup_last_success_timestamp_seconds gauge\n"
        "pgvault_backup_last_success_timestamp_seconds{target=\"demo\"} 1.764e+09\n")}}}})
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text: jobs by kind and outcome with durations; per target backups, archives,
    verifications and RPO."""
    return Response(await service.metrics_text(services), media_type=CONTENT_TYPE_LATEST)
