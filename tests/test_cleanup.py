"""However a job ends short of success -- cancel, failure, shutdown -- nothing of it stays: no
database it created, no decrypted file, no child process, no server backend still at work."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import (
    PREFIX,
    admin_conn,
    auth,
    backup,
    create_db,
    dsn,
    running_app,
    start_uploading_backup,
    wait_job,
)
from tests.faults import FaultyProxy
from tests.test_restore import database_exists

TOOLS = {"pg_dump", "pg_dumpall", "pg_restore", "psql", "gpg", "zstd"}

# An index expression that takes `delay` seconds a row, in one kind of session only. pg_restore's
# sessions, and the script it writes, turn check_function_bodies off: "restoring" makes the index
# build of a restore slow, "checking" makes the ANALYZE after it slow (and neither the set-up).
SLOW_FUNCTION = """
CREATE FUNCTION public.pgv_slow(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('check_function_bodies')::bool = {when_on} THEN
        PERFORM pg_sleep({delay});
    END IF;
    RETURN x;
END $$;
"""


async def slow_index_db(name: str, *, rows: int, delay: float, when: str) -> str:
    db = await create_db(f"{PREFIX}_{name}")
    conn = await admin_conn(db)
    try:
        await conn.execute("SET check_function_bodies = off" if when == "checking" else
                           "SET check_function_bodies = on")
        await conn.execute(SLOW_FUNCTION.format(when_on="true" if when == "checking" else "false",
                                                delay=delay))
        await conn.execute(f"""
            CREATE TABLE public.t (id int PRIMARY KEY, note text);
            INSERT INTO public.t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;
            CREATE INDEX t_slow ON public.t (public.pgv_slow(id));""")
    finally:
        await conn.close()
    return db


async def backends(application_name: str) -> list[Any]:
    conn = await admin_conn()
    try:
        return list(await conn.fetch(
            "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = $1",
            application_name))
    finally:
        await conn.close()


async def clients_of(db: str) -> list[Any]:
    """Client backends connected to ``db``, the test's own connection aside."""
    conn = await admin_conn()
    try:
        return list(await conn.fetch(
            """SELECT pid, application_name, query FROM pg_stat_activity
               WHERE datname = $1 AND backend_type = 'client backend'
                 AND pid <> pg_backend_pid()""", db))
    finally:
        await conn.close()


def tool_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() in TOOLS]


