"""The small pure pieces: each decides something a user would notice."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.backup.manifest import backup_time, new_backup_id
from app.config import BACKUP_ID_RE, PgDsn
from app.integrations.gpg import decryption_succeeded
from app.integrations.pg_tools import conninfo_dbname
from app.restore.command import default_database_name
from app.restore.globals import created_roles, plan, statements
from app.security import redact


def test_backup_ids_match_the_contract_and_sort_by_time() -> None:
    first = new_backup_id()
    assert BACKUP_ID_RE.match(first)
    assert backup_time(first).year >= 2026
    assert new_backup_id(backup_time("20300101T000000Z-aaaaaa")) > first


def test_default_restore_database_name_is_valid() -> None:
    from app.config import DATABASE_NAME_RE

    name = default_database_name("my-target-" + "x" * 60)
    assert DATABASE_NAME_RE.match(name) and len(name) <= 63


def test_globals_plan_skips_existing_roles_and_lists_login_roles() -> None:
    script = "\n".join([
        "CREATE ROLE postgres;",
        "ALTER ROLE postgres WITH SUPERUSER LOGIN;",
        'CREATE ROLE "App User";',
        'ALTER ROLE "App User" WITH NOSUPERUSER LOGIN;',
        "CREATE ROLE readers;",
        "ALTER ROLE readers WITH NOLOGIN;",
        'GRANT readers TO "App User" GRANTED BY postgres;',
    ])
    result = plan(script, {"postgres": "postgres"})
    assert "ALTER ROLE postgres" not in result.sql and "CREATE ROLE postgres" not in result.sql
    assert result.skipped == ["postgres"]
    assert "GRANT readers" in result.sql
    after = [("postgres", "postgres", True), ("App User", '"App User"', True),
             ("readers", "readers", False), ("other", "other", True)]
    assert created_roles(result.sql, after, {"postgres": "postgres"}) == (
        ["App User", "readers"], ["App User"])


def test_globals_plan_reads_no_name_out_of_the_script() -> None:
    """A role name holding a newline, a quote and a statement of its own (as pg_dumpall writes
    it): the statements of an existing role go whole, the others stay whole, postgres is not
    touched by the text inside another role's name."""
    evil = 'x\nALTER ROLE postgres WITH NOSUPERUSER;'
    script = "\n".join([
        "\\restrict abc",
        "CREATE ROLE postgres;",
        'CREATE ROLE "x',
        'ALTER ROLE postgres WITH NOSUPERUSER;";',
        'ALTER ROLE "x',
        'ALTER ROLE postgres WITH NOSUPERUSER;" WITH NOSUPERUSER LOGIN;',
        'COMMENT ON ROLE other IS \'a;',
        'CREATE ROLE "we""ird";\';',
        'CREATE ROLE "we""ird";',
        "\\unrestrict abc",
    ])
    quoted = {"postgres": "postgres", evil: '"x\nALTER ROLE postgres WITH NOSUPERUSER;"'}
    kept = plan(script, {"we\"ird": '"we""ird"'})
    assert kept.skipped == ['we"ird']  # its CREATE goes; the one in the comment's literal stays
    assert kept.sql.count('CREATE ROLE "we""ird";') == 1 and "IS 'a;\nCREATE" in kept.sql
    assert kept.sql.startswith("\\restrict abc\n")
    result = plan(script, quoted)
    assert result.skipped == ["postgres", evil]
    assert [line for line in result.sql.splitlines() if line] == [
        "\\restrict abc", 'COMMENT ON ROLE other IS \'a;', 'CREATE ROLE "we""ird";\';',
        'CREATE ROLE "we""ird";', "\\unrestrict abc"]
    assert "".join(statements(script)) == script



def test_decryption_trusted_only_with_okay_and_no_failure() -> None:
    ok = "[GNUPG:] BEGIN_DECRYPTION\n[GNUPG:] DECRYPTION_OKAY\n[GNUPG:] END_DECRYPTION\n"
    assert decryption_succeeded(ok)
    assert not decryption_succeeded("[GNUPG:] BEGIN_DECRYPTION\n[GNUPG:] END_DECRYPTION\n")
    assert not decryption_succeeded(ok + "[GNUPG:] DECRYPTION_FAILED\n")
    assert not decryption_succeeded(ok + "[GNUPG:] BADMDC\n")


def test_dsn_password_stays_out_of_redacted_form_and_argv_material() -> None:
    dsn = PgDsn.parse("postgresql://app:p%40ss@db.internal:6432/sales?sslmode=require")
    assert dsn.redacted() == "postgresql://app:***@db.internal:6432/sales?sslmode=require"
    env = dsn.libpq_env()
    assert env["PGPASSWORD"] == "p@ss" and env["PGSSLMODE"] == "require"
    assert env["PGDATABASE"] == "sales"
    with pytest.raises(ValueError, match="unsupported parameters"):
        PgDsn.parse("postgresql://u@h/db?host=/tmp")


def test_conninfo_quotes_names() -> None:
    assert conninfo_dbname("plain") == "dbname='plain'"
    assert conninfo_dbname("it's") == "dbname='it\\'s'"


