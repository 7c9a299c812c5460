"""All SQL for continuous proof (SPEC 2.14): what each archive's verifications concluded, the
restore tests the scheduler queued today, and the restore history the forecast learns from.

"Conclusive" is one definition everywhere: a verification that passed, or one that failed at a
step that proves damage (``damage_steps``). A run that failed for another reason (no worker, no
room, storage unreachable) says nothing about the archive.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.jobs.repository import JOB_COLUMNS

_CONCLUSIVE = """(j.status = 'succeeded'
                  OR (j.status = 'failed' AND j.result->>'failed_step' = ANY($3::text[])))"""


async def last_verifications(conn: Any, target: str, backup_ids: list[str],
                             damage_steps: list[str]) -> list[Any]:
    """Each archive's last finished verification, with ``run_s`` (its start-to-end time) and
    ``damaged``: whether its last conclusive one found the archive broken. A later run that
    failed for another reason (no worker, no room) changes neither verdict."""
    cols = ", ".join(f"v.{c.strip()}" for c in JOB_COLUMNS.split(","))
    rows: list[Any] = await conn.fetch(
        f"""SELECT DISTINCT ON (v.params->>'backup_id') {cols},
                extract(epoch FROM v.finished_at - v.started_at)::float8 AS run_s,
                coalesce((SELECT j.status = 'failed' FROM jobs j
                          WHERE j.kind = 'verify' AND j.target = v.target
                            AND j.params->>'backup_id' = v.params->>'backup_id'
                            AND {_CONCLUSIVE}
                          ORDER BY j.finished_at DESC LIMIT 1), false) AS damaged
            FROM jobs v
            WHERE v.kind = 'verify' AND v.target = $1
              AND v.params->>'backup_id' = ANY($2::text[])
              AND v.status IN ('succeeded', 'failed')
            ORDER BY v.params->>'backup_id', v.finished_at DESC""",
        target, backup_ids, damage_steps)
    return rows


async def restore_passes(conn: Any, target: str) -> dict[str, datetime]:
    """Archives with a passing restore-level verification: backup_id -> when the last passed."""
    rows = await conn.fetch(
        """SELECT params->>'backup_id' AS backup_id, max(finished_at) AS at FROM jobs
           WHERE kind = 'verify' AND target = $1 AND status = 'succeeded'
             AND params->>'level' = 'restore'
           GROUP BY params->>'backup_id'""", target)
    return {r["backup_id"]: r["at"] for r in rows if r["backup_id"] is not None}


async def continuous_queued(conn: Any, target: str, since: datetime, until: datetime) -> int:
    """Restore tests the scheduler queued for continuous proof in [since, until), any status."""
    n: int = await conn.fetchval(
        """SELECT count(*) FROM jobs
           WHERE kind = 'verify' AND target = $1 AND params->>'continuous' = 'true'
             AND created_at >= $2 AND created_at < $3""", target, since, until)
    return n


def _sane(number: str) -> str:
    """A JSON number as float8, null beyond what a double holds (a record written by hand or by
    another version must not fail the listing that reads it)."""
    return (f"CASE WHEN abs(({number})::numeric) < 1e300 THEN ({number})::float8 END")


async def restore_history(conn: Any, target: str, limit: int) -> list[Any]:
    """The target's last ``limit`` succeeded restores and restore-level verifications: each one's
    archive (``backup_id``), its run time (``duration_s``: the command's own figure, else start
    to end), its time per phase (``phases``, as stored) and the archive's stored size from its
    backup job (``size_bytes``, null when that record is gone or unreadable)."""
    rows: list[Any] = await conn.fetch(
        f"""SELECT coalesce(j.result->>'backup_id', j.params->>'backup_id') AS backup_id,
                  j.kind, j.finished_at, j.result->'phase_durations_s' AS phases,
                  coalesce(CASE WHEN jsonb_typeof(j.result->'duration_s') = 'number'
                                THEN {_sane("j.result->>'duration_s'")} END,
                           extract(epoch FROM j.finished_at - j.started_at)::float8)
                  AS duration_s,
                  (SELECT {_sane("b.result->>'size_bytes'")} FROM jobs b
                   WHERE b.kind = 'backup' AND b.status = 'succeeded' AND b.target = j.target
                     AND b.result->>'backup_id' = coalesce(j.result->>'backup_id',
                                                           j.params->>'backup_id')
                     AND jsonb_typeof(b.result->'size_bytes') = 'number'
                   LIMIT 1) AS size_bytes
           FROM jobs j
           WHERE j.target = $1 AND j.status = 'succeeded' AND j.started_at IS NOT NULL
             AND (j.kind = 'restore' OR (j.kind = 'verify' AND j.params->>'level' = 'restore'))
           ORDER BY j.finished_at DESC LIMIT $2""", target, limit)
    return rows
