"""The OpenAPI document as a client generator's input (SPEC 2.13): short operation ids, the role
each operation needs (``x-required-role`` and a line in its description), and the job result
models in the components."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute

from app.dependencies import required_role
from app.jobs import results

# Where the handler's name does not make the id a client should call.
OPERATION_IDS = {
    "start_verify": "verifyArchive",
    "monitoring_view": "getMonitoringView",
    "job_events": "streamJobEvents",
}

ROLE_TEXT = {
    None: "**Role:** none; no token needed.",
    "viewer": "**Role:** `viewer` or higher.",
    "operator": "**Role:** `operator` or higher.",
    "admin": "**Role:** `admin`.",
}


def operation_id(route: APIRoute) -> str:
    """``start_backup`` -> ``startBackup``, unless OPERATION_IDS names it."""
    if route.name in OPERATION_IDS:
        return OPERATION_IDS[route.name]
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def polish(schema: dict[str, Any], routers: Iterable[APIRouter]) -> None:
    """Add each operation's role, and the job result models, to a generated document. The
    routers carry their full prefixes, so their paths are the document's."""
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        role = required_role(route.dependant)
        for method in route.methods or ():
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            operation["x-required-role"] = role or "none"
            text = operation.get("description", "").rstrip()
            operation["description"] = f"{text}\n\n{ROLE_TEXT[role]}".lstrip()
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model_schema in results.COMPONENTS.items():
        if components.get(name, model_schema) != model_schema:
            raise RuntimeError(f"two different schemas named {name} in the OpenAPI document")
        components[name] = model_schema
