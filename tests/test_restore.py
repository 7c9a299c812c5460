"""Restores and verifications against real PostgreSQL, gpg and moto's S3 server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

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


async def fingerprint(db: str) -> dict[str, tuple[int, str]]:
    """Row count and a checksum of the content of every ordinary table."""
    conn = await admin_conn(db)
    try:
        tables = await conn.fetch(
            """SELECT format('%I.%I', n.nspname, c.relname) AS q FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               ORDER BY 1""")
        out = {}
        for t in tables:
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), "
                f"'') AS h FROM {t['q']} x")
            out[t["q"]] = (row["n"], row["h"])
        return out
    finally:
        await conn.close()


async def database_exists(name: str) -> bool:
    conn = await admin_conn()
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def scratch_databases() -> list[str]:
    conn = await admin_conn()
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE "
                                "'pgvault_verify_%'")
        return [r["datname"] for r in rows]
    finally:
        await conn.close()


async def restore(client: Any, target: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(f"/v1/targets/{target}/restores", headers=auth("admin"), json=body)
    assert resp.status_code == 202, resp.text
    return await wait_job(client, resp.json()["id"], timeout=180)


async def change_then_restore_in_place(client: Any, target: str, db: str, backup_id: str,
                                       change_sql: str) -> tuple[Any, dict[str, Any]]:
    """The target's contents now, then ``change_sql`` run on it, then ``backup_id`` restored
    in place: ``(contents before the change, the finished restore job)``."""
    before = await fingerprint(db)
    conn = await admin_conn(db)
    try:
        await conn.execute(change_sql)
    finally:
        await conn.close()
    return before, await restore(client, target, {"backup_id": backup_id, "mode": "in_place",
                                                  "confirm": target})


def flip_byte(s3: Any, bucket: str, key: str, offset: int) -> None:
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[offset % len(data)] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))


async def test_pagila_restores_into_a_new_database_identical_to_the_source(
        client: Any, pagila_db: str) -> None:
    job = await backup(client)
    name = f"{PREFIX}_restored"
    done = await restore(client, "pagila", {"backup_id": job["result"]["backup_id"],
                                            "database": name, "jobs": 2, "severity": 1})
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["database"] == name
    assert result["rto_met"] is True and result["duration_s"] > 0
    assert await fingerprint(name) == await fingerprint(pagila_db)
    checklist = result["checklist"]
    assert checklist["row_counts"]["ok"] and checklist["row_counts"]["tables_checked"] >= 20
    assert checklist["invalid_indexes"] == []
    assert checklist["analyze"]["done"] is True
    refreshed = [m["name"] for m in checklist["materialized_views_refreshed"]]
    assert "public.rental_by_category" in refreshed
    conn = await admin_conn(name)
    try:  # the source's matview was never populated; the restored one is
        assert await conn.fetchval("SELECT count(*) FROM public.rental_by_category") > 0
    finally:
        await conn.close()
    assert "restored" in done["summary"]


async def test_default_database_name_and_globals(client: Any) -> None:
    conn = await admin_conn()
    role = f"{PREFIX}_app"
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'x'")
    finally:
        await conn.close()
    job = await backup(client)
    conn = await admin_conn()
    try:
        await conn.execute(f"DROP ROLE {role}")
        done = await restore(client, "pagila", {"backup_id": job["result"]["backup_id"],
                                                "include_globals": True})
        recreated = await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                                        role)
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await conn.close()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["database"].startswith("pagila_restore_")
    assert recreated is True
    checklist = done["result"]["checklist"]
    assert role in checklist["roles_to_reset_password"]
    assert "postgres" in checklist["globals"]["skipped_existing"]
    await drop_db(done["result"]["database"])


async def test_a_repeated_restore_request_replays_its_job(client: Any) -> None:
    """A bot retrying a restore (its first answer lost) must get the same job back, not a 409
    for the database the first request created, nor a 422 because the default name holds the
    time."""
    bid = (await backup(client))["result"]["backup_id"]
    headers = {**auth("admin"), "Idempotency-Key": f"restore-{bid}"}
    first = await client.post("/v1/targets/pagila/restores", headers=headers,
                              json={"backup_id": bid})
    assert first.status_code == 202, first.text
    done = await wait_job(client, first.json()["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    await asyncio.sleep(1.1)  # the default database name now holds another second
    try:
        again = await client.post("/v1/targets/pagila/restores", headers=headers,
                                  json={"backup_id": bid})
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["status"] == "succeeded"
        other = await client.post("/v1/targets/pagila/restores", headers=headers,
                                  json={"backup_id": bid, "severity": 1})
        assert other.status_code == 422
        assert other.headers["content-type"] == "application/problem+json"
    finally:
        await drop_db(done["result"]["database"])


async def inplace_target(make_settings: Any, pagila_template: str, suffix: str) -> tuple[str, Any]:
    db = await create_db(f"{PREFIX}_{suffix}", template=pagila_template)
    return db, make_settings(targets={"inplace": {"dsn": dsn(db), "retention_min_backups": 1}})


async def test_in_place_restore_returns_target_to_backed_up_state(
        make_settings: Any, pagila_template: str) -> None:
    db, settings = await inplace_target(make_settings, pagila_template, "inplace")
    async with running_app(settings) as c:
        job = await backup(c, "inplace")
        before = await fingerprint(db)
        conn = await admin_conn(db)
        try:
            await conn.execute("DELETE FROM public.film_actor WHERE actor_id < 50")
            await conn.execute("UPDATE public.customer SET email = 'changed@example.com'")
            await conn.execute("CREATE TABLE public.extra AS SELECT 1 AS x")
        finally:
            await conn.close()
        assert await fingerprint(db) != before

        wrong = await c.post("/v1/targets/inplace/restores", headers=auth("admin"), json={
            "backup_id": job["result"]["backup_id"], "mode": "in_place", "confirm": "pagila"})
        assert wrong.status_code == 422
        operator = await c.post("/v1/targets/inplace/restores", headers=auth("operator"), json={
            "backup_id": job["result"]["backup_id"], "mode": "in_place", "confirm": "inplace"})
        assert operator.status_code == 403

        done = await restore(c, "inplace", {"backup_id": job["result"]["backup_id"],
                                            "mode": "in_place", "confirm": "inplace"})
    assert done["status"] == "succeeded", done["error"]
    after = await fingerprint(db)
    assert "public.extra" not in after  # the archive's schemas are replaced whole
    assert after == before


async def test_tampered_archive_fails_verify_and_restore_without_side_effects(
        make_settings: Any, pagila_template: str, s3: Any, bucket: str) -> None:
    db, settings = await inplace_target(make_settings, pagila_template, "tamper")
    async with running_app(settings) as c:
        job = await backup(c, "inplace")
        backup_id = job["result"]["backup_id"]
        good = await c.post(f"/v1/targets/inplace/archives/{backup_id}/verify",
                            headers=auth("operator"), json={"level": "checksum"})
        assert (await wait_job(c, good.json()["id"]))["status"] == "succeeded"

        flip_byte(s3, bucket, f"archives/inplace/{backup_id}/database.dump.zst.gpg", 50_000)
        before = await fingerprint(db)

        resp = await c.post(f"/v1/targets/inplace/archives/{backup_id}/verify",
                            headers=auth("operator"), json={"level": "checksum"})
        verify = await wait_job(c, resp.json()["id"])
        assert verify["status"] == "failed"
        assert "SHA-256" in verify["error"]["detail"]

        new_db = f"{PREFIX}_from_tampered"
        failed = await restore(c, "inplace", {"backup_id": backup_id, "database": new_db})
        assert failed["status"] == "failed" and "SHA-256" in failed["error"]["detail"]
        assert not await database_exists(new_db)

        failed = await restore(c, "inplace", {"backup_id": backup_id, "mode": "in_place",
                                              "confirm": "inplace"})
        assert failed["status"] == "failed"
        assert await fingerprint(db) == before

        listing = (await c.get("/v1/targets/inplace/archives", headers=auth("viewer"))).json()
        shown = next(a for a in listing["items"] if a["backup_id"] == backup_id)
        assert shown["verification"]["status"] == "failed"
        assert shown["verification"]["level"] == "checksum"
        assert shown["verification"]["damaged"] is True


async def test_corrupt_plaintext_behind_a_matching_hash_is_still_refused(
        make_settings: Any, pagila_template: str, s3: Any, bucket: str,
        gpg_key: tuple[Path, str]) -> None:
    """Someone who can rewrite the manifest too: gpg's integrity check must still stop it."""
    import hashlib

    _, settings = await inplace_target(make_settings, pagila_template, "mdc")
    async with running_app(settings) as c:
        job = await backup(c, "inplace")
        backup_id = job["result"]["backup_id"]
        key = f"archives/inplace/{backup_id}/database.dump.zst.gpg"
        flip_byte(s3, bucket, key, 70_000)
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        mkey = f"archives/inplace/{backup_id}/manifest.json"
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=mkey)["Body"].read())
        for obj in manifest["objects"]:
            if obj["kind"] == "database":
                obj["sha256"] = hashlib.sha256(data).hexdigest()
        s3.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest).encode())
        c.app.state.resources.manifests.clear()  # type: ignore[attr-defined]
        new_db = f"{PREFIX}_from_mdc"
        failed = await restore(c, "inplace", {"backup_id": backup_id, "database": new_db})
    assert failed["status"] == "failed"
    assert "decrypt" in failed["error"]["detail"]
    assert not await database_exists(new_db)


