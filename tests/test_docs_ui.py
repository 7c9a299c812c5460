"""/docs and /redoc work in a closed network: every page and asset they load is served by
pgvault itself, and none names another host (SPEC 2.13). The browser-level proof, with every
request a real page makes logged, is bench/ui_check.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from app.config import Settings
from app.main import create_app

BASE = "http://pgvault.internal"
# A page's own text must not point off the host: an absolute URL or a protocol-relative one.
ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)['"]?\s*\)|@import\s+['"]([^'"]+)['"]""")
CDN_HOSTS = ("cdn.jsdelivr.net", "unpkg.com", "fonts.googleapis.com", "fonts.gstatic.com",
             "cdnjs.cloudflare.com", "fastapi.tiangolo.com")


class _Refs(HTMLParser):
    """Every URL a page loads (script, stylesheet, icon, image) and its inline script text."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for attr in ("src", "href"):
            if found.get(attr):
                self.urls.append((tag, str(found[attr])))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline.append(data)


@pytest.fixture
async def docs_client() -> AsyncIterator[httpx.AsyncClient]:
    # The pages need no database: no lifespan, placeholder settings.
    settings = Settings(_env_file=None, database_url="postgresql://x@localhost/x",
                        storage_url="file:///nonexistent", gpg_home="/nonexistent",
                        gpg_recipients=["0" * 40])
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


def _same_host(url: str) -> bool:
    parts = urlsplit(urljoin(BASE + "/", url))
    return parts.scheme in ("http", "data") and parts.netloc in ("pgvault.internal", "")


@pytest.mark.parametrize(("page", "expected_types"), [
    ("/docs", {"text/css", "javascript", "image/png"}),
    ("/redoc", {"javascript", "image/png"}),
])
async def test_docs_pages_load_only_assets_served_here(docs_client: httpx.AsyncClient,
                                                       page: str,
                                                       expected_types: set[str]) -> None:
    html = await docs_client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    refs = _Refs()
    refs.feed(html.text)
    assert refs.urls, "the page loads nothing: the parser missed its assets"
    offsite = [u for _, u in refs.urls if not _same_host(u)]
    assert not offsite, f"{page} loads from another host: {offsite}"
    inline = "\n".join(refs.inline)
    assert not ABSOLUTE_URL.search(inline), f"{page}'s inline script names a host: {inline}"
    assert not any(host in html.text for host in CDN_HOSTS)

    seen_types = set()
    for _, url in refs.urls:
        asset = await docs_client.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        ctype = asset.headers["content-type"]
        seen_types |= {t for t in expected_types if t in ctype}
        assert len(asset.content) > 500, url  # a real bundle, not an empty placeholder
        if "css" in ctype:
            for match in CSS_URL.finditer(asset.text):
                ref = match.group(1) or match.group(2)
                assert ref.startswith("data:") or _same_host(ref), f"{url} loads {ref}"
        if "javascript" in ctype:
            # A bundle carries many URLs as text (licences, links); the loaders that would
            # fetch from a CDN are what must be absent. The browser check logs real requests.
            assert not any(host in asset.text for host in CDN_HOSTS), url
    assert seen_types == expected_types, f"{page}: assets served as {seen_types}"


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_pages_may_load_from_no_other_origin(docs_client: httpx.AsyncClient,
                                                   page: str) -> None:
    # ReDoc's bundle shows a logo from cdn.redoc.ly whatever its options: the policy makes the
    # browser refuse it (and anything else off the host) before any request is sent.
    policy = (await docs_client.get(page)).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    for name in ("script-src", "style-src", "img-src", "font-src", "connect-src", "worker-src"):
        sources = directives[name].split()
        assert set(sources) <= {"'self'", "'unsafe-inline'", "data:", "blob:"}, (name, sources)


async def test_swagger_ui_calls_no_online_validator(docs_client: httpx.AsyncClient) -> None:
    # Swagger UI's default validatorUrl fetches a badge from validator.swagger.io.
    html = (await docs_client.get("/docs")).text
    assert '"validatorUrl": null' in html


async def test_favicon_and_oauth2_redirect_are_served(docs_client: httpx.AsyncClient) -> None:
    icon = await docs_client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
    assert icon.content.startswith(b"\x89PNG")
    redirect = await docs_client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and not ABSOLUTE_URL.search(redirect.text)
