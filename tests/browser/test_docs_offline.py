"""/docs and /redoc in a real browser with every other host unreachable: both render, and no
request the pages make leaves the host. Skipped where Debian's chromium and chromedriver (or
selenium) are not installed. The full manual check (Authorize, Try it out, Execute, 202) is
bench/ui_check.py."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.config import Settings
from app.main import create_app

if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
uvicorn = pytest.importorskip("uvicorn")

from bench.ui_check import BLOCKED, browser, offsite, requests_made, wait  # noqa: E402


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The app on a live port, lifespan off: the pages and the document need no database."""
    settings = Settings(_env_file=None, database_url="postgresql://x@localhost/x",
                        storage_url="file:///nonexistent", gpg_home="/nonexistent",
                        gpg_recipients=["0" * 40])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    chrome = browser()
    yield chrome
    chrome.quit()


def test_docs_and_redoc_render_with_no_request_off_the_host(base_url: str, driver: Any) -> None:
    made: dict[str, str] = {}
    driver.get(f"{base_url}/docs")
    wait(driver, "#operations-backups-startBackup", 60)
    wait(driver, "#operations-restores-startRestore")
    requests_made(driver, made)
    driver.get(f"{base_url}/redoc")
    wait(driver, "[id^='tag/']", 60)
    time.sleep(0.5)  # the sidebar's logo (refused by the page's policy) comes last
    requests_made(driver, made)
    sent = [url for rid, url in made.items() if rid not in BLOCKED]
    assert any(url.endswith("/openapi.json") for url in sent), sent
    assert any(url.endswith("/swagger-ui-bundle.js") for url in sent), sent
    assert any(url.endswith("/redoc.standalone.js") for url in sent), sent
    assert not offsite(sent), f"requests left the host: {offsite(sent)}"
