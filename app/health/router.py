from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.dependencies import ServicesDep
from app.health import service

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is not usable"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when the metadata database, storage and gpg keys are usable, else 503 with what fails."""
    checks: dict[str, Any] = await asyncio.wait_for(service.readiness(services), 15)
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text: last backup time and size per target, job counts and durations, RPO."""
    return Response(await service.metrics_text(services), media_type=CONTENT_TYPE_LATEST)
