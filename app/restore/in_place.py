"""In-place restore: replace a target's contents with an archive's, all or nothing.

``pg_restore --clean --if-exists`` cannot clean a database with partitioned tables (it drops a
partition's inherited primary key first and fails; pagila shows it). So pgvault runs, in one
transaction on one psql session that it drives itself:

    SET lock_timeout; BEGIN;
    LOCK TABLE <the archive's tables>;  DO <no outside dependents, checked again>;
    DROP EVENT TRIGGER <the archive's>;   -- first: they would fire on the drops below
    DROP SCHEMA <each schema the archive holds> CASCADE;  CREATE SCHEMA public ...;
    DROP <its transforms, access methods, publications, servers, ...> IF EXISTS;
    lo_unlink(<the archive's large objects>);
    <the dump as an SQL script, from pg_restore --single-transaction -f -, less its COMMIT>
    \\echo <marker>   -- psql has run all of the above
    COMMIT;   -- written only after pg_restore exited 0 and psql echoed the marker

psql runs with ``ON_ERROR_STOP``. If pg_restore fails, psql fails, or the job is cancelled, psql is
killed before ``COMMIT`` is ever sent and the server rolls the transaction back: the target keeps
its data. (The runner then cancels psql's backend, found by its application_name: a backend busy
with ``CREATE INDEX`` would otherwise hold its locks until the statement ends.) Once ``COMMIT`` is
written, its outcome is the server's: a cancel then waits for it, and a committed restore is
reported as such, never as cancelled. (psql's own ``--single-transaction`` is not enough: it
commits at end of input, which is also what it sees when pg_restore dies. And pg_restore's
script needs its own ``--single-transaction``, or its large objects come in a BEGIN/COMMIT of
their own.) Objects
outside the archive's schemas that depend on what would be dropped (views, foreign keys, columns
of its types, triggers calling its functions, ...) make the restore refuse before any change,
rather than vanish with CASCADE.

What the archive holds comes from its manifest (app/backup/facts.py: schemas and schema-less
objects read in the backup's snapshot), never from names in pg_restore's text; every name is
quoted by the target's server. Schemas the archive does not hold (excluded ones) are not touched.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path
from typing import Any

from app.backup.manifest import Manifest
from app.config import PgDsn
from app.errors import StepFailed
from app.integrations import pg_tools
from app.integrations.pg_clients import RestoreTools
from app.integrations.process import Pipeline, PipelineError, run
from app.integrations.target_db import connect_target
from app.jobs.context import JobContext
from app.restore import old_archives
from app.restore.in_place_sql import (
    DEPENDENTS_SQL,
    LOCK_SQL,
    PRELUDE_SQL,
    PUBLICATION_MEMBERS_SQL,
    PUBLICATION_SCHEMAS_SQL,
    SCHEMALESS_DROP_SQL,
    SCHEMALESS_TYPES,
    SUBSCRIPTIONS_DROP_SQL,
)
from app.steps import Step


def _dependents_guard(schemas_literal: str) -> str:
    """DEPENDENTS_SQL again, inside the transaction after its locks: the check made before it
    began cannot see what a concurrent session added since. ``schemas_literal`` is the schema
    array as the server quoted it; the DO body's tag is random, so no name can end it."""
    tag = f"$pgvault_{secrets.token_hex(8)}$"
    query = DEPENDENTS_SQL.replace("$1::text[]", f"{schemas_literal}::text[]")
    return (f"DO {tag}\nDECLARE outside text;\nBEGIN\n"
            f"SELECT string_agg(name, ', ') INTO outside FROM ({query}) AS d;\n"
            "IF outside IS NOT NULL THEN RAISE EXCEPTION 'objects outside the archive depend on "
            "what it replaces and would be dropped: %; restore into a new database instead', "
            "left(outside, 1000); END IF;\n"
            f"END {tag};\n")


