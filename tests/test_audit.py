"""Every mutating call is one audit event, accepted or refused, naming the caller, never its
token."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from app.config import Settings
from tests.conftest import PREFIX, TOKENS, auth, dsn, migrated_db, running_app


@pytest.fixture(scope="module")
async def audit_db() -> str:
    """A metadata database of this module's own, so its audit log holds only these calls."""
    return await migrated_db(f"{PREFIX}_audit")


async def events(client: Any) -> list[dict[str, Any]]:
    resp = await client.get("/v1/audit?limit=500", headers=auth("admin"))
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items[::-1]  # oldest first


async def test_refused_mutating_calls_are_audited(make_settings: Any, audit_db: str) -> None:
    # No worker: the first backup stays queued, so the second one meets a conflict.
    settings: Settings = make_settings(database_url=dsn(audit_db), worker_concurrency=0)
    zero = "00000000-0000-0000-0000-000000000000"
    calls = [
        ("POST", "/v1/targets/pagila/backups", auth("viewer"), None, 403),
        ("POST", "/v1/targets/pagila/backups", {}, None, 401),
        ("POST", "/v1/targets/pagila/backups", {"Authorization": "Bearer not-a-token"}, None, 401),
        ("POST", "/v1/targets/pagila/maintenance", auth("operator"), {"task": "vacuum"}, 422),
        ("POST", "/v1/targets/nosuch/backups", auth("operator"), None, 404),
        ("POST", "/v1/targets/pagila/backups", auth("operator"), None, 202),
        ("POST", "/v1/targets/pagila/backups", auth("operator"), None, 409),
        ("DELETE", "/v1/targets/pagila/archives/20260101T000000Z-abcdef", auth("operator"),
         None, 403),
        ("DELETE", "/v1/targets/pagila/archives/20260101T000000Z-abcdef", auth("admin"),
         None, 404),
        ("POST", f"/v1/jobs/{zero}/cancel", auth("viewer"), None, 403),
        # A replayed Idempotency-Key is a call too: one event each, the first from the service.
        ("POST", "/v1/targets/pagila/maintenance", {**auth("operator"), "Idempotency-Key": "k1"},
         {"task": "analyze"}, 202),
        ("POST", "/v1/targets/pagila/maintenance", {**auth("operator"), "Idempotency-Key": "k1"},
         {"task": "analyze"}, 202),
    ]
    async with running_app(settings) as c:
        for method, path, headers, body, status in calls:
            resp = await c.request(method, path, headers=headers, json=body)
            assert resp.status_code == status, (method, path, resp.text)
        got = [e for e in await events(c) if e["action"] != "job.backup"]
    assert [(e["actor"], e["action"], e["target"], e["outcome"]) for e in got] == [
        ("test-viewer", "backup.request", "pagila", "forbidden"),
        ("anonymous", "backup.request", "pagila", "unauthorized"),
        ("unknown-token", "backup.request", "pagila", "unauthorized"),
        ("test-operator", "maintenance.request", "pagila", "invalid"),
        ("test-operator", "backup.request", "nosuch", "not_found"),
        ("test-operator", "backup.request", "pagila", "accepted"),
        ("test-operator", "backup.request", "pagila", "conflict"),
        ("test-operator", "archive.delete", "pagila", "forbidden"),
        ("test-admin", "archive.delete", "pagila", "not_found"),
        ("test-viewer", "job.cancel", None, "forbidden"),
        ("test-operator", "maintenance.request", "pagila", "accepted"),
        ("test-operator", "maintenance.request", "pagila", "accepted"),
    ]
    refused = [e for e in got if e["outcome"] != "accepted"]
    assert [e["details"]["status"] for e in refused] == [
        status for *_, status in calls if status != 202]
    assert got[7]["details"]["backup_id"] == "20260101T000000Z-abcdef"
    assert got[9]["job_id"] == zero
    assert got[5]["job_id"] is not None  # the service's own event, not a second one
    text = json.dumps(got)
    assert all(token not in text for token in TOKENS.values())
    assert "not-a-token" not in text


async def test_a_failed_audit_write_does_not_change_the_answer(
        make_settings: Any, audit_db: str, capfd: pytest.CaptureFixture[str]) -> None:
    async with running_app(make_settings(database_url=dsn(audit_db),
                                         worker_concurrency=0)) as c:
        services = c.app.state.resources  # type: ignore[attr-defined]
        closed = await asyncpg.create_pool(dsn=dsn(audit_db), min_size=0)
        await closed.close()
        pool, services.pool = services.pool, closed
        try:
            resp = await c.post("/v1/targets/pagila/backups", headers=auth("viewer"))
        finally:
            services.pool = pool
    assert resp.status_code == 403
    _, err = capfd.readouterr()
    assert '"audit_write_failed"' in err and '"outcome": "forbidden"' in err
