"""Client programs per server major (SPEC 2.13): discovery, choice, and what jobs record.

Only PostgreSQL 15's clients exist on this machine. The other majors are test doubles: folders of
shell scripts named pg_dump, pg_restore, ... that answer ``--version`` like the real programs and
fail at anything else. They stand for installs that cannot exist here; everything that runs a
real dump or restore uses the real 15 clients against the real 15 server.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError
from app.integrations import pg_clients, pg_tools
from app.integrations.pg_clients import NoFittingClient, PgClients, RestoreTools, discover
from app.integrations.process import run
from app.lifespan import check_tools
from tests.conftest import (
    PG_HOST,
    PREFIX,
    admin_conn,
    auth,
    backup,
    create_db,
    dsn,
    running_app,
    wait_job,
)
from tests.test_restore import change_then_restore_in_place, fingerprint, restore

STUB = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "{program} (PostgreSQL) {version}"; exit 0; fi
echo "{program} {version}: a test double, it cannot run" >&2
exit 1
"""


def stub_dir(folder: Path, version: str, programs: tuple[str, ...] = pg_clients.PROGRAMS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for program in programs:
        path = folder / program
        path.write_text(STUB.format(program=program, version=version))
        path.chmod(0o755)
    return folder


def debian_layout(root: Path, *versions: str) -> Path:
    """``root/<major>/bin`` for each version, as PGDG packages install them."""
    for version in versions:
        stub_dir(root / version.split(".")[0] / "bin", version)
    return root


def test_the_servers_own_major_is_preferred_else_the_lowest_newer(tmp_path: Path) -> None:
    root = debian_layout(tmp_path / "pg", "13.18", "15.12", "16.4", "17.2")
    clients = discover(path="", debian_root=root)
    assert clients.majors("pg_dump") == [13, 15, 16, 17]
    assert clients.choose("pg_dump", 15).version == "15.12"
    assert clients.choose("pg_dump", 16).path == str(root / "16" / "bin" / "pg_dump")
    assert clients.choose("pg_dumpall", 14).version == "15.12"  # no 14: the lowest newer
    assert clients.choose("psql", 13).version == "13.18"
    assert clients.choose("pg_restore", 12).version == "13.18"
    # pg_restore must read the archive: one written by pg_dump 17 needs pg_restore 17.
    assert clients.choose("pg_restore", 15, archive_major=17).version == "17.2"
    tools = RestoreTools.choose(clients, 15, 16)
    assert (tools.pg_restore.version, tools.psql.version) == ("16.4", "15.12")
    assert tools.script_needs_fitting


def test_no_fitting_client_says_what_to_install(tmp_path: Path) -> None:
    clients = discover(path="", debian_root=debian_layout(tmp_path / "pg", "13.18", "15.12"))
    with pytest.raises(NoFittingClient) as exc:
        clients.choose("pg_dump", 16)
    assert str(exc.value) == ("no pg_dump for PostgreSQL 16 servers is installed: install "
                              "postgresql-client-16 (installed: 13, 15)")
    with pytest.raises(NoFittingClient, match="no pg_restore that reads archives of pg_dump 17 "
                                              "is installed: install postgresql-client-17"):
        clients.choose("pg_restore", 15, archive_major=17)


def test_path_is_searched_after_the_debian_layout_and_pg_wrapper_is_skipped(
        tmp_path: Path) -> None:
    root = debian_layout(tmp_path / "pg", "15.12")
    local = stub_dir(tmp_path / "local" / "bin", "16.4")
    # Debian's /usr/bin/pg_dump: a link to pg_wrapper, whose version changes with the environment.
    wrapper_dir = tmp_path / "usrbin"
    wrapper_dir.mkdir()
    stub_dir(tmp_path / "share", "17.2", ("pg_wrapper",))
    (wrapper_dir / "pg_dump").symlink_to(tmp_path / "share" / "pg_wrapper")
    clients = discover(path=f"{wrapper_dir}:{local}", debian_root=root)
    assert clients.majors("pg_dump") == [15, 16]
    assert clients.choose("pg_dump", 16).path == str(local / "pg_dump")
    # PATH alone (no Debian layout) is enough.
    only_path = discover(path=str(local), debian_root=tmp_path / "none")
    assert only_path.choose("psql", 14).version == "16.4"


def test_configured_directories_are_the_only_ones_searched(tmp_path: Path) -> None:
    root = debian_layout(tmp_path / "pg", "15.12", "16.4")
    pinned = stub_dir(tmp_path / "opt" / "pg16", "16.9")
    clients = discover([pinned], path=str(root / "15" / "bin"), debian_root=root)
    assert clients.summary()["pg_dump"] == ["16.9"]


def test_a_missing_program_is_reported_not_a_missing_major(tmp_path: Path) -> None:
    clients = discover(path="", debian_root=tmp_path / "pg")
    assert clients.missing_programs() == list(pg_clients.PROGRAMS)
    half = discover([stub_dir(tmp_path / "pg16", "16.4", ("pg_dump", "psql"))])
    assert half.missing_programs() == ["pg_dumpall", "pg_restore"]


def test_archive_major_reads_old_and_new_manifests() -> None:
    assert pg_clients.archive_major("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == 15
    assert pg_clients.archive_major("17.2") == 17
    assert pg_clients.archive_major(None) == 0


async def test_a_newer_pg_restores_script_is_fitted_to_the_destination(tmp_path: Path) -> None:
    """pg_restore 17 writes ``SET transaction_timeout = 0;`` into its scripts, which a 15 server
    rejects. The real 15 script with that one line added (what 17 writes, as a test double for a
    17 install) fails in psql; fitted to the server's settings it restores, and row data that
    looks like such a line is left alone."""
    source = await create_db(f"{PREFIX}_fit_src")
    conn = await admin_conn(source)
    try:
        await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text); "
                           "INSERT INTO notes VALUES (1, 'SET transaction_timeout = 0;'), "
                           "(2, E'x\\nSET transaction_timeout = 0;')")
        known = {r["name"] for r in await conn.fetch("SELECT name FROM pg_settings")}
    finally:
        await conn.close()
    dump = tmp_path / "fit.dump"
    subprocess.run(["pg_dump", "-h", PG_HOST, "-U", "postgres", "-Fc", "-f", str(dump), "--",
                    source], check=True)
    pg_restore = discover().choose("pg_restore", 15)
    script = (await run(pg_tools.pg_restore_script_stage(pg_restore, dump))).decode()
    as_17 = script.replace("SET idle_in_transaction_session_timeout = 0;\n",
                           "SET idle_in_transaction_session_timeout = 0;\n"
                           "SET transaction_timeout = 0;\n", 1).encode()
    assert b"SET transaction_timeout" in as_17

    async def load(data: bytes) -> subprocess.CompletedProcess[bytes]:
        db = await create_db(f"{PREFIX}_fit_{len(data)}_{data.count(b'SET')}")
        return subprocess.run(["psql", "-h", PG_HOST, "-U", "postgres", "-X", "-q", "-v",
                               "ON_ERROR_STOP=1", "-d", db], input=data, capture_output=True,
                              check=False)

    failed = await load(as_17)
    assert failed.returncode == 3 and b"transaction_timeout" in failed.stderr
    fitter = pg_tools.ScriptHeadFitter(known)
    fitted = b"".join(fitter.feed(as_17[i:i + 7]) for i in range(0, len(as_17), 7))
    fitted += fitter.finish()
    assert fitter.dropped == ["transaction_timeout"]
    assert fitted == script.encode()  # only that line went: the data lines are untouched
    assert (await load(fitted)).returncode == 0


