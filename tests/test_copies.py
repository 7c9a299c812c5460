"""Copies (SPEC 2.15): every archive in the primary and in each copy, the dump read once; a copy
that fails leaves the backup standing and says so; a lost primary is recovered from a copy.

Real parts: moto's S3 server over HTTP (the primary and an S3 copy are buckets on it, one copy
behind a fault-injecting proxy), a file:// copy in a temporary folder, real pg_dump and gpg.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.backup.command import cleanup_backup
from tests.conftest import PREFIX, admin_conn, auth, backup, drop_db, running_app, wait_job
from tests.faults import FaultyProxy, is_upload_part
from tests.test_restore import restore
from tests.test_schedules import Receiver

Read = dict[str, bytes]  # key relative to the location's prefix -> bytes


def s3_read(s3: Any, bucket: str, prefix: str) -> Read:
    out: Read = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(prefix) + 1:]] = body
    return out


def file_read(root: Path) -> Read:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def s3_pending(s3: Any, bucket: str, prefix: str) -> list[Any]:
    return list(s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", []))


def new_bucket(s3: Any, label: str) -> str:
    name = f"pgv-{label}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


def assert_holds(objects: Read, target: str, backup_id: str, manifest: dict[str, Any]) -> None:
    """Every object the manifest lists is in ``objects`` at its size and SHA-256, the manifest
    itself is the same document, and nothing else of the archive is there."""
    folder = f"{target}/{backup_id}/"
    assert json.loads(objects[folder + "manifest.json"]) == manifest
    for obj in manifest["objects"]:
        data = objects[folder + obj["key"]]
        assert len(data) == obj["size_bytes"], obj["key"]
        assert hashlib.sha256(data).hexdigest() == obj["sha256"], obj["key"]
    assert sorted(k for k in objects if k.startswith(folder)) == sorted(
        [folder + "manifest.json", *(folder + o["key"] for o in manifest["objects"])])


@pytest.fixture
def places(s3: Any, tmp_path: Path, make_settings: Any, monkeypatch: Any,
           s3_endpoint: str) -> dict[str, Any]:
    """A fresh primary bucket, an S3 copy bucket (credentials named by variables) and a folder
    copy, all on loopback."""
    monkeypatch.setenv("PGV_COPY_KEY_ID", "testing")
    monkeypatch.setenv("PGV_COPY_SECRET", "testing-secret")
    primary, offsite = new_bucket(s3, "prim"), new_bucket(s3, "copy")
    folder = tmp_path / "vault"
    copies = [{"name": "offsite", "url": f"s3://{offsite}/mirror", "s3_endpoint_url": s3_endpoint,
               "access_key_id_env": "PGV_COPY_KEY_ID",
               "secret_access_key_env": "PGV_COPY_SECRET"},
              {"name": "local", "url": f"file://{folder}"}]
    return {"primary": primary, "offsite": offsite, "folder": folder, "copies": copies,
            "settings": lambda **kw: make_settings(
                **{"storage_url": f"s3://{primary}/archives", "copies": copies, **kw})}


async def test_a_backup_lands_whole_in_every_location(s3: Any, places: dict[str, Any]) -> None:
    async with running_app(places["settings"]()) as c:
        job = await backup(c)
        backup_id = job["result"]["backup_id"]
        listed = (await c.get("/v1/targets/pagila/archives", headers=auth("viewer"))).json()
        detail = (await c.get(f"/v1/targets/pagila/archives/{backup_id}",
                              headers=auth("viewer"))).json()
    result = job["result"]
    assert result["copies"] == {"offsite": {"status": "complete", "detail": None},
                                "local": {"status": "complete", "detail": None}}
    assert result["warnings"] == [] and "missing" not in job["summary"]
    manifest = detail["manifest"]
    assert {o["key"]: o["sha256"] for o in manifest["objects"]} == {
        o["key"]: o["sha256"] for o in result["objects"]}
    assert_holds(s3_read(s3, places["primary"], "archives"), "pagila", backup_id, manifest)
    assert_holds(s3_read(s3, places["offsite"], "mirror"), "pagila", backup_id, manifest)
    assert_holds(file_read(places["folder"]), "pagila", backup_id, manifest)
    item = next(a for a in listed["items"] if a["backup_id"] == backup_id)
    for shown in (item["copies"], detail["copies"]):
        assert set(shown) == {"offsite", "local"}  # the copies only, not the primary
        assert all(s["status"] == "complete" and s["detail"] is None and s["checked_at"]
                   for s in shown.values())


async def test_a_copy_failing_mid_upload_leaves_the_backup_standing(
        s3: Any, s3_endpoint: str, places: dict[str, Any]) -> None:
    receiver = Receiver(fail_first=0)
    copies = [dict(places["copies"][0]), places["copies"][1]]
    try:
        with FaultyProxy(s3_endpoint) as proxy:
            parts = {"n": 0}

            def rule(method: str, path: str) -> float | int | None:
                # The globals' one part goes through; every part after it fails (retries too).
                if is_upload_part(method, path):
                    parts["n"] += 1
                    return 500 if parts["n"] > 1 else None
                return None

            proxy.rule = rule
            copies[0]["s3_endpoint_url"] = proxy.url
            settings = places["settings"](copies=copies, webhook_backoff_s=0.05, webhooks=[
                {"url": f"{receiver.url}/hook", "events": ["copy.failed"]}])
            async with running_app(settings) as c:
                job = await backup(c)
                backup_id = job["result"]["backup_id"]
                listed = (await c.get("/v1/targets/pagila/archives",
                                      headers=auth("viewer"))).json()
                metrics = (await c.get("/metrics")).text
                deadline = time.monotonic() + 10
                while not receiver.received and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # a second delivery would have come by now
                left = s3_read(s3, places["offsite"], "mirror")
                pending = s3_pending(s3, places["offsite"], "mirror")
                # The copy answers again: a reconciliation fills it, and it shows complete.
                proxy.rule = lambda method, path: None
                resp = await c.post("/v1/targets/pagila/reconcile", json={},
                                    headers=auth("operator"))
                assert resp.status_code == 202, resp.text
                mended = await wait_job(c, resp.json()["id"])
                relisted = (await c.get("/v1/targets/pagila/archives",
                                        headers=auth("viewer"))).json()
        assert parts["n"] > 1, "the copy's dump upload never reached the proxy"
    finally:
        receiver.server.shutdown()
    result = job["result"]
    assert result["copies"]["offsite"]["status"] == "missing"
    assert "InternalError" in result["copies"]["offsite"]["detail"]
    assert result["copies"]["local"] == {"status": "complete", "detail": None}
    assert len(result["warnings"]) == 1 and "offsite" in result["warnings"][0]
    assert "missing from copy offsite" in job["summary"]
    item = next(a for a in listed["items"] if a["backup_id"] == backup_id)
    assert item["status"] == "complete"  # the primary is whole
    assert item["copies"]["offsite"]["status"] == "missing"
    assert item["copies"]["local"]["status"] == "complete"
    assert [b for _, b in receiver.received] == [{
        "event": "copy.failed", "target": "pagila", "backup_id": backup_id,
        "location": "offsite", "detail": result["copies"]["offsite"]["detail"],
        "summary": receiver.received[0][1]["summary"]}]
    assert "offsite" in receiver.received[0][1]["summary"]
    # Nothing of the archive left in the failed copy: no object, no open upload.
    assert left == {}
    assert pending == []
    assert 'pgvault_archive_copies{location="offsite",status="missing",target="pagila"} 1.0' \
        in metrics
    assert 'pgvault_copy_failures_total{location="offsite",target="pagila"}' in metrics
    assert mended["status"] == "succeeded", mended
    assert mended["result"]["archives"][backup_id]["offsite"]["found"] == "missing"
    assert mended["result"]["archives"][backup_id]["offsite"]["repaired"] is True
    item = next(a for a in relisted["items"] if a["backup_id"] == backup_id)
    assert item["copies"]["offsite"]["status"] == "complete"
    repaired = s3_read(s3, places["offsite"], "mirror")
    assert any(k.endswith(f"{backup_id}/manifest.json") for k in repaired), repaired


async def test_a_lost_primary_is_recovered_from_a_copy(
        s3: Any, s3_endpoint: str, places: dict[str, Any], make_settings: Any,
        pagila_db: str) -> None:
    async with running_app(places["settings"]()) as c:
        backup_id = (await backup(c))["result"]["backup_id"]
        before = (await c.get("/v1/targets/pagila/archives", headers=auth("viewer"))).json()
    # The primary bucket is gone, objects and all.
    primary = places["primary"]
    for key in s3_read(s3, primary, "archives"):
        s3.delete_object(Bucket=primary, Key=f"archives/{key}")
    s3.delete_bucket(Bucket=primary)
    offsite = places["copies"][0]
    settings = make_settings(storage_url=offsite["url"], s3_endpoint_url=s3_endpoint)
    name = f"{PREFIX}_from_copy"
    async with running_app(settings) as c:
        after = (await c.get("/v1/targets/pagila/archives", headers=auth("viewer"))).json()
        done = await restore(c, "pagila", {"backup_id": backup_id, "mode": "new_database",
                                           "database": name})
    try:
        assert [(a["backup_id"], a["status"], a["size_bytes"]) for a in after["items"]] == [
            (a["backup_id"], a["status"], a["size_bytes"]) for a in before["items"]]
        assert done["status"] == "succeeded", done["error"]
        assert done["result"]["checklist"]["row_counts"]["ok"] is True
        counts = []
        for db in (pagila_db, name):
            conn = await admin_conn(db)
            try:
                counts.append([await conn.fetchval(f"SELECT count(*) FROM public.{t}")
                               for t in ("actor", "film", "rental", "payment")])
            finally:
                await conn.close()
        assert counts[0] == counts[1] and counts[0][2] > 10000
    finally:
        await drop_db(name)


async def test_a_failed_backup_leaves_nothing_in_any_location(
        s3: Any, places: dict[str, Any], pagila_db: str) -> None:
    conn = await admin_conn(pagila_db)
    try:
        tx = conn.transaction()
        await tx.start()
        # pg_dump waits for this lock and gives up: after the globals went to every location.
        await conn.execute("LOCK TABLE public.actor IN ACCESS EXCLUSIVE MODE")
        async with running_app(places["settings"](lock_wait_timeout_s=1)) as c:
            resp = await c.post("/v1/targets/pagila/backups", headers=auth("operator"))
            job = await wait_job(c, resp.json()["id"], timeout=60)
            await tx.rollback()

            # And the reaper's path: what a dead worker left in each location goes too.
            prefix = "pagila/20260101T000000Z-reaped/"
            s3.put_object(Bucket=places["primary"], Key=f"archives/{prefix}globals.sql.zst.gpg",
                          Body=b"x")
            s3.put_object(Bucket=places["offsite"], Key=f"mirror/{prefix}globals.sql.zst.gpg",
                          Body=b"x")
            leftover = places["folder"] / prefix / "globals.sql.zst.gpg"
            leftover.parent.mkdir(parents=True)
            leftover.write_bytes(b"x")
            open_upload = s3.create_multipart_upload(
                Bucket=places["offsite"], Key=f"mirror/{prefix}database.dump.zst.gpg")
            await cleanup_backup(c.app.state.resources, {  # type: ignore[attr-defined]
                "archive_prefix": prefix,
                "uploads": {"offsite": {"key": f"{prefix}database.dump.zst.gpg",
                                        "upload_id": open_upload["UploadId"]}}}, "pagila")
    finally:
        await conn.close()
    assert job["status"] == "failed" and "lock" in job["error"]["detail"].lower()
    for bucket, prefix in ((places["primary"], "archives"), (places["offsite"], "mirror")):
        assert s3_read(s3, bucket, prefix) == {}, bucket
        assert s3_pending(s3, bucket, prefix) == [], bucket
    assert file_read(places["folder"]) == {}
