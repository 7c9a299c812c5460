"""The recovery point objective: what counts as a target's last good backup, and whether its age
meets the RPO. One definition for target status, metrics and RPO-breach alerts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True)
class GoodBackup:
    """The last succeeded backup job of a target, as its record says."""

    backup_id: str
    job_id: UUID
    finished_at: datetime
    size_bytes: float
    duration_s: float


def good_backup(row: Any | None) -> GoodBackup | None:
    """The last succeeded backup job's row (``jobs_repo.last_succeeded``) as a good backup; None
    when there is none or its record is damaged (not a dict, no backup id): "no known good
    backup" is the safe reading, a human looks."""
    if row is None:
        return None
    result = row["result"]
    if not isinstance(result, dict) or not isinstance(result.get("backup_id"), str):
        return None
    return GoodBackup(backup_id=result["backup_id"], job_id=row["id"],
                      finished_at=row["finished_at"], size_bytes=_number(result.get("size_bytes")),
                      duration_s=_number(result.get("duration_s")))


def within_rpo(age_s: float | None, rpo_hours: float) -> bool:
    """Whether a last good backup ``age_s`` seconds old meets the RPO; None (no known good
    backup, or a record that cannot be read) never does: a human looks, the safe side."""
    return age_s is not None and age_s <= rpo_hours * 3600


def _number(value: Any) -> float:
    """A stored figure, or 0 when the record holds something else."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
