"""All SQL for schedule slots (and the RPO-breach alerts that reuse them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID


async def has_any(conn: Any, target: str, kind: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT 1 FROM schedule_slots WHERE target = $1 AND kind = $2 LIMIT 1", target, kind))


async def is_claimed(conn: Any, target: str, kind: str, slot: datetime) -> bool:
    return bool(await conn.fetchval(
        "SELECT 1 FROM schedule_slots WHERE target = $1 AND kind = $2 AND slot = $3",
        target, kind, slot))


async def claim(conn: Any, target: str, kind: str, slot: datetime, outcome: str) -> bool:
    """Record a slot; False when another replica (or an earlier tick) already did."""
    row = await conn.fetchrow(
        """INSERT INTO schedule_slots (target, kind, slot, outcome) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING RETURNING slot""", target, kind, slot, outcome)
    return row is not None


async def settle(conn: Any, target: str, kind: str, slot: datetime, outcome: str,
                 job_id: UUID | None) -> None:
    await conn.execute(
        """UPDATE schedule_slots SET outcome = $4, job_id = $5
           WHERE target = $1 AND kind = $2 AND slot = $3""", target, kind, slot, outcome, job_id)
