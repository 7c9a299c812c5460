"""``create_app(settings)``: routers, lifespan and error handlers. ``uvicorn app.main:app`` serves
the app built from the environment on first access, after the start-up checks (so importing this
module connects to nothing and reads no settings)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logging as app_logging
from app.archives.router import router as archives_router
from app.audit.router import router as audit_router
from app.audit.trail import AuditTrail
from app.backup.router import router as backup_router
from app.config import TARGET_NAME_RE, ConfigError, Role, Settings, load_settings, report
from app.dependencies import required_role
from app.docs import openapi as docs_openapi
from app.docs import ui as docs_ui
from app.errors import V1_ERRORS, Forbidden, Problem, Unauthorized, install_handlers, problem
from app.health.router import router as health_router
from app.jobs.router import router as jobs_router
from app.lifespan import lifespan, preflight
from app.maintenance.router import router as maintenance_router
from app.monitoring.router import router as monitoring_router
from app.restore.router import router as restore_router
from app.security import authenticate, authorize
from app.targets.router import router as targets_router

DESCRIPTION = """pgvault keeps PostgreSQL databases recoverable: encrypted streaming backups,
an archive catalogue, verified restores, retention and monitoring snapshots.

Every `/v1` call needs `Authorization: Bearer <token>` (use **Authorize**). Errors are
`application/problem+json`."""


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Payload too large",
                           f"request bodies are limited to {self.limit} bytes", "payload-too-large")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class V1Gate:
    """Authenticate every ``/v1`` request, and look its target up, before routing.

    FastAPI validates a request body before it runs dependencies, so without this gate a
    malformed or missing body would earn a 422 before a missing token earned its 401, a role too
    low its 403, or an unknown target its 404. Each route still checks its role as well (and so
    shows it in the OpenAPI document).
    """

    def __init__(self, app: ASGIApp, settings: Settings,
                 roles: list[tuple[APIRoute, Role]]) -> None:
        self.app = app
        self.settings = settings
        self.roles = roles

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/v1/"):
            headers = dict(scope.get("headers", []))
            raw = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = raw.partition(" ")
            try:
                principal = authenticate(token.strip() if scheme.lower() == "bearer" else None,
                                         self.settings.api_tokens)
                authorize(principal, self._role(scope))
            except (Unauthorized, Forbidden) as exc:
                await problem(exc.status, exc.title, exc.detail, exc.slug)(scope, receive, send)
                return
            parts = path.split("/")
            if (len(parts) > 3 and parts[2] == "targets" and TARGET_NAME_RE.match(parts[3])
                    and parts[3] not in self.settings.targets):
                await problem(404, "Not found", f"no target named {parts[3]!r}",
                              "not-found")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _role(self, scope: Scope) -> Role:
        for route, role in self.roles:
            if route.matches(scope)[0] == Match.FULL:
                return role
        return "viewer"  # no such route: any valid token earns the 404 or 405


V1_ROUTERS = (targets_router, backup_router, archives_router, restore_router, maintenance_router,
              monitoring_router, jobs_router, audit_router)


def v1_roles() -> list[tuple[APIRoute, Role]]:
    """Each ``/v1`` route with the role it demands. A router carries its full prefix, so its own
    routes match request paths as they arrive."""
    return [(r, role) for router in V1_ROUTERS for r in router.routes
            if isinstance(r, APIRoute) and (role := required_role(r.dependant)) is not None]


def create_app(settings: Settings) -> FastAPI:
    app_logging.configure(secrets=settings.secrets())
    app = FastAPI(title="pgvault", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  **_docs_options())
    app.state.settings = settings
    install_handlers(app)
    app.include_router(health_router)
    for router in V1_ROUTERS:
        app.include_router(router, responses=V1_ERRORS)
    _add_problem_schema(app)
    _install_docs(app)
    app.add_middleware(V1Gate, settings=settings, roles=v1_roles())
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    # Outermost: refusals by the gate and the body limit are audited and logged too.
    app.add_middleware(AuditTrail, settings=settings, routes=[r for r, _ in v1_roles()])
    app.add_middleware(app_logging.RequestLog)
    return app


def _add_problem_schema(app: FastAPI) -> None:
    """Put the Problem schema in the OpenAPI components, where V1_ERRORS points."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
                Problem.model_json_schema())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _docs_options() -> dict[str, Any]:
    """FastAPI's own /docs and /redoc load their scripts from a CDN: off, see _install_docs.
    Operation ids are short (``startBackup``), for client generators."""
    return {"docs_url": None, "redoc_url": None,
            "generate_unique_id_function": docs_openapi.operation_id}


def _install_docs(app: FastAPI) -> None:
    """Swagger UI and ReDoc from assets installed with pgvault (app/docs/ui.py); each operation's
    role and the job result models in the document (app/docs/openapi.py)."""
    docs_ui.install(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # generate() caches what polish amends
            docs_openapi.polish(generate(), [health_router, *V1_ROUTERS])
        return generate()

    app.openapi = openapi  # type: ignore[method-assign]


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        app_logging.configure()
        try:
            settings = load_settings()
            preflight(settings)  # the server's start-up problems: one line each, exit code 2
            _app = create_app(settings)
        except ConfigError as exc:
            report(exc)
            raise SystemExit(2) from None
    return _app
