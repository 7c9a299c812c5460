from __future__ import annotations

from fastapi import APIRouter

from app.dependencies import ServicesDep, TargetName, Viewer, known_target
from app.targets import service
from app.targets.schemas import TargetList, TargetStatus

router = APIRouter(prefix="/v1/targets", tags=["targets"])


@router.get("", response_model=TargetList)
async def list_targets(services: ServicesDep, _: Viewer) -> TargetList:
    """Every configured target with its last backup and RPO state."""
    return await service.list_targets(services)


@router.get("/{target}", response_model=TargetStatus)
async def get_target(target: TargetName, services: ServicesDep, _: Viewer) -> TargetStatus:
    """One target: redacted DSN, last good backup, RPO state, schedules."""
    return await service.get_target(services, known_target(services, target))
