"""The anomaly guard (SPEC 2.14): an archive whose facts fell sharply against the previous good
ones is suspect, says why, is announced once, does not count as good for retention, and counts
again once an operator clears it. Real backups of small databases of their own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.archives.retention import plan
from app.archives.schemas import Archive
from app.backup import manifest as mf
from app.backup.anomalies import judge
from app.config_models import AnomalyConfig
from tests.conftest import (
    PREFIX,
    auth,
    backup,
    create_db,
    dsn,
    migrated_db,
    run_sql,
    running_app,
    wait_job,
)
from tests.faults import FaultyProxy
from tests.test_retention import copy_archive
from tests.test_schedules import Receiver


@pytest.fixture(scope="module")
async def anomaly_meta() -> str:
    """This module's own metadata database: its audit log and reviews hold only these tests'."""
    return await migrated_db(f"{PREFIX}_anomaly_meta")


async def small_db(name: str, sql: str) -> str:
    return await create_db(f"{PREFIX}_{name}", sql=sql)


async def archives(c: Any, target: str) -> dict[str, dict[str, Any]]:
    resp = await c.get(f"/v1/targets/{target}/archives", headers=auth("viewer"))
    assert resp.status_code == 200, resp.text
    return {a["backup_id"]: a for a in resp.json()["items"]}


def dump_size(job: dict[str, Any]) -> int:
    return next(o["size_bytes"] for o in job["result"]["objects"]
                if o["key"] == mf.DATABASE_OBJECT)


async def test_rows_and_size_drop_make_a_suspect_archive_that_retention_does_not_count(
        make_settings: Any, anomaly_meta: str, s3: Any, bucket: str) -> None:
    db = await small_db("anom_rows", """
        CREATE TABLE public.events AS
            SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload
            FROM generate_series(1, 20000) g;
        CREATE TABLE public.tiny AS SELECT g AS id FROM generate_series(1, 50) g;""")
    receiver = Receiver(fail_first=0)
    settings = make_settings(
        database_url=dsn(anomaly_meta), webhook_backoff_s=0.05,
        webhooks=[{"url": f"{receiver.url}/hook"}],
        targets={"anom_rows": {"dsn": dsn(db), "retention_days": 1,
                               "retention_min_backups": 1}})
    try:
        async with running_app(settings) as c:
            services = c.app.state.services  # type: ignore[attr-defined]
            first = await backup(c, "anom_rows")
            assert first["result"]["suspect"] is False and first["result"]["anomalies"] == []
            assert "SUSPECT" not in first["summary"]
            # The good archive, two weeks old: retention would expire it if it did not count.
            old = "20200101T000000Z-oldgdd"
            copy_archive(s3, bucket, "anom_rows", first["result"]["backup_id"], old)
            resp = await c.delete(f"/v1/targets/anom_rows/archives/"
                                  f"{first['result']['backup_id']}", headers=auth("admin"))
            assert resp.status_code == 204, resp.text

            await run_sql(db, "DELETE FROM public.events WHERE id % 5 <> 0")  # 80% gone
            second = await backup(c, "anom_rows")
            new = second["result"]["backup_id"]
            assert second["result"]["suspect"] is True
            found = {a["kind"]: a for a in second["result"]["anomalies"]}
            assert set(found) == {"rows_drop", "size_drop"}, found
            assert found["rows_drop"] == {"kind": "rows_drop", "table": "public.events",
                                          "before": 20000, "now": 4000}
            assert found["size_drop"]["table"] is None
            assert found["size_drop"]["before"] == dump_size(first)
            assert found["size_drop"]["now"] == dump_size(second)
            assert "SUSPECT" in second["summary"] and "public.events" in second["summary"]

            listed = await archives(c, "anom_rows")
            assert listed[new]["suspect"] is True and listed[old]["suspect"] is False
            assert listed[new]["anomalies"] == second["result"]["anomalies"]
            detail = (await c.get(f"/v1/targets/anom_rows/archives/{new}",
                                  headers=auth("viewer"))).json()
            assert detail["suspect"] is True and detail["suspect_cleared"] is None
            assert detail["manifest"]["anomalies"] == second["result"]["anomalies"]

            # The plan, two days on: the suspect archive expires, the older good one stays
            # (before the guard, the suspect one was "the newest good" and the other went).
            items = [Archive.model_validate(a) for a in listed.values()]
            items.sort(key=lambda a: a.backup_id, reverse=True)
            delete, keep = plan(items, now=datetime.now(UTC) + timedelta(days=2),
                                retention_days=1, min_backups=1, grace=timedelta(hours=1),
                                busy=set())
            assert [d["backup_id"] for d in delete] == [new]
            assert "suspect" in delete[0]["reason"]
            assert keep == [{"backup_id": old, "reason": "one of the newest 1 good"}]

            # The real retention job today: the old good archive survives, the suspect one is
            # kept within its days, and the dry run's reason says why.
            resp = await c.post("/v1/targets/anom_rows/retention", headers=auth("admin"),
                                json={"dry_run": False})
            done = await wait_job(c, resp.json()["id"])
            assert done["status"] == "succeeded", done
            assert done["result"]["deleted"] == []
            reasons = {k["backup_id"]: k["reason"] for k in done["result"]["kept"]}
            assert reasons[old] == "one of the newest 1 good"
            assert "suspect" in reasons[new]
            assert set(await archives(c, "anom_rows")) == {old, new}

            status = (await c.get("/v1/targets/anom_rows", headers=auth("viewer"))).json()
            assert status["suspect_archives"] == 1
            metrics = (await c.get("/metrics")).text
            assert 'pgvault_suspect_archives{target="anom_rows"} 1.0' in metrics
            await services.resources.notifier.close()
    finally:
        receiver.server.shutdown()
    suspect = [b for _, b in receiver.received if b["event"] == "backup.suspect"]
    assert len(suspect) == 1, suspect
    assert suspect[0]["backup_id"] == new and suspect[0]["target"] == "anom_rows"
    assert suspect[0]["anomalies"] == second["result"]["anomalies"]
    assert suspect[0]["job"]["id"] == second["id"]
    assert sum(b["event"] == "job.succeeded" for _, b in receiver.received) >= 2


async def test_a_dropped_table_is_suspect_until_an_operator_clears_it(
        make_settings: Any, anomaly_meta: str) -> None:
    db = await small_db("anom_drop", """
        CREATE TABLE public.keep AS SELECT g AS id FROM generate_series(1, 30) g;
        CREATE TABLE public.doomed AS SELECT g AS id FROM generate_series(1, 10) g;""")
    settings = make_settings(database_url=dsn(anomaly_meta), targets={
        "anom_drop": {"dsn": dsn(db)}, "anom_off": {"dsn": dsn(db), "anomaly": False}})
    async with running_app(settings) as c:
        await asyncio.gather(backup(c, "anom_drop"), backup(c, "anom_off"))
        before = next(iter(await archives(c, "anom_drop")))
        await run_sql(db, "DROP TABLE public.doomed")
        guarded, unguarded = await asyncio.gather(backup(c, "anom_drop"), backup(c, "anom_off"))
        bid = guarded["result"]["backup_id"]
        assert guarded["result"]["suspect"] is True
        assert guarded["result"]["anomalies"] == [
            {"kind": "table_missing", "table": "public.doomed", "before": 10, "now": None}]
        # The same change, with the guard turned off for that target: nothing said.
        assert unguarded["result"]["suspect"] is False
        assert unguarded["result"]["anomalies"] == []
        assert not any(a["suspect"] for a in (await archives(c, "anom_off")).values())
        status = (await c.get("/v1/targets", headers=auth("viewer"))).json()["items"]
        assert {s["name"]: s["suspect_archives"] for s in status} == {"anom_drop": 1,
                                                                      "anom_off": 0}

        url = f"/v1/targets/anom_drop/archives/{bid}"
        body = {"suspect": False, "reason": "doomed was retired on purpose (ticket 42)"}
        viewer = await c.patch(url, headers=auth("viewer"), json=body)
        assert viewer.status_code == 403
        bad = await c.patch(url, headers=auth("operator"), json={"suspect": True})
        assert bad.status_code == 422
        long = await c.patch(url, headers=auth("operator"),
                             json={"suspect": False, "reason": "x" * 501})
        assert long.status_code == 422
        not_suspect = await c.patch(f"/v1/targets/anom_drop/archives/{before}",
                                    headers=auth("operator"), json=body)
        assert not_suspect.status_code == 409
        assert not_suspect.headers["content-type"] == "application/problem+json"
        unknown = await c.patch("/v1/targets/anom_drop/archives/20200101T000000Z-nosuch",
                                headers=auth("operator"), json=body)
        assert unknown.status_code == 404

        cleared = await c.patch(url, headers=auth("operator"), json=body)
        assert cleared.status_code == 200, cleared.text
        doc = cleared.json()
        assert doc["backup_id"] == bid and doc["suspect"] is False
        assert doc["anomalies"] == guarded["result"]["anomalies"]  # still shown
        assert doc["suspect_cleared"]["by"] == "test-operator"
        assert doc["suspect_cleared"]["reason"] == body["reason"]
        assert (await archives(c, "anom_drop"))[bid]["suspect"] is False
        again = await c.patch(url, headers=auth("operator"), json=body)
        assert again.status_code == 409 and "already cleared" in again.json()["detail"]
        events = (await c.get("/v1/audit?action=archive.clear_suspect",
                              headers=auth("admin"))).json()["items"][::-1]
        # Refused calls are audited under the same action, then the one that cleared it.
        assert [(e["actor"], e["outcome"]) for e in events] == [
            ("test-viewer", "forbidden"), ("test-operator", "invalid"),
            ("test-operator", "invalid"), ("test-operator", "conflict"),
            ("test-operator", "not_found"), ("test-operator", "cleared"),
            ("test-operator", "conflict")]
        events = [e for e in events if e["outcome"] == "cleared"]
        assert events[0]["actor"] == "test-operator" and events[0]["target"] == "anom_drop"
        assert events[0]["details"] == {"backup_id": bid, "reason": body["reason"],
                                        "anomalies": guarded["result"]["anomalies"]}
        status = (await c.get("/v1/targets/anom_drop", headers=auth("viewer"))).json()
        assert status["suspect_archives"] == 0

        # Cleared, it is good again: the next backup is judged against it, not suspect.
        third = await backup(c, "anom_drop")
        assert third["result"]["suspect"] is False, third["result"]["anomalies"]


async def test_a_comparison_that_cannot_read_storage_never_fails_the_backup(
        make_settings: Any, anomaly_meta: str, s3_endpoint: str,
        capfd: pytest.CaptureFixture[str]) -> None:
    db = await small_db("anom_blind", """
        CREATE TABLE public.events AS SELECT g AS id FROM generate_series(1, 5000) g;""")
    blind = False

    def rule(method: str, path: str) -> int | None:
        # Storage credentials that may write but not list (an IAM policy without
        # s3:ListBucket): the previous archives cannot be read, the new one can be written.
        return 403 if blind and method == "GET" and "list-type=2" in path else None

    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = rule
        settings = make_settings(database_url=dsn(anomaly_meta), s3_endpoint_url=proxy.url,
                                 targets={"anom_blind": {"dsn": dsn(db)}})
        async with running_app(settings) as c:
            await backup(c, "anom_blind")
            await run_sql(db, "TRUNCATE public.events")
            blind = True
            try:
                job = await backup(c, "anom_blind")
            finally:
                blind = False
            assert job["result"]["suspect"] is False and job["result"]["anomalies"] == []
            # Not silently: the job says the guard could not judge this archive.
            assert "not compared with previous archives" in job["summary"], job["summary"]
            listed = await archives(c, "anom_blind")
            assert listed[job["result"]["backup_id"]]["complete"] is True
    _, err = capfd.readouterr()
    assert '"anomaly_check_skipped"' in err


def _doc(backup_id: str, dump: int, tables: dict[str, int | None],
         exclude: list[str] | None = None) -> mf.Manifest:
    return mf.Manifest(
        backup_id=backup_id, target="t", exclude_schemas=exclude or [],
        objects=[mf.ArchiveObject(key=mf.DATABASE_OBJECT, kind="database", size_bytes=dump,
                                  sha256="0" * 64)],
        tables=[mf.TableRows(schema=n.split(".")[0], name=n.split(".")[1], rows=r)
                for n, r in tables.items()])


def test_judged_by_the_median_and_the_thresholds() -> None:
    cfg = AnomalyConfig()
    # One freak small archive among the previous does not move the median.
    previous = [_doc("5", 1000, {"s.a": 2000}), _doc("4", 100, {"s.a": 10}),
                _doc("3", 1000, {"s.a": 2000})]
    assert judge(_doc("6", 600, {"s.a": 1100}), previous, cfg) == []
    found = judge(_doc("6", 499, {"s.a": 1000}), previous, cfg)
    assert [(a.kind, a.table, a.before, a.now) for a in found] == [
        ("size_drop", None, 1000, 499), ("rows_drop", "s.a", 2000, 1000)]
    # Small tables are not judged by rows; uncounted rows are not judged; nothing to compare
    # with, nothing found.
    assert judge(_doc("6", 1000, {"s.a": 0}), [_doc("5", 1000, {"s.a": 999})], cfg) == []
    assert judge(_doc("6", 1000, {"s.a": None}), previous, cfg) == []
    assert judge(_doc("6", 1, {}), [], cfg) == []
    # A table gone is suspect, unless its schema is now excluded on purpose.
    gone = judge(_doc("6", 1000, {}), previous, cfg)
    assert [(a.kind, a.table) for a in gone] == [("table_missing", "s.a")]
    assert judge(_doc("6", 1000, {}, exclude=["s"]), previous, cfg) == []
    # Thresholds per target.
    loose = AnomalyConfig(size_drop_pct=90, rows_drop_pct=90, min_rows=10)
    assert judge(_doc("6", 200, {"s.a": 300}), previous, loose) == []


async def test_tables_are_told_apart_by_schema_and_name_not_by_a_joined_string(
        make_settings: Any, anomaly_meta: str) -> None:
    # Schema "a.b" with table "c" and schema "a" with table "b.c" both join to "a.b.c".
    odd = '"Ünï cödé-1"."it\'s ""q"""'  # schema Ünï cödé-1, table it's "q"
    db = await small_db("anom_names", f"""
        CREATE SCHEMA "a.b"; CREATE SCHEMA a; CREATE SCHEMA "Ünï cödé-1";
        CREATE TABLE "a.b".c AS SELECT g AS id FROM generate_series(1, 1500) g;
        CREATE TABLE a."b.c" AS SELECT g AS id FROM generate_series(1, 1500) g;
        CREATE TABLE {odd} AS SELECT g AS id FROM generate_series(1, 1500) g;""")
    settings = make_settings(database_url=dsn(anomaly_meta),
                             targets={"anom_names": {"dsn": dsn(db)}})
    async with running_app(settings) as c:
        await backup(c, "anom_names")
        await run_sql(db, f'DROP TABLE "a.b".c; DELETE FROM {odd} WHERE id > 10')
        job = await backup(c, "anom_names")
    assert job["result"]["suspect"] is True
    assert sorted((a["kind"], a["table"], a["now"]) for a in job["result"]["anomalies"]) == [
        ("rows_drop", odd, 10), ("table_missing", '"a.b".c', None)]


async def test_a_slow_comparison_is_skipped_before_the_watchdog_would_stop_the_backup(
        make_settings: Any, anomaly_meta: str, s3_endpoint: str,
        capfd: pytest.CaptureFixture[str]) -> None:
    db = await small_db("anom_slow", "CREATE TABLE public.t AS SELECT 1 AS id;")
    slow = False

    def rule(method: str, path: str) -> float | None:
        # The listing of the target's archives (the guard's catalogue) takes 3 s.
        listing = "list-type=2" in path and "prefix=archives%2Fanom_slow%2F&" in path
        return 3.0 if slow and listing else None

    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = rule
        settings = make_settings(database_url=dsn(anomaly_meta), s3_endpoint_url=proxy.url,
                                 stall_timeout_s=1.5, targets={"anom_slow": {"dsn": dsn(db)}})
        async with running_app(settings) as c:
            slow = True
            job = await backup(c, "anom_slow")  # succeeded, not killed as stalled
            assert job["result"]["suspect"] is False
            assert ("not compared with previous archives: the previous archives could not be "
                    "read within 0.75 s") in job["summary"], job["summary"]
    _, err = capfd.readouterr()
    assert '"anomaly_check_skipped"' in err
