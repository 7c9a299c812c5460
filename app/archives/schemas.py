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


ARCHIVE_EXAMPLE: dict[str, Any] = {
    "backup_id": "20261124T000012Z-k3x9a2", "target": "demo",
    "created_at": "2026-11-24T00:00:12.031Z", "finished_at": "2026-11-24T00:01:05.498Z",
    "size_bytes": 2957312, "complete": True, "status": "complete", "reason": None,
    "label": None,
    "job_id": "0b9f3c1e-6a57-4d0e-9a51-3f4e2b8c7d10", "database_size_bytes": 16482467,
    "verification": {"status": "succeeded", "level": "restore",
                     "job_id": "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
                     "finished_at": "2026-11-24T03:12:44.120Z",
                     "at": "2026-11-24T03:12:44.120Z", "duration_s": 10.2,
                     "summary": "restore verification of 20261124T000012Z-k3x9a2 passed: "
                                "2 object(s), 1207 TOC entries, 21 tables match in 9.8 s",
                     "damaged": False}}


class Archive(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ARCHIVE_EXAMPLE]})

    backup_id: str
    target: str
    created_at: datetime
    finished_at: datetime | None = None
    size_bytes: int = Field(description="bytes in storage, all objects")
    complete: bool = Field(description="false: no manifest, a missing or short object, or "
                                       "unreadable; never restorable")
    status: ArchiveStatus = Field(description=(
        "complete: restorable; incomplete: no manifest or an object missing or short; "
        "unreadable: a manifest that cannot be trusted (not JSON, names another archive) or "
        "objects pgvault did not write (links): never restored, never counted as good, never "
        "deleted by retention -- a human decides (an admin may DELETE it)"))
    reason: str | None = Field(None, description="why the archive is unreadable")
    label: str | None = None
    job_id: UUID | None = Field(None, description="the backup job that made it")
    database_size_bytes: int | None = None
    verification: Verification | None = Field(None, description="the last verification")

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
            "tables": [{"schema": "public", "name": "rental", "rows": 16044}]}}]})

    manifest: dict[str, Any] | None = Field(description="manifest.json as stored (SPEC 6); "
                                            "null when the archive is incomplete")


class ArchiveList(BaseModel):
    items: list[Archive]
    next_cursor: str | None
