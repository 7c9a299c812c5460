"""Post-restore steps and checks (SPEC 2.3's runbook checklist), run on the restored database; the
catalog SQL a backup records too lives in :mod:`app.integrations.target_catalog`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic import BaseModel

from app.backup.manifest import TableRows
from app.errors import StepFailed
from app.integrations import pg_errors
from app.integrations.target_catalog import (
    INVALID_INDEXES,
    NOT_VALID_CONSTRAINTS,
    SUBSCRIPTIONS,
    row_count_statement,
)
from app.steps import Step

COUNT_STATEMENT = "SELECT " + row_count_statement("$1::text", "$2::text")

INDEX_KEY = ("schema", "table", "name")
CONSTRAINT_KEY = ("schema", "table", "domain", "name")


async def compare_rows(conn: Any, tables: list[TableRows]) -> dict[str, Any]:
    """Count every table of the manifest in the restored database."""
    mismatches = []
    checked = 0
    for table in tables:
        if table.rows is None:
            continue
        sql = await conn.fetchval(COUNT_STATEMENT, table.schema_, table.name)
        error: str | None = None
        try:
            rows = await conn.fetchval(sql)
        except asyncpg.UndefinedTableError:  # a table that did not come back is a mismatch
            rows, error = None, "missing"
        except asyncpg.PostgresError as exc:  # says nothing of the archive (a timeout, say)
            raise StepFailed(Step.COUNT, f"counting {table.schema_}.{table.name} failed: "
                                         f"{pg_errors.describe(exc)}") from None
        checked += 1
        if rows != table.rows:
            mismatches.append({"schema": table.schema_, "name": table.name,
                               "expected": table.rows, "found": rows, "error": error})
    return {"tables_checked": checked, "mismatches": mismatches, "ok": not mismatches}


async def invalid_indexes(conn: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(INVALID_INDEXES)]


async def unvalidated_constraints(conn: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(NOT_VALID_CONSTRAINTS)]


def against_source(found: list[dict[str, Any]], recorded: Sequence[BaseModel] | None,
                   key: tuple[str, ...]) -> list[dict[str, Any]]:
    """Mark each finding ``in_source``: whether the backed-up database had it too (pg_dump
    reproduces NOT VALID constraints and ON ONLY partitioned indexes exactly). ``None`` when the
    manifest predates these facts: then nothing is excused."""
    if recorded is None:
        return [{**f, "in_source": None} for f in found]
    had = {tuple(r.model_dump(by_alias=True).get(k) for k in key) for r in recorded}
    return [{**f, "in_source": tuple(f.get(k) for k in key) in had} for f in found]


def made_worse(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The findings the restore is to blame for: not known to be in the source."""
    return [f for f in found if f.get("in_source") is not True]


async def subscriptions(conn: Any) -> list[dict[str, Any]]:
    try:
        return [dict(r) for r in await conn.fetch(SUBSCRIPTIONS)]
    except Exception:
        return []
