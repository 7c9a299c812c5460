"""The verify command (SPEC 2.4): fetch -> ``pg_restore --list`` (checksum), or restore into a
scratch database, compare it with the manifest and drop it (restore). Nothing is written before
every object's hash has been checked; only a conclusive finding condemns an archive."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from app.errors import StepFailed
from app.integrations import pg_tools
from app.integrations.pg_clients import ToolVersions
from app.integrations.process import PipelineError, run
from app.integrations.target_db import connect_target, uninterrupted
from app.jobs.context import JobContext
from app.resources import Resources
from app.restore import checks, fetch
from app.restore.command import (
    SESSION_DEFAULTS,
    create_database,
    drop_quietly,
    invalid_indexes,
    pg_restore,
    read_manifest,
    undo_leftovers,
    unvalidated_constraints,
)
from app.restore.tools import archive_reader, restore_tools
from app.steps import Step


async def run_verify(ctx: JobContext) -> tuple[dict[str, Any], str]:
    started = time.monotonic()
    level = ctx.params.get("level", "checksum")
    doc = await read_manifest(ctx)
    dsn = ctx.services.settings.targets[ctx.target].parsed_dsn
    # Kept in the job's result even if the verification fails (what it found so far).
    result = ctx.result
    result.update(backup_id=doc.backup_id, level=level)
    reader = archive_reader(ctx.services.clients, doc)
    tools = await restore_tools(ctx.services.clients, dsn, doc) if level == "restore" else None
    result["tools"] = ToolVersions(pg_restore=reader.version).as_dict()
    async with fetch.scratch_dir(ctx) as workdir:
        plain = await fetch.fetch(ctx, doc, workdir)
        result["objects_checked"] = len(doc.objects)
        await ctx.set_phase(Step.TABLE_OF_CONTENTS)
        try:
            toc = await run(pg_tools.pg_restore_list_stage(reader, plain["database"]))
        except PipelineError as exc:
            raise StepFailed(Step.PG_RESTORE_LIST, str(exc)) from None
        result["toc_entries"] = sum(1 for line in toc.decode().splitlines()
                                    if line and not line.startswith(";"))
        if tools is not None:
            scratch = f"pgvault_verify_{secrets.token_hex(4)}"
            result["scratch_database"] = scratch
            await ctx.note_cleanup("drop_database", scratch)  # random name: note it first
            created = False

            async def create(conn: Any) -> None:
                nonlocal created
                await create_database(conn, scratch, doc)
                created = True  # known even when a cancel lands meanwhile

            try:
                await ctx.set_phase(Step.CREATE_DATABASE)
                conn = await connect_target(dsn, settings=SESSION_DEFAULTS)
                try:
                    await uninterrupted(create(conn))
                finally:
                    await conn.close()
                await pg_restore(ctx, dsn, scratch, plain["database"], doc, jobs=2, tools=tools)
                result["tools"] = tools.used.as_dict()
                await ctx.set_phase(Step.COMPARE)
                conn = await connect_target(dsn, scratch, settings=SESSION_DEFAULTS)
                try:
                    result["row_counts"] = await checks.compare_rows(conn, doc.tables)
                    result["invalid_indexes"] = await invalid_indexes(conn, doc)
                    result["unvalidated_constraints"] = await unvalidated_constraints(conn, doc)
                finally:
                    await conn.close()
            finally:
                if not created:  # the name may be another's (taken): never drop it
                    result.pop("scratch_database")
                else:
                    result["scratch_database_dropped"] = await asyncio.shield(
                        drop_quietly(dsn, scratch))
                if not created or result["scratch_database_dropped"]:
                    await asyncio.shield(ctx.note_cleanup("drop_database", None))
    result["duration_s"] = round(time.monotonic() - started, 3)
    problems = []
    if level == "restore":
        if not result["row_counts"]["ok"]:
            problems.append(f"{len(result['row_counts']['mismatches'])} table(s) differ")
        # Only what the source did not have itself: its own ON ONLY partitioned indexes and
        # NOT VALID constraints come back exactly as they were, as they should.
        if worse := checks.made_worse(result["invalid_indexes"]):
            problems.append(f"{len(worse)} invalid index(es) the source did not have")
        if worse := checks.made_worse(result["unvalidated_constraints"]):
            problems.append(f"{len(worse)} unvalidated constraint(s) the source did not have")
    if problems:
        # Rows that differ from the manifest condemn the archive ("compare"); an invalid index or
        # a NOT VALID constraint may have come from the source itself ("checks").
        raise StepFailed(Step.COMPARE if not result["row_counts"]["ok"] else Step.CHECKS,
                         "; ".join(problems))
    summary = (f"{level} verification of {doc.backup_id} passed: "
               f"{result['objects_checked']} object(s), {result['toc_entries']} TOC entries"
               + (f", {result['row_counts']['tables_checked']} tables match"
                  + _excused(result) if level == "restore" else "")
               + f" in {result['duration_s']:.1f} s" + fetch.source_note(result))
    return result, summary


def _excused(result: dict[str, Any]) -> str:
    """What the source had itself, said so: a reader must not think it went unnoticed."""
    indexes, constraints = result["invalid_indexes"], result["unvalidated_constraints"]
    if not indexes and not constraints:
        return ""
    return (f" ({len(indexes)} invalid index(es) and {len(constraints)} NOT VALID "
            "constraint(s), as in the source)")


async def cleanup_verify(services: Resources, cleanup: dict[str, Any],
                         target: str) -> dict[str, Any]:
    """Undo a dead worker's verification: its scratch folder and scratch database."""
    dropped = await undo_leftovers(services, cleanup, target)
    return ({"scratch_database": dropped[0], "scratch_database_dropped": dropped[1]}
            if dropped else {})
