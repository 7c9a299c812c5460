"""Data-safety findings of the adversarial review after issue 7, one test each."""

from __future__ import annotations

import asyncio
import json
import os
import time
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
    psql,
    running_app,
    start_uploading_backup,
    wait_job,
)
from tests.test_restore import restore


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


AWKWARD = ["Mixed Case", 'a "quoted" one', "dotted.name", "-leading-dash", "ünïcødé",
           "new\nline", "semi;colon -- not a comment"]


async def test_a_restore_with_globals_leaves_existing_roles_exactly_as_they_are(
        client: Any) -> None:
    """Roles with awkward names on the cluster (other tests make them with newlines) never break
    another restore's globals step; an existing role keeps its comment and memberships as they
    are now: a membership revoked since the backup is not granted back."""
    names = [f"{PREFIX}_{n}" for n in AWKWARD]
    existing, gone = names[:-1], names[-1]
    late = f"{PREFIX}_late\nDROP ROLE x;"
    admin = await admin_conn()
    try:
        for name in names:
            await admin.execute(await admin.fetchval(
                "SELECT format('CREATE ROLE %I LOGIN', $1::text)", name))
        await admin.execute(await admin.fetchval(
            "SELECT format('GRANT %I TO %I', $1::text, $2::text)", existing[0], existing[1]))
        await admin.execute(await admin.fetchval(
            "SELECT format('COMMENT ON ROLE %I IS ''at backup''', $1::text)", existing[1]))
        job = await backup(client)
        await admin.execute(await admin.fetchval("SELECT format('DROP ROLE %I', $1::text)", gone))
        await admin.execute(await admin.fetchval(
            "SELECT format('REVOKE %I FROM %I', $1::text, $2::text)", existing[0], existing[1]))
        await admin.execute(await admin.fetchval(
            "SELECT format('COMMENT ON ROLE %I IS ''now''', $1::text)", existing[1]))
        await admin.execute(await admin.fetchval("SELECT format('CREATE ROLE %I', $1::text)", late))
        done = await restore(client, "pagila", {"backup_id": job["result"]["backup_id"],
                                                "include_globals": True})
        member = await admin.fetchval(
            "SELECT pg_has_role($2::text, $1::text, 'MEMBER')", existing[0], existing[1])
        comment = await admin.fetchval(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            existing[1])
        recreated = await admin.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                                         gone)
    finally:
        for name in [*names, late]:
            await admin.execute(await admin.fetchval(
                "SELECT format('DROP ROLE IF EXISTS %I', $1::text)", name))
        await admin.close()
    assert done["status"] == "succeeded", done["error"]
    await drop_db(done["result"]["database"])
    globals_ = done["result"]["checklist"]["globals"]
    assert set(existing) <= set(globals_["skipped_existing"])
    assert gone in globals_["created"] and recreated is True
    assert gone in done["result"]["checklist"]["roles_to_reset_password"]
    assert member is False, "a revoked membership was granted back"
    assert comment == "now"


def test_globals_plan_drops_memberships_and_comments_of_existing_roles_only() -> None:
    from app.restore.globals import plan

    script = "\n".join([
        "CREATE ROLE app;",
        'COMMENT ON ROLE "Old Hand" IS \'x\';',
        "COMMENT ON ROLE app IS 'new';",
        'GRANT admin TO "Old Hand" GRANTED BY postgres;',
        'GRANT "a"" TO ""Old Hand" TO app;',  # a new role whose name holds the text
        'GRANT admin TO "Old Hand" WITH ADMIN OPTION, INHERIT TRUE GRANTED BY postgres;',
        'GRANT admin TO "Old Hand x";',
        "GRANT ALL ON TABLESPACE t TO \"Old Hand\";",
    ])
    result = plan(script, {"Old Hand": '"Old Hand"'})
    assert result.skipped == ["Old Hand"]
    assert [line for line in result.sql.splitlines() if line] == [
        "CREATE ROLE app;", "COMMENT ON ROLE app IS 'new';",
        'GRANT "a"" TO ""Old Hand" TO app;', 'GRANT admin TO "Old Hand x";',
        'GRANT ALL ON TABLESPACE t TO "Old Hand";']


