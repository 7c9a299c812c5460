"""Suspect archives (SPEC 2.14) as routes and target status see them: an operator clears one
(the change was intended), and each target counts its uncleared ones."""

from __future__ import annotations

import asyncio

import structlog

from app.archives import reviews
from app.archives.schemas import ArchiveDetail
from app.archives.service import catalogue, get_archive
from app.audit import repository as audit_repo
from app.errors import Conflict
from app.resources import Resources
from app.security import Principal

log = structlog.get_logger("pgvault.archives")
COUNT_TIMEOUT_S = 10.0  # as /metrics lists archives: a slow storage must not hold a status page


async def clear_suspect(services: Resources, caller: Principal, target: str, backup_id: str,
                        reason: str | None) -> ArchiveDetail:
    """Clear an archive's suspect mark: it counts as good again; its anomalies stay shown."""
    archive = await get_archive(services, target, backup_id)  # NotFound when there is none
    if not archive.suspect:
        done = archive.suspect_cleared
        why = (f"already cleared by {done.by} at {done.at.isoformat()}" if done else
               "it has no anomalies" if archive.complete else "it is not a complete archive")
        raise Conflict(f"archive {backup_id} is not suspect: {why}")
    anomalies = [a.model_dump(mode="json") for a in archive.anomalies]
    async with services.pool.acquire() as conn, conn.transaction():
        if not await reviews.clear(conn, target, backup_id, by=caller.name, reason=reason):
            raise Conflict(f"archive {backup_id} is not suspect: cleared meanwhile")
        await audit_repo.insert(conn, actor=caller.name, action="archive.clear_suspect",
                                target=target, outcome="cleared",
                                details={"backup_id": backup_id, "reason": reason,
                                         "anomalies": anomalies})
    log.info("suspect_cleared", target=target, backup_id=backup_id, by=caller.name)
    return await get_archive(services, target, backup_id)


async def suspect_count(services: Resources, target: str) -> int | None:
    """Uncleared suspect archives of the target; None when storage cannot be listed in time."""
    try:
        archives = await asyncio.wait_for(catalogue(services, target), COUNT_TIMEOUT_S)
    except Exception as exc:  # storage down or slow: unknown, not zero
        log.warning("suspect_count_unknown", target=target, error_type=type(exc).__name__)
        return None
    return sum(1 for a in archives if a.complete and a.suspect)  # as /metrics counts them
