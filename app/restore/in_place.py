"""In-place restore: replace a target's contents with an archive's, all or nothing.

``pg_restore --clean --if-exists`` cannot clean a database with partitioned tables (it drops a
partition's inherited primary key first and fails; pagila shows it). So pgvault runs, in one
transaction on one psql session that it drives itself:

    SET lock_timeout; BEGIN;
    DROP SCHEMA <each schema the archive has objects in> CASCADE;  CREATE SCHEMA public ...;
    <the dump as an SQL script, from pg_restore -f ->
    COMMIT;   -- written only after pg_restore exited 0

psql runs with ``ON_ERROR_STOP``. If pg_restore fails, psql fails, or the job is cancelled, psql is
killed before ``COMMIT`` is ever sent and the server rolls the transaction back: the target keeps
its data. (psql's own ``--single-transaction`` is not enough: it commits at end of input, which
is also what it sees when pg_restore dies.) Objects outside the archive's schemas that depend on
what would be dropped (views, foreign keys) make the restore refuse before any change, rather
than vanish with CASCADE.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import PgDsn
from app.errors import StepFailed
from app.integrations import pg_tools
from app.integrations.process import Pipeline, PipelineError, run
from app.integrations.target_db import connect_target

if TYPE_CHECKING:
    from app.jobs.runner import JobContext

PRELUDE_SQL = """
SELECT coalesce(string_agg(format('DROP SCHEMA IF EXISTS %I CASCADE;', s), E'\\n'), '')
FROM unnest($1::text[]) AS s"""

# Objects in other schemas that CASCADE would silently drop with the archive's schemas.
DEPENDENTS_SQL = """
SELECT DISTINCT format('%I.%I', vn.nspname, v.relname) AS name
FROM pg_depend d
JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_class t ON d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE tn.nspname = ANY($1::text[]) AND NOT vn.nspname = ANY($1::text[])
UNION
SELECT format('%I.%I (foreign key %I)', n.nspname, r.relname, c.conname)
FROM pg_constraint c
JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
JOIN pg_class f ON f.oid = c.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace
WHERE c.contype = 'f' AND fn.nspname = ANY($1::text[]) AND NOT n.nspname = ANY($1::text[])
ORDER BY 1"""

# What CREATE DATABASE gives public, which dumps never create (PostgreSQL 15 and later).
PUBLIC_15 = ("CREATE SCHEMA public AUTHORIZATION pg_database_owner;\n"
             "GRANT USAGE ON SCHEMA public TO PUBLIC;\n")
PUBLIC_OLD = "CREATE SCHEMA public;\nGRANT ALL ON SCHEMA public TO PUBLIC;\n"


def dump_schemas(toc: str) -> list[str]:
    """Schemas a dump creates, from ``pg_restore --list`` (``<id>; <oid> <oid> SCHEMA - name``)."""
    found = []
    for line in toc.splitlines():
        parts = line.split()
        if not line.startswith(";") and len(parts) >= 6 and parts[3:5] == ["SCHEMA", "-"]:
            found.append(parts[5])
    return found


async def replace_in_place(ctx: JobContext, dsn: PgDsn, dump: Path,
                           doc: dict[str, Any]) -> None:
    await ctx.set_phase("restore")
    try:
        toc = (await run(pg_tools.pg_restore_list_stage(dump))).decode()
    except PipelineError as exc:
        raise StepFailed("pg_restore --list", str(exc)) from None
    schemas = sorted(set(dump_schemas(toc))
                     | {t["schema"] for t in doc.get("tables") or []}
                     | {m["schema"] for m in doc.get("materialized_views") or []})
    conn = await connect_target(dsn)
    try:
        dependents = [r["name"] for r in await conn.fetch(DEPENDENTS_SQL, schemas)]
        prelude: str = await conn.fetchval(PRELUDE_SQL, schemas)
        version = int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()
    if dependents:
        raise StepFailed("restore in place", "objects outside the archive depend on what it "
                         f"replaces and would be dropped: {', '.join(dependents[:10])}; "
                         "restore into a new database instead")
    if "public" in schemas:
        prelude += "\n" + (PUBLIC_15 if version >= 150000 else PUBLIC_OLD)
    timeout_s = int(ctx.services.settings.lock_wait_timeout_s)
    head = f"SET lock_timeout = '{timeout_s}s';\nBEGIN;\n{prelude}\n"
    await _run_in_one_transaction(dsn, dump, head)


async def _run_in_one_transaction(dsn: PgDsn, dump: Path, head: str) -> None:
    restore = Pipeline([pg_tools.pg_restore_script_stage(dump)])
    feed_r, feed_w = os.pipe()
    psql = Pipeline([pg_tools.psql_stage(dsn, dsn.database, None)], stdin=feed_r,
                    stdout=subprocess.DEVNULL)
    try:
        try:
            await psql.start()
        finally:
            os.close(feed_r)
        await restore.start()
        try:
            await _write(feed_w, head.encode())
            while chunk := await restore.read(1 << 20):
                await _write(feed_w, chunk)
            await restore.wait()
            await _write(feed_w, b"COMMIT;\n")
        except BrokenPipeError:
            pass  # psql stopped on an error: its exit code says which
        except PipelineError as exc:
            # pg_restore failed: kill psql before its input ends, so nothing is committed.
            await asyncio.shield(psql.kill())
            raise StepFailed("restore in place (rolled back)", str(exc)) from None
        os.close(feed_w)
        feed_w = -1
        try:
            await psql.wait()
        except PipelineError as exc:
            raise StepFailed("restore in place (rolled back)", str(exc)) from None
    except BaseException:
        await asyncio.shield(_kill_all(psql, restore))
        raise
    finally:
        if feed_w != -1:
            with contextlib.suppress(OSError):
                os.close(feed_w)


async def _write(fd: int, data: bytes) -> None:
    await asyncio.to_thread(_write_all, fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def _kill_all(psql: Pipeline, restore: Pipeline) -> None:
    await psql.kill()  # first: a psql that outlives pg_restore must never see COMMIT
    await restore.kill()
