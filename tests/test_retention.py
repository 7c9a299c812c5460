"""Retention and archive deletion against real archives in moto's S3 server."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from app.archives.retention import plan
from app.archives.schemas import Archive, Verification
from tests.conftest import auth, backup, dsn, running_app, wait_job
from tests.test_backup import archive_keys, pending_uploads


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["backup_id"] for i in items]


def copy_archive(s3: Any, bucket: str, target: str, src: str, dst: str,
                 manifest: bool = True) -> None:
    for key in archive_keys(s3, bucket, target):
        if f"/{src}/" not in key:
            continue
        name = key.rsplit("/", 1)[1]
        if name == "manifest.json" and not manifest:
            continue
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if name == "manifest.json":
            doc = json.loads(body)
            doc["backup_id"] = dst
            body = json.dumps(doc).encode()
        s3.put_object(Bucket=bucket, Key=key.replace(f"/{src}/", f"/{dst}/"), Body=body)


async def test_retention_keeps_minimum_and_newest_and_cleans_the_rest(
        make_settings: Any, pagila_db: str, s3: Any, bucket: str) -> None:
    settings = make_settings(incomplete_grace_hours=0.0001, targets={"ret": {
        "dsn": dsn(pagila_db), "retention_days": 30, "retention_min_backups": 2}})
    async with running_app(settings) as c:
        real = (await backup(c, "ret"))["result"]["backup_id"]
        old = ["20200301T000000Z-aaaaaa", "20200201T000000Z-bbbbbb", "20200101T000000Z-cccccc"]
        for bid in old:
            copy_archive(s3, bucket, "ret", real, bid)
        incomplete = "20191201T000000Z-dddddd"
        copy_archive(s3, bucket, "ret", real, incomplete, manifest=False)
        s3.create_multipart_upload(Bucket=bucket,
                                   Key=f"archives/ret/{incomplete}/stale.gpg")
        await asyncio.sleep(1)  # past the (tiny) grace period
        before = sorted(archive_keys(s3, bucket, "ret"))

        resp = await c.post("/v1/targets/ret/retention", headers=auth("admin"),
                            json={"dry_run": True})
        assert resp.status_code == 202
        dry = await wait_job(c, resp.json()["id"])
        assert dry["status"] == "succeeded", dry
        expected = sorted([old[1], old[2], incomplete])
        assert sorted(ids(dry["result"]["deleted"])) == expected
        assert sorted(ids(dry["result"]["kept"])) == sorted([real, old[0]])
        assert len(dry["result"]["uploads_aborted"]) == 1
        assert sorted(archive_keys(s3, bucket, "ret")) == before  # nothing changed
        assert pending_uploads(s3, bucket, "ret")

        resp = await c.post("/v1/targets/ret/retention", headers=auth("admin"), json={})
        done = await wait_job(c, resp.json()["id"])
        assert done["status"] == "succeeded"
        assert sorted(ids(done["result"]["deleted"])) == expected
        left = {k.split("/")[2] for k in archive_keys(s3, bucket, "ret")}
        assert left == {real, old[0]}
        assert pending_uploads(s3, bucket, "ret") == []

        # Deleting one of the two that remain would break the minimum of 2.
        refused = await c.delete(f"/v1/targets/ret/archives/{old[0]}", headers=auth("admin"))
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        operator = await c.delete(f"/v1/targets/ret/archives/{old[0]}",
                                  headers=auth("operator"))
        assert operator.status_code == 403
        viewer = await c.post("/v1/targets/ret/retention", headers=auth("operator"), json={})
        assert viewer.status_code == 403
        audit = (await c.get("/v1/audit?target=ret", headers=auth("admin"))).json()["items"]
        deletes = [(e["actor"], e["outcome"]) for e in audit if e["action"] == "archive.delete"]
        # One event per call: the service's own refusal is not doubled by the audit trail.
        assert deletes.count(("test-admin", "refused")) == 1, deletes
        assert ("test-operator", "forbidden") in deletes


async def test_delete_archive_allowed_above_minimum(make_settings: Any, pagila_db: str,
                                                    s3: Any, bucket: str) -> None:
    settings = make_settings(targets={"del": {"dsn": dsn(pagila_db),
                                              "retention_min_backups": 1}})
    async with running_app(settings) as c:
        first = (await backup(c, "del"))["result"]["backup_id"]
        await backup(c, "del")
        resp = await c.delete(f"/v1/targets/del/archives/{first}", headers=auth("admin"))
        assert resp.status_code == 204
        assert not [k for k in archive_keys(s3, bucket, "del") if f"/{first}/" in k]
        gone = await c.get(f"/v1/targets/del/archives/{first}", headers=auth("viewer"))
        assert gone.status_code == 404


def archive(bid: str, complete: bool = True, failed: bool = False,
            damaged: bool = True) -> Archive:
    verification = None
    if failed:
        verification = Verification(status="failed", level="checksum",
                                    job_id="00000000-0000-0000-0000-000000000000",
                                    finished_at=None, summary="", damaged=damaged)
    return Archive(backup_id=bid, target="t", created_at=datetime.strptime(
        bid[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC), size_bytes=1, complete=complete,
        verification=verification)


def test_plan_never_counts_broken_archives_as_good() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    archives = [archive("20260531T000000Z-aaaaaa", failed=True),   # newest, but failed verify
                archive("20260530T000000Z-bbbbbb", complete=False),  # in flight? past grace
                archive("20250101T000000Z-cccccc"),                  # old but the newest good
                archive("20240101T000000Z-dddddd")]
    delete, keep = plan(archives, now=now, retention_days=30, min_backups=1,
                        grace=timedelta(hours=1), busy={"20260530T000000Z-bbbbbb"})
    assert ids(keep) == ["20260531T000000Z-aaaaaa", "20260530T000000Z-bbbbbb",
                         "20250101T000000Z-cccccc"]
    assert ids(delete) == ["20240101T000000Z-dddddd"]


def test_a_verification_that_failed_for_another_reason_condemns_nothing() -> None:
    """A monthly check that lost its worker or could not create its scratch database says
    nothing about the archive: it still counts as good, and keeps older ones from going."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    archives = [archive("20260531T000000Z-aaaaaa", failed=True, damaged=False),
                archive("20250101T000000Z-cccccc")]
    delete, keep = plan(archives, now=now, retention_days=30, min_backups=1,
                        grace=timedelta(hours=1), busy=set())
    assert ids(keep) == ["20260531T000000Z-aaaaaa"]
    assert ids(delete) == ["20250101T000000Z-cccccc"]


