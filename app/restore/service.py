"""Turning restore and verify requests into jobs, after checking what can be checked up front."""

from __future__ import annotations

from app.archives.service import usable_manifest
from app.errors import Conflict, InvalidRequest, StepFailed
from app.integrations.target_db import connect_target
from app.jobs import service as jobs
from app.jobs.schemas import Job
from app.resources import Resources
from app.restore import databases
from app.restore.command import default_database_name
from app.restore.schemas import RestoreRequest, VerifyRequest
from app.security import Principal


async def start_restore(services: Resources, caller: Principal, target: str,
                        body: RestoreRequest, idempotency_key: str | None) -> Job:
    """Queue a restore of a complete archive (404 if there is none, 409 if unreadable)."""
    # keep_on_failure and include_database_settings came later: left out when false, a request
    # hashes as it always did.
    request = body.model_dump(exclude={name for name in ("keep_on_failure",
                                                         "include_database_settings")
                                       if not getattr(body, name)})
    seen = await jobs.replay(services, caller, kind="restore", target=target, request=request,
                             idempotency_key=idempotency_key)
    if seen is not None:
        return seen
    own_db = services.settings.targets[target].parsed_dsn.database
    if body.mode == "in_place":
        if body.confirm != target:
            raise InvalidRequest(f"an in_place restore replaces {target}'s data: repeat the "
                                 f"target's name in confirm ({target!r})")
        if body.database not in (None, own_db):
            raise InvalidRequest("database applies to new_database restores only")
        if body.keep_on_failure:
            raise InvalidRequest("keep_on_failure applies to new_database restores only: an "
                                 "in_place restore that fails is rolled back")
        database = own_db
    else:
        database = body.database or default_database_name(target)
        if database == own_db:
            raise InvalidRequest(f"{database} is the target's own database: use mode in_place")
    await usable_manifest(services, target, body.backup_id)
    if body.mode == "new_database":
        await _refuse_existing(services, target, database)
    params = {**request, "database": database}
    return await jobs.create(services, caller, kind="restore", target=target, params=params,
                             summary=f"restore of {body.backup_id} into {database} queued",
                             idempotency_key=idempotency_key, request=request)


async def _refuse_existing(services: Resources, target: str, database: str) -> None:
    """409 now rather than a failed job later; an unreachable target is the job's to report."""
    try:
        conn = await connect_target(services.settings.targets[target].parsed_dsn, timeout=3)
    except StepFailed:
        return
    try:
        if await databases.exists(conn, database):
            raise Conflict(f"database {database} already exists on {target}'s server; pick "
                           "another name or drop it first")
    finally:
        await conn.close()


async def start_verify(services: Resources, caller: Principal, target: str, backup_id: str,
                       body: VerifyRequest, idempotency_key: str | None) -> Job:
    """Queue a verification of a complete archive (404 if there is none, 409 if unreadable)."""
    params = {"backup_id": backup_id, "level": body.level}
    seen = await jobs.replay(services, caller, kind="verify", target=target, request=params,
                             idempotency_key=idempotency_key)
    if seen is not None:
        return seen
    await usable_manifest(services, target, backup_id)
    return await jobs.create(services, caller, kind="verify", target=target, params=params,
                             summary=f"{body.level} verification of {backup_id} queued",
                             idempotency_key=idempotency_key)
