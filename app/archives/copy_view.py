"""Each archive's copies as the catalogue shows them (SPEC 2.15): for every configured copy
location, its state of the archive as last written or checked (``archive_copies``).

A configured copy with no recorded state shows as ``null``: nothing has written or checked it
for this archive (an archive older than the copy's configuration, or a backup whose worker died
before recording it); reconciliation finds out. The primary is never listed: the archive's own
``status`` is the primary's. States of a location no longer configured are not shown.
"""

from __future__ import annotations

from typing import Any

from app.archives import copy_state
from app.archives.schemas import CopyState
from app.config import Settings

Copies = dict[str, CopyState | None]


async def read(conn: Any, settings: Settings, target: str,
               backup_ids: list[str]) -> dict[str, Copies]:
    """backup_id -> copy name -> state (or None); empty when no copy is configured."""
    names = [c.name for c in settings.copies]
    if not names or not backup_ids:
        return {}
    found = await copy_state.states(conn, target, backup_ids)
    shown: dict[str, Copies] = {}
    for backup_id in backup_ids:
        rows = found.get(backup_id, {})
        shown[backup_id] = {
            name: CopyState(status=rows[name]["status"], checked_at=rows[name]["checked_at"],
                            detail=rows[name]["detail"]) if name in rows else None
            for name in names}
    return shown
