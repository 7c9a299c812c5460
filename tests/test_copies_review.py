"""Deletion and repair across locations must not destroy what only a copy holds, and leave
nothing behind in a copy (SPEC 2.15): an adversarial review's cases, on moto over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import pytest
from pydantic import ValidationError

from app.archives import holdings, removal
from tests.conftest import auth, backup, dsn, running_app, wait_job
from tests.faults import FaultyProxy
from tests.test_copies import new_bucket, s3_pending


def _keys(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    resp = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in resp.get("Contents", [])}


def _settings(make_settings: Any, s3: Any, s3_endpoint: str, **kw: Any) -> tuple[Any, str, str]:
    primary, offsite = new_bucket(s3, "rvp"), new_bucket(s3, "rvc")
    copies = [{"name": "offsite", "url": f"s3://{offsite}/mirror", "s3_endpoint_url": s3_endpoint}]
    return (make_settings(storage_url=f"s3://{primary}/archives", copies=copies, **kw),
            primary, offsite)


async def _job(c: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await c.post(path, json=body, headers=auth("admin"))
    assert resp.status_code == 202, resp.text
    job = await wait_job(c, resp.json()["id"])
    assert job["status"] == "succeeded", job
    return job


async def test_copies_lose_neither_the_archive_nor_their_stale_uploads(
        make_settings: Any, s3: Any, s3_endpoint: str) -> None:
    settings, primary, offsite = _settings(make_settings, s3, s3_endpoint,
                                           incomplete_grace_hours=0.0001)
    async with running_app(settings) as c:
        bid = (await backup(c))["result"]["backup_id"]

        # A worker killed mid-backup left a multipart upload open in the copy: retention aborts
        # it as it does the primary's.
        stale = "mirror/pagila/20200101T000000Z-stale0/database.dump.zst.gpg"
        s3.create_multipart_upload(Bucket=offsite, Key=stale)
        await asyncio.sleep(1.0)
        job = await _job(c, "/v1/targets/pagila/retention", {"dry_run": False})
        aborted = job["result"]["uploads_aborted"]
        assert [(u["key"], u["location"]) for u in aborted] == [
            (stale.removeprefix("mirror/"), "offsite")], job["result"]
        assert s3_pending(s3, offsite, "mirror") == []

        # The primary lost the archive's manifest; the copy holds the archive whole. DELETE of
        # "the incomplete archive" must not destroy the copy.
        s3.delete_object(Bucket=primary, Key=f"archives/pagila/{bid}/manifest.json")
        held = _keys(s3, offsite, f"mirror/pagila/{bid}/")
        resp = await c.delete(f"/v1/targets/pagila/archives/{bid}", headers=auth("admin"))
        assert resp.status_code == 409, resp.text
        assert "offsite" in resp.json()["detail"]
        assert _keys(s3, offsite, f"mirror/pagila/{bid}/") == held


async def test_reconcile_never_overwrites_a_copy_that_holds_its_own_archive(
        make_settings: Any, s3: Any, s3_endpoint: str) -> None:
    settings, _, offsite = _settings(make_settings, s3, s3_endpoint)
    async with running_app(settings) as c:
        bid = (await backup(c))["result"]["backup_id"]
        # The copy holds a self-consistent archive of this id whose globals differ from the
        # primary's (rewritten elsewhere, or the primary's is the wrong one): the copy's
        # manifest vouches for its objects. Reconciliation cannot know which is right and must
        # not destroy either.
        folder = f"mirror/pagila/{bid}/"
        doc = json.loads(s3.get_object(Bucket=offsite, Key=folder + "manifest.json")["Body"]
                         .read())
        entry = next(o for o in doc["objects"] if o["key"].startswith("globals"))
        theirs = s3.get_object(Bucket=offsite, Key=folder + entry["key"])["Body"].read() + b"x"
        entry.update(size_bytes=len(theirs), sha256=hashlib.sha256(theirs).hexdigest())
        s3.put_object(Bucket=offsite, Key=folder + entry["key"], Body=theirs)
        s3.put_object(Bucket=offsite, Key=folder + "manifest.json", Body=json.dumps(doc).encode())
        before = _keys(s3, offsite, folder)

        for deep in (False, True):
            job = await _job(c, "/v1/targets/pagila/reconcile", {"deep": deep})
            found = job["result"]["archives"][bid]["offsite"]
            assert found["repaired"] is False and "own manifest" in found["detail"], found
            assert _keys(s3, offsite, folder) == before
        assert job["result"]["archives"][bid]["primary"]["found"] == "complete"


def test_a_copy_that_is_the_primary_under_another_name_is_refused(
        make_settings: Any, s3_endpoint: str, bucket: str, tmp_path: Any) -> None:
    """A "copy" at the primary's own place is no copy: the backup would report two locations,
    and a failure of the "copy" deletes its objects, which are the primary's."""
    with pytest.raises(ValidationError, match="same place as the primary"):
        make_settings(copies=[{"name": "again", "url": f"s3://{bucket}/archives/",
                               "s3_endpoint_url": s3_endpoint}])
    folder = tmp_path / "vault"
    folder.mkdir()
    (tmp_path / "nas").symlink_to(folder)
    with pytest.raises(ValidationError, match="same place as copy one"):
        make_settings(copies=[{"name": "one", "url": f"file://{folder}"},
                              {"name": "two", "url": f"file://{tmp_path}/nas"}])
    # Same bucket and prefix on another endpoint is another place.
    make_settings(copies=[{"name": "elsewhere", "url": f"s3://{bucket}/archives",
                           "s3_endpoint_url": "http://127.0.0.1:1"}])


