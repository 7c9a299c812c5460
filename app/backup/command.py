"""The backup command (SPEC 2.1), as a list of named steps (:func:`run_backup`).

1. :func:`snapshot` (``connecting``): open a transaction on the target and export its snapshot;
   choose the pg_dump and pg_dumpall that fit the server's major (``client programs`` fails
   clearly when none is installed).
2. :func:`upload_globals` (``globals``): ``pg_dumpall --globals-only --no-role-passwords | zstd |
   gpg`` -> upload.
3. :func:`upload_dump` (``dump``): ``pg_dump -Fc -Z0 --snapshot | zstd -T0 | gpg --compress-algo
   none`` -> multipart upload, hashed on the way; meanwhile the manifest's facts and exact row
   counts are read in the same snapshot.
4. :func:`upload_database_properties` (``database properties``): the database's grants, settings
   and comment, an encrypted document (setting values may be secrets).
5. :func:`write_manifest` (``manifest``): written last, only after every stage of every pipeline
   exited 0, and only while this worker still owns the job; first the anomaly guard
   (app/backup/anomalies.py) judges the facts against the previous good archives, and a
   suspect archive's manifest names its anomalies (a ``backup.suspect`` webhook follows).

Every object goes to the primary storage and to each copy at once, the dump read once
(:mod:`app.backup.copies`): a copy that fails drops out and the backup succeeds with a warning;
the manifest goes to each copy that holds every object, after the primary's.

Any failure or cancellation kills the processes, aborts the open uploads, deletes the objects
already written for this archive in every location, and writes no manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from app.backup import anomalies, copies, facts, manifest, uploads
from app.config import Settings, TargetConfig
from app.errors import StepFailed
from app.integrations import pg_clients, pg_tools
from app.integrations.pg_clients import Client, ToolVersions
from app.integrations.storage import StorageError
from app.integrations.streaming import Stored
from app.integrations.target_db import connect_target
from app.jobs.context import JobContext
from app.resources import Resources
from app.steps import Step

_M = TypeVar("_M", bound=BaseModel)


@dataclass
class Backup:
    """One backup as its steps fill it in."""

    ctx: JobContext
    settings: Settings
    target: TargetConfig
    places: copies.Places
    backup_id: str
    created_at: datetime
    written: list[Stored] = field(default_factory=list)
    conn: Any = None  # the snapshot's session, open from snapshot() to the end of the dump
    snapshot: str = ""
    server: dict[str, Any] = field(default_factory=dict)
    pg_dump: Client | None = None
    pg_dumpall: Client | None = None
    catalog: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    tables: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[manifest.Anomaly] = field(default_factory=list)
    anomaly_check_skipped: str | None = None  # why the guard could not compare

    @property
    def prefix(self) -> str:
        return manifest.archive_prefix(self.ctx.target, self.backup_id)

    @property
    def tools(self) -> ToolVersions:
        assert self.pg_dump is not None and self.pg_dumpall is not None  # by snapshot()
        return ToolVersions(pg_dump=self.pg_dump.version, pg_dumpall=self.pg_dumpall.version)


async def run_backup(ctx: JobContext) -> tuple[dict[str, Any], str]:
    started = time.monotonic()
    settings = ctx.services.settings
    created_at = datetime.now(UTC)
    backup = Backup(ctx=ctx, settings=settings, target=settings.targets[ctx.target],
                    places=copies.Places.of(ctx.services), created_at=created_at,
                    backup_id=manifest.new_backup_id(created_at))
    await ctx.set_phase(Step.CONNECTING)
    # The snapshot's session idles in its transaction for the whole dump and counts big tables:
    # the role's own timeouts (managed services set them) must not end it.
    backup.conn = await connect_target(
        backup.target.parsed_dsn,
        settings={"statement_timeout": "0", "idle_in_transaction_session_timeout": "0"})
    try:
        async with backup.conn.transaction(isolation="repeatable_read", readonly=True):
            await snapshot(backup)
            await upload_globals(backup)
            await upload_dump(backup)
            await upload_database_properties(backup)
    except BaseException:
        await asyncio.shield(backup.places.discard())
        raise
    finally:
        await asyncio.shield(_close(backup.conn))
    doc = await write_manifest(backup)
    if doc.anomalies:
        _warn_suspect(backup)
    told = await copies.conclude(ctx, backup.places, backup.backup_id)
    return _result(backup, doc, time.monotonic() - started, told)


async def snapshot(backup: Backup) -> None:
    """Export the snapshot every later step reads, and choose the client programs."""
    conn = backup.conn
    backup.snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
    backup.server = await facts.server_facts(conn)
    clients = backup.ctx.services.clients
    try:
        server_major = backup.server["server_version_num"] // 10000
        backup.pg_dump = clients.choose("pg_dump", server_major)
        backup.pg_dumpall = clients.choose("pg_dumpall", server_major)
    except pg_clients.NoFittingClient as exc:
        raise StepFailed(Step.CLIENT_PROGRAMS, str(exc)) from None
    await backup.ctx.note_cleanup("archive_prefix", backup.prefix)


async def upload_globals(backup: Backup) -> None:
    """Roles, memberships and tablespaces, without role passwords."""
    assert backup.pg_dumpall is not None  # by snapshot()
    await backup.ctx.set_phase(Step.GLOBALS)
    stage = pg_tools.pg_dumpall_globals_stage(backup.pg_dumpall, backup.target.parsed_dsn)
    backup.written.append(await uploads.upload(
        backup.ctx, backup.places, Step.GLOBALS, backup.prefix + manifest.GLOBALS_OBJECT,
        uploads.encrypted_pipeline(stage, backup.settings)))


async def upload_dump(backup: Backup) -> None:
    """The database, and its facts and row counts in the same snapshot meanwhile."""
    assert backup.pg_dump is not None  # by snapshot()
    conn, target = backup.conn, backup.target
    backup.catalog = await facts.catalog_facts(conn, target.exclude_schemas)
    backup.properties = await facts.database_properties(conn)
    await backup.ctx.set_phase(Step.DUMP, bytes_total=backup.server["database_size_bytes"])
    stage = pg_tools.pg_dump_stage(
        backup.pg_dump, target.parsed_dsn, snapshot=backup.snapshot,
        lock_wait_timeout_s=backup.settings.lock_wait_timeout_s,
        exclude_schemas=target.exclude_schemas)
    pipeline = uploads.encrypted_pipeline(stage, backup.settings)
    tables = backup.catalog["tables"]
    counting = asyncio.create_task(
        facts.count_rows(conn, tables) if target.row_counts else _no_counts(tables))
    try:
        backup.written.append(await uploads.upload(
            backup.ctx, backup.places, Step.DUMP, backup.prefix + manifest.DATABASE_OBJECT,
            pipeline))
        backup.tables = await counting
    finally:
        if not counting.done():
            counting.cancel()
            with contextlib.suppress(BaseException):
                await counting


async def upload_database_properties(backup: Backup) -> None:
    """The database's own grants, settings and comment: an encrypted document, as setting
    values may be secrets (the manifest shows only their names)."""
    backup.written.append(await uploads.upload_document(
        backup.ctx, backup.places, Step.DATABASE_PROPERTIES,
        backup.prefix + manifest.PROPERTIES_OBJECT, json.dumps(backup.properties).encode()))


async def write_manifest(backup: Backup) -> manifest.Manifest:
    """The manifest, last, and only while this worker still owns the job: a replica that
    reaped it may already have deleted the objects. Then each copy's, as far as it got."""
    ctx = backup.ctx
    await ctx.set_phase(Step.MANIFEST)
    doc = _manifest(backup, finished_at=datetime.now(UTC))
    # Judged before the write, so the manifest itself says the archive was suspect.
    doc.anomalies, backup.anomaly_check_skipped = await anomalies.check(
        ctx.services, doc, backup.target.anomaly, ctx.log)
    backup.anomalies = doc.anomalies
    key = manifest.manifest_key(ctx.target, backup.backup_id)
    data = manifest.dumps(doc)
    try:
        await ctx.assert_lease()
        await backup.places.primary.storage.put(key, data)
        await _confirm_lease(ctx)
    except BaseException as exc:
        # The write may have landed even if it reported failure: manifest first, then objects.
        await asyncio.shield(backup.places.discard(key))
        if isinstance(exc, (StorageError, OSError)):
            raise StepFailed(Step.MANIFEST, str(exc)) from None
        raise
    await copies.write_manifests(ctx, backup.places, key, data)
    await ctx.note_cleanup("archive_prefix", None)
    ctx.services.manifests.put(key, doc)
    return doc


