"""Suspect archives (SPEC 2.14): an operator clears one (the change was intended). Target status
counts the uncleared ones from the listing its proof reads (app/targets/proof.py)."""

from __future__ import annotations

import structlog

from app.archives import reviews
from app.archives.schemas import ArchiveDetail
from app.archives.service import get_archive
from app.audit import repository as audit_repo
from app.errors import Conflict
from app.resources import Resources
from app.security import Principal

log = structlog.get_logger("pgvault.archives")


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