def _stub_settings(make_settings: Any, folder: Path, target: str, db: str) -> Any:
    return make_settings(pg_bin_dirs=[folder],
                         targets={target: {"dsn": dsn(db), "retention_min_backups": 1}})


async def test_backup_and_in_place_restore_record_the_clients_they_chose(
        make_settings: Any, tmp_path: Path) -> None:
    db = await create_db(f"{PREFIX}_clients")
    conn = await admin_conn(db)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text); "
                           "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g")
    finally:
        await conn.close()
    settings = make_settings(targets={"clients": {"dsn": dsn(db), "retention_min_backups": 1}})
    async with running_app(settings) as c:
        job = await backup(c, "clients")
        backup_id = job["result"]["backup_id"]
        assert job["result"]["tools"]["pg_dump"].startswith("15.")
        assert job["result"]["tools"]["pg_dumpall"].startswith("15.")
        detail = (await c.get(f"/v1/targets/clients/archives/{backup_id}",
                              headers=auth("viewer"))).json()
        assert detail["manifest"]["pg_dump_version"] == job["result"]["tools"]["pg_dump"]
        before, done = await change_then_restore_in_place(c, "clients", db, backup_id,
                                                          "DELETE FROM t WHERE id > 100")
    assert done["status"] == "succeeded", done["error"]
    assert await fingerprint(db) == before
    used = done["result"]["tools"]
    assert set(used) == {"pg_restore", "psql"}
    assert used["pg_restore"].startswith("15.") and used["psql"].startswith("15.")

    # The same archive, with only clients 13 installed: the restore fails at its first step,
    # before anything is downloaded or touched, and says what to install.
    old = stub_dir(tmp_path / "pg13" / "bin", "13.18")
    async with running_app(_stub_settings(make_settings, old, "clients", db)) as c:
        done = await restore(c, "clients", {"backup_id": backup_id, "mode": "in_place",
                                            "confirm": "clients"})
    assert done["status"] == "failed"
    assert done["error"]["detail"] == ("client programs: no pg_restore for PostgreSQL 15 servers "
                                       "is installed: install postgresql-client-15 "
                                       "(installed: 13)")
    assert await fingerprint(db) == before


