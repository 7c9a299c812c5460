from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from app.dependencies import ServicesDep, TargetName, Viewer, known_target
from app.errors import problem_response
from app.monitoring import service

router = APIRouter(prefix="/v1/targets", tags=["monitoring"])


@router.get("/{target}/monitoring/{view}",
            responses={503: problem_response("the target is unreachable"),
                       504: problem_response("the target did not answer within the timeout")})
async def monitoring_view(
    target: TargetName, services: ServicesDep, _: Viewer,
    view: Annotated[str, Path(pattern=r"^[a-z_]{1,32}$",
                              description="connections, bloat, indexes, tables or snapshot")],
    limit: Annotated[int, Query(ge=1, le=500)] = service.DEFAULT_LIMIT,
) -> dict[str, Any]:
    """A monitoring view of the target; `snapshot` has all of them and a summary for bots."""
    return await service.get_view(services.monitoring, services.settings,
                                  known_target(services, target), view, limit=limit)
