"""Maintenance tasks against the real PostgreSQL 15 server, in a schema of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.errors import StepFailed
from app.maintenance.tasks import analyze, refresh_materialized_views


@pytest.fixture
async def maint(db: Any) -> AsyncIterator[Any]:
    await db.execute("CREATE SCHEMA maint")
    yield db
    await db.execute("DROP SCHEMA maint CASCADE")


async def test_analyze_sets_last_analyze(maint: Any) -> None:
    await maint.execute("CREATE TABLE maint.t WITH (autovacuum_enabled = false) AS "
                        "SELECT g FROM generate_series(1, 500) g")
    query = ("SELECT last_analyze, n_live_tup FROM pg_stat_user_tables "
             "WHERE schemaname = 'maint' AND relname = 't'")
    before = await maint.fetchrow(query)
    assert before["last_analyze"] is None

    result = await analyze(maint)

    after = await maint.fetchrow(query)
    assert after["last_analyze"] is not None
    assert await maint.fetchval(
        "SELECT reltuples FROM pg_class WHERE oid = 'maint.t'::regclass") == 500
    assert result["tables_analyzed"] == await maint.fetchval(
        "SELECT count(*) FROM pg_stat_user_tables")
    assert result["duration_s"] >= 0


MATVIEWS = {
    # name: (index DDL or None, WITH DATA?, expected CONCURRENTLY)
    "maint.mv_unique": ("CREATE UNIQUE INDEX ON maint.mv_unique (id)", True, True),
    'maint."Odd Name"': ('CREATE UNIQUE INDEX ON maint."Odd Name" (id) INCLUDE (v)', True, True),
    "maint.mv_plain": (None, True, False),
    "maint.mv_nonunique": ("CREATE INDEX ON maint.mv_nonunique (id)", True, False),
    "maint.mv_expr": ("CREATE UNIQUE INDEX ON maint.mv_expr ((id * 2))", True, False),
    "maint.mv_partial": ("CREATE UNIQUE INDEX ON maint.mv_partial (id) WHERE v > 0", True, False),
    "maint.mv_empty": ("CREATE UNIQUE INDEX ON maint.mv_empty (id)", False, False),
}


async def test_refresh_materialized_views(maint: Any) -> None:
    await maint.execute("CREATE TABLE maint.src (id int PRIMARY KEY, v int NOT NULL);"
                        "INSERT INTO maint.src SELECT g, g FROM generate_series(1, 10) g")
    for name, (index, with_data, _) in MATVIEWS.items():
        data = "" if with_data else " WITH NO DATA"
        await maint.execute(f"CREATE MATERIALIZED VIEW {name} AS SELECT id, v FROM maint.src{data}")
        if index:
            await maint.execute(index)
    await maint.execute("INSERT INTO maint.src SELECT g, g FROM generate_series(11, 25) g")
    filenodes = {name: await maint.fetchval("SELECT pg_relation_filenode($1::regclass)", name)
                 for name in MATVIEWS}

    done = await refresh_materialized_views(maint)

    by_name = {r["name"]: r for r in done}
    assert set(by_name) == set(MATVIEWS)
    for name, (_, _, concurrently) in MATVIEWS.items():
        assert by_name[name]["concurrently"] is concurrently, name
        assert by_name[name]["duration_s"] >= 0
        assert await maint.fetchval(f"SELECT count(*) FROM {name}") == 25, name
        # a concurrent refresh updates the view in place; a plain one swaps in a new heap
        same_heap = await maint.fetchval(
            "SELECT pg_relation_filenode($1::regclass)", name) == filenodes[name]
        assert same_heap is concurrently, name


async def test_refresh_failure_names_the_view(maint: Any) -> None:
    await maint.execute("CREATE TABLE maint.src (id int, v int);"
                        "INSERT INTO maint.src VALUES (1, 1);"
                        "CREATE MATERIALIZED VIEW maint.mv AS SELECT id, v FROM maint.src;"
                        "CREATE UNIQUE INDEX ON maint.mv (id);"
                        "INSERT INTO maint.src VALUES (1, 2)")  # a duplicate id: refresh fails
    with pytest.raises(StepFailed) as err:
        await refresh_materialized_views(maint)
    assert err.value.step == "refresh maint.mv"
    assert "SQLSTATE 23505" in err.value.detail and "(1)" not in err.value.detail
