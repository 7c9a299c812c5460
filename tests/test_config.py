"""Configuration errors are one readable line each, at start-up, never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, load_settings
from app.lifespan import start_services
from tests.conftest import PREFIX, ROOT, dsn
from tests.served import served_env

BASE = {
    "PGVAULT_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "PGVAULT_STORAGE_URL": "file:///tmp/pgvault-config-test",
    "PGVAULT_GPG_HOME": "/tmp",
    "PGVAULT_GPG_RECIPIENTS": json.dumps(["A" * 40]),
}


def env_with(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGVAULT_")}
    env.update(BASE)
    env.update(changes)
    return env


@pytest.mark.parametrize("changes,needle", [
    ({"PGVAULT_API_TOKENS": json.dumps([{"name": "x", "sha256": "a" * 64, "role": "root"}])},
     "PGVAULT_API_TOKENS"),
    ({"PGVAULT_TARGETS": json.dumps({"prod": {"dsn": "mysql://x@y/z"}})}, "postgresql://"),
    ({"PGVAULT_TARGETS": json.dumps({"prod": {"dsn": "postgresql://u@h/" + "d" * 64}})},
     "longer than 63 bytes"),
    ({"PGVAULT_TARGETS": json.dumps({"prod": {"dsn": "postgresql://u@h/-fx"}})}, "'-' first"),
    ({"PGVAULT_TARGETS": json.dumps({"Prod!": {"dsn": "postgresql://u@h/d"}})}, "target name"),
    ({"PGVAULT_GPG_RECIPIENTS": json.dumps(["ops@example.com"])}, "fingerprint"),
    ({"PGVAULT_STORAGE_URL": "ftp://x"}, "s3:// or file://"),
    ({"PGVAULT_DATABASE_URL": "postgresql://u:pw@h:notaport/db"}, "invalid port"),
])
def test_bad_settings_are_named(monkeypatch: Any, changes: dict[str, str], needle: str) -> None:
    for key, value in env_with(**changes).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert needle in str(err.value)
    assert "pw@" not in str(err.value)


def test_schedules_take_the_spec_names_and_null_turns_one_off(monkeypatch: Any) -> None:
    schedules = {"backup": "15 1 * * *", "verification": "0 4 2 * *", "maintenance": None}
    targets = {"prod": {"dsn": "postgresql://u@h/d", "schedules": schedules}}
    for key, value in env_with(PGVAULT_TARGETS=json.dumps(targets)).items():
        monkeypatch.setenv(key, value)
    effective = load_settings().targets["prod"].effective_schedules()
    assert effective == {"backup": "15 1 * * *", "retention": "30 0 * * *",
                         "verify": "0 4 2 * *", "maintenance": "", "reconcile": "0 4 * * 0"}
    for bad, needle in [({"verify": "* * * * *", "verification": "* * * * *"}, "same schedule"),
                        ({"vacuum": "* * * * *"}, "unknown schedule"),
                        ({"backup": "every day"}, "not a cron expression")]:
        targets["prod"]["schedules"] = bad
        monkeypatch.setenv("PGVAULT_TARGETS", json.dumps(targets))
        with pytest.raises(ConfigError) as err:
            load_settings()
        assert needle in str(err.value)


def one_line_and_exit_2(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The start-up contract (SPEC 2.13): exit code 2, no traceback, one ``pgvault:`` line
    (uvicorn's own INFO lines may surround it)."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.startswith("pgvault:")]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def serve(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    """Run a start-up command as an operator would; it must refuse to start (a server that
    starts would be stopped by the timeout, failing the test)."""
    argv = list(command) or ["-m", "uvicorn", "app.main:app", "--port", "0"]
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_uvicorn_exits_with_a_readable_message() -> None:
    env = env_with(PGVAULT_API_TOKENS=json.dumps([{"name": "x", "sha256": "a" * 64,
                                                   "role": "superuser"}]))
    one_line_and_exit_2(serve(env), "invalid configuration", "PGVAULT_API_TOKENS",
                        "api_tokens.0.role")


def test_bad_json_names_the_variable_and_the_position() -> None:
    value = '{"prod": {"dsn": "postgresql://u:pw-json-1@h/d",}}'
    column = value.index(",}") + 2  # the '}' where a key should be, counted from 1
    line = one_line_and_exit_2(serve(env_with(PGVAULT_TARGETS=value)),
                               f"PGVAULT_TARGETS: invalid JSON at line 1 column {column}")
    assert "pw-json-1" not in line


@pytest.fixture
def served(metadata_db: str, pagila_db: str, gpg_key: tuple[Path, str],
           tmp_path: Path) -> Callable[..., dict[str, str]]:
    """A working environment, to be spoiled one way per test."""
    return lambda **changes: served_env(metadata_db, pagila_db, gpg_key, tmp_path, **changes)


def test_unreachable_metadata_database_is_one_line(served: Any) -> None:
    env = served(PGVAULT_DATABASE_URL="postgresql://meta:pw-meta-1@127.0.0.1:1/pgvault")
    done = serve(env)
    one_line_and_exit_2(done, "PGVAULT_DATABASE_URL", "127.0.0.1:1", "Connection refused")
    assert "pw-meta-1" not in done.stderr + done.stdout


async def test_missing_metadata_database_or_schema_says_what_to_run(served: Any) -> None:
    from tests.conftest import create_db

    missing = serve(served(PGVAULT_DATABASE_URL=dsn(f"{PREFIX}_never_created")))
    one_line_and_exit_2(missing, "does not exist", "create it", "alembic upgrade head")
    empty = await create_db(f"{PREFIX}_empty_meta")
    one_line_and_exit_2(serve(served(PGVAULT_DATABASE_URL=dsn(empty))), "no pgvault schema",
                        "alembic upgrade head")


def test_missing_program_is_one_line(served: Any, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("pg_dump", "pg_dumpall", "pg_restore", "psql", "gpg", "gpg-agent"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    one_line_and_exit_2(serve(served(PATH=str(bin_dir))), "required programs", "zstd")
    # A program that is there but does not say which version it is.
    (bin_dir / "zstd").symlink_to(str(shutil.which("zstd")))
    (bin_dir / "pg_dump").unlink()
    (bin_dir / "pg_dump").write_text("#!/bin/sh\necho 'not a pg_dump'\n")
    (bin_dir / "pg_dump").chmod(0o755)
    # Client programs are looked up by major (PGVAULT_PG_BIN_DIRS, else the Debian layout, then
    # PATH): only there, the one pg_dump is no usable version.
    one_line_and_exit_2(serve(served(PATH=f"{bin_dir}:/bin",
                                     PGVAULT_PG_BIN_DIRS=json.dumps([str(bin_dir)]))),
                        "no version of pg_dump")


def test_unreadable_keyring_reports_gpg_s_reason(served: Any, gpg_key: tuple[Path, str],
                                                 tmp_path: Path) -> None:
    """A keyring gpg cannot read is reported in gpg's words, not as a missing key. (Permission
    denied cannot be staged for root, who reads everything: a keybox gpg cannot read as a file
    takes its place.)"""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    (home / "pubring.kbx").mkdir()
    line = one_line_and_exit_2(serve(served(PGVAULT_GPG_HOME=str(home))), "PGVAULT_GPG_HOME",
                               "cannot be read", "pubring.kbx", "Is a directory")
    assert "not in the keyring" not in line


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a keyring to another user needs root")
def test_keyring_owned_by_another_user_is_unsafe(served: Any, gpg_key: tuple[Path, str],
                                                 tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    shutil.copytree(gpg_key[0], home, ignore=shutil.ignore_patterns("S.*"))
    subprocess.run(["chown", "-R", "nobody", str(home)], check=True)
    one_line_and_exit_2(serve(served(PGVAULT_GPG_HOME=str(home))), "unsafe ownership",
                        "nobody", "chown")


async def test_alembic_on_a_missing_database_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PGVAULT_DATABASE_URL": dsn(f"{PREFIX}_never_created", "postgres",
                                                      "pw-alembic-1")}
    done = serve(env, "-m", "alembic", "upgrade", "head")
    one_line_and_exit_2(done, "does not exist", "create it")
    assert "pw-alembic-1" not in done.stderr + done.stdout
    bad_url = {**env, "PGVAULT_DATABASE_URL": "postgresql://u:pw@h:notaport/db"}
    one_line_and_exit_2(serve(bad_url, "-m", "alembic", "upgrade", "head"), "invalid port")


async def test_alembic_without_create_privilege_is_one_line() -> None:
    """PostgreSQL 15 no longer lets every user create tables in schema public."""
    from tests.conftest import admin_conn, create_db

    role = f"{PREFIX}_noddl"
    name = await create_db(f"{PREFIX}_noddl_meta")
    conn = await admin_conn()
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        env = {**os.environ, "PGVAULT_DATABASE_URL": dsn(name, role, "pw-noddl-1")}
        done = serve(env, "-m", "alembic", "upgrade", "head")
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
        await conn.close()
    one_line_and_exit_2(done, "migration refused", "permission denied for schema public")
    assert "pw-noddl-1" not in done.stderr + done.stdout


def test_make_run_without_postgres_is_one_line() -> None:
    env = {**os.environ, "PGVAULT_DEV_PG": "postgresql://postgres@127.0.0.1:1"}
    one_line_and_exit_2(serve(env, "-m", "app.dev"), "psql failed", "Connection refused")


async def test_missing_recipient_key_or_keyring_refuses_to_start(
        make_settings: Any, gpg_key: tuple[Path, str]) -> None:
    with pytest.raises(ConfigError, match="not in the keyring"):
        await start_services(make_settings(gpg_recipients=["B" * 40]))
    with pytest.raises(ConfigError, match="does not exist"):
        await start_services(make_settings(gpg_home=Path("/nonexistent/gnupg")))


async def test_expired_recipient_key_refuses_to_start(make_settings: Any, tmp_path: Path) -> None:
    from tests.conftest import _gen_key

    home = Path(subprocess.run(["mktemp", "-d", "/tmp/pgvg-XXXX"], capture_output=True,
                               text=True, check=True).stdout.strip())
    try:
        fpr = _gen_key(home, "expired <x@pgvault.invalid>", expire="seconds=1")
        import time

        time.sleep(2)
        with pytest.raises(ConfigError, match=r"expired|no valid encryption"):
            await start_services(make_settings(gpg_home=home, gpg_recipients=[fpr]))
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                       capture_output=True)
        subprocess.run(["rm", "-rf", str(home)], check=True)
    _ = hashlib


def test_alembic_downgrade_and_upgrade_round_trip(tmp_path: Path) -> None:
    import asyncio

    from tests.conftest import PREFIX, create_db, drop_db, dsn

    name = f"{PREFIX}_alembic"
    asyncio.run(create_db(name))
    try:
        env = {**os.environ, "PGVAULT_DATABASE_URL": dsn(name)}
        for step in (["upgrade", "head"], ["downgrade", "base"], ["upgrade", "head"]):
            subprocess.run([sys.executable, "-m", "alembic", *step], cwd=ROOT, env=env,
                           check=True, capture_output=True)
        # The DSN may come from .env instead, as it does for the service.
        subprocess.run([sys.executable, "-m", "alembic", "downgrade", "base"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        workdir = tmp_path / "deploy"
        workdir.mkdir()
        (workdir / ".env").write_text(f"PGVAULT_DATABASE_URL={dsn(name)}\n")
        bare = {k: v for k, v in os.environ.items() if k != "PGVAULT_DATABASE_URL"}
        subprocess.run([sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"),
                        "upgrade", "head"], cwd=workdir, env=bare, check=True,
                       capture_output=True)
        tables = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", name, "-Atc",
                                 "SELECT count(*) FROM pg_tables WHERE tablename = 'jobs'"],
                                check=True, capture_output=True, text=True).stdout.strip()
        assert tables == "1"
    finally:
        asyncio.run(drop_db(name))
