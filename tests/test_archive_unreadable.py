"""One unreadable or foreign manifest never takes a target down (issue 7.3): it shows as an
unusable archive, is never restored nor counted as good, is kept by retention until an admin
deletes it, and every other archive keeps working. Real archives in a local folder."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import PREFIX, admin_conn, auth, backup, dsn, running_app, wait_job

NOT_JSON = "20991231T000000Z-notjsn"
FOREIGN = "20991230T000000Z-foreig"
OLD_FOREIGN = "20200101T000000Z-oldfor"
NOT_OBJECT = "20991229T000000Z-listed"
ESCAPING = "20991228T000000Z-escape"
BAD_FIELD = "20991227T000000Z-badfld"


def plant(root: Path, real: str) -> dict[str, str]:
    """Hand-made archives beside a real one: copies of it with a broken manifest."""
    source = root / "unread" / real
    doc = json.loads((source / "manifest.json").read_bytes())
    manifests = {
        NOT_JSON: b'{"backup_id": "' + NOT_JSON.encode() + b'", trunc',
        FOREIGN: json.dumps(doc).encode(),  # copied from the real archive: names it
        OLD_FOREIGN: json.dumps({**doc, "target": "elsewhere",
                                 "backup_id": OLD_FOREIGN}).encode(),
        NOT_OBJECT: b"[1, 2, 3]",
        ESCAPING: json.dumps({**doc, "backup_id": ESCAPING, "objects": [
            {**o, "key": "../" + real + "/" + o["key"]} for o in doc["objects"]]}).encode(),
        BAD_FIELD: json.dumps({**doc, "backup_id": BAD_FIELD, "job_id": "not-a-uuid",
                               "finished_at": {"at": 1}}).encode(),
    }
    for bid, raw in manifests.items():
        shutil.copytree(source, root / "unread" / bid)
        (root / "unread" / bid / "manifest.json").write_bytes(raw)
    # Named like a backup id, but month 13: not an archive pgvault made; left out of listings.
    shutil.copytree(source, root / "unread" / "20261399T000000Z-badtim")
    return {
        NOT_JSON: "not valid JSON", FOREIGN: "names another archive",
        OLD_FOREIGN: "names another archive", NOT_OBJECT: "not a JSON object",
        ESCAPING: "outside its archive folder", BAD_FIELD: "finished_at, job_id",
    }


async def test_unreadable_manifests_are_isolated_shown_kept_and_deletable_by_an_admin(
        make_settings: Any, pagila_db: str, metadata_db: str, tmp_path: Path) -> None:
    root = tmp_path / "archives"
    settings = make_settings(storage_url=f"file://{root}", targets={"unread": {
        "dsn": dsn(pagila_db), "retention_days": 30, "retention_min_backups": 1}})
    async with running_app(settings) as c:
        real = (await backup(c, "unread"))["result"]["backup_id"]
        reasons = plant(root, real)
        # A damaged verification record (level is not text) must not take the listing down.
        conn = await admin_conn(metadata_db)
        try:
            await conn.execute(
                """INSERT INTO jobs (id, kind, target, status, requested_by, params, created_at,
                       finished_at)
                   VALUES ($1, 'verify', 'unread', 'succeeded', 'test', $2::text::jsonb, now(),
                           now())""",
                uuid.uuid4(), json.dumps({"backup_id": real, "level": 5}))
        finally:
            await conn.close()

        resp = await c.get("/v1/targets/unread/archives", headers=auth("viewer"))
        assert resp.status_code == 200, resp.text
        shown = {a["backup_id"]: a for a in resp.json()["items"]}
        assert "20261399T000000Z-badtim" not in shown
        assert shown[real]["status"] == "complete" and shown[real]["complete"] is True
        assert shown[real]["reason"] is None and shown[real]["verification"] is None
        for bid, reason in reasons.items():
            assert shown[bid]["status"] == "unreadable", bid
            assert shown[bid]["complete"] is False
            assert reason in shown[bid]["reason"], (bid, shown[bid]["reason"])
        # Pages still work around them.
        page = (await c.get("/v1/targets/unread/archives?limit=2", headers=auth("viewer"))).json()
        assert len(page["items"]) == 2 and page["next_cursor"]

        detail = await c.get(f"/v1/targets/unread/archives/{FOREIGN}", headers=auth("viewer"))
        assert detail.status_code == 200, detail.text
        assert detail.json()["status"] == "unreadable" and detail.json()["manifest"] is None
        assert (await c.get(f"/v1/targets/unread/archives/{real}",
                            headers=auth("viewer"))).json()["manifest"]["backup_id"] == real

        for bid in reasons:
            restore = await c.post("/v1/targets/unread/restores", headers=auth("admin"), json={
                "backup_id": bid, "database": f"{PREFIX}_unreadable"})
            assert restore.status_code == 409, (bid, restore.text)
            assert restore.headers["content-type"] == "application/problem+json"
            assert "unreadable" in restore.json()["detail"] or reasons[bid] in \
                restore.json()["detail"]
            verify = await c.post(f"/v1/targets/unread/archives/{bid}/verify",
                                  headers=auth("operator"), json={"level": "checksum"})
            assert verify.status_code == 409, (bid, verify.text)

        # Retention keeps them all (a human decides) and counts none as good: the real archive
        # is the one protected as the newest good.
        run = await c.post("/v1/targets/unread/retention", headers=auth("admin"), json={})
        done = await wait_job(c, run.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["result"]["deleted"] == []
        kept = {k["backup_id"]: k["reason"] for k in done["result"]["kept"]}
        assert "good" in kept[real]
        for bid in reasons:
            assert "needs a human" in kept[bid], kept[bid]
        assert (root / "unread" / OLD_FOREIGN / "manifest.json").exists()

        # An admin decided: the unreadable archive goes, the real one stays intact.
        resp = await c.delete(f"/v1/targets/unread/archives/{FOREIGN}", headers=auth("admin"))
        assert resp.status_code == 204, resp.text
        assert not (root / "unread" / FOREIGN).exists()
        left = (await c.get("/v1/targets/unread/archives", headers=auth("viewer"))).json()
        assert FOREIGN not in {a["backup_id"] for a in left["items"]}
        check = await c.post(f"/v1/targets/unread/archives/{real}/verify",
                             headers=auth("operator"), json={"level": "checksum"})
        assert (await wait_job(c, check.json()["id"]))["status"] == "succeeded"
