"""The stall watchdog (SPEC 2.14): a job whose phase and progress stand still for
``stall_timeout_s`` fails as ``stalled``, leaves nothing behind and says so by webhook; a long
step that shows its progress on the server is not stopped."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
import pytest

from tests.conftest import PREFIX, admin_conn, auth, backup, create_db, dsn, running_app, wait_job
from tests.faults import FaultyProxy, is_upload_part

STALL_S = 3.0
# Detection comes within a watchdog interval (a quarter of the timeout) after the timeout; the
# ending (kill, cancel backends, abort, record) takes a moment more on a busy machine.
ENDING_S = 6.0


class Hooks:
    """A webhook endpoint on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                hooks.received.append(json.loads(self.rfile.read(
                    int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, job_id: str) -> dict[str, dict[str, Any]]:
        return {b["event"]: b for b in self.received if b["job"]["id"] == job_id}


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.server.shutdown()


@pytest.fixture(scope="module")
async def stall_db() -> AsyncIterator[str]:
    """A small table to hold a lock on, and one whose expression index takes seconds to build
    (200 md5 rounds a row) wherever it is restored; here, where the setting asks for one round,
    it is built at once."""
    name = await create_db(f"{PREFIX}_stall", sql="""
            CREATE TABLE held (id int PRIMARY KEY);
            INSERT INTO held SELECT generate_series(1, 10);
            CREATE FUNCTION slow_key(text) RETURNS text IMMUTABLE LANGUAGE sql AS $$
              SELECT md5(string_agg(md5($1 || i), '')) FROM generate_series(1, coalesce(
                nullif(current_setting('pgv_test.rounds', true), '')::int, 200)) i $$;
            CREATE TABLE slow AS SELECT g AS id, md5(g::text) AS t
                                 FROM generate_series(1, 26000) g;
            SET pgv_test.rounds = 1;
            CREATE INDEX slow_key_idx ON slow (slow_key(t));""")
    yield name


@pytest.fixture(scope="module")
async def parts_db() -> str:
    """About 90 MB of hex text: a dump of many 5 MiB parts after compression, more than the
    pipes, sockets and parts in flight hold, so a stuck upload holds pg_dump mid-stream."""
    return await create_db(f"{PREFIX}_stall_parts", sql=(
        "CREATE TABLE filler AS SELECT g AS id, md5(random()::text) || md5(random()::text) "
        "AS t FROM generate_series(1, 1200000) g"))


async def job_backends(name: str) -> list[Any]:
    conn = await admin_conn()
    try:
        rows: list[Any] = await conn.fetch(
            "SELECT pid, state, wait_event_type, query FROM pg_stat_activity "
            "WHERE application_name = $1", name)
        return rows
    finally:
        await conn.close()


def job_processes(name: str) -> list[str]:
    """Processes started for the job: its tools carry its application_name in PGAPPNAME."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.environ().get("PGAPPNAME") == name:
                found.append(proc.info["name"])
        except (psutil.Error, OSError):
            continue
    return found


def stored(s3: Any, bucket: str, target: str) -> tuple[list[str], list[Any]]:
    prefix = f"archives/{target}/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return keys, s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


def assert_stalled(job: dict[str, Any], target: str, phase: str) -> None:
    assert job["status"] == "failed", job
    assert job["error"]["title"] == "stalled", job["error"]
    assert re.match(rf"no progress for \d+ s at phase {phase} ", job["error"]["detail"]), job
    assert re.fullmatch(rf"backup of {target} stalled: no progress for \d+ s at {phase}",
                        job["summary"]), job["summary"]


def assert_announced(hooks: Hooks, job_id: str) -> None:
    events = hooks.events(job_id)
    assert set(events) == {"job.stalled", "job.failed"}, hooks.received
    assert events["job.stalled"]["job"]["error"]["title"] == "stalled"
    assert events["job.stalled"]["summary"] == events["job.stalled"]["job"]["summary"]


async def test_backup_held_by_a_lock_fails_as_stalled(make_settings: Any, stall_db: str, s3: Any,
                                                      bucket: str, hooks: Hooks) -> None:
    settings = make_settings(
        targets={"held": {"dsn": dsn(stall_db)}}, stall_timeout_s=STALL_S,
        lock_wait_timeout_s=60, webhooks=[{"url": hooks.url}])
    locker = await admin_conn(stall_db)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        async with running_app(settings) as c:
            resp = await c.post("/v1/targets/held/backups", headers=auth("operator"))
            job_id = resp.json()["id"]
            name = f"pgvault/backup/{job_id}"
            for _ in range(100):  # pg_dump is there, and waits on the lock
                waiting = [b for b in await job_backends(name)
                           if b["wait_event_type"] == "Lock" and b["query"].startswith("LOCK")]
                if waiting:
                    break
                await asyncio.sleep(0.1)
            assert waiting and "pg_dump" in job_processes(name)
            since = time.monotonic()
            job = await wait_job(c, job_id, timeout=STALL_S + 30)
            took = time.monotonic() - since
            metrics = (await c.get("/metrics")).text
        await lock.rollback()
    finally:
        await locker.close()
    assert_stalled(job, "held", "dump")
    assert "backends were waiting on a lock another session holds" in job["error"]["detail"]
    assert took < STALL_S + ENDING_S, took
    assert await job_backends(name) == [] and job_processes(name) == []
    assert stored(s3, bucket, "held") == ([], [])
    assert_announced(hooks, job_id)
    stalls = re.search(r'^pgvault_jobs_stalled_total\{kind="backup"\} (\S+)$', metrics, re.M)
    assert stalls and float(stalls.group(1)) >= 1, metrics
    assert 'pgvault_jobs_stalled_total{kind="restore"} 0.0' in metrics


def _after_first_part(method: str, path: str) -> float | None:
    """Storage stops answering the dump's upload parts after its first one."""
    if is_upload_part(method, path) and not re.search(r"[?&]partNumber=1(&|$)", path):
        return 120.0
    return None


async def test_storage_that_stops_answering_mid_upload_fails_as_stalled(
        make_settings: Any, parts_db: str, s3_endpoint: str, s3: Any, bucket: str,
        hooks: Hooks) -> None:
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = _after_first_part
        settings = make_settings(
            targets={"stuck": {"dsn": dsn(parts_db), "row_counts": False}},
            s3_endpoint_url=proxy.url, upload_concurrency=1, stall_timeout_s=STALL_S,
            webhooks=[{"url": hooks.url}])
        async with running_app(settings) as c:
            resp = await c.post("/v1/targets/stuck/backups", headers=auth("operator"))
            job_id = resp.json()["id"]
            name = f"pgvault/backup/{job_id}"
            for _ in range(300):
                if any(_after_first_part(m, p) for m, p in proxy.seen):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the dump never reached its second part: {proxy.seen}")
            since = time.monotonic()
            for _ in range(30):  # pg_dump is held mid-stream: its COPY waits for it to read
                copying = [b for b in await job_backends(name)
                           if b["query"].startswith("COPY") and b["wait_event_type"] == "Client"]
                if copying:
                    break
                await asyncio.sleep(0.1)
            assert copying and "pg_dump" in job_processes(name)
            job = await wait_job(c, job_id, timeout=STALL_S + 30)
            took = time.monotonic() - since
        aborted = [p for m, p in proxy.seen if m == "DELETE" and "uploadId=" in p]
    assert_stalled(job, "stuck", "dump")
    assert "backends were waiting on pgvault's side" in job["error"]["detail"]
    assert took < STALL_S + ENDING_S, took
    assert job["progress"]["bytes_uploaded"] >= 5 * 1024 * 1024  # a part went through
    assert aborted, proxy.seen
    assert await job_backends(name) == [] and job_processes(name) == []
    assert stored(s3, bucket, "stuck") == ([], [])
    assert_announced(hooks, job_id)


async def test_long_index_build_that_shows_progress_is_not_stalled(
        make_settings: Any, stall_db: str) -> None:
    stall_s = 2.0
    settings = make_settings(targets={"slowidx": {"dsn": dsn(stall_db)}}, stall_timeout_s=stall_s)
    async with running_app(settings) as c:
        archive = (await backup(c, "slowidx"))["result"]["backup_id"]
        resp = await c.post(f"/v1/targets/slowidx/archives/{archive}/verify",
                            headers=auth("operator"), json={"level": "restore"})
        job_id = resp.json()["id"]
        restoring: list[int] = []
        while (job := (await c.get(f"/v1/jobs/{job_id}", headers=auth())).json())["status"] in (
                "queued", "running"):
            if job["phase"] == "restore":
                restoring.append(job["progress"]["bytes_done"])
            await asyncio.sleep(0.2)
        job = await wait_job(c, job_id)
    assert job["status"] == "succeeded", job
    # pg_restore's step (the index build, the bulk of it) ran several stall timeouts long ...
    assert job["result"]["phase_durations_s"]["restore"] > 2 * stall_s, job["result"]
    # ... and showed the server's counters (table blocks read by the build) as its progress.
    assert restoring and max(restoring) > 0 and restoring == sorted(restoring), restoring


async def test_long_analyze_that_works_on_the_server_is_not_stalled(
        make_settings: Any, stall_db: str) -> None:
    """ANALYZE computing the expression index's statistics (every row through slow_key) moves no
    counter for seconds; its backend works, and that is enough."""
    stall_s = 1.5
    settings = make_settings(targets={"slowan": {"dsn": dsn(stall_db)}}, stall_timeout_s=stall_s)
    async with running_app(settings) as c:
        resp = await c.post("/v1/targets/slowan/maintenance", headers=auth("operator"),
                            json={"task": "analyze"})
        job = await wait_job(c, resp.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["duration_s"] > 2 * stall_s, job["result"]


async def test_backend_query_fits_each_server_major() -> None:
    """Servers before 14 have no COPY progress view, before 13 no ANALYZE one, before 12 none:
    the query asks only for what the server has, and reads the same way."""
    from app.integrations.job_backends import backends_sql, read

    conn = await admin_conn()
    try:
        for major in (11, 12, 13, 14, 15):
            assert await conn.fetch(backends_sql(major), ["pgvault/none"]) == []
        assert "pg_stat_progress" not in backends_sql(11)
        assert "progress_copy" not in backends_sql(13) and "progress_analyze" in backends_sql(13)
        assert await read(conn, ["pgvault/none"]) == []
    finally:
        await conn.close()


async def test_jobs_that_walk_many_archives_on_slow_storage_are_not_stalled(
        make_settings: Any, parts_db: str, s3: Any, bucket: str, s3_endpoint: str) -> None:
    # Retention's plan (each expired archive's objects listed in every location) and a shallow
    # reconcile (each archive's manifest read in every location) move no byte counters: each
    # archive done is their progress. Slow storage makes the whole walk several timeouts long.
    from tests.test_retention import copy_archive
    stall_s = 1.0
    old = [f"2020010{i}T000000Z-{c * 6}" for i, c in enumerate("abcde", 1)]

    def slow(method: str, path: str) -> float | None:
        per_archive = "list-type=2" in path or path.endswith("manifest.json")
        return 0.25 if per_archive and re.search(r"2020010\d", path) else None

    with FaultyProxy(s3_endpoint) as proxy:
        settings = make_settings(s3_endpoint_url=proxy.url, stall_timeout_s=stall_s,
                                 targets={"walk": {"dsn": dsn(parts_db), "retention_days": 1,
                                                   "retention_min_backups": 1}})
        async with running_app(settings) as c:
            real = (await backup(c, "walk"))["result"]["backup_id"]
            for bid in old:
                copy_archive(s3, bucket, "walk", real, bid)
            proxy.rule = slow
            for kind, body in (("retention", {"dry_run": True}), ("reconcile", {})):
                resp = await c.post(f"/v1/targets/walk/{kind}", headers=auth("admin"),
                                    json=body)
                assert resp.status_code == 202, resp.text
                job = await wait_job(c, resp.json()["id"], timeout=60)
                assert job["status"] == "succeeded", job
                took = sum(job["result"]["phase_durations_s"].values())
                assert took > 1.2 * stall_s, (kind, job["result"]["phase_durations_s"])
