"""The archive manifest (SPEC section 6) and archive naming.

An archive is ``<target>/<backup_id>/`` holding the objects its ``manifest.json`` lists. The
manifest is written last, after every object is complete and every stage exited 0: no manifest
means no backup.
"""

from __future__ import annotations

import json
import secrets
import string
from datetime import UTC, datetime
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE_OBJECT = "database.dump.zst.gpg"
GLOBALS_OBJECT = "globals.sql.zst.gpg"
# The database's own grants, settings and comment (JSON), encrypted: settings hold secrets.
PROPERTIES_OBJECT = "database-properties.json.zst.gpg"
_ALPHABET = string.ascii_lowercase + string.digits


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time: ``20261124T151600Z-k3x9a2``."""
    now = now or datetime.now(UTC)
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    return f"{now:%Y%m%dT%H%M%SZ}-{suffix}"


def backup_time(backup_id: str) -> datetime:
    return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def archive_prefix(target: str, backup_id: str) -> str:
    return f"{target}/{backup_id}/"


def manifest_key(target: str, backup_id: str) -> str:
    return f"{target}/{backup_id}/{MANIFEST}"


def dumps(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=False, default=str).encode()


def size_bytes(manifest: dict[str, Any]) -> int:
    return sum(int(o.get("size_bytes", 0)) for o in manifest.get("objects", []))
