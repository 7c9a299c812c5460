from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Path, Query

from app.dependencies import ServicesDep, TargetName, Viewer, known_target
from app.errors import problem_response
from app.monitoring import service
from app.monitoring.schemas import MonitoringView, ViewName

router = APIRouter(prefix="/v1/targets", tags=["monitoring"])


@router.get("/{target}/monitoring/{view}",
            responses={503: problem_response("the target is unreachable"),
                       504: problem_response("the target did not answer within the timeout")})
async def monitoring_view(
    target: TargetName, services: ServicesDep, _: Viewer,
    # Documented as the enum it is; checked by the service, so that a view that does not exist
    # stays a 404 (a resource not found) rather than becoming a 422.
    view: Annotated[str, Path(max_length=32, json_schema_extra={"enum": list(get_args(ViewName))},
                              description="which view; `snapshot` has all four and a one-line "
                                          "`summary` for bots")],
    limit: Annotated[int, Query(ge=1, le=500, description="rows per list")] = service.DEFAULT_LIMIT,
) -> MonitoringView:
    """A monitoring view of the target; `snapshot` has all of them and a summary for bots."""
    return await service.get_typed_view(services.monitoring, services.settings,
                                        known_target(services, target), view, limit=limit)