# What CREATE DATABASE gives public, which dumps never create and whose defaults (owner, ACL,
# comment) they leave out: recreated as template0 has it, the dump's own statements then bring the
# source's differences (PostgreSQL 15 and later).
PUBLIC_15 = ("CREATE SCHEMA public AUTHORIZATION pg_database_owner;\n"
             "GRANT USAGE ON SCHEMA public TO PUBLIC;\n"
             "COMMENT ON SCHEMA public IS 'standard public schema';\n")
PUBLIC_OLD = ("CREATE SCHEMA public;\nGRANT ALL ON SCHEMA public TO PUBLIC;\n"
              "COMMENT ON SCHEMA public IS 'standard public schema';\n")

# pg_restore --no-owner writes exactly this line for each of the selected large objects: no
# other text of the dump (an owner's name could hold anything) reaches the selected script.
_LO_CREATE = re.compile(rb"^SELECT pg_catalog\.lo_create\('(\d+)'\);$", re.MULTILINE)


def large_object_entries(toc: str) -> list[str]:
    """The entries of a dump's large objects: one ``BLOB - <oid>`` each up to pg_dump 16,
    ``BLOB METADATA - <first>..<last>`` groups from 17 on (a range, not a list)."""
    return pg_tools.toc_entries(toc, "BLOB", "BLOB METADATA")


def archive_schemas(doc: Manifest) -> list[str] | None:
    """The schemas the archive holds, as read from the catalog in the backup's snapshot (None
    for an archive from before the manifest listed them)."""
    if doc.schemas is None:
        return None
    return sorted(s.name for s in doc.schemas)


def archive_schemaless_objects(doc: Manifest) -> list[dict[str, Any]]:
    """As the drop statements' SQL reads them: ``{"type": ..., "names": [...]}``."""
    if unknown := {o.type for o in doc.schemaless_objects} - SCHEMALESS_TYPES:
        raise StepFailed(Step.RESTORE_IN_PLACE, "the manifest names schema-less objects of an "
                         f"unknown type ({', '.join(sorted(unknown))})")
    return [{"type": o.type, "names": o.names} for o in doc.schemaless_objects]


async def _large_objects_sql(tools: RestoreTools, dump: Path, toc: str) -> str:
    """Unlink the present versions of the archive's large objects: exactly its OIDs, from the
    ``lo_create`` calls pg_restore writes for them."""
    entries = large_object_entries(toc)
    if not entries:
        return ""
    selection = dump.with_name("large-objects.list")
    await asyncio.to_thread(selection.write_text, "\n".join(entries) + "\n")
    try:
        script = await run(pg_tools.pg_restore_selection_stage(tools.pg_restore, dump,
                                                               selection))
    except PipelineError as exc:
        raise StepFailed(Step.PG_RESTORE_USE_LIST, str(exc)) from None
    oids = sorted({int(o) for o in _LO_CREATE.findall(script)})
    if not oids:
        return ""
    return ("SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata "
            f"WHERE oid = ANY('{{{','.join(map(str, oids))}}}'::oid[]);\n")


