"""No secret reaches a log: the real ``uvicorn app.main:app`` process's output is read whole."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.conftest import TOKENS, auth, dsn, running_app
from tests.served import served_env, uvicorn


async def test_tokens_in_query_strings_never_reach_the_log(
        metadata_db: str, pagila_db: str, gpg_key: tuple[Path, str], tmp_path: Path) -> None:
    viewer, admin = TOKENS["viewer"], TOKENS["admin"]
    with uvicorn(served_env(metadata_db, pagila_db, gpg_key, tmp_path)) as (url, output):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            refused = await client.get(f"/v1/targets?access_token={viewer}")
            ok = await client.get(f"/v1/targets?token={admin}&api_key={viewer}&x=1",
                                  headers=auth("viewer"))
            forbidden = await client.post(f"/v1/targets/pagila/backups?access_token={viewer}",
                                          headers={**auth("viewer"), "X-Request-ID": "bot-42"})
    assert (refused.status_code, ok.status_code, forbidden.status_code) == (401, 200, 403)
    log = output[0]
    assert viewer not in log and admin not in log
    assert "access_token" not in log  # no query string at all, not even redacted
    assert ok.headers["x-request-id"] and forbidden.headers["x-request-id"] == "bot-42"
    requests = [json.loads(line) for line in log.splitlines()
                if line.startswith("{") and '"event": "request"' in line]
    assert {(r["method"], r["path"], r["status"]) for r in requests} >= {
        ("GET", "/v1/targets", 401), ("GET", "/v1/targets", 200),
        ("POST", "/v1/targets/pagila/backups", 403)}
    assert any(r["request_id"] == "bot-42" for r in requests)
    assert all(isinstance(r["duration_ms"], float) for r in requests)


def test_secrets_are_scrubbed_from_tracebacks_and_messages(
        make_settings: Any, pagila_db: str, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What uvicorn logs for an unhandled exception (its message and traceback) and any event
    that carries a credential pass through the same filter as pgvault's own lines."""
    # An in-process uvicorn started by an earlier test leaves its own handlers on uvicorn.error,
    # bound to the stderr of that moment; here the record goes where pgvault's handler writes.
    for name in ("uvicorn", "uvicorn.error"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    password, passphrase = "pw-Zq81-secret", "gpg-passphrase-Zq81"
    create_app(make_settings(
        targets={"pw": {"dsn": dsn(pagila_db, "backup", password)}}, gpg_passphrase=passphrase))
    try:
        raise RuntimeError(f"cannot reach the target as backup:{password} "
                           f"(passphrase {passphrase})")
    except RuntimeError as exc:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)
    logging.getLogger("some.library").warning(
        "retrying GET https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abcdef0123&"
        "X-Amz-Credential=AKIAEXAMPLE with headers Authorization: Bearer tok-xyz-123 to "
        "postgresql://u:other-pw-99@h/db")
    out, err = capfd.readouterr()
    text = out + err
    assert "Exception in ASGI application" in text and "RuntimeError" in text
    for secret in (password, passphrase, "abcdef0123", "AKIAEXAMPLE", "tok-xyz-123",
                   "other-pw-99"):
        assert secret not in text
    assert "as backup:*** (passphrase ***)" in text


def test_settings_repr_hides_webhook_urls() -> None:
    hook = "https://hooks.slack.com/services/T0000/B0000/XXXXsecretXXXX"
    settings = Settings(_env_file=None,  # type: ignore[call-arg]
                        database_url="postgresql://u:dbpw-123@h/db", storage_url="file:///x",
                        gpg_home="/x", gpg_recipients=["0" * 40], webhooks=[{"url": hook}],
                        gpg_passphrase="pass-123")
    text = repr(settings) + str(settings)
    assert "XXXXsecretXXXX" not in text and "dbpw-123" not in text and "pass-123" not in text



async def test_webhook_urls_never_reach_the_log(make_settings: Any,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """A Slack webhook URL is a credential; httpx logs every URL it posts to at INFO."""
    from tests.test_schedules import Receiver

    receiver = Receiver(fail_first=0)
    secret = "B0000/XXXXwebhooksecretXXXX"
    try:
        async with running_app(make_settings(
                webhooks=[{"url": f"{receiver.url}/services/T0000/{secret}"}])) as c:
            services = c.app.state.resources  # type: ignore[attr-defined]
            services.notifier.emit("job.succeeded", {"target": "pagila", "summary": "done"})
            await services.notifier.close()
    finally:
        receiver.server.shutdown()
    assert [path for path, _ in receiver.received] == [f"/services/T0000/{secret}"]
    out, err = capfd.readouterr()
    # structlog's first argument is named 'event': a field of that name crashed the delivery task.
    assert "Traceback" not in err
    delivered = [json.loads(line) for line in err.splitlines()
                 if line.startswith("{") and '"webhook_delivered"' in line]
    assert [d["webhook_event"] for d in delivered] == ["job.succeeded"]
    assert "XXXXwebhooksecretXXXX" not in out + err
