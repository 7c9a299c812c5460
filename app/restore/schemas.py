"""Request bodies for restores and verifications (SPEC section 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.config import BACKUP_ID_RE, DATABASE_NAME_RE


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backup_id: str = Field(pattern=BACKUP_ID_RE.pattern, description="the archive to restore")
    mode: Literal["new_database", "in_place"] = Field(
        "new_database", description="new_database leaves the original untouched; in_place "
        "replaces the target's contents (admin, needs confirm)")
    database: str | None = Field(None, pattern=DATABASE_NAME_RE.pattern,
                                 description="new_database only; default <target>_restore_<time>")
    confirm: str | None = Field(None, max_length=63,
                                description="in_place only: the target's name, repeated")
    include_globals: bool = Field(False, description="restore roles first; existing ones skipped")
    jobs: int = Field(2, ge=1, le=16, description="parallel pg_restore jobs (new_database)")
    severity: Literal[1, 2, 3] = Field(2, description="incident severity: RTO 1 h / 4 h / 8 h")
    keep_on_failure: bool = Field(
        False, description="new_database only: keep the database if the restore fails or is "
        "cancelled (it may be partial); by default it is dropped. The job result says which "
        "(database_dropped)")


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["checksum", "restore"] = "checksum"