async def wait_phase(client: Any, job_id: str, phase: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
        if job["phase"] == phase and job["status"] == "running":
            return
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, f"never reached phase {phase}: {job}"
        await asyncio.sleep(0.05)


async def wait_busy(application_name: str, query_start: str, timeout: float = 60) -> None:
    """Until a backend of that name runs a statement starting with ``query_start``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(b["state"] == "active" and b["query"].lstrip().startswith(query_start)
               for b in await backends(application_name)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no backend {application_name} ran {query_start}")


async def cancel(client: Any, job_id: str) -> dict[str, Any]:
    resp = await client.post(f"/v1/jobs/{job_id}/cancel", headers=auth("operator"))
    assert resp.status_code == 202, resp.text
    return await wait_job(client, job_id, timeout=60)


async def nothing_left(job_id: str, kind: str, work_dir: Path) -> None:
    """No backend of the job, no tool process, no scratch folder: at once or within 3 s."""
    name = f"pgvault/{kind}/{job_id}"
    deadline = time.monotonic() + 3
    while True:
        left = (await backends(name), tool_children(), list(work_dir.iterdir()))
        if left == ([], [], []):
            return
        assert time.monotonic() < deadline, f"left behind: {left}"
        await asyncio.sleep(0.1)


async def start_restore(client: Any, target: str, body: dict[str, Any]) -> str:
    resp = await client.post(f"/v1/targets/{target}/restores", headers=auth("admin"), json=body)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["id"]
    return job_id


@pytest.mark.parametrize("phase", ["download", "create database", "restore", "compare"])
async def test_verification_cancelled_at_each_phase_leaves_nothing(
        make_settings: Any, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        phase: str) -> None:
    from app.restore import checks, databases

    db = await slow_index_db(f"slowv_{phase.replace(' ', '_')}", rows=60, delay=0.1,
                             when="restoring")
    # Server-side work in flight when the cancel lands, where the real step is too quick.
    create, compare = databases.create, checks.compare_rows

    async def slow_create(conn: Any, *args: Any, **kw: Any) -> None:
        await conn.execute("SELECT pg_sleep(2)")
        await create(conn, *args, **kw)

    async def slow_compare(conn: Any, *args: Any) -> Any:
        await conn.execute("SELECT pg_sleep(60)")
        return await compare(conn, *args)

    monkeypatch.setattr(databases, "create", slow_create)
    monkeypatch.setattr(checks, "compare_rows", slow_compare)
    with FaultyProxy(s3_endpoint) as proxy:
        settings = make_settings(targets={"slowv": {"dsn": dsn(db)}}, work_dir=tmp_path,
                                 s3_endpoint_url=proxy.url)
        async with running_app(settings) as c:
            bid = (await backup(c, "slowv"))["result"]["backup_id"]
            if phase == "download":
                proxy.rule = lambda m, p: 5.0 if m == "GET" and "database.dump" in p else None
            resp = await c.post(f"/v1/targets/slowv/archives/{bid}/verify",
                                headers=auth("operator"), json={"level": "restore"})
            job_id = resp.json()["id"]
            name = f"pgvault/verify/{job_id}"
            await wait_phase(c, job_id, phase)
            if phase == "download":
                await asyncio.sleep(0.5)
                assert {p.name() for p in tool_children()} >= {"gpg", "zstd"}
            else:  # the job's own backends carry its name (pg_restore's too)
                await wait_busy(name, {"create database": "SELECT pg_sleep",
                                       "restore": "CREATE INDEX",
                                       "compare": "SELECT pg_sleep"}[phase])
            job = await cancel(c, job_id)
            await nothing_left(job_id, "verify", tmp_path)
    assert job["status"] == "cancelled"
    scratch = job["result"].get("scratch_database")
    assert (scratch is None) is (phase == "download")
    if scratch:
        assert job["result"]["scratch_database_dropped"] is True
        assert not await database_exists(scratch)


async def test_cancelled_backup_leaves_no_backend(make_settings: Any, big_db: str,
                                                  s3_endpoint: str, tmp_path: Path) -> None:
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.3 if m == "PUT" and "partNumber=" in p else None
        settings = make_settings(targets={"bkcancel": {"dsn": dsn(big_db), "row_counts": True}},
                                 s3_endpoint_url=proxy.url, work_dir=tmp_path)
        async with running_app(settings) as c:
            job_id = await start_uploading_backup(c, "bkcancel")
            name = f"pgvault/backup/{job_id}"
            await wait_busy(name, "COPY")  # pg_dump's own connection carries the job's name
            assert len(await backends(name)) >= 2  # and the snapshot's (counting rows)
            job = await cancel(c, job_id)
            await nothing_left(job_id, "backup", tmp_path)
    assert job["status"] == "cancelled"


async def test_cancelled_maintenance_leaves_no_backend(make_settings: Any, tmp_path: Path) -> None:
    db = await slow_index_db("slowmt", rows=300, delay=0.05, when="checking")
    settings = make_settings(targets={"slowmt": {"dsn": dsn(db)}}, work_dir=tmp_path)
    async with running_app(settings) as c:
        resp = await c.post("/v1/targets/slowmt/maintenance", headers=auth("operator"),
                            json={"task": "analyze"})
        job_id = resp.json()["id"]
        await wait_busy(f"pgvault/maintenance/{job_id}", "ANALYZE")
        job = await cancel(c, job_id)
        await nothing_left(job_id, "maintenance", tmp_path)
    assert job["status"] == "cancelled"
    assert await clients_of(db) == []
