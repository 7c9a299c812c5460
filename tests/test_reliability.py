"""A real uvicorn process killed or stopped mid-backup: what is left must be clean and explained."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psutil
import pytest

from app.config import Settings
from tests.conftest import ROOT, auth, dsn, running_app, start_uploading_backup, wait_job
from tests.faults import FaultyProxy, is_upload_part
from tests.test_backup import archive_keys, pending_uploads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def settings_env(settings: Settings) -> dict[str, str]:
    dumped = settings.model_dump(mode="json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGVAULT_")}
    for key, value in dumped.items():
        if value is None:
            continue
        if key in ("database_url",):
            value = settings.database_url.get_secret_value()
        if key == "targets":
            value = {n: {**t, "dsn": settings.targets[n].dsn.get_secret_value()}
                     for n, t in value.items()}
        env[f"PGVAULT_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@asynccontextmanager
async def uvicorn(settings: Settings) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    # Its log goes to a file: a pipe nobody drains fills up, and the server's next log line
    # then blocks its event loop.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=ROOT,
                            env=settings_env(settings), stdout=subprocess.DEVNULL,
                            stderr=log)
    LOGS[proc.pid] = log
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for _ in range(200):
                try:
                    if (await c.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("uvicorn did not start")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        LOGS.pop(proc.pid, None)
        log.close()


LOGS: dict[int, Any] = {}


def server_log(proc: subprocess.Popen[bytes]) -> str:
    """What a server started by :func:`uvicorn` has logged so far."""
    log = LOGS[proc.pid]
    log.seek(0)
    return str(log.read().decode(errors="replace"))


async def start_big_backup(url: str, target: str) -> str:
    """Start a backup on the live server and return once its dump is uploading."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        return await start_uploading_backup(c, target)


def pipeline_of(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if p.name() in ("pg_dump", "zstd", "gpg")]


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


async def test_killed_worker_is_detected_and_its_upload_aborted(
        make_settings: Any, big_db: str, s3_endpoint: str, s3: Any, bucket: str) -> None:
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.3 if is_upload_part(m, p) else None
        settings = make_settings(targets={"killed": {"dsn": dsn(big_db), "row_counts": False}},
                                 s3_endpoint_url=proxy.url, lease_seconds=3)
        async with uvicorn(settings) as (proc, url):
            job_id = await start_big_backup(url, "killed")
            children = pipeline_of(proc)
            assert {p.name() for p in children} >= {"pg_dump", "zstd", "gpg"}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert pending_uploads(s3, bucket, "killed"), "the dead worker's upload should be open"
        # Orphans: the pipeline loses its reader and exits on its own (SIGPIPE).
        assert wait_gone(children, 15) == []
        # Another replica's reaper notices the expired lease.
        async with running_app(make_settings(
                targets={"killed": {"dsn": dsn(big_db)}}, lease_seconds=3)) as c:
            job = await wait_job(c, job_id, timeout=30)
            for _ in range(50):  # the upload is aborted first, then the objects deleted
                if not pending_uploads(s3, bucket, "killed") \
                        and not archive_keys(s3, bucket, "killed"):
                    break
                await asyncio.sleep(0.2)
    assert job["status"] == "failed"
    assert job["error"]["title"] == "Worker lost"
    assert "lease" in job["error"]["detail"]
    assert pending_uploads(s3, bucket, "killed") == []
    assert not [k for k in archive_keys(s3, bucket, "killed") if k.endswith("manifest.json")]
    assert archive_keys(s3, bucket, "killed") == []  # the globals object went too


async def test_sigterm_cancels_running_backup_after_grace(
        make_settings: Any, big_db: str, s3_endpoint: str, s3: Any, bucket: str) -> None:
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.3 if is_upload_part(m, p) else None
        settings = make_settings(targets={"stopped": {"dsn": dsn(big_db), "row_counts": False}},
                                 s3_endpoint_url=proxy.url, shutdown_grace_s=1)
        async with uvicorn(settings) as (proc, url):
            job_id = await start_big_backup(url, "stopped")
            children = pipeline_of(proc)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            stopped = time.monotonic() - started
            stderr = server_log(proc)
        # uvicorn re-raises the signal once its graceful shutdown is complete.
        assert proc.returncode in (0, -signal.SIGTERM), stderr[-2000:]
        assert "Application shutdown complete" in stderr
        assert stopped < 15
        assert wait_gone(children, 5) == []  # killed with their process groups, not orphaned
        assert pending_uploads(s3, bucket, "stopped") == []
        async with running_app(make_settings(targets={"stopped": {"dsn": dsn(big_db)}})) as c:
            job = await wait_job(c, job_id, timeout=10)
    assert job["status"] == "cancelled"
    assert "shut down" in job["error"]["detail"]
    assert archive_keys(s3, bucket, "stopped") == []


async def test_worker_that_lost_its_lease_stops_and_writes_no_manifest(
        make_settings: Any, big_db: str, s3_endpoint: str, s3: Any, bucket: str) -> None:
    from tests.conftest import PREFIX, admin_conn

    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.3 if is_upload_part(m, p) else None
        settings = make_settings(targets={"cutoff": {"dsn": dsn(big_db), "row_counts": False}},
                                 s3_endpoint_url=proxy.url, lease_seconds=3)
        async with running_app(settings) as c:
            job_id = await start_uploading_backup(c, "cutoff")
            # What another replica's reaper does when this one is cut off past its lease.
            meta = await admin_conn(f"{PREFIX}_meta")
            try:
                await meta.execute("""UPDATE jobs SET status = 'failed', lease_owner = NULL,
                                      error = '{"title": "Worker lost", "detail": "x"}'
                                      WHERE id = $1""", __import__("uuid").UUID(job_id))
            finally:
                await meta.close()
            runner = c.app.state.services.runner  # type: ignore[attr-defined]
            for _ in range(100):
                if not runner.running:
                    break
                await asyncio.sleep(0.1)
            assert not runner.running, "the worker kept running a job it no longer owns"
            job = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
    assert job["status"] == "failed" and job["error"]["title"] == "Worker lost"
    assert not [k for k in archive_keys(s3, bucket, "cutoff") if k.endswith("manifest.json")]
    assert pending_uploads(s3, bucket, "cutoff") == []


async def test_a_metadata_blip_after_the_manifest_keeps_the_finished_backup(
        make_settings: Any, pagila_db: str, s3: Any, bucket: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease check after the manifest write cannot reach the metadata database: that proves
    nothing, and the archive is whole, so it must stay (only a lease lost to a reaper discards)."""
    from app.jobs.runner import JobContext

    real = JobContext.assert_lease
    calls = 0

    async def flaky(self: JobContext) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the check right after the manifest was written
            raise ConnectionResetError("metadata database went away")
        await real(self)

    monkeypatch.setattr(JobContext, "assert_lease", flaky)
    async with running_app(make_settings(targets={"blip": {"dsn": dsn(pagila_db)}})) as c:
        resp = await c.post("/v1/targets/blip/backups", headers=auth("operator"))
        job = await wait_job(c, resp.json()["id"])
        listing = (await c.get("/v1/targets/blip/archives", headers=auth("viewer"))).json()
    assert calls == 2
    assert job["status"] == "succeeded", job["error"]
    assert [a["complete"] for a in listing["items"]] == [True]
    assert any(k.endswith("manifest.json") for k in archive_keys(s3, bucket, "blip"))
