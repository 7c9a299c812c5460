"""Target status as the API shows it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field


class LastBackup(BaseModel):
    backup_id: str
    job_id: UUID
    finished_at: datetime
    size_bytes: int
    age_s: float


class Schedule(BaseModel):
    cron: str = Field(description="cron expression, UTC")
    next_run: datetime | None


class TargetStatus(BaseModel):
    name: str
    dsn: str = Field(description="the DSN with its password redacted")
    database: str
    last_backup: LastBackup | None
    rpo_hours: float
    rpo_ok: bool = Field(description="the last good backup is younger than the RPO")
    retention_days: int
    retention_min_backups: int
    exclude_schemas: list[str]
    schedules: dict[str, Schedule]


class TargetList(BaseModel):
    items: list[TargetStatus]
