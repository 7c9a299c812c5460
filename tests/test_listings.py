"""One broken record never fails a listing page: it is shown as broken, or left out and named in
``skipped`` with the reason. Records are broken for real, written straight into the metadata
database as a damaged row, or as a newer pgvault version would write them."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.conftest import (
    PREFIX,
    admin_conn,
    auth,
    create_db,
    drop_db,
    dsn,
    migrated_db,
    running_app,
)


async def test_jobs_and_audit_listings_survive_a_broken_row(make_settings: Any) -> None:
    meta = await migrated_db(f"{PREFIX}_meta_listings")
    conn = await admin_conn(meta)
    damaged, newer, fine = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        # A newer version knows a job kind this one does not (a rolling upgrade).
        constraint = await conn.fetchval(
            """SELECT conname FROM pg_constraint WHERE conrelid = 'jobs'::regclass
               AND pg_get_constraintdef(oid) LIKE '%kind%'""")
        await conn.execute(f'ALTER TABLE jobs DROP CONSTRAINT "{constraint}"')
        insert = """INSERT INTO jobs (id, kind, target, status, requested_by, summary, result,
                        error, created_at, finished_at)
                    VALUES ($1, $2, 'pagila', $3, 'test', $4, $5::text::jsonb, $6::text::jsonb,
                            now() - $7 * interval '1 minute', now())"""
        await conn.execute(insert, fine, "backup", "succeeded", "fine", '{"backup_id": "x"}',
                           None, 3)
        await conn.execute(insert, damaged, "verify", "failed", "damaged", "[1, 2]", '"boom"', 2)
        await conn.execute(insert, newer, "scrub", "succeeded", "newer", "{}", None, 1)
        await conn.execute(
            """INSERT INTO audit_events (actor, action, target, outcome, details)
               VALUES ('test', 'odd.event', 'pagila', 'ok', '"not an object"'::jsonb),
                      ('test', 'fine.event', 'pagila', 'ok', '{"a": 1}'::jsonb)""")
    finally:
        await conn.close()

    async with running_app(make_settings(database_url=dsn(meta))) as c:
        resp = await c.get("/v1/jobs", headers=auth("viewer"))
        assert resp.status_code == 200, resp.text
        page = resp.json()
        shown = {j["id"]: j for j in page["items"]}
        assert set(shown) == {str(fine), str(damaged)}
        assert shown[str(damaged)]["error"]["title"] == "unreadable error record"
        assert "unreadable" in shown[str(damaged)]["result"]
        assert [s["id"] for s in page["skipped"]] == [str(newer)]
        assert "kind" in page["skipped"][0]["reason"]
        assert page["skipped"] and shown[str(fine)]["result"] == {"backup_id": "x"}

        # Paging walks past a skipped row (the newest) to the others.
        first = (await c.get("/v1/jobs?limit=1", headers=auth("viewer"))).json()
        assert first["items"] == [] and first["next_cursor"]
        second = (await c.get(f"/v1/jobs?limit=1&cursor={first['next_cursor']}",
                              headers=auth("viewer"))).json()
        assert [j["id"] for j in second["items"]] == [str(damaged)]
        one = await c.get(f"/v1/jobs/{damaged}", headers=auth("viewer"))
        assert one.status_code == 200, one.text

        # A succeeded backup whose stored result is damaged: target status still answers, and
        # reads it as "no known good backup" (the RPO shows broken, so a human looks).
        conn = await admin_conn(meta)
        try:
            await conn.execute(
                """INSERT INTO jobs (id, kind, target, status, requested_by, result, created_at,
                       finished_at)
                   VALUES ($1, 'backup', 'pagila', 'succeeded', 'test', '[1]'::jsonb, now(),
                           now() + interval '1 minute')""", uuid.uuid4())
        finally:
            await conn.close()
        for path in ("/v1/targets", "/v1/targets/pagila"):
            resp = await c.get(path, headers=auth("viewer"))
            assert resp.status_code == 200, resp.text
        status = resp.json()
        assert status["last_backup"] is None and status["rpo_ok"] is False
        metrics = await c.get("/metrics")
        assert metrics.status_code == 200, metrics.text
        assert 'pgvault_rpo_compliant{target="pagila"} 0.0' in metrics.text
        # The RPO alert reads the record the same way: a breach, not a fresh good backup.
        scheduler = c.app.state.services.scheduler  # type: ignore[attr-defined]
        assert "pagila" in await scheduler.check_rpo(datetime.now(UTC))

        resp = await c.get("/v1/audit", headers=auth("admin"))
        assert resp.status_code == 200, resp.text
        events = {e["action"]: e for e in resp.json()["items"]}
        assert "unreadable" in events["odd.event"]["details"]
        assert events["fine.event"]["details"] == {"a": 1}


async def test_a_snapshot_survives_one_view_that_cannot_be_taken(make_settings: Any) -> None:
    """A table locked by a long migration makes the ``tables`` view time out (its size needs a
    lock); the snapshot still answers with every other view and says which one is missing."""
    db = await create_db(f"{PREFIX}_locked")
    holder = await admin_conn(db)
    try:
        await holder.execute("CREATE TABLE busy (n int); INSERT INTO busy VALUES (1)")
        settings = make_settings(targets={"locked": {"dsn": dsn(db)}},
                                 monitoring_statement_timeout_ms=500, monitoring_cache_s=0)
        async with running_app(settings) as c:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
            try:
                alone = await c.get("/v1/targets/locked/monitoring/tables",
                                    headers=auth("viewer"))
                assert alone.status_code == 504, alone.text
                resp = await c.get("/v1/targets/locked/monitoring/snapshot",
                                   headers=auth("viewer"))
            finally:
                await tx.rollback()
        assert resp.status_code == 200, resp.text
        snap = resp.json()
        assert snap["tables"] is None and "500 ms" in snap["unavailable"]["tables"]
        assert set(snap["unavailable"]) == {"tables"}
        assert snap["connections"]["max_connections"] > 0 and snap["indexes"] is not None
        assert snap["summary"].endswith("tables unavailable")
    finally:
        await holder.close()
        await drop_db(db)


async def test_one_table_with_damaged_statistics_does_not_fail_the_bloat_view(
        make_settings: Any) -> None:
    """A NaN null fraction in pg_statistic made one table's estimate NaN, and its cast to
    bigint failed the whole view for every table."""
    db = await create_db(f"{PREFIX}_nanstats")
    conn = await admin_conn(db)
    try:
        await conn.execute("""
            CREATE TABLE damaged (a int, b text); CREATE INDEX damaged_a ON damaged (a);
            CREATE TABLE healthy (a int, b text); CREATE INDEX healthy_a ON healthy (a);
            INSERT INTO damaged SELECT g, 'x' FROM generate_series(1, 1000) g;
            INSERT INTO healthy SELECT g, 'x' FROM generate_series(1, 1000) g;
            ANALYZE damaged; ANALYZE healthy;
            UPDATE pg_statistic SET stanullfrac = 'NaN' WHERE starelid = 'damaged'::regclass""")
        async with running_app(make_settings(targets={"nan": {"dsn": dsn(db)}})) as c:
            resp = await c.get("/v1/targets/nan/monitoring/bloat", headers=auth("viewer"))
            snap = await c.get("/v1/targets/nan/monitoring/snapshot", headers=auth("viewer"))
        assert resp.status_code == 200, resp.text
        tables = {r["table"]: r for r in resp.json()["tables"]}
        assert tables["damaged"]["reliable"] is False
        assert tables["healthy"]["reliable"] is True
        indexes = {r["index"]: r for r in resp.json()["indexes"]}
        assert indexes["damaged_a"]["reliable"] is False and indexes["healthy_a"]["reliable"]
        assert snap.status_code == 200 and snap.json()["unavailable"] == {}
    finally:
        await conn.close()
        await drop_db(db)


async def test_a_cursor_holding_the_wrong_types_is_422(client: Any) -> None:
    """Cursors are opaque but travel through users' hands: one that decodes yet holds a number
    where an id or a time belongs is refused like any other cursor not issued here."""
    def cursor(values: list[Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")

    cases = [("/v1/jobs", "viewer", ["2026-01-01T00:00:00+00:00", 5]),
             ("/v1/jobs", "viewer", [5, str(uuid.uuid4())]),
             ("/v1/audit", "admin", ["2026-01-01T00:00:00+00:00", "x"]),
             ("/v1/audit", "admin", [None, 1])]
    for path, role, values in cases:
        resp = await client.get(path, params={"cursor": cursor(values)}, headers=auth(role))
        assert resp.status_code == 422, (path, values, resp.text)
        assert resp.json()["detail"] == "cursor is not one this service issued"
