"""SQL for each copy location's state of each archive (SPEC 2.15), as last written or checked:
``complete``, ``missing``, ``incomplete`` or ``damaged``, with when and why."""

from __future__ import annotations

from typing import Any, Literal

CopyStatus = Literal["complete", "missing", "incomplete", "damaged"]


async def record(conn: Any, *, target: str, backup_id: str, location: str, status: CopyStatus,
                 detail: str | None = None) -> None:
    await conn.execute(
        """INSERT INTO archive_copies (target, backup_id, location, status, detail, checked_at)
           VALUES ($1, $2, $3, $4, $5, now())
           ON CONFLICT (target, backup_id, location)
           DO UPDATE SET status = EXCLUDED.status, detail = EXCLUDED.detail,
                         checked_at = EXCLUDED.checked_at""",
        target, backup_id, location, status, detail)


async def states(conn: Any, target: str, backup_ids: list[str]) -> dict[str, dict[str, Any]]:
    """backup_id -> location -> row (``status``, ``checked_at``, ``detail``)."""
    rows = await conn.fetch(
        """SELECT backup_id, location, status, checked_at, detail FROM archive_copies
           WHERE target = $1 AND backup_id = ANY($2::text[])""", target, backup_ids)
    found: dict[str, dict[str, Any]] = {}
    for r in rows:
        found.setdefault(r["backup_id"], {})[r["location"]] = r
    return found


async def forget(conn: Any, target: str, backup_id: str) -> None:
    """The archive is gone (deleted everywhere): its states go with it."""
    await conn.execute("DELETE FROM archive_copies WHERE target = $1 AND backup_id = $2",
                       target, backup_id)
