"""Archives as the API shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, model_validator

ArchiveStatus = Literal["complete", "incomplete", "unreadable"]


class Verification(BaseModel):
    status: Literal["succeeded", "failed"]
    level: str
    job_id: UUID
    finished_at: datetime | None
    summary: str
    damaged: bool = Field(False, description=(
        "the last conclusive verification (passed, or failed on a missing object, a hash, "
        "decryption, table of contents or row count mismatch) found the archive broken; a later "
        "run that failed for another reason does not clear it. Retention does not count a "
        "damaged archive as good"))


class Archive(BaseModel):
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
    manifest: dict[str, Any] | None


class ArchiveList(BaseModel):
    items: list[Archive]
    next_cursor: str | None
