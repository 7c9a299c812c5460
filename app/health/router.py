from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.dependencies import ServicesDep
from app.errors import problem, problem_response
from app.health import service

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: problem_response(
    "a dependency is not usable; the problem's `checks` say which")})
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when the metadata database, storage and gpg keys are usable, else 503 with what fails."""
    checks = await service.readiness(services)
    if all(c["ok"] for c in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    return problem(503, "Not ready", service.unready_detail(checks), "not-ready", checks=checks)


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text: jobs by kind and outcome with durations; per target backups, archives,
    verifications and RPO."""
    return Response(await service.metrics_text(services), media_type=CONTENT_TYPE_LATEST)
