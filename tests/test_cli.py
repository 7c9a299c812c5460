"""The ``pgvault`` command line against a live service (uvicorn on a free port), run as a user
runs it: a separate process reading PGVAULT_URL and PGVAULT_TOKEN (SPEC 2.13)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from tests.conftest import PREFIX, ROOT, TOKENS, drop_db, dsn
from tests.test_reliability import free_port, uvicorn


def pgvault(url: str, *args: str, token: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGVAULT_")}
    env.update(PGVAULT_URL=url, PGVAULT_TOKEN=TOKENS["admin"] if token is None else token)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


async def run(url: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(pgvault, url, *args, **kw)


def one_line_no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgvault: "), done.stderr


async def test_cli_backup_verify_restore_and_listings(make_settings: Any, big_db: str,
                                                      pagila_db: str) -> None:
    missing = f"{PREFIX}_cli_missing"
    settings = make_settings(targets={
        "clibig": {"dsn": dsn(big_db), "row_counts": False},
        "clipagila": {"dsn": dsn(pagila_db)},
        "cligone": {"dsn": dsn(missing)},
    })
    restored = f"{PREFIX}_cli_restored"
    async with uvicorn(settings) as (_, url):
        # A backup long enough to watch: a live bar in a terminal, progress lines in a log.
        done = await run(url, "backup", "clibig", "--wait")
        assert done.returncode == 0, done.stderr
        assert "dump" in done.stderr and " MB" in done.stderr and "/s" in done.stderr, done.stderr
        assert "[succeeded]" in done.stderr
        assert done.stdout.strip().startswith("backup ") and "of clibig" in done.stdout

        done = await run(url, "backup", "clipagila", "--wait", "--json")
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)
        assert job["status"] == "succeeded" and job["progress"]["bytes_done"] > 0
        backup_id = job["result"]["backup_id"]

        listed = await run(url, "archives", "clipagila", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [a["backup_id"] for a in json.loads(listed.stdout)["items"]] == [backup_id]
        table = await run(url, "archives", "clipagila")
        assert backup_id in table.stdout and "yes" in table.stdout

        checked = await run(url, "verify", "clipagila", backup_id, "--level", "checksum",
                            "--wait")
        assert checked.returncode == 0, checked.stderr
        assert "verification of" in checked.stdout and "passed" in checked.stdout

        back = await run(url, "restore", "clipagila", backup_id, "--database", restored,
                         "--wait", "--json")
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout)["result"]["database"] == restored

        # A failing job: exit 1 and the cause in words.
        failed = await run(url, "backup", "cligone", "--wait")
        assert failed.returncode == 1, (failed.stdout, failed.stderr)
        assert f'database "{missing}" does not exist' in failed.stdout, failed.stdout
        assert "Traceback" not in failed.stderr

        status = await run(url, "status", "--json")
        assert status.returncode == 0, status.stderr
        by_name = {t["name"]: t for t in json.loads(status.stdout)["items"]}
        assert by_name["clipagila"]["last_backup"]["backup_id"] == backup_id
        assert by_name["cligone"]["rpo_ok"] is False
        human = await run(url, "status")
        assert "BREACHED" in human.stdout and backup_id in human.stdout

        listing = await run(url, "jobs", "--target", "cligone", "--json")
        assert listing.returncode == 0, listing.stderr
        assert [j["status"] for j in json.loads(listing.stdout)["items"]] == ["failed"]
        failed_id = json.loads(listing.stdout)["items"][0]["id"]
        shown = await run(url, "job", failed_id)  # looking is not waiting: exit 0
        assert shown.returncode == 0 and "failed at connect" in shown.stdout, shown.stdout
        waited = await run(url, "job", failed_id, "--wait")
        assert waited.returncode == 1 and "does not exist" in waited.stdout
        started = await run(url, "backup", "clipagila")  # without --wait: the job, at once
        assert started.returncode == 0 and started.stdout.startswith("job "), started.stdout

        # Usage and API errors: exit 2, one readable line.
        bad_token = await run(url, "status", token="not-a-token")
        assert bad_token.returncode == 2
        one_line_no_traceback(bad_token)
        assert "401" in bad_token.stderr and "invalid bearer token" in bad_token.stderr
        unknown = await run(url, "backup", "nosuchtarget")
        assert unknown.returncode == 2
        one_line_no_traceback(unknown)
        usage = await run(url, "restore", "clipagila", backup_id)  # --database missing
        assert usage.returncode == 2 and "--database" in usage.stderr
    await drop_db(restored)


async def test_cli_without_a_server_exits_2() -> None:
    done = await run(f"http://127.0.0.1:{free_port()}", "jobs")
    assert done.returncode == 2
    one_line_no_traceback(done)
    assert "cannot reach pgvault" in done.stderr


def test_cli_imports_nothing_of_the_server() -> None:
    """A client: it must run where only the package's client side works (no settings, no
    asyncpg connection, no server modules loaded)."""
    code = ("import sys, app.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('app.') "
            "and not m.startswith('app.cli')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