async def test_a_copy_that_does_not_answer_does_not_hold_the_listing(
        make_settings: Any, s3: Any, s3_endpoint: str, monkeypatch: Any) -> None:
    """Two archives the primary holds short: the catalogue asks the copies about them. A copy
    that does not answer (a blackholed endpoint waits 10 s per connect, four times) must cost
    the listing one bounded wait, not one per archive, or the listing and /metrics time out."""
    monkeypatch.setattr(holdings, "LIST_TIMEOUT_S", 0.5)
    primary, offsite = new_bucket(s3, "rvp"), new_bucket(s3, "rvc")
    with FaultyProxy(s3_endpoint) as proxy:
        settings = make_settings(storage_url=f"s3://{primary}/archives", copies=[
            {"name": "offsite", "url": f"s3://{offsite}/mirror", "s3_endpoint_url": proxy.url}])
        async with running_app(settings) as c:
            ids = [(await backup(c))["result"]["backup_id"] for _ in range(2)]
            for bid in ids:
                s3.delete_object(Bucket=primary, Key=f"archives/pagila/{bid}/globals.sql.zst.gpg")
            proxy.rule = lambda method, path: 2.0 if "list-type=2" in path else None
            started = time.monotonic()
            resp = await c.get("/v1/targets/pagila/archives", headers=auth("viewer"))
            took = time.monotonic() - started
            # A verification (as a restore) waits for the slow copy it needs: not refused.
            proxy.rule = lambda method, path: 1.0 if "list-type=2" in path else None
            verify = await _job(c, f"/v1/targets/pagila/archives/{ids[0]}/verify",
                                {"level": "checksum"})
            assert verify["result"]["sources"]["globals.sql.zst.gpg"] == "offsite"
    assert resp.status_code == 200, resp.text
    assert took < 1.8, took
    shown = {a["backup_id"]: a for a in resp.json()["items"]}
    for bid in ids:  # kept, not restored, not counted good: nobody can tell
        assert shown[bid]["status"] == "unreadable", shown[bid]
        assert "offsite" in shown[bid]["reason"]