async def test_a_failed_restore_never_quotes_a_user_mappings_password(
        make_settings: Any) -> None:
    """pg_restore quotes the statement that failed after "Command was:", over several lines: a
    user mapping's options, its password included, one per line. Only the first line was left
    out of the job's error, which every viewer reads."""
    source = await create_db(f"{PREFIX}_fdwsecret")
    role = f"{PREFIX}_fdw user"
    conn = await admin_conn(source)
    try:
        await conn.execute("CREATE EXTENSION postgres_fdw")
        await conn.execute("CREATE SERVER remote FOREIGN DATA WRAPPER postgres_fdw "
                           "OPTIONS (host 'remote.invalid')")
        await conn.execute(await conn.fetchval("SELECT format('CREATE ROLE %I', $1::text)", role))
        await conn.execute(await conn.fetchval(
            "SELECT format('CREATE USER MAPPING FOR %I SERVER remote "
            "OPTIONS (user ''bob'', password ''hunter2-secret'')', $1::text)", role))
        settings = make_settings(targets={"fdw": {"dsn": dsn(source)}})
        async with running_app(settings) as c:
            job = await backup(c, "fdw")
            # The restore's server lacks the role: its CREATE USER MAPPING fails.
            await conn.execute(await conn.fetchval(
                "SELECT format('DROP USER MAPPING FOR %I SERVER remote', $1::text)", role))
            await conn.execute(await conn.fetchval("SELECT format('DROP ROLE %I', $1::text)",
                                                   role))
            done = await restore(c, "fdw", {"backup_id": job["result"]["backup_id"],
                                            "database": f"{PREFIX}_fdwsecret_r"})
    finally:
        await conn.execute(await conn.fetchval(
            "SELECT format('DROP USER MAPPING IF EXISTS FOR %I SERVER remote', $1::text)", role))
        await conn.execute(await conn.fetchval("SELECT format('DROP ROLE IF EXISTS %I', $1::text)",
                                               role))
        await conn.close()
        await drop_db(f"{PREFIX}_fdwsecret_r")
        await drop_db(source)
    assert done["status"] == "failed"
    assert "does not exist" in done["error"]["detail"]
    assert "hunter2" not in json.dumps(done)


async def test_in_place_refuses_a_dependent_made_while_it_waited_for_its_locks(
        make_settings: Any) -> None:
    """The check for outside objects that CASCADE would take ran before the restore's
    transaction. A session that held a lock on an archive table (an application's migration)
    added a column of that table's row type to a table of an excluded schema meanwhile; once it
    committed, DROP SCHEMA ... CASCADE dropped that column and its data."""
    from tests.test_in_place import plain_target

    db, settings = await plain_target(make_settings, "raceip", 100)
    settings.targets["raceip"].exclude_schemas.append("audit")
    psql(db, "-c", "CREATE SCHEMA audit; CREATE TABLE audit.log (id int); "
                   "INSERT INTO audit.log VALUES (1), (2)")
    async with running_app(settings) as c:
        job = await backup(c, "raceip")
        blocker = await admin_conn(db)
        watcher = await admin_conn(db)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM public.t LIMIT 1")  # holds a lock on it
            resp = await c.post("/v1/targets/raceip/restores", headers=auth("admin"), json={
                "backup_id": job["result"]["backup_id"], "mode": "in_place",
                "confirm": "raceip"})
            assert resp.status_code == 202, resp.text
            for _ in range(600):  # until the restore's session waits for the lock
                if await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                        "AND wait_event_type = 'Lock'", f"pgvault/restore/{resp.json()['id']}"):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the restore never waited for the lock")
            await blocker.execute("ALTER TABLE audit.log ADD COLUMN snap public.t; "
                                  "UPDATE audit.log SET snap = ROW(id, 'kept')")
            await tx.commit()
            done = await wait_job(c, resp.json()["id"], timeout=180)
            kept = await watcher.fetchval("SELECT count((snap).note) FROM audit.log")
        finally:
            await blocker.close()
            await watcher.close()
    assert kept == 2, "the restore dropped a column outside the archive"
    assert done["status"] == "failed"
    assert "column audit.log.snap" in done["error"]["detail"]


