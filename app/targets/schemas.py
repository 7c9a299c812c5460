"""Target status as the API shows it."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


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
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "demo", "dsn": "postgresql://backup:***@db1.internal:5432/pagila",
        "database": "pagila",
        "last_backup": {"backup_id": "20261124T000012Z-k3x9a2",
                        "job_id": "0b9f3c1e-6a57-4d0e-9a51-3f4e2b8c7d10",
                        "finished_at": "2026-11-24T00:01:05.512Z", "size_bytes": 2957312,
                        "age_s": 52311.4},
        "rpo_hours": 24.0, "rpo_ok": True, "retention_days": 90, "retention_min_backups": 7,
        "exclude_schemas": [],
        "schedules": {"backup": {"cron": "0 0 * * *", "next_run": "2026-11-25T00:00:00Z"}},
        "suspect_archives": 0}]})

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
    suspect_archives: int | None = Field(None, description=(
        "archives marked suspect by the anomaly guard and not cleared; null when storage could "
        "not be listed"))


class TargetList(BaseModel):
    items: list[TargetStatus]
