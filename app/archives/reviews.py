"""All SQL for archive reviews: a suspect archive (SPEC 2.14) that an operator cleared. The
manifest, written once, keeps the anomalies; this table says that a human accepted them."""

from __future__ import annotations

from typing import Any


async def cleared(conn: Any, target: str, backup_ids: list[str]) -> dict[str, Any]:
    """backup id -> its review row (``cleared_by``, ``cleared_at``, ``reason``)."""
    if not backup_ids:
        return {}
    rows = await conn.fetch(
        """SELECT backup_id, cleared_by, cleared_at, reason FROM archive_reviews
           WHERE target = $1 AND backup_id = ANY($2::text[])""", target, backup_ids)
    return {r["backup_id"]: r for r in rows}


async def clear(conn: Any, target: str, backup_id: str, *, by: str,
                reason: str | None) -> bool:
    """Record the clearing; False when the archive was already cleared (kept as it was)."""
    row = await conn.fetchval(
        """INSERT INTO archive_reviews (target, backup_id, cleared_by, reason)
           VALUES ($1, $2, $3, $4) ON CONFLICT (target, backup_id) DO NOTHING
           RETURNING backup_id""", target, backup_id, by, reason)
    return row is not None

