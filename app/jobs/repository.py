"""All SQL for jobs and idempotency keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

JOB_COLUMNS = """id, kind, target, status, phase, bytes_done, bytes_total, bytes_uploaded, params,
    result, error, summary, requested_by, created_at, started_at, finished_at, cleanup,
    cancel_requested"""


async def insert(conn: Any, *, job_id: UUID, kind: str, target: str, params: dict[str, Any],
                 requested_by: str, summary: str) -> Any:
    return await conn.fetchrow(
        f"""INSERT INTO jobs (id, kind, target, params, requested_by, summary)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {JOB_COLUMNS}""",
        job_id, kind, target, params, requested_by, summary)


async def get(conn: Any, job_id: UUID) -> Any:
    return await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)


async def active_backup(conn: Any, target: str) -> Any:
    return await conn.fetchrow(
        f"""SELECT {JOB_COLUMNS} FROM jobs
            WHERE target = $1 AND kind = 'backup' AND status IN ('queued', 'running')""", target)


async def list_page(conn: Any, *, target: str | None, kind: str | None, status: str | None,
                    after: tuple[datetime, UUID] | None, limit: int) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"""SELECT {JOB_COLUMNS} FROM jobs
            WHERE ($1::text IS NULL OR target = $1)
              AND ($2::text IS NULL OR kind = $2)
              AND ($3::text IS NULL OR status = $3)
              AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
            ORDER BY created_at DESC, id DESC LIMIT $6""",
        target, kind, status, after[0] if after else None, after[1] if after else None, limit)
    return rows


async def claim_next(conn: Any, *, owner: str, lease_s: float, targets: list[str]) -> Any:
    """Claim the oldest queued job of a target this replica knows; replicas can call this at
    once (SKIP LOCKED)."""
    return await conn.fetchrow(
        f"""UPDATE jobs SET status = 'running', phase = 'starting', started_at = now(),
                summary = kind || ' of ' || target || ': starting',
                updated_at = now(), lease_owner = $1,
                lease_expires_at = now() + make_interval(secs => $2)
            WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND NOT cancel_requested
                          AND target = ANY($3::text[])
                        ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)
            RETURNING {JOB_COLUMNS}""",
        owner, lease_s, targets)


async def renew_leases(conn: Any, *, owner: str, ids: list[UUID], lease_s: float) -> list[Any]:
    """Extend the leases of our running jobs; returns which of them were asked to cancel."""
    rows: list[Any] = await conn.fetch(
        """UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
           WHERE id = ANY($2::uuid[]) AND lease_owner = $1 AND status = 'running'
           RETURNING id, cancel_requested""",
        owner, ids, lease_s)
    return rows


async def update_progress(conn: Any, job_id: UUID, *, phase: str, bytes_done: int,
                          bytes_total: int | None, bytes_uploaded: int, summary: str) -> None:
    await conn.execute(
        """UPDATE jobs SET phase = $2, bytes_done = $3, bytes_total = $4, bytes_uploaded = $5,
               summary = $6, updated_at = now()
           WHERE id = $1 AND status = 'running'""",
        job_id, phase, bytes_done, bytes_total, bytes_uploaded, summary)


async def set_cleanup(conn: Any, job_id: UUID, cleanup: dict[str, Any]) -> None:
    await conn.execute("UPDATE jobs SET cleanup = $2 WHERE id = $1", job_id, cleanup)


async def finish(conn: Any, job_id: UUID, *, status: str, result: dict[str, Any],
                 error: dict[str, str] | None, summary: str, owner: str) -> Any:
    """Record a job's end; only its lease owner can (None when the lease was lost)."""
    return await conn.fetchrow(
        f"""UPDATE jobs SET status = $2, result = $3, error = $4, summary = $5,
                finished_at = now(), updated_at = now(), lease_owner = NULL,
                lease_expires_at = NULL, cleanup = '{{}}'
            WHERE id = $1 AND status = 'running' AND lease_owner = $6
            RETURNING {JOB_COLUMNS}""",
        job_id, status, result, error, summary, owner)


async def renew_if_held(conn: Any, job_id: UUID, owner: str, lease_s: float) -> bool:
    """Whether this worker still holds the lease, renewed at once for a full term: a lease that
    was about to run out cannot expire under the step that follows."""
    return bool(await conn.fetchval(
        """UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
           WHERE id = $1 AND status = 'running' AND lease_owner = $2
             AND lease_expires_at > now()
           RETURNING 1""", job_id, owner, lease_s))


async def request_cancel(conn: Any, job_id: UUID) -> Any:
    """Queued jobs are cancelled at once; running ones are flagged for their worker."""
    return await conn.fetchrow(
        f"""UPDATE jobs SET
                cancel_requested = true,
                status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
                error = CASE WHEN status = 'queued'
                    THEN '{{"title": "Cancelled", "detail": "cancelled before it started"}}'::jsonb
                    ELSE error END,
                summary = CASE WHEN status = 'queued' THEN 'cancelled before it started'
                    ELSE summary END,
                updated_at = now()
            WHERE id = $1 RETURNING {JOB_COLUMNS}""",
        job_id)


