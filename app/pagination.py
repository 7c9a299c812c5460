"""Opaque keyset cursors: base64 of a small JSON list; a cursor that does not decode is a 422.

A listing page never fails because of one record it cannot show: that record is left out and
named in the page's ``skipped`` list with the reason (:class:`Skipped`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from app.errors import InvalidRequest


class Skipped(BaseModel):
    """A stored record a listing could not show (written by another version, or damaged)."""

    id: str = Field(description="the record's id")
    reason: str = Field(description="why it could not be shown")


def skipped(record_id: Any, exc: Exception) -> Skipped:
    if isinstance(exc, ValidationError):
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
        return Skipped(id=str(record_id), reason=f"malformed fields: {', '.join(fields)}")
    return Skipped(id=str(record_id), reason=f"cannot be shown ({type(exc).__name__})")


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
