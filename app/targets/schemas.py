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


class VerifiedBackup(BaseModel):
    backup_id: str
    at: datetime = Field(description="when its last restore test passed")


class VerificationSchedule(BaseModel):
    """Continuous proof (SPEC 2.14): restore tests of unverified archives, within a budget."""

    verify_every_archive: bool
    verify_budget_per_day: int
    used_today: int | None = Field(description="restore tests queued for continuous proof "
                                   "on the current UTC day, any outcome (null: not known)")
    cron: str = Field(description="the verify schedule, UTC; empty: off")
    next_at: datetime | None


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
        "last_verified_backup": {"backup_id": "20261123T000011Z-p2m7q1",
                                 "at": "2026-11-24T03:01:12.044Z"},
        "unverified_archives": 1, "restore_forecast_s": 41.3,
        "rto_forecast_ok": {"1": True, "2": True, "3": True},
        "verification_schedule": {"verify_every_archive": True, "verify_budget_per_day": 2,
                                  "used_today": 1, "cron": "0 3 * * *",
                                  "next_at": "2026-11-25T03:00:00Z"},
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
    # Continuous proof and the restore forecast (SPEC 2.14); null when storage could not be read.
    last_verified_backup: VerifiedBackup | None = Field(None, description=(
        "the newest good archive whose restore test passed (null: none)"))
    unverified_archives: int | None = Field(None, description=(
        "complete archives with no conclusive verification (a passed restore test, or damage "
        "found); null when storage could not be read"))
    restore_forecast_s: float | None = Field(None, description=(
        "expected restore time of the newest good archive, from the target's past restores "
        "and restore tests scaled by archive size (null: no history, or storage unreadable)"))
    rto_forecast_ok: dict[str, bool] | None = Field(None, description=(
        "per severity (\"1\", \"2\", \"3\"): the forecast is within that RTO (null: no "
        "forecast)"))
    verification_schedule: VerificationSchedule | None = None
    suspect_archives: int | None = Field(None, description=(
        "archives marked suspect by the anomaly guard and not cleared; null when storage could "
        "not be listed"))


class TargetList(BaseModel):
    items: list[TargetStatus]
