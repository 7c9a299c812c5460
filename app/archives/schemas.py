"""Archives as the API shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

ArchiveStatus = Literal["complete", "incomplete", "unreadable"]


class Verification(BaseModel):
    """The archive's last finished verification; ``damaged`` is its last conclusive one's verdict.
    Whether a restore test proved it: target status (``unverified_archives``)."""

    status: Literal["succeeded", "failed"]
    level: Literal["checksum", "restore"]
    job_id: UUID
    finished_at: datetime | None
    at: datetime | None = Field(None, description="when it finished (as finished_at)")
    duration_s: float | None = Field(None, description="how long the verification job ran")
    summary: str
    damaged: bool = Field(False, description=(
        "the last conclusive verification (passed, or failed on a missing object, a hash, "
        "decryption, table of contents or row count mismatch) found the archive broken; a later "
        "run that failed for another reason does not clear it. Retention does not count a "
        "damaged archive as good"))


class Anomaly(BaseModel):
    """What made the archive suspect when it was written (SPEC 2.14), against the median of its
    target's previous good archives."""

    kind: str = Field(description="size_drop, rows_drop or table_missing",
                      examples=["rows_drop"])
    table: str | None = Field(None, description=(
        "schema.name, a part double-quoted unless plain lower case; null for size_drop"),
                              examples=["public.rental"])
    before: int | None = Field(None, description="the median before: dump bytes or rows")
    now: int | None = Field(None, description="in this archive; null when the table is gone")


class SuspectCleared(BaseModel):
    by: str = Field(description="the operator who said the change was intended")
    at: datetime
    reason: str | None = None


class CopyState(BaseModel):
    """One copy location's state of an archive (SPEC 2.15), as last written or checked."""

    status: Literal["complete", "missing", "incomplete", "damaged"] = Field(description=(
        "complete: every object and the manifest there; missing: not there (the copy failed "
        "during the backup); incomplete: an object absent or short; damaged: an object fails "
        "its SHA-256"))
    checked_at: datetime = Field(description="when the state was written or last checked")
    detail: str | None = Field(None, description="why it is not complete")


ARCHIVE_EXAMPLE: dict[str, Any] = {
    "backup_id": "20261124T000012Z-k3x9a2", "target": "demo",
    "created_at": "2026-11-24T00:00:12.031Z", "finished_at": "2026-11-24T00:01:05.498Z",
    "size_bytes": 2957312, "complete": True, "status": "complete", "reason": None,
    "label": None, "degraded": None,
    "job_id": "0b9f3c1e-6a57-4d0e-9a51-3f4e2b8c7d10", "database_size_bytes": 16482467,
    "verification": {"status": "succeeded", "level": "restore",
                     "job_id": "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
                     "finished_at": "2026-11-24T03:12:44.120Z",
                     "at": "2026-11-24T03:12:44.120Z", "duration_s": 10.2,
                     "summary": "restore verification of 20261124T000012Z-k3x9a2 passed: "
                                "2 object(s), 1207 TOC entries, 21 tables match in 9.8 s",
                     "damaged": False},
    "suspect": False, "anomalies": [], "suspect_cleared": None,
    "copies": {"offsite": {"status": "complete", "checked_at": "2026-11-24T00:01:05.611Z",
                           "detail": None}}}


class Archive(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ARCHIVE_EXAMPLE]})

    backup_id: str
    target: str
    created_at: datetime
    finished_at: datetime | None = None
    size_bytes: int = Field(description="bytes in storage, all objects")
    complete: bool = Field(description="false: no manifest, a missing or short object (and no "
                                       "copy holding it whole), or unreadable; never "
                                       "restorable")
    status: ArchiveStatus = Field(description=(
        "complete: restorable (see degraded); incomplete: no manifest or an object missing or "
        "short, and no copy holds it whole; unreadable: a manifest that cannot be trusted (not "
        "JSON, names another archive), objects pgvault did not write (links), or an object "
        "missing on the primary while the copies cannot be listed: never restored, never "
        "counted as good, never deleted by retention -- a human decides (an admin may DELETE "
        "it)"))
    reason: str | None = Field(None, description="why the archive is unreadable")
    degraded: str | None = Field(None, description=(
        "null when the primary storage holds the whole archive; else what it lacks and the copy "
        "that holds it whole: the archive is complete and restorable (restores and "
        "verifications read those objects from the copy and name it in their result's "
        "source), and a reconcile job repairs the primary"))
    label: str | None = None
    job_id: UUID | None = Field(None, description="the backup job that made it")
    database_size_bytes: int | None = None
    verification: Verification | None = Field(None, description="the last verification")
    suspect: bool = Field(False, description=(
        "its facts fell sharply against the previous good archives (anomalies) and no operator "
        "cleared it: retention does not count it as good"))
    anomalies: list[Anomaly] = Field(default_factory=list, description=(
        "found when it was written (kept after clearing)"))
    suspect_cleared: SuspectCleared | None = Field(None, description=(
        "an operator said the change was intended (PATCH suspect false)"))
    copies: dict[str, CopyState | None] = Field(default_factory=dict, description=(
        "each configured copy location (PGVAULT_COPIES) by name, the primary not included; "
        "null: no state recorded for this archive there yet (older than the copy's "
        "configuration, or never checked): reconciliation finds out"))

    @model_validator(mode="before")
    @classmethod
    def _default_status(cls, data: Any) -> Any:
        # Code that predates ``status`` builds archives from ``complete`` alone.
        if isinstance(data, dict) and "status" not in data:
            return {**data, "status": "complete" if data.get("complete") else "incomplete"}
        return data


class ArchiveDetail(Archive):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        **ARCHIVE_EXAMPLE,
        "manifest": {
            "format_version": 1, "backup_id": "20261124T000012Z-k3x9a2", "target": "demo",
            "created_at": "2026-11-24T00:00:12.031000+00:00",
            "finished_at": "2026-11-24T00:01:05.498000+00:00",
            "server_version": "15.10", "pg_dump_version": "15.10",
            "database_size_bytes": 16482467, "compression": "zstd",
            "objects": [{"key": "database.dump.zst.gpg", "size_bytes": 2949120,
                         "sha256": "9f2c...e41a", "encrypted": True}],
            "tables": [{"schema": "public", "name": "rental", "rows": 16044}]},
        "locked_until": "2026-12-24T00:00:12Z"}]})

    manifest: dict[str, Any] | None = Field(description="manifest.json as stored (SPEC 6); "
                                            "null when the archive is incomplete")
    locked_until: datetime | None = Field(None, description=(
        "the latest S3 Object Lock end among the archive's objects in the locations that set "
        "object_lock_days (SPEC 2.15); null when none is locked now (or its lock cannot be read "
        "at the moment). Until then DELETE answers 409 and retention keeps the archive"))


class ArchiveList(BaseModel):
    items: list[Archive]
    next_cursor: str | None