async def _confirm_lease(ctx: JobContext) -> None:
    """Still ours after the manifest write? If a replica reaped the job meanwhile (this worker
    cut off from the metadata database for a whole lease), it may have deleted the objects: the
    manifest must not stay to vouch for them (:class:`StepFailed`). A metadata database that
    cannot be asked proves nothing either way: the archive is whole, so it stays."""
    try:
        await ctx.assert_lease()
    except StepFailed:
        raise
    except Exception as exc:
        ctx.log.warning("lease_unconfirmed_after_manifest", error_type=type(exc).__name__)


def _manifest(backup: Backup, *, finished_at: datetime) -> manifest.Manifest:
    ctx, settings, server, catalog = backup.ctx, backup.settings, backup.server, backup.catalog
    kinds = {manifest.GLOBALS_OBJECT: "globals", manifest.DATABASE_OBJECT: "database",
             manifest.PROPERTIES_OBJECT: "database_properties"}
    objects = []
    for stored in backup.written:
        key = stored.key.removeprefix(backup.prefix)
        objects.append(manifest.ArchiveObject(key=key, kind=kinds[key],
                                              size_bytes=stored.size_bytes,
                                              sha256=stored.sha256, encrypted=True))
    tools = backup.tools
    # Every field given, so every key is written (None as null), as always.
    return manifest.Manifest(
        format_version=manifest.FORMAT_VERSION,
        backup_id=backup.backup_id,
        target=ctx.target,
        label=ctx.params.get("label"),
        job_id=ctx.job_id,
        requested_by=ctx.requested_by,
        created_at=backup.created_at,
        finished_at=finished_at,
        server_version=server["server_version"],
        server_version_num=server["server_version_num"],
        pg_dump_version=tools.pg_dump,
        tools=tools,
        database=server["database"],
        database_size_bytes=server["database_size_bytes"],
        database_encoding=server["encoding"],
        database_collate=server["collate"],
        database_ctype=server["ctype"],
        dump_format="custom",
        compression="zstd",
        compression_level=settings.zstd_level,
        encryption=manifest.Encryption(format="openpgp",
                                       recipients=list(settings.gpg_recipients)),
        snapshot=backup.snapshot,
        exclude_schemas=list(backup.target.exclude_schemas),
        row_counts="exact" if backup.target.row_counts else "none",
        objects=objects,
        tables=_each(manifest.TableRows, backup.tables),
        materialized_views=_each(manifest.MaterializedView, catalog["materialized_views"]),
        subscriptions=_each(manifest.Subscription, catalog["subscriptions"]),
        extensions=_each(manifest.Extension, catalog["extensions"]),
        schemas=_each(manifest.Schema, catalog["schemas"]),
        schemaless_objects=_each(manifest.SchemalessObject, catalog["schemaless_objects"]),
        invalid_indexes=_each(manifest.IndexRef, catalog["invalid_indexes"]),
        not_valid_constraints=_each(manifest.ConstraintRef, catalog["not_valid_constraints"]),
        database_properties=manifest.PropertiesSummary.model_validate(
            facts.properties_summary(backup.properties)),
        anomalies=[],
    )


