"""Continuous proof and the restore forecast (SPEC 2.14): the scheduler restore-tests every
unverified archive, oldest first, within the daily budget; target status and metrics show what is
proven and how long the next restore should take, against the RTOs."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from app.targets import proof
from tests.conftest import (
    PREFIX,
    admin_conn,
    auth,
    backup,
    create_db,
    drop_db,
    dsn,
    running_app,
    wait_job,
)
from tests.faults import FaultyProxy
from tests.test_metrics import scrape, value

QUIET = {"backup": "", "retention": "", "maintenance": ""}  # verify: the default


async def status(c: Any, target: str) -> dict[str, Any]:
    resp = await c.get(f"/v1/targets/{target}", headers=auth("viewer"))
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = resp.json()
    return found


async def verifies(c: Any, target: str) -> list[dict[str, Any]]:
    resp = await c.get("/v1/jobs", params={"target": target, "kind": "verify", "limit": 50},
                       headers=auth("viewer"))
    assert resp.status_code == 200, resp.text
    return sorted(resp.json()["items"], key=lambda j: j["created_at"])


async def settle(c: Any, jobs: list[dict[str, Any]]) -> list[str]:
    """Wait for the verifications; the archives they proved, in the order they were queued."""
    done = [await wait_job(c, j["id"], timeout=120) for j in jobs]
    assert all(j["status"] == "succeeded" for j in done), done
    assert all(j["result"]["level"] == "restore" for j in done)
    return [j["result"]["backup_id"] for j in done]


async def params_of(c: Any, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the scheduler queued (the API does not show a job's parameters)."""
    pool = c.app.state.services.resources.pool
    async with pool.acquire() as conn:
        return [await conn.fetchval("SELECT params FROM jobs WHERE id = $1::uuid", j["id"])
                for j in jobs]


async def restore_newest(c: Any, target: str, backup_id: str, database: str) -> float:
    """Restore the archive to a new database and return the restore's measured duration."""
    resp = await c.post(f"/v1/targets/{target}/restores", headers=auth("admin"),
                        json={"backup_id": backup_id, "database": database})
    assert resp.status_code == 202, resp.text
    job = await wait_job(c, resp.json()["id"], timeout=180)
    assert job["status"] == "succeeded", job
    took: float = job["result"]["duration_s"]
    await drop_db(database)
    return took


async def measured_restore(c: Any, target: str, backup_id: str, database: str,
                           times: int) -> float:
    """The median of ``times`` restores: on this shared machine one restore of a few seconds
    swings by half its time from one run to the next, whatever any forecast says."""
    return statistics.median([await restore_newest(c, target, backup_id, database)
                              for _ in range(times)])


