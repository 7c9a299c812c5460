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
    include_database_settings: bool = Field(
        False, description="in_place only: also bring back the database's own grants, settings "
        "(ALTER DATABASE / ALTER ROLE IN DATABASE ... SET) and comment; a new database always "
        "gets them")
    jobs: int = Field(2, ge=1, le=16, description="parallel pg_restore jobs (new_database)")
    severity: Literal[1, 2, 3] = Field(2, description="incident severity: RTO 1 h / 4 h / 8 h")


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["checksum", "restore"] = "checksum"