async def test_an_archive_whose_objects_are_spread_over_locations_is_kept_and_verifies(
        make_settings: Any, s3: Any, s3_endpoint: str, pagila_db: str) -> None:
    """The primary lost the globals, the copy lost the dump: restores read each object from the
    first location holding it, so the archive is whole. Retention deleted it as incomplete,
    in every location, though it was the newest (and only) restorable archive."""
    settings, primary, offsite = _settings(
        make_settings, s3, s3_endpoint, incomplete_grace_hours=0.0001,
        targets={"pagila": {"dsn": dsn(pagila_db), "retention_min_backups": 1}})
    async with running_app(settings) as c:
        bid = (await backup(c))["result"]["backup_id"]
        s3.delete_object(Bucket=primary, Key=f"archives/pagila/{bid}/globals.sql.zst.gpg")
        s3.delete_object(Bucket=offsite, Key=f"mirror/pagila/{bid}/database.dump.zst.gpg")
        await asyncio.sleep(0.5)
        job = await _job(c, "/v1/targets/pagila/retention", {"dry_run": False})
        assert not job["result"]["deleted"], job["result"]
        assert _keys(s3, primary, f"archives/pagila/{bid}/")
        shown = (await c.get(f"/v1/targets/pagila/archives/{bid}", headers=auth("viewer"))).json()
        assert shown["status"] == "complete" and "offsite" in shown["degraded"], shown
        verify = await _job(c, f"/v1/targets/pagila/archives/{bid}/verify", {"level": "checksum"})
        sources = verify["result"]["sources"]
        assert sources["globals.sql.zst.gpg"] == "offsite", sources
        assert sources["database.dump.zst.gpg"] == "primary", sources


async def test_credentials_in_a_storage_url_are_refused(make_settings: Any, bucket: str) -> None:
    """s3://KEY:SECRET@bucket was accepted, the whole "KEY:SECRET@bucket" taken as the bucket
    name, and bucket names are shown: /readyz (to anyone) said "S3 access to bucket KEY:SECRET@
    ... failed"."""
    url = f"s3://AKIAREVIEW:sekrit-{bucket}@{bucket}/archives"
    with pytest.raises(ValidationError) as caught:
        make_settings(copies=[{"name": "inline", "url": url}])
    assert "credentials" in str(caught.value)
    with pytest.raises(ValidationError):
        make_settings(storage_url=url)


async def test_a_copy_dropped_after_its_object_landed_keeps_nothing_of_it(
        make_settings: Any, s3: Any, s3_endpoint: str, monkeypatch: Any) -> None:
    """A locked copy whose upload completed but whose lock could not be set (the retention read
    back fails): the copy is dropped, and its object -- whole, unlocked, in a location the
    operator believes immutable, under no manifest -- must go with it."""
    primary, offsite = new_bucket(s3, "rvp"), f"pgv-rvl-{time.time_ns() % 10**8}"
    s3.create_bucket(Bucket=offsite, ObjectLockEnabledForBucket=True)
    with FaultyProxy(s3_endpoint) as proxy:
        settings = make_settings(storage_url=f"s3://{primary}/archives", copies=[
            {"name": "vault", "url": f"s3://{offsite}/mirror", "s3_endpoint_url": proxy.url,
             "object_lock_days": 1}])
        async with running_app(settings) as c:
            proxy.rule = lambda method, path: 403 if method == "HEAD" else None
            job = await backup(c)
            # Archive detail reads the locked copy's lock: a copy that does not answer must not
            # hold the answer (it waited up to four connect timeouts).
            monkeypatch.setattr(removal, "LOCK_READ_TIMEOUT_S", 0.3)
            proxy.rule = lambda method, path: 1.5 if "list-type=2" in path else None
            started = time.monotonic()
            detail = await c.get(f"/v1/targets/pagila/archives/{job['result']['backup_id']}",
                                 headers=auth("viewer"))
            took = time.monotonic() - started
    assert detail.status_code == 200 and took < 1.2, (detail.text, took)
    assert job["result"]["copies"]["vault"]["status"] == "missing", job["result"]
    left = s3.list_objects_v2(Bucket=offsite, Prefix="mirror/").get("Contents", [])
    assert [o["Key"] for o in left] == []
