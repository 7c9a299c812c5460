"""Copies (SPEC 2.15): restores and verifications fall back to an intact copy, and the
reconciliation job finds and repairs what a location lacks or holds damaged.

Backups write every copy themselves (tests/test_copies.py); these tests then take objects away
or flip bytes in one location and see the others serve and repair it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from typing import Any

import pytest

from tests.conftest import (
    TAG,
    admin_conn,
    auth,
    backup,
    drop_db,
    dsn,
    running_app,
    wait_job,
)

RUN = secrets.token_hex(3)
PRIMARY_PREFIX = f"reconcile-{RUN}"
COPY_PREFIX = f"copy-{RUN}"
DB_OBJECT = "database.dump.zst.gpg"
GLOBALS_OBJECT = "globals.sql.zst.gpg"


@pytest.fixture(scope="module")
def copy_bucket(s3: Any) -> str:
    name = f"pgv-{TAG}-copy"
    s3.create_bucket(Bucket=name)
    return name


def _primary(bid: str, key: str = "") -> str:
    return f"{PRIMARY_PREFIX}/pagila/{bid}/{key}"


def _copy(bid: str, key: str = "") -> str:
    return f"{COPY_PREFIX}/pagila/{bid}/{key}"


def _offsite(copy_bucket: str, s3_endpoint: str) -> dict[str, Any]:
    return {"name": "offsite", "url": f"s3://{copy_bucket}/{COPY_PREFIX}",
            "s3_endpoint_url": s3_endpoint}


def _settings(make_settings: Any, storage_url: str, pagila_db: str,
              copies: list[dict[str, Any]]) -> Any:
    """Incomplete archives expire at once; one good archive is the minimum."""
    return make_settings(storage_url=storage_url, copies=copies, incomplete_grace_hours=0.0001,
                         targets={"pagila": {"dsn": dsn(pagila_db),
                                             "retention_min_backups": 1}})


def flip_byte(s3: Any, bucket: str, key: str) -> None:
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def sha256_of(s3: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def manifest_of(s3: Any, bucket: str, bid: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        s3.get_object(Bucket=bucket, Key=_primary(bid, "manifest.json"))["Body"].read())
    return doc


async def run_job(c: Any, path: str, body: dict[str, Any], role: str = "admin",
                  timeout: float = 120) -> dict[str, Any]:
    resp = await c.post(path, json=body, headers=auth(role))
    assert resp.status_code == 202, resp.text
    job = await wait_job(c, resp.json()["id"], timeout)
    assert job["status"] == "succeeded", job
    return job


async def restore(c: Any, bid: str) -> dict[str, Any]:
    database = f"pgv_{TAG}_rec_{secrets.token_hex(3)}"
    try:
        return await run_job(c, "/v1/targets/pagila/restores",
                             {"backup_id": bid, "database": database})
    finally:
        await drop_db(database)


async def test_fallback_to_a_copy_and_reconcile_repairs(make_settings: Any, s3: Any, bucket: str,
                                                        copy_bucket: str, s3_endpoint: str,
                                                        metadata_db: str, pagila_db: str,
                                                        tmp_path: Any) -> None:
    # Copies are tried in order: "local" (a folder), then "offsite".
    local = tmp_path / "local"
    settings = _settings(make_settings, f"s3://{bucket}/{PRIMARY_PREFIX}", pagila_db,
                         [{"name": "local", "url": f"file://{local}"},
                          _offsite(copy_bucket, s3_endpoint)])
    async with running_app(settings) as c:
        bid1 = (await backup(c))["result"]["backup_id"]
        bid2 = (await backup(c))["result"]["backup_id"]
        # The backups wrote both copies; the folder copy then loses everything, so restores
        # try it first and move on to "offsite", and reconciliation refills it.
        assert (local / "pagila" / bid1 / "manifest.json").is_file()
        shutil.rmtree(local / "pagila")
        manifest = {o["key"]: o for o in manifest_of(s3, bucket, bid1)["objects"]}

        # The primary loses one object of bid1 and holds another with one byte flipped.
        s3.delete_object(Bucket=bucket, Key=_primary(bid1, GLOBALS_OBJECT))
        flip_byte(s3, bucket, _primary(bid1, DB_OBJECT))
        assert sha256_of(s3, bucket, _primary(bid1, DB_OBJECT)) != manifest[DB_OBJECT]["sha256"]

        # Listed as complete (a copy holds it whole), with a note; retention keeps it.
        archive = (await c.get(f"/v1/targets/pagila/archives/{bid1}",
                               headers=auth("viewer"))).json()
        assert archive["status"] == "complete" and archive["complete"] is True, archive
        assert GLOBALS_OBJECT in archive["degraded"] and "offsite" in archive["degraded"]
        plan = (await run_job(c, "/v1/targets/pagila/retention", {"dry_run": True}))["result"]
        assert bid1 not in [d["backup_id"] for d in plan["deleted"]], plan

        # Restore and both verification levels read the damaged objects from the copy.
        job = await restore(c, bid1)
        assert "2 object(s) read from copy offsite" in job["summary"], job["summary"]
        restored = job["result"]
        assert restored["source"] == "offsite"
        assert restored["sources"] == {GLOBALS_OBJECT: "offsite", DB_OBJECT: "offsite",
                                       **{k: "primary" for k in manifest
                                          if k not in (GLOBALS_OBJECT, DB_OBJECT)}}
        assert restored["rows_match"] is True
        for level in ("checksum", "restore"):
            verified = (await run_job(c, f"/v1/targets/pagila/archives/{bid1}/verify",
                                      {"level": level}, role="operator"))["result"]
            assert verified["source"] == "offsite", verified
            assert verified["sources"][DB_OBJECT] == "offsite"
        good = (await run_job(c, f"/v1/targets/pagila/archives/{bid2}/verify",
                              {"level": "checksum"}, role="operator"))["result"]
        assert good["source"] == "primary" and set(good["sources"].values()) == {"primary"}

        # A deep reconcile finds both and repairs the primary from the copy.
        deep = (await run_job(c, "/v1/targets/pagila/reconcile", {"deep": True},
                              role="operator"))["result"]
        found = deep["archives"][bid1]
        assert found["primary"]["found"] == "damaged" and found["primary"]["repaired"] is True
        assert GLOBALS_OBJECT in found["primary"]["detail"]
        assert DB_OBJECT in found["primary"]["detail"]
        assert found["offsite"] == {"found": "complete", "repaired": False, "detail": None}
        assert deep["archives"][bid2]["primary"]["found"] == "complete"
        # The empty folder copy gets both archives.
        for bid in (bid1, bid2):
            assert deep["archives"][bid]["local"]["found"] == "missing"
            assert deep["archives"][bid]["local"]["repaired"] is True
        assert (deep["deep"], deep["checked"], deep["repaired"], deep["unrepaired"]) == \
            (True, 2, 3, 0)
        for entry in manifest.values():
            assert hashlib.sha256((local / "pagila" / bid1 / entry["key"]).read_bytes()
                                  ).hexdigest() == entry["sha256"]
        for key, entry in manifest.items():
            assert sha256_of(s3, bucket, _primary(bid1, key)) == entry["sha256"], key
        archive = (await c.get(f"/v1/targets/pagila/archives/{bid1}",
                               headers=auth("viewer"))).json()
        assert archive["degraded"] is None
        assert (await restore(c, bid1))["result"]["source"] == "primary"

        # Damaged again; meanwhile the copy loses bid2 entirely and bid1's database object.
        s3.delete_object(Bucket=bucket, Key=_primary(bid1, GLOBALS_OBJECT))
        flip_byte(s3, bucket, _primary(bid1, DB_OBJECT))
        gone = s3.list_objects_v2(Bucket=copy_bucket, Prefix=_copy(bid2))["Contents"]
        s3.delete_objects(Bucket=copy_bucket,
                          Delete={"Objects": [{"Key": o["Key"]} for o in gone]})
        s3.delete_object(Bucket=copy_bucket, Key=_copy(bid1, DB_OBJECT))
        # And the primary loses bid2's manifest: only the copies still say bid2 is an archive.
        manifest2 = s3.get_object(Bucket=bucket, Key=_primary(bid2, "manifest.json"))["Body"].read()
        s3.delete_object(Bucket=bucket, Key=_primary(bid2, "manifest.json"))

        shallow = (await run_job(c, "/v1/targets/pagila/reconcile", {},
                                 role="operator"))["result"]
        found = shallow["archives"][bid1]
        # By size only: the missing object is found and repaired, the flipped byte is not seen.
        assert found["primary"]["found"] == "incomplete" and found["primary"]["repaired"]
        assert DB_OBJECT not in found["primary"]["detail"]
        assert sha256_of(s3, bucket, _primary(bid1, DB_OBJECT)) != manifest[DB_OBJECT]["sha256"]
        assert sha256_of(s3, bucket, _primary(bid1, GLOBALS_OBJECT)) == \
            manifest[GLOBALS_OBJECT]["sha256"]
        # The copy's missing database object is not copied from the primary's damaged one (it
        # fails its hash on the way) but from the folder copy.
        assert found["offsite"]["found"] == "incomplete" and found["offsite"]["repaired"]
        assert DB_OBJECT in found["offsite"]["detail"]
        assert sha256_of(s3, copy_bucket, _copy(bid1, DB_OBJECT)) == manifest[DB_OBJECT]["sha256"]
        # A copy that lacks a whole archive gets it, the manifest written last.
        assert shallow["archives"][bid2]["offsite"]["found"] == "missing"
        assert shallow["archives"][bid2]["offsite"]["repaired"] is True
        # The primary gets its manifest back, from the first copy holding one.
        assert shallow["archives"][bid2]["primary"] == {
            "found": "incomplete", "repaired": True, "detail": "repaired: manifest missing"}
        assert s3.get_object(Bucket=bucket, Key=_primary(bid2, "manifest.json"))["Body"].read() \
            == manifest2
        assert (shallow["deep"], shallow["repaired"], shallow["unrepaired"]) == (False, 4, 0)
        doc2 = json.loads(manifest2)
        for entry in doc2["objects"]:
            assert sha256_of(s3, copy_bucket, _copy(bid2, entry["key"])) == entry["sha256"]
        conn = await admin_conn(metadata_db)
        try:
            rows = {(r["backup_id"], r["location"]): r["status"] for r in await conn.fetch(
                "SELECT backup_id, location, status FROM archive_copies WHERE target = 'pagila' "
                "AND backup_id = ANY($1::text[])", [bid1, bid2])}
        finally:
            await conn.close()
        assert rows == {(b, loc): "complete" for b in (bid1, bid2)
                        for loc in ("primary", "local", "offsite")}


async def test_reconcile_request(client: Any) -> None:
    path = "/v1/targets/pagila/reconcile"
    assert (await client.post(path, json={"deep": True}, headers=auth("viewer"))).status_code \
        == 403
    resp = await client.post(path, json={"deep": True, "repair": False},
                             headers=auth("operator"))
    assert resp.status_code == 422, resp.text
    assert (await client.post("/v1/targets/nope/reconcile", json={},
                              headers=auth("operator"))).status_code == 404
    headers = {**auth("operator"), "Idempotency-Key": f"rec-{RUN}"}
    first = await client.post(path, json={}, headers=headers)
    again = await client.post(path, json={}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert first.headers["Location"] == f"/v1/jobs/{first.json()['id']}"
    job = await wait_job(client, first.json()["id"])
    assert job["kind"] == "reconcile" and job["status"] == "succeeded", job
    assert job["result"]["deep"] is False and job["result"]["unrepaired"] == 0


async def test_cli_reconcile(make_settings: Any) -> None:
    from tests.test_cli import run
    from tests.test_reliability import uvicorn

    settings = make_settings(storage_url=f"s3://pgv-{TAG}/cli-reconcile-{RUN}")
    async with uvicorn(settings) as (_, url):
        done = await run(url, "reconcile", "pagila", "--deep", "--wait", "--json")
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)
        assert job["kind"] == "reconcile" and job["status"] == "succeeded", job
        assert job["result"] == {"deep": True, "archives": {}, "checked": 0, "repaired": 0,
                                 "unrepaired": 0, "phase_durations_s": job["result"][
                                     "phase_durations_s"]}
        assert "deep reconcile of pagila" in job["summary"]


async def test_copy_object_verifies_before_it_writes(s3: Any, bucket: str, copy_bucket: str,
                                                     s3_endpoint: str, tmp_path: Any) -> None:
    """Larger than a part: a multipart upload, completed only once the hash matched."""
    from app.archives.reconcile import Io, Refused, copy_object
    from app.backup.manifest import ArchiveObject
    from app.integrations.storage import open_location

    part = 5 * 1024 * 1024
    data = os.urandom(2 * part + 12345)
    key = f"pagila/20260101T000000Z-abcdef/{DB_OBJECT}"
    s3.put_object(Bucket=bucket, Key=f"obj-{RUN}/{key}", Body=data)
    entry = ArchiveObject(key=DB_OBJECT, size_bytes=len(data),
                          sha256=hashlib.sha256(data).hexdigest())

    def s3_location(name: str, where: str) -> Any:
        return open_location(name=name, url=where, endpoint_url=s3_endpoint,
                             region="us-east-1", concurrency=2)

    source = await s3_location("primary", f"s3://{bucket}/obj-{RUN}")
    dests = [await s3_location("offsite", f"s3://{copy_bucket}/obj-{RUN}"),
             await open_location(name="local", url=f"file://{tmp_path}", endpoint_url=None,
                                 region="us-east-1", concurrency=2)]
    try:
        for dest in dests:
            wrong = ArchiveObject(key=DB_OBJECT, size_bytes=len(data), sha256="0" * 64)
            with pytest.raises(Refused, match="does not match"):
                await copy_object(Io(lambda r, w: None), source, dest, key, wrong, part=part)
            assert await dest.storage.list_objects("pagila/") == []
            assert await dest.storage.pending_uploads("pagila/") == []

            seen: list[tuple[int, int]] = []
            await copy_object(Io(lambda r, w, seen=seen: seen.append((r, w))), source, dest,
                              key, entry, part=part)
            assert await dest.storage.get(key) == data
            assert seen[-1] == (len(data), len(data)) and len(seen) > 3  # progress as it went
    finally:
        for location in (source, *dests):
            await location.storage.close()


async def test_an_unlisted_copy_leaves_a_short_archive_unjudged(s3_endpoint: str) -> None:
    """Primary short, the only copy cannot be listed: not restorable, not incomplete either
    (retention would delete it): unreadable until the copy answers."""
    from app.archives import holdings
    from app.backup.manifest import Manifest
    from app.integrations.storage import open_location

    bid = "20260101T000000Z-abcdef"
    doc = Manifest.model_validate({"backup_id": bid, "target": "pagila", "objects": [
        {"key": DB_OBJECT, "size_bytes": 10, "sha256": "0" * 64}]})
    gone = await open_location(name="offsite", url=f"s3://pgv-{TAG}-no-such-bucket/x",
                               endpoint_url=s3_endpoint, region="us-east-1", concurrency=2)
    try:
        verdict = await holdings.judge([gone], "pagila", bid, doc, [])
    finally:
        await gone.storage.close()
    assert verdict is not None and verdict.degraded is None
    assert verdict.reason is not None and "offsite" in verdict.reason
    assert DB_OBJECT in verdict.reason


async def test_reconcile_is_scheduled_weekly_by_size(make_settings: Any, pagila_db: str) -> None:
    from datetime import UTC, datetime, timedelta

    off = {"backup": "", "retention": "", "verify": "", "maintenance": ""}
    settings = make_settings(storage_url=f"s3://pgv-{TAG}/sched-reconcile-{RUN}", targets={
        f"recsched-{RUN}": {"dsn": dsn(pagila_db), "schedules": off}})
    async with running_app(settings) as c:
        scheduler = c.app.state.services.scheduler  # type: ignore[attr-defined]
        t0 = datetime(2031, 3, 3, tzinfo=UTC)  # a Monday
        assert await scheduler.tick(t0) == []  # the first slot seen is recorded, not fired
        assert await scheduler.tick(t0 + timedelta(days=5)) == []  # no Sunday 04:00 since
        fired = await scheduler.tick(t0 + timedelta(days=6, hours=4, minutes=1))
        assert [(f["kind"], f["outcome"]) for f in fired] == [("reconcile", "queued")]
        job = await wait_job(c, str(fired[0]["job_id"]))
        assert job["status"] == "succeeded" and job["result"]["deep"] is False, job
        assert job["requested_by"] == "scheduler"


async def test_retention_keeps_an_archive_whose_manifest_only_a_copy_holds(
        make_settings: Any, s3: Any, bucket: str, copy_bucket: str, s3_endpoint: str,
        pagila_db: str) -> None:
    """The primary lost a manifest: its archive looks incomplete there, but a copy holds it whole.
    Retention must not delete "the incomplete archive" in every location."""
    prefix = f"{PRIMARY_PREFIX}-lost"
    settings = _settings(make_settings, f"s3://{bucket}/{prefix}", pagila_db,
                         [_offsite(copy_bucket, s3_endpoint)])
    async with running_app(settings) as c:
        bid = (await backup(c))["result"]["backup_id"]
        keep = (await backup(c))["result"]["backup_id"]
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/pagila/{bid}/")["Contents"]
        s3.delete_object(Bucket=bucket, Key=f"{prefix}/pagila/{bid}/manifest.json")
        archives = (await c.get("/v1/targets/pagila/archives", headers=auth("viewer"))).json()
        assert {a["backup_id"]: a["status"] for a in archives["items"]}[bid] == "incomplete"

        job = await run_job(c, "/v1/targets/pagila/retention", {"dry_run": False})
        kept = {k["backup_id"]: k["reason"] for k in job["result"]["kept"]}
        assert bid in kept and "offsite" in kept[bid], job["result"]
        assert keep in kept
        assert not job["result"]["deleted"]
        in_copy = s3.list_objects_v2(Bucket=copy_bucket, Prefix=_copy(bid))["Contents"]
        assert any(o["Key"].endswith("manifest.json") for o in in_copy)
        assert len(in_copy) == len(listed)
