"""The whole data path through file:// storage: backup, verification and restore of pagila."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.integrations.storage import StorageError
from app.integrations.storage.file import FileStorage
from tests.conftest import PREFIX, auth, backup, dsn, running_app, wait_job
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


# -- paths: pgvault touches only regular files inside its root, and never follows a link --------

def _outside(tmp_path: Path) -> Path:
    """Another target's archive (or anybody's file) outside the storage folder."""
    other = tmp_path / "elsewhere" / "20260101T000000Z-aaaaaa"
    other.mkdir(parents=True)
    (other / "database.dump.zst.gpg").write_bytes(b"someone else's data")
    return other


async def _chunks(store: FileStorage, key: str) -> bytes:
    return b"".join([c async for c in store.iter_chunks(key, 4)])


async def test_a_symlinked_object_is_listed_unusable_refused_and_deleted_as_a_link_only(
        tmp_path: Path) -> None:
    other = _outside(tmp_path)
    folder = tmp_path / "root" / "t" / "20260102T000000Z-bbbbbb"
    folder.mkdir(parents=True)
    (folder / "database.dump.zst.gpg").symlink_to(other / "database.dump.zst.gpg")
    store = FileStorage(str(tmp_path / "root"))
    key = "t/20260102T000000Z-bbbbbb/database.dump.zst.gpg"

    [listed] = await store.list_objects("t/")
    assert listed.key == key and listed.usable is False
    with pytest.raises(StorageError):
        await store.get(key)
    with pytest.raises(StorageError):
        await _chunks(store, key)

    await store.delete([key])
    assert not (folder / "database.dump.zst.gpg").is_symlink()
    assert (other / "database.dump.zst.gpg").read_bytes() == b"someone else's data"


async def test_a_symlinked_folder_is_never_entered(tmp_path: Path) -> None:
    other = _outside(tmp_path)
    (tmp_path / "root" / "t").mkdir(parents=True)
    (tmp_path / "root" / "t" / "20260102T000000Z-bbbbbb").symlink_to(other)
    (tmp_path / "root" / "linked-target").symlink_to(other.parent)
    store = FileStorage(str(tmp_path / "root"))
    key = "t/20260102T000000Z-bbbbbb/database.dump.zst.gpg"

    listed = await store.list_objects("")  # the links themselves, as unusable entries
    assert [(o.key, o.usable) for o in listed] == [("linked-target", False),
                                                   ("t/20260102T000000Z-bbbbbb", False)]
    for call in (store.get(key), _chunks(store, key), store.delete([key]),
                 store.put("t/20260102T000000Z-bbbbbb/manifest.json", b"{}"),
                 store.start_upload("linked-target/x/database.dump.zst.gpg")):
        with pytest.raises(StorageError):
            await call
    assert sorted(p.name for p in other.iterdir()) == ["database.dump.zst.gpg"]
    assert (other / "database.dump.zst.gpg").read_bytes() == b"someone else's data"
    assert sorted(p.name for p in other.parent.iterdir()) == [other.name]


@pytest.mark.parametrize("key", ["../escape", "t/../../escape", "/etc/passwd", "t//x", "t/./x",
                                 "", "t/x/", "t\\..\\x", "t/\x00"])
async def test_keys_that_could_leave_the_folder_are_refused(tmp_path: Path, key: str) -> None:
    (tmp_path / "escape").write_bytes(b"keep")
    store = FileStorage(str(tmp_path / "root"))
    for call in (store.get(key), store.put(key, b"x"), store.delete([key]),
                 store.start_upload(key), _chunks(store, key)):
        with pytest.raises(StorageError):
            await call
    assert (tmp_path / "escape").read_bytes() == b"keep"
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").rglob("*"))


async def test_writes_never_go_through_a_link_or_a_hard_link(tmp_path: Path) -> None:
    other = _outside(tmp_path)
    theirs = other / "database.dump.zst.gpg"
    folder = tmp_path / "root" / "t" / "20260102T000000Z-bbbbbb"
    folder.mkdir(parents=True)
    os.link(theirs, folder / "manifest.json")  # a hard link, as a dedup tool leaves
    (folder / "database.dump.zst.gpg").symlink_to(theirs)
    store = FileStorage(str(tmp_path / "root"))

    await store.put("t/20260102T000000Z-bbbbbb/manifest.json", b"ours")
    upload = await store.start_upload("t/20260102T000000Z-bbbbbb/database.dump.zst.gpg")
    await upload.write_part(b"our dump")
    await upload.complete()

    assert theirs.read_bytes() == b"someone else's data" and theirs.stat().st_nlink == 1
    assert (folder / "manifest.json").read_bytes() == b"ours"
    assert not (folder / "database.dump.zst.gpg").is_symlink()
    assert (folder / "database.dump.zst.gpg").read_bytes() == b"our dump"


async def test_deleting_a_hard_linked_object_keeps_the_other_name(tmp_path: Path) -> None:
    other = _outside(tmp_path)
    folder = tmp_path / "root" / "t" / "20260102T000000Z-bbbbbb"
    folder.mkdir(parents=True)
    os.link(other / "database.dump.zst.gpg", folder / "database.dump.zst.gpg")
    store = FileStorage(str(tmp_path / "root"))
    key = "t/20260102T000000Z-bbbbbb/database.dump.zst.gpg"
    assert await store.get(key) == b"someone else's data"  # reading is harmless
    await store.delete([key])
    assert not folder.exists()  # emptied folders go, up to the root
    assert (tmp_path / "root").is_dir()
    assert (other / "database.dump.zst.gpg").read_bytes() == b"someone else's data"


async def test_a_file_replaced_or_rewritten_during_a_read_fails_the_read(
        tmp_path: Path) -> None:
    store = FileStorage(str(tmp_path / "root"))
    key = "t/20260102T000000Z-bbbbbb/database.dump.zst.gpg"
    path = tmp_path / "root" / key
    await store.put(key, b"A" * 64)
    chunks = store.iter_chunks(key, 16)
    assert await anext(chunks) == b"A" * 16
    replacement = path.with_name("swap")
    replacement.write_bytes(b"B" * 64)
    os.replace(replacement, path)  # what a copy tool does: a new file under the same name
    with pytest.raises(StorageError, match="changed while it was read"):
        async for _ in chunks:
            pass

    await store.put(key, b"A" * 64)
    chunks = store.iter_chunks(key, 16)
    assert await anext(chunks) == b"A" * 16
    with open(path, "ab") as fh:  # rewritten in place: same file, more bytes
        fh.write(b"C" * 16)
    with pytest.raises(StorageError, match="changed while it was read"):
        async for _ in chunks:
            pass


async def test_a_fifo_or_a_folder_is_refused_without_hanging(tmp_path: Path) -> None:
    folder = tmp_path / "root" / "t" / "20260102T000000Z-bbbbbb"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "database.dump.zst.gpg")
    (folder / "manifest.json").mkdir()
    store = FileStorage(str(tmp_path / "root"))
    for key in ("t/20260102T000000Z-bbbbbb/database.dump.zst.gpg",
                "t/20260102T000000Z-bbbbbb/manifest.json"):
        with pytest.raises(StorageError):
            await asyncio.wait_for(store.get(key), 10)
    with pytest.raises(StorageError):
        await store.delete(["t/20260102T000000Z-bbbbbb/manifest.json"])
    [fifo] = await store.list_objects("t/")
    assert fifo.usable is False


async def test_a_root_configured_through_a_link_is_resolved_once(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "backups").symlink_to(tmp_path / "mnt")
    store = FileStorage(str(tmp_path / "backups"))
    assert (await store.list_objects("")) == []
    await store.check()
    await store.put("t/20260102T000000Z-bbbbbb/manifest.json", b"{}")
    assert (tmp_path / "mnt" / "t" / "20260102T000000Z-bbbbbb" / "manifest.json").is_file()
    assert await store.get("t/20260102T000000Z-bbbbbb/manifest.json") == b"{}"
    [obj] = await store.list_objects("t/")
    assert obj.usable and obj.size == 2
    with pytest.raises(KeyError):
        await store.get("t/20260102T000000Z-bbbbbb/nothing")


async def test_deleting_an_archive_of_links_never_touches_their_targets(
        make_settings: Any, pagila_db: str, tmp_path: Path) -> None:
    """Issue 7.2: an archive whose objects are links to another archive's (``cp -s``, rsync, a
    dedup tool); deleting it unlinked the other archive's files."""
    root = tmp_path / "archives"
    settings = make_settings(storage_url=f"file://{root}", targets={"links": {
        "dsn": dsn(pagila_db), "retention_min_backups": 1}})
    async with running_app(settings) as c:
        real = (await backup(c, "links"))["result"]["backup_id"]
        original = root / "links" / real
        before = {p.name: p.read_bytes() for p in original.iterdir()}
        linked_id = "20991231T000000Z-linked"
        linked = root / "links" / linked_id
        linked.mkdir()
        doc = json.loads((original / "manifest.json").read_bytes())
        (linked / "manifest.json").write_text(json.dumps({**doc, "backup_id": linked_id}))
        for name in before:
            if name != "manifest.json":
                (linked / name).symlink_to(original / name)

        listed = (await c.get("/v1/targets/links/archives", headers=auth("viewer"))).json()
        shown = {a["backup_id"]: a for a in listed["items"]}
        assert shown[linked_id]["status"] == "unreadable"
        assert shown[linked_id]["complete"] is False
        assert "not written by pgvault" in shown[linked_id]["reason"]
        assert shown[real]["status"] == "complete"
        refused = await c.post("/v1/targets/links/restores", headers=auth("admin"), json={
            "backup_id": linked_id, "database": f"{PREFIX}_from_links"})
        assert refused.status_code == 409, refused.text

        resp = await c.delete(f"/v1/targets/links/archives/{linked_id}", headers=auth("admin"))
        assert resp.status_code == 204, resp.text
        assert not linked.exists()
        assert {p.name: p.read_bytes() for p in original.iterdir()} == before
        check = await c.post(f"/v1/targets/links/archives/{real}/verify",
                             headers=auth("operator"), json={"level": "checksum"})
        assert (await wait_job(c, check.json()["id"]))["status"] == "succeeded"


async def test_a_cancelled_read_closes_its_file_only_after_the_thread_is_done(
        tmp_path: Path) -> None:
    store = FileStorage(str(tmp_path / "root"))
    key = "t/20260102T000000Z-bbbbbb/database.dump.zst.gpg"
    await store.put(key, os.urandom(64 << 20))
    before = len(os.listdir("/proc/self/fd"))

    async def read_all(chunk_size: int = 1 << 16) -> bytes:
        return b"".join([c async for c in store.iter_chunks(key, chunk_size)])

    for _ in range(10):
        # Big chunks: the cancellation lands while a thread is inside a read.
        task = asyncio.create_task(read_all(32 << 20))
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # not "generator already executing"
            await task
    await asyncio.sleep(0.5)  # the reads still running in threads finish, then close
    assert len(os.listdir("/proc/self/fd")) <= before
    assert await store.get(key) == await read_all()