async def test_an_archive_whose_objects_are_gone_is_neither_complete_nor_good(
        make_settings: Any, pagila_db: str, s3: Any, bucket: str) -> None:
    settings = make_settings(targets={"hollow": {
        "dsn": dsn(pagila_db), "retention_days": 30, "retention_min_backups": 1}})
    async with running_app(settings) as c:
        real = (await backup(c, "hollow"))["result"]["backup_id"]
        old, short = "20200101T000000Z-eeeeee", "20200201T000000Z-ffffff"
        copy_archive(s3, bucket, "hollow", real, old)
        copy_archive(s3, bucket, "hollow", real, short)
        # The newest lost its dump (a manifest that outlived its objects); another was cut short.
        s3.delete_object(Bucket=bucket, Key=f"archives/hollow/{real}/database.dump.zst.gpg")
        s3.put_object(Bucket=bucket, Key=f"archives/hollow/{short}/database.dump.zst.gpg",
                      Body=b"short")
        listing = (await c.get("/v1/targets/hollow/archives", headers=auth("viewer"))).json()
        complete = {a["backup_id"]: a["complete"] for a in listing["items"]}
        assert complete == {real: False, short: False, old: True}

        resp = await c.post("/v1/targets/hollow/retention", headers=auth("admin"),
                            json={"dry_run": True})
        dry = await wait_job(c, resp.json()["id"])
    assert dry["status"] == "succeeded", dry
    assert old in ids(dry["result"]["kept"])  # the only good one, however old


async def test_only_a_conclusive_verification_decides_damage(
        make_settings: Any, pagila_db: str, gpg_key: Any, tmp_path: Any) -> None:
    """A verification that fails for the machine's sake (here: a replica whose keyring has no
    secret key) neither condemns a good archive nor clears a damaged one."""
    import subprocess

    from tests.conftest import PREFIX, admin_conn

    home, fpr = gpg_key
    public_only = tmp_path / "gnupg"
    public_only.mkdir(mode=0o700)
    exported = subprocess.run(["gpg", "--homedir", str(home), "--export", fpr],
                              check=True, capture_output=True).stdout
    subprocess.run(["gpg", "--homedir", str(public_only), "--batch", "--import"],
                   input=exported, check=True, capture_output=True)
    subprocess.run(["gpg", "--homedir", str(public_only), "--batch", "--import-ownertrust"],
                   input=f"{fpr}:6:\n".encode(), check=True, capture_output=True)
    targets = {"verdict": {"dsn": dsn(pagila_db)}}

    async def shown(c: Any, bid: str) -> dict[str, Any]:
        items = (await c.get("/v1/targets/verdict/archives", headers=auth("viewer"))).json()
        verification: dict[str, Any] = next(
            a for a in items["items"] if a["backup_id"] == bid)["verification"]
        return verification

    async with running_app(make_settings(targets=targets)) as c:
        bid = (await backup(c, "verdict"))["result"]["backup_id"]
    try:
        async with running_app(make_settings(targets=targets, gpg_home=public_only)) as c:
            resp = await c.post(f"/v1/targets/verdict/archives/{bid}/verify",
                                headers=auth("operator"), json={"level": "checksum"})
            failed = await wait_job(c, resp.json()["id"])
            assert failed["status"] == "failed"
            assert failed["error"]["detail"].startswith("keys:"), failed["error"]
            first = await shown(c, bid)
            assert first["status"] == "failed" and first["damaged"] is False

            # Had an earlier run found it broken, the inconclusive one would not clear that.
            meta = await admin_conn(f"{PREFIX}_meta")
            try:
                await meta.execute(
                    """UPDATE jobs SET finished_at = now() - interval '1 day'
                       WHERE kind = 'verify' AND target = 'verdict'""")
                await meta.execute(
                    """INSERT INTO jobs (id, kind, target, params, requested_by, summary,
                                        status, result, finished_at)
                       VALUES (gen_random_uuid(), 'verify', 'verdict', $1::jsonb, 'test', 'x',
                               'failed', '{"failed_step": "checksum"}',
                               now() - interval '2 days')""",
                    json.dumps({"backup_id": bid, "level": "checksum"}))
            finally:
                await meta.close()
            second = await shown(c, bid)
            assert second["job_id"] == first["job_id"] and second["damaged"] is True
    finally:
        subprocess.run(["gpgconf", "--homedir", str(public_only), "--kill", "all"],
                       capture_output=True)
