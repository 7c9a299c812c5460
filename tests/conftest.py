"""Session fixtures against the real things: the local PostgreSQL server (uniquely named databases,
dropped afterwards), moto's S3 server over HTTP on loopback, and a throwaway GnuPG home."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.jobs import results
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
PAGILA = ROOT / "testdata" / "pagila"  # shipped with the repository (MIT, LICENSE.txt beside it)
PG_HOST, PG_PORT = "127.0.0.1", 5432
TAG = secrets.token_hex(3)
PREFIX = f"pgv_{TAG}"
TOKENS = {role: f"tok-{role}-{secrets.token_hex(8)}" for role in ("viewer", "operator", "admin")}


def dsn(db: str, user: str = "postgres", password: str | None = None) -> str:
    auth = f"{user}:{password}" if password else user
    return f"postgresql://{auth}@{PG_HOST}:{PG_PORT}/{db}"


def psql(db: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", "-h", PG_HOST, "-U", "postgres", "-d", db, "-v",
                           "ON_ERROR_STOP=1", "-q", *args], check=True, capture_output=True,
                          text=True, **kw)


async def admin_conn(db: str = "postgres") -> Any:
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=db)


async def create_db(name: str, template: str | None = None, *, sql: str | None = None) -> str:
    """A new database; ``sql``: run in it once created."""
    conn = await admin_conn()
    try:
        tmpl = f" TEMPLATE {template}" if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{tmpl}')
    finally:
        await conn.close()
    if sql is not None:
        await run_sql(name, sql)
    return name


async def run_sql(db: str, sql: str) -> None:
    conn = await admin_conn(db)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def drop_db(name: str) -> None:
    conn = await admin_conn()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session", autouse=True)
def _session_databases() -> Iterator[None]:
    """Drop every database this session created (their names all start with PREFIX)."""
    yield

    async def cleanup() -> None:
        conn = await admin_conn()
        try:
            names = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                     PREFIX + "%")
            for row in names:  # quoted by the server: test names hold quotes too
                await conn.execute(await conn.fetchval(
                    "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)",
                    row["datname"]))
            await conn.execute(f"DROP ROLE IF EXISTS {PREFIX}_pw")
        finally:
            await conn.close()

    asyncio.run(cleanup())


async def migrated_db(name: str) -> str:
    """A metadata database, created by the real ``alembic upgrade head``."""
    await create_db(name)
    env = {**os.environ, "PGVAULT_DATABASE_URL": dsn(name)}
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    return name


@pytest.fixture(scope="session")
async def metadata_db() -> str:
    """The metadata database of every ``running_app`` a test starts for itself."""
    return await migrated_db(f"{PREFIX}_meta")


@pytest.fixture(scope="session")
async def pagila_template() -> str:
    name = await create_db(f"{PREFIX}_pagila_tpl")
    psql(name, "-f", str(PAGILA / "pagila-schema.sql"))
    psql(name, "-f", str(PAGILA / "pagila-data.sql"))
    psql(name, "-c", "ANALYZE")
    return name


@pytest.fixture(scope="session")
async def pagila_db(pagila_template: str) -> str:
    """The pagila database the "pagila" target protects."""
    return await create_db(f"{PREFIX}_pagila", template=pagila_template)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.pop("AWS_PROFILE", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture(scope="session")
def bucket(s3: Any) -> str:
    name = f"pgv-{TAG}"
    s3.create_bucket(Bucket=name)
    return name


def _gen_key(home: Path, uid: str, expire: str = "never") -> str:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", uid, "future-default", "default", expire],
                   check=True, capture_output=True)
    out = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--with-colons",
                          "--list-keys", uid], check=True, capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="session")
def gpg_key() -> Iterator[tuple[Path, str]]:
    """A GnuPG home (short path: gpg-agent's socket path is limited) with one key pair."""
    home = Path(tempfile.mkdtemp(prefix="pgvg-"))
    fpr = _gen_key(home, "pgvault test <backup@pgvault.invalid>")
    yield home, fpr
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def make_settings(metadata_db: str, pagila_db: str, s3_endpoint: str, bucket: str,
                  gpg_key: tuple[Path, str]) -> Callable[..., Settings]:
    home, fpr = gpg_key

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": dsn(metadata_db),
            "storage_url": f"s3://{bucket}/archives",
            "s3_endpoint_url": s3_endpoint,
            "s3_region": "us-east-1",
            "gpg_home": home,
            "gpg_recipients": [fpr],
            "targets": {"pagila": {"dsn": dsn(pagila_db), "retention_min_backups": 2}},
            "api_tokens": [{"name": f"test-{role}", "role": role,
                            "sha256": hashlib.sha256(tok.encode()).hexdigest()}
                           for role, tok in TOKENS.items()],
            "lease_seconds": 6,
            "poll_interval_s": 0.2,
            "progress_interval_s": 0.2,
            "shutdown_grace_s": 2,
            "upload_part_size": 5 * 1024 * 1024,
            "scheduler_enabled": False,  # tests tick schedulers by hand (tests/test_schedules.py)
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pgvault",
                                     timeout=60) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture(scope="session")
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """The service with the default settings, shared by the tests that need nothing special.

    It lives all session, so it has a metadata database of its own: its job runner must never
    claim a job queued by a test's own service (other storage, other keys, a faulty proxy).
    """
    shared = await migrated_db(f"{PREFIX}_meta_shared")
    async with running_app(make_settings(database_url=dsn(shared))) as c:
        yield c


def auth(role: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


async def wait_job(client: httpx.AsyncClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            # Every finished job of the suite holds the OpenAPI document to its word.
            results.validate(job["kind"], job["status"], job["result"])
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} at {job['phase']}")
        await asyncio.sleep(0.2)


async def backup(client: httpx.AsyncClient, target: str = "pagila",
                 timeout: float = 120) -> dict[str, Any]:
    """Run one backup through the API and return the finished job (asserting it succeeded)."""
    resp = await client.post(f"/v1/targets/{target}/backups", headers=auth("operator"))
    assert resp.status_code == 202, resp.text
    job = await wait_job(client, resp.json()["id"], timeout)
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="session")
async def big_db() -> str:
    """About 280 MB of random text and jsonb: a backup of it takes long enough to interfere with."""
    from tests.data import BIG_TABLE_SQL

    name = await create_db(f"{PREFIX}_big")
    conn = await admin_conn(name)
    try:
        await conn.execute(BIG_TABLE_SQL.format(rows=1_200_000))
    finally:
        await conn.close()
    return name


def decrypt_archive(home: Path, encrypted: bytes, workdir: Path) -> Path:
    """The break-glass steps: gpg --decrypt to a file (checked), then zstd -d."""
    enc = workdir / "object.gpg"
    enc.write_bytes(encrypted)
    plain = workdir / "object.zst"
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--output", str(plain),
                    "--decrypt", str(enc)], check=True, capture_output=True)
    out = workdir / "object"
    subprocess.run(["zstd", "-d", "-q", "-f", str(plain), "-o", str(out)], check=True)
    return out


async def start_uploading_backup(client: httpx.AsyncClient, target: str) -> str:
    """Start a backup and return its job id once the dump itself is streaming to storage."""
    resp = await client.post(f"/v1/targets/{target}/backups", headers=auth("operator"))
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["id"]
    for _ in range(300):
        job = (await client.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
        if job["phase"] == "dump" and job["progress"]["bytes_uploaded"] > 0:
            return job_id
        assert job["status"] in ("queued", "running"), job
        await asyncio.sleep(0.1)
    raise AssertionError(f"backup never started uploading its dump: {job}")