async def replace_in_place(ctx: JobContext, dsn: PgDsn, dump: Path,
                           doc: Manifest, tools: RestoreTools) -> None:
    await ctx.set_phase(Step.RESTORE)
    try:
        toc = (await run(pg_tools.pg_restore_list_stage(tools.pg_restore, dump))).decode()
    except PipelineError as exc:
        raise StepFailed(Step.PG_RESTORE_LIST, str(exc)) from None
    schemas = archive_schemas(doc)
    if schemas is None:
        schemas = await old_archives.schemas_from_server(ctx, dsn, dump, toc, doc, tools)
    objects = archive_schemaless_objects(doc)
    conn = await connect_target(dsn)
    try:
        dependents = [r["name"] for r in await conn.fetch(DEPENDENTS_SQL, schemas)]
        prelude: str = await conn.fetchval(PRELUDE_SQL, schemas)
        guard = (await conn.fetchval(LOCK_SQL, schemas) + "\n" + _dependents_guard(
            await conn.fetchval("SELECT quote_literal($1::text[]::text)", schemas)))
        # The archive's event triggers go first: firing on the drops that follow, they would
        # write outside the archive (an audit table in an excluded schema, say).
        triggers = [o for o in objects if o.get("type") == "event trigger"]
        prelude = await conn.fetchval(SCHEMALESS_DROP_SQL, json.dumps(triggers)) + "\n" + prelude
        schemaless: str = await conn.fetchval(SCHEMALESS_DROP_SQL, json.dumps(
            [o for o in objects if o.get("type") != "event trigger"]))
        if pg_tools.toc_entries(toc, "SUBSCRIPTION"):
            schemaless += "\n" + await conn.fetchval(
                SUBSCRIPTIONS_DROP_SQL, [s.name for s in doc.subscriptions])
        version = int(await conn.fetchval("SHOW server_version_num"))
        publications = [o["names"][0] for o in objects if o.get("type") == "publication"]
        for sql in [PUBLICATION_MEMBERS_SQL] + (  # schema members: PostgreSQL 15 and later
                [PUBLICATION_SCHEMAS_SQL] if version >= 150000 else []):
            dependents += [r["name"] for r in await conn.fetch(sql, schemas, publications)]
        # A newer pg_restore's script is cut to the settings this server has (see ScriptHeadFitter).
        known = ({r["name"] for r in await conn.fetch("SELECT name FROM pg_catalog.pg_settings")}
                 if tools.script_needs_fitting else None)
    finally:
        await conn.close()
    if dependents:
        raise StepFailed(Step.RESTORE_IN_PLACE, "objects outside the archive depend on what it "
                         f"replaces and would be dropped: {', '.join(dependents[:10])}; "
                         "restore into a new database instead")
    if "public" in schemas:
        prelude += "\n" + (PUBLIC_15 if version >= 150000 else PUBLIC_OLD)
    # After the schemas: a server that an archive's foreign table uses can go only then (one
    # that an outside foreign table uses makes the restore fail, and roll back). Named by the
    # manifest, quoted by the target's server.
    prelude += "\n" + schemaless + "\n"
    prelude += await _large_objects_sql(tools, dump, toc)
    timeout_s = int(ctx.services.settings.lock_wait_timeout_s)
    # The target's own settings (ALTER DATABASE ... SET) must not time out or forbid the
    # replacement; pg_restore's script sets them only after the prelude.
    head = (f"SET lock_timeout = '{timeout_s}s';\nSET statement_timeout = 0;\n"
            f"SET default_transaction_read_only = off;\nBEGIN;\n{guard}{prelude}\n")
    fitter = pg_tools.ScriptHeadFitter(known) if known is not None else None
    await _run_in_one_transaction(dsn, dump, head, tools, fitter)
    if fitter is not None and fitter.dropped:
        ctx.log.info("script_fitted", dropped_settings=fitter.dropped)