async def reap_expired(conn: Any) -> list[Any]:
    """Mark running jobs whose lease expired (worker dead) as failed; return them."""
    rows: list[Any] = await conn.fetch(
        f"""UPDATE jobs SET status = 'failed', finished_at = now(), updated_at = now(),
                error = jsonb_build_object('title', 'Worker lost',
                    'detail', 'the worker running this job stopped renewing its lease (crash, '
                              || 'kill or lost host); the job was abandoned at phase ' || phase),
                summary = kind || ' of ' || target || ' failed at ' || phase
                          || ': the worker running it was lost (crash, kill or lost host)',
                lease_owner = NULL, lease_expires_at = NULL
            WHERE id IN (SELECT id FROM jobs WHERE status = 'running'
                         AND lease_expires_at < now() FOR UPDATE SKIP LOCKED)
            RETURNING {JOB_COLUMNS}""")
    return rows


async def clear_cleanup(conn: Any, job_id: UUID, facts: dict[str, Any] | None = None) -> None:
    """Forget a reaped job's cleanup notes, adding to its result what undoing them found."""
    await conn.execute("UPDATE jobs SET cleanup = '{}', result = coalesce(result, '{}') || $2 "
                       "WHERE id = $1", job_id, facts or {})


async def get_idempotency(conn: Any, caller: str, key: str) -> Any:
    return await conn.fetchrow(
        "SELECT request_hash, job_id FROM idempotency_keys WHERE caller = $1 AND key = $2",
        caller, key)


async def insert_idempotency(conn: Any, caller: str, key: str, request_hash: str,
                             job_id: UUID) -> bool:
    row = await conn.fetchrow(
        """INSERT INTO idempotency_keys (caller, key, request_hash, job_id)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING job_id""",
        caller, key, request_hash, job_id)
    return row is not None


async def last_succeeded(conn: Any, kind: str, targets: list[str]) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"""SELECT DISTINCT ON (target) {JOB_COLUMNS} FROM jobs
            WHERE kind = $1 AND status = 'succeeded' AND target = ANY($2::text[])
            ORDER BY target, finished_at DESC""",
        kind, targets)
    return rows


async def counts(conn: Any) -> list[Any]:
    """Jobs by kind and status, all of them (finished ones count for ever: the metrics' totals),
    and how many of them the stall watchdog failed."""
    rows: list[Any] = await conn.fetch(
        """SELECT kind, status, count(*) AS n,
                  count(*) FILTER (WHERE status = 'failed' AND error->>'title' = 'stalled')
                      AS stalled
           FROM jobs GROUP BY kind, status""")
    return rows


async def duration_buckets(conn: Any, bounds: list[float]) -> list[Any]:
    """Finished jobs that ran (started), by kind and status: for each upper bound, how many took
    at most that long (cumulative, as a Prometheus histogram wants), with their count and sum."""
    rows: list[Any] = await conn.fetch(
        """WITH d AS (
               SELECT kind, status, extract(epoch FROM finished_at - started_at)::float8 AS s
               FROM jobs
               WHERE status IN ('succeeded', 'failed', 'cancelled')
                 AND started_at IS NOT NULL AND finished_at IS NOT NULL),
           per_bound AS (
               SELECT kind, status, b.le, count(*) FILTER (WHERE d.s <= b.le) AS c
               FROM d CROSS JOIN unnest($1::float8[]) AS b(le)
               GROUP BY kind, status, b.le),
           tot AS (SELECT kind, status, count(*) AS n, sum(s) AS seconds
                   FROM d GROUP BY kind, status)
           SELECT t.kind, t.status, t.n, t.seconds,
                  (SELECT array_agg(p.c ORDER BY p.le) FROM per_bound p
                   WHERE p.kind = t.kind AND p.status = t.status) AS buckets
           FROM tot t""", bounds)
    return rows


async def last_finished(conn: Any, kind: str, targets: list[str]) -> list[Any]:
    """Each target's last job of ``kind`` that succeeded or failed (cancelled ones decide
    nothing)."""
    rows: list[Any] = await conn.fetch(
        f"""SELECT DISTINCT ON (target) {JOB_COLUMNS} FROM jobs
            WHERE kind = $1 AND status IN ('succeeded', 'failed') AND target = ANY($2::text[])
            ORDER BY target, finished_at DESC""",
        kind, targets)
    return rows


async def running_of(conn: Any, kind: str) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = $1 AND status = 'running'", kind)
    return rows


async def archives_in_use(conn: Any, target: str) -> dict[str, UUID]:
    """Archives that queued or running restores and verifications read: backup_id -> job."""
    rows = await conn.fetch(
        """SELECT params->>'backup_id' AS backup_id, id FROM jobs
           WHERE target = $1 AND kind IN ('restore', 'verify')
             AND status IN ('queued', 'running')""", target)
    return {r["backup_id"]: r["id"] for r in rows}