def _each(model: type[_M], rows: list[dict[str, Any]]) -> list[_M]:
    return [model.model_validate(r) for r in rows]


def _result(backup: Backup, doc: manifest.Manifest, duration: float,
            told: dict[str, Any]) -> tuple[dict[str, Any], str]:
    size = manifest.size_bytes(doc)
    database_size = backup.server["database_size_bytes"]
    result = {
        "backup_id": backup.backup_id,
        "size_bytes": size,
        "database_size_bytes": database_size,
        "duration_s": round(duration, 3),
        "tables": len(backup.tables),
        "rows": sum(t["rows"] or 0 for t in backup.tables),
        "objects": [{"key": s.key.removeprefix(backup.prefix), "size_bytes": s.size_bytes,
                     "sha256": s.sha256} for s in backup.written],
        "label": backup.ctx.params.get("label"),
        "tools": backup.tools.as_dict(),
        "suspect": bool(backup.anomalies),
        "anomalies": [a.model_dump(mode="json") for a in backup.anomalies],
        **told,
    }
    summary = (f"backup {backup.backup_id} of {backup.ctx.target}: {_mb(size)} stored from a "
               f"{_mb(database_size)} database in {duration:.1f} s")
    if backup.anomalies:
        summary += f"; {anomalies.describe(backup.anomalies)}"
    if backup.anomaly_check_skipped:
        summary += f"; not compared with previous archives: {backup.anomaly_check_skipped}"
    if backup.places.dropped:
        summary += f"; missing from copy {', '.join(backup.places.dropped)}"
    return result, summary


def _warn_suspect(backup: Backup) -> None:
    """``backup.suspect``, once, for the archive this job wrote (SPEC 2.14)."""
    ctx = backup.ctx
    found = [a.model_dump(mode="json") for a in backup.anomalies]
    ctx.log.warning("backup_suspect", backup_id=backup.backup_id, anomalies=found)
    ctx.services.notifier.emit("backup.suspect", {
        "target": ctx.target, "backup_id": backup.backup_id,
        "summary": f"backup {backup.backup_id} of {ctx.target} is suspect: "
                   f"{anomalies.describe(backup.anomalies).removeprefix('SUSPECT: ')}",
        "anomalies": found,
        "job": {"id": str(ctx.job_id), "kind": ctx.kind, "target": ctx.target,
                "requested_by": ctx.requested_by}})


async def _no_counts(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"schema": t["schema"], "name": t["name"], "rows": None} for t in tables]


async def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 5)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


async def cleanup_backup(services: Resources, cleanup: dict[str, Any], target: str) -> None:
    """Undo what a dead worker's backup left in every location: its open uploads and its
    manifest-less objects."""
    await copies.cleanup_locations(services, cleanup)
