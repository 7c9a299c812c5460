"""Backups through the API, against real PostgreSQL, pg_dump, gpg and moto's S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    PREFIX,
    admin_conn,
    auth,
    backup,
    decrypt_archive,
    dsn,
    running_app,
    start_uploading_backup,
    wait_job,
)
from tests.faults import FaultyProxy, is_upload_part


def manifest_of(s3: Any, bucket: str, target: str, backup_id: str) -> dict[str, Any]:
    obj = s3.get_object(Bucket=bucket, Key=f"archives/{target}/{backup_id}/manifest.json")
    return json.loads(obj["Body"].read())


def archive_keys(s3: Any, bucket: str, target: str) -> list[str]:
    resp = s3.list_objects_v2(Bucket=bucket, Prefix=f"archives/{target}/")
    return [o["Key"] for o in resp.get("Contents", [])]


def pending_uploads(s3: Any, bucket: str, target: str) -> list[Any]:
    resp = s3.list_multipart_uploads(Bucket=bucket, Prefix=f"archives/{target}/")
    return list(resp.get("Uploads", []))


async def source_counts(db: str, tables: list[dict[str, Any]]) -> dict[str, int]:
    conn = await admin_conn(db)
    try:
        counts = {}
        for t in tables:
            counts[f"{t['schema']}.{t['name']}"] = await conn.fetchval(
                f'SELECT count(*) FROM ONLY "{t["schema"]}"."{t["name"]}"')
        return counts
    finally:
        await conn.close()


async def test_pagila_backup_is_a_complete_encrypted_archive(
        client: Any, s3: Any, bucket: str, pagila_db: str, gpg_key: tuple[Path, str],
        tmp_path: Path) -> None:
    resp = await client.post("/v1/targets/pagila/backups", headers=auth("operator"),
                             json={"label": "first"})
    assert resp.status_code == 202, resp.text
    assert resp.headers["Location"] == f"/v1/jobs/{resp.json()['id']}"
    job = await wait_job(client, resp.json()["id"])
    assert job["status"] == "succeeded", job
    backup_id = job["result"]["backup_id"]
    assert job["result"]["size_bytes"] > 0

    listing = (await client.get("/v1/targets/pagila/archives", headers=auth("viewer"))).json()
    listed = {a["backup_id"]: a for a in listing["items"]}
    assert listed[backup_id]["complete"] is True
    assert listed[backup_id]["label"] == "first"
    assert listed[backup_id]["job_id"] == job["id"]

    manifest = manifest_of(s3, bucket, "pagila", backup_id)
    for field in ("format_version", "backup_id", "target", "created_at", "finished_at",
                  "server_version", "pg_dump_version", "database_size_bytes", "compression",
                  "objects", "tables"):
        assert field in manifest, field
    assert manifest["compression"] == "zstd"
    home, _ = gpg_key
    for obj in manifest["objects"]:
        data = s3.get_object(Bucket=bucket,
                             Key=f"archives/pagila/{backup_id}/{obj['key']}")["Body"].read()
        assert len(data) == obj["size_bytes"]
        assert hashlib.sha256(data).hexdigest() == obj["sha256"]
        assert obj["encrypted"] is True
        # No plaintext in storage: neither the dump's magic nor pagila's data nor zstd's frame.
        assert b"PGDMP" not in data and b"ACADEMY DINOSAUR" not in data
        assert not data.startswith(b"\x28\xb5\x2f\xfd")

    dump_entry = next(o for o in manifest["objects"] if o["kind"] == "database")
    data = s3.get_object(Bucket=bucket,
                         Key=f"archives/pagila/{backup_id}/{dump_entry['key']}")["Body"].read()
    dump = decrypt_archive(home, data, tmp_path)
    toc = subprocess.run(["pg_restore", "--list", str(dump)], check=True, capture_output=True,
                         text=True).stdout
    assert "TABLE DATA public rental" in toc
    assert "MATERIALIZED VIEW public rental_by_category" in toc

    counts = {f"{t['schema']}.{t['name']}": t["rows"] for t in manifest["tables"]}
    assert counts == await source_counts(pagila_db, manifest["tables"])
    assert counts["public.rental"] == 16044
    assert "public.payment_p2022_01" in counts  # partitions are counted, each on its own


async def test_detail_shows_manifest_and_unknowns_are_404(client: Any) -> None:
    job = await backup(client)
    backup_id = job["result"]["backup_id"]
    resp = await client.get(f"/v1/targets/pagila/archives/{backup_id}", headers=auth("viewer"))
    assert resp.status_code == 200
    assert resp.json()["manifest"]["backup_id"] == backup_id
    missing = await client.get("/v1/targets/pagila/archives/20000101T000000Z-aaaaaa",
                               headers=auth("viewer"))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    unknown = await client.get("/v1/targets/nope/archives", headers=auth("viewer"))
    assert unknown.status_code == 404


async def test_archive_listing_is_paginated_newest_first(client: Any) -> None:
    await backup(client)
    await backup(client)
    first = (await client.get("/v1/targets/pagila/archives?limit=1", headers=auth())).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    second = (await client.get(f"/v1/targets/pagila/archives?limit=1&cursor="
                               f"{first['next_cursor']}", headers=auth())).json()
    assert second["items"][0]["backup_id"] < first["items"][0]["backup_id"]
    bad = await client.get("/v1/targets/pagila/archives?cursor=garbage!", headers=auth())
    assert bad.status_code == 422


async def test_second_backup_while_one_runs_is_409_with_running_job(
        make_settings: Any, s3_endpoint: str) -> None:
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.3 if is_upload_part(m, p) else None
        async with running_app(make_settings(s3_endpoint_url=proxy.url)) as c:
            first = await c.post("/v1/targets/pagila/backups", headers=auth("operator"))
            second = await c.post("/v1/targets/pagila/backups", headers=auth("operator"))
            assert second.status_code == 409, second.text
            assert second.json()["job_id"] == first.json()["id"]
            assert second.headers["content-type"] == "application/problem+json"
            assert (await wait_job(c, first.json()["id"]))["status"] == "succeeded"


async def test_idempotency_key_replays_the_first_answer(client: Any) -> None:
    headers = {**auth("operator"), "Idempotency-Key": f"key-{time.time()}"}
    first = await client.post("/v1/targets/pagila/backups", headers=headers, json={"label": "a"})
    again = await client.post("/v1/targets/pagila/backups", headers=headers, json={"label": "a"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    other = await client.post("/v1/targets/pagila/backups", headers=headers, json={"label": "b"})
    assert other.status_code == 422
    await wait_job(client, first.json()["id"])


async def test_pg_dump_killed_mid_stream_fails_without_manifest(
        make_settings: Any, big_db: str, s3: Any, bucket: str) -> None:
    settings = make_settings(targets={"killdump": {"dsn": dsn(big_db), "row_counts": False}})
    async with running_app(settings) as c:
        resp = await c.post("/v1/targets/killdump/backups", headers=auth("operator"))
        job_id = resp.json()["id"]
        conn = await admin_conn()
        try:
            killed = 0
            deadline = time.monotonic() + 30
            while not killed and time.monotonic() < deadline:
                killed = await conn.fetchval(
                    """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                       WHERE datname = $1 AND application_name = $2
                         AND query LIKE 'COPY%'""", big_db, f"pgvault/backup/{job_id}")
                await asyncio.sleep(0.02)
        finally:
            await conn.close()
        assert killed, "pg_dump never started copying"
        job = await wait_job(c, job_id)
    assert job["status"] == "failed"
    assert "pg_dump" in job["error"]["detail"]
    assert pending_uploads(s3, bucket, "killdump") == []
    assert archive_keys(s3, bucket, "killdump") == []  # no manifest, and the globals went too


async def test_held_lock_fails_fast_with_lock_wait_timeout(make_settings: Any, pagila_db: str,
                                                           s3: Any, bucket: str) -> None:
    conn = await admin_conn(pagila_db)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE public.actor IN ACCESS EXCLUSIVE MODE")
        async with running_app(make_settings(lock_wait_timeout_s=1)) as c:
            resp = await c.post("/v1/targets/pagila/backups", headers=auth("operator"))
            job = await wait_job(c, resp.json()["id"], timeout=60)
        await tx.rollback()
    finally:
        await conn.close()
    assert job["status"] == "failed"
    assert "lock" in job["error"]["detail"].lower()
    assert pending_uploads(s3, bucket, "pagila") == []


async def test_gpg_failure_fails_the_job(make_settings: Any, gpg_key: tuple[Path, str],
                                         tmp_path: Path, s3: Any, bucket: str) -> None:
    home, fpr = gpg_key
    copy = Path(subprocess.run(["mktemp", "-d", "/tmp/pgvg-XXXX"], capture_output=True,
                               text=True, check=True).stdout.strip())
    subprocess.run(["cp", "-a", f"{home}/.", str(copy)], check=True)
    try:
        async with running_app(make_settings(gpg_home=copy)) as c:
            before = set(archive_keys(s3, bucket, "pagila"))
            # The recipient key disappears after start-up: gpg must fail, and say so.
            subprocess.run(["gpg", "--homedir", str(copy), "--batch", "--yes",
                            "--delete-secret-and-public-key", fpr], check=True,
                           capture_output=True)
            resp = await c.post("/v1/targets/pagila/backups", headers=auth("operator"))
            job = await wait_job(c, resp.json()["id"])
        assert job["status"] == "failed"
        assert "gpg" in job["error"]["detail"]
        assert set(archive_keys(s3, bucket, "pagila")) == before
        assert pending_uploads(s3, bucket, "pagila") == []
    finally:
        subprocess.run(["gpgconf", "--homedir", str(copy), "--kill", "all"], capture_output=True)
        subprocess.run(["rm", "-rf", str(copy)], check=True)


async def test_s3_failing_mid_upload_fails_and_aborts(make_settings: Any, s3_endpoint: str,
                                                      big_db: str, s3: Any, bucket: str) -> None:
    with FaultyProxy(s3_endpoint) as proxy:
        settings = make_settings(targets={"s3fail": {"dsn": dsn(big_db), "row_counts": False}},
                                 s3_endpoint_url=proxy.url)
        parts = {"n": 0}

        def rule(method: str, path: str) -> float | int | None:
            if is_upload_part(method, path) and "database.dump" in path:
                parts["n"] += 1
                return 500 if parts["n"] > 3 else None
            return None

        proxy.rule = rule
        async with running_app(settings) as c:
            resp = await c.post("/v1/targets/s3fail/backups", headers=auth("operator"))
            job = await wait_job(c, resp.json()["id"])
    assert job["status"] == "failed"
    assert "upload" in job["error"]["detail"] and "InternalError" in job["error"]["detail"]
    assert pending_uploads(s3, bucket, "s3fail") == []
    assert archive_keys(s3, bucket, "s3fail") == []
    assert any(m == "DELETE" and "uploadId=" in p for m, p in proxy.seen)  # aborted


async def test_unreachable_storage_fails_with_clear_error(make_settings: Any) -> None:
    async with running_app(make_settings(storage_url="s3://no-such-bucket-pgv/x")) as c:
        resp = await c.post("/v1/targets/pagila/backups", headers=auth("operator"))
        job = await wait_job(c, resp.json()["id"])
        ready = await c.get("/readyz")
    assert job["status"] == "failed"
    assert "NoSuchBucket" in job["error"]["detail"]
    assert job["summary"].startswith("backup of pagila failed at "), job["summary"]
    assert "the bucket does not exist" in job["summary"], job["summary"]
    assert ready.status_code == 503 and ready.json()["checks"]["storage"]["ok"] is False
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.json()["status"] == 503 and "storage" in ready.json()["detail"]
    assert ready.json()["checks"]["metadata_db"]["ok"] is True


async def test_readiness_answers_503_in_time_when_storage_hangs(
        make_settings: Any, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.health import service as health

    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 1.5)
    with FaultyProxy(s3_endpoint) as proxy:
        async with running_app(make_settings(s3_endpoint_url=proxy.url)) as c:
            proxy.rule = lambda m, p: 5.0  # every storage call now hangs for 5 s
            started = time.monotonic()
            ready = await c.get("/readyz")
            took = time.monotonic() - started
            proxy.rule = lambda m, p: None
    assert ready.status_code == 503, ready.text
    assert took < 4.5
    assert ready.json()["checks"]["storage"] == {"ok": False, "detail": "no answer within 1.5 s"}
    assert ready.json()["checks"]["gpg"]["ok"] is True


async def test_healthz_stays_fast_during_a_large_backup(make_settings: Any, big_db: str) -> None:
    settings = make_settings(targets={"big": {"dsn": dsn(big_db)}})
    async with running_app(settings) as c:
        resp = await c.post("/v1/targets/big/backups", headers=auth("operator"))
        job_id = resp.json()["id"]
        latencies = []
        while True:
            t0 = time.perf_counter()
            assert (await c.get("/healthz")).status_code == 200
            latencies.append(time.perf_counter() - t0)
            job = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
            if job["status"] != "running" and job["status"] != "queued":
                break
            await asyncio.sleep(0.02)
    assert job["status"] == "succeeded", job
    assert job["result"]["size_bytes"] > 50_000_000
    latencies.sort()
    # A blocked event loop shows up as latencies of seconds; this is not a benchmark.
    assert len(latencies) > 20
    assert latencies[int(len(latencies) * 0.95)] < 0.25, latencies[-5:]


async def test_progress_is_visible_while_running(make_settings: Any, big_db: str,
                                                 s3_endpoint: str) -> None:
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.2 if is_upload_part(m, p) else None
        settings = make_settings(targets={"big": {"dsn": dsn(big_db), "row_counts": False}},
                                 s3_endpoint_url=proxy.url)
        async with running_app(settings) as c:
            resp = await c.post("/v1/targets/big/backups", headers=auth("operator"))
            job_id = resp.json()["id"]
            seen = []
            for _ in range(400):
                job = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
                seen.append((job["phase"], job["progress"]["bytes_done"],
                             job["progress"]["bytes_uploaded"], job["progress"]["bytes_total"]))
                if job["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.25)
    assert job["status"] == "succeeded"
    dump = [s for s in seen if s[0] == "dump"]
    assert len({s[2] for s in dump}) >= 3, dump  # uploaded bytes advanced at least 3 times
    assert all(s[3] and s[3] > 100_000_000 for s in dump)  # estimate from pg_database_size


async def test_password_never_leaks(make_settings: Any, big_db: str, capfd: Any) -> None:
    import psutil

    password = "s3cr3t-" + PREFIX
    conn = await admin_conn()
    try:
        await conn.execute(f"CREATE ROLE {PREFIX}_pw LOGIN SUPERUSER PASSWORD '{password}'")
    finally:
        await conn.close()
    # The large database keeps pg_dump running long enough to be seen in the process table.
    settings = make_settings(targets={"pw": {"dsn": dsn(big_db, f"{PREFIX}_pw", password),
                                             "row_counts": False}})
    async with running_app(settings) as c:
        resp = await c.post("/v1/targets/pw/backups", headers=auth("operator"))
        job_id = resp.json()["id"]
        leaked: list[str] = []
        saw_pg_dump = False
        while True:
            for proc in psutil.process_iter(["cmdline"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                saw_pg_dump |= bool(cmd) and cmd.split()[0].endswith("pg_dump")
                if password in cmd:
                    leaked.append(cmd)
            job = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).text
            if '"succeeded"' in job or '"failed"' in job:
                break
            await asyncio.sleep(0.01)
        bodies = [job,
                  (await c.get("/v1/targets", headers=auth("viewer"))).text,
                  (await c.get("/v1/targets/pw", headers=auth("viewer"))).text,
                  (await c.get("/v1/jobs", headers=auth("viewer"))).text,
                  (await c.get("/v1/audit", headers=auth("admin"))).text]
    assert '"succeeded"' in job
    assert saw_pg_dump, job
    assert not leaked
    assert all(password not in body for body in bodies)
    assert "***" in bodies[2]
    out, err = capfd.readouterr()
    assert password not in out and password not in err
    meta = await admin_conn(f"{PREFIX}_meta")
    try:
        rows = await meta.fetch("SELECT jobs::text AS t FROM jobs")
        audit = await meta.fetch("SELECT audit_events::text AS t FROM audit_events")
    finally:
        await meta.close()
    assert all(password not in r["t"] for r in rows + audit)


@pytest.mark.parametrize("role,status", [(None, 401), ("bad", 401), ("viewer", 403)])
async def test_auth_is_enforced(client: Any, role: str | None, status: int) -> None:
    headers = {} if role is None else (
        {"Authorization": "Bearer nope"} if role == "bad" else auth(role))
    resp = await client.post("/v1/targets/pagila/backups", headers=headers)
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"
    assert {"type", "title", "status", "detail"} <= resp.json().keys()
    if status == 401:
        assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("method,path,body,status", [
    ("GET", "/v1/targets/pagila/archives/..%2F..%2Fetc%2Fpasswd", None, (404, 422)),
    ("GET", "/v1/targets/pagila/archives/20260101T000000Z-ABCDEF", None, 422),
    ("GET", "/v1/targets/Bad%20Name", None, 422),
    ("GET", "/v1/targets/-f%2Ftmp%2Fx", None, (404, 422)),
    ("GET", "/v1/targets/-fx", None, 422),
    ("GET", "/v1/targets/unknown", None, 404),
    ("GET", "/v1/jobs/not-a-uuid", None, 422),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000", None, 404),
    ("GET", "/v1/jobs?limit=100000", None, 422),
    ("POST", "/v1/targets/pagila/backups", b"{not json", 422),
    ("POST", "/v1/targets/pagila/backups", b'{"label": 5}', 422),
    ("POST", "/v1/targets/pagila/backups", b'{"unknown": 1}', 422),
    ("POST", "/v1/targets/pagila/backups", b'{"label": "' + b"x" * 200_000 + b'"}', 413),
])
async def test_bad_input_is_4xx_problem_json(client: Any, method: str, path: str,
                                             body: bytes | None,
                                             status: int | tuple[int, ...]) -> None:
    """An id with a slash in it matches no route (404); one without, fails its pattern (422)."""
    resp = await client.request(method, path, content=body, headers={
        **auth("admin"), "Content-Type": "application/json"})
    allowed = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in allowed, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["status"] == resp.status_code


async def test_auth_and_unknown_target_come_before_body_validation(client: Any) -> None:
    no_token = await client.post("/v1/targets/pagila/restores", content=b"{not json",
                                 headers={"Content-Type": "application/json"})
    assert no_token.status_code == 401
    unknown = await client.post("/v1/targets/nowhere/restores", content=b"{not json",
                                headers={**auth("admin"), "Content-Type": "application/json"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    # A role too low is told so, whatever the body: not a 422 about a body it may not send.
    for role, path, body in [("viewer", "/v1/targets/pagila/restores", None),
                             ("operator", "/v1/targets/pagila/restores", b"{not json"),
                             ("viewer", "/v1/targets/pagila/maintenance", b"{}"),
                             ("operator", "/v1/targets/pagila/retention", b"[]")]:
        low = await client.post(path, content=body, headers={
            **auth(role), "Content-Type": "application/json"})
        assert low.status_code == 403, (role, path, low.text)
        assert low.headers["content-type"] == "application/problem+json"
        assert "admin" in low.json()["detail"] or "operator" in low.json()["detail"]


async def test_cancelling_a_running_backup_leaves_nothing(make_settings: Any, big_db: str,
                                                          s3_endpoint: str, s3: Any,
                                                          bucket: str) -> None:
    import psutil

    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.3 if is_upload_part(m, p) else None
        settings = make_settings(targets={"cancelme": {"dsn": dsn(big_db), "row_counts": False}},
                                 s3_endpoint_url=proxy.url)
        async with running_app(settings) as c:
            job_id = await start_uploading_backup(c, "cancelme")
            pipeline = [p for p in psutil.Process().children(recursive=True)
                        if p.name() in ("pg_dump", "zstd", "gpg")]
            assert len(pipeline) >= 3
            resp = await c.post(f"/v1/jobs/{job_id}/cancel", headers=auth("operator"))
            assert resp.status_code == 202
            job = await wait_job(c, job_id)
    assert job["status"] == "cancelled"
    _, alive = psutil.wait_procs(pipeline, timeout=5)
    assert alive == []
    assert pending_uploads(s3, bucket, "cancelme") == []
    assert archive_keys(s3, bucket, "cancelme") == []