async def test_every_archive_is_proven_within_budget_and_the_forecast_holds(
        make_settings: Any, pagila_db: str) -> None:
    # One job at a time: the restore tests' run times are then those of a lone restore.
    targets = {"proof": {"dsn": dsn(pagila_db), "schedules": QUIET}}
    settings = make_settings(targets=targets, worker_concurrency=1)
    async with running_app(settings) as c:
        scheduler = c.app.state.services.scheduler  # type: ignore[attr-defined]
        shown = await status(c, "proof")
        assert shown["verification_schedule"]["cron"] == "0 3 * * *"  # daily, not monthly
        assert shown["verification_schedule"]["verify_budget_per_day"] == 2
        ids = [(await backup(c, "proof"))["result"]["backup_id"] for _ in range(3)]
        shown = await status(c, "proof")
        assert shown["unverified_archives"] == 3
        assert shown["last_verified_backup"] is None and shown["restore_forecast_s"] is None
        assert shown["rto_forecast_ok"] is None

        now = datetime.now(UTC)
        assert await scheduler.tick(now - timedelta(days=1)) == []  # first sight: a baseline
        fired = await scheduler.tick(now)
        assert [(f["kind"], f["outcome"]) for f in fired] == [("verify", "queued")]
        first = await verifies(c, "proof")
        # The two oldest (the budget); queued in one transaction, they share a queue time.
        queued = await params_of(c, first)
        assert {p["backup_id"] for p in queued} == set(ids[:2])
        assert all(p == {"backup_id": p["backup_id"], "level": "restore", "continuous": True}
                   for p in queued) and len(queued) == 2
        # The budget is spent for today, whatever else the day brings.
        assert "budget" in await proof.continuous_params(
            c.app.state.services.resources, "proof", now)  # type: ignore[attr-defined]
        assert set(await settle(c, first)) == set(ids[:2])
        shown = await status(c, "proof")
        assert shown["unverified_archives"] == 1
        assert shown["last_verified_backup"]["backup_id"] == ids[1]
        assert shown["verification_schedule"]["used_today"] == 2

        fired = await scheduler.tick(now + timedelta(days=1))  # the next day's slot
        assert [(f["kind"], f["outcome"]) for f in fired] == [("verify", "queued")]
        third = [j for j in await verifies(c, "proof") if j["id"] not in {f["id"] for f in first}]
        assert await settle(c, third) == ids[2:]
        shown = await status(c, "proof")
        assert shown["unverified_archives"] == 0
        assert shown["last_verified_backup"]["backup_id"] == ids[2]
        fired = await scheduler.tick(now + timedelta(days=2))
        assert fired[0]["outcome"] == "skipped: every complete archive is proven"

        listing = (await c.get("/v1/targets/proof/archives", headers=auth("viewer"))).json()
        for archive in listing["items"]:
            check = archive["verification"]
            assert (check["level"], check["status"], check["damaged"]) == (
                "restore", "succeeded", False)
            assert check["at"] == check["finished_at"] and check["duration_s"] > 0

        # The forecast, from those three restore tests; then from a real restore, which measures
        # what is forecast, against the next restore of the newest archive.
        forecast = shown["restore_forecast_s"]
        assert forecast is not None and forecast > 0
        assert shown["rto_forecast_ok"] == {"1": True, "2": True, "3": True}
        first_restore = await restore_newest(c, "proof", ids[2], f"{PREFIX}_proof_restored")
        assert forecast / 3 < first_restore < forecast * 3  # restore tests stand in for it
        for _ in range(2):  # three restores: the forecast's median is proof against one burst
            await restore_newest(c, "proof", ids[2], f"{PREFIX}_proof_restored")
        forecast = (await status(c, "proof"))["restore_forecast_s"]
        measured = await measured_restore(c, "proof", ids[2], f"{PREFIX}_proof_restored", 3)
        assert abs(forecast - measured) <= 0.5 * measured, (forecast, measured)

        samples, _ = await scrape(c)
        assert value(samples, "pgvault_unverified_archives", target="proof") == 0
        assert value(samples, "pgvault_last_verified_backup_timestamp_seconds",
                     target="proof") == datetime.fromisoformat(
                         shown["last_verified_backup"]["at"]).timestamp()
        assert value(samples, "pgvault_restore_forecast_seconds", target="proof") is not None
        assert value(samples, "pgvault_rto_forecast_ok", target="proof", severity="1") == 1

    # A severity-1 RTO shorter than any restore: the forecast says so, before anyone restores.
    tight = make_settings(targets=targets, rto_hours={1: 0.00001, 2: 4, 3: 8})
    async with running_app(tight) as c:
        shown = await status(c, "proof")
        assert shown["rto_forecast_ok"] == {"1": False, "2": True, "3": True}
        samples, _ = await scrape(c)
        assert value(samples, "pgvault_rto_forecast_ok", target="proof", severity="1") == 0
        assert value(samples, "pgvault_rto_forecast_ok", target="proof", severity="3") == 1


async def settled(conn: Any) -> None:
    """No autovacuum of fresh rows, no pending checkpoint, to slow one restore and not the next."""
    await conn.execute("VACUUM ANALYZE words")
    await conn.execute("CHECKPOINT")


async def test_the_forecast_holds_for_a_larger_table(make_settings: Any) -> None:
    """Restores of half a million rows of random text predict the restore of the next, larger
    archive, scaled by its size."""
    db = await create_db(f"{PREFIX}_proofbig")
    conn = await admin_conn(db)
    targets = {"proofbig": {"dsn": dsn(db), "schedules": QUIET}}
    settings = make_settings(targets=targets, worker_concurrency=1)
    grow = ("INSERT INTO words SELECT g, md5(random()::text) || md5(random()::text) "
            "|| md5(random()::text) FROM generate_series($1::int, $2::int) g")
    try:
        await conn.execute("CREATE TABLE words (id int PRIMARY KEY, t text)")
        await conn.execute(grow, 1, 500_000)
        await settled(conn)
        async with running_app(settings) as c:
            first = (await backup(c, "proofbig"))["result"]
            assert (await status(c, "proofbig"))["restore_forecast_s"] is None  # no history
            for _ in range(3):
                await restore_newest(c, "proofbig", first["backup_id"], f"{PREFIX}_proofbig_r1")
            await conn.execute(grow, 500_001, 600_000)
            await settled(conn)
            newest = (await backup(c, "proofbig"))["result"]
            assert newest["size_bytes"] > 1.1 * first["size_bytes"]
            shown = await status(c, "proofbig")
            assert shown["unverified_archives"] == 2 and shown["last_verified_backup"] is None
            forecast = shown["restore_forecast_s"]
            measured = await measured_restore(c, "proofbig", newest["backup_id"],
                                              f"{PREFIX}_proofbig_r2", 3)
            assert abs(forecast - measured) <= 0.5 * measured, (forecast, measured)
    finally:
        await conn.close()
        await drop_db(db)


