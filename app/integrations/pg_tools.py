"""Argument vectors for pg_dump, pg_dumpall, pg_restore and zstd, and the version checks.

Connection parameters, the password included, reach the tools through libpq's environment
variables (``PGHOST``, ``PGPASSWORD``, ...) built from the parsed DSN, so nothing secret is ever in
argv (``ps`` shows argv to every user of the host). The database a tool connects to comes from
``PGDATABASE`` too: libpq never expands an environment value into a connection string, and no name
can turn into an option. ``--no-password`` makes a missing password an error rather than a prompt.
``PGAPPNAME`` is the running job's application_name (``app.integrations.target_db``), so its
backends can be found and ended when the job ends early.

Exit codes: every tool here exits 0 on success and non-zero on failure; pg_restore exits 1 when it
finished with errors (it prints ``errors ignored on restore: N``).
"""

from __future__ import annotations

import re
from pathlib import Path

from app.config import PgDsn
from app.integrations.process import Stage, run
from app.integrations.target_db import JOB_APPLICATION_NAME

_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


class ToolVersionError(Exception):
    pass


async def tool_major_version(binary: str) -> int:
    out = (await run(Stage(binary, [binary, "--version"]), timeout=30)).decode()
    match = _VERSION_RE.search(out)
    if not match:
        raise ToolVersionError(f"cannot read the version of {binary}: {out.strip()[:100]}")
    return int(match.group(1))


async def tool_version_text(binary: str) -> str:
    return (await run(Stage(binary, [binary, "--version"]), timeout=30)).decode().strip()


def _env(dsn: PgDsn, database: str | None = None) -> dict[str, str]:
    env = dsn.libpq_env(database)
    if (job := JOB_APPLICATION_NAME.get()) is not None:
        env["PGAPPNAME"] = job
    return env


def check_dump_version(tool_major: int, server_version_num: int) -> None:
    server_major = server_version_num // 10000
    if tool_major < server_major:
        raise ToolVersionError(
            f"pg_dump {tool_major} cannot dump a PostgreSQL {server_major} server: install the "
            f"PostgreSQL {server_major} client tools (pg_dump must be at least the server's "
            "version)"
        )


def pg_dump_stage(dsn: PgDsn, *, snapshot: str, lock_wait_timeout_s: int,
                  exclude_schemas: list[str]) -> Stage:
    argv = ["pg_dump", "--format=custom", "--compress=0", "--no-password",
            f"--snapshot={snapshot}", f"--lock-wait-timeout={lock_wait_timeout_s}s"]
    argv += [f"--exclude-schema={name}" for name in exclude_schemas]
    return Stage("pg_dump", argv, env=_env(dsn))


def pg_dumpall_globals_stage(dsn: PgDsn) -> Stage:
    # --database (long form with '=') names the database to connect to; the name was validated
    # at configuration (no leading '-', no '=').
    argv = ["pg_dumpall", "--globals-only", "--no-role-passwords", "--no-password",
            f"--database={dsn.database}"]
    return Stage("pg_dumpall", argv, env=_env(dsn))


def zstd_compress_stage(level: int, threads: int) -> Stage:
    return Stage("zstd", ["zstd", f"-{level}", f"-T{threads}", "-q", "-c", "-"])


def zstd_decompress_stage() -> Stage:
    return Stage("zstd -d", ["zstd", "-d", "-q", "-c", "-"])


def pg_restore_list_stage(dump: Path) -> Stage:
    return Stage("pg_restore --list", ["pg_restore", "--list", "--", str(dump)])


def pg_restore_stage(dsn: PgDsn, database: str, dump: Path, *, jobs: int) -> Stage:
    """Restore into an existing (new, empty) database, ``jobs`` at a time."""
    argv = ["pg_restore", "--no-password", "--exit-on-error"]
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    # The target database as a connection string built here: a name can never become an option
    # or smuggle in other parameters.
    argv += [f"--dbname={conninfo_dbname(database)}", "--", str(dump)]
    return Stage("pg_restore", argv, env=_env(dsn, database))


def conninfo_dbname(database: str) -> str:
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def pg_restore_script_stage(dump: Path) -> Stage:
    """The dump as one SQL script on stdout (no connection), framed by one ``BEGIN;`` and one
    final ``COMMIT;``: without ``--single-transaction`` pg_restore wraps large objects in a
    ``BEGIN; ... COMMIT;`` of their own, which would commit an enclosing transaction midway."""
    return Stage("pg_restore -f -",
                 ["pg_restore", "--single-transaction", "--file=-", "--", str(dump)])


def pg_restore_selection_stage(dump: Path, selection: Path, *, clean: bool = False) -> Stage:
    """The SQL of just the table-of-contents entries listed in ``selection`` (no connection);
    with ``clean``, led by their ``DROP ... IF EXISTS`` statements."""
    argv = ["pg_restore", f"--use-list={selection}", "--file=-"]
    if clean:
        argv += ["--clean", "--if-exists"]
    return Stage("pg_restore --use-list", [*argv, "--", str(dump)])


def psql_stage(dsn: PgDsn, database: str, sql_file: Path | None, *,
               single_transaction: bool = False) -> Stage:
    """psql running ``sql_file`` (or stdin), stopping at the first error (exit code 3)."""
    argv = ["psql", "--no-password", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
            f"--file={sql_file if sql_file is not None else '-'}"]
    if single_transaction:
        argv.append("--single-transaction")
    return Stage("psql", argv, env=_env(dsn, database))
