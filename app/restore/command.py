"""The restore command (SPEC 2.3) as a list of named steps, and the steps the verify command
(``verify.py``, SPEC 2.4) shares with it.

restore:  client programs (the pg_restore and psql that fit the destination server, see ``tools``)
          -> fetch (download, check every hash, decrypt) -> globals (optional) -> create database
          (new_database) -> pg_restore -> post-restore checklist.

Nothing touches the destination before every object's hash has been checked and decrypted with
gpg's success status. A ``new_database`` restore that fails is dropped; an ``in_place`` restore runs
in one transaction that pgvault commits only after pg_restore succeeded (see ``in_place``), so a
failure rolls the target back to what it was.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from app.archives.service import ArchiveUnreadable, load_manifest
from app.backup.manifest import Manifest
from app.config import PgDsn
from app.errors import NotFound, StepFailed
from app.integrations import pg_errors, pg_tools
from app.integrations.pg_clients import RestoreTools
from app.integrations.process import PipelineError, run
from app.integrations.target_db import connect_target, end_backends, uninterrupted
from app.jobs.context import JobContext
from app.maintenance import tasks as maintenance
from app.resources import Resources
from app.restore import checks, database_properties, databases, fetch
from app.restore import globals as globals_
from app.restore.in_place import replace_in_place
from app.restore.tools import restore_tools
from app.steps import Step

log = structlog.get_logger("pgvault.restore")


# What pgvault's own sessions on a restored database need, whatever ALTER DATABASE / ALTER ROLE
# ... SET says there: no statement timeout, and writes allowed.
SESSION_DEFAULTS = {"statement_timeout": "0", "default_transaction_read_only": "off"}


def default_database_name(target: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{target.replace('-', '_')[:40]}_restore_{now:%Y%m%d%H%M%S}"


async def read_manifest(ctx: JobContext) -> Manifest:
    try:
        return await load_manifest(ctx.services, ctx.target, ctx.params["backup_id"],
                                   fresh=True)
    except (NotFound, ArchiveUnreadable) as exc:
        raise StepFailed(Step.MANIFEST, exc.detail) from None


async def pg_restore(ctx: JobContext, dsn: PgDsn, database: str, dump: Path,
                      doc: Manifest, *, jobs: int, tools: RestoreTools) -> None:
    await ctx.set_phase(Step.RESTORE)
    passes: list[tuple[str, ...]] = [()]
    if jobs > 1 and doc.not_valid_constraints:
        # A parallel pg_restore may add a NOT VALID constraint (post-data) before rows that
        # violate it are loaded, and COPY fails: a domain's waits for no table, an inheritance
        # parent's for none of its children. So all the data first, then the rest.
        passes = [("pre-data", "data"), ("post-data",)]
    try:
        for sections in passes:
            await run(pg_tools.pg_restore_stage(tools.use(tools.pg_restore), dsn, database, dump,
                                                jobs=jobs, sections=sections))
    except PipelineError as exc:
        raise StepFailed(Step.PG_RESTORE, str(exc)) from None


async def _apply_globals(ctx: JobContext, dsn: PgDsn, sql_file: Path,
                         tools: RestoreTools) -> dict[str, Any]:
    await ctx.set_phase(Step.GLOBALS)
    conn = await connect_target(dsn, settings=SESSION_DEFAULTS)
    try:
        existing = {name: quoted for name, quoted, _ in await databases.roles(conn)}
    finally:
        await conn.close()
    script = await asyncio.to_thread(sql_file.read_text)
    plan = globals_.plan(script, existing)
    filtered = sql_file.with_name("globals.filtered.sql")
    await asyncio.to_thread(filtered.write_text, plan.sql)
    try:
        await run(pg_tools.psql_stage(tools.use(tools.psql), dsn, dsn.database, filtered,
                                      single_transaction=True))
    except PipelineError as exc:
        raise StepFailed(Step.GLOBALS, str(exc)) from None
    conn = await connect_target(dsn)
    try:  # what the script created, as the server names it now
        created, login = globals_.created_roles(plan.sql, await databases.roles(conn), existing)
    finally:
        await conn.close()
    return {"created": created, "skipped_existing": plan.skipped, "login_roles": login}


async def _read_properties(plain: dict[str, Path]) -> dict[str, Any] | None:
    if "database_properties" not in plain:
        return None
    loaded: dict[str, Any] = json.loads(
        await asyncio.to_thread(plain["database_properties"].read_text))
    return loaded


async def _database_properties(ctx: JobContext, dsn: PgDsn, database: str,
                               props: dict[str, Any] | None, *, in_place: bool,
                               asked: bool) -> dict[str, Any]:
    """The database's own grants, settings and comment: always onto a new database; in place
    only when asked (the target still has its own, which may be newer). Applied last: a
    setting such as default_transaction_read_only must not stop the post-restore steps."""
    if props is None:
        return {"status": "not recorded", "applied": [], "skipped": []}
    if in_place and not asked:
        return {"status": "not requested", "applied": [], "skipped": []}
    await ctx.set_phase(Step.DATABASE_PROPERTIES)
    try:  # the data is in by now: a failure here is reported, never undoes it
        conn = await connect_target(dsn, settings=SESSION_DEFAULTS)
        try:
            return await database_properties.apply(conn, database, props, replace=in_place)
        finally:
            await conn.close()
    except (StepFailed, asyncpg.PostgresError) as exc:
        detail = exc.detail if isinstance(exc, StepFailed) else (
            f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})")
        return {"status": "failed", "applied": [], "skipped": [], "error": detail}


async def _post_restore(ctx: JobContext, dsn: PgDsn, database: str,
                        doc: Manifest) -> dict[str, Any]:
    """The runbook's post-restore steps. The data is restored by now: a step that fails is
    reported in ``errors`` (and fails the row check when it is the count), never undoes it."""
    await ctx.set_phase(Step.POST_RESTORE)
    errors: list[str] = []
    found: dict[str, Any] = {}
    steps = {
        "analyze": lambda c: maintenance.analyze(c),
        "materialized_views_refreshed": lambda c: maintenance.refresh_materialized_views(c),
        "row_counts": lambda c: checks.compare_rows(c, doc.tables),
        "invalid_indexes": lambda c: invalid_indexes(c, doc),
        "unvalidated_constraints": lambda c: unvalidated_constraints(c, doc),
        "subscriptions": checks.subscriptions,
    }
    # The database's own settings (an in-place target keeps them) must not stop the checklist.
    conn = await connect_target(dsn, database, settings=SESSION_DEFAULTS)
    try:
        for name, step in steps.items():
            try:
                found[name] = await step(conn)
            except (StepFailed, asyncpg.PostgresError) as exc:
                detail = exc.detail if isinstance(exc, StepFailed) else (
                    pg_errors.describe(exc))
                errors.append(f"{name}: {detail}")
    finally:
        await conn.close()
    subs = found.get("subscriptions") or []
    return {"analyze": {"done": "analyze" in found, **found.get("analyze", {})},
            "materialized_views_refreshed": found.get("materialized_views_refreshed", []),
            "row_counts": found.get("row_counts", {"ok": False, "tables_checked": 0,
                                                   "mismatches": []}),
            "invalid_indexes": found.get("invalid_indexes", []),
            "unvalidated_constraints": found.get("unvalidated_constraints", []),
            "subscriptions_to_enable": [s["name"] for s in subs if not s["enabled"]]
            or [s.name for s in doc.subscriptions],
            "errors": errors}


async def run_restore(ctx: JobContext) -> tuple[dict[str, Any], str]:
    started = time.monotonic()
    settings = ctx.services.settings
    dsn = settings.targets[ctx.target].parsed_dsn
    params = ctx.params
    in_place = params["mode"] == "in_place"
    database = dsn.database if in_place else params["database"]
    severity = int(params.get("severity") or 2)
    doc = await read_manifest(ctx)
    tools = await restore_tools(ctx.services.clients, dsn, doc)
    created = committed = False
    roles: dict[str, Any] = {"created": [], "skipped_existing": [], "login_roles": []}
    properties: dict[str, Any] | None = None

    try:
        async with fetch.scratch_dir(ctx) as workdir:
            plain = await fetch.fetch(ctx, doc, workdir)
            if params.get("include_globals") and "globals" in plain:
                roles = await _apply_globals(ctx, dsn, plain["globals"], tools)
                # Roles are the cluster's, committed at once: a restore that fails later
                # leaves them (they may be in use by then), and says which they are.
                ctx.result["roles_created"] = roles["created"]
            if not in_place:
                await ctx.set_phase(Step.CREATE_DATABASE)
                conn = await connect_target(dsn, settings=SESSION_DEFAULTS)

                async def create() -> None:
                    nonlocal created
                    await create_database(conn, database, doc)
                    created = True  # known even when a cancel lands meanwhile
                    ctx.result.update(database=database, database_dropped=False)
                    await ctx.note_cleanup("drop_database", database)

                try:
                    await uninterrupted(create())
                finally:
                    await conn.close()
            properties = await _read_properties(plain)
            if in_place:
                await replace_in_place(ctx, dsn, plain["database"], doc, tools)
                committed = True
                ctx.result.update(database=database, committed=True)
            else:
                await pg_restore(ctx, dsn, database, plain["database"], doc,
                                  jobs=int(params["jobs"]), tools=tools)
        if in_place and ctx.cancelling:
            # The cancel came while the COMMIT was with the server, and it committed.
            checklist = _checks_skipped(roles)
        else:
            checklist = await _post_restore(ctx, dsn, database, doc)
            # Applied last: a setting such as default_transaction_read_only must not stop the
            # post-restore steps.
            checklist["database_properties"] = await _database_properties(
                ctx, dsn, database, properties, in_place=in_place,
                asked=bool(params.get("include_database_settings")))
        await ctx.note_cleanup("drop_database", None)  # the restore succeeded: it stays
    except asyncio.CancelledError:
        if not committed:
            await _abandon_database(ctx, dsn, database, created)
            raise
        # The in-place restore is committed: a cancel can only cut its checks short (and end
        # their backends, as the runner does for jobs that do not succeed).
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        await asyncio.shield(end_backends(dsn, ctx.application_name))
        checklist = _checks_skipped(roles)
    except BaseException:
        await _abandon_database(ctx, dsn, database, created)
        raise

    duration = time.monotonic() - started
    rto_hours = settings.rto_hours[severity]
    checklist["roles_to_reset_password"] = roles["login_roles"]
    checklist["globals"] = roles if params.get("include_globals") else None
    rows_ok = checklist["row_counts"]["ok"]
    result = {
        "backup_id": doc.backup_id, "mode": params["mode"], "database": database,
        "duration_s": round(duration, 3), "severity": severity, "rto_hours": rto_hours,
        "rto_met": duration <= rto_hours * 3600, "rows_match": rows_ok, "checklist": checklist,
        "tools": tools.used.as_dict(),
        # Which location served the objects (fetch.py): a copy when the primary's was missing
        # or damaged.
        "source": ctx.result.get("source", "primary"), "sources": ctx.result.get("sources", {}),
    }
    if checklist.get("skipped"):
        result["rows_match"] = None
    summary = (f"restored {doc.backup_id} into {database} in {duration:.1f} s "
               f"(RTO {'met' if result['rto_met'] else 'MISSED'}); rows "
               f"{_rows_word(checklist)}; "
               f"{len(checks.made_worse(checklist['invalid_indexes']))} invalid index(es)"
               f"{_as_in_source(checklist['invalid_indexes'])}, "
               f"{len(checklist['roles_to_reset_password'])} role(s) need a password, "
               f"{len(checklist['subscriptions_to_enable'])} subscription(s) to enable"
               f"{fetch.source_note(result)}")
    return result, summary


async def _abandon_database(ctx: JobContext, dsn: PgDsn, database: str, created: bool) -> None:
    """A new-database restore that does not succeed drops the database it created, whatever
    the phase, unless the request asked to keep it; its result says which."""
    if not created:
        return
    if ctx.params.get("keep_on_failure"):
        ctx.result.update(database=database, database_dropped=False, database_kept=True)
        await asyncio.shield(ctx.note_cleanup("drop_database", None))
        return
    dropped = await asyncio.shield(drop_quietly(dsn, database))
    ctx.result.update(database=database, database_dropped=dropped)
    if dropped:
        await asyncio.shield(ctx.note_cleanup("drop_database", None))


def _checks_skipped(roles: dict[str, Any]) -> dict[str, Any]:
    note = ("cancelled after the in-place restore was committed: the target holds the "
            "archive's data; the post-restore checks did not run")
    return {"skipped": True, "analyze": {"done": False}, "materialized_views_refreshed": [],
            "row_counts": {"ok": False, "tables_checked": 0, "mismatches": []},
            "invalid_indexes": [], "unvalidated_constraints": [], "subscriptions_to_enable": [],
            "database_properties": {"status": "not applied (post-restore steps cancelled)",
                                    "applied": [], "skipped": []},
            "errors": [note]}


def _rows_word(checklist: dict[str, Any]) -> str:
    if checklist.get("skipped"):
        return "not checked (post-restore checks cancelled)"
    return "match" if checklist["row_counts"]["ok"] else "DIFFER"


async def invalid_indexes(conn: Any, doc: Manifest) -> list[dict[str, Any]]:
    return checks.against_source(await checks.invalid_indexes(conn),
                                 doc.invalid_indexes, checks.INDEX_KEY)


async def unvalidated_constraints(conn: Any, doc: Manifest) -> list[dict[str, Any]]:
    return checks.against_source(await checks.unvalidated_constraints(conn),
                                 doc.not_valid_constraints, checks.CONSTRAINT_KEY)


def _as_in_source(found: list[dict[str, Any]]) -> str:
    same = len(found) - len(checks.made_worse(found))
    return f" (+{same} as in the source)" if same else ""


async def create_database(conn: Any, name: str, doc: Manifest) -> None:
    try:
        await databases.create(conn, name, encoding=doc.database_encoding,
                               collate=doc.database_collate, ctype=doc.database_ctype)
    except asyncpg.DuplicateDatabaseError:
        raise StepFailed(Step.CREATE_DATABASE, f"database {name} already exists; pick another "
                                               "name or drop it first") from None
    except asyncpg.PostgresError as exc:
        raise StepFailed(Step.CREATE_DATABASE, f"cannot create {name} with the source's encoding "
                         f"and locale: {pg_errors.describe(exc)}") from None


async def drop_quietly(dsn: PgDsn, database: str) -> bool:
    """DROP DATABASE ... WITH (FORCE); whether it is gone (False: the server could not be
    reached or refused; the failure is logged, not raised, as this runs on failure paths)."""
    try:
        conn = await connect_target(dsn, settings=SESSION_DEFAULTS)
        try:
            await databases.drop(conn, database)
        finally:
            await conn.close()
        return True
    except Exception as exc:
        log.warning("drop_database_failed", error_type=type(exc).__name__)
        return False


async def cleanup_restore(services: Resources, cleanup: dict[str, Any],
                          target: str) -> dict[str, Any]:
    """Undo a dead worker's restore: its scratch folder and the database it created."""
    dropped = await undo_leftovers(services, cleanup, target)
    return {"database": dropped[0], "database_dropped": dropped[1]} if dropped else {}


async def undo_leftovers(services: Resources, cleanup: dict[str, Any],
                          target: str) -> tuple[str, bool] | None:
    scratch = cleanup.get("scratch_dir")
    if scratch:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    database = cleanup.get("drop_database")
    if database and target in services.settings.targets:
        return database, await drop_quietly(services.settings.targets[target].parsed_dsn,
                                             database)
    return None
