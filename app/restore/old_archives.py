"""What an archive from before the manifest listed its schemas holds, for an in-place restore.

Read back by the server, never out of pg_restore's text: the dump's ``SCHEMA`` entries (chosen by
type) are restored, without owners, privileges or comments, into an empty scratch database whose
``pg_namespace`` then names them. ``public``, which dumps never create, is in the archive unless
the target excluded it (pg_dump then read ``exclude_schemas`` as unquoted patterns, which fold to
lower case). An archive holding schema-less objects is refused: nothing short of restoring the
whole dump would name them, and its CREATEs would fail on the present ones.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg

from app.backup.manifest import Manifest
from app.config import PgDsn
from app.errors import StepFailed
from app.integrations import pg_tools
from app.integrations.pg_clients import RestoreTools
from app.integrations.process import PipelineError, run
from app.integrations.target_db import connect_target
from app.jobs.context import JobContext
from app.restore import databases
from app.steps import Step

# pg_dump's types for the objects in app/backup/facts.py SCHEMALESS_OBJECTS (subscriptions are
# named by every manifest).
SCHEMALESS_TOC_TYPES = ("EVENT TRIGGER", "PUBLICATION", "USER MAPPING", "SERVER",
                        "FOREIGN DATA WRAPPER", "CAST", "TRANSFORM", "ACCESS METHOD")

SCRATCH_SCHEMAS = """
SELECT nspname FROM pg_namespace
WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
  AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1"""


async def schemas_from_server(ctx: JobContext, dsn: PgDsn, dump: Path, toc: str,
                              doc: Manifest, tools: RestoreTools) -> list[str]:
    if pg_tools.toc_entries(toc, *SCHEMALESS_TOC_TYPES):
        raise StepFailed(Step.RESTORE_IN_PLACE, f"archive {doc.backup_id} predates the "
                         "manifest's list of schema-less objects (casts, publications, servers, "
                         "...) and holds some, so what an in-place restore would replace is not "
                         "known exactly; restore it into a new database (mode new_database)")
    names: list[str] = []
    if entries := pg_tools.toc_entries(toc, "SCHEMA"):
        selection = dump.with_name("schemas.list")
        await asyncio.to_thread(selection.write_text, "\n".join(entries) + "\n")
        names = await _restore_and_read(ctx, dsn, dump, selection, doc, tools)
    excluded = {name.lower() for name in doc.exclude_schemas}
    return sorted(names + ([] if "public" in excluded else ["public"]))


async def _restore_and_read(ctx: JobContext, dsn: PgDsn, dump: Path, selection: Path,
                            doc: Manifest, tools: RestoreTools) -> list[str]:
    scratch = f"pgvault_names_{secrets.token_hex(4)}"
    conn = await connect_target(dsn)
    try:
        await ctx.note_cleanup("drop_database", scratch)  # random name: note it first
        try:
            await databases.create(conn, scratch, encoding=doc.database_encoding,
                                   collate=doc.database_collate, ctype=doc.database_ctype)
        except asyncpg.PostgresError as exc:
            # Not created: the name may be another's (taken), so the job's clean-up must not
            # drop it.
            await ctx.note_cleanup("drop_database", None)
            raise StepFailed(Step.RESTORE_IN_PLACE, "cannot create a scratch database to name the "
                             f"schemas of archive {doc.backup_id}, which predates their "
                             f"list in its manifest ({type(exc).__name__}, SQLSTATE "
                             f"{exc.sqlstate}); restore it into a new database instead") from None
    finally:
        await conn.close()
    try:
        try:
            await run(pg_tools.pg_restore_definitions_stage(tools.pg_restore, dsn, scratch, dump,
                                                             selection))
        except PipelineError as exc:
            raise StepFailed(Step.PG_RESTORE_USE_LIST, str(exc)) from None
        conn = await connect_target(dsn, scratch)
        try:
            return [r["nspname"] for r in await conn.fetch(SCRATCH_SCHEMAS)]
        finally:
            await conn.close()
    finally:
        await asyncio.shield(_drop(dsn, scratch))
        await ctx.note_cleanup("drop_database", None)


async def _drop(dsn: PgDsn, name: str) -> None:
    conn = await connect_target(dsn)
    try:
        await databases.drop(conn, name)
    finally:
        await conn.close()
