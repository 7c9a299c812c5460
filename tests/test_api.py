"""Targets, jobs, audit, health and metrics through the API."""

from __future__ import annotations

from typing import Any

from tests.conftest import auth, backup, running_app, wait_job


async def test_health_readiness_and_metrics(client: Any) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert all(check["ok"] for check in ready.json()["checks"].values())
    assert ready.json()["checks"]["gpg"]["private_key"] is True
    job = await backup(client)
    metrics = (await client.get("/metrics")).text
    assert 'pgvault_backup_last_success_timestamp_seconds{target="pagila"}' in metrics
    assert 'pgvault_backup_last_size_bytes{target="pagila"}' in metrics
    assert 'pgvault_rpo_compliant{target="pagila"} 1.0' in metrics
    assert 'pgvault_jobs_total{kind="backup",outcome="succeeded"}' in metrics
    assert job["result"]["size_bytes"] > 0


async def test_target_status_shows_last_backup_and_rpo(client: Any) -> None:
    job = await backup(client)
    listing = (await client.get("/v1/targets", headers=auth("viewer"))).json()
    assert [t["name"] for t in listing["items"]] == ["pagila"]
    status = (await client.get("/v1/targets/pagila", headers=auth("viewer"))).json()
    assert status["last_backup"]["backup_id"] == job["result"]["backup_id"]
    assert status["rpo_ok"] is True
    assert status["dsn"].startswith("postgresql://postgres@127.0.0.1:5432/")
    assert status["schedules"]["backup"]["cron"] == "0 0 * * *"
    assert status["schedules"]["backup"]["next_run"].endswith(("T00:00:00Z", "T00:00:00+00:00"))


async def test_rpo_breached_without_backup(make_settings: Any, pagila_db: str) -> None:
    from tests.conftest import dsn

    async with running_app(make_settings(targets={"never": {"dsn": dsn(pagila_db)}})) as c:
        status = (await c.get("/v1/targets/never", headers=auth("viewer"))).json()
    assert status["last_backup"] is None and status["rpo_ok"] is False


async def test_jobs_list_filters_and_pages(client: Any) -> None:
    await backup(client)
    await backup(client)
    page = (await client.get("/v1/jobs?kind=backup&status=succeeded&limit=1",
                             headers=auth("viewer"))).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    nxt = (await client.get(f"/v1/jobs?kind=backup&status=succeeded&limit=1&cursor="
                            f"{page['next_cursor']}", headers=auth("viewer"))).json()
    assert nxt["items"][0]["id"] != page["items"][0]["id"]
    assert nxt["items"][0]["created_at"] <= page["items"][0]["created_at"]
    assert (await client.get("/v1/jobs?kind=nope", headers=auth("viewer"))).status_code == 422
    assert (await client.get("/v1/jobs?status=done", headers=auth("viewer"))).status_code == 422


async def test_cancel_queued_and_finished_jobs(make_settings: Any) -> None:
    # No worker on this replica: jobs stay queued until cancelled.
    async with running_app(make_settings(worker_concurrency=0)) as c:
        other = c.app.state.services  # type: ignore[attr-defined]
        assert other.runner.settings.worker_concurrency == 0
        job = (await c.post("/v1/targets/pagila/maintenance", headers=auth("operator"),
                            json={"task": "analyze"})).json()
        assert job["status"] == "queued"
        cancelled = await c.post(f"/v1/jobs/{job['id']}/cancel", headers=auth("operator"))
        assert cancelled.status_code == 202
        assert cancelled.json()["status"] == "cancelled"
        again = await c.post(f"/v1/jobs/{job['id']}/cancel", headers=auth("operator"))
        assert again.status_code == 202 and again.json()["status"] == "cancelled"
        viewer = await c.post(f"/v1/jobs/{job['id']}/cancel", headers=auth("viewer"))
        assert viewer.status_code == 403
        missing = await c.post("/v1/jobs/00000000-0000-0000-0000-000000000000/cancel",
                               headers=auth("operator"))
        assert missing.status_code == 404


async def test_audit_records_calls_and_outcomes(client: Any) -> None:
    job = await backup(client)
    assert (await client.get("/v1/audit", headers=auth("operator"))).status_code == 403
    events = (await client.get("/v1/audit?limit=500", headers=auth("admin"))).json()["items"]
    mine = [e for e in events if e["job_id"] == job["id"]]
    assert {(e["action"], e["outcome"]) for e in mine} == {("backup.request", "accepted"),
                                                           ("job.backup", "succeeded")}
    assert all(e["actor"] == "test-operator" for e in mine)
    page = (await client.get("/v1/audit?limit=1", headers=auth("admin"))).json()
    assert page["next_cursor"]
    second = (await client.get(f"/v1/audit?limit=1&cursor={page['next_cursor']}",
                               headers=auth("admin"))).json()
    assert second["items"][0]["id"] != page["items"][0]["id"]


async def test_swagger_ui_and_authorize(client: Any) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["type"] == "http"
    op = spec["paths"]["/v1/targets/{target}/backups"]["post"]
    assert {"HTTPBearer": []} in op["security"]


async def test_wait_job_helper_reports_unknown(client: Any) -> None:
    resp = await client.get("/v1/jobs/11111111-1111-1111-1111-111111111111",
                            headers=auth("viewer"))
    assert resp.status_code == 404
    _ = wait_job