async def test_file_storage_makes_each_name_durable_before_it_vouches_for_it(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A rename or a new folder lives only in memory until its folder is fsynced: a crash
    after the backup succeeded could keep the manifest and lose the dump's name. Power loss
    cannot be staged here, so this records which folders were fsynced, and when."""
    import stat

    from app.integrations.storage.file import FileStorage

    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    storage = FileStorage(str(tmp_path))
    upload = await storage.start_upload("prod/20260101T000000Z-abcdef/database.dump.zst.gpg")
    await upload.write_part(b"dump")
    await upload.complete()
    after_object = list(synced)
    await storage.put("prod/20260101T000000Z-abcdef/manifest.json", b"{}")

    def ident(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_dev, st.st_ino

    archive = tmp_path / "prod" / "20260101T000000Z-abcdef"
    assert ident(tmp_path) in after_object  # the new folder prod/
    assert ident(tmp_path / "prod") in after_object  # the new archive folder
    assert ident(archive) in after_object  # the object's rename
    assert synced[len(after_object):] == [ident(archive)]  # the manifest's rename


async def test_in_place_refuses_to_drop_outside_tables_from_a_publication(
        make_settings: Any) -> None:
    """The archive's publication is dropped and made again from the dump, which (its schema
    excluded) lacks audit.log: the table left the publication, and its replication stopped
    without a word. The restore must refuse instead, before any change."""
    from tests.test_in_place import plain_target

    db, settings = await plain_target(make_settings, "rvpubip", 100)
    settings.targets["rvpubip"].exclude_schemas.append("audit")
    psql(db, "-c", "CREATE SCHEMA audit; CREATE TABLE audit.log (id int PRIMARY KEY); "
                   "CREATE TABLE audit.more (id int PRIMARY KEY); "
                   "CREATE PUBLICATION p FOR TABLE public.t, audit.log; "
                   "CREATE PUBLICATION q FOR TABLES IN SCHEMA audit")
    members = ("SELECT string_agg(m, ',' ORDER BY m) FROM (SELECT pubname || ':' || "
               "schemaname || '.' || tablename AS m FROM pg_publication_tables) AS t")
    async with running_app(settings) as c:
        job = await backup(c, "rvpubip")
        conn = await admin_conn(db)
        try:
            before = await conn.fetchval(members)
            done = await restore(c, "rvpubip", {"backup_id": job["result"]["backup_id"],
                                                "mode": "in_place", "confirm": "rvpubip"})
            after = await conn.fetchval(members)
        finally:
            await conn.close()
    assert after == before == "p:audit.log,p:public.t,q:audit.log,q:audit.more"
    assert done["status"] == "failed"
    assert "publication p" in done["error"]["detail"]
    assert "publication q" in done["error"]["detail"]


async def test_a_verification_never_drops_a_database_it_did_not_create(
        client: Any, monkeypatch: Any) -> None:
    """The scratch database's name is random, noted, then created; when CREATE DATABASE
    failed because that name was taken, the clean-up dropped the database that held it."""
    import app.restore.verify as service

    class Drawn:
        @staticmethod
        def token_hex(n: int) -> str:
            return f"{os.getpid():08x}"[-8:]

    taken = f"pgvault_verify_{Drawn.token_hex(4)}"
    await create_db(taken)
    try:
        job = await backup(client)
        monkeypatch.setattr(service, "secrets", Drawn)
        resp = await client.post(
            f"/v1/targets/pagila/archives/{job['result']['backup_id']}/verify",
            headers=auth("operator"), json={"level": "restore"})
        assert resp.status_code == 202, resp.text
        done = await wait_job(client, resp.json()["id"], timeout=180)
        admin = await admin_conn()
        try:
            still = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", taken)
        finally:
            await admin.close()
    finally:
        await drop_db(taken)
    assert done["status"] == "failed" and "already exists" in done["error"]["detail"]
    assert still == 1, "the verification dropped a database it did not create"


async def test_an_old_archives_in_place_restore_never_drops_a_database_it_did_not_create(
        make_settings: Any, s3: Any, bucket: str, monkeypatch: Any) -> None:
    """The same for the scratch database that names an old archive's schemas: its name was
    noted before CREATE DATABASE, and a failed job's clean-up dropped the database that had
    taken it."""
    import app.restore.old_archives as old_archives
    from tests.test_in_place import plain_target

    class Drawn:
        @staticmethod
        def token_hex(n: int) -> str:
            return f"{os.getpid():08x}"[-8:]

    taken = f"pgvault_names_{Drawn.token_hex(4)}"
    db, settings = await plain_target(make_settings, "rvoldip", 100)
    await create_db(taken)
    try:
        async with running_app(settings) as c:
            bid = (await backup(c, "rvoldip"))["result"]["backup_id"]
            key = f"archives/rvoldip/{bid}/manifest.json"
            doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            del doc["schemas"], doc["schemaless_objects"]
            s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())
            monkeypatch.setattr(old_archives, "secrets", Drawn)
            done = await restore(c, "rvoldip", {"backup_id": bid, "mode": "in_place",
                                                "confirm": "rvoldip"})
        admin = await admin_conn()
        try:
            still = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", taken)
        finally:
            await admin.close()
    finally:
        await drop_db(taken)
        await drop_db(db)
    assert done["status"] == "failed"
    assert still == 1, "the restore dropped a database it did not create"


async def test_in_place_does_not_fire_the_archives_event_triggers_outside_it(
        make_settings: Any) -> None:
    """The archive's event triggers were dropped only after its schemas: an ``sql_drop``
    trigger writing to a table of an excluded schema recorded every object of the replaced
    schemas there, a change outside the archive committed with the restore."""
    from tests.test_in_place import plain_target

    db, settings = await plain_target(make_settings, "rvevtip", 100)
    settings.targets["rvevtip"].exclude_schemas.append("audit")
    psql(db, "-c", """
        CREATE SCHEMA audit;
        CREATE TABLE audit.dropped (n int);
        CREATE FUNCTION audit.note_drops() RETURNS event_trigger LANGUAGE plpgsql AS
            'BEGIN INSERT INTO audit.dropped
                   SELECT count(*) FROM pg_event_trigger_dropped_objects(); END';
        CREATE EVENT TRIGGER note_drops ON sql_drop EXECUTE FUNCTION audit.note_drops();""")
    async with running_app(settings) as c:
        job = await backup(c, "rvevtip")
        done = await restore(c, "rvevtip", {"backup_id": job["result"]["backup_id"],
                                            "mode": "in_place", "confirm": "rvevtip"})
    conn = await admin_conn(db)
    try:
        noted = await conn.fetchval("SELECT count(*) FROM audit.dropped")
        back = await conn.fetchval("SELECT count(*) FROM pg_event_trigger "
                                   "WHERE evtname = 'note_drops'")
    finally:
        await conn.close()
    await drop_db(db)
    assert done["status"] == "succeeded", done["error"]
    assert back == 1  # the archive's trigger is back
    assert noted == 0, "the restore fired the archive's event trigger outside the archive"
