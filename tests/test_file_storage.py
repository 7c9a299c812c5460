"""The whole data path through file:// storage: backup, verification and restore of pagila."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import PREFIX, auth, backup, running_app, wait_job
from tests.test_restore import fingerprint, restore


async def test_backup_verify_restore_through_a_local_folder(
        make_settings: Any, pagila_db: str, tmp_path: Path) -> None:
    root = tmp_path / "archives"
    async with running_app(make_settings(storage_url=f"file://{root}")) as c:
        assert (await c.get("/readyz")).status_code == 200
        job = await backup(c)
        backup_id = job["result"]["backup_id"]
        folder = root / "pagila" / backup_id
        manifest = json.loads((folder / "manifest.json").read_text())
        for obj in manifest["objects"]:
            data = (folder / obj["key"]).read_bytes()
            assert len(data) == obj["size_bytes"] and b"PGDMP" not in data
        assert not [p for p in root.rglob("*") if ".upload-" in p.name]  # no partial files

        # A partial file of an interrupted upload is never an object of the archive.
        (folder / "database.dump.zst.gpg.upload-deadbeef").write_bytes(b"half")
        listed = (await c.get("/v1/targets/pagila/archives", headers=auth("viewer"))).json()
        shown = next(a for a in listed["items"] if a["backup_id"] == backup_id)
        assert shown["complete"] is True and shown["size_bytes"] == sum(
            o["size_bytes"] for o in manifest["objects"])

        check = await c.post(f"/v1/targets/pagila/archives/{backup_id}/verify",
                             headers=auth("operator"), json={"level": "checksum"})
        assert (await wait_job(c, check.json()["id"]))["status"] == "succeeded"
        done = await restore(c, "pagila", {"backup_id": backup_id,
                                           "database": f"{PREFIX}_from_folder"})
    assert done["status"] == "succeeded", done["error"]
    assert await fingerprint(f"{PREFIX}_from_folder") == await fingerprint(pagila_db)
