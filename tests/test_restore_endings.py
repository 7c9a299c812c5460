"""Restores that end short of success -- cancel, failure, shutdown, a dead worker -- drop the
database they created (or keep it on request, and say so), roll an in-place restore back and
release the target at once, and report an in-place COMMIT's true outcome (issue 7.4, 7.5)."""

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
    drop_db,
    dsn,
    running_app,
    wait_job,
)
from tests.test_cleanup import (
    backends,
    cancel,
    clients_of,
    nothing_left,
    slow_index_db,
    start_restore,
    wait_busy,
    wait_phase,
)
from tests.test_restore import database_exists, fingerprint


@pytest.mark.parametrize("keep", [False, True])
async def test_new_database_cancelled_during_post_restore_checks(
        make_settings: Any, tmp_path: Path, keep: bool) -> None:
    """Issue 7.4: cancelled during ANALYZE, the restored database stayed and the job did not
    say so. Now it is dropped, unless the request asked to keep it; the result says which."""
    db = await slow_index_db(f"slowan{int(keep)}", rows=300, delay=0.05, when="checking")
    settings = make_settings(targets={"slowan": {"dsn": dsn(db)}}, work_dir=tmp_path)
    name = f"{PREFIX}_cancel_analyze_{int(keep)}"
    async with running_app(settings) as c:
        bid = (await backup(c, "slowan"))["result"]["backup_id"]
        body: dict[str, Any] = {"backup_id": bid, "database": name}
        if keep:
            body["keep_on_failure"] = True
        job_id = await start_restore(c, "slowan", body)
        await wait_phase(c, job_id, "post-restore")
        await asyncio.sleep(0.5)  # ANALYZE is evaluating the slow index expression
        assert await clients_of(name)
        job = await cancel(c, job_id)
        await nothing_left(job_id, "restore", tmp_path)
    assert job["status"] == "cancelled"
    assert job["result"]["database"] == name
    assert job["result"]["database_dropped"] is (not keep)
    assert await database_exists(name) is keep
    if keep:
        assert job["result"]["database_kept"] is True
        assert await clients_of(name) == []  # the ANALYZE was ended all the same
        await drop_db(name)


async def test_cancelled_in_place_restore_releases_the_target_at_once(
        make_settings: Any, tmp_path: Path) -> None:
    """Issue 7.5: the data rolled back, but the backend kept building an index (and holding
    the target's locks) long after the job said cancelled: only psql was killed."""
    db = await slow_index_db("slowip", rows=300, delay=0.1, when="restoring")  # 30 s of index
    settings = make_settings(targets={"slowip": {"dsn": dsn(db), "retention_min_backups": 1}},
                             work_dir=tmp_path)
    async with running_app(settings) as c:
        bid = (await backup(c, "slowip"))["result"]["backup_id"]
        conn = await admin_conn(db)
        try:
            await conn.execute("DELETE FROM public.t WHERE id > 200")
        finally:
            await conn.close()
        changed = await fingerprint(db)
        job_id = await start_restore(c, "slowip", {"backup_id": bid, "mode": "in_place",
                                                   "confirm": "slowip"})
        await wait_phase(c, job_id, "restore")
        deadline = time.monotonic() + 60
        while not any(b["query"].startswith("CREATE INDEX") for b in await clients_of(db)):
            assert time.monotonic() < deadline, "the restore never built its index"
            await asyncio.sleep(0.05)
        job = await cancel(c, job_id)
        ended = time.monotonic()
        await nothing_left(job_id, "restore", tmp_path)
        assert await clients_of(db) == []
        conn = await admin_conn(db)
        try:  # not locked: a query that waits at most 1 s for its lock gets it
            await conn.execute("SET lock_timeout = '1s'")
            assert await conn.fetchval("SELECT count(*) FROM public.t") == 200
        finally:
            await conn.close()
        assert time.monotonic() - ended < 5
    assert job["status"] == "cancelled"
    assert await fingerprint(db) == changed


async def test_restore_cut_short_by_shutdown_leaves_nothing(
        make_settings: Any, tmp_path: Path) -> None:
    db = await slow_index_db("slowsd", rows=300, delay=0.1, when="restoring")
    settings = make_settings(targets={"slowsd": {"dsn": dsn(db)}}, work_dir=tmp_path,
                             shutdown_grace_s=1)
    name = f"{PREFIX}_shutdown_restore"
    async with running_app(settings) as c:
        bid = (await backup(c, "slowsd"))["result"]["backup_id"]
        job_id = await start_restore(c, "slowsd", {"backup_id": bid, "database": name})
        await wait_busy(f"pgvault/restore/{job_id}", "CREATE INDEX")
        assert list(tmp_path.iterdir())  # the decrypted dump is there
    # The service stopped: the grace passed, the job was cancelled and cleaned up.
    await nothing_left(job_id, "restore", tmp_path)
    assert not await database_exists(name)
    async with running_app(settings) as c:
        job = await wait_job(c, job_id, timeout=10)
    assert job["status"] == "cancelled" and "shut down" in job["error"]["detail"]
    assert job["result"]["database_dropped"] is True