async def test_a_server_without_a_fitting_pg_dump_fails_the_backup_readably(
        make_settings: Any, tmp_path: Path) -> None:
    """Start-up succeeds with only clients 13 installed; the 15 server's backup fails."""
    db = await create_db(f"{PREFIX}_clients13")
    old = stub_dir(tmp_path / "pg13" / "bin", "13.18")
    async with running_app(_stub_settings(make_settings, old, "old", db)) as c:
        resp = await c.post("/v1/targets/old/backups", headers=auth("operator"))
        assert resp.status_code == 202, resp.text
        job = await wait_job(c, resp.json()["id"])
        archives = (await c.get("/v1/targets/old/archives", headers=auth("viewer"))).json()
    assert job["status"] == "failed"
    assert job["error"]["detail"] == ("client programs: no pg_dump for PostgreSQL 15 servers is "
                                      "installed: install postgresql-client-15 (installed: 13)")
    assert archives["items"] == []


async def test_start_up_needs_some_version_of_each_program(make_settings: Any,
                                                           tmp_path: Path) -> None:
    assert PgClients().missing_programs() == list(pg_clients.PROGRAMS)
    half = stub_dir(tmp_path / "half", "16.4", ("pg_dump", "psql"))
    with pytest.raises(ConfigError, match=r"^no version of pg_dumpall, pg_restore found in "
                                          r"PGVAULT_PG_BIN_DIRS: install postgresql-client-"):
        await check_tools(make_settings(pg_bin_dirs=[half]))


NEWER_PG_RESTORE = """#!/bin/bash
# A test double for pg_restore 16: the real 15 underneath, writing its scripts with the line
# pg_restore 17 writes (SET transaction_timeout), which a 15 server rejects.
set -o pipefail
if [ "$1" = "--version" ]; then echo "pg_restore (PostgreSQL) 16.4"; exit 0; fi
for arg in "$@"; do
  if [ "$arg" = "--file=-" ]; then
    {real} "$@" \\
      | sed 's/^SET idle_in_transaction_session_timeout = 0;$/&\\nSET transaction_timeout = 0;/'
    exit $?
  fi
done
exec {real} "$@"
"""


async def test_an_in_place_restore_with_a_newer_pg_restore_fits_its_script(
        make_settings: Any, tmp_path: Path) -> None:
    """Only a newer pg_restore installed for a 15 server: the in-place restore uses it, leaves
    out the SET the server does not know, and succeeds; psql is still the server's own 15."""
    real = Path("/usr/lib/postgresql/15/bin")
    folder = tmp_path / "bin"
    folder.mkdir()
    for program in ("pg_dump", "pg_dumpall", "psql"):
        (folder / program).symlink_to(real / program)
    (folder / "pg_restore").write_text(NEWER_PG_RESTORE.format(real=real / "pg_restore"))
    (folder / "pg_restore").chmod(0o755)
    db = await create_db(f"{PREFIX}_newer")
    conn = await admin_conn(db)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text); "
                           "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 300) g")
    finally:
        await conn.close()
    async with running_app(_stub_settings(make_settings, folder, "newer", db)) as c:
        job = await backup(c, "newer")
        before, done = await change_then_restore_in_place(
            c, "newer", db, job["result"]["backup_id"], "UPDATE t SET note = 'changed'")
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["tools"]["pg_restore"] == "16.4"
    assert done["result"]["tools"]["psql"].startswith("15.")
    assert await fingerprint(db) == before
