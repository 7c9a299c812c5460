"""Opaque keyset cursors: base64 of a small JSON list; a cursor that does not decode is a 422.

A listing page never fails because of one record it cannot show: that record is left out and
named in the page's ``skipped`` list with the reason (:class:`Skipped`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from app.errors import InvalidRequest

T = TypeVar("T")
NOT_OURS = "cursor is not one this service issued"


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
        raise InvalidRequest(NOT_OURS) from None
    if not isinstance(values, list) or len(values) != size:
        raise InvalidRequest(NOT_OURS)
    return values


def encode_time_key(at: datetime, record_id: Any) -> str:
    """The position after a record of a newest-first listing keyed by (time, id)."""
    return encode([at.isoformat(), record_id])


def decode_time_key(cursor: str | None, id_type: Callable[[Any], T]) -> tuple[datetime, T] | None:
    """The (time, id) position :func:`encode_time_key` wrote; ``id_type`` parses the id (``int``,
    ``uuid.UUID``). A cursor that does not parse is a 422, whatever it holds."""
    after = decode(cursor, 2)
    if after is None:
        return None
    try:
        return datetime.fromisoformat(after[0]), id_type(after[1])
    except (TypeError, ValueError, AttributeError):  # uuid.UUID(5) is an AttributeError
        raise InvalidRequest(NOT_OURS) from None