def test_redact_removes_every_secret() -> None:
    assert redact("failed for s3cret and s3cret-long", ["s3cret", "s3cret-long"]) == (
        "failed for *** and ***")


def test_stderr_keeps_errors_and_drops_quoted_data() -> None:
    from app.integrations.process import reduce_stderr

    text = """pg_restore: error: could not execute query: ERROR:  duplicate key value
DETAIL:  Key (email)=(alice@example.com) already exists.
CONTEXT:  COPY customer, line 3: "3\talice@example.com\tsecret-note"
Command was: COPY public.customer (id, email) FROM stdin;
pg_restore: warning: errors ignored on restore: 1
"""
    reduced = reduce_stderr(text)
    assert "duplicate key value" in reduced and "errors ignored" in reduced
    assert "alice@example.com" not in reduced and "secret-note" not in reduced


async def test_part_size_grows_so_any_dump_fits_in_10000_parts() -> None:
    from app.integrations import streaming
    from app.integrations.process import Pipeline, Stage

    class Recorder:
        key, upload_id = "k", "u"

        def __init__(self) -> None:
            self.parts: list[int] = []

        async def write_part(self, data: bytes) -> None:
            self.parts.append(len(data))

        async def complete(self) -> None:
            pass

        async def abort(self) -> None:
            pass

    class Store:
        upload = Recorder()

        async def start_upload(self, key: str) -> Recorder:
            return self.upload

    old = streaming.PARTS_PER_STEP
    streaming.PARTS_PER_STEP = 2
    try:
        pipeline = await Pipeline([Stage("head", ["head", "-c", str(1000), "/dev/zero"])]).start()
        stored = await streaming.pipeline_to_storage(pipeline, Store(), "k",  # type: ignore[arg-type]
                                                     part_size=50)
    finally:
        streaming.PARTS_PER_STEP = old
    assert Store.upload.parts[:6] == [50, 50, 100, 100, 200, 200]
    assert stored.size_bytes == 1000 == sum(Store.upload.parts)


def test_scratch_folders_no_live_process_owns_are_swept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from app.restore.fetch import OWNER_LOCK, _make_owned, _remove_owned, sweep_orphans

    mine, lock_fd = _make_owned(tmp_path)  # this process, alive
    orphan, orphan_fd = _make_owned(tmp_path)
    os.close(orphan_fd)  # what the kernel does when the owner dies
    other = tmp_path / "pgvault-1-other"  # another live process (pid 1 in its container, say)
    other.mkdir()
    (other / OWNER_LOCK).touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; "
         f"fd = os.open({str(other / OWNER_LOCK)!r}, os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    old = tmp_path / "pgvault-123-legacy"  # an older version's folder: no lock file
    fresh = tmp_path / "pgvault-456-justmade"  # created, its lock not taken yet
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "database.plain").write_bytes(b"decrypted")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert sorted(sweep_orphans(tmp_path)) == sorted([Path(orphan), old])
        assert Path(mine).exists() and other.exists() and fresh.exists()
    finally:
        holder.kill()
        holder.wait()
        _remove_owned(Path(mine), lock_fd)
    assert not Path(mine).exists()


def test_the_v1_gate_knows_the_role_of_every_v1_operation() -> None:
    """The gate answers 403 before a body is read: an operation it did not know would reach its
    body validation first (a 422 where the caller needed to hear 403)."""
    import json

    from app.main import v1_roles

    document = json.loads((Path(__file__).parent.parent / "openapi" / "openapi.json").read_text())
    operations = {(method.upper(), path) for path, item in document["paths"].items()
                  if path.startswith("/v1/") for method in item}
    known = {(method, route.path) for route, _ in v1_roles() for method in route.methods}
    assert operations == known
    roles = {(m, route.path): role for route, role in v1_roles() for m in route.methods}
    assert roles[("POST", "/v1/targets/{target}/restores")] == "admin"
    assert roles[("GET", "/v1/targets/{target}/archives")] == "viewer"


def test_large_object_entries_of_pg_dump_15_and_17() -> None:
    from app.restore.in_place import large_object_entries

    toc = """;
; Archive created at 2026-11-24 18:00:00 UTC
3341; 2613 63934 BLOB - 63934 postgres
3342; 2613 63935 BLOB - 63935 postgres
3343; 0 0 BLOBS - BLOBS
4102; 0 0 BLOB METADATA - 16385..16390 postgres
4103; 0 0 BLOBS - 16385..16390 postgres
215; 1259 16390 TABLE public docs postgres
"""
    assert [line.split(";")[0] for line in large_object_entries(toc)] == ["3341", "3342",
                                                                         "4102"]


def test_a_dsn_names_its_database_as_libpq_does() -> None:
    """Percent-escapes are decoded (libpq decodes them): my%20db is the database "my db"."""
    dsn = PgDsn.parse("postgresql://app@db:5432/pgv%20Names%20%22%C3%9C%22.db")
    assert dsn.database == 'pgv Names "Ü".db'
    assert dsn.libpq_env()["PGDATABASE"] == 'pgv Names "Ü".db'
    assert PgDsn.parse(dsn.redacted()).database == dsn.database
    with pytest.raises(ValueError):
        PgDsn.parse("postgresql://app@db/%2Dopt")  # a leading dash, however it is written
