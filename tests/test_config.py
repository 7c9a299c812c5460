"""Configuration errors are one readable line each, at start-up, never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, load_settings
from app.lifespan import start_services
from tests.conftest import ROOT

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
                         "verify": "0 4 2 * *", "maintenance": ""}
    for bad, needle in [({"verify": "* * * * *", "verification": "* * * * *"}, "same schedule"),
                        ({"vacuum": "* * * * *"}, "unknown schedule"),
                        ({"backup": "every day"}, "not a cron expression")]:
        targets["prod"]["schedules"] = bad
        monkeypatch.setenv("PGVAULT_TARGETS", json.dumps(targets))
        with pytest.raises(ConfigError) as err:
            load_settings()
        assert needle in str(err.value)


def test_uvicorn_exits_with_a_readable_message() -> None:
    env = env_with(PGVAULT_API_TOKENS=json.dumps([{"name": "x", "sha256": "a" * 64,
                                                   "role": "superuser"}]))
    done = subprocess.run([sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "invalid configuration" in done.stderr and "PGVAULT_API_TOKENS" in done.stderr
    assert "Traceback" not in done.stderr


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
