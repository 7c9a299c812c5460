"""Target status: configuration, last good backup, the recovery point objective, and the proof
of its archives with the restore forecast (:mod:`app.targets.proof`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import structlog
from croniter import croniter

from app.jobs import repository as jobs_repo
from app.resources import Resources
from app.targets import proof
from app.targets.rpo import good_backup, within_rpo
from app.targets.schemas import LastBackup, Schedule, TargetList, TargetStatus

log = structlog.get_logger("pgvault.targets")


def _status(services: Resources, name: str, last: Any, now: datetime,
            proven: dict[str, Any]) -> TargetStatus:
    cfg = services.settings.targets[name]
    dsn = cfg.parsed_dsn
    last_backup = None
    if (good := good_backup(last)) is not None:
        last_backup = LastBackup(
            backup_id=good.backup_id, job_id=good.job_id, finished_at=good.finished_at,
            size_bytes=int(good.size_bytes),
            age_s=round((now - good.finished_at).total_seconds(), 1))
    elif last is not None:
        # A damaged job record must not take every target's status down. Read as "no known
        # good backup": the RPO shows as broken and a human looks, the safe side.
        log.warning("backup_record_unreadable", target=name, job_id=str(last["id"]))
    rpo_ok = within_rpo(last_backup.age_s if last_backup else None, services.settings.rpo_hours)
    schedules = {}
    for kind, expr in cfg.effective_schedules().items():
        next_run = croniter(expr, now).get_next(datetime) if expr else None
        schedules[kind] = Schedule(cron=expr, next_run=next_run)
    return TargetStatus(
        name=name, dsn=dsn.redacted(), database=dsn.database, last_backup=last_backup,
        rpo_hours=services.settings.rpo_hours, rpo_ok=rpo_ok,
        retention_days=cfg.retention_days, retention_min_backups=cfg.retention_min_backups,
        exclude_schemas=cfg.exclude_schemas, schedules=schedules, **proven)


async def list_targets(services: Resources) -> TargetList:
    names = sorted(services.settings.targets)
    async with services.pool.acquire() as conn:
        rows = {r["target"]: r for r in await jobs_repo.last_succeeded(conn, "backup", names)}
    now = datetime.now(UTC)
    proofs = await asyncio.gather(*(proof.status_fields(services, n, now) for n in names))
    items = [_status(services, n, rows.get(n), now, p)
             for n, p in zip(names, proofs, strict=True)]
    return TargetList(items=items)


async def get_target(services: Resources, name: str) -> TargetStatus:
    async with services.pool.acquire() as conn:
        rows = await jobs_repo.last_succeeded(conn, "backup", [name])
    now = datetime.now(UTC)
    return _status(services, name, rows[0] if rows else None, now,
                   await proof.status_fields(services, name, now))
