"""Monitoring views against a real PostgreSQL 15 target seeded by conftest."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from app.config import Settings
from app.errors import NotFound, TimedOut, Unavailable
from app.monitoring.pools import MonitoringPools
from app.monitoring.schemas import (
    BloatView,
    ConnectionsView,
    IndexesView,
    SnapshotView,
    TablesView,
)
from app.monitoring.service import get_view, human_bytes

from .conftest import admin


async def test_unknown_target_and_view(pools: MonitoringPools, settings: Settings) -> None:
    with pytest.raises(NotFound) as err:
        await get_view(pools, settings, "nope", "tables")
    assert err.value.status == 404 and "nope" in err.value.detail
    with pytest.raises(NotFound) as err:
        await get_view(pools, settings, "mon", "vacuum")
    assert err.value.status == 404
    for view in ("connections", "bloat", "indexes", "tables", "snapshot"):
        assert view in err.value.detail


async def test_running_query_appears_with_duration_and_truncated_text(
        pools: MonitoringPools, settings: Settings, mon_db: str) -> None:
    sleeper = await admin(mon_db)
    sql = "SELECT pg_sleep(5) /* " + "padding " * 20 + "*/"
    pid = await sleeper.fetchval("SELECT pg_backend_pid()")
    running = asyncio.create_task(sleeper.execute(sql))
    try:
        deadline = time.monotonic() + 4
        while True:
            view = await get_view(pools, settings, "mon", "connections")
            row = next((r for r in view["active"] if r["pid"] == pid), None)
            # wait past long_query_seconds (1 s) so it also counts as long-running
            if row is not None and row["duration_s"] > 1.2:
                break
            assert time.monotonic() < deadline, f"pg_sleep session not seen: {view['active']}"
            await asyncio.sleep(0.1)
        assert row["query"] == sql[: settings.monitoring_query_max_chars]
        assert len(row["query"]) == 40 < len(sql)
        assert row["state"] == "active" and row["wait_event"] == "PgSleep"
        assert row["database"] == mon_db and row["user"] == "postgres"
        assert row["client_addr"] == "127.0.0.1" and row["backend_type"] == "client backend"
        assert view["long_running_count"] >= 1
        assert 0 < view["total_connections"] <= view["max_connections"]
        assert view["used_percent"] == round(
            100 * view["total_connections"] / view["max_connections"], 1)
        mine = [c for c in view["by_client"]
                if c["user"] == "postgres" and c["client_addr"] == "127.0.0.1"]
        assert mine and mine[0]["count"] >= 2 and mine[0]["active"] >= 1
        # the monitoring session asking is never listed
        assert not [r for r in view["active"]
                    if r["database"] == mon_db and r["application_name"] == "pgvault-monitoring"]
        ConnectionsView.model_validate(view)
    finally:
        killer = await admin()
        await killer.execute("SELECT pg_cancel_backend($1)", pid)
        await killer.close()
        with pytest.raises(asyncpg.exceptions.QueryCanceledError):
            await running
        await sleeper.close()


async def test_unused_indexes_exclude_constraint_indexes(
        pools: MonitoringPools, settings: Settings) -> None:
    view = await get_view(pools, settings, "mon", "indexes")
    unused = {r["index"]: r for r in view["unused"]}
    assert "accounts_region_idx" in unused
    region = unused["accounts_region_idx"]
    assert region["schema"] == "public" and region["table"] == "accounts"
    assert region["size_bytes"] > 0
    assert region["definition"].startswith("CREATE INDEX accounts_region_idx ON public.accounts")
    # never scanned either, but they enforce a primary key, unique or exclusion constraint
    for enforcing in ("accounts_pkey", "accounts_email_key", "accounts_during_excl",
                      "accounts_lower_email_uidx", "churned_pkey", "fresh_pkey"):
        assert enforcing not in unused
    assert view["unused_count"] == len(view["unused"])
    assert view["unused_bytes"] == sum(r["size_bytes"] for r in view["unused"])
    IndexesView.model_validate(view)


async def test_scanned_index_is_not_unused(pools: MonitoringPools, settings: Settings,
                                           mon_db: str, db: Any) -> None:
    await db.execute("CREATE TABLE scanned (n int); CREATE INDEX scanned_n_idx ON scanned (n);"
                     "INSERT INTO scanned SELECT generate_series(1, 1000); ANALYZE scanned")
    try:
        view = await get_view(pools, settings, "mon", "indexes")
        assert "scanned_n_idx" in {r["index"] for r in view["unused"]}
        reader = await admin(mon_db)
        await reader.execute("SET enable_seqscan = off")
        assert await reader.fetchval("SELECT n FROM scanned WHERE n = 7") == 7
        await reader.close()  # a closing backend flushes its statistics
        deadline = time.monotonic() + 5
        while "scanned_n_idx" in {r["index"] for r in view["unused"]}:
            assert time.monotonic() < deadline, "an index scan did not reach the statistics"
            await asyncio.sleep(0.1)
            view = await get_view(pools, settings, "mon", "indexes")
    finally:
        await db.execute("DROP TABLE scanned")


async def test_failed_concurrent_unique_index_is_invalid(
        pools: MonitoringPools, settings: Settings) -> None:
    view = await get_view(pools, settings, "mon", "indexes")
    invalid = {r["index"]: r for r in view["invalid"]}
    assert set(invalid) == {"dupes_v_uidx"} and view["invalid_count"] == 1
    assert invalid["dupes_v_uidx"]["table"] == "dupes"
    assert invalid["dupes_v_uidx"]["definition"].startswith("CREATE UNIQUE INDEX dupes_v_uidx")
    assert "dupes_v_uidx" not in {r["index"] for r in view["unused"]}


async def test_churned_table_shows_more_bloat_than_its_fresh_twin(
        pools: MonitoringPools, settings: Settings) -> None:
    view = await get_view(pools, settings, "mon", "bloat")
    tables = {r["table"]: r for r in view["tables"] if r["schema"] == "public"}
    churned, fresh = tables["churned"], tables["fresh"]
    assert churned["reliable"] and fresh["reliable"]
    # every row rewritten three times: about three quarters of the pages are dead rows
    assert churned["bloat_ratio"] > 0.5, churned
    assert fresh["bloat_ratio"] < 0.2, fresh
    assert churned["size_bytes"] > 3 * fresh["size_bytes"]
    assert churned["bloat_bytes"] > 0.5 * churned["size_bytes"]
    # largest bloat first
    assert view["tables"][0]["table"] == "churned"
    indexes = {r["index"]: r for r in view["indexes"]}
    assert indexes["churned_pkey"]["bloat_ratio"] > indexes["fresh_pkey"]["bloat_ratio"] + 0.3
    assert all(r["schema"] not in ("pg_catalog", "information_schema", "pg_toast")
               for r in view["tables"] + view["indexes"])
    BloatView.model_validate(view)


async def test_tables_view(pools: MonitoringPools, settings: Settings) -> None:
    view = await get_view(pools, settings, "mon", "tables")
    tables = {r["table"]: r for r in view["tables"]}
    churned, fresh = tables["churned"], tables["fresh"]
    assert churned["n_live_tup"] == fresh["n_live_tup"] == 20_000
    assert churned["n_dead_tup"] >= 40_000 and fresh["n_dead_tup"] == 0
    assert churned["dead_ratio"] > 0.5 and fresh["dead_ratio"] == 0
    assert churned["last_analyze"] is not None and churned["last_vacuum"] is None
    assert churned["total_bytes"] > fresh["total_bytes"] > 0
    assert view["target"] == "mon" and view["taken_at"].endswith("Z")
    TablesView.model_validate(view)


async def test_down_target_is_unavailable_fast_and_others_still_answer(
        pools: MonitoringPools, settings: Settings) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        await get_view(pools, settings, "down", "snapshot")
    assert time.monotonic() - started < 5
    assert err.value.status == 503
    assert err.value.detail == "target down is unreachable: connection refused"
    view = await get_view(pools, settings, "mon", "connections")
    assert view["target"] == "mon"


async def test_silent_target_times_out_at_the_connect_timeout(
        pools: MonitoringPools, settings: Settings) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        await get_view(pools, settings, "silent", "tables")
    elapsed = time.monotonic() - started
    assert settings.monitoring_connect_timeout_s - 0.2 < elapsed < 5
    assert err.value.detail == "target silent is unreachable: no answer within 1.5 s"
    # the failure never shows the DSN or its password
    assert "postgresql://" not in err.value.detail and "127.0.0.1" not in err.value.detail
    # right after a failure, callers do not each wait out the connect timeout again
    started = time.monotonic()
    results = await asyncio.gather(
        *(get_view(pools, settings, "silent", "connections") for _ in range(6)),
        return_exceptions=True)
    assert time.monotonic() - started < 0.5
    assert all(isinstance(r, Unavailable) and r.detail == err.value.detail for r in results)
    assert (await get_view(pools, settings, "mon", "tables"))["target"] == "mon"


async def test_statement_timeout_is_a_timeout(mon_settings: Callable[..., Settings],
                                              db: Any) -> None:
    settings = mon_settings(monitoring_statement_timeout_ms=200)
    pools = MonitoringPools(settings)
    try:
        async with db.transaction():
            # pg_total_relation_size() in the tables view waits for this lock
            await db.execute("LOCK TABLE lockme IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(TimedOut) as err:
                await get_view(pools, settings, "mon", "tables")
            assert time.monotonic() - started < 2
            assert err.value.status == 504 and "200 ms" in err.value.detail
            # the same pool still serves views that do not touch the locked table
            assert (await get_view(pools, settings, "mon", "connections"))["target"] == "mon"
        assert (await get_view(pools, settings, "mon", "tables"))["target"] == "mon"
        with pytest.raises(TimedOut):
            await pools.run("mon", lambda conn: conn.execute("SELECT pg_sleep(1)"))
    finally:
        await pools.close()


async def test_pool_recovers_when_its_connections_are_killed(
        pools: MonitoringPools, settings: Settings, mon_db: str, db: Any) -> None:
    await get_view(pools, settings, "mon", "tables")  # the pool now holds an idle connection
    for _ in range(2):
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = 'pgvault-monitoring'", mon_db)
        assert killed >= 1
        # as after a target restart: the next call answers, on a new connection
        view = await get_view(pools, settings, "mon", "tables")
        assert view["target"] == "mon"


async def test_monitoring_sessions_are_read_only(pools: MonitoringPools) -> None:
    async def session_settings(conn: Any) -> Any:
        return await conn.fetchval(
            "SELECT current_setting('default_transaction_read_only') || ' ' || "
            "current_setting('statement_timeout') || ' ' || current_setting('application_name')")

    assert await pools.run("mon", session_settings) == "on 3s pgvault-monitoring"


async def test_snapshot_has_every_part_and_a_summary(pools: MonitoringPools,
                                                     settings: Settings) -> None:
    snap = await get_view(pools, settings, "mon", "snapshot")
    assert snap["target"] == "mon"
    for part in ("connections", "bloat", "indexes", "tables"):
        assert snap[part]["target"] == "mon" and snap[part]["taken_at"] == snap["taken_at"]
    assert snap["connections"]["active"] is not None
    assert {r["table"] for r in snap["tables"]["tables"]} >= {"churned", "fresh", "accounts"}
    summary = snap["summary"]
    assert re.fullmatch(
        r"\d+/\d+ connections \(\d+%\), \d+ long-running quer(y|ies), "
        r"1 unused index \(\d+(\.\d)? kB\), 1 invalid index, "
        r"worst bloat: public\.churned \d+% \(\d+(\.\d)? MB\)", summary), summary
    model = SnapshotView.model_validate(snap)
    dumped = model.model_dump(mode="json")
    assert dumped["bloat"]["tables"][0]["schema"] == "public"
    assert dumped["summary"] == summary


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 kB"
    assert human_bytes(48 * 1024 * 1024) == "48 MB"
    assert human_bytes(3 * 1024**4) == "3.0 TB"