async def test_a_cancel_during_the_in_place_commit_waits_for_its_outcome(tmp_path: Path) -> None:
    """The COMMIT is with the server: killing psql then would not undo it, so a cancel that
    lands meanwhile must not report a rollback. A deferred trigger makes the COMMIT slow."""
    import subprocess

    from app.config import PgDsn
    from app.integrations.pg_clients import RestoreTools, discover
    from app.integrations.target_db import JOB_APPLICATION_NAME
    from app.restore import in_place
    from tests.conftest import PG_HOST

    db = await create_db(f"{PREFIX}_slowcommit")
    src = await create_db(f"{PREFIX}_slowcommit_src")
    conn = await admin_conn(src)
    try:
        await conn.execute("CREATE TABLE public.kept AS SELECT 1 AS x")
    finally:
        await conn.close()
    dump = tmp_path / "src.dump"
    subprocess.run(["pg_dump", "-h", PG_HOST, "-U", "postgres", "-Fc", "-Z0", "-f", str(dump),
                    "--", src], check=True)
    head = """BEGIN;
        CREATE TABLE public.marker (id int);
        CREATE FUNCTION public.slow_commit() RETURNS trigger LANGUAGE plpgsql
            AS 'BEGIN PERFORM pg_sleep(3); RETURN NULL; END';
        CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON public.marker DEFERRABLE
            INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.slow_commit();
        INSERT INTO public.marker VALUES (1);
        """
    name = "pgvault/test/slow-commit"
    JOB_APPLICATION_NAME.set(name)
    tools = RestoreTools.choose(discover(), 15, 15)
    task = asyncio.create_task(in_place._run_in_one_transaction(PgDsn.parse(dsn(db)), dump,
                                                                head, tools, None))
    await wait_busy(name, "COMMIT")
    task.cancel()
    await asyncio.wait_for(task, 30)  # no CancelledError: it committed, and says so
    conn = await admin_conn(db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM public.kept") == 1
        assert await conn.fetchval("SELECT count(*) FROM public.marker") == 1
    finally:
        await conn.close()


async def test_a_dead_workers_restore_is_undone_by_another_replica(
        make_settings: Any, tmp_path: Path) -> None:
    """SIGKILL: no finally block runs. The orphaned pg_restore and its backend go on building
    the index; the reaper ends the backends it finds by the job's application_name, drops the
    database and the scratch folder, and says so in the job's result."""
    import signal

    from tests.test_reliability import uvicorn

    db = await slow_index_db("slowdead", rows=300, delay=0.1, when="restoring")
    settings = make_settings(targets={"slowdead": {"dsn": dsn(db)}}, work_dir=tmp_path,
                             lease_seconds=3)
    name = f"{PREFIX}_dead_restore"
    async with uvicorn(settings) as (proc, url):
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            bid = (await backup(c, "slowdead"))["result"]["backup_id"]
            job_id = await start_restore(c, "slowdead", {"backup_id": bid, "database": name})
            await wait_busy(f"pgvault/restore/{job_id}", "CREATE INDEX")
        orphans = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if p.name() == "pg_restore"]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert orphans and await backends(f"pgvault/restore/{job_id}")
    async with running_app(settings) as c:
        job = await wait_job(c, job_id, timeout=30)
        deadline = time.monotonic() + 20
        while job["result"].get("database_dropped") is None:
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.2)
            job = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
    assert job["status"] == "failed" and job["error"]["title"] == "Worker lost"
    assert job["result"]["database"] == name and job["result"]["database_dropped"] is True
    assert not await database_exists(name)
    assert await backends(f"pgvault/restore/{job_id}") == []
    assert psutil.wait_procs(orphans, timeout=5)[1] == []
    assert list(tmp_path.iterdir()) == []


async def test_in_place_cancelled_after_its_commit_reports_the_restore(
        make_settings: Any, tmp_path: Path) -> None:
    """Once committed, an in-place restore cannot be undone by a cancel: the job says the
    target was restored (checks cut short), not "cancelled"."""
    db = await slow_index_db("slowipan", rows=300, delay=0.05, when="checking")
    settings = make_settings(targets={"slowipan": {"dsn": dsn(db), "retention_min_backups": 1}},
                             work_dir=tmp_path)
    async with running_app(settings) as c:
        bid = (await backup(c, "slowipan"))["result"]["backup_id"]
        before = await fingerprint(db)
        conn = await admin_conn(db)
        try:
            await conn.execute("DELETE FROM public.t WHERE id > 200")
        finally:
            await conn.close()
        job_id = await start_restore(c, "slowipan", {"backup_id": bid, "mode": "in_place",
                                                     "confirm": "slowipan"})
        await wait_busy(f"pgvault/restore/{job_id}", "ANALYZE")
        job = await cancel(c, job_id)
        await nothing_left(job_id, "restore", tmp_path)
    assert job["status"] == "succeeded", job
    assert job["result"]["checklist"]["skipped"] is True
    assert job["result"]["rows_match"] is None and "cancelled" in job["summary"]
    assert await fingerprint(db) == before


async def test_cancel_during_create_database_still_drops_it(
        make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel lands while CREATE DATABASE is with the server: the restore waits for its
    outcome, and drops what it created."""
    from app.restore import databases

    create = databases.create

    async def slow_create(conn: Any, *args: Any, **kw: Any) -> None:
        await conn.execute("SELECT pg_sleep(2)")  # server-side work in flight
        await create(conn, *args, **kw)

    monkeypatch.setattr(databases, "create", slow_create)
    db = await slow_index_db("slowcreate", rows=10, delay=0, when="restoring")
    settings = make_settings(targets={"slowcreate": {"dsn": dsn(db)}}, work_dir=tmp_path)
    name = f"{PREFIX}_cancel_create"
    async with running_app(settings) as c:
        bid = (await backup(c, "slowcreate"))["result"]["backup_id"]
        job_id = await start_restore(c, "slowcreate", {"backup_id": bid, "database": name})
        await wait_busy(f"pgvault/restore/{job_id}", "SELECT pg_sleep")
        job = await cancel(c, job_id)
        await nothing_left(job_id, "restore", tmp_path)
    assert job["status"] == "cancelled"
    assert job["result"]["database_dropped"] is True
    assert not await database_exists(name)