async def _run_in_one_transaction(dsn: PgDsn, dump: Path, head: str, tools: RestoreTools,
                                  fitter: pg_tools.ScriptHeadFitter | None) -> None:
    restore = Pipeline([pg_tools.pg_restore_script_stage(tools.use(tools.pg_restore), dump)])
    psql = Pipeline([pg_tools.psql_stage(tools.use(tools.psql), dsn, dsn.database, None)],
                    feed=True)
    # psql echoes this once it has run everything before the COMMIT: until then a cancel rolls
    # it all back (psql killed, its backend cancelled by the runner); from then on only the
    # COMMIT's own outcome counts.
    marker = f"pgvault-ready-{secrets.token_hex(8)}".encode()
    ready = asyncio.Event()
    output: asyncio.Task[None] | None = None
    try:
        await psql.start()
        output = asyncio.create_task(_drain_output(psql, marker, ready))
        await restore.start()
        try:
            await psql.write(head.encode())
            # The script's own last statement is its COMMIT; hold it back until pg_restore has
            # exited 0 (its "BEGIN;" inside ours is only a warning).
            tail = b""
            while chunk := await restore.read(1 << 20):
                data = tail + (fitter.feed(chunk) if fitter is not None else chunk)
                keep = max(0, len(data) - SCRIPT_TAIL)
                if keep:
                    await psql.write(data[:keep])
                tail = data[keep:]
            await restore.wait()
            if fitter is not None:
                tail += fitter.finish()
            await psql.write(_without_commit(tail) + b"\\echo " + marker + b"\n")
        except BrokenPipeError:
            pass  # psql stopped on an error: its exit code says which
        except PipelineError as exc:
            # pg_restore failed: kill psql before its input ends, so nothing is committed.
            await asyncio.shield(psql.kill())
            raise StepFailed(Step.RESTORE_IN_PLACE_ROLLED_BACK, str(exc)) from None
        waiter = asyncio.ensure_future(ready.wait())
        try:
            await asyncio.wait([waiter, output], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not ready.is_set():  # psql ended before it ran everything: an error
            await psql.close_input()
            try:
                await psql.wait()
            except PipelineError as exc:
                raise StepFailed(Step.RESTORE_IN_PLACE_ROLLED_BACK, str(exc)) from None
            raise StepFailed(Step.RESTORE_IN_PLACE_ROLLED_BACK, "psql ended before the COMMIT")
    except BaseException:
        await asyncio.shield(_kill_all(psql, restore))
        if output is not None:
            output.cancel()
        await psql.close_input()
        raise
    await _commit(psql, output)


# How long a cancel that lands during the COMMIT waits for its outcome before giving up on it.
COMMIT_SETTLE_S = 60.0


async def _commit(psql: Pipeline, output: asyncio.Task[None]) -> None:
    """Send the COMMIT and report its true outcome. Once sent, killing psql could not undo it
    (the server may have it already): a cancel meanwhile waits for psql to say how it ended,
    and is swallowed when the restore committed (the job then succeeds: it did)."""
    async def send_and_wait() -> None:
        try:
            await psql.write(b"COMMIT;\n")
        except BrokenPipeError:
            pass  # psql is gone: its exit code says why
        await psql.close_input()
        await psql.wait()
        await output

    outcome = asyncio.ensure_future(send_and_wait())
    try:
        await asyncio.shield(outcome)
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(asyncio.shield(outcome), COMMIT_SETTLE_S)
        except TimeoutError:
            await asyncio.shield(psql.kill())
            raise StepFailed(Step.RESTORE_IN_PLACE, "cancelled while the COMMIT was in progress, "
                             f"which did not end within {COMMIT_SETTLE_S:.0f} s: whether the "
                             "target holds the archive's data is unknown; check it") from None
        except PipelineError:
            raise asyncio.CancelledError() from None  # the COMMIT failed: rolled back
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        return
    except PipelineError as exc:
        raise StepFailed(Step.RESTORE_IN_PLACE_ROLLED_BACK, str(exc)) from None
    finally:
        output.cancel()
        await psql.close_input()


async def _drain_output(psql: Pipeline, marker: bytes, ready: asyncio.Event) -> None:
    """Read psql's output to its end (the script's SELECTs print results), setting ``ready``
    when the marker line appears."""
    needle = marker + b"\n"
    window = b""
    while chunk := await psql.read(1 << 16):
        if not ready.is_set():
            window = window[-len(needle):] + chunk
            if needle in window:
                ready.set()


SCRIPT_TAIL = 4096


def _without_commit(tail: bytes) -> bytes:
    """The script's end without its final ``COMMIT;``, which only comments and psql's
    ``\\unrestrict`` may follow; anything else means the script is not whole."""
    at = tail.rfind(b"\nCOMMIT;\n")
    after = tail[at + len(b"\nCOMMIT;\n"):] if at >= 0 else b""
    if at < 0 or any(line.strip() and not line.startswith((b"--", b"\\unrestrict "))
                     for line in after.splitlines()):
        raise StepFailed(Step.RESTORE_IN_PLACE_ROLLED_BACK,
                         "pg_restore's script did not end with its COMMIT")
    return tail[:at + 1] + after


async def _kill_all(psql: Pipeline, restore: Pipeline) -> None:
    await psql.kill()  # first: a psql that outlives pg_restore must never see COMMIT
    await restore.kill()
