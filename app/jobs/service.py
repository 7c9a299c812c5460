"""Jobs: create (with Idempotency-Key and the one-backup-per-target rule), get, list, cancel."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import asyncpg
from pydantic import ValidationError

from app import pagination
from app.audit import repository as audit_repo
from app.errors import Conflict, InvalidRequest, NotFound
from app.jobs import repository as repo
from app.jobs.schemas import TERMINAL, Job, JobList
from app.resources import Resources
from app.security import Principal


def request_hash(kind: str, target: str, params: dict[str, Any]) -> str:
    canonical = json.dumps([kind, target, params], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def replay(services: Resources, caller: Principal, *, kind: str, target: str,
                 request: dict[str, Any], idempotency_key: str | None) -> Job | None:
    """The job a repeated Idempotency-Key already made, before any check that could answer
    differently the second time (the first restore created the database it would now refuse);
    422 when the key came with a different request."""
    if idempotency_key is None:
        return None
    async with services.pool.acquire() as conn:
        seen = await repo.get_idempotency(conn, caller.name, idempotency_key)
        if seen is None:
            return None
        if seen["request_hash"] != request_hash(kind, target, request):
            raise InvalidRequest("this Idempotency-Key was used with a different request; "
                                 "use a new key")
        row = await repo.get(conn, seen["job_id"])
    return Job.from_row(row)


async def create(services: Resources, caller: Principal, *, kind: str, target: str,
                 params: dict[str, Any], summary: str, idempotency_key: str | None,
                 request: dict[str, Any] | None = None) -> Job:
    """Queue a job (committed before work starts); a repeated key replays the first answer.

    ``request`` is what the caller sent, when ``params`` adds to it (a default database name
    holds the time): keys are matched against the request, not against what was derived."""
    digest = request_hash(kind, target, params if request is None else request)
    for _ in range(2):
        try:
            row = await _insert(services, caller, kind, target, params, summary,
                                idempotency_key, digest)
        except _Retry:
            continue
        if row["status"] == "queued":
            services.runner.wake()
        return Job.from_row(row)
    raise Conflict("a request with this Idempotency-Key is still in flight; retry shortly")


class _Retry(Exception):
    pass


async def _insert(services: Resources, caller: Principal, kind: str, target: str,
                  params: dict[str, Any], summary: str, idempotency_key: str | None,
                  digest: str) -> Any:
    async with services.pool.acquire() as conn, conn.transaction():
        return await insert_in(conn, caller, kind=kind, target=target, params=params,
                               summary=summary, idempotency_key=idempotency_key, digest=digest)


async def insert_in(conn: Any, caller: Principal, *, kind: str, target: str,
                    params: dict[str, Any], summary: str, idempotency_key: str | None = None,
                    digest: str = "") -> Any:
    """Queue a job inside the caller's transaction (the scheduler claims its slot in the same
    one); :class:`Conflict` when a backup of the target is already queued or running."""
    if idempotency_key is not None:
        seen = await repo.get_idempotency(conn, caller.name, idempotency_key)
        if seen is not None:
            if seen["request_hash"] != digest:
                raise InvalidRequest("this Idempotency-Key was used with a different "
                                     "request; use a new key")
            return await repo.get(conn, seen["job_id"])
    try:
        async with conn.transaction():
            row = await repo.insert(conn, job_id=uuid.uuid4(), kind=kind, target=target,
                                    params=params, requested_by=caller.name,
                                    summary=summary)
    except asyncpg.UniqueViolationError:
        running = await repo.active_backup(conn, target)
        running_id = str(running["id"]) if running else None
        raise Conflict(f"a backup of {target} is already queued or running "
                       f"(job {running_id})", job_id=running_id) from None
    if idempotency_key is not None and not await repo.insert_idempotency(
            conn, caller.name, idempotency_key, digest, row["id"]):
        # A concurrent request with the same key committed first: replay its answer.
        raise _Retry()
    await audit_repo.insert(conn, actor=caller.name, action=f"{kind}.request",
                            target=target, outcome="accepted", job_id=row["id"],
                            details={"params": params})
    return row


async def get(services: Resources, job_id: uuid.UUID) -> Job:
    async with services.pool.acquire() as conn:
        row = await repo.get(conn, job_id)
    if row is None:
        raise NotFound(f"no job {job_id}")
    return Job.from_row(row)


async def list_jobs(services: Resources, *, target: str | None, kind: str | None,
                    status: str | None, cursor: str | None, limit: int) -> JobList:
    key = pagination.decode_time_key(cursor, uuid.UUID)
    async with services.pool.acquire() as conn:
        rows = await repo.list_page(conn, target=target, kind=kind, status=status, after=key,
                                    limit=limit + 1)
    items: list[Job] = []
    skipped: list[pagination.Skipped] = []
    for row in rows[:limit]:
        try:
            items.append(Job.from_row(row))
        except (ValidationError, TypeError, ValueError) as exc:
            skipped.append(pagination.skipped(row["id"], exc))
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]  # the last row read, shown or skipped
        next_cursor = pagination.encode_time_key(last["created_at"], str(last["id"]))
    return JobList(items=items, next_cursor=next_cursor, skipped=skipped)


async def cancel(services: Resources, caller: Principal, job_id: uuid.UUID) -> Job:
    """Cancel a queued job at once, or ask the running job's worker to stop it.

    Cancelling a job that already ended changes nothing and answers with the job as it is:
    a bot racing a fast job gets the outcome, not an error."""
    async with services.pool.acquire() as conn, conn.transaction():
        current = await repo.get(conn, job_id)
        if current is None:
            raise NotFound(f"no job {job_id}")
        if current["status"] in TERMINAL:
            return Job.from_row(current)
        row = await repo.request_cancel(conn, job_id)
        await audit_repo.insert(conn, actor=caller.name, action="job.cancel",
                                target=row["target"], outcome="accepted", job_id=job_id)
    await services.runner.cancel_now(job_id)
    return Job.from_row(row)
