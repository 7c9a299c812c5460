"""``/docs`` (Swagger UI) and ``/redoc`` served entirely by pgvault, with no request off the host.

FastAPI's own pages load their scripts from a CDN, so in a closed network they are blank. The
assets here come from the ``fastapi-offline`` package (Swagger UI 5 and ReDoc 2 standalone
bundles, kept current by its maintainer); Swagger UI 5 is needed to render an OpenAPI 3.1
document. Swagger UI's online validator badge would fetch from validator.swagger.io: it is off.
ReDoc 2 shows Redocly's logo from cdn.redoc.ly unconditionally: the pages' Content-Security-Policy
lets them load nothing from any other origin, so the browser never sends that request (nor any
other one a future bundle might add).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(str(resources.files("fastapi_offline").joinpath("static")))
STATIC_URL = "/static/docs"
FAVICON = f"{STATIC_URL}/favicon.png"
# Inline scripts and styles: FastAPI's page starts Swagger UI inline, ReDoc styles inline; blob:
# for ReDoc's search worker. Nothing from any other origin.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
       "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
       "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'self'; base-uri 'self'; "
       "form-action 'self'")
SWAGGER_PARAMETERS = {
    "persistAuthorization": True,  # the token survives a page reload
    "validatorUrl": None,  # the badge would call validator.swagger.io
    "displayOperationId": True,  # the names client generators give the calls
    "tryItOutEnabled": False,  # a person opts in per call
}


def install(app: FastAPI) -> None:
    """Add ``/docs``, ``/docs/oauth2-redirect``, ``/redoc``, ``/favicon.ico`` and the assets.
    The app must be built with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    app.mount(STATIC_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _confined(get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css", swagger_favicon_url=FAVICON,
            oauth2_redirect_url=redirect_url, swagger_ui_parameters=SWAGGER_PARAMETERS))

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _confined(get_swagger_ui_oauth2_redirect_html())

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _confined(get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc",
                                        redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
                                        redoc_favicon_url=FAVICON, with_google_fonts=False))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # Browsers ask for /favicon.ico whatever the page links; answer rather than 404.
        return FileResponse(ASSETS / "favicon.png", media_type="image/png")


def _confined(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page
