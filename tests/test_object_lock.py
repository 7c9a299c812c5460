"""S3 Object Lock and deletion across locations (SPEC 2.15), against moto's S3 server over HTTP:
a locked location writes every object under retention, retention and DELETE leave locked archives
alone and say until when, an archive is deleted from every location, and a lock setting the
bucket cannot honour stops the start-up."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from app.archives import copy_state
from tests.conftest import TAG, admin_conn, auth, backup, dsn, running_app, wait_job
from tests.served import served_env
from tests.test_config import one_line_and_exit_2, serve


@pytest.fixture(scope="module")
def lock_bucket(s3: Any) -> str:
    """A bucket created with Object Lock enabled (which also turns versioning on)."""
    name = f"pgv-{TAG}-lock"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def keys_of(s3: Any, bucket: str, prefix: str) -> list[str]:
    resp = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def versions_of(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    resp = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    return [*resp.get("Versions", []), *resp.get("DeleteMarkers", [])]


def plant(s3: Any, bucket: str, src: str, dst: str, *, until: datetime | None = None,
          dst_bucket: str | None = None) -> None:
    """A copy of archive folder ``src`` (a key prefix ending in ``<backup_id>/``) as ``dst``,
    its manifest naming the new id; locked until ``until`` when given."""
    src_id, dst_id = src.rstrip("/").rsplit("/", 1)[1], dst.rstrip("/").rsplit("/", 1)[1]
    lock = ({"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": until}
            if until else {})
    for key in keys_of(s3, bucket, src):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if key.endswith("/manifest.json"):
            doc = json.loads(body)
            assert doc["backup_id"] == src_id
            doc["backup_id"] = dst_id
            body = json.dumps(doc).encode()
        s3.put_object(Bucket=dst_bucket or bucket, Key=dst + key[len(src):], Body=body, **lock)


async def test_locked_archives_are_written_locked_and_never_deleted_early(
        make_settings: Any, pagila_db: str, s3: Any, lock_bucket: str) -> None:
    settings = make_settings(
        storage_url=f"s3://{lock_bucket}/archives", object_lock_days=1,
        incomplete_grace_hours=0.0001,
        targets={"lk": {"dsn": dsn(pagila_db), "retention_days": 30,
                        "retention_min_backups": 1}})
    async with running_app(settings) as c:
        started = datetime.now(UTC)
        real = (await backup(c, "lk"))["result"]["backup_id"]
        folder = f"archives/lk/{real}/"

        # 1. Every object, the multipart dump and the one-request manifest alike, is locked
        # for a day, and a versioned delete (the one that would really remove it) is refused.
        keys = keys_of(s3, lock_bucket, folder)
        assert f"{folder}manifest.json" in keys and len(keys) >= 3, keys
        for key in keys:
            head = s3.head_object(Bucket=lock_bucket, Key=key)
            assert head["ObjectLockMode"] == "GOVERNANCE", (key, head)
            until = head["ObjectLockRetainUntilDate"]
            assert started + timedelta(days=1) - timedelta(seconds=5) <= until \
                <= datetime.now(UTC) + timedelta(days=1), (key, until)
        version = versions_of(s3, lock_bucket, folder)[0]
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            s3.delete_object(Bucket=lock_bucket, Key=version["Key"],
                             VersionId=version["VersionId"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"

        # Two expired archives: one locked for a day, one whose lock ends in a moment.
        old, ended = "20200201T000000Z-lockaa", "20200101T000000Z-lockbb"
        lock_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
        plant(s3, lock_bucket, folder, f"archives/lk/{old}/", until=lock_end)
        plant(s3, lock_bucket, folder, f"archives/lk/{ended}/",
              until=datetime.now(UTC) + timedelta(seconds=2))
        await asyncio.sleep(3)  # past the short lock

        # 2. Retention, dry and real: the locked one is kept with its lock end; the one whose
        # lock ended goes, every version of it (storage really freed, no delete marker left).
        for dry_run in (True, False):
            resp = await c.post("/v1/targets/lk/retention", headers=auth("admin"),
                                json={"dry_run": dry_run})
            assert resp.status_code == 202, resp.text
            job = await wait_job(c, resp.json()["id"])
            assert job["status"] == "succeeded", job
            kept = {i["backup_id"]: i for i in job["result"]["kept"]}
            assert [i["backup_id"] for i in job["result"]["deleted"]] == [ended], job["result"]
            assert kept[old]["locked_until"] == lock_end.isoformat().replace("+00:00", "Z")
            assert "locked until" in kept[old]["reason"]
            assert "locked_until" not in kept[real]  # the newest good one: kept for that
            assert "under Object Lock" in job["summary"]
        assert len(keys_of(s3, lock_bucket, f"archives/lk/{old}/")) == len(keys)
        assert versions_of(s3, lock_bucket, f"archives/lk/{ended}/") == []
        detail = (await c.get(f"/v1/targets/lk/archives/{old}", headers=auth("viewer"))).json()
        assert detail["complete"] is True
        assert datetime.fromisoformat(detail["locked_until"]) == lock_end

        # 3. DELETE of the locked archive: 409 naming the date, audited as refused.
        resp = await c.delete(f"/v1/targets/lk/archives/{old}", headers=auth("admin"))
        assert resp.status_code == 409, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        stamp = lock_end.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert f"locked until {stamp}" in resp.json()["detail"]
        assert len(keys_of(s3, lock_bucket, f"archives/lk/{old}/")) == len(keys)
        audit = (await c.get("/v1/audit?limit=50", headers=auth("admin"))).json()["items"]
        event = next(e for e in audit if e["action"] == "archive.delete"
                     and e["details"].get("backup_id") == old)
        assert event["outcome"] == "refused"
        assert event["details"]["locked_until"] == stamp


async def test_delete_removes_the_archive_from_every_location(
        make_settings: Any, pagila_db: str, s3: Any, bucket: str, s3_endpoint: str) -> None:
    copy_prefix = f"copy-{TAG}"
    target = {"lkdel": {"dsn": dsn(pagila_db), "retention_min_backups": 1}}
    settings = make_settings(
        targets=target, copies=[{"name": "second", "url": f"s3://{bucket}/{copy_prefix}",
                                 "s3_endpoint_url": s3_endpoint}])
    async with running_app(settings) as c:
        real = (await backup(c, "lkdel"))["result"]["backup_id"]
        old = "20200101T000000Z-delall"
        plant(s3, bucket, f"archives/lkdel/{real}/", f"archives/lkdel/{old}/")
        plant(s3, bucket, f"archives/lkdel/{real}/", f"{copy_prefix}/lkdel/{old}/")
        conn = await admin_conn(settings.metadata_dsn.database)
        try:
            await copy_state.record(conn, target="lkdel", backup_id=old, location="second",
                                    status="complete")
        finally:
            await conn.close()
        resp = await c.delete(f"/v1/targets/lkdel/archives/{old}", headers=auth("admin"))
        assert resp.status_code == 204, resp.text
        assert keys_of(s3, bucket, f"archives/lkdel/{old}/") == []
        assert keys_of(s3, bucket, f"{copy_prefix}/lkdel/{old}/") == []
        conn = await admin_conn(settings.metadata_dsn.database)
        try:
            assert await copy_state.states(conn, "lkdel", [old]) == {}
        finally:
            await conn.close()

    # A copy that cannot be listed (its bucket is gone): nothing is deleted anywhere, and the
    # answer names the copy.
    unreachable = make_settings(targets=target, copies=[
        {"name": "faraway", "url": f"s3://pgv-{TAG}-gone/{copy_prefix}",
         "s3_endpoint_url": s3_endpoint}])
    plant(s3, bucket, f"archives/lkdel/{real}/", f"archives/lkdel/{old}/")
    async with running_app(unreachable) as c:
        resp = await c.delete(f"/v1/targets/lkdel/archives/{old}", headers=auth("admin"))
        assert resp.status_code == 503, resp.text
        assert "faraway" in resp.json()["detail"]
        assert keys_of(s3, bucket, f"archives/lkdel/{old}/") != []


def test_a_lock_the_bucket_cannot_hold_stops_the_start_up(
        metadata_db: str, pagila_db: str, gpg_key: tuple[Path, str], tmp_path: Path,
        bucket: str, s3_endpoint: str, make_settings: Any) -> None:
    # A bucket made without Object Lock: one readable line naming the location and the bucket.
    env = served_env(metadata_db, pagila_db, gpg_key, tmp_path,
                     PGVAULT_STORAGE_URL=f"s3://{bucket}/archives",
                     PGVAULT_S3_ENDPOINT_URL=s3_endpoint, PGVAULT_OBJECT_LOCK_DAYS="7")
    started = time.monotonic()
    one_line_and_exit_2(serve(env), "storage location primary", f"bucket {bucket}",
                        "PGVAULT_OBJECT_LOCK_DAYS", "no Object Lock configuration")
    assert time.monotonic() - started < 30
    # A local folder cannot lock at all: refused with the settings.
    with pytest.raises(ValueError, match="cannot lock objects"):
        make_settings(storage_url=f"file://{tmp_path}", object_lock_days=1)
    with pytest.raises(ValueError, match="cannot lock objects"):
        make_settings(copies=[{"name": "disk", "url": f"file://{tmp_path}",
                               "object_lock_days": 1}])
