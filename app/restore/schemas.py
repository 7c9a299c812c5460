"""Request bodies for restores and verifications (SPEC section 4)."""

from __future__ import annotations

from typing import Any, Literal

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
    keep_on_failure: bool = Field(
        False, description="new_database only: keep the database if the restore fails or is "
        "cancelled (it may be partial); by default it is dropped. The job result says which "
        "(database_dropped)")


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["checksum", "restore"] = Field(
        "checksum", description="checksum: hash, decrypt, table of contents; restore: restore "
        "into a scratch database and compare row counts")


# Swagger's "Try it out" sends the first example as is. Without one it invents every field from
# its pattern: a random database name, a confirm of "string". So the first example is only a
# backup id, well formed but matching no archive (404) until a real one from listArchives is
# typed in; where the others show a database or confirm, it is a placeholder that fails
# validation (422), never a name that would be used.
RESTORE_EXAMPLES: dict[str, Any] = {
    "new_database": {
        "summary": "into a new database named by pgvault (<target>_restore_<time>)",
        "description": "Replace backup_id with one from listArchives. The original database "
                       "is not touched.",
        "value": {"backup_id": "20261124T151600Z-k3x9a2"},
    },
    "new_database_named": {
        "summary": "into a new database you name, as a severity-1 incident",
        "value": {"backup_id": "20261124T151600Z-k3x9a2", "database": "<new database name>",
                  "severity": 1},
    },
    "in_place": {
        "summary": "in place: replaces the target's data (admin; repeat the target's name)",
        "value": {"backup_id": "20261124T151600Z-k3x9a2", "mode": "in_place",
                  "confirm": "<the target's name>"},
    },
}

VERIFY_EXAMPLES: dict[str, Any] = {
    "checksum": {"summary": "hash, decrypt and read the table of contents",
                 "value": {"level": "checksum"}},
    "restore": {"summary": "restore into a scratch database and compare row counts",
                "value": {"level": "restore"}},
}
