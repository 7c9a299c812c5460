"""Browser check of the Swagger UI (issue 8, SPEC 2.13): a manual check, not part of the suite.

    .venv/bin/python bench/ui_check.py [--screens DIR] [--port 8765]

What it does, as a person would:
1. starts the service the way ``make run`` does (``python -m app.dev``: demo target ``demo``,
   archives and the dev token under ``.dev/``), except that the metadata lives in a throwaway
   database of its own (dropped at the end) and the port is free;
2. opens /docs and /redoc in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
   driven by selenium: nothing is downloaded) with every host but 127.0.0.1 unresolvable and
   every non-loopback request sent to a proxy that does not exist;
3. Authorize with the dev token, then "Try it out" on startBackup for target ``demo``, Execute,
   and waits for 202; shows that "Try it out" on startRestore offers only a ``backup_id``;
4. logs every request the pages made (Chrome's network log) and fails if one left the host.
Screenshots (PNG) go to --screens. Exit 0 when all of it held.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("PGVAULT_DEV_PG", "postgresql://postgres@127.0.0.1:5432")
LOCAL_HOSTS = {"127.0.0.1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def psql(sql: str) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", f"{PG}/postgres", "-c", sql],
                   check=True, capture_output=True)


def start_service(port: int, metadata_db: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m app.dev`` on ``port``; returns the process and the dev token it printed."""
    env = {**os.environ, "PGVAULT_DEV_PORT": str(port), "PYTHONPATH": str(ROOT),
           "PGVAULT_DATABASE_URL": f"{PG}/{metadata_db}"}
    proc = subprocess.Popen([sys.executable, "-m", "app.dev"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    token = None
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        if "dev token" in line:
            token = line.split(":", 1)[1].strip()
        if "Uvicorn running" in line or "Application startup complete" in line:
            break
        if time.monotonic() > deadline:
            raise SystemExit("the service did not start in 300 s")
    if token is None or proc.poll() is not None:
        raise SystemExit(f"the service did not start (exit {proc.poll()})")
    # Keep draining its output so it never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    return proc, token


def browser() -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in [
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100",
        # Nothing but loopback resolves; whatever is not loopback goes to a proxy that is not
        # there. Chromium sends loopback direct, whatever the proxy.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-sync", "--disable-default-apps", "--disable-extensions",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def requests_made(driver: WebDriver, seen: dict[str, str]) -> dict[str, str]:
    """Every request the pages made since the last call, by id: its URL, and whether the
    browser blocked it itself (Content-Security-Policy) so that it was never sent."""
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            seen[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            BLOCKED[params["requestId"]] = params["blockedReason"]
    return seen


BLOCKED: dict[str, str] = {}  # request id -> why the browser refused to send it


def offsite(urls: list[str]) -> list[str]:
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob")
            and urlsplit(u).hostname not in LOCAL_HOSTS]


def wait(driver: WebDriver, css: str, timeout: float = 30) -> WebElement:
    element: WebElement = WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css)))
    return element


def click(driver: WebDriver, element: WebElement) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def shot(driver: WebDriver, screens: Path, name: str) -> Path:
    path = screens / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def try_backup(driver: WebDriver, base: str, token: str, screens: Path) -> str:
    driver.get(f"{base}/docs")
    wait(driver, ".swagger-ui .info .title")
    wait(driver, "#operations-backups-startBackup")
    shot(driver, screens, "01-docs-offline.png")

    click(driver, wait(driver, ".swagger-ui .auth-wrapper button.authorize"))
    wait(driver, ".modal-ux input").send_keys(token)
    click(driver, driver.find_element(By.CSS_SELECTOR, ".modal-ux .auth-btn-wrapper .authorize"))
    wait(driver, ".modal-ux .auth-btn-wrapper .btn-done")
    shot(driver, screens, "02-authorized.png")
    click(driver, driver.find_element(By.CSS_SELECTOR, ".modal-ux .auth-btn-wrapper .btn-done"))

    op = "#operations-backups-startBackup"
    click(driver, wait(driver, f"{op} .opblock-summary-control"))
    click(driver, wait(driver, f"{op} .try-out__btn"))
    target = wait(driver, f'{op} tr[data-param-name="target"] input')
    target.clear()
    target.send_keys("demo")
    body = driver.find_element(By.CSS_SELECTOR, f"{op} textarea.body-param__text")
    print(f"startBackup body Try it out sends: {body.get_attribute('value')!r}")
    click(driver, driver.find_element(By.CSS_SELECTOR, f"{op} button.execute"))
    status = wait(driver, f"{op} .live-responses-table .response .response-col_status", 60)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});",
                          driver.find_element(By.CSS_SELECTOR, f"{op} .responses-wrapper"))
    time.sleep(0.5)
    shot(driver, screens, "03-startBackup-202.png")
    return status.text.strip()


def restore_example(driver: WebDriver, screens: Path) -> str:
    op = "#operations-restores-startRestore"
    click(driver, wait(driver, f"{op} .opblock-summary-control"))
    click(driver, wait(driver, f"{op} .try-out__btn"))
    body = wait(driver, f"{op} textarea.body-param__text")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", body)
    time.sleep(0.5)
    shot(driver, screens, "04-startRestore-try-it-out-body.png")
    return str(body.get_attribute("value"))


def redoc(driver: WebDriver, base: str, screens: Path) -> None:
    driver.get(f"{base}/redoc")
    wait(driver, "[id^='tag/']", 60)
    time.sleep(1)
    shot(driver, screens, "05-redoc-offline.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--screens", type=Path, default=ROOT.parent / "screens")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    args.screens.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    metadata_db = f"pgvault_uicheck_{secrets.token_hex(3)}"
    psql(f'CREATE DATABASE "{metadata_db}"')  # a fixed-shape name made here, not user input
    proc: subprocess.Popen[str] | None = None
    driver: WebDriver | None = None
    made: dict[str, str] = {}
    failures: list[str] = []
    try:
        proc, token = start_service(port, metadata_db)
        driver = browser()
        status = try_backup(driver, base, token, args.screens)
        print(f"startBackup answered {status}")
        if status != "202":
            failures.append(f"startBackup answered {status}, not 202")
        restore_body = json.loads(restore_example(driver, args.screens))
        print(f"startRestore body Try it out would send: {restore_body}")
        if set(restore_body) != {"backup_id"}:
            failures.append(f"restore example sends more than a backup_id: {restore_body}")
        requests_made(driver, made)
        redoc(driver, base, args.screens)
        requests_made(driver, made)
        for entry in driver.get_log("browser"):
            if entry["level"] == "SEVERE":
                print(f"browser console: {entry['message']}")
    finally:
        if driver is not None:
            driver.quit()
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=40)
        psql(f'DROP DATABASE IF EXISTS "{metadata_db}" WITH (FORCE)')
    urls = [url for rid, url in made.items() if rid not in BLOCKED]
    print(f"the pages made {len(urls)} requests, to: "
          f"{sorted({urlsplit(u).netloc or urlsplit(u).scheme for u in urls})}")
    for rid, reason in BLOCKED.items():
        print(f"refused by the browser before sending ({reason}): {made.get(rid)}")
    if offsite(urls):
        failures.append(f"requests left the host: {offsite(urls)}")
    if not urls:
        failures.append("no request was logged: the network log is not working")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("OK" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
