"""The error hierarchy and the one handler that renders it as problem+json (RFC 9457).

Domain code raises a subclass of :class:`PgVaultError`; it carries its HTTP status, so no layer
below the routers knows about HTTP. Anything else that escapes becomes a 500 whose detail says
nothing about internals.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.steps import Step

log = structlog.get_logger("pgvault.errors")

PROBLEM = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details; every error answer has this shape."""

    type: str
    title: str
    status: int
    detail: str


def problem_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


V1_ERRORS: dict[int | str, dict[str, Any]] = {
    401: problem_response("missing or invalid bearer token"),
    403: problem_response("the token's role is too low"),
    404: problem_response("unknown target, archive or job"),
    422: problem_response("validation failure"),
}

STORAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    503: problem_response("storage cannot be reached or failed; retry later"),
}


class PgVaultError(Exception):
    """Base of every error pgvault raises on purpose."""

    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(PgVaultError):
    status, title, slug = 404, "Not found", "not-found"


class Conflict(PgVaultError):
    status, title, slug = 409, "Conflict", "conflict"


class InvalidRequest(PgVaultError):
    status, title, slug = 422, "Invalid request", "validation"


class Unauthorized(PgVaultError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(PgVaultError):
    status, title, slug = 403, "Forbidden", "forbidden"


class Unavailable(PgVaultError):
    status, title, slug = 503, "Service unavailable", "unavailable"


class TimedOut(PgVaultError):
    status, title, slug = 504, "Timed out", "timeout"


class StepFailed(PgVaultError):
    """A step of a job failed; ``detail`` says which and why, in an operator's words."""

    title, slug = "Step failed", "step-failed"

    def __init__(self, step: Step | str, detail: str) -> None:
        """``step``: a :class:`~app.steps.Step`; text only for a step named by its object
        (maintenance's ``refresh <view>``)."""
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.cause = detail


class StorageUnavailable(StepFailed):
    """Storage could not be reached or failed for now: 503 on an API path; in a job, a failed
    step like any other (jobs catch :class:`StepFailed`)."""

    status, title, slug = 503, "Storage unavailable", "storage-unavailable"


def problem(status: int, title: str, detail: str, slug: str, **extra: Any) -> JSONResponse:
    body = {"type": f"https://pgvault.dev/problems/{slug}", "title": title, "status": status,
            "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(PgVaultError)
    async def _domain(_: Request, exc: PgVaultError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.slug, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": _location(e.get("loc", ())), "msg": str(e.get("msg", ""))[:300]}
            for e in exc.errors()[:20]
        ]
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "invalid request"
        return problem(422, "Invalid request", detail[:1000], "validation", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail),
                       "http")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", error_type=type(exc).__name__)
        return problem(500, "Internal error", "unexpected error; see the service log", "internal")