async def test_restore_verification_passes_and_leaves_no_scratch_database(client: Any) -> None:
    job = await backup(client)
    resp = await client.post(f"/v1/targets/pagila/archives/{job['result']['backup_id']}/verify",
                             headers=auth("operator"), json={"level": "restore"})
    assert resp.status_code == 202
    done = await wait_job(client, resp.json()["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["row_counts"]["ok"] is True
    assert done["result"]["unvalidated_constraints"] == []
    assert done["result"]["invalid_indexes"] == []
    assert await scratch_databases() == []


async def test_cancelled_restore_verification_cleans_up(make_settings: Any, big_db: str,
                                                        s3_endpoint: str, tmp_path: Path) -> None:
    # A work_dir of its own: /tmp is shared with every other test run on the machine.
    settings = make_settings(targets={"big": {"dsn": dsn(big_db)}}, work_dir=tmp_path)
    async with running_app(settings) as c:
        job = await backup(c, "big")
        resp = await c.post(f"/v1/targets/big/archives/{job['result']['backup_id']}/verify",
                            headers=auth("operator"), json={"level": "restore"})
        job_id = resp.json()["id"]
        phase = None
        for _ in range(600):
            current = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
            phase = current["phase"]
            if phase == "restore":
                break
            await asyncio.sleep(0.05)
        assert phase == "restore"
        await asyncio.sleep(0.5)  # pg_restore is writing into the scratch database
        assert await scratch_databases()
        cancel = await c.post(f"/v1/jobs/{job_id}/cancel", headers=auth("operator"))
        assert cancel.status_code == 202
        done = await wait_job(c, job_id)
    assert done["status"] == "cancelled"
    assert await scratch_databases() == []
    assert list(tmp_path.iterdir()) == []


async def test_events_stream_follows_a_restore(client: Any) -> None:
    job = await backup(client)
    resp = await client.post("/v1/targets/pagila/restores", headers=auth("admin"),
                             json={"backup_id": job["result"]["backup_id"],
                                   "database": f"{PREFIX}_sse"})
    job_id = resp.json()["id"]
    events: list[dict[str, Any]] = []
    async with client.stream("GET", f"/v1/jobs/{job_id}/events",
                             headers=auth("viewer")) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "succeeded"
    assert events[-1]["result"]["database"] == f"{PREFIX}_sse"
    phases = [e["phase"] for e in events]
    assert "restore" in phases  # the longest phase; pagila's others can pass between two polls
    assert len(events) >= 3 and len({json.dumps(e) for e in events}) == len(events)


async def test_restore_requests_are_validated(client: Any) -> None:
    job = await backup(client)
    bid = job["result"]["backup_id"]
    cases = [
        ({"backup_id": "nope"}, 422),
        ({"backup_id": bid, "database": "bad-name"}, 422),
        ({"backup_id": bid, "database": "x" * 64}, 422),
        ({"backup_id": bid, "mode": "sideways"}, 422),
        ({"backup_id": bid, "severity": 4}, 422),
        ({"backup_id": bid, "jobs": 0}, 422),
        ({"backup_id": bid, "mode": "in_place"}, 422),
        ({"backup_id": bid, "mode": "in_place", "confirm": "pagila", "keep_on_failure": True},
         422),  # an in-place restore that fails is rolled back: nothing to keep
        ({"backup_id": "20000101T000000Z-aaaaaa"}, 404),
    ]
    for body, status in cases:
        resp = await client.post("/v1/targets/pagila/restores", headers=auth("admin"), json=body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    bad = await client.post(f"/v1/targets/pagila/archives/{bid}/verify",
                            headers=auth("operator"), json={"level": "deep"})
    assert bad.status_code == 422
    _ = FaultyProxy


async def test_restore_into_an_existing_database_is_409(client: Any, pagila_db: str) -> None:
    job = await backup(client)
    resp = await client.post("/v1/targets/pagila/restores", headers=auth("admin"),
                             json={"backup_id": job["result"]["backup_id"],
                                   "database": "postgres"})
    assert resp.status_code == 409
    assert resp.headers["content-type"] == "application/problem+json"
