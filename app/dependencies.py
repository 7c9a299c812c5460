"""Annotated aliases for what handlers need: the resources, the caller with a role, valid ids."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import BACKUP_ID_RE, TARGET_NAME_RE, Role
from app.errors import NotFound
from app.resources import Resources
from app.security import Principal, authenticate, authorize

bearer = HTTPBearer(auto_error=False, description="an API token: Authorization: Bearer <token>")


def get_services(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


# The name predates Resources; kept so that every route's signature stays as it is.
ServicesDep = Annotated[Resources, Depends(get_services)]


def _caller(role: Role):  # type: ignore[no-untyped-def]
    def dependency(
        services: ServicesDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        token = credentials.credentials if credentials else None
        principal = authenticate(token, services.settings.api_tokens)
        return authorize(principal, role)

    dependency.pgvault_role = role  # type: ignore[attr-defined]  # read by main.V1Gate
    return dependency


def required_role(dependant: Any) -> Role | None:
    """The role a route's dependencies demand (None for an open route)."""
    for sub in dependant.dependencies:
        role = getattr(sub.call, "pgvault_role", None) or required_role(sub)
        if role is not None:
            return role
    return None


Viewer = Annotated[Principal, Depends(_caller("viewer"))]
Operator = Annotated[Principal, Depends(_caller("operator"))]
Admin = Annotated[Principal, Depends(_caller("admin"))]

TargetName = Annotated[str, Path(pattern=TARGET_NAME_RE.pattern, max_length=63,
                                 description="a configured target's name")]
BackupId = Annotated[str, Path(pattern=BACKUP_ID_RE.pattern, max_length=23,
                               description="an archive's id, e.g. 20261124T151600Z-k3x9a2")]


def known_target(services: Resources, target: str) -> str:
    if target not in services.settings.targets:
        raise NotFound(f"no target named {target!r}")
    return target