def test_forecast_fits_a_line_when_sizes_differ_and_a_ratio_otherwise() -> None:
    # A fixed cost of 2 s plus 1 s per 100 MB, seen at 100 and 300 MB: 400 MB takes 6 s.
    assert proof.forecast([(100e6, 3.0), (300e6, 5.0)], 400e6) == 6.0
    # Sizes too close for a line: time per byte, scaled.
    assert proof.forecast([(100e6, 3.0), (105e6, 3.3)], 200e6) == 6.1
    # A line that would make a bigger archive faster is noise: the median time per byte instead.
    assert proof.forecast([(100e6, 5.0), (300e6, 3.0)], 200e6) == 6.0
    assert proof.forecast([(100e6, 1.0), (100e6, 1.2), (100e6, 9.0)], 100e6) == 1.2
    assert proof.forecast([], 1e6) is None
    assert proof.rto_ok(7200.0, {1: 1.0, 2: 4.0, 3: 8.0}) == {"1": False, "2": True, "3": True}
    assert proof.rto_ok(None, {1: 1.0, 2: 4.0, 3: 8.0}) is None


async def test_target_status_answers_within_one_listing_bound_when_storage_hangs(
        make_settings: Any, pagila_db: str, s3_endpoint: str, monkeypatch: Any) -> None:
    # Storage that takes connections and never answers: the status waits for one listing (its
    # bound), not one for the proof and then another for the suspect count.
    monkeypatch.setattr(proof, "LIST_TIMEOUT_S", 1.5)
    with FaultyProxy(s3_endpoint) as proxy:
        settings = make_settings(s3_endpoint_url=proxy.url,
                                 targets={"hung": {"dsn": dsn(pagila_db), "schedules": QUIET}})
        async with running_app(settings) as c:
            proxy.rule = lambda method, path: 30.0
            for url in ("/v1/targets/hung", "/v1/targets"):
                began = time.monotonic()
                resp = await c.get(url, headers=auth("viewer"))
                took = time.monotonic() - began
                assert resp.status_code == 200, resp.text
                shown = resp.json() if url.endswith("hung") else resp.json()["items"][0]
                assert shown["unverified_archives"] is None
                assert shown["suspect_archives"] is None
                assert took < 2.9, (url, took)
            proxy.rule = lambda method, path: None


async def test_weird_job_records_break_neither_status_nor_metrics(make_settings: Any) -> None:
    # Job records nothing in pgvault writes, but a hand edit or an old version could: numbers
    # too large for a double, in the fields the forecast reads. Target status and /metrics still
    # answer, and the forecast ignores them.
    db = await create_db(f"{PREFIX}_proof_weird",
                         sql="CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
    settings = make_settings(targets={"weird": {"dsn": dsn(db), "schedules": QUIET}})
    async with running_app(settings) as c:
        bid = (await backup(c, "weird"))["result"]["backup_id"]
        pool = c.app.state.services.resources.pool
        async with pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO jobs (id, kind, target, status, params, result, requested_by,
                                     started_at, finished_at)
                   VALUES (gen_random_uuid(), 'restore', 'weird', 'succeeded', '{}',
                           jsonb_build_object('backup_id', $1::text,
                                              'duration_s', '1e400'::jsonb), 't',
                           now() - interval '1 minute', now()),
                          (gen_random_uuid(), 'verify', 'weird', 'succeeded',
                           jsonb_build_object('backup_id', $1::text, 'level', 'restore'),
                           '{"phase_durations_s": {"restore": 1e400}, "duration_s": 1e400}',
                           't',
                           now() - interval '1 minute', now()),
                          (gen_random_uuid(), 'backup', 'weird', 'succeeded', '{}',
                           jsonb_build_object('backup_id', $1::text,
                                              'size_bytes', '-1e400'::jsonb), 't',
                           now() - interval '2 minutes', now() - interval '2 minutes')""",
                bid)
        shown = await status(c, "weird")
        # Only the verification's start-to-end minute is a usable figure (its phases are not).
        assert shown["restore_forecast_s"] == 60.0, shown
        assert (await c.get("/v1/targets", headers=auth("viewer"))).status_code == 200
        listed = await c.get("/v1/targets/weird/archives", headers=auth("viewer"))
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"][0]["verification"]["duration_s"] == 60.0
        samples, _ = await scrape(c)
        assert value(samples, "pgvault_unverified_archives", target="weird") == 0
