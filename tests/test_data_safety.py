"""Data-safety findings of the adversarial review after issue 7, one test each."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.conftest import auth, dsn, running_app, start_uploading_backup, wait_job


def test_the_scratch_sweep_never_removes_a_folder_pgvault_did_not_make(tmp_path: Path) -> None:
    """With no work_dir the sweep runs over the machine's shared /tmp: a file:// storage root
    named ``/tmp/pgvault-archives`` (or ``pgvault-1-backups``), or a link to someone's folder,
    must survive a start-up, even when it is old and has no owner lock."""
    from app.restore.fetch import sweep_orphans

    old = time.time() - 3600
    archives = tmp_path / "pgvault-archives"  # a file:// storage root
    (archives / "prod" / "20260101T000000Z-abcdef").mkdir(parents=True)
    (archives / "prod" / "20260101T000000Z-abcdef" / "manifest.json").write_text("{}")
    numbered = tmp_path / "pgvault-1-backups"  # named like a scratch folder, holds folders
    (numbered / "prod").mkdir(parents=True)
    (numbered / "prod" / "database.dump.zst.gpg").write_bytes(b"only copy")
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "data.plain").write_bytes(b"someone's")
    link = tmp_path / "pgvault-2-linked"
    link.symlink_to(elsewhere)
    for path in (archives, numbered, elsewhere):
        os.utime(path, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    orphan = tmp_path / "pgvault-3-legacyab"  # a real leftover: files only, old, no lock
    orphan.mkdir()
    (orphan / "database.plain").write_bytes(b"decrypted")
    os.utime(orphan, (old, old))

    assert sweep_orphans(tmp_path) == [orphan]
    assert (archives / "prod" / "20260101T000000Z-abcdef" / "manifest.json").exists()
    assert (numbered / "prod" / "database.dump.zst.gpg").exists()
    assert (elsewhere / "data.plain").exists() and link.is_symlink()


async def test_deleting_the_archive_a_backup_is_writing_is_refused(
        make_settings: Any, big_db: str, tmp_path: Path) -> None:
    """An operator cleaning up "incomplete" archives deletes the one a backup is still writing:
    its globals vanished, yet the backup went on, wrote its manifest and succeeded -- a backup
    reported good whose archive cannot be restored. The deletion must be refused (409)."""
    settings = make_settings(storage_url=f"file://{tmp_path / 'archives'}",
                             targets={"busy": {"dsn": dsn(big_db), "row_counts": False}})
    async with running_app(settings) as c:
        job_id = await start_uploading_backup(c, "busy")
        listed = (await c.get("/v1/targets/busy/archives", headers=auth("viewer"))).json()
        (archive,) = listed["items"]
        assert archive["status"] == "incomplete"
        resp = await c.delete(f"/v1/targets/busy/archives/{archive['backup_id']}",
                              headers=auth("admin"))
        job = await wait_job(c, job_id, timeout=300)
        after = (await c.get(f"/v1/targets/busy/archives/{archive['backup_id']}",
                             headers=auth("viewer"))).json()
    assert resp.status_code == 409, resp.text
    assert job_id in resp.json()["detail"]
    assert job["status"] == "succeeded", job["error"]
    assert after["status"] == "complete"
