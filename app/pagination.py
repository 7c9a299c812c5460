"""Opaque keyset cursors: base64 of a small JSON list; a cursor that does not decode is a 422."""

from __future__ import annotations

import base64
import json
from typing import Any

from app.errors import InvalidRequest


def encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode().rstrip("=")


def decode(cursor: str | None, size: int) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("cursor is not one this service issued") from None
    if not isinstance(values, list) or len(values) != size:
        raise InvalidRequest("cursor is not one this service issued")
    return values
