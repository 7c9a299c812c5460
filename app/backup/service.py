"""What the backup routes call. The backup itself is a job: its work is app/backup/command.py."""

from __future__ import annotations

from app.jobs import service as jobs
from app.jobs.schemas import Job
from app.resources import Resources
from app.security import Principal


async def start_backup(services: Resources, caller: Principal, target: str, *,
                       label: str | None, idempotency_key: str | None) -> Job:
    """Queue a backup of the target."""
    params = {"label": label} if label else {}
    return await jobs.create(services, caller, kind="backup", target=target, params=params,
                             summary=f"backup of {target} queued",
                             idempotency_key=idempotency_key)
